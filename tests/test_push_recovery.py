"""Pushes when things go wrong: expired tokens, outages, restarts, kills.

The in-process tests run on SQLite and MariaDB with the fakes on the test's
IOLoop. The process-level tests run server.py and the fakes as
subprocesses on MariaDB, kill the server with SIGKILL and start it again.
They are skipped without IM_TEST_MYSQL_URL.
"""

import asyncio
import collections
import json
from pathlib import Path

import pytest

from tests.pushsupport import (  # noqa: F401 - fixtures are used by name
    REPOSITORY_ROOT,
    RestClient,
    SocketReader,
    click_payload,
    config,
    database_url,
    fake_processes,
    getui_fake,
    getui_records,
    is_parked_for_retry,
    mariadb,
    mariadb_url,
    push_rows,
    query,
    register,
    running,
    send_pm,
    servers,
    wait_for_row,
    wait_settled,
    wait_until,
    wechat_fake,
    wechat_records,
)

pytestmark = pytest.mark.timeout(90)

SCENARIO_NAME = "clinic_day.json"
SCENARIO_DIRECTORIES = (
    REPOSITORY_ROOT.parent / "shared" / "scenarios",
    Path("/work/shared/scenarios"),
)


def message_ids_of(records):
    return [click_payload(record)["messageId"] for record in records]


# Tokens --------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=40)
async def test_expired_getui_token_is_refreshed(api, running, unique, getui_fake):
    doctor, patient, cid = unique("doc"), unique("pat"), unique("cid")
    doctor_token = await register(api, doctor, "doctor")
    await register(api, patient, getui=getui_fake, cid=cid)

    first = await send_pm(api, doctor, doctor_token, patient, "第一条")
    await wait_until(lambda: getui_records(getui_fake, cid), description="first push")
    getui_fake.expire_tokens()
    second = await send_pm(api, doctor, doctor_token, patient, "第二条")
    await wait_settled(running)
    records = getui_records(getui_fake, cid)

    assert message_ids_of(records) == [first["id"], second["id"]]
    assert len({record["request_id"] for record in records}) == 2
    assert getui_fake.calls["auth"] == 2
    assert getui_fake.calls["push"] == 3


@pytest.mark.parametrize("end_token", ["expire_tokens", "invalidate_tokens"])
@pytest.mark.gen_test(timeout=40)
async def test_rejected_wechat_token_is_refreshed(api, running, unique, wechat_fake,
                                                  end_token):
    doctor, patient, openid = unique("doc"), unique("pat"), unique("o")
    doctor_token = await register(api, doctor, "doctor")
    await register(api, patient, wechat=wechat_fake, openid=openid)

    await send_pm(api, doctor, doctor_token, patient, "第一条")
    await wait_until(lambda: wechat_records(wechat_fake, openid), description="first push")
    getattr(wechat_fake, end_token)()
    await send_pm(api, doctor, doctor_token, patient, "第二条")
    await wait_settled(running)
    records = wechat_records(wechat_fake, openid)

    assert [record["data"]["thing3"]["value"] for record in records] == ["第一条", "第二条"]
    assert len({record["client_msg_id"] for record in records}) == 2
    assert wechat_fake.calls["token"] == 2
    assert wechat_fake.calls["send"] == 3


# Outages -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["http_503", "drop"])
@pytest.mark.gen_test(timeout=60)
async def test_outage_ends_with_one_notification(api, running, unique, getui_fake,
                                                 wechat_fake, mode):
    doctor = unique("doc")
    doctor_token = await register(api, doctor, "doctor", "周医生")
    both, getui_only = unique("pat-both"), unique("pat-getui")
    both_cid, both_openid, getui_only_cid = unique("cid-b"), unique("o-b"), unique("cid-g")
    await register(api, both, getui=getui_fake, wechat=wechat_fake, cid=both_cid,
                   openid=both_openid)
    await register(api, getui_only, getui=getui_fake, cid=getui_only_cid)
    # The outage lasts until the latest message is sent, a few seconds.
    getui_fake.start_outage(60, mode)
    wechat_fake.start_outage(60, mode)

    async def send_to_both(text):
        return [await send_pm(api, doctor, doctor_token, user, text)
                for user in (both, getui_only)]

    async def parked(attempts):
        rows = [row for user in (both, getui_only) for row in await push_rows(running, user)
                if row["status"] == "pending" and row["attempts"] >= attempts]
        return len(rows) == 3

    await send_to_both("第一条")
    await wait_until(lambda: parked(1), description="three pushes parked after a failure")
    await send_to_both("第二条")
    await send_to_both("第三条")
    await wait_until(lambda: parked(2), description="three pushes failed twice")
    latest = await send_to_both("最新一条")
    getui_fake.end_outage()
    wechat_fake.end_outage()
    await wait_settled(running)

    for user, cid, message in ((both, both_cid, latest[0]),
                               (getui_only, getui_only_cid, latest[1])):
        records = getui_records(getui_fake, cid)
        assert message_ids_of(records) == [message["id"]], user
        assert [record["body"] for record in records] == ["最新一条"], user
        assert [record["badge"] for record in records] == [4], user
    wechat = wechat_records(wechat_fake, both_openid)
    assert [record["data"]["thing3"]["value"] for record in wechat] == ["最新一条"]


@pytest.mark.gen_test(timeout=60)
async def test_slow_outage_ends_with_one_notification(api, running, unique, getui_fake):
    doctor, patient, cid = unique("doc"), unique("pat"), unique("cid")
    doctor_token = await register(api, doctor, "doctor")
    await register(api, patient, getui=getui_fake, cid=cid)
    # Every call hangs for a while and then fails, so messages arrive while
    # an attempt is in flight and its row is claimed.
    fault = getui_fake.inject(1000, path="push", http_status=503, delay_seconds=0.6)

    await send_pm(api, doctor, doctor_token, patient, "第一条")
    await wait_until(lambda: getui_fake.active_requests >= 1,
                     description="first attempt in flight")
    await send_pm(api, doctor, doctor_token, patient, "第二条")
    await send_pm(api, doctor, doctor_token, patient, "第三条")
    await wait_until(lambda: getui_fake.calls["push"] >= 3, description="three failing attempts")
    latest = await send_pm(api, doctor, doctor_token, patient, "最新一条")
    fault.remaining = 0
    await wait_settled(running)
    records = getui_records(getui_fake, cid)

    assert message_ids_of(records) == [latest["id"]]
    assert [record["body"] for record in records] == ["最新一条"]


@pytest.mark.gen_test(timeout=40)
async def test_lost_response_then_new_message(api, running, unique, getui_fake):
    doctor, patient, cid = unique("doc"), unique("pat"), unique("cid")
    doctor_token = await register(api, doctor, "doctor")
    await register(api, patient, getui=getui_fake, cid=cid)
    # Getui accepts the first push but the connection drops before the
    # response, so the server retries a push that the device already shows.
    # Two busy responses keep the push parked long enough for the next message.
    getui_fake.inject(path="push", drop=True, process=True)
    getui_fake.inject(2, path="push", code=30019)

    first = await send_pm(api, doctor, doctor_token, patient, "第一条")
    await wait_for_row(running, patient, "getui", is_parked_for_retry,
                       "push parked after the lost response")
    second = await send_pm(api, doctor, doctor_token, patient, "第二条")
    await wait_settled(running)
    records = getui_records(getui_fake, cid)
    shown_ids = message_ids_of(records)

    assert shown_ids[-1] == second["id"]
    assert shown_ids == [first["id"], second["id"]]
    assert len({record["request_id"] for record in records}) == 2


@pytest.mark.parametrize("slow_vendor", ["getui", "wechat"])
@pytest.mark.gen_test(timeout=40)
async def test_slow_vendor_does_not_delay_other(api, running, unique, getui_fake,
                                                wechat_fake, slow_vendor):
    doctor, patient = unique("doc"), unique("pat")
    cid, openid = unique("cid"), unique("o")
    doctor_token = await register(api, doctor, "doctor")
    await register(api, patient, getui=getui_fake, wechat=wechat_fake, cid=cid,
                   openid=openid)
    fakes = {"getui": getui_fake, "wechat": wechat_fake}
    records_of = {
        "getui": lambda: getui_records(getui_fake, cid),
        "wechat": lambda: wechat_records(wechat_fake, openid),
    }
    send_labels = {"getui": "push", "wechat": "send"}
    fast_vendor = "wechat" if slow_vendor == "getui" else "getui"
    slow, slow_records, fast_records = (
        fakes[slow_vendor], records_of[slow_vendor], records_of[fast_vendor],
    )
    slow.inject(path=send_labels[slow_vendor], delay_seconds=3.0)

    await send_pm(api, doctor, doctor_token, patient)
    await wait_until(lambda: slow.active_requests == 1, description="slow vendor call in flight")
    await wait_until(fast_records, description="push through the fast vendor")
    slow_held = slow.active_requests
    slow_delivered = len(slow_records())
    await wait_settled(running)

    assert slow_held == 1
    assert slow_delivered == 0
    assert len(slow_records()) == 1
    assert len(fast_records()) == 1


# Cancelling while an attempt is in flight ---------------------------------------


@pytest.mark.gen_test(timeout=40)
async def test_recall_during_attempt_stops_retry(api, running, unique, getui_fake):
    doctor, patient, cid = unique("doc"), unique("pat"), unique("cid")
    doctor_token = await register(api, doctor, "doctor")
    await register(api, patient, getui=getui_fake, cid=cid)
    getui_fake.inject(path="push", http_status=503, delay_seconds=1.0)

    message = await send_pm(api, doctor, doctor_token, patient, "发错了")
    await wait_until(lambda: getui_fake.active_requests == 1, description="attempt in flight")
    status, answer, _ = await api.delete(f"/api/v1/chats/pm/{message['id']}",
                                         token=doctor_token)
    await wait_until(lambda: getui_fake.active_requests == 0, description="failed attempt")
    await wait_settled(running)
    rows = await push_rows(running, patient, "getui")

    assert status == 200, answer
    assert [row["status"] for row in rows] == ["cancelled"]
    assert getui_records(getui_fake, cid) == []


@pytest.mark.gen_test(timeout=40)
async def test_logout_during_attempt_stops_retry(api, running, unique, getui_fake):
    doctor, patient, cid = unique("doc"), unique("pat"), unique("cid")
    doctor_token = await register(api, doctor, "doctor")
    await register(api, patient, getui=getui_fake, cid=cid)
    getui_fake.inject(path="push", http_status=503, delay_seconds=1.0)

    await send_pm(api, doctor, doctor_token, patient)
    await wait_until(lambda: getui_fake.active_requests == 1, description="attempt in flight")
    status, _, _ = await api.post(f"/api/v1/users/{patient}/logout")
    await wait_until(lambda: getui_fake.active_requests == 0, description="failed attempt")
    await wait_settled(running)
    rows = await push_rows(running, patient, "getui")

    assert status == 204
    assert [row["status"] for row in rows] == ["cancelled"]
    assert getui_records(getui_fake, cid) == []


# Process level: kills and several processes --------------------------------------


async def create_group(client, group_id, members, name="随访组", group_type=1):
    status, answer = await client.request(
        "POST", "/api/v1/groups",
        {"id": group_id, "name": name, "type": group_type, "members": members},
    )
    assert status == 201, answer


def fake_calls(control, label):
    return control.get("calls").get(label, 0)


@pytest.mark.gen_test(timeout=90)
async def test_kill_mid_send_delivers_once(mariadb_url, mariadb, fake_processes, servers):
    server = servers(mariadb_url, "push-node", fake_processes.server_environment())
    server.start()
    await server.wait_healthy()
    client = RestClient(server.base_url)
    doctor, patients = "doc-zhao", [f"pat-{n}" for n in range(3)]
    await client.put_user(doctor, "doctor", "赵医生")
    for patient in patients:
        await client.put_user(patient, "patient", patient, getuiClientId=f"cid-{patient}",
                              wechatOpenId=f"o-{patient}")
    await create_group(client, "team-kill", [doctor, *patients])
    getui, wechat = fake_processes.getui.control, fake_processes.wechat.control
    # The fakes hold every push of the message long enough for the kill to
    # land between the claim and the vendor's response.
    hold_seconds = 3.0
    getui.inject(3, path="push", delay_seconds=hold_seconds)
    wechat.inject(3, path="send", delay_seconds=hold_seconds)

    status, answer = await client.send(
        "gm", {"from": doctor, "group": "team-kill", "contentType": 1, "content": "明天随访"},
        client.token(doctor, "doctor"),
    )
    assert status == 201, answer
    message = answer["message"]
    await wait_until(lambda: fake_calls(getui, "push") == 3 and fake_calls(wechat, "send") == 3,
                     description="six pushes held by the fakes")
    held_since = asyncio.get_running_loop().time()
    statuses_at_kill = [row["status"] for row in query(mariadb, "SELECT status FROM msg_push")]
    delivered_at_kill = len(getui.sent()) + len(wechat.sent())
    server.kill()
    server.start()
    await server.wait_healthy()
    await wait_settled(mariadb)
    # Let the held requests of the killed process finish, so a second
    # delivery of the same push would show up in the records.
    await asyncio.sleep(max(0.0, held_since + hold_seconds + 0.5
                            - asyncio.get_running_loop().time()))
    getui_sent, wechat_sent = getui.sent(), wechat.sent()

    assert statuses_at_kill == ["sending"] * 6
    assert delivered_at_kill == 0
    assert sorted(record["cid"] for record in getui_sent) == [f"cid-{p}" for p in patients]
    assert len({record["request_id"] for record in getui_sent}) == 3
    assert {click_payload(record)["messageId"] for record in getui_sent} == {message["id"]}
    assert sorted(record["openid"] for record in wechat_sent) == [f"o-{p}" for p in patients]
    assert len({record["client_msg_id"] for record in wechat_sent}) == 3
    assert fake_calls(getui, "push") == 6
    assert fake_calls(wechat, "send") == 6
    rows = query(mariadb, "SELECT status FROM msg_push")
    assert [row["status"] for row in rows] == ["sent"] * 6


@pytest.mark.gen_test(timeout=90)
async def test_two_processes_share_wechat_token(mariadb_url, mariadb, fake_processes,
                                                servers):
    environment = fake_processes.server_environment()
    nodes = [servers(mariadb_url, name, environment) for name in ("node-a", "node-b")]
    for node in nodes:
        node.start()
    for node in nodes:
        await node.wait_healthy()
    clients = [RestClient(node.base_url) for node in nodes]
    doctor, patients = "doc-qian", [f"pat-{n}" for n in range(8)]
    await clients[0].put_user(doctor, "doctor", "钱医生")
    for patient in patients:
        await clients[0].put_user(patient, "patient", patient, wechatOpenId=f"o-{patient}")
    await create_group(clients[0], "team-token", [doctor, *patients])
    wechat = fake_processes.wechat.control
    token = clients[0].token(doctor, "doctor")

    async def send_round(label):
        for number, client in enumerate(clients):
            status, answer = await client.send("gm", {
                "from": doctor, "group": "team-token", "contentType": 1,
                "content": f"{label}{number}",
            }, token)
            assert status == 201, answer

    await send_round("上午")
    await wait_settled(mariadb)
    morning = wechat.get("calls")
    wechat.post("invalidate_tokens")
    await send_round("下午")
    await wait_settled(mariadb)
    total = wechat.get("calls")
    records = wechat.sent()
    deliveries = collections.Counter(
        (record["openid"], record["data"]["thing3"]["value"]) for record in records
    )
    rows = query(mariadb, "SELECT status FROM msg_push")

    assert morning["token"] <= 2
    assert morning["send"] == 2 * len(patients)
    assert total["token"] - morning["token"] <= 2
    assert total["send"] - morning["send"] <= 2 * 2 * len(patients)
    assert len(deliveries) == 4 * len(patients)
    assert set(deliveries.values()) == {1}
    assert {row["status"] for row in rows} == {"sent"}


# Process level: a clinic day with a kill in the middle -----------------------------


def load_clinic_day():
    """Return the clinic-day scenario; fail when it is in none of the known places."""
    for directory in SCENARIO_DIRECTORIES:
        path = directory / SCENARIO_NAME
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    pytest.fail(f"{SCENARIO_NAME} not found in any of {[str(d) for d in SCENARIO_DIRECTORIES]}")


class ClinicDayReplay:
    """Sends the steps of the clinic-day scenario to a server subprocess.

    A send that gets no response (the server was killed) is sent again
    with the same clientMsgId once the server is back. System messages
    carry no clientMsgId in the scenario, so the replay gives each one its
    own.
    """

    def __init__(self, scenario, server):
        self.scenario = scenario
        self.server = server
        self.client = RestClient(server.base_url)
        self.roles = {user["id"]: user["role"] for user in scenario["users"]}
        self.members = {group["id"]: group["members"] for group in scenario["groups"]}
        patients = sorted(uid for uid, role in self.roles.items() if role == "patient")
        # Half the patients keep a socket open, picked so that both halves
        # contain patients with and without a WeChat openid.
        self.online = [uid for index, uid in enumerate(patients) if index % 4 in (0, 1)]
        self.sockets = []
        # (channel, message id) -> recipients other than the sender.
        self.messages = {}

    def token(self, user_id):
        return self.client.token(user_id, self.roles[user_id])

    async def seed(self):
        for user in self.scenario["users"]:
            extra = {key: user[key] for key in ("getuiClientId", "wechatOpenId") if key in user}
            await self.client.put_user(user["id"], user["role"], user["name"], **extra)
        for group in self.scenario["groups"]:
            await create_group(self.client, group["id"], group["members"], group["name"],
                               group["type"])

    async def open_sockets(self):
        for socket in self.sockets:
            socket.close()
        self.sockets = [await SocketReader.open(self.server.base_url, self.token(uid))
                        for uid in self.online]

    def send_request(self, index, step):
        """Return (kind, body, token) of a send step."""
        kind, body = step["act"], dict(step["body"])
        if kind == "sm":
            body.setdefault("clientMsgId", f"clinic-sm-{index}")
            return kind, body, self.client.system_token
        return kind, body, self.token(body["from"])

    async def send(self, index, step, first_try=None):
        """Send a step until the server stores it; record its recipients."""
        kind, body, token = self.send_request(index, step)
        status, answer = first_try or await self.client.send(kind, body, token)
        while status == 599:
            await self.server.wait_healthy()
            status, answer = await self.client.send(kind, body, token)
        assert status in (200, 201), (index, status, answer)
        message = answer["message"]
        if kind == "gm":
            recipients = [uid for uid in self.members[body["group"]] if uid != body["from"]]
        else:
            recipients = [body["to"]]
        self.messages[(message["channel"], message["id"])] = recipients

    async def read_all(self, user_id):
        token = self.token(user_id)
        status, answer = await self.client.request(
            "GET", f"/api/v1/chats/recent?user_id={user_id}&limit=500", token=token
        )
        assert status == 200, answer
        for conversation in answer["conversations"]:
            body = {"userId": user_id, "channel": conversation["channel"],
                    "upToId": conversation["lastMessage"]["id"]}
            for key in ("peer", "group"):
                if conversation.get(key):
                    body[key] = conversation[key]
            status, read = await self.client.request("POST", "/api/v1/chats/read", body,
                                                     token=token)
            assert status == 200, read

    async def kill_during(self, index, step):
        """Kill the server while a step's send is on its way; start it again."""
        kind, body, token = self.send_request(index, step)
        in_flight = asyncio.ensure_future(self.client.send(kind, body, token))
        await asyncio.sleep(0.005)
        self.server.kill()
        first_try = await in_flight
        self.server.start()
        await self.server.wait_healthy()
        await self.open_sockets()
        await self.send(index, step, first_try)

    def expected_pushes(self, key):
        """Return {(address, channel, message id)} for users with ``key`` set."""
        addresses = {user["id"]: user[key] for user in self.scenario["users"] if key in user}
        return {
            (addresses[uid], channel, message_id)
            for (channel, message_id), recipients in self.messages.items()
            for uid in recipients
            if uid in addresses and uid not in self.online
        }

    def close(self):
        for socket in self.sockets:
            socket.close()


@pytest.mark.timeout(150)
@pytest.mark.gen_test(timeout=140)
async def test_clinic_day_survives_kill(mariadb_url, mariadb, fake_processes, servers):
    scenario = load_clinic_day()
    server = servers(mariadb_url, "clinic-node", fake_processes.server_environment())
    server.start()
    await server.wait_healthy()
    replay = ClinicDayReplay(scenario, server)
    getui, wechat = fake_processes.getui.control, fake_processes.wechat.control
    steps = scenario["steps"]
    arm_at = len(steps) // 2
    hold_seconds = 5.0
    held_since = None
    calls_at_arming = None
    killed_at = None
    try:
        await replay.seed()
        await replay.open_sockets()
        for index, step in enumerate(steps):
            if index == arm_at:
                # The next push of each vendor hangs at the fake, so the
                # kill below lands while pushes are between claim and response.
                getui.inject(path="push", delay_seconds=hold_seconds)
                wechat.inject(path="send", delay_seconds=hold_seconds)
                calls_at_arming = (fake_calls(getui, "push"), fake_calls(wechat, "send"))
            if calls_at_arming is not None and killed_at is None and step["act"] != "read_all":
                held_calls = (fake_calls(getui, "push") > calls_at_arming[0],
                              fake_calls(wechat, "send") > calls_at_arming[1])
                if held_since is None and any(held_calls):
                    held_since = asyncio.get_running_loop().time()
                if all(held_calls) or index - arm_at >= 40:
                    killed_at = index
                    await replay.kill_during(index, step)
                    continue
            if step["act"] == "read_all":
                await replay.read_all(step["userId"])
            else:
                await replay.send(index, step)
        await wait_settled(mariadb, timeout=40)
        if held_since is not None:
            remaining = held_since + hold_seconds + 0.5 - asyncio.get_running_loop().time()
            await asyncio.sleep(max(0.0, remaining))
    finally:
        replay.close()

    getui_sent, wechat_sent = getui.sent(), wechat.sent()
    wechat_rows = query(mariadb, "SELECT channel, message_id, vendor_message_id"
                                 " FROM msg_push WHERE vendor = 'wechat'")
    wechat_messages = {row["vendor_message_id"]: (row["channel"], row["message_id"])
                       for row in wechat_rows}
    getui_by_message = collections.Counter(
        (record["cid"], click_payload(record)["channel"], click_payload(record)["messageId"])
        for record in getui_sent
    )
    wechat_by_message = collections.Counter(
        (record["openid"], *wechat_messages.get(str(record["msgid"]), ("?", 0)))
        for record in wechat_sent
    )
    send_steps = [step for step in steps if step["act"] != "read_all"]
    stored = {channel: query(mariadb, f"SELECT COUNT(*) AS n FROM {table}")[0]["n"]
              for channel, table in (("p2p", "msg_p2p"), ("group", "msg_group"),
                                     ("system", "msg_system"))}
    statuses = {row["status"] for row in query(mariadb, "SELECT status FROM msg_push")}

    assert killed_at is not None
    assert held_since is not None
    assert len(replay.messages) == len(send_steps)
    assert stored == {
        "p2p": sum(step["act"] == "pm" for step in steps),
        "group": sum(step["act"] == "gm" for step in steps),
        "system": sum(step["act"] == "sm" for step in steps),
    }
    assert statuses == {"sent"}
    assert max(collections.Counter(r["request_id"] for r in getui_sent).values()) == 1
    assert max(getui_by_message.values()) == 1
    assert set(getui_by_message) == replay.expected_pushes("getuiClientId")
    assert max(collections.Counter(r["client_msg_id"] for r in wechat_sent).values()) == 1
    assert max(wechat_by_message.values()) == 1
    assert set(wechat_by_message) == replay.expected_pushes("wechatOpenId")
