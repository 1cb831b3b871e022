"""Cluster mode: two server processes sharing one MariaDB database and Redis.

Both processes run ``python server.py`` with ``IM_REDIS_URL`` pointing at a
small TCP relay in front of Redis, so a test can cut Redis off from both of
them and bring it back. A Getui fake in a third process receives the pushes
of both, and the tests read the push outbox (``msg_push``) directly to see
which pushes were queued.

The module needs IM_TEST_MYSQL_URL and a Redis server on 127.0.0.1:6379
that replies to PING, and is skipped otherwise. It uses Redis database
``REDIS_TEST_DB`` only (or the one in IM_TEST_REDIS_URL) and empties it
before and after the run.
"""

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass

import pytest
import redis
from sqlalchemy import create_engine, text
from tornado.httpclient import AsyncHTTPClient
from tornado.websocket import websocket_connect

from conftest import MYSQL_URL_VARIABLE, ROOT, TEST_SECRET, Socket, create_database
from services.auth import TokenService
from test_ordering import (
    CHANNELS,
    SYNC_LIMIT,
    NodeClient,
    ResumingClient,
    Traffic,
    audit_sessions,
    free_port,
    read_reference,
)

REDIS_URL_VARIABLE = "IM_TEST_REDIS_URL"
REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
# A database number no other suite here uses; FLUSHDB empties only it.
REDIS_TEST_DB = 11
PRESENCE_TTL_SECONDS = 3
# The refresh interval the bus uses for this TTL (services.cluster).
PRESENCE_REFRESH_SECONDS = PRESENCE_TTL_SECONDS / 3
SERVER_START_SECONDS = 20
FRAME_WAIT_SECONDS = 5
OUTAGE_LOG_LINE = "Redis unreachable"
GETUI_APP = {"app_id": "fakeGetuiAppId01", "app_key": "fakeGetuiAppKey01",
             "master_secret": "fakeGetuiMasterSecret01"}


def redis_test_url():
    return os.environ.get(REDIS_URL_VARIABLE) or (
        f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_TEST_DB}"
    )


def flush_test_redis():
    """Empty the suite's Redis database. Raises redis.RedisError when Redis is down."""
    client = redis.Redis.from_url(redis_test_url(), socket_timeout=2,
                                  socket_connect_timeout=2)
    try:
        client.ping()
        client.flushdb()
    finally:
        client.close()


# -- infrastructure: a Redis relay, the Getui fake, server processes -----------


class RedisRelay:
    """A TCP relay on 127.0.0.1 in front of Redis that a test can cut.

    ``cut`` stops listening and closes every relayed connection, so both
    the servers' open connections and their reconnects fail at once, as
    when the Redis server stops. ``restore`` listens again on the same
    port.
    """

    def __init__(self, target_host, target_port):
        self.target = (target_host, target_port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._connections = []
        self._listener = None
        self._accepting = None

    def start(self):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.1)
        self._listener = listener
        self._accepting = threading.Thread(target=self._accept_loop, args=(listener,),
                                           daemon=True)
        self._accepting.start()

    def cut(self):
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
            self._accepting.join()
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            _close_quietly(connection)

    restore = start

    def _accept_loop(self, listener):
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._connections += [client, upstream]
            if self._listener is not listener:
                # ``cut`` ran while this connection was being set up.
                _close_quietly(client)
                _close_quietly(upstream)
                return
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source, sink):
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    _close_quietly(source)
    _close_quietly(sink)


def _close_quietly(connection):
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    connection.close()


class GetuiFakeProcess:
    """``python -m tests.fakes.getui_fake`` accepting any client id."""

    def __init__(self):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.getui_fake", "--port", "0",
             "--accept-any-cid"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        self.port = int(self.process.stdout.readline())
        self.base_url = f"http://127.0.0.1:{self.port}"

    def sent(self):
        with _open_local(f"{self.base_url}/_fake/sent") as response:
            return json.loads(response.read())["sent"]

    def stop(self):
        _end_process(self.process, signal.SIGTERM)


def _open_local(url, headers=None):
    # Every address here is on 127.0.0.1: never route through a proxy.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return opener.open(urllib.request.Request(url, headers=headers or {}), timeout=5)


def _end_process(process, signum):
    """Send ``signum``, and SIGKILL when the process is still there after 5 s."""
    if process.poll() is None:
        process.send_signal(signum)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class ClusterNode:
    """One ``python server.py`` process in cluster mode on 127.0.0.1."""

    def __init__(self, label, database_url, redis_url, getui_url, log_path):
        self.label = label
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.name = f"node-{label}-{self.port}"
        self.log_path = log_path
        env = dict(
            os.environ,
            IM_PROFILE="test",
            IM_SECRET=TEST_SECRET,
            IM_DATABASE_URL=database_url,
            IM_ADDRESS="127.0.0.1",
            IM_NODE_NAME=self.name,
            IM_REDIS_URL=redis_url,
            IM_PRESENCE_TTL_SECONDS=str(PRESENCE_TTL_SECONDS),
            IM_PUSH_INTERVAL_SECONDS="0.2",
            IM_GETUI_BASE_URL=f"{getui_url}/v2",
            IM_GETUI_APP_ID=GETUI_APP["app_id"],
            IM_GETUI_APP_KEY=GETUI_APP["app_key"],
            IM_GETUI_MASTER_SECRET=GETUI_APP["master_secret"],
            NO_PROXY="127.0.0.1,localhost",
        )
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "server.py", "--port", str(self.port)],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, system_token):
        """Wait until the node serves /metrics and reports its subscription up."""
        deadline = time.monotonic() + SERVER_START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.log()}"
                )
            if self.subscribed(system_token):
                return
            time.sleep(0.1)
        raise AssertionError(f"{self.name} not ready within {SERVER_START_SECONDS} s")

    def subscribed(self, system_token):
        """Return whether /metrics reports the Redis subscription as up."""
        try:
            with _open_local(f"{self.base_url}/metrics",
                             {"Authorization": f"Bearer {system_token}"}) as response:
                metrics = response.read().decode()
        except OSError:
            return False
        return re.search(r"^im_cluster_connected 1(\.0)?$", metrics, re.M) is not None

    def log(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as log_file:
            return log_file.read()

    def kill(self):
        """End the process with SIGKILL: no shutdown, no presence cleanup."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self):
        _end_process(self.process, signal.SIGTERM)
        self._log.close()


@dataclass
class Cluster:
    """The processes of a test run and what the tests need to reach them."""

    nodes: list
    relay: RedisRelay
    getui: GetuiFakeProcess
    database_url: str
    redis_url: str
    tokens: TokenService
    system_token: str
    engine: object
    log_dir: object

    def start_nodes(self, *labels):
        """Start one server process per label and wait until all are ready."""
        started = [
            ClusterNode(label, self.database_url, self.redis_url, self.getui.base_url,
                        self.log_dir / f"{label}.log")
            for label in labels
        ]
        self.nodes += started
        for node in started:
            node.wait_ready(self.system_token)
        return started

    def pushes_queued(self, user_id):
        """Return how many pushes the outbox holds for a user, in any state."""
        with self.engine.connect() as conn:
            return conn.execute(
                text("SELECT COUNT(*) FROM msg_push WHERE user_id = :u"), {"u": user_id}
            ).scalar()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not os.environ.get(MYSQL_URL_VARIABLE):
        pytest.skip(f"{MYSQL_URL_VARIABLE} is not set; cluster mode needs MariaDB")
    try:
        flush_test_redis()
    except redis.RedisError as error:
        pytest.skip(f"Redis at {redis_test_url()} does not answer PING ({error})")

    with contextlib.ExitStack() as cleanup:
        cleanup.callback(flush_test_redis)
        database_url, drop_database = create_database("mariadb", tmp_path_factory)
        cleanup.callback(drop_database)
        engine = create_engine(database_url)
        cleanup.callback(engine.dispose)
        target = redis.connection.parse_url(redis_test_url())
        relay = RedisRelay(target.get("host", REDIS_HOST), target.get("port", REDIS_PORT))
        relay.start()
        cleanup.callback(relay.cut)
        getui = GetuiFakeProcess()
        cleanup.callback(getui.stop)
        tokens = TokenService(TEST_SECRET)
        cluster = Cluster(
            nodes=[], relay=relay, getui=getui, database_url=database_url,
            redis_url=f"redis://127.0.0.1:{relay.port}/{target.get('db', 0)}",
            tokens=tokens, system_token=tokens.mint("platform", "system", 3600)[0],
            engine=engine, log_dir=tmp_path_factory.mktemp("cluster"),
        )

        @cleanup.callback
        def stop_nodes():
            for node in cluster.nodes:
                node.stop()

        cluster.start_nodes("a", "b")
        yield cluster


# -- clients -------------------------------------------------------------------


class Node(NodeClient):
    """REST and WebSocket client of one cluster node."""

    async def delete(self, path, token):
        return await self.call("DELETE", path, None, token)

    async def open(self, token):
        """Open a socket with ``?token=`` and return it once ``welcome`` arrived."""
        socket_client = await self.socket(token)
        socket_client.frames.clear()
        return socket_client


@pytest.fixture
def http(io_loop):
    client = AsyncHTTPClient(force_instance=True, max_clients=40)
    yield client
    client.close()


@pytest.fixture
def nodes(cluster, http):
    return [Node(node, http) for node in cluster.nodes[:2]]


@pytest.fixture
def sockets():
    """Close every socket a test opened through ``sockets.append``."""
    opened = []
    yield opened
    for socket_client in opened:
        socket_client.close()


@pytest.fixture
def people(cluster, nodes):
    """Return coroutine functions that register a user (returning its token)
    and create a group, both through node A."""

    async def register(user_id, role="patient", **fields):
        body = {"name": user_id, "role": role, **fields}
        status, answer = await nodes[0].put(f"/api/v1/users/{user_id}", body,
                                            cluster.system_token)
        assert status == 200, answer
        return cluster.tokens.mint(user_id, role, 3600)[0]

    async def group(group_id, members):
        body = {"id": group_id, "name": group_id, "type": 1, "members": members}
        status, answer = await nodes[0].post("/api/v1/groups", body, cluster.system_token)
        assert status == 201, answer

    return register, group


async def open_socket(node, token, sockets):
    socket_client = await node.open(token)
    sockets.append(socket_client)
    return socket_client


async def messages_on(ws, count, timeout=FRAME_WAIT_SECONDS):
    """Read until ``count`` message frames have arrived and return their messages.

    Counts every message frame the socket has received so far, also those
    that ``expect`` skipped while it looked for another frame type.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        messages = [frame["message"] for frame in ws.frames if frame["type"] == "message"]
        if len(messages) >= count:
            return messages
        try:
            frame = await ws.recv(max(deadline - loop.time(), 0))
        except asyncio.TimeoutError:
            raise AssertionError(
                f"{len(messages)} of {count} messages within {timeout} s"
            ) from None
        if frame is None:
            raise AssertionError(f"socket closed with {ws.close_code}")


async def next_frame(ws, frame_type, timeout=FRAME_WAIT_SECONDS, **fields):
    """Return the next frame of ``frame_type`` with ``fields``, skipping others."""
    try:
        return await ws.expect(frame_type, timeout=timeout, **fields)
    except asyncio.TimeoutError:
        raise AssertionError(f"no {frame_type!r} frame within {timeout} s") from None


def pm_body(sender, recipient, content):
    return {"from": sender, "to": recipient, "contentType": 1, "content": content}


def gm_body(sender, group, content):
    return {"from": sender, "group": group, "contentType": 1, "content": content}


def sm_body(recipient, content):
    return {"to": recipient, "title": "随访提醒", "summary": "复诊",
            "contentType": 1, "content": content}


# -- delivery across processes -------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_rest_sends_reach_other_node(cluster, nodes, people, unique, sockets):
    register, make_group = people
    doctor, patient, group = unique("doc"), unique("pat"), unique("team")
    doctor_token = await register(doctor, "doctor")
    patient_token = await register(patient)
    await make_group(group, [doctor, patient])
    node_a, node_b = nodes
    ws = await open_socket(node_a, patient_token, sockets)

    pm_status, pm = await node_b.post("/api/v1/chats/pm",
                                      pm_body(doctor, patient, "血压 128/82 😀"),
                                      doctor_token)
    pm_frame = await next_frame(ws, "message")
    gm_status, gm = await node_b.post("/api/v1/chats/gm",
                                      gm_body(doctor, group, "请按时服药"), doctor_token)
    gm_frame = await next_frame(ws, "message")
    sm_status, sm = await node_b.post("/api/v1/chats/sm", sm_body(patient, "明天复诊"),
                                      cluster.system_token)
    sm_frame = await next_frame(ws, "message")

    assert pm_status == 201, pm
    assert pm["online"] is True
    assert pm_frame["message"] == pm["message"]
    assert gm_status == 201, gm
    assert gm["online"] is True
    assert gm_frame["message"] == gm["message"]
    assert sm_status == 201, sm
    assert sm_frame["message"] == sm["message"]
    await ws.no_frame()


@pytest.mark.gen_test(timeout=30)
async def test_socket_send_crosses_nodes(
        nodes, people, unique, sockets):
    register, make_group = people
    doctor, patient, group = unique("doc"), unique("pat"), unique("team")
    doctor_token = await register(doctor, "doctor")
    patient_token = await register(patient)
    await make_group(group, [doctor, patient])
    node_a, node_b = nodes
    patient_ws = await open_socket(node_a, patient_token, sockets)
    doctor_ws = await open_socket(node_b, doctor_token, sockets)

    await doctor_ws.send({"type": "send", "channel": "p2p", "to": patient,
                          "contentType": 1, "content": "今天感觉怎么样?",
                          "clientMsgId": "ws-p2p-1"})
    sent_p2p = await next_frame(doctor_ws, "sent")
    received_p2p = await next_frame(patient_ws, "message")
    await doctor_ws.send({"type": "send", "channel": "group", "group": group,
                          "contentType": 1, "content": "群里通知", "clientMsgId": "ws-gm-1"})
    sent_group = await next_frame(doctor_ws, "sent")
    received_group = await next_frame(patient_ws, "message")

    assert sent_p2p["clientMsgId"] == "ws-p2p-1"
    assert received_p2p["message"] == sent_p2p["message"]
    assert received_p2p["message"]["clientMsgId"] == "ws-p2p-1"
    assert sent_group["clientMsgId"] == "ws-gm-1"
    assert received_group["message"] == sent_group["message"]
    # The sending socket gets ``sent`` only, never its own message frame.
    assert [frame["type"] for frame in doctor_ws.frames] == ["sent", "sent"]
    await doctor_ws.no_frame()
    await patient_ws.no_frame()


@pytest.mark.gen_test(timeout=30)
async def test_sockets_on_both_nodes_get_all(
        cluster, nodes, people, unique, sockets):
    register, make_group = people
    doctor, patient, group = unique("doc"), unique("pat"), unique("team")
    doctor_token = await register(doctor, "doctor")
    patient_token = await register(patient)
    await make_group(group, [doctor, patient])
    node_a, node_b = nodes
    patient_on_a = await open_socket(node_a, patient_token, sockets)
    patient_on_b = await open_socket(node_b, patient_token, sockets)
    doctor_on_a = await open_socket(node_a, doctor_token, sockets)
    doctor_on_b = await open_socket(node_b, doctor_token, sockets)

    sent = []
    for number, node in enumerate((node_a, node_b, node_a, node_b)):
        status, answer = await node.post(
            "/api/v1/chats/pm", pm_body(doctor, patient, f"第{number}条"), doctor_token)
        assert status == 201, answer
        sent.append(answer["message"])
    for node in (node_a, node_b):
        status, answer = await node.post("/api/v1/chats/gm",
                                         gm_body(doctor, group, "群消息"), doctor_token)
        assert status == 201, answer
        sent.append(answer["message"])
        status, answer = await node.post("/api/v1/chats/sm", sm_body(patient, "系统"),
                                         cluster.system_token)
        assert status == 201, answer
        sent.append(answer["message"])
    await doctor_on_b.send({"type": "send", "channel": "p2p", "to": patient,
                            "contentType": 1, "content": "从 B 发出",
                            "clientMsgId": "from-socket-b"})
    from_socket = (await next_frame(doctor_on_b, "sent"))["message"]
    sent.append(from_socket)
    doctor_copies = [message for message in sent if message["channel"] != "system"]

    assert await messages_on(patient_on_a, len(sent)) == sent
    assert await messages_on(patient_on_b, len(sent)) == sent
    # The sender's other sockets get what it sent, whichever node stored it.
    assert await messages_on(doctor_on_a, len(doctor_copies)) == doctor_copies
    assert await messages_on(doctor_on_b, len(doctor_copies) - 1) == doctor_copies[:-1]
    for ws in (patient_on_a, patient_on_b, doctor_on_a, doctor_on_b):
        await ws.no_frame()


@pytest.mark.gen_test(timeout=30)
async def test_read_recall_typing_cross_nodes(
        nodes, people, unique, sockets):
    register, make_group = people
    doctor, patient, group = unique("doc"), unique("pat"), unique("team")
    doctor_token = await register(doctor, "doctor")
    patient_token = await register(patient)
    await make_group(group, [doctor, patient])
    node_a, node_b = nodes
    patient_on_a = await open_socket(node_a, patient_token, sockets)
    patient_on_b = await open_socket(node_b, patient_token, sockets)
    doctor_on_b = await open_socket(node_b, doctor_token, sockets)
    status, first = await node_a.post("/api/v1/chats/pm", pm_body(doctor, patient, "一"),
                                      doctor_token)
    assert status == 201, first
    status, second = await node_a.post("/api/v1/chats/pm", pm_body(doctor, patient, "二"),
                                       doctor_token)
    assert status == 201, second
    status, in_group = await node_b.post("/api/v1/chats/gm", gm_body(doctor, group, "三"),
                                         doctor_token)
    assert status == 201, in_group
    await messages_on(patient_on_a, 3)
    await messages_on(patient_on_b, 3)

    # A read on the socket on A sends ``unread`` to the user's socket on B
    # too, and a receipt to the doctor's socket on B.
    await patient_on_a.send({"type": "read", "channel": "p2p", "peer": doctor,
                             "upToId": first["message"]["id"]})
    unread_on_a = await next_frame(patient_on_a, "unread")
    unread_on_b = await next_frame(patient_on_b, "unread")
    receipt = await next_frame(doctor_on_b, "receipt")
    expected_unread = {"type": "unread", "channel": "p2p", "peer": doctor,
                       "unread": 1, "totalUnread": 2}
    assert unread_on_a == expected_unread
    assert unread_on_b == expected_unread
    assert receipt == {"type": "receipt", "channel": "p2p", "from": patient,
                       "upToId": first["message"]["id"]}

    # A REST read of the group through B sends ``unread`` to both of the
    # user's sockets and a receipt to the doctor's socket.
    status, answer = await node_b.post(
        "/api/v1/chats/read",
        {"userId": patient, "channel": "group", "group": group,
         "upToId": in_group["message"]["id"]},
        patient_token,
    )
    assert status == 200, answer
    group_unread = {"type": "unread", "channel": "group", "group": group,
                    "unread": 0, "totalUnread": 1}
    assert await next_frame(patient_on_a, "unread") == group_unread
    assert await next_frame(patient_on_b, "unread") == group_unread
    group_receipt = await next_frame(doctor_on_b, "receipt")
    assert group_receipt == {"type": "receipt", "channel": "group", "from": patient,
                             "group": group, "upToId": in_group["message"]["id"]}

    # A recall through B reaches the recipient's sockets on both nodes.
    second_id = second["message"]["id"]
    status, recalled = await node_b.delete(f"/api/v1/chats/pm/{second_id}", doctor_token)
    assert status == 200, recalled
    assert recalled["message"]["recalled"] is True
    expected_recall = {"type": "recalled", "channel": "p2p", "id": second_id}
    assert await next_frame(patient_on_a, "recalled") == expected_recall
    assert await next_frame(patient_on_b, "recalled") == expected_recall

    # Typing on B reaches the peer's sockets on A and B, p2p and group.
    await doctor_on_b.send({"type": "typing", "to": patient})
    expected_typing = {"type": "typing", "from": doctor}
    assert await next_frame(patient_on_a, "typing") == expected_typing
    assert await next_frame(patient_on_b, "typing") == expected_typing
    await asyncio.sleep(1.1)
    await doctor_on_b.send({"type": "typing", "group": group})
    group_typing = {"type": "typing", "from": doctor, "group": group}
    assert await next_frame(patient_on_a, "typing") == group_typing
    assert await next_frame(patient_on_b, "typing") == group_typing
    for ws in (patient_on_a, patient_on_b):
        await ws.no_frame()


# -- presence and pushes -------------------------------------------------------


async def user_online(node, user_id, system_token):
    status, answer = await node.get(f"/api/v1/users/{user_id}", {}, system_token)
    assert status == 200, answer
    return answer["online"]


@pytest.mark.gen_test(timeout=40)
async def test_presence_spans_nodes_for_pushes(
        cluster, nodes, people, unique, sockets):
    register, _ = people
    doctor, patient, client_id = unique("doc"), unique("pat"), unique("cid")
    doctor_token = await register(doctor, "doctor")
    patient_token = await register(patient, getuiClientId=client_id)
    node_a, node_b = nodes
    ws = await open_socket(node_a, patient_token, sockets)

    # Longer than the presence TTL, so only the node's refreshes keep it.
    await asyncio.sleep(PRESENCE_TTL_SECONDS + 0.5)
    online_answers = []
    for node in (node_a, node_b):
        status, answer = await node.post("/api/v1/chats/pm",
                                         pm_body(doctor, patient, "在线吗"), doctor_token)
        assert status == 201, answer
        online_answers.append(answer["online"])
    profiles = [await user_online(node, patient, cluster.system_token) for node in nodes]
    await messages_on(ws, 2)

    assert online_answers == [True, True]
    assert profiles == [True, True]
    assert cluster.pushes_queued(patient) == 0

    ws.close()
    await wait_until(lambda: user_online(node_b, patient, cluster.system_token), False,
                     seconds=PRESENCE_TTL_SECONDS)
    status, offline = await node_b.post("/api/v1/chats/pm",
                                        pm_body(doctor, patient, "离线推送"), doctor_token)

    assert status == 201, offline
    assert offline["online"] is False
    assert await user_online(node_a, patient, cluster.system_token) is False
    assert cluster.pushes_queued(patient) == 1

    async def pushed_client_ids():
        sent = await asyncio.get_running_loop().run_in_executor(None, cluster.getui.sent)
        return [push["cid"] for push in sent if push["cid"] == client_id]

    await wait_until(pushed_client_ids, [client_id], seconds=5)


async def wait_until(probe, expected, seconds, interval=0.1):
    """Poll the coroutine function ``probe`` until it returns ``expected``.

    Returns the seconds it took. Raises AssertionError after ``seconds``.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        value = await probe()
        if value == expected:
            return loop.time() - started
        if loop.time() - started > seconds:
            raise AssertionError(f"still {value!r}, not {expected!r}, after {seconds} s")
        await asyncio.sleep(interval)


# -- logout and a killed node --------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_logout_closes_socket_elsewhere(cluster, nodes, people, unique, sockets):
    register, _ = people
    patient = unique("pat")
    patient_token = await register(patient, getuiClientId=unique("cid"))
    node_a, node_b = nodes
    ws = await open_socket(node_b, patient_token, sockets)

    status, answer = await node_a.post(f"/api/v1/users/{patient}/logout", {},
                                       cluster.system_token)
    close_code = await ws.closed()
    rest_status, rest_answer = await node_b.get(f"/api/v1/users/{patient}", {},
                                                patient_token)
    again = Socket(await websocket_connect(
        node_b.server.base_url.replace("http://", "ws://") + f"/ws?token={patient_token}"
    ))
    sockets.append(again)
    again_code = await again.closed()

    assert status == 204, answer
    assert close_code == 4001
    assert rest_status == 401, rest_answer
    assert rest_answer["error"]["code"] == "unauthorized"
    assert again_code == 4001


@pytest.mark.gen_test(timeout=40)
async def test_killed_node_users_go_offline(cluster, nodes, people, unique, sockets):
    register, _ = people
    patient = unique("pat")
    patient_token = await register(patient)
    (started,) = cluster.start_nodes(unique("c"))
    node_c = Node(started, nodes[0].http)
    await open_socket(node_c, patient_token, sockets)
    await wait_until(lambda: user_online(nodes[1], patient, cluster.system_token), True,
                     seconds=2)

    node_c.server.kill()
    seconds = await wait_until(
        lambda: user_online(nodes[1], patient, cluster.system_token), False,
        seconds=PRESENCE_TTL_SECONDS + PRESENCE_REFRESH_SECONDS + 2,
    )

    assert seconds <= PRESENCE_TTL_SECONDS + PRESENCE_REFRESH_SECONDS


# -- the ordering guarantee across nodes ---------------------------------------


REST_SENDERS = 4
REST_MESSAGES_EACH = 30
SOCKET_SENDERS = 2
SOCKET_MESSAGES_EACH = 20
REPLIES_EACH = 10
SYSTEM_EACH = 10
EXPECTED_MESSAGES = (REST_SENDERS * REST_MESSAGES_EACH
                     + SOCKET_SENDERS * SOCKET_MESSAGES_EACH
                     + 2 * (REPLIES_EACH + SYSTEM_EACH))


class OrderingSetup:
    """A recipient, the doctors and patients who write to it, and their group.

    Senders alternate between the two nodes: REST senders by number, one
    socket sender on each node, and replies and system messages through both.
    """

    def __init__(self, cluster, nodes, unique, seed):
        self.cluster = cluster
        self.nodes = nodes
        self.recipient = unique("pat-recipient")
        self.group = unique("team")
        self.doctors = [unique(f"doc{number}") for number in range(REST_SENDERS)]
        self.patients = [unique(f"pat{number}") for number in range(SOCKET_SENDERS)]
        self.traffic = Traffic(random.Random(seed), self.recipient, self.group)

    def token(self, user_id, role="patient"):
        return self.cluster.tokens.mint(user_id, role, 3600)[0]

    async def register(self):
        node_a, node_b = self.nodes
        users = ([(self.recipient, "patient")] + [(d, "doctor") for d in self.doctors]
                 + [(p, "patient") for p in self.patients])
        for user_id, role in users:
            status, answer = await node_a.put(f"/api/v1/users/{user_id}",
                                              {"name": user_id, "role": role},
                                              self.cluster.system_token)
            assert status == 200, answer
        members = self.doctors + self.patients + [self.recipient]
        status, answer = await node_b.post(
            "/api/v1/groups", {"id": self.group, "name": "team", "type": 1,
                               "members": members},
            self.cluster.system_token,
        )
        assert status == 201, answer

    async def send_all(self, sockets):
        """Run every sender until the server has acknowledged all its sends."""
        nodes, traffic = self.nodes, self.traffic
        sender_sockets = [await open_socket(nodes[n % 2], self.token(p), sockets)
                          for n, p in enumerate(self.patients)]
        await asyncio.gather(
            *[traffic.rest_sender(nodes[n % 2].post, nodes[n % 2].server.name, doctor,
                                  self.token(doctor, "doctor"), REST_MESSAGES_EACH)
              for n, doctor in enumerate(self.doctors)],
            *[traffic.socket_sender(ws, nodes[n % 2].server.name, patient,
                                    SOCKET_MESSAGES_EACH)
              for n, (ws, patient) in enumerate(zip(sender_sockets, self.patients))],
            *[traffic.reply_sender(node.post, node.server.name, self.token(self.recipient),
                                   self.doctors, REPLIES_EACH) for node in nodes],
            *[traffic.system_sender(node.post, node.server.name,
                                    self.cluster.system_token, SYSTEM_EACH)
              for node in nodes],
        )

    async def reference(self):
        """Return the recipient's stored ids per channel, read through REST."""
        reference = await read_reference(self.nodes[0].get, self.recipient, self.group,
                                         self.token(self.recipient))
        assert sum(len(ids) for ids in reference.values()) == EXPECTED_MESSAGES
        for channel in CHANNELS:
            assert self.traffic.acknowledged[channel] <= set(reference[channel]), channel
        return reference


@pytest.mark.gen_test(timeout=90)
async def test_live_frames_ordered_across_nodes(cluster, nodes, unique, sockets):
    setup = OrderingSetup(cluster, nodes, unique, seed=11)
    await setup.register()
    ws = await open_socket(nodes[0], setup.token(setup.recipient), sockets)

    await setup.send_all(sockets)
    reference = await setup.reference()
    await messages_on(ws, EXPECTED_MESSAGES, timeout=10)
    await ws.no_frame()

    live = {channel: [frame["message"]["id"] for frame in ws.frames
                      if frame["type"] == "message"
                      and frame["message"]["channel"] == channel]
            for channel in CHANNELS}
    for channel in CHANNELS:
        assert live[channel] == reference[channel], channel


@pytest.mark.gen_test(timeout=90)
async def test_resume_alternating_nodes_loses_nothing(cluster, nodes, unique, sockets):
    setup = OrderingSetup(cluster, nodes, unique, seed=12)
    await setup.register()
    rng = random.Random(13)
    client = ResumingClient()
    senders_done = asyncio.Event()
    recipient_token = setup.token(setup.recipient)

    async def recipient_loop():
        number = 0
        while not senders_done.is_set():
            node = nodes[number % 2]
            ws = await node.socket(recipient_token)
            sockets.append(ws)
            await client.run_session(ws, node=node.server.name,
                                     seconds=rng.uniform(0.05, 0.5),
                                     early_frames=ws.frames)
            ws.close()
            number += 1

    async def senders():
        await setup.send_all(sockets)
        senders_done.set()

    await asyncio.gather(senders(), recipient_loop())
    final_node = nodes[len(client.sessions) % 2]
    final = await final_node.socket(recipient_token)
    sockets.append(final)
    await client.run_session(final, node=final_node.server.name,
                             early_frames=final.frames)
    reference = await setup.reference()

    assert len(client.sessions) > 3
    assert audit_sessions(client.sessions, reference, SYNC_LIMIT) == []


# -- Redis outage --------------------------------------------------------------


async def wait_subscribed(cluster, nodes, expected, seconds=10):
    """Wait until every node's /metrics shows the Redis subscription ``expected``."""
    for node in nodes:
        async def probe(node=node):
            return await asyncio.get_running_loop().run_in_executor(
                None, node.server.subscribed, cluster.system_token)

        await wait_until(probe, expected, seconds)


@pytest.mark.gen_test(timeout=60)
async def test_redis_outage_keeps_local_delivery(cluster, nodes, people, unique, sockets):
    register, make_group = people
    doctor, patient_a, patient_b = unique("doc"), unique("pat-a"), unique("pat-b")
    group = unique("team")
    doctor_token = await register(doctor, "doctor")
    patient_a_token = await register(patient_a)
    patient_b_token = await register(patient_b)
    await make_group(group, [doctor, patient_b])
    node_a, node_b = nodes
    on_a = await open_socket(node_a, patient_a_token, sockets)
    doctor_on_a = await open_socket(node_a, doctor_token, sockets)
    on_b = await open_socket(node_b, patient_b_token, sockets)
    status, before = await node_a.post("/api/v1/chats/pm",
                                       pm_body(doctor, patient_b, "停电前"), doctor_token)
    assert status == 201, before
    assert (await next_frame(on_b, "message"))["message"] == before["message"]
    resume_point = {"p2p": before["message"]["id"], "group": 0, "system": 0}
    on_b.close()

    cluster.relay.cut()
    try:
        await wait_subscribed(cluster, nodes, False)
        outage_sends = [
            (node_a, "pm", pm_body(doctor, patient_a, "停电中"), doctor_token),
            (node_a, "pm", pm_body(doctor, patient_b, "停电中"), doctor_token),
            (node_b, "sm", sm_body(patient_b, "停电中"), cluster.system_token),
            (node_b, "pm", pm_body(doctor, patient_a, "停电中"), doctor_token),
        ]
        during = []
        for node, kind, body, token in outage_sends:
            started = time.monotonic()
            status, answer = await node.post(f"/api/v1/chats/{kind}", body, token)
            during.append((status, answer, time.monotonic() - started))
        local = await next_frame(on_a, "message")
        await doctor_on_a.send({"type": "send", "channel": "p2p", "to": patient_a,
                                "contentType": 1, "content": "停电中 socket",
                                "clientMsgId": "during-outage"})
        sent_during = await next_frame(doctor_on_a, "sent")
        local_from_socket = await next_frame(on_a, "message")
    finally:
        cluster.relay.restore()

    assert [status for status, _, _ in during] == [201, 201, 201, 201]
    # Under the Redis clients' 2 s timeouts: no send waited for Redis.
    assert max(seconds for _, _, seconds in during) < 2.0, during
    assert local["message"] == during[0][1]["message"]
    assert local_from_socket["message"] == sent_during["message"]
    for node in cluster.nodes[:2]:
        assert OUTAGE_LOG_LINE in node.log(), node.name

    # Right after Redis returns, a node still serves its own sockets.
    status, after_return = await node_a.post(
        "/api/v1/chats/pm", pm_body(doctor, patient_a, "恢复时"), doctor_token)
    assert status == 201, after_return
    assert (await next_frame(on_a, "message"))["message"] == after_return["message"]

    await wait_subscribed(cluster, nodes, True)
    resumed = await node_b.socket(patient_b_token)
    sockets.append(resumed)
    client = ResumingClient()
    client.resume = dict(resume_point)
    await client.run_session(resumed, node=node_b.server.name, early_frames=resumed.frames)
    reference = await read_reference(node_b.get, patient_b, group, patient_b_token)
    replayed = {channel: [event[2] for event in client.sessions[0].events
                          if event[:2] == ("message", channel)] for channel in CHANNELS}
    expected = {channel: [i for i in reference[channel] if i > resume_point[channel]]
                for channel in CHANNELS}
    assert replayed == expected
    assert expected == {"p2p": [during[1][1]["message"]["id"]], "group": [],
                        "system": [during[2][1]["message"]["id"]]}

    # Live delivery across the nodes works again, both ways.
    status, to_b = await node_a.post("/api/v1/chats/pm",
                                     pm_body(doctor, patient_b, "恢复后"), doctor_token)
    assert status == 201, to_b
    assert (await next_frame(resumed, "message"))["message"] == to_b["message"]
    status, to_a = await node_b.post("/api/v1/chats/pm",
                                     pm_body(doctor, patient_a, "恢复后"), doctor_token)
    assert status == 201, to_a
    assert (await next_frame(on_a, "message"))["message"] == to_a["message"]


@pytest.mark.xfail(strict=True, reason=(
    "while Redis is down a node writes its own sends to its sockets, so a "
    "socket that stays open sees them ahead of earlier ids stored elsewhere"))
@pytest.mark.gen_test(timeout=40)
async def test_outage_socket_sees_no_gap(
        cluster, nodes, people, unique, sockets):
    register, _ = people
    doctor, patient = unique("doc"), unique("pat")
    doctor_token = await register(doctor, "doctor")
    patient_token = await register(patient)
    node_a, node_b = nodes
    on_b = await open_socket(node_b, patient_token, sockets)

    cluster.relay.cut()
    try:
        await wait_subscribed(cluster, nodes, False)
        status, through_a = await node_a.post(
            "/api/v1/chats/pm", pm_body(doctor, patient, "经 A"), doctor_token)
        assert status == 201, through_a
        status, through_b = await node_b.post(
            "/api/v1/chats/pm", pm_body(doctor, patient, "经 B"), doctor_token)
        assert status == 201, through_b
        await next_frame(on_b, "message")
    finally:
        cluster.relay.restore()
    await wait_subscribed(cluster, nodes, True)

    live_ids = [frame["message"]["id"] for frame in on_b.frames
                if frame["type"] == "message"]
    assert live_ids == [through_a["message"]["id"], through_b["message"]["id"]]
