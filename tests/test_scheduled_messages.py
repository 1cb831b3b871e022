"""Delayed messages (``sendAt``): delivery, cancelling, limits, restarts.

The in-process tests run the server with its jobs started on SQLite and,
when IM_TEST_MYSQL_URL is set, on MariaDB. The process-level tests run
server.py as subprocesses on MariaDB, kill one with SIGKILL or run two at
once, and check that each delayed message is stored exactly once. They are
skipped without IM_TEST_MYSQL_URL.
"""

import asyncio
import collections
from urllib.parse import urlencode

import pytest

from tests.pushsupport import (  # noqa: F401 - fixtures are used by name
    RestClient,
    click_payload,
    config,
    database_url,
    fake_processes,
    getui_fake,
    getui_records,
    mariadb,
    mariadb_url,
    now_ms,
    query,
    register,
    running,
    servers,
    wait_settled,
    wait_until,
    wechat_fake,
)

pytestmark = pytest.mark.timeout(60)

PM, GM, SM = "/api/v1/chats/pm", "/api/v1/chats/gm", "/api/v1/chats/sm"
DAY_MS = 24 * 3600 * 1000


def pm_body(sender, to, content, send_at):
    return {"from": sender, "to": to, "contentType": 1, "content": content,
            "sendAt": send_at}


async def history(api, user_id, **query_fields):
    """Return every message of a user's p2p history (first 100), read as system."""
    params = urlencode({"user_id": user_id, "limit": 100, **query_fields})
    status, answer, _ = await api.get(f"{PM}?{params}")
    assert status == 200, answer
    return answer["messages"]


async def status_counts(api):
    status, answer, _ = await api.get("/api/v1/status")
    assert status == 200, answer
    return answer


async def nothing_scheduled(api):
    return (await status_counts(api))["scheduled"] == 0


async def schedule(api, token, body, path=PM):
    status, answer, _ = await api.post(path, body, token=token)
    assert status == 202, answer
    return answer["scheduled"]


# In-process ----------------------------------------------------------------------


@pytest.mark.gen_test(timeout=40)
async def test_scheduled_message_arrives_after_send_at(api, running, connect, unique):
    doctor, patient = unique("doc"), unique("pat")
    doctor_token = await register(api, doctor, "doctor")
    socket = await connect(await register(api, patient))
    send_at = now_ms() + 2000

    status, answer, _ = await api.post(PM, pm_body(doctor, patient, "记得复诊", send_at),
                                       token=doctor_token)
    waiting = (await status_counts(api))["scheduled"]
    early = await history(api, patient)
    frame = await socket.expect("message", timeout=10)
    stored = await history(api, patient)
    after = (await status_counts(api))["scheduled"]

    assert status == 202, answer
    assert set(answer) == {"scheduled"}
    assert set(answer["scheduled"]) == {"id", "sendAt"}
    assert answer["scheduled"]["sendAt"] == send_at
    assert waiting == 1
    assert early == []
    assert frame["message"]["content"] == "记得复诊"
    assert frame["message"]["timestamp"] >= send_at
    assert [message["id"] for message in stored] == [frame["message"]["id"]]
    assert after == 0


@pytest.mark.gen_test(timeout=40)
async def test_scheduled_message_pushes_offline_recipient(api, running, unique, getui_fake):
    doctor, patient, cid = unique("doc"), unique("pat"), unique("cid")
    doctor_token = await register(api, doctor, "doctor", "孙医生")
    await register(api, patient, getui=getui_fake, cid=cid)

    await schedule(api, doctor_token, pm_body(doctor, patient, "明早空腹", now_ms() + 800))
    await wait_until(lambda: getui_records(getui_fake, cid),
                     description="push of the delayed message")
    await wait_settled(running)
    stored = await history(api, patient)
    records = getui_records(getui_fake, cid)

    assert len(stored) == 1
    assert [click_payload(record)["messageId"] for record in records] == [stored[0]["id"]]
    assert [(record["title"], record["body"]) for record in records] == [("孙医生", "明早空腹")]


@pytest.mark.gen_test(timeout=40)
async def test_group_and_system_messages_scheduled(api, running, unique):
    doctor, patient, group = unique("doc"), unique("pat"), unique("team")
    doctor_token = await register(api, doctor, "doctor")
    await register(api, patient)
    await api.group(group, [doctor, patient])
    send_at = now_ms() + 1500

    await schedule(api, doctor_token, {"from": doctor, "group": group, "contentType": 1,
                                       "content": "群里提醒", "sendAt": send_at}, GM)
    await schedule(api, api.system_token, {
        "to": patient, "title": "体检通知", "summary": "", "contentType": 1,
        "content": "周五体检", "sendAt": send_at,
    }, SM)

    async def page(path, **fields):
        params = urlencode({"user_id": patient, "limit": 100, **fields})
        status, answer, _ = await api.get(f"{path}?{params}")
        assert status == 200, answer
        return answer["messages"]

    group_messages = await wait_until(lambda: page(GM, group=group), description="group message")
    system_messages = await wait_until(lambda: page(SM), description="system message")
    await wait_until(lambda: nothing_scheduled(api), description="no waiting messages")

    assert [message["content"] for message in await page(GM, group=group)] == ["群里提醒"]
    assert [message["content"] for message in await page(SM)] == ["周五体检"]
    assert group_messages[0]["timestamp"] >= send_at
    assert system_messages[0]["timestamp"] >= send_at


@pytest.mark.gen_test(timeout=40)
async def test_cancel_returns_204_then_404(api, running, unique):
    doctor, patient = unique("doc"), unique("pat")
    doctor_token = await register(api, doctor, "doctor")
    await register(api, patient)
    cancelled = await schedule(api, doctor_token,
                               pm_body(doctor, patient, "取消的", now_ms() + 2000))
    await schedule(api, doctor_token, pm_body(doctor, patient, "保留的", now_ms() + 2500))

    first_status, _, _ = await api.delete(f"/api/v1/chats/scheduled/{cancelled['id']}",
                                          token=doctor_token)
    second_status, second, _ = await api.delete(
        f"/api/v1/chats/scheduled/{cancelled['id']}", token=doctor_token
    )
    await wait_until(lambda: history(api, patient), description="the message kept")
    await wait_until(lambda: nothing_scheduled(api), description="no waiting messages")
    stored = await history(api, patient)

    assert first_status == 204
    assert second_status == 404
    assert second["error"]["code"] == "not_found"
    assert [message["content"] for message in stored] == ["保留的"]


@pytest.mark.gen_test(timeout=40)
async def test_cancel_after_delivery_returns_404(api, running, unique):
    doctor, patient = unique("doc"), unique("pat")
    doctor_token = await register(api, doctor, "doctor")
    await register(api, patient)
    scheduled = await schedule(api, doctor_token,
                               pm_body(doctor, patient, "已发送", now_ms() + 500))

    await wait_until(lambda: history(api, patient), description="delayed message delivered")
    status, answer, _ = await api.delete(f"/api/v1/chats/scheduled/{scheduled['id']}",
                                         token=doctor_token)

    assert status == 404
    assert answer["error"]["code"] == "not_found"
    assert len(await history(api, patient)) == 1


@pytest.mark.gen_test(timeout=40)
async def test_cancel_by_other_user_forbidden(api, running, unique):
    doctor, patient = unique("doc"), unique("pat")
    doctor_token = await register(api, doctor, "doctor")
    patient_token = await register(api, patient)
    scheduled = await schedule(api, doctor_token,
                               pm_body(doctor, patient, "医生的消息", now_ms() + 60_000))
    path = f"/api/v1/chats/scheduled/{scheduled['id']}"

    patient_status, patient_answer, _ = await api.delete(path, token=patient_token)
    doctor_status, _, _ = await api.delete(path, token=doctor_token)

    assert patient_status == 403
    assert patient_answer["error"]["code"] == "forbidden"
    assert doctor_status == 204


@pytest.mark.parametrize(
    "offset_ms", [-60_000, 0, 30 * DAY_MS + 60_000, 365 * DAY_MS],
    ids=["past", "now", "over-30-days", "next-year"],
)
@pytest.mark.gen_test(timeout=30)
async def test_send_at_out_of_range_rejected(api, running, unique, offset_ms):
    doctor, patient = unique("doc"), unique("pat")
    doctor_token = await register(api, doctor, "doctor")
    await register(api, patient)

    status, answer, _ = await api.post(
        PM, pm_body(doctor, patient, "超出范围", now_ms() + offset_ms), token=doctor_token
    )
    waiting = (await status_counts(api))["scheduled"]

    assert status == 400, answer
    assert answer["error"]["code"] == "invalid_argument"
    assert answer["error"]["field"] == "sendAt"
    assert waiting == 0


@pytest.mark.parametrize("send_at", ["tomorrow", 1.5e12, True],
                         ids=["text", "float", "boolean"])
@pytest.mark.gen_test(timeout=30)
async def test_send_at_not_integer_rejected(api, running, unique, send_at):
    doctor, patient = unique("doc"), unique("pat")
    doctor_token = await register(api, doctor, "doctor")
    await register(api, patient)

    status, answer, _ = await api.post(PM, pm_body(doctor, patient, "格式不对", send_at),
                                       token=doctor_token)

    assert status == 400, answer
    assert answer["error"]["code"] == "invalid_argument"
    assert answer["error"]["field"] == "sendAt"


@pytest.mark.gen_test(timeout=30)
async def test_send_at_within_30_days_accepted(api, running, unique):
    doctor, patient = unique("doc"), unique("pat")
    doctor_token = await register(api, doctor, "doctor")
    await register(api, patient)
    send_at = now_ms() + 30 * DAY_MS - 60_000

    scheduled = await schedule(api, doctor_token,
                               pm_body(doctor, patient, "一个月后", send_at))
    waiting = (await status_counts(api))["scheduled"]

    assert scheduled["sendAt"] == send_at
    assert waiting == 1


# Process level -------------------------------------------------------------------


def p2p_contents(db, sender):
    rows = query(db, "SELECT content FROM msg_p2p WHERE from_user = :s", s=sender)
    return collections.Counter(row["content"] for row in rows)


def schedule_rows(db):
    return query(db, "SELECT id, status, message_id FROM msg_schedule ORDER BY id")


async def start_server(servers, database_url, node_name, environment=None):
    server = servers(database_url, node_name, environment)
    server.start()
    await server.wait_healthy()
    return server


async def register_pair(client, doctor, patient, **patient_extra):
    await client.put_user(doctor, "doctor", "周医生")
    await client.put_user(patient, "patient", "陈阿姨", **patient_extra)
    return client.token(doctor, "doctor")


async def schedule_remote(client, token, body):
    status, answer = await client.send("pm", body, token)
    assert status == 202, answer
    return answer["scheduled"]


@pytest.mark.gen_test(timeout=60)
async def test_due_message_sent_once_after_restart(mariadb_url, mariadb, fake_processes,
                                                   servers):
    server = await start_server(servers, mariadb_url, "sched-node",
                                fake_processes.server_environment())
    client = RestClient(server.base_url)
    token = await register_pair(client, "doc-zhou", "pat-chen", getuiClientId="cid-chen")
    send_at = now_ms() + 2000

    scheduled = await schedule_remote(client, token,
                                      pm_body("doc-zhou", "pat-chen", "按时吃药", send_at))
    server.kill()
    # The server stays down until the message is due.
    await asyncio.sleep(max(0.0, (send_at - now_ms()) / 1000 + 0.5))
    statuses_while_down = [row["status"] for row in schedule_rows(mariadb)]
    server.start()
    await server.wait_healthy()
    await wait_until(lambda: schedule_rows(mariadb)[0]["status"] == "sent",
                     description="delayed message sent after the restart")
    await wait_settled(mariadb)
    rows = schedule_rows(mariadb)
    stored = query(mariadb, "SELECT id, created_at FROM msg_p2p")
    pushes = fake_processes.getui.control.sent()

    assert statuses_while_down == ["waiting"]
    assert [row["id"] for row in rows] == [scheduled["id"]]
    assert [row["message_id"] for row in rows] == [stored[0]["id"]]
    assert p2p_contents(mariadb, "doc-zhou") == {"按时吃药": 1}
    assert stored[0]["created_at"] >= send_at
    assert [click_payload(record)["messageId"] for record in pushes] == [stored[0]["id"]]


@pytest.mark.gen_test(timeout=60)
async def test_kill_during_due_batch_sends_once(mariadb_url, mariadb, servers):
    server = await start_server(servers, mariadb_url, "batch-node")
    client = RestClient(server.base_url)
    token = await register_pair(client, "doc-wu", "pat-he")
    count = 40
    send_at = now_ms() + 3000
    await asyncio.gather(*(
        schedule_remote(client, token, pm_body("doc-wu", "pat-he", f"提醒{number}", send_at))
        for number in range(count)
    ))

    def some_sent():
        return any(row["status"] == "sent" for row in schedule_rows(mariadb))

    await wait_until(some_sent, description="first delayed message sent", interval=0.005)
    server.kill()
    sent_at_kill = sum(row["status"] == "sent" for row in schedule_rows(mariadb))
    server.start()
    await server.wait_healthy()
    await wait_until(lambda: all(row["status"] == "sent" for row in schedule_rows(mariadb)),
                     description="every delayed message sent")
    rows = schedule_rows(mariadb)
    contents = p2p_contents(mariadb, "doc-wu")

    assert sent_at_kill < count
    assert contents == {f"提醒{number}": 1 for number in range(count)}
    assert len({row["message_id"] for row in rows}) == count


@pytest.mark.gen_test(timeout=60)
async def test_two_processes_send_scheduled_once(mariadb_url, mariadb, servers):
    nodes = [await start_server(servers, mariadb_url, name) for name in ("sched-a", "sched-b")]
    clients = [RestClient(node.base_url) for node in nodes]
    token = await register_pair(clients[0], "doc-xu", "pat-lin")
    count = 20
    send_at = now_ms() + 3000
    await asyncio.gather(*(
        schedule_remote(clients[number % 2], token,
                        pm_body("doc-xu", "pat-lin", f"第{number}条", send_at))
        for number in range(count)
    ))

    await wait_until(lambda: all(row["status"] == "sent" for row in schedule_rows(mariadb)),
                     description="every delayed message sent")
    # Both processes keep polling; a second copy would appear in this window.
    await asyncio.sleep(0.5)
    rows = schedule_rows(mariadb)
    contents = p2p_contents(mariadb, "doc-xu")

    assert len(rows) == count
    assert contents == {f"第{number}条": 1 for number in range(count)}
    assert len({row["message_id"] for row in rows}) == count
