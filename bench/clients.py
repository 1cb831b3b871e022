"""Lean asyncio clients for the load generator: WebSocket and HTTP/1.1.

Both are plain ``asyncio.Protocol`` classes instead of Tornado's clients so
that the load generator spends a few microseconds per frame or response and
stays far from being the bottleneck on a 2-core machine. They speak just
enough of RFC 6455 and HTTP/1.1 for the IM server's contract on loopback:
text frames, ping/pong and close; keep-alive requests with Content-Length.
"""

import asyncio
import base64
import collections
import json
import os
import struct
import time

import jwt

OPCODE_TEXT = 0x1
OPCODE_CLOSE = 0x8
OPCODE_PING = 0x9
OPCODE_PONG = 0xA


def mint_token(secret, user_id, role, ttl_seconds=3600):
    """Return an HS256 token with the claims the IM server checks (docs/api.md)."""
    now = time.time()
    claims = {"sub": user_id, "role": role, "iat": int(now), "exp": int(now + ttl_seconds)}
    return jwt.encode(claims, secret, algorithm="HS256")


def _mask(payload):
    key = os.urandom(4)
    size = len(payload)
    stream = (key * (size // 4 + 1))[:size]
    masked = int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")
    return key + masked.to_bytes(size, "big")


def _client_frame(opcode, payload):
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    return header + _mask(payload)


class WebSocketClient(asyncio.Protocol):
    """One client WebSocket; calls ``on_frame(client, frame_dict, received_at)``.

    ``opened`` resolves when the server has accepted the upgrade,
    ``welcomed`` with the arrival time of the ``welcome`` frame, ``closed``
    when the connection is gone (result: the close code, or None).
    """

    def __init__(self, path, on_frame, user_id=None):
        loop = asyncio.get_running_loop()
        self.path = path
        self.on_frame = on_frame
        self.user_id = user_id
        self.opened = loop.create_future()
        self.welcomed = loop.create_future()
        self.closed = loop.create_future()
        for future in (self.opened, self.welcomed):
            # Mark failures as retrieved: a caller that gave up on this
            # client need not await them.
            future.add_done_callback(lambda done: done.cancelled() or done.exception())
        self.close_code = None
        self.transport = None
        self._buffer = bytearray()
        self._upgraded = False

    def connection_made(self, transport):
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def data_received(self, data):
        self._buffer += data
        if not self._upgraded:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status_line = bytes(self._buffer[: self._buffer.find(b"\r\n")])
            del self._buffer[: end + 4]
            if b" 101 " not in status_line:
                self._fail(ConnectionError(f"upgrade rejected: {status_line!r}"))
                return
            self._upgraded = True
            self.opened.set_result(self)
        self._read_frames()

    def _read_frames(self):
        buffer = self._buffer
        received_at = time.monotonic()
        while len(buffer) >= 2:
            opcode = buffer[0] & 0x0F
            size = buffer[1] & 0x7F
            offset = 2
            if size == 126:
                if len(buffer) < 4:
                    return
                size = struct.unpack_from("!H", buffer, 2)[0]
                offset = 4
            elif size == 127:
                if len(buffer) < 10:
                    return
                size = struct.unpack_from("!Q", buffer, 2)[0]
                offset = 10
            if len(buffer) < offset + size:
                return
            payload = bytes(buffer[offset: offset + size])
            del buffer[: offset + size]
            if opcode == OPCODE_TEXT:
                frame = json.loads(payload)
                if frame.get("type") == "welcome" and not self.welcomed.done():
                    self.welcomed.set_result(received_at)
                self.on_frame(self, frame, received_at)
            elif opcode == OPCODE_PING:
                self.transport.write(_client_frame(OPCODE_PONG, payload))
            elif opcode == OPCODE_CLOSE:
                if size >= 2:
                    self.close_code = struct.unpack_from("!H", payload)[0]
                self.transport.close()
                return

    def send(self, frame):
        data = json.dumps(frame, ensure_ascii=False, separators=(",", ":")).encode()
        self.transport.write(_client_frame(OPCODE_TEXT, data))

    def close(self, code=1000):
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_client_frame(OPCODE_CLOSE, struct.pack("!H", code)))
            self.transport.close()

    def abort(self):
        """Drop the TCP connection without a close frame, like a lost network."""
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, error):
        if not self.opened.done():
            self.opened.set_exception(error)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc):
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed before upgrade"))
        if not self.welcomed.done():
            self.welcomed.set_exception(
                ConnectionError(f"closed before welcome (code {self.close_code})")
            )
        if not self.closed.done():
            self.closed.set_result(self.close_code)


async def open_socket(port, token, on_frame, user_id=None, timeout=30.0):
    """Open ``/ws?token=...`` and wait for the upgrade; return the client."""
    loop = asyncio.get_running_loop()
    path = f"/ws?token={token}"
    _, client = await asyncio.wait_for(
        loop.create_connection(
            lambda: WebSocketClient(path, on_frame, user_id), "127.0.0.1", port
        ),
        timeout,
    )
    await asyncio.wait_for(client.opened, timeout)
    return client


class HttpConnection(asyncio.Protocol):
    """A keep-alive HTTP/1.1 connection; requests may be pipelined.

    ``request`` writes at once and calls ``callback(status, body)`` when the
    response arrives (status 0 when the connection is lost first).
    """

    def __init__(self):
        self.transport = None
        self.waiting = collections.deque()
        self._buffer = bytearray()

    def connection_made(self, transport):
        self.transport = transport

    def request(self, method, path, head_lines, body, callback):
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Length: {len(body)}\r\n{head_lines}\r\n"
        ).encode()
        self.transport.write(head + body)
        self.waiting.append(callback)

    def data_received(self, data):
        buffer = self._buffer
        buffer += data
        while self.waiting:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end]).lower()
            status = int(head[9:12])
            length = 0
            start = head.find(b"\r\ncontent-length:")
            if start >= 0:
                stop = head.find(b"\r\n", start + 2)
                length = int(head[start + 17: stop if stop >= 0 else None])
            if len(buffer) < end + 4 + length:
                return
            body = bytes(buffer[end + 4: end + 4 + length])
            del buffer[: end + 4 + length]
            self.waiting.popleft()(status, body)

    def connection_lost(self, exc):
        while self.waiting:
            self.waiting.popleft()(0, b"")


class HttpPool:
    """Keep-alive connections to one port; a request goes to an idle one.

    When all are busy the request is pipelined on the next connection in
    turn. Tornado serves a connection's requests one after the other, so
    that request waits there, and the wait counts in its latency.
    """

    def __init__(self, port, size):
        self.port = port
        self.size = size
        self.connections = []
        self._turn = 0

    async def open(self):
        loop = asyncio.get_running_loop()
        for _ in range(self.size):
            _, connection = await loop.create_connection(
                HttpConnection, "127.0.0.1", self.port
            )
            self.connections.append(connection)
        return self

    def request(self, method, path, head_lines, body, callback):
        for connection in self.connections:
            if not connection.waiting:
                connection.request(method, path, head_lines, body, callback)
                return
        self._turn = (self._turn + 1) % len(self.connections)
        self.connections[self._turn].request(method, path, head_lines, body, callback)

    async def call(self, method, path, head_lines, body):
        """One request, awaited: return ``(status, body bytes)``."""
        future = asyncio.get_running_loop().create_future()
        self.request(method, path, head_lines, body,
                     lambda status, data: future.done() or future.set_result((status, data)))
        return await future

    def close(self):
        for connection in self.connections:
            if connection.transport is not None:
                connection.transport.close()


def json_body(payload):
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def auth_lines(token):
    return f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
