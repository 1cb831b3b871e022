"""REST handlers for messages: send, read pages, recent, mark read, recall."""

from handlers.base import BaseHandler, query_id, query_int
from services import validation
from services.dispatch import SendRequest
from services.errors import InvalidArgument

# Path segment → channel name.
PATH_CHANNELS = {"pm": "p2p", "gm": "group", "sm": "system"}
MAX_MESSAGE_ID = 2**63 - 1


class SendHandler(BaseHandler):
    """POST /api/v1/chats/{pm|gm|sm}: send, or schedule with ``sendAt``."""

    async def post(self, kind):
        channel = PATH_CHANNELS[kind]
        self.app.limits.check_rest_send(self.principal, self.request.remote_ip)
        if channel == "system":
            self.require_system()
        body = self.body
        fields = validation.send_fields(channel, body)
        if channel == "system":
            sender = "system"
        else:
            sender = self.act_as(validation.identifier(body, "from"), "from")
            if channel == "p2p" and fields["to"] == sender:
                raise InvalidArgument("A message cannot be sent to its sender", field="to")
        request = SendRequest(sender=sender, **fields)

        if body.get("sendAt") is not None:
            scheduled = await self.app.schedules.schedule(request, body)
            self.write_json({"scheduled": scheduled}, status=202)
            return

        result = await self.app.dispatcher.send(request)
        answer = {"message": result.message}
        if channel != "system":
            answer["online"] = result.online
        self.write_json(answer, status=201 if result.created else 200)

    async def get(self, kind):
        channel = PATH_CHANNELS[kind]
        user_id = self.act_as(query_id(self, "user_id"), "user_id")
        before_id = query_int(self, "before_id", 1, MAX_MESSAGE_ID)
        after_id = query_int(self, "after_id", 0, MAX_MESSAGE_ID)
        if before_id is not None and after_id is not None:
            raise InvalidArgument("Give before_id or after_id, not both", field="after_id")
        limit = query_int(self, "limit", 1, 100, default=20)
        if channel == "group":
            target = query_id(self, "group")
        elif channel == "p2p":
            target = query_id(self, "peer_id", required=False)
        else:
            target = None

        messages, has_more = await self.app.conversations.page(
            channel, user_id, target, before_id, after_id, limit
        )
        self.write_json({"messages": messages, "hasMore": has_more})


class RecallHandler(BaseHandler):
    """DELETE /api/v1/chats/{pm|gm|sm}/{id}."""

    async def delete(self, kind, raw_id):
        message_id = int(raw_id)
        if not 1 <= message_id <= MAX_MESSAGE_ID:
            raise InvalidArgument("Message id out of range", field="id")
        message = await self.app.conversations.recall(
            self.principal, PATH_CHANNELS[kind], message_id
        )
        self.write_json({"message": message})


class RecentHandler(BaseHandler):
    """GET /api/v1/chats/recent."""

    async def get(self):
        user_id = self.act_as(query_id(self, "user_id"), "user_id")
        limit = query_int(self, "limit", 1, 500, default=100)
        before = query_int(self, "before", 0, MAX_MESSAGE_ID)
        self.write_json(await self.app.conversations.recent(user_id, before, limit))


class ReadHandler(BaseHandler):
    """POST /api/v1/chats/read."""

    async def post(self):
        body = self.body
        user_id = self.act_as(validation.identifier(body, "userId"), "userId")
        channel, target = validation.read_target(body)
        up_to_id = validation.integer(body, "upToId", 0, MAX_MESSAGE_ID)
        unread = await self.app.conversations.mark_read(user_id, channel, target, up_to_id)
        self.write_json({"unread": unread})


class ScheduledHandler(BaseHandler):
    """DELETE /api/v1/chats/scheduled/{id}."""

    async def delete(self, raw_id):
        schedule_id = int(raw_id)
        if not 1 <= schedule_id <= MAX_MESSAGE_ID:
            raise InvalidArgument("Scheduled message id out of range", field="id")
        await self.app.schedules.cancel(self.principal, schedule_id)
        self.set_status(204)
        self.finish()


ROUTES = [
    (r"/api/v1/chats/recent", RecentHandler),
    (r"/api/v1/chats/read", ReadHandler),
    (r"/api/v1/chats/scheduled/([0-9]{1,19})", ScheduledHandler),
    (r"/api/v1/chats/(pm|gm|sm)", SendHandler),
    (r"/api/v1/chats/(pm|gm|sm)/([0-9]{1,19})", RecallHandler),
]
