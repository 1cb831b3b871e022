"""WebSocket connection life: frame size, slow readers, server pings, shutdown.

Some of these tests use ``RawSocket``, a bare client that reads only when
asked and never sends a pong, because Tornado's client reads in the
background and replies to every ping itself.
"""

import asyncio
import base64
import json
import os
import signal
import socket
import struct
import subprocess
import sys
from types import SimpleNamespace

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.websocket import websocket_connect

from conf import load_config
from handlers import make_app

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAME_LIMIT_BYTES = 64 * 1024
OPCODE_TEXT = 0x1
OPCODE_CLOSE = 0x8
OPCODE_PING = 0x9
# Small enough that the kernel buffers little for a client that stops reading.
RECEIVE_BUFFER_BYTES = 4096
PENDING_OUTPUT_LIMIT_BYTES = 64 * 1024
# About 12 KB of UTF-8 per frame: 4,000 three-byte characters.
FLOOD_TEXT = "体" * 4000
MAX_FLOOD_MESSAGES = 3000
FAST_PING_SECONDS = 0.3
FAST_PINGS = {
    "ws_ping_interval_seconds": FAST_PING_SECONDS,
    "ws_ping_timeout_seconds": FAST_PING_SECONDS,
}
SERVER_START_SECONDS = 20


@pytest.fixture
def config(config, request):
    """Return the suite's config with the settings a test passes by ``with_settings``."""
    for name, value in getattr(request, "param", {}).items():
        setattr(config, name, value)
    return config


def with_settings(settings, name):
    """Mark a test to run with these Config settings, shown as ``name`` in its id."""
    return pytest.mark.parametrize("config", [settings], indirect=True, ids=[name])


class RawSocket:
    """A WebSocket client on a plain socket: it reads only when asked.

    It never sends a pong, and its small receive buffer makes the server's
    output pile up on the server once the test stops reading.
    """

    def __init__(self, sock):
        self.sock = sock
        self.buffer = b""

    @classmethod
    async def open(cls, port, token):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        sock.setblocking(False)
        raw = cls(sock)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /ws?token={token} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        await loop.sock_sendall(sock, request.encode())
        head = await raw._read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return raw

    async def _receive(self):
        chunk = await asyncio.get_running_loop().sock_recv(self.sock, 65536)
        if not chunk:
            raise EOFError("server closed the TCP connection")
        self.buffer += chunk

    async def _read_until(self, marker):
        while marker not in self.buffer:
            await self._receive()
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    async def _read_exactly(self, size):
        while len(self.buffer) < size:
            await self._receive()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    async def read_frame(self):
        """Return (opcode, payload) of the next frame; the server never masks."""
        first, second = await self._read_exactly(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack(">H", await self._read_exactly(2))
        elif length == 127:
            (length,) = struct.unpack(">Q", await self._read_exactly(8))
        return first & 0x0F, await self._read_exactly(length)

    async def read_until_close(self):
        """Read to the close frame; return (its code, the text frames before it)."""
        texts = []
        while True:
            opcode, payload = await self.read_frame()
            if opcode == OPCODE_TEXT:
                texts.append(json.loads(payload))
            elif opcode == OPCODE_CLOSE:
                code = struct.unpack(">H", payload[:2])[0] if payload else None
                return code, texts

    def close(self):
        self.sock.close()


@pytest.fixture
def raw_socket(http_port):
    """Open RawSockets to the test server: ``await raw_socket(token)``."""
    opened = []

    async def open_raw(token):
        raw = await RawSocket.open(http_port, token)
        opened.append(raw)
        return raw

    yield open_raw
    for raw in opened:
        raw.close()


def server_is_closing(im, user_id):
    """Whether the server has started to close every socket of ``user_id``."""
    return all(
        handler.ws_connection is None or handler.ws_connection.is_closing()
        for handler in im.registry.sockets_of(user_id)
    )


async def flood_until_closing(api, im, sender, recipient):
    """Send large pms until the server closes the recipient's socket.

    Return the ids of the messages sent.
    """
    ids = []
    while not server_is_closing(im, recipient) and len(ids) < MAX_FLOOD_MESSAGES:
        status, answer, _ = await api.post(
            "/api/v1/chats/pm",
            {"from": sender, "to": recipient, "contentType": 1, "content": FLOOD_TEXT},
        )
        assert status == 201, answer
        ids.append(answer["message"]["id"])
    return ids


# -- frame size ---------------------------------------------------------------


def padded_ping(size):
    """A ping frame of exactly ``size`` bytes of JSON."""
    empty = json.dumps({"type": "ping", "pad": ""})
    return json.dumps({"type": "ping", "pad": "x" * (size - len(empty))})


@pytest.mark.gen_test(timeout=30)
async def test_frame_of_64_kib_is_accepted(api, connect, unique):
    token = await api.user(unique("pat"))
    socket = await connect(token)

    await socket.connection.write_message(padded_ping(FRAME_LIMIT_BYTES))

    frame = await socket.expect("pong")
    assert frame == {"type": "pong"}


@pytest.mark.gen_test(timeout=30)
async def test_frame_over_64_kib_closes_1009(api, connect, unique):
    token = await api.user(unique("pat"))
    socket = await connect(token)

    await socket.connection.write_message(padded_ping(FRAME_LIMIT_BYTES + 1))

    assert await socket.closed() == 1009


# -- slow readers -------------------------------------------------------------


@pytest.mark.gen_test(timeout=90)
async def test_slow_reader_is_closed_with_4008(api, im, raw_socket, unique):
    doctor, patient = unique("doc"), unique("pat")
    await api.user(doctor, "doctor")
    token = await api.user(patient)
    im.config.ws_max_pending_output_bytes = PENDING_OUTPUT_LIMIT_BYTES
    reader = await raw_socket(token)

    sent_ids = await flood_until_closing(api, im, doctor, patient)

    assert server_is_closing(im, patient), f"still open after {len(sent_ids)} messages"
    code, frames = await reader.read_until_close()
    assert code == 4008
    assert frames[0]["type"] == "welcome"


@pytest.mark.gen_test(timeout=90)
async def test_slow_reader_resumes_with_sync(api, im, raw_socket, connect, unique):
    doctor, patient = unique("doc"), unique("pat")
    await api.user(doctor, "doctor")
    token = await api.user(patient)
    im.config.ws_max_pending_output_bytes = PENDING_OUTPUT_LIMIT_BYTES
    reader = await raw_socket(token)
    sent_ids = await flood_until_closing(api, im, doctor, patient)
    _, frames = await reader.read_until_close()
    seen_ids = [frame["message"]["id"] for frame in frames if frame["type"] == "message"]
    resume_id = max(seen_ids)
    socket = await connect(token)

    await socket.send({"type": "sync", "after": {"p2p": resume_id}, "limit": 1000})

    synced = await socket.expect("synced", channel="p2p")
    replayed_ids = [
        frame["message"]["id"] for frame in socket.frames if frame["type"] == "message"
    ]
    assert seen_ids == sent_ids[: len(seen_ids)]
    assert replayed_ids == [i for i in sent_ids if i > resume_id]
    assert synced["hasMore"] is False


# -- server pings -------------------------------------------------------------


@with_settings(FAST_PINGS, "fast_pings")
@pytest.mark.gen_test(timeout=30)
async def test_server_pings_connected_socket(api, raw_socket, unique):
    token = await api.user(unique("pat"))
    raw = await raw_socket(token)
    welcome_opcode, _ = await raw.read_frame()

    opcode, _ = await raw.read_frame()

    assert welcome_opcode == OPCODE_TEXT
    assert opcode == OPCODE_PING


@with_settings(FAST_PINGS, "fast_pings")
@pytest.mark.gen_test(timeout=30)
async def test_silent_socket_is_dropped(api, raw_socket, unique):
    token = await api.user(unique("pat"))
    raw = await raw_socket(token)

    code, frames = await asyncio.wait_for(raw.read_until_close(), 10)

    assert code is not None
    assert [frame["type"] for frame in frames] == ["welcome"]


@with_settings(FAST_PINGS, "fast_pings")
@pytest.mark.gen_test(timeout=30)
async def test_socket_answering_pings_stays_open(api, connect, unique):
    token = await api.user(unique("pat"))
    socket = await connect(token)

    # Tornado's client sends a pong for every ping, so each check passes.
    await asyncio.sleep(10 * FAST_PING_SECONDS)
    await socket.send({"type": "ping"})

    assert await socket.expect("pong") == {"type": "pong"}
    assert socket.close_code is None


@pytest.mark.gen_test(timeout=30)
async def test_default_pings_drop_after_60_seconds(api, connect, im, unique):
    patient = unique("pat")
    await connect(await api.user(patient))

    (handler,) = im.registry.sockets_of(patient)
    protocol = handler.ws_connection

    # Tornado pings after each interval, then waits ping_timeout for the pong.
    assert protocol.ping_interval == 30
    assert protocol.ping_interval + protocol.ping_timeout == 60


def test_prod_profile_keeps_documented_limits():
    config = load_config("prod", environ={
        "IM_DATABASE_URL": "mysql+pymysql://im@127.0.0.1:3306/im",
        "IM_SECRET": "s" * 32,
    })

    app = make_app(SimpleNamespace(config=config))

    assert config.ws_login_timeout_seconds == 10
    assert config.ws_max_pending_output_bytes == 1024 * 1024
    assert config.ws_sends_per_second == 20
    assert app.settings["websocket_max_message_size"] == FRAME_LIMIT_BYTES
    assert app.settings["websocket_ping_interval"] == 30


# -- shutdown -----------------------------------------------------------------


def unused_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def server_process(config, tmp_path):
    """Start ``server.py`` in its own process on the test database.

    Yield (process, "host:port", log path); the process is killed at the end
    if it is still running. No IM_* variable of the caller reaches it, so it
    never pushes to a vendor.
    """
    port = unused_port()
    inherited = {
        name: value for name, value in os.environ.items() if not name.startswith("IM_")
    }
    environment = dict(
        inherited,
        IM_PROFILE="test",
        IM_DATABASE_URL=config.database_url,
        IM_SECRET=config.secret,
        IM_ADDRESS="127.0.0.1",
        IM_PORT=str(port),
    )
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "server.py"], cwd=ROOT, env=environment,
            stdout=log, stderr=subprocess.STDOUT,
        )
    yield process, f"127.0.0.1:{port}", log_path
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


async def wait_until_serving(host, process, log_path):
    client = AsyncHTTPClient()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SERVER_START_SECONDS
    while loop.time() < deadline and process.poll() is None:
        try:
            response = await client.fetch(f"http://{host}/health", raise_error=False)
        except OSError:
            response = None
        if response is not None and response.code == 200:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"server.py did not start:\n{log_path.read_text()[-2000:]}")


@pytest.mark.gen_test(timeout=60)
async def test_shutdown_closes_sockets_with_1001(server_process, im, unique):
    process, host, log_path = server_process
    await wait_until_serving(host, process, log_path)
    token, _ = im.tokens.mint(unique("pat"), "patient", 3600)
    connection = await websocket_connect(f"ws://{host}/ws?token={token}")
    welcome = json.loads(await connection.read_message())

    process.send_signal(signal.SIGTERM)
    while await connection.read_message() is not None:
        pass

    assert welcome["type"] == "welcome"
    assert connection.close_code == 1001
    with pytest.raises(OSError):
        await websocket_connect(f"ws://{host}/ws?token={token}")
