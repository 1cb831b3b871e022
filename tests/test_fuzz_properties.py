"""Property tests with hypothesis: random socket frames and message content.

Both run against a live server on its own thread (tests/hardening_support),
on SQLite and, with IM_TEST_MYSQL_URL, on MariaDB:

- any frame, of any JSON value or none, gets an error frame or a valid
  reply, and the socket stays open unless the frame is over 64 KiB;
- any text of 1-4,000 code points comes back byte for byte from history,
  and text with a lone surrogate is a 400 on ``content``.
"""

import asyncio
import json
import logging

import pytest
import requests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClosedError, websocket_connect

from conf import load_config
from conftest import TEST_SECRET
from hardening_support import LiveServer

FRAME_LIMIT_BYTES = 64 * 1024
CLOSE_TOO_BIG = 1009
ANSWER_SECONDS = 5
MAX_TEXT_CHARS = 4000
FRAME_TYPES = ["send", "sync", "read", "typing", "ping", "login", "pong", "error", ""]
CHANNELS = ["p2p", "group", "system", "P2P", ""]
PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def live_server(database_url):
    config = load_config("test", environ={}, overrides={
        "database_url": database_url, "secret": TEST_SECRET, "port": 0,
        # Random frames may hold many sends; this test is not about floods.
        "ws_sends_per_second": 0,
    })
    server = LiveServer(config).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def users(live_server):
    """Register a doctor and a patient; return their ids and tokens."""
    system, _ = live_server.im.tokens.mint("platform", "system", 3600)
    ids = {"doctor": "prop-doctor", "patient": "prop-patient"}
    for role, user_id in ids.items():
        response = requests.put(f"{live_server.base_url}/api/v1/users/{user_id}",
                                json={"name": user_id, "role": role},
                                headers={"Authorization": f"Bearer {system}"}, timeout=10)
        assert response.status_code == 200, response.text
    tokens = {role: live_server.im.tokens.mint(user_id, role, 3600)[0]
              for role, user_id in ids.items()}
    return {"ids": ids, "tokens": tokens, "system": system}


@pytest.fixture(scope="module")
def server_errors(live_server):
    """Error records the server logs while this module runs."""
    records = []
    handler = logging.Handler(level=logging.ERROR)
    handler.emit = records.append
    logging.getLogger().addHandler(handler)
    yield records
    logging.getLogger().removeHandler(handler)


# -- random frames on one socket ---------------------------------------------------------


class SocketDriver:
    """One logged-in socket, driven from the test thread through its own loop."""

    def __init__(self, ws_url, token):
        self._loop = asyncio.new_event_loop()
        self._url = f"{ws_url}?token={token}"
        self._exchanges = 0
        self.connection = None
        self.reconnect()

    def run(self, coroutine):
        return self._loop.run_until_complete(asyncio.wait_for(coroutine, ANSWER_SECONDS * 2))

    def reconnect(self):
        async def open_socket():
            connection = await websocket_connect(self._url)
            welcome = json.loads(await connection.read_message())
            assert welcome["type"] == "welcome", welcome
            return connection

        self.connection = self.run(open_socket())

    def exchange(self, raw):
        """Send ``raw`` then a marker frame; return the frames before the marker's reply.

        The marker is a frame of an unknown type, unique to this exchange, so
        its error frame (``ref`` = that type) ends the exchange. Returns None
        when the server closed the socket instead.
        """
        self._exchanges += 1
        marker = f"end-of-exchange-{self._exchanges}"

        async def round_trip():
            try:
                await self.connection.write_message(raw)
                await self.connection.write_message(json.dumps({"type": marker}))
            except (WebSocketClosedError, StreamClosedError):
                pass  # closed by the server; the read below returns None
            frames = []
            while True:
                reply = await self.connection.read_message()
                if reply is None:
                    return None
                frame = json.loads(reply)
                if frame.get("type") == "error" and frame.get("ref") == marker:
                    return frames
                frames.append(frame)

        return self.run(round_trip())

    def send_and_wait_for_close(self, raw):
        """Send ``raw`` alone and return the close code the server sends."""

        async def until_closed():
            await self.connection.write_message(raw)
            while await self.connection.read_message() is not None:
                pass
            return self.connection.close_code

        return self.run(until_closed())

    def close(self):
        self.connection.close()
        self._loop.run_until_complete(asyncio.sleep(0.1))
        self._loop.close()


@pytest.fixture(scope="module")
def driver(live_server, users):
    socket_driver = SocketDriver(live_server.ws_url, users["tokens"]["patient"])
    yield socket_driver
    socket_driver.close()


def lone_surrogates():
    return st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)


texts = st.text(st.characters(codec=None, exclude_categories=())
                | lone_surrogates(), max_size=40)
numbers = (st.integers() | st.integers(min_value=2**63 - 2, max_value=2**64)
           | st.integers(min_value=-(2**70), max_value=-(2**62))
           | st.floats(allow_nan=True, allow_infinity=True))
json_values = st.recursive(
    st.none() | st.booleans() | numbers | texts,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)
frame_fields = {
    "channel": st.sampled_from(CHANNELS) | json_values,
    "to": st.sampled_from(["prop-doctor", "prop-patient", "nobody"]) | json_values,
    "peer": st.sampled_from(["prop-doctor", "nobody"]) | json_values,
    "group": st.sampled_from(["no-such-group", ""]) | json_values,
    "contentType": st.integers(min_value=-1, max_value=6) | json_values,
    "content": texts | st.just("https://example.org/a.png") | json_values,
    "clientMsgId": texts | json_values,
    "upToId": numbers | json_values,
    "after": st.dictionaries(st.sampled_from(CHANNELS) | texts, numbers | json_values,
                             max_size=4) | json_values,
    "limit": numbers | json_values,
    "at": st.lists(texts, max_size=60) | json_values,
    "token": texts | json_values,
}
frames = st.fixed_dictionaries(
    {"type": st.sampled_from(FRAME_TYPES) | texts},
    optional=frame_fields,
)


def encode(frame):
    # ensure_ascii escapes lone surrogates as \\udxxx, and allow_nan writes
    # NaN and Infinity, which Python's JSON reader accepts.
    return json.dumps(frame, ensure_ascii=True, allow_nan=True)


raw_frames = (
    frames.map(encode)
    | json_values.map(encode)
    | st.text(max_size=200)
    | st.binary(max_size=200).map(lambda data: data.decode("latin-1"))
)


def assert_answers_are_frames(answers):
    for frame in answers:
        assert isinstance(frame, dict), frame
        assert isinstance(frame.get("type"), str), frame
        if frame["type"] == "error":
            assert isinstance(frame.get("code"), str), frame
            assert isinstance(frame.get("message"), str), frame


@PROPERTY_SETTINGS
@given(raw=raw_frames)
@example(raw='{"type": "sync", "after": {"p2p": 1e400}, "limit": -1}')
@example(raw='{"type": "read", "channel": "p2p", "peer": "prop-doctor", "upToId": 1e309}')
@example(raw='{"type": "send", "channel": "p2p", "to": "prop-doctor", "contentType": 1, '
             '"content": "\\ud800", "clientMsgId": "x"}')
@example(raw='{"type": "typing", "group": {"x": 1}}')
@example(raw='{"type": "sync", "after": {"group": 99999999999999999999999}}')
@example(raw="[" * 10000 + "]" * 10000)
def test_random_frame_never_breaks_socket(driver, server_errors, raw):
    answers = driver.exchange(raw)

    assert answers is not None, f"socket closed with {driver.connection.close_code}"
    assert_answers_are_frames(answers)
    assert [record.getMessage() for record in server_errors] == []


@PROPERTY_SETTINGS
@given(size=st.integers(min_value=FRAME_LIMIT_BYTES - 64, max_value=FRAME_LIMIT_BYTES + 64))
@example(size=FRAME_LIMIT_BYTES)
@example(size=FRAME_LIMIT_BYTES + 1)
def test_only_frames_over_64_kib_close_socket(driver, size):
    prefix = '{"type": "ping", "pad": "'
    raw = prefix + "x" * (size - len(prefix) - 2) + '"}'

    if size > FRAME_LIMIT_BYTES:
        # Sent alone: a frame written after it would reach a closed socket,
        # and the TCP reset sent back can drop the close frame.
        close_code = driver.send_and_wait_for_close(raw)
        driver.reconnect()
        assert close_code == CLOSE_TOO_BIG, f"a frame of {len(raw)} bytes got {close_code}"
    else:
        answers = driver.exchange(raw)
        assert answers == [{"type": "pong"}], f"a frame of {len(raw)} bytes got {answers}"


# -- message content round trips ----------------------------------------------------------


def send_text(server, users, content, client_msg_id):
    body = json.dumps({"from": users["ids"]["doctor"], "to": users["ids"]["patient"],
                       "contentType": 1, "content": content,
                       "clientMsgId": client_msg_id}, ensure_ascii=True)
    return requests.post(f"{server.base_url}/api/v1/chats/pm", data=body.encode(),
                         headers={"Authorization": f"Bearer {users['system']}",
                                  "Content-Type": "application/json"}, timeout=10)


def stored_message(server, users, message_id):
    response = requests.get(
        f"{server.base_url}/api/v1/chats/pm",
        params={"user_id": users["ids"]["patient"], "peer_id": users["ids"]["doctor"],
                "after_id": message_id - 1, "limit": 1},
        headers={"Authorization": f"Bearer {users['system']}"}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["messages"][0]


valid_texts = st.text(st.characters(codec="utf-8"), min_size=1, max_size=MAX_TEXT_CHARS)
counter = iter(range(10**9))


@PROPERTY_SETTINGS
@given(content=valid_texts)
@example(content="😀𠀀中a" * 1000)
@example(content="\x00\r\n\t \u2028\u2029\ufeff\u200b\ufffe\uffff\U0010ffff\U000e0001")
@example(content=" ")
@example(content="e\u0301 \u05d0\u05d1 \u202e reversed \U0001f468\u200d\U0001f469\u200d\U0001f467")
@example(content="'; DROP TABLE msg_p2p; --\\\\%_")
def test_text_round_trips_through_history(live_server, users, content):
    client_msg_id = f"prop-{next(counter)}"

    response = send_text(live_server, users, content, client_msg_id)

    assert response.status_code == 201, response.text
    sent = response.json()["message"]
    assert sent["content"] == content
    stored = stored_message(live_server, users, sent["id"])
    assert stored["clientMsgId"] == client_msg_id
    assert stored["content"].encode("utf-8") == content.encode("utf-8")


@PROPERTY_SETTINGS
@given(before=st.text(max_size=20), surrogate=lone_surrogates(), after=st.text(max_size=20))
def test_text_with_lone_surrogate_is_400(live_server, users, before, surrogate, after):
    response = send_text(live_server, users, before + surrogate + after,
                         f"prop-{next(counter)}")

    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_argument"
    assert response.json()["error"]["field"] == "content"


@pytest.mark.parametrize("depth", [1000, 30000])
def test_deeply_nested_json_body_is_400(live_server, users, depth):
    body = "[" * depth + "]" * depth

    response = requests.post(f"{live_server.base_url}/api/v1/chats/pm", data=body,
                             headers={"Authorization": f"Bearer {users['system']}",
                                      "Content-Type": "application/json"}, timeout=10)

    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_argument"


@pytest.mark.parametrize("content", ["", "a" * (MAX_TEXT_CHARS + 1),
                                     "😀" * (MAX_TEXT_CHARS + 1)])
def test_text_outside_length_limits_is_400(live_server, users, content):
    response = send_text(live_server, users, content, f"prop-{next(counter)}")

    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == "content"
