"""Browser tests of sdk/im.client.js and sdk/chat.html against a fake IM server.

The fake (FakeIm below) speaks the WebSocket frames and REST shapes of the public
API, but only as far as each test scripts it: these tests check the SDK's side of
the contract in real Chromium, not the server.
"""

import json
import re
import struct
import threading
import time
import zlib

import pytest
import tornado.web
import tornado.websocket

pytestmark = pytest.mark.timeout(90)

USER_ID = "patient-1"
PEER_ID = "doctor-7"
UUID_PATTERN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
RESUME_KEY = "imclient.v1.resume." + USER_ID
WAIT_TIMEOUT_S = 10


def make_token(user_id, role="patient"):
    """Return an unsigned JWT-shaped token; the fake checks only the exact string."""
    import base64

    def encode(value):
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return encode({"alg": "HS256", "typ": "JWT"}) + "." + encode({"sub": user_id, "role": role}) + ".signature"


TOKEN = make_token(USER_ID)


def make_png_pixel():
    """Return a valid 1x1 grey PNG."""

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00\x80")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def message(channel, message_id, content="hello", **fields):
    """Return a message object in the API's shape, addressed to USER_ID."""
    body = {
        "id": message_id,
        "channel": channel,
        "contentType": 1,
        "content": content,
        "timestamp": 1764806400000 + message_id,
    }
    if channel == "p2p":
        body.update({"from": PEER_ID, "to": USER_ID})
    elif channel == "group":
        body.update({"from": PEER_ID, "group": "team-3", "groupType": 1})
    else:
        body.update({"from": "system", "to": USER_ID, "title": "Notice", "summary": ""})
    body.update(fields)
    return body


# ----- the fake IM server -----


class FakeIm:
    """Scripted stand-in for the IM server's /ws endpoint and REST API.

    Handlers run on the server thread. They log every socket open, frame and close
    into `log`, and the test thread waits on that log with wait_for().
    Default behaviour: `login` gets `welcome` unless the token is in
    rejected_tokens (then close 4001), `ping` gets `pong`, `sync` gets `synced`
    with hasMore false for every channel, and `send` gets `sent`. Tests replace
    on_sync / on_send / on_read to script other replies.
    """

    def __init__(self):
        self.log = []
        self._condition = threading.Condition()
        self.sockets = []
        self.rejected_tokens = set()
        self.drop_opens = 0
        self.next_message_id = 1000
        self.rest_routes = {}
        self.rest_requests = []
        self.on_sync = self.reply_sync_caught_up
        self.on_send = self.reply_send_with_sent
        self.on_read = None
        self.server = None

    # Called on the server thread.

    def record(self, kind, index, payload):
        with self._condition:
            self.log.append((kind, index, payload, time.monotonic()))
            self._condition.notify_all()

    def handle_frame(self, socket, frame):
        frame_type = frame.get("type")
        if frame_type == "login":
            if frame.get("token") in self.rejected_tokens:
                socket.close(4001, "invalid token")
            else:
                socket.send_frame({"type": "welcome", "userId": USER_ID, "totalUnread": 0})
        elif frame_type == "ping":
            socket.send_frame({"type": "pong"})
        elif frame_type == "sync" and self.on_sync:
            self.on_sync(socket, frame)
        elif frame_type == "send" and self.on_send:
            self.on_send(socket, frame)
        elif frame_type == "read" and self.on_read:
            self.on_read(socket, frame)

    @staticmethod
    def reply_sync_caught_up(socket, frame):
        for channel in ("p2p", "group", "system"):
            socket.send_frame({"type": "synced", "channel": channel, "hasMore": False})

    def reply_send_with_sent(self, socket, frame):
        self.next_message_id += 1
        stored = {
            "id": self.next_message_id,
            "channel": frame["channel"],
            "from": USER_ID,
            "contentType": frame["contentType"],
            "content": frame["content"],
            "clientMsgId": frame["clientMsgId"],
            "timestamp": int(time.time() * 1000),
        }
        if frame["channel"] == "p2p":
            stored["to"] = frame["to"]
        else:
            stored["group"] = frame["group"]
        socket.send_frame({"type": "sent", "clientMsgId": frame["clientMsgId"], "message": stored})

    # Called on the test thread.

    def wait_for(self, kind, frame_type=None, count=1, timeout=WAIT_TIMEOUT_S):
        """Wait until `count` log entries of that kind (and frame type) exist; return them.

        Each entry is (socket_index, payload, monotonic_time).
        """

        def matching():
            return [
                (index, payload, at)
                for logged_kind, index, payload, at in self.log
                if logged_kind == kind and (frame_type is None or payload.get("type") == frame_type)
            ]

        deadline = time.monotonic() + timeout
        with self._condition:
            while len(matching()) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"timed out after {timeout} s waiting for {count} {kind!r} {frame_type or ''} entries; "
                        f"log: {[entry[:3] for entry in self.log]}"
                    )
                self._condition.wait(remaining)
            return matching()[:count]

    def entries(self, kind, frame_type=None):
        with self._condition:
            return [
                (index, payload)
                for logged_kind, index, payload, _ in self.log
                if logged_kind == kind and (frame_type is None or payload.get("type") == frame_type)
            ]

    def send(self, index, frame):
        self.server.call(self.sockets[index].send_frame, frame)

    def close_socket(self, index, code, reason=""):
        self.server.call(self.sockets[index].close, code, reason)


class FakeSocketHandler(tornado.websocket.WebSocketHandler):
    def initialize(self, fake):
        self.fake = fake

    def open(self):
        self.index = len(self.fake.sockets)
        self.fake.sockets.append(self)
        self.fake.record("open", self.index, {"uri": self.request.uri})
        if self.fake.drop_opens > 0:
            self.fake.drop_opens -= 1
            self.close(1011, "dropped by the test")

    def on_message(self, text):
        frame = json.loads(text)
        self.fake.record("frame", self.index, frame)
        self.fake.handle_frame(self, frame)

    def on_close(self):
        self.fake.record("close", self.index, {"type": "close", "code": self.close_code})

    def send_frame(self, frame):
        if self.ws_connection is not None and not self.ws_connection.is_closing():
            self.write_message(json.dumps(frame, ensure_ascii=False))


class FakeRestHandler(tornado.web.RequestHandler):
    """Serves /api/v1/... responses from fake.rest_routes, keyed by (method, path)."""

    def initialize(self, fake):
        self.fake = fake

    def _respond(self):
        request = self.request
        self.fake.rest_requests.append(
            {
                "method": request.method,
                "path": request.path,
                "query": {name: self.get_query_argument(name) for name in request.query_arguments},
                "authorization": request.headers.get("Authorization"),
                "body": json.loads(request.body) if request.body else None,
            }
        )
        route = self.fake.rest_routes.get((request.method, request.path))
        if route is None:
            status, body = 404, {"error": {"code": "not_found", "message": "no fake route for " + request.path}}
        else:
            status, body = route(self.fake.rest_requests[-1]) if callable(route) else route
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(body, ensure_ascii=False))

    get = post = delete = put = _respond


class HarnessPageHandler(tornado.web.RequestHandler):
    def get(self):
        self.write('<!doctype html><meta charset="utf-8"><script src="/sdk/im.client.js"></script>')


class PixelHandler(tornado.web.RequestHandler):
    def get(self):
        self.set_header("Content-Type", "image/png")
        self.write(make_png_pixel())


@pytest.fixture
def fake_im(live_server_factory):
    fake = FakeIm()
    fake.server = live_server_factory(
        [
            (r"/ws", FakeSocketHandler, {"fake": fake}),
            (r"/api/v1/.*", FakeRestHandler, {"fake": fake}),
            (r"/harness", HarnessPageHandler),
            (r"/files/pixel.png", PixelHandler),
        ]
    )
    return fake


# ----- page helpers -----

# Creates window.client and records every event it emits in window.events.
CREATE_CLIENT_JS = """
(options) => {
  window.events = [];
  const client = new IMClient(Object.assign({ baseUrl: location.origin }, options));
  for (const name of ['message', 'sent', 'receipt', 'recalled', 'typing', 'unread',
                      'state', 'error', 'unauthorized', 'synced']) {
    client.on(name, (payload) => window.events.push({ name: name, payload: payload }));
  }
  window.client = client;
  client.connect();
}
"""


def open_harness(page, fake, stored_resume=None, **options):
    """Load the harness page, optionally store a resume point, then connect a client."""
    page.goto(fake.server.url("/harness"))
    if stored_resume is not None:
        page.evaluate("([key, value]) => localStorage.setItem(key, value)", [RESUME_KEY, json.dumps(stored_resume)])
    page.evaluate(CREATE_CLIENT_JS, {"token": TOKEN, **options})


def page_events(page, name):
    return page.evaluate("(name) => window.events.filter((e) => e.name === name).map((e) => e.payload)", name)


def wait_page_events(page, name, count=1, state=None):
    """Wait until the page recorded `count` events of that name (and state); return all of them."""
    page.wait_for_function(
        """([name, count, state]) => window.events.filter(
             (e) => e.name === name && (state === null || e.payload.state === state)).length >= count""",
        arg=[name, count, state],
        timeout=WAIT_TIMEOUT_S * 1000,
    )
    return page_events(page, name)


def stored_resume(page):
    text = page.evaluate("(key) => localStorage.getItem(key)", RESUME_KEY)
    return json.loads(text) if text else None


def states(page):
    return [event["state"] for event in page_events(page, "state")]


# ----- IMClient -----


def test_login_frame_carries_token(browser_page, fake_im):
    open_harness(browser_page, fake_im)

    (_, opened, _), = fake_im.wait_for("open")
    (_, login, _), = fake_im.wait_for("frame", "login")
    wait_page_events(browser_page, "state", state="open")

    assert opened["uri"] == "/ws"
    assert TOKEN not in opened["uri"]
    assert login == {"type": "login", "token": TOKEN}
    assert states(browser_page) == ["connecting", "open"]
    assert browser_page.errors == []


def test_sync_starts_from_stored_ids(browser_page, fake_im):
    open_harness(browser_page, fake_im, stored_resume={"p2p": 41, "group": 7, "system": 3})

    (_, sync, _), = fake_im.wait_for("frame", "sync")

    assert sync["after"] == {"p2p": 41, "group": 7, "system": 3}
    assert sync["limit"] == 200


def test_sync_follows_has_more(browser_page, fake_im):
    syncs_received = []

    def reply_sync(socket, frame):
        syncs_received.append(frame)
        if len(syncs_received) == 1:
            # A batch of two (limit 2) with a live message (id 50) mixed in.
            socket.send_frame({"type": "message", "message": message("p2p", 11)})
            socket.send_frame({"type": "message", "message": message("p2p", 50, "live")})
            socket.send_frame({"type": "message", "message": message("p2p", 12)})
            socket.send_frame({"type": "synced", "channel": "p2p", "hasMore": True})
            socket.send_frame({"type": "message", "message": message("group", 8)})
            socket.send_frame({"type": "synced", "channel": "group", "hasMore": False})
            socket.send_frame({"type": "synced", "channel": "system", "hasMore": False})

    fake_im.on_sync = reply_sync
    open_harness(browser_page, fake_im, stored_resume={"p2p": 10, "group": 7, "system": 0}, syncLimit=2)

    (_, first, _), (_, second, _) = fake_im.wait_for("frame", "sync", count=2)
    resume_during_sync = stored_resume(browser_page)
    # The second batch replays 13 and the already seen 50, then the channel is done.
    fake_im.send(0, {"type": "message", "message": message("p2p", 13)})
    fake_im.send(0, {"type": "message", "message": message("p2p", 50, "live")})
    for channel in ("p2p", "group", "system"):
        fake_im.send(0, {"type": "synced", "channel": channel, "hasMore": False})
    wait_page_events(browser_page, "synced")

    assert first["after"] == {"p2p": 10, "group": 7, "system": 0}
    assert first["limit"] == 2
    assert second["after"] == {"p2p": 12, "group": 8, "system": 0}
    assert resume_during_sync == {"p2p": 10, "group": 8, "system": 0}
    assert stored_resume(browser_page) == {"p2p": 50, "group": 8, "system": 0}
    received = [(m["channel"], m["id"]) for m in page_events(browser_page, "message")]
    assert received == [("p2p", 11), ("p2p", 50), ("p2p", 12), ("group", 8), ("p2p", 13)]


def test_live_message_advances_resume_after_sync(browser_page, fake_im):
    open_harness(browser_page, fake_im, stored_resume={"p2p": 5, "group": 0, "system": 0})
    wait_page_events(browser_page, "synced")

    fake_im.send(0, {"type": "message", "message": message("p2p", 9)})
    wait_page_events(browser_page, "message")

    assert stored_resume(browser_page) == {"p2p": 9, "group": 0, "system": 0}


def test_duplicate_messages_dropped(browser_page, fake_im):
    open_harness(browser_page, fake_im)
    wait_page_events(browser_page, "synced")

    for channel, message_id in [("p2p", 5), ("p2p", 5), ("group", 5), ("p2p", 6), ("p2p", 5), ("group", 5)]:
        fake_im.send(0, {"type": "message", "message": message(channel, message_id)})
    # Frames arrive in order, so once this one is in, every duplicate above was handled.
    fake_im.send(0, {"type": "message", "message": message("system", 1)})
    wait_page_events(browser_page, "message", count=4)
    browser_page.wait_for_timeout(100)

    received = [(m["channel"], m["id"]) for m in page_events(browser_page, "message")]
    assert received == [("p2p", 5), ("group", 5), ("p2p", 6), ("system", 1)]


def test_reconnect_uses_exponential_backoff(browser_page, fake_im):
    # Math.random() = 0.5 makes the full-jitter delays half of each ceiling: 100, 200, 400 ms.
    browser_page.add_init_script("Math.random = () => 0.5;")
    fake_im.drop_opens = 3
    open_harness(browser_page, fake_im, reconnectBaseMs=200)

    wait_page_events(browser_page, "state", state="open")
    opens = fake_im.wait_for("open", count=4)
    offline = [event for event in page_events(browser_page, "state") if event["state"] == "offline"]
    gaps_ms = [(later[2] - earlier[2]) * 1000 for earlier, later in zip(opens, opens[1:])]

    assert [event["retryInMs"] for event in offline] == [100, 200, 400]
    assert [event["closeCode"] for event in offline] == [1011, 1011, 1011]
    for gap, delay in zip(gaps_ms, [100, 200, 400]):
        # Timers never fire early; the 20 ms allow for clock differences between processes.
        assert gap >= delay - 20, f"reconnected after {gap:.0f} ms, expected at least {delay} ms"
    # A dropped socket may still deliver its login frame before the close, so only the last one counts.
    assert 3 in [index for index, _ in fake_im.entries("frame", "login")]

    # After a welcome the backoff starts again from the base delay.
    fake_im.close_socket(3, 1001, "going away")
    wait_page_events(browser_page, "state", count=2, state="open")
    offline = [event for event in page_events(browser_page, "state") if event["state"] == "offline"]

    assert offline[-1]["retryInMs"] == 100
    assert offline[-1]["closeCode"] == 1001
    assert 4 in [index for index, _ in fake_im.entries("frame", "login")]
    assert browser_page.errors == []


def test_no_reconnect_after_4001_until_set_token(browser_page, fake_im):
    expired = make_token(USER_ID) + "-expired"
    fake_im.rejected_tokens.add(expired)
    browser_page.goto(fake_im.server.url("/harness"))
    browser_page.evaluate(CREATE_CLIENT_JS, {"token": expired, "reconnectBaseMs": 50})

    unauthorized = wait_page_events(browser_page, "unauthorized")
    # At a 50 ms base delay, a client that kept retrying would open several sockets in this time.
    browser_page.wait_for_timeout(1500)

    assert unauthorized == [{"code": 4001, "reason": "invalid token"}]
    assert states(browser_page) == ["connecting", "unauthorized"]
    assert len(fake_im.entries("open")) == 1

    browser_page.evaluate("(token) => window.client.setToken(token)", TOKEN)
    wait_page_events(browser_page, "state", state="open")
    logins = [frame["token"] for _, frame in fake_im.entries("frame", "login")]

    assert logins == [expired, TOKEN]
    assert len(fake_im.entries("open")) == 2


def test_send_resolves_on_sent(browser_page, fake_im):
    open_harness(browser_page, fake_im)
    wait_page_events(browser_page, "state", state="open")

    stored = browser_page.evaluate(
        "() => window.client.send({channel: 'p2p', to: 'doctor-7', contentType: 1, content: '你好 😀 <b>'})"
    )
    (_, frame, _), = fake_im.wait_for("frame", "send")

    assert UUID_PATTERN.match(frame["clientMsgId"]), frame["clientMsgId"]
    assert frame["to"] == PEER_ID
    assert frame["content"] == "你好 😀 <b>"
    assert stored["id"] == 1001
    assert stored["clientMsgId"] == frame["clientMsgId"]
    assert stored["content"] == "你好 😀 <b>"
    assert page_events(browser_page, "sent") == [{"clientMsgId": frame["clientMsgId"], "message": stored}]


def test_send_rejects_on_error_with_ref(browser_page, fake_im):
    def reply_with_error(socket, frame):
        socket.send_frame(
            {"type": "error", "code": "rate_limited", "message": "too many sends", "ref": frame["clientMsgId"]}
        )

    fake_im.on_send = reply_with_error
    open_harness(browser_page, fake_im)
    wait_page_events(browser_page, "state", state="open")

    failure = browser_page.evaluate(
        """() => window.client.send({channel: 'group', group: 'team-3', contentType: 1, content: 'hi'})
             .then(() => null, (error) => ({code: error.code, ref: error.ref, message: error.message}))"""
    )
    (_, frame, _), = fake_im.wait_for("frame", "send")

    assert failure == {"code": "rate_limited", "ref": frame["clientMsgId"], "message": "too many sends"}


def test_unconfirmed_send_resent_after_reconnect(browser_page, fake_im):
    browser_page.add_init_script("Math.random = () => 0.5;")

    def confirm_on_second_socket(socket, frame):
        if socket.index >= 1:
            fake_im.reply_send_with_sent(socket, frame)

    fake_im.on_send = confirm_on_second_socket
    open_harness(browser_page, fake_im, reconnectBaseMs=200)
    wait_page_events(browser_page, "state", state="open")

    browser_page.evaluate(
        """() => {
             window.sendResults = [];
             window.client.send({channel: 'p2p', to: 'doctor-7', contentType: 1, content: 'still there?'})
               .then((message) => window.sendResults.push(message), (error) => window.sendResults.push(error.code));
           }"""
    )
    (_, first_send, _), = fake_im.wait_for("frame", "send")
    fake_im.close_socket(0, 1001, "going away")
    (_, _, _), (index, resent, _) = fake_im.wait_for("frame", "send", count=2)
    browser_page.wait_for_function("() => window.sendResults.length === 1")
    browser_page.wait_for_timeout(100)
    results = browser_page.evaluate("() => window.sendResults")

    assert index == 1
    assert resent == first_send
    assert len(results) == 1
    assert results[0]["clientMsgId"] == first_send["clientMsgId"]


def test_rest_error_carries_api_fields(browser_page, fake_im):
    fake_im.rest_routes[("GET", "/api/v1/chats/pm")] = (
        400,
        {"error": {"code": "invalid_argument", "message": "limit must be 1-100", "field": "limit"}},
    )
    fake_im.rest_routes[("GET", "/api/v1/chats/recent")] = (
        200,
        {"conversations": [], "totalUnread": 0, "hasMore": False},
    )
    open_harness(browser_page, fake_im)

    failure = browser_page.evaluate(
        """() => window.client.history('p2p', {peer: 'doctor-7', beforeId: 30, limit: 500}).then(
             () => null,
             (error) => ({status: error.status, code: error.code, field: error.field, message: error.message}))"""
    )
    recent = browser_page.evaluate("() => window.client.recent({limit: 5})")
    history_request, recent_request = fake_im.rest_requests

    assert failure == {"status": 400, "code": "invalid_argument", "field": "limit", "message": "limit must be 1-100"}
    assert history_request["authorization"] == "Bearer " + TOKEN
    assert history_request["query"] == {"user_id": USER_ID, "peer_id": PEER_ID, "before_id": "30", "limit": "500"}
    assert recent == {"conversations": [], "totalUnread": 0, "hasMore": False}
    assert recent_request["query"] == {"user_id": USER_ID, "limit": "5"}


# ----- chat.html -----

MARKUP_SCRIPT = "<script>window.xssRan = 'script'</script>"
MARKUP_IMG = '<img src=x onerror="window.xssRan = \'img\'">'
MARKUP_LIVE = '<img src=y onerror="window.xssRan = \'live\'"><b>bold</b>'


def serve_chat_conversation(fake):
    """Script REST responses for one p2p conversation whose messages contain markup."""
    pixel_url = fake.server.url("/files/pixel.png")
    voice_url = fake.server.url("/files/voice.ogg")
    history = [
        message("p2p", 1, MARKUP_SCRIPT),
        message("p2p", 2, MARKUP_IMG),
        message("p2p", 3, "你好，医生 😀"),
        message("p2p", 4, pixel_url, contentType=2),
        message("p2p", 5, voice_url, contentType=3),
        message("p2p", 6, "javascript:window.xssRan='link'", contentType=4),
        message("p2p", 7, fake.server.url("/files/report%20v2.pdf"), contentType=5),
    ]
    fake.rest_routes[("GET", "/api/v1/chats/recent")] = (
        200,
        {
            "conversations": [
                {
                    "channel": "p2p",
                    "peer": PEER_ID,
                    "unread": 2,
                    "lastMessage": history[-1],
                    "peerReadUpToId": 0,
                }
            ],
            "totalUnread": 2,
            "hasMore": False,
        },
    )
    fake.rest_routes[("GET", "/api/v1/users/" + PEER_ID)] = (
        200,
        {"id": PEER_ID, "name": "王医生 <i>", "role": "doctor", "online": True},
    )
    fake.rest_routes[("GET", "/api/v1/chats/pm")] = (200, {"messages": history, "hasMore": False})

    def reply_read(socket, frame):
        socket.send_frame(
            {"type": "unread", "channel": "p2p", "peer": frame["peer"], "unread": 0, "totalUnread": 0}
        )

    fake.on_read = reply_read
    return pixel_url


def test_chat_page_shows_markup_literally(browser_page, fake_im):
    pixel_url = serve_chat_conversation(fake_im)
    page = browser_page
    page.goto(fake_im.server.url("/chat#token=" + TOKEN))

    item = page.get_by_test_id("conversation-item")
    item.wait_for()

    assert page.evaluate("() => location.hash") == ""
    assert page.get_by_test_id("connection-banner").is_hidden()
    assert page.get_by_test_id("unread-badge").text_content() == "2"
    assert page.get_by_test_id("total-unread").text_content() == "2"
    page.get_by_test_id("conversation-name").filter(has_text="王医生 <i>").wait_for()

    item.click()
    bodies = page.get_by_test_id("message-body")
    page.get_by_test_id("message-item").nth(6).wait_for()
    (_, read, _), = fake_im.wait_for("frame", "read")
    page.get_by_test_id("unread-badge").wait_for(state="hidden")

    assert bodies.nth(0).text_content() == MARKUP_SCRIPT
    assert bodies.nth(1).text_content() == MARKUP_IMG
    assert bodies.nth(2).text_content() == "你好，医生 😀"
    assert page.locator("[data-testid=message-list] img").evaluate_all("(images) => images.map((i) => i.src)") == [
        pixel_url
    ]
    assert page.locator("[data-testid=message-list] audio[controls]").count() == 1
    assert bodies.nth(5).locator("a").count() == 0
    assert bodies.nth(5).text_content() == "javascript:window.xssRan='link'"
    file_link = bodies.nth(6).locator("a")
    assert file_link.text_content() == "report v2.pdf"
    assert file_link.get_attribute("rel") == "noopener"
    assert read == {"type": "read", "channel": "p2p", "peer": PEER_ID, "upToId": 7}
    assert page.get_by_test_id("total-unread").is_hidden()

    fake_im.send(0, {"type": "message", "message": message("p2p", 8, MARKUP_LIVE)})
    page.get_by_test_id("message-item").nth(7).wait_for()

    assert bodies.nth(7).text_content() == MARKUP_LIVE
    assert page.locator("[data-testid=message-list] img").count() == 1
    assert page.locator("[data-testid=message-list] b").count() == 0
    assert page.evaluate("() => window.xssRan") is None
    assert page.errors == []


def test_chat_page_sends_text(browser_page, fake_im):
    serve_chat_conversation(fake_im)
    page = browser_page
    page.goto(fake_im.server.url("/chat#token=" + TOKEN))
    page.get_by_test_id("conversation-item").click()
    page.get_by_test_id("message-item").nth(6).wait_for()

    page.get_by_test_id("message-input").fill("谢谢 🙏 <script>")
    page.get_by_test_id("send-button").click()
    (_, frame, _), = fake_im.wait_for("frame", "send")
    page.locator("[data-testid=message-item][data-status=sent]").wait_for()

    assert frame["content"] == "谢谢 🙏 <script>"
    assert frame["to"] == PEER_ID
    assert page.locator("[data-testid=message-item][data-status=sent]").get_attribute("data-id") == "1001"
    assert page.get_by_test_id("message-input").input_value() == ""


def test_chat_page_banner_shows_offline(browser_page, fake_im):
    browser_page.add_init_script("Math.random = () => 0.99;")
    serve_chat_conversation(fake_im)
    page = browser_page
    page.goto(fake_im.server.url("/chat#token=" + TOKEN))
    page.get_by_test_id("conversation-item").wait_for()
    # Keep the page offline long enough to read the banner: the next two opens are dropped.
    fake_im.drop_opens = 2

    fake_im.close_socket(0, 1001, "going away")
    banner = page.get_by_test_id("connection-banner")
    banner.wait_for(state="visible")

    assert banner.get_attribute("data-state") in ("offline", "connecting")
    banner.wait_for(state="hidden", timeout=15_000)
    # Sockets 1 and 2 were dropped, so socket 3 is the one that logged in.
    assert 3 in [index for index, _ in fake_im.entries("frame", "login")]
