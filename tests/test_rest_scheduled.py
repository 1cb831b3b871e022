"""REST delayed sends: `sendAt` on the send endpoints and their cancel route.

The `im` fixture does not start the scheduler job, so each test runs it
itself with ``im.schedules.run_once()`` once the send is due.
"""

import asyncio
import time
from urllib.parse import urlencode

import pytest
from assertions import assert_error

PM = "/api/v1/chats/pm"
GM = "/api/v1/chats/gm"
SM = "/api/v1/chats/sm"
THIRTY_DAYS_MS = 30 * 24 * 3600 * 1000
DUE_DELAY_MS = 300


def now_ms():
    return int(time.time() * 1000)


def pm_body(sender, to, /, **changes):
    body = {"from": sender, "to": to, "contentType": 1, "content": "see you soon"}
    body.update(changes)
    return body


async def pair(api, unique):
    doctor, patient = unique("doc"), unique("pat")
    tokens = {
        doctor: await api.user(doctor, "doctor"),
        patient: await api.user(patient, "patient"),
    }
    return doctor, patient, tokens


async def pm_history(api, user_id, peer_id):
    params = urlencode({"user_id": user_id, "peer_id": peer_id})
    status, answer, _ = await api.get(f"/api/v1/chats/pm?{params}")
    assert status == 200, answer
    return answer["messages"]


async def total_unread(api, user_id):
    status, answer, _ = await api.get(f"/api/v1/chats/recent?user_id={user_id}")
    assert status == 200, answer
    return answer["totalUnread"]


async def schedule(api, path, body, token=None):
    """Schedule a send due in DUE_DELAY_MS and return the scheduled object."""
    body = dict(body, sendAt=now_ms() + DUE_DELAY_MS)
    status, answer, _ = await api.post(path, body, token=token)
    assert status == 202, answer
    return answer["scheduled"]


async def run_when_due(im):
    """Wait until every send scheduled by this test is due, then run the job."""
    await asyncio.sleep(DUE_DELAY_MS / 1000 + 0.1)
    await im.schedules.run_once()


async def cancel(api, schedule_id, token=None):
    status, answer, _ = await api.delete(f"/api/v1/chats/scheduled/{schedule_id}",
                                         token=token)
    return status, answer


@pytest.mark.gen_test(timeout=30)
async def test_pm_with_send_at_returns_202(api, connect, unique):
    doctor, patient, tokens = await pair(api, unique)
    socket = await connect(tokens[patient])
    send_at = now_ms() + 60_000

    status, answer, _ = await api.post(PM, pm_body(doctor, patient, sendAt=send_at),
                                       token=tokens[doctor])

    assert status == 202, answer
    assert set(answer) == {"scheduled"}
    assert answer["scheduled"] == {"id": answer["scheduled"]["id"], "sendAt": send_at}
    assert isinstance(answer["scheduled"]["id"], int)
    assert await pm_history(api, patient, doctor) == []
    assert await total_unread(api, patient) == 0
    await socket.no_frame()


@pytest.mark.gen_test(timeout=30)
async def test_scheduled_pm_is_sent_when_due(api, im, connect, unique):
    doctor, patient, tokens = await pair(api, unique)
    socket = await connect(tokens[patient])
    scheduled = await schedule(api, PM, pm_body(doctor, patient), token=tokens[doctor])

    await run_when_due(im)

    messages = await pm_history(api, patient, doctor)
    assert len(messages) == 1
    assert messages[0]["content"] == "see you soon"
    assert messages[0]["clientMsgId"] == f"scheduled-{scheduled['id']}"
    frame = await socket.expect("message")
    assert frame["message"] == messages[0]
    assert await total_unread(api, patient) == 1


@pytest.mark.gen_test(timeout=30)
async def test_scheduled_send_keeps_client_msg_id(api, im, unique):
    doctor, patient, tokens = await pair(api, unique)
    await schedule(api, PM, pm_body(doctor, patient, clientMsgId="later-1"),
                   token=tokens[doctor])

    await run_when_due(im)

    messages = await pm_history(api, patient, doctor)
    assert [message["clientMsgId"] for message in messages] == ["later-1"]


@pytest.mark.gen_test(timeout=30)
async def test_scheduled_send_is_sent_once(api, im, unique):
    doctor, patient, tokens = await pair(api, unique)
    await schedule(api, PM, pm_body(doctor, patient), token=tokens[doctor])

    await run_when_due(im)
    await im.schedules.run_once()

    assert len(await pm_history(api, patient, doctor)) == 1
    assert await total_unread(api, patient) == 1


@pytest.mark.gen_test(timeout=30)
async def test_scheduled_gm_and_sm_are_sent(api, im, unique):
    doctor, patient, tokens = await pair(api, unique)
    group = unique("team")
    await api.group(group, [doctor, patient])
    await schedule(
        api, GM, {"from": doctor, "group": group, "contentType": 1, "content": "team"},
        token=tokens[doctor],
    )
    await schedule(
        api, SM, {"to": patient, "title": "Reminder", "summary": "", "contentType": 1,
                  "content": "visit"},
    )

    await run_when_due(im)

    assert await total_unread(api, patient) == 2


@pytest.mark.parametrize("send_at_name", [
    "past", "now", "over-30-days", "string", "float", "bool", "negative",
])
@pytest.mark.gen_test(timeout=30)
async def test_bad_send_at_returns_400(api, unique, send_at_name):
    doctor, patient, tokens = await pair(api, unique)
    send_at = {
        "past": now_ms() - 60_000,
        "now": now_ms(),
        "over-30-days": now_ms() + THIRTY_DAYS_MS + 60_000,
        "string": str(now_ms() + 60_000),
        "float": now_ms() + 60_000.5,
        "bool": True,
        "negative": -1,
    }[send_at_name]

    status, answer, _ = await api.post(PM, pm_body(doctor, patient, sendAt=send_at),
                                       token=tokens[doctor])

    assert_error(status, answer, 400, "invalid_argument", "sendAt")


@pytest.mark.gen_test(timeout=30)
async def test_send_at_29_days_ahead_is_accepted(api, unique):
    doctor, patient, tokens = await pair(api, unique)
    send_at = now_ms() + THIRTY_DAYS_MS - 86_400_000

    status, answer, _ = await api.post(PM, pm_body(doctor, patient, sendAt=send_at),
                                       token=tokens[doctor])

    assert status == 202, answer


@pytest.mark.gen_test(timeout=30)
async def test_scheduled_pm_to_unknown_user_returns_404(api, unique):
    doctor, _, tokens = await pair(api, unique)
    body = pm_body(doctor, unique("nobody"), sendAt=now_ms() + 60_000)

    status, answer, _ = await api.post(PM, body, token=tokens[doctor])

    assert_error(status, answer, 404, "not_found", "to")


@pytest.mark.gen_test(timeout=30)
async def test_scheduled_gm_from_non_member_returns_403(api, unique):
    doctor, patient, tokens = await pair(api, unique)
    group = unique("team")
    await api.group(group, [patient])
    body = {"from": doctor, "group": group, "contentType": 1, "content": "hi",
            "sendAt": now_ms() + 60_000}

    status, answer, _ = await api.post(GM, body, token=tokens[doctor])

    assert_error(status, answer, 403, "forbidden", "group")


@pytest.mark.gen_test(timeout=30)
async def test_scheduled_pm_with_bad_field_returns_400(api, unique):
    doctor, patient, tokens = await pair(api, unique)
    body = pm_body(doctor, patient, content="a" * 4001, sendAt=now_ms() + 60_000)

    status, answer, _ = await api.post(PM, body, token=tokens[doctor])

    assert_error(status, answer, 400, "invalid_argument", "content")


@pytest.mark.gen_test(timeout=30)
async def test_scheduled_pm_as_other_user_returns_403(api, unique):
    doctor, patient, tokens = await pair(api, unique)
    body = pm_body(doctor, patient, sendAt=now_ms() + 60_000)

    status, answer, _ = await api.post(PM, body, token=tokens[patient])

    assert_error(status, answer, 403, "forbidden", "from")


@pytest.mark.gen_test(timeout=30)
async def test_scheduled_sm_by_user_returns_403(api, unique):
    doctor, patient, tokens = await pair(api, unique)
    body = {"to": patient, "title": "T", "summary": "", "contentType": 1,
            "content": "x", "sendAt": now_ms() + 60_000}

    status, answer, _ = await api.post(SM, body, token=tokens[doctor])

    assert_error(status, answer, 403, "forbidden")


@pytest.mark.gen_test(timeout=30)
async def test_sender_cancels_scheduled_send(api, im, unique):
    doctor, patient, tokens = await pair(api, unique)
    scheduled = await schedule(api, PM, pm_body(doctor, patient), token=tokens[doctor])

    status, answer = await cancel(api, scheduled["id"], token=tokens[doctor])
    await run_when_due(im)

    assert status == 204, answer
    assert await pm_history(api, patient, doctor) == []
    assert await total_unread(api, patient) == 0


@pytest.mark.gen_test(timeout=30)
async def test_system_cancels_scheduled_send(api, unique):
    doctor, patient, tokens = await pair(api, unique)
    scheduled = await schedule(api, PM, pm_body(doctor, patient), token=tokens[doctor])

    status, answer = await cancel(api, scheduled["id"])

    assert status == 204, answer


@pytest.mark.gen_test(timeout=30)
async def test_cancel_by_other_user_returns_403(api, im, unique):
    doctor, patient, tokens = await pair(api, unique)
    scheduled = await schedule(api, PM, pm_body(doctor, patient), token=tokens[doctor])

    status, answer = await cancel(api, scheduled["id"], token=tokens[patient])
    await run_when_due(im)

    assert_error(status, answer, 403, "forbidden")
    assert len(await pm_history(api, patient, doctor)) == 1


@pytest.mark.gen_test(timeout=30)
async def test_second_cancel_returns_404(api, unique):
    doctor, patient, tokens = await pair(api, unique)
    scheduled = await schedule(api, PM, pm_body(doctor, patient), token=tokens[doctor])
    await cancel(api, scheduled["id"], token=tokens[doctor])

    status, answer = await cancel(api, scheduled["id"], token=tokens[doctor])

    assert_error(status, answer, 404, "not_found", "id")


@pytest.mark.gen_test(timeout=30)
async def test_cancel_after_sending_returns_404(api, im, unique):
    doctor, patient, tokens = await pair(api, unique)
    scheduled = await schedule(api, PM, pm_body(doctor, patient), token=tokens[doctor])
    await run_when_due(im)

    status, answer = await cancel(api, scheduled["id"], token=tokens[doctor])

    assert_error(status, answer, 404, "not_found", "id")
    assert len(await pm_history(api, patient, doctor)) == 1


@pytest.mark.gen_test(timeout=30)
async def test_cancel_of_unknown_id_returns_404(api):
    status, answer = await cancel(api, 2**62)

    assert_error(status, answer, 404, "not_found", "id")


@pytest.mark.gen_test(timeout=30)
async def test_status_counts_waiting_sends(api, unique):
    doctor, patient, tokens = await pair(api, unique)
    _, before, _ = await api.get("/api/v1/status")

    await schedule(api, PM, pm_body(doctor, patient), token=tokens[doctor])

    _, after, _ = await api.get("/api/v1/status")
    assert after["scheduled"] == before["scheduled"] + 1
