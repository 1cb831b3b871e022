"""POST /wechat/callback: WeChat's delivery reports for template messages.

GET answers WeChat's check of the server URL by echoing ``echostr``. Both
verbs need a valid signature made with IM_WECHAT_CALLBACK_TOKEN.
"""

import logging


from handlers.base import BaseHandler
from services.errors import Forbidden, InvalidArgument, NotFound
from services.wechat import parse_template_send_event, verify_callback_signature

logger = logging.getLogger(__name__)


class WeChatCallbackHandler(BaseHandler):
    auth_required = False

    def _check_signature(self):
        token = self.app.config.wechat_callback_token
        if not token:
            raise NotFound("WeChat callbacks are not configured")
        arguments = [self.get_query_argument(name, "") for name in
                     ("signature", "timestamp", "nonce")]
        if not verify_callback_signature(token, *arguments):
            logger.warning("WeChat callback with a bad signature from %s",
                           self.request.remote_ip)
            raise Forbidden("Bad signature")

    def get(self):
        self._check_signature()
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.finish(self.get_query_argument("echostr", ""))

    async def post(self):
        self._check_signature()
        try:
            event = parse_template_send_event(self.request.body)
        except ValueError as error:
            raise InvalidArgument(f"Unreadable callback: {error}") from None
        if event is not None:
            await self.app.record_wechat_delivery(event)
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.finish("success")


ROUTES = [(r"/wechat/callback", WeChatCallbackHandler)]

