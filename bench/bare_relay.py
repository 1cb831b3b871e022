"""An upper bound for the benchmarks: the IM server's hot paths with no storage.

It speaks the parts of docs/api.md that bench/run.py drives: HS256 tokens,
``POST /api/v1/chats/pm`` and ``/gm`` returning 201 ``{"message", "online"}``,
``POST /api/v1/groups`` into memory, and ``/ws`` with ``?token=`` or a login
frame, ``welcome``, live ``message`` frames, ``send`` with ``sent``, ``ping``.
Nothing is stored, counted, checked against users or replayed by ``sync``.

    python bench/bare_relay.py --port 3100 --secret SECRET
"""

import argparse
import asyncio
import itertools
import json
import time

import jwt
import tornado.web
import tornado.websocket

SOCKETS = {}  # user id -> set of open RelaySocket
GROUPS = {}  # group id -> {"type": int, "members": [user ids]}
NEXT_ID = {"p2p": itertools.count(1), "group": itertools.count(1)}
SECRET = ""


def encode(payload):
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def verify(token):
    """Return the token's user id, or None when it is missing or invalid."""
    try:
        return jwt.decode(token or "", SECRET, algorithms=["HS256"])["sub"]
    except jwt.InvalidTokenError:
        return None


def new_message(channel, sender, fields):
    message = {"id": next(NEXT_ID[channel]), "channel": channel, "from": sender}
    if channel == "p2p":
        message["to"] = fields["to"]
    else:
        message.update(group=fields["group"], groupType=GROUPS[fields["group"]]["type"])
    message.update(contentType=fields["contentType"], content=fields["content"])
    if fields.get("clientMsgId"):
        message["clientMsgId"] = fields["clientMsgId"]
    message["timestamp"] = int(time.time() * 1000)
    return message


def deliver(message, recipients, exclude=None):
    """Write the message frame to every socket of the recipients; True if any."""
    payload = encode({"type": "message", "message": message})
    online = False
    for user_id in recipients:
        for socket in SOCKETS.get(user_id, ()):
            if socket is not exclude:
                socket.write_message(payload)
                online = online or user_id != message["from"]
    return online


def recipients_of(channel, sender, fields):
    if channel == "p2p":
        return [fields["to"], sender]
    return GROUPS[fields["group"]]["members"]


class ApiHandler(tornado.web.RequestHandler):
    def prepare(self):
        header = self.request.headers.get("Authorization", "")
        self.user_id = verify(header.partition(" ")[2])
        if self.user_id is None:
            self.reply(401, {"error": {"code": "unauthorized", "message": "Invalid token"}})

    def reply(self, status, payload):
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(encode(payload))


class SendHandler(ApiHandler):
    def post(self, kind):
        fields = json.loads(self.request.body)
        channel = "p2p" if kind == "pm" else "group"
        if fields.get("from") != self.user_id:
            return self.reply(403, {"error": {"code": "forbidden", "message": "from"}})
        if channel == "group" and fields.get("group") not in GROUPS:
            return self.reply(404, {"error": {"code": "not_found", "message": "group"}})
        message = new_message(channel, self.user_id, fields)
        online = deliver(message, recipients_of(channel, self.user_id, fields))
        self.reply(201, {"message": message, "online": online})


class GroupsHandler(ApiHandler):
    def post(self):
        fields = json.loads(self.request.body)
        GROUPS[fields["id"]] = {"type": fields["type"], "members": list(fields["members"])}
        self.reply(201, {"id": fields["id"], "name": fields.get("name"), "type": fields["type"]})


class HealthHandler(tornado.web.RequestHandler):
    def get(self):
        self.finish({"status": "ok"})


class RelaySocket(tornado.websocket.WebSocketHandler):
    user_id = None

    def open(self):
        token = self.get_query_argument("token", None)
        if token is not None:
            self.login(token)

    def login(self, token):
        self.user_id = verify(token)
        if self.user_id is None:
            return self.close(4001, "invalid token")
        SOCKETS.setdefault(self.user_id, set()).add(self)
        self.write_message(encode({"type": "welcome", "userId": self.user_id, "totalUnread": 0}))

    def on_message(self, raw):
        frame = json.loads(raw)
        kind = frame.get("type")
        if kind == "login" and self.user_id is None:
            self.login(frame.get("token"))
        elif kind == "ping":
            self.write_message('{"type":"pong"}')
        elif kind == "send" and self.user_id is not None:
            message = new_message(frame["channel"], self.user_id, frame)
            deliver(message, recipients_of(frame["channel"], self.user_id, frame), exclude=self)
            self.write_message(encode(
                {"type": "sent", "clientMsgId": frame.get("clientMsgId"), "message": message}
            ))

    def on_close(self):
        if self.user_id is not None:
            SOCKETS.get(self.user_id, set()).discard(self)


async def main():
    global SECRET
    parser = argparse.ArgumentParser(description="Storage-free relay for benchmarks")
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    parser.add_argument("--secret", required=True, help="HS256 key of the tokens")
    args = parser.parse_args()
    SECRET = args.secret
    app = tornado.web.Application([
        (r"/api/v1/chats/(pm|gm)", SendHandler),
        (r"/api/v1/groups", GroupsHandler),
        (r"/health", HealthHandler),
        (r"/ws", RelaySocket),
    ], websocket_ping_interval=30)
    app.listen(args.port, address="127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
