"""Graceful shutdown of one server process on SIGTERM and on SIGINT.

Each test runs ``python server.py`` (profile test) as a subprocess on
127.0.0.1 and a free port, against a fresh database per backend: SQLite
always, MariaDB too when IM_TEST_MYSQL_URL is set. A patient keeps a
WebSocket open, a doctor sends to it over REST, and the signal arrives while a
burst of concurrent sends is running and one request is half sent. After a
restart on the same database the patient resumes with ``sync``.
"""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter

import pytest
from tornado.httpclient import HTTPRequest
from tornado.iostream import StreamClosedError
from tornado.simple_httpclient import HTTPStreamClosedError, SimpleAsyncHTTPClient
from tornado.websocket import websocket_connect

from conftest import ROOT, TEST_SECRET, backends, create_database
from services.auth import TokenService

SERVER = os.path.join(ROOT, "server.py")
GRACE_SECONDS = 10
START_TIMEOUT_SECONDS = 20
FRAME_TIMEOUT_SECONDS = 10
CLOSE_GOING_AWAY = 1001
BURST_SIZE = 80
# Small enough that the resume takes several sync rounds.
SYNC_LIMIT = 25
SYNC_CHANNELS = ("p2p", "group", "system")
TOKEN_TTL_SECONDS = 3600


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_environment(database_url):
    """os.environ without IM_ variables, plus the test profile on 127.0.0.1."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("IM_")}
    env.update({
        "IM_PROFILE": "test",
        "IM_SECRET": TEST_SECRET,
        "IM_ADDRESS": "127.0.0.1",
        "IM_DATABASE_URL": database_url,
        "IM_SHUTDOWN_GRACE_SECONDS": str(GRACE_SECONDS),
        "IM_LOG_LEVEL": "info",
    })
    return env


class ServerProcess:
    """``python server.py --port PORT`` with its output in a log file."""

    def __init__(self, port, database_url, log_path):
        self.port = port
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, SERVER, f"--port={port}"], cwd=ROOT,
            env=server_environment(database_url),
            stdout=self._log, stderr=subprocess.STDOUT,
        )

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.port}"

    async def wait_healthy(self, http):
        """Poll /health until it returns 200."""
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"server exited with {self.process.returncode}: {self.output()}"
                )
            try:
                response = await http.fetch(f"{self.base_url}/health", raise_error=False,
                                            request_timeout=2)
                if response.code == 200:
                    return
            except (OSError, StreamClosedError, HTTPStreamClosedError):
                pass
            await asyncio.sleep(0.1)
        raise AssertionError(f"no /health within {START_TIMEOUT_SECONDS} s: {self.output()}")

    async def wait_exit(self, timeout):
        """Poll until the process exits; return its exit status."""
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"server still running after {timeout} s: "
                                     f"{self.output()}")
            await asyncio.sleep(0.05)
        return self.process.returncode

    def output(self):
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self):
        """Stop the process with SIGTERM, or SIGKILL when it does not exit."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=GRACE_SECONDS + 5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture(scope="module", params=backends())
def shutdown_database_url(request, tmp_path_factory):
    url, drop = create_database(request.param, tmp_path_factory)
    yield url
    drop()


@pytest.fixture
def start_server(tmp_path):
    """Return a function that starts a server; every one is stopped afterwards."""
    servers = []

    def start(database_url):
        server = ServerProcess(free_port(), database_url,
                               tmp_path / f"server-{len(servers)}.log")
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def http():
    # Tornado's own client opens one connection per request, so each send in
    # the burst is its own connection. The curl client, which other tests
    # may configure as the default, would reuse connections.
    client = SimpleAsyncHTTPClient(force_instance=True, max_clients=BURST_SIZE + 10)
    yield client
    client.close()


class RestClient:
    def __init__(self, http, base_url):
        self.http = http
        self.base_url = base_url
        self.tokens = TokenService(TEST_SECRET)
        self.system_token = self.token("platform", "system")

    def token(self, user_id, role):
        return self.tokens.mint(user_id, role, TOKEN_TTL_SECONDS)[0]

    async def call(self, method, path, body=None, token=None):
        """Return (status, parsed JSON body) of one request."""
        request = HTTPRequest(
            self.base_url + path, method=method,
            headers={"Authorization": f"Bearer {token or self.system_token}",
                     "Content-Type": "application/json"},
            body=None if body is None else json.dumps(body),
            request_timeout=FRAME_TIMEOUT_SECONDS,
        )
        response = await self.http.fetch(request, raise_error=False)
        return response.code, json.loads(response.body) if response.body else None


def send_body(doctor, patient, group, channel, client_msg_id):
    body = {"from": doctor, "contentType": 1, "content": f"message {client_msg_id}",
            "clientMsgId": client_msg_id}
    if channel == "p2p":
        body["to"] = patient
    else:
        body["group"] = group
    return body


def send_path(channel):
    return "/api/v1/chats/pm" if channel == "p2p" else "/api/v1/chats/gm"


async def send_or_fail(rest, token, body, channel):
    """Return the status of one send, or None when the connection failed."""
    try:
        status, _ = await rest.call("POST", send_path(channel), body, token)
    except (OSError, StreamClosedError, HTTPStreamClosedError):
        # Refused, reset, or closed before the response. A timeout is not
        # caught, because the server must respond or close in time.
        return None
    return status


class LiveSocket:
    """A WebSocket that collects every frame until the server closes it."""

    def __init__(self, connection):
        self.connection = connection
        self.frames = []
        self.reader = asyncio.ensure_future(self._read_all())

    async def _read_all(self):
        while True:
            raw = await self.connection.read_message()
            if raw is None:
                return self.connection.close_code
            self.frames.append(json.loads(raw))

    def messages(self):
        return [frame["message"] for frame in self.frames if frame["type"] == "message"]


async def read_frame(connection):
    raw = await asyncio.wait_for(connection.read_message(), FRAME_TIMEOUT_SECONDS)
    assert raw is not None, f"socket closed with {connection.close_code} during sync"
    return json.loads(raw)


async def resume_with_sync(connection, after):
    """Sync every channel from ``after`` until hasMore is false; return the messages."""
    positions = dict(after)
    pending = set(SYNC_CHANNELS)
    messages = []
    while pending:
        frame = {"type": "sync", "limit": SYNC_LIMIT,
                 "after": {channel: positions[channel] for channel in pending}}
        await connection.write_message(json.dumps(frame))
        waiting = set(pending)
        while waiting:
            frame = await read_frame(connection)
            if frame["type"] == "message":
                message = frame["message"]
                messages.append(message)
                channel = message["channel"]
                positions[channel] = max(positions[channel], message["id"])
            elif frame["type"] == "synced":
                waiting.discard(frame["channel"])
                if not frame["hasMore"]:
                    pending.discard(frame["channel"])
    return messages


def partial_request(path, token, body):
    """Split a raw HTTP request so that its body can be sent in two parts."""
    head = (f"POST {path} HTTP/1.1\r\n"
            "Host: 127.0.0.1\r\n"
            f"Authorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode()
    return head + body[:10], body[10:]


def parse_raw_response(raw):
    """Return (status, parsed JSON body) of a raw HTTP/1.1 response."""
    assert raw.startswith(b"HTTP/1.1 "), f"no HTTP response, received {raw[:200]!r}"
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode()
    return int(status_line.split()[1]), json.loads(body)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT],
                         ids=["SIGTERM", "SIGINT"])
@pytest.mark.gen_test(timeout=90)
async def test_shutdown_finishes_requests_and_loses_nothing(
        signum, shutdown_database_url, start_server, http, unique):
    server = start_server(shutdown_database_url)
    await server.wait_healthy(http)
    rest = RestClient(http, server.base_url)
    doctor, patient, group = unique("doc"), unique("pat"), unique("team")
    for user_id, role in ((doctor, "doctor"), (patient, "patient")):
        status, answer = await rest.call("PUT", f"/api/v1/users/{user_id}",
                                         {"name": user_id, "role": role})
        assert status == 200, answer
    status, answer = await rest.call("POST", "/api/v1/groups", {
        "id": group, "name": "care team", "type": 1, "members": [doctor, patient]})
    assert status == 201, answer
    doctor_token = rest.token(doctor, "doctor")
    patient_token = rest.token(patient, "patient")
    ws_url = f"ws://127.0.0.1:{server.port}/ws?token={patient_token}"
    live = LiveSocket(await websocket_connect(ws_url))

    # Before the shutdown: one send at a time, each awaiting its response.
    sent_before = []
    for index, channel in enumerate(["p2p", "group", "p2p", "group", "p2p"]):
        client_msg_id = f"{channel}-before-{index}"
        body = send_body(doctor, patient, group, channel, client_msg_id)
        status = await send_or_fail(rest, doctor_token, body, channel)
        assert status == 201, client_msg_id
        sent_before.append(client_msg_id)

    # One request whose headers and part of its body arrive before the signal.
    slow_id = "p2p-slow"
    slow_body = json.dumps(send_body(doctor, patient, group, "p2p", slow_id)).encode()
    first_part, second_part = partial_request(send_path("p2p"), doctor_token, slow_body)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(first_part)
    await writer.drain()

    # The burst: the signal follows the first response to one of its sends.
    burst = {}
    for index in range(BURST_SIZE):
        channel = "p2p" if index % 2 == 0 else "group"
        client_msg_id = f"{channel}-burst-{index}"
        body = send_body(doctor, patient, group, channel, client_msg_id)
        burst[client_msg_id] = asyncio.ensure_future(
            send_or_fail(rest, doctor_token, body, channel))
    await asyncio.wait(list(burst.values()), return_when=asyncio.FIRST_COMPLETED)
    signalled_at = time.monotonic()
    server.process.send_signal(signum)

    close_code = await asyncio.wait_for(live.reader, FRAME_TIMEOUT_SECONDS)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", server.port)
    burst_statuses = {client_msg_id: await task for client_msg_id, task in burst.items()}
    # Every other send is over; the server must still wait for this one.
    running_while_request_open = server.process.poll() is None
    writer.write(second_part)
    await writer.drain()
    slow_status, slow_answer = parse_raw_response(
        await asyncio.wait_for(reader.read(), FRAME_TIMEOUT_SECONDS))
    writer.close()
    exit_code = await server.wait_exit(GRACE_SECONDS + 5)
    stopped_after = time.monotonic() - signalled_at
    output = server.output()

    assert close_code == CLOSE_GOING_AWAY
    assert running_while_request_open, output
    assert slow_status == 201, slow_answer
    assert slow_answer["message"]["clientMsgId"] == slow_id
    assert set(burst_statuses.values()) <= {201, None}, burst_statuses
    assert exit_code == 0, output
    assert stopped_after < GRACE_SECONDS, output
    assert "Shutting down" in output
    assert "Traceback" not in output

    # After a restart the patient resumes from the last ids it saw live.
    answered = sent_before + [slow_id] + sorted(
        client_msg_id for client_msg_id, status in burst_statuses.items() if status == 201)
    last_ids = {channel: 0 for channel in SYNC_CHANNELS}
    for message in live.messages():
        last_ids[message["channel"]] = max(last_ids[message["channel"]], message["id"])
    restarted = start_server(shutdown_database_url)
    await restarted.wait_healthy(http)
    rest = RestClient(http, restarted.base_url)
    resumed = await websocket_connect(
        f"ws://127.0.0.1:{restarted.port}/ws?token={patient_token}")
    welcome = await read_frame(resumed)
    replayed = await resume_with_sync(resumed, last_ids)
    resumed.close()
    status, recent = await rest.call("GET", f"/api/v1/chats/recent?user_id={patient}",
                                     token=patient_token)

    received = live.messages() + replayed
    received_keys = Counter((message["channel"], message["id"]) for message in received)
    received_ids = Counter(message["clientMsgId"] for message in received)
    assert welcome["type"] == "welcome"
    assert [key for key, count in received_keys.items() if count > 1] == []
    assert [key for key, count in received_ids.items() if count > 1] == []
    assert sorted(received_ids) == sorted(answered)
    assert status == 200, recent
    unread = {conversation["channel"]: conversation["unread"]
              for conversation in recent["conversations"]}
    assert unread == {
        "p2p": sum(1 for client_msg_id in answered if client_msg_id.startswith("p2p")),
        "group": sum(1 for client_msg_id in answered if client_msg_id.startswith("group")),
    }
    assert recent["totalUnread"] == len(answered)
