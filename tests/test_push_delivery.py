"""Pushes through the real server: who gets one, what it contains, what stops it.

The server runs in-process with its push jobs started and both vendors
pointing at fakes on the test's IOLoop (see tests/pushsupport.py). Every
test runs on SQLite and, when IM_TEST_MYSQL_URL is set, on MariaDB.
"""

import hashlib
import time
from urllib.parse import urlencode

import pytest

from tests.pushsupport import (  # noqa: F401 - fixtures are used by name
    CALLBACK_TOKEN,
    CHAT_URL,
    TEMPLATE_ID,
    beijing_minute,
    click_payload,
    config,
    database_url,
    getui_fake,
    getui_records,
    is_parked_for_retry,
    push_rows,
    query,
    register,
    running,
    send_pm,
    wait_for_row,
    wait_settled,
    wait_until,
    wechat_fake,
    wechat_records,
)

pytestmark = pytest.mark.timeout(60)

IMAGE, VOICE = 2, 3
# Getui code 30004 (daily push total used up) parks a push until the next
# day, which keeps it in the outbox for as long as a test needs.
DAILY_QUOTA_CODE = 30004


def wechat_message_ids(rows, records):
    """Map WeChat records to message ids through the msgid stored on each row."""
    by_msgid = {row["vendor_message_id"]: row["message_id"] for row in rows}
    return [by_msgid.get(str(record["msgid"])) for record in records]


def signed_query(token=CALLBACK_TOKEN, **extra):
    timestamp, nonce = str(int(time.time())), "582716"
    signature = hashlib.sha1("".join(sorted([token, timestamp, nonce])).encode()).hexdigest()
    return urlencode({"signature": signature, "timestamp": timestamp, "nonce": nonce,
                      **extra})


async def status_counts(api):
    status, answer, _ = await api.get("/api/v1/status")
    assert status == 200, answer
    return answer


async def user_flag(im, user_id):
    rows = await im.db.run(
        query, im.db, "SELECT wechat_unreachable FROM talk_user WHERE id = :id",
        id=user_id,
    )
    return rows[0]["wechat_unreachable"]


@pytest.mark.gen_test(timeout=40)
async def test_online_recipient_gets_no_push(api, running, connect, unique, getui_fake,
                                             wechat_fake):
    doctor, online, offline = unique("doc"), unique("pat-on"), unique("pat-off")
    doctor_cid, online_cid, offline_cid = unique("cid-d"), unique("cid-on"), unique("cid-off")
    online_openid = unique("o-on")
    doctor_token = await register(api, doctor, "doctor", "王医生", getui=getui_fake,
                                  cid=doctor_cid)
    online_token = await register(api, online, getui=getui_fake, wechat=wechat_fake,
                                  cid=online_cid, openid=online_openid)
    await register(api, offline, getui=getui_fake, cid=offline_cid)
    socket = await connect(online_token)

    await send_pm(api, doctor, doctor_token, online, "今天感觉怎么样？")
    await send_pm(api, doctor, doctor_token, offline, "请按时服药")
    await wait_until(lambda: getui_records(getui_fake, offline_cid),
                     description="push to the offline patient")
    await wait_settled(running)

    assert (await socket.expect("message"))["message"]["to"] == online
    assert await push_rows(running, online) == []
    assert getui_records(getui_fake, online_cid) == []
    assert wechat_records(wechat_fake, online_openid) == []
    assert getui_records(getui_fake, doctor_cid) == []


@pytest.mark.gen_test(timeout=40)
async def test_offline_recipients_get_one_push_per_vendor(api, running, unique, getui_fake,
                                                          wechat_fake):
    doctor = unique("doc")
    doctor_token = await register(api, doctor, "doctor", "李医生")
    both, getui_only, wechat_only, neither = (
        unique("pat-both"), unique("pat-getui"), unique("pat-wechat"), unique("pat-none"),
    )
    both_cid, both_openid = unique("cid-b"), unique("o-b")
    getui_only_cid, wechat_only_openid = unique("cid-g"), unique("o-w")
    await register(api, both, getui=getui_fake, wechat=wechat_fake, cid=both_cid,
                   openid=both_openid)
    await register(api, getui_only, getui=getui_fake, cid=getui_only_cid)
    await register(api, wechat_only, wechat=wechat_fake, openid=wechat_only_openid)
    await register(api, neither)

    sent = {user: [] for user in (both, getui_only, wechat_only, neither)}
    for round_number in range(2):
        for user in sent:
            message = await send_pm(api, doctor, doctor_token, user, f"第{round_number}条")
            sent[user].append(message["id"])
    await wait_settled(running)

    for user, cid, openid, wants_getui, wants_wechat in (
        (both, both_cid, both_openid, True, True),
        (getui_only, getui_only_cid, None, True, False),
        (wechat_only, None, wechat_only_openid, False, True),
    ):
        getui = getui_records(getui_fake, cid) if cid else []
        wechat = wechat_records(wechat_fake, openid) if openid else []
        rows = await push_rows(running, user, "wechat")
        getui_ids = sorted(click_payload(record)["messageId"] for record in getui)
        wechat_ids = sorted(wechat_message_ids(rows, wechat))
        assert getui_ids == (sent[user] if wants_getui else []), user
        assert wechat_ids == (sent[user] if wants_wechat else []), user
    assert await push_rows(running, neither) == []


@pytest.mark.gen_test(timeout=40)
async def test_notification_fields_follow_message(api, running, unique, getui_fake,
                                                  wechat_fake):
    doctor, patient = unique("doc"), unique("pat")
    cid, openid = unique("cid"), unique("o")
    doctor_token = await register(api, doctor, "doctor", "张医生")
    await register(api, patient, getui=getui_fake, wechat=wechat_fake, cid=cid,
                   openid=openid)

    text = await send_pm(api, doctor, doctor_token, patient, "血压记录\n已收到\t请放心")
    image = await send_pm(api, doctor, doctor_token, patient,
                          "https://files.example.org/img/1.jpg", IMAGE)
    voice = await send_pm(api, doctor, doctor_token, patient,
                          "https://files.example.org/voice/1.amr", VOICE)
    await wait_settled(running)

    messages = [text, image, voice]
    expected_bodies = ["血压记录 已收到 请放心", "[图片]", "[语音]"]
    getui = sorted(getui_records(getui_fake, cid),
                   key=lambda record: click_payload(record)["messageId"])
    assert len(getui) == 3
    assert [record["title"] for record in getui] == ["张医生"] * 3
    assert [record["body"] for record in getui] == expected_bodies
    assert [record["badge"] for record in getui] == [1, 2, 3]
    assert [click_payload(record) for record in getui] == [
        {"channel": "p2p", "conversation": doctor, "messageId": message["id"]}
        for message in messages
    ]

    rows = await push_rows(running, patient, "wechat")
    wechat = wechat_records(wechat_fake, openid)
    by_message = dict(zip(wechat_message_ids(rows, wechat), wechat))
    assert sorted(by_message) == [message["id"] for message in messages]
    for message, body in zip(messages, expected_bodies):
        record = by_message[message["id"]]
        assert record["template_id"] == TEMPLATE_ID
        assert record["url"] == CHAT_URL
        assert record["data"] == {
            "thing1": {"value": "张医生"},
            "time2": {"value": beijing_minute(message["timestamp"])},
            "thing3": {"value": body},
        }


@pytest.mark.gen_test(timeout=40)
async def test_group_message_pushes_offline_members(api, running, connect, unique,
                                                    getui_fake, wechat_fake):
    doctor, online, with_cid, with_openid = (
        unique("doc"), unique("pat-on"), unique("pat-cid"), unique("pat-o"),
    )
    doctor_cid = unique("cid-d")
    doctor_token = await register(api, doctor, "doctor", "签约医生", getui=getui_fake,
                                  cid=doctor_cid)
    online_token = await register(api, online, getui=getui_fake, cid=unique("cid-on"))
    await register(api, with_cid, getui=getui_fake, cid=unique("cid-p"))
    await register(api, with_openid, wechat=wechat_fake, openid=unique("o-p"))
    group = unique("team")
    await api.group(group, [doctor, online, with_cid, with_openid])
    await connect(online_token)

    status, answer, _ = await api.post(
        "/api/v1/chats/gm",
        {"from": doctor, "group": group, "contentType": 1, "content": "明早八点空腹抽血"},
        token=doctor_token,
    )
    assert status == 201, answer
    message = answer["message"]
    await wait_settled(running)

    getui = getui_records(getui_fake, unique("cid-p"))
    assert [click_payload(record) for record in getui] == [
        {"channel": "group", "conversation": group, "messageId": message["id"]}
    ]
    assert [record["title"] for record in getui] == ["签约医生"]
    wechat = wechat_records(wechat_fake, unique("o-p"))
    assert [record["data"]["thing3"]["value"] for record in wechat] == ["明早八点空腹抽血"]
    assert getui_records(getui_fake, unique("cid-on")) == []
    assert getui_records(getui_fake, doctor_cid) == []


@pytest.mark.gen_test(timeout=40)
async def test_system_message_push_uses_title(api, running, unique, getui_fake,
                                              wechat_fake):
    patient, cid, openid = unique("pat"), unique("cid"), unique("o")
    await register(api, patient, getui=getui_fake, wechat=wechat_fake, cid=cid,
                   openid=openid)

    status, answer, _ = await api.post("/api/v1/chats/sm", {
        "to": patient, "title": "复诊提醒", "summary": "请按时复诊",
        "contentType": 1, "content": "您的复诊时间是周三上午",
    })
    assert status == 201, answer
    await wait_settled(running)

    getui = getui_records(getui_fake, cid)
    assert [(record["title"], record["body"]) for record in getui] == [
        ("复诊提醒", "您的复诊时间是周三上午")
    ]
    assert [click_payload(record) for record in getui] == [
        {"channel": "system", "conversation": "", "messageId": answer["message"]["id"]}
    ]
    wechat = wechat_records(wechat_fake, openid)
    assert [record["data"]["thing1"]["value"] for record in wechat] == ["复诊提醒"]


@pytest.mark.gen_test(timeout=40)
async def test_invalid_cid_drops_client_id(api, running, unique, getui_fake):
    doctor, patient, cid = unique("doc"), unique("pat"), unique("cid-gone")
    doctor_token = await register(api, doctor, "doctor")
    # The fake does not know this cid, so it returns "target user is invalid".
    await register(api, patient, cid=cid)

    await send_pm(api, doctor, doctor_token, patient)
    row = await wait_for_row(running, patient, "getui",
                             lambda row: row["status"] == "failed", "failed Getui push")
    status, user, _ = await api.get(f"/api/v1/users/{patient}")
    await send_pm(api, doctor, doctor_token, patient, "第二条")

    assert status == 200, user
    assert user["getuiClientId"] is None
    assert row["attempts"] == 1
    assert [r["id"] for r in await push_rows(running, patient, "getui")] == [row["id"]]
    assert getui_records(getui_fake, cid) == []


@pytest.mark.gen_test(timeout=40)
async def test_unfollowed_openid_marks_user_unreachable(api, running, unique, getui_fake,
                                                        wechat_fake):
    doctor, patient = unique("doc"), unique("pat")
    cid, openid = unique("cid"), unique("o-unfollowed")
    doctor_token = await register(api, doctor, "doctor")
    await register(api, patient, getui=getui_fake, wechat=wechat_fake, cid=cid,
                   openid=openid, subscribed=False)

    await send_pm(api, doctor, doctor_token, patient, "第一条")
    row = await wait_for_row(running, patient, "wechat",
                             lambda row: row["status"] == "failed", "failed WeChat push")
    await send_pm(api, doctor, doctor_token, patient, "第二条")
    await wait_settled(running)

    assert "43004" in row["last_error"]
    assert await user_flag(running, patient) == 1
    assert [r["id"] for r in await push_rows(running, patient, "wechat")] == [row["id"]]
    assert wechat_fake.calls["send"] == 1
    assert len(getui_records(getui_fake, cid)) == 2


@pytest.mark.gen_test(timeout=40)
async def test_status_counts_pending_pushes(api, running, unique, getui_fake, wechat_fake):
    doctor = unique("doc")
    doctor_token = await register(api, doctor, "doctor")
    patients = [unique(f"pat{n}") for n in range(3)]
    for patient in patients:
        await register(api, patient, getui=getui_fake, cid=f"cid-{patient}")
    follower, follower_openid = unique("pat-w"), unique("o-w")
    await register(api, follower, wechat=wechat_fake, openid=follower_openid)
    getui_fake.start_outage(60)

    for patient in patients + [follower]:
        await send_pm(api, doctor, doctor_token, patient)
    await wait_until(lambda: wechat_records(wechat_fake, follower_openid),
                     description="WeChat push during the Getui outage")
    during = await status_counts(api)
    getui_fake.end_outage()
    await wait_settled(running)
    after = await status_counts(api)

    assert during["pendingPushes"] == 3
    assert after["pendingPushes"] == 0
    assert len(getui_fake.sent) == 3


@pytest.mark.gen_test(timeout=30)
async def test_wechat_callback_echoes_signed_check(api, running):
    status, _, response = await api.get(
        "/wechat/callback?" + signed_query(echostr="echo-7315"), token=""
    )

    assert status == 200
    assert response.body == b"echo-7315"


@pytest.mark.gen_test(timeout=30)
async def test_wechat_callback_rejects_bad_signature(api, running):
    bad = signed_query(token="not-the-callback-token", echostr="echo")
    event = (
        "<xml><FromUserName><![CDATA[o-x]]></FromUserName><CreateTime>1</CreateTime>"
        "<MsgType><![CDATA[event]]></MsgType>"
        "<Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event><MsgID>1</MsgID>"
        "<Status><![CDATA[failed:user block]]></Status></xml>"
    )

    get_status, get_answer, _ = await api.get("/wechat/callback?" + bad, token="")
    post_status, post_answer, _ = await api.request(
        "POST", "/wechat/callback?" + bad, raw_body=event.encode(), token="",
        headers={"Content-Type": "text/xml"},
    )

    assert get_status == 403
    assert get_answer["error"]["code"] == "forbidden"
    assert post_status == 403
    assert post_answer["error"]["code"] == "forbidden"


@pytest.mark.gen_test(timeout=40)
async def test_wechat_callback_records_delivery(api, running, unique, wechat_fake,
                                                http_port):
    doctor, patient, openid = unique("doc"), unique("pat"), unique("o")
    doctor_token = await register(api, doctor, "doctor")
    await register(api, patient, wechat=wechat_fake, openid=openid)
    wechat_fake.set_callback(f"http://127.0.0.1:{http_port}/wechat/callback",
                             CALLBACK_TOKEN, "success")

    await send_pm(api, doctor, doctor_token, patient)
    row = await wait_for_row(running, patient, "wechat",
                             lambda row: row["delivery_status"] is not None,
                             "delivery status from the callback")
    # The fake records the callback once it has read the server's response.
    await wait_until(lambda: wechat_fake.callbacks, description="callback response")

    assert row["delivery_status"] == "success"
    assert row["vendor_message_id"] == str(wechat_fake.sent[0]["msgid"])
    assert [(c["http_status"], c["body"]) for c in wechat_fake.callbacks] == [
        (200, "success")
    ]


@pytest.mark.gen_test(timeout=40)
async def test_callback_before_send_response_recorded(api, running, unique, wechat_fake,
                                                      http_port):
    doctor, patient, openid = unique("doc"), unique("pat"), unique("o")
    doctor_token = await register(api, doctor, "doctor")
    await register(api, patient, wechat=wechat_fake, openid=openid)
    wechat_fake.set_callback(f"http://127.0.0.1:{http_port}/wechat/callback",
                             CALLBACK_TOKEN, "success")
    # The fake accepts the send and posts the callback at once, but delays the
    # send's response, so the report arrives before the server knows the msgid.
    wechat_fake.inject(path="send", delay_seconds=0.5, process=True)

    await send_pm(api, doctor, doctor_token, patient)
    await wait_until(lambda: wechat_fake.callbacks, description="callback response")
    rows = await push_rows(running, patient, "wechat")

    assert [row["delivery_status"] for row in rows] == ["success"]
    assert [row["vendor_message_id"] for row in rows] == [str(wechat_fake.sent[0]["msgid"])]


@pytest.mark.gen_test(timeout=40)
async def test_user_block_stops_wechat_pushes(api, running, unique, getui_fake,
                                              wechat_fake, http_port):
    doctor, patient = unique("doc"), unique("pat")
    cid, openid = unique("cid"), unique("o")
    doctor_token = await register(api, doctor, "doctor")
    await register(api, patient, getui=getui_fake, wechat=wechat_fake, cid=cid,
                   openid=openid)
    wechat_fake.set_callback(f"http://127.0.0.1:{http_port}/wechat/callback",
                             CALLBACK_TOKEN, "failed:user block")

    await send_pm(api, doctor, doctor_token, patient, "第一条")
    row = await wait_for_row(running, patient, "wechat",
                             lambda row: row["delivery_status"] is not None,
                             "delivery status from the callback")
    await send_pm(api, doctor, doctor_token, patient, "第二条")
    await wait_settled(running)

    assert row["delivery_status"] == "failed:user block"
    assert await user_flag(running, patient) == 1
    assert [r["id"] for r in await push_rows(running, patient, "wechat")] == [row["id"]]
    assert len(wechat_records(wechat_fake, openid)) == 1
    assert len(getui_records(getui_fake, cid)) == 2


@pytest.mark.gen_test(timeout=40)
async def test_recall_cancels_pending_push(api, running, unique, getui_fake):
    doctor, patient, cid = unique("doc"), unique("pat"), unique("cid")
    doctor_token = await register(api, doctor, "doctor")
    await register(api, patient, getui=getui_fake, cid=cid)
    getui_fake.inject(path="push", code=DAILY_QUOTA_CODE)

    message = await send_pm(api, doctor, doctor_token, patient, "发错了")
    await wait_for_row(running, patient, "getui", is_parked_for_retry,
                       "push parked by the daily quota")
    status, answer, _ = await api.delete(f"/api/v1/chats/pm/{message['id']}",
                                         token=doctor_token)
    rows = await push_rows(running, patient, "getui")

    assert status == 200, answer
    assert [row["status"] for row in rows] == ["cancelled"]
    assert rows[0]["last_error"] == "message recalled"
    assert getui_records(getui_fake, cid) == []


@pytest.mark.gen_test(timeout=40)
async def test_logout_cancels_pending_getui_pushes(api, running, unique, getui_fake,
                                                   wechat_fake):
    doctor, patient = unique("doc"), unique("pat")
    cid, openid = unique("cid"), unique("o")
    doctor_token = await register(api, doctor, "doctor")
    await register(api, patient, getui=getui_fake, wechat=wechat_fake, cid=cid,
                   openid=openid)
    getui_fake.inject(path="push", code=DAILY_QUOTA_CODE)

    await send_pm(api, doctor, doctor_token, patient, "第一条")
    await wait_for_row(running, patient, "getui", is_parked_for_retry,
                       "push parked by the daily quota")
    status, _, _ = await api.post(f"/api/v1/users/{patient}/logout")
    await send_pm(api, doctor, doctor_token, patient, "第二条")
    await wait_until(lambda: len(wechat_records(wechat_fake, openid)) == 2,
                     description="both WeChat pushes")
    getui_rows = await push_rows(running, patient, "getui")
    _, user, _ = await api.get(f"/api/v1/users/{patient}")

    assert status == 204
    assert [row["status"] for row in getui_rows] == ["cancelled"]
    assert getui_rows[0]["last_error"] == "logged out"
    assert user["getuiClientId"] is None
    assert getui_records(getui_fake, cid) == []
