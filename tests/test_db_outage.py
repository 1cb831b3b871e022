"""Database outage: the server on MariaDB through a TCP proxy that the test cuts.

The proxy (tests/hardening_support.TcpProxy) runs in front of the MariaDB
of IM_TEST_MYSQL_URL, so the shared server itself never stops. Cutting it
resets every open connection mid-query and turns new ones away; restoring
it lets the server reconnect on its own. Without IM_TEST_MYSQL_URL these
tests are skipped.
"""

import asyncio
import os
import time
from urllib.parse import urlencode

import pytest
from sqlalchemy.engine import make_url

from assertions import assert_error
from conftest import MYSQL_URL_VARIABLE, create_database
from hardening_support import TcpProxy
from models.db import DatabaseUnavailable

PM = "/api/v1/chats/pm"
RECOVERY_TIMEOUT_SECONDS = 20
SENDERS = 3


@pytest.fixture
def proxy():
    url = os.environ.get(MYSQL_URL_VARIABLE)
    if not url:
        pytest.skip(f"needs MariaDB: set {MYSQL_URL_VARIABLE}")
    upstream = make_url(url)
    proxy = TcpProxy(upstream.host or "127.0.0.1", upstream.port or 3306).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def database_url(proxy, tmp_path_factory):
    """A fresh MariaDB database, reached through the proxy."""
    direct_url, drop = create_database("mariadb", tmp_path_factory)
    proxied = make_url(direct_url).set(host="127.0.0.1", port=proxy.port)
    yield proxied.render_as_string(hide_password=False)
    drop()


async def wait_until(condition, what, timeout=RECOVERY_TIMEOUT_SECONDS):
    """Poll ``condition`` (a function, or a coroutine function) until it is true."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} still false after {timeout} s")
        await asyncio.sleep(0.1)


async def health_is_ok(api):
    status, _, _ = await api.get("/health", token="")
    return status == 200


async def drain(socket, frames):
    """Keep every frame of ``socket`` until it closes."""
    while True:
        frame = await socket.recv(timeout=3600)
        if frame is None:
            return
        frames.append(frame)


class Traffic:
    """REST sends from several concurrent loops, each response kept with its start time."""

    def __init__(self, api, sender, token, recipient):
        self.api, self.sender, self.token, self.recipient = api, sender, token, recipient
        self.answers = []
        self._stop = asyncio.Event()
        self._tasks = []

    def start(self):
        self._tasks = [asyncio.ensure_future(self._loop(f"s{n}")) for n in range(SENDERS)]

    async def stop(self):
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _loop(self, name):
        index = 0
        while not self._stop.is_set():
            client_id = f"{name}-{index}"
            started = time.monotonic()
            status, answer = await self.send(client_id)
            self.answers.append((client_id, started, status, answer))
            index += 1
            await asyncio.sleep(0.01)

    async def send(self, client_id):
        body = {"from": self.sender, "to": self.recipient, "contentType": 1,
                "content": f"message {client_id} 血压 😀", "clientMsgId": client_id}
        status, answer, _ = await self.api.post(PM, body, token=self.token)
        return status, answer

    def count(self, status, after=0.0):
        return sum(1 for _, started, got, _ in self.answers
                   if got == status and started >= after)


async def full_history(api, user_id, peer_id):
    messages, after_id = [], 0
    while True:
        query = urlencode({"user_id": user_id, "peer_id": peer_id, "after_id": after_id,
                           "limit": 100})
        status, answer, _ = await api.get(f"{PM}?{query}")
        assert status == 200, answer
        messages += answer["messages"]
        if not answer["hasMore"]:
            return messages
        after_id = messages[-1]["id"]


@pytest.mark.gen_test(timeout=120)
async def test_outage_fails_sends_cleanly_and_recovers(api, im, connect, proxy, unique):
    doctor, patient = unique("doc"), unique("pat")
    doctor_token = await api.user(doctor, "doctor")
    patient_token = await api.user(patient)
    listener = await connect(patient_token)
    actor = await connect(patient_token)
    live = []
    reader = asyncio.ensure_future(drain(listener, live))
    traffic = Traffic(api, doctor, doctor_token, patient)
    traffic.start()
    await wait_until(lambda: traffic.count(201) >= 10, "10 sends stored")

    # The outage, while the senders keep going.
    proxy.cut()
    cut_at = time.monotonic()
    await wait_until(lambda: traffic.count(503, after=cut_at) >= 5, "5 sends got 503")
    health, health_answer, _ = await api.get("/health", token="")
    read, read_answer, _ = await api.get(f"{PM}?user_id={patient}")
    await actor.send({"type": "send", "channel": "p2p", "to": doctor, "contentType": 1,
                      "content": "during the outage", "clientMsgId": "ws-down"})
    ws_error = await actor.expect("error", ref="ws-down")
    await actor.send({"type": "sync"})
    sync_error = await actor.expect("error", ref="sync")
    during_outage = await connect(patient_token, login=False)
    await during_outage.send({"type": "login", "token": patient_token})
    welcome = await during_outage.expect("welcome")
    await actor.send({"type": "ping"})
    await actor.expect("pong")

    # Recovery, without any help from the test.
    proxy.restore()
    await wait_until(lambda: health_is_ok(api), "/health back to 200")
    recovered_at = time.monotonic()
    await wait_until(lambda: traffic.count(201, after=recovered_at) >= 10,
                     "10 sends stored after recovery")
    await traffic.stop()
    await actor.send({"type": "send", "channel": "p2p", "to": doctor, "contentType": 1,
                      "content": "after the outage", "clientMsgId": "ws-up"})
    ws_sent = await actor.expect("sent", clientMsgId="ws-up")

    # After a 503 the client retries with the same clientMsgId. A send that
    # was stored after all returns 200, and the others are stored now.
    failed = [client_id for client_id, _, status, _ in traffic.answers if status == 503]
    retries = {client_id: await traffic.send(client_id) for client_id in failed}
    await asyncio.sleep(0.5)
    history = await full_history(api, patient, doctor)
    recent_status, recent, _ = await api.get(f"/api/v1/chats/recent?user_id={patient}")
    listener_stayed_open = not reader.done()
    listener.close()
    await reader

    statuses = {status for _, _, status, _ in traffic.answers}
    assert statuses == {201, 503}
    for _, _, status, answer in traffic.answers:
        if status == 503:
            assert_error(status, answer, 503, "unavailable")
    assert_error(health, health_answer, 503, "unavailable")
    assert_error(read, read_answer, 503, "unavailable")
    assert ws_error["code"] == "unavailable"
    assert sync_error["code"] == "unavailable"
    assert welcome["totalUnread"] is None
    assert ws_sent["message"]["content"] == "after the outage"
    assert traffic.count(503, after=recovered_at) == 0
    assert {status for status, _ in retries.values()} <= {200, 201}

    by_client_id = {}
    for message in history:
        by_client_id.setdefault(message.get("clientMsgId"), []).append(message)
    duplicates = [key for key, copies in by_client_id.items() if len(copies) > 1]
    assert duplicates == []
    answered = [answer["message"] for _, _, status, answer in traffic.answers
                if status == 201]
    answered += [answer["message"] for status, answer in retries.values()]
    stored = {message["id"]: message for message in history}
    assert [m for m in answered if stored.get(m["id"]) != m] == []
    assert "ws-down" not in by_client_id

    delivered = [frame["message"] for frame in live if frame["type"] == "message"]
    assert [m for m in delivered if stored.get(m["id"]) != m] == []
    created = [answer["message"]["id"] for _, _, status, answer in traffic.answers
               if status == 201]
    created += [answer["message"]["id"] for status, answer in retries.values()
                if status == 201]
    delivered_ids = {message["id"] for message in delivered}
    assert [message_id for message_id in created if message_id not in delivered_ids] == []

    from_doctor = [message for message in history if message["from"] == doctor]
    conversation = [c for c in recent["conversations"] if c.get("peer") == doctor]
    assert recent_status == 200
    assert conversation[0]["unread"] == len(from_doctor)
    assert im.dispatcher.messages_stored["p2p"] == len(created) + 1
    assert listener_stayed_open
    assert actor.close_code is None


@pytest.mark.gen_test(timeout=60)
async def test_connection_cut_mid_query_is_discarded(api, im, proxy):
    pool = im.db.engine.pool
    slow = asyncio.ensure_future(im.db.run(im.db.scalar, "SELECT SLEEP(10)"))
    await asyncio.sleep(0.5)
    opened_before_cut = proxy.connections_opened

    proxy.cut()
    with pytest.raises(DatabaseUnavailable):
        await asyncio.wait_for(slow, 5)
    proxy.restore()
    answers = await asyncio.gather(*[im.db.run(im.db.scalar, "SELECT 1")
                                     for _ in range(2 * im.config.db_pool_size)])

    assert answers == [1] * (2 * im.config.db_pool_size)
    assert proxy.connections_opened > opened_before_cut
    assert proxy.open_connections <= im.config.db_pool_size
    assert pool.checkedout() == 0
    assert await health_is_ok(api)
