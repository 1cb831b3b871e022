"""POST /wechat/callback: WeChat's delivery reports for template messages.

GET answers WeChat's check of the server URL by echoing ``echostr``. Both
verbs need a valid signature made with IM_WECHAT_CALLBACK_TOKEN.
"""

import asyncio
import logging

from handlers.base import BaseHandler
from models.push import MsgPush
from services.errors import Forbidden, InvalidArgument, NotFound
from services.outbox import WECHAT
from services.wechat import parse_template_send_event, verify_callback_signature

logger = logging.getLogger(__name__)

# WeChat can report a delivery before the push sender has stored the msgid
# that the send returned, so the handler polls for that row for up to one
# second. NOTE: WeChat's general rule gives a server callback about 5
# seconds to respond, but that limit is not verified for this event.
DELIVERY_MATCH_ATTEMPTS = 10
DELIVERY_MATCH_INTERVAL_SECONDS = 0.1


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
            if not await self._push_row_exists(event.msg_id):
                logger.warning("WeChat delivery report %r for msgid %s matches no push",
                               event.status, event.msg_id)
            await self.app.record_wechat_delivery(event)
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.finish("success")

    async def _push_row_exists(self, msg_id):
        """Wait until a push row stores ``msg_id``; return False after the last try."""
        for attempt in range(DELIVERY_MATCH_ATTEMPTS):
            if attempt:
                await asyncio.sleep(DELIVERY_MATCH_INTERVAL_SECONDS)
            if await self.app.db.run_transaction(MsgPush.has_vendor_message, WECHAT, msg_id):
                return True
        return False


ROUTES = [(r"/wechat/callback", WeChatCallbackHandler)]

