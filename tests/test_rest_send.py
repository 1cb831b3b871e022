"""REST sends on the p2p, group and system channels.

Covers the message object of each channel and content type, the `online`
flag, delivery to live sockets, idempotency by clientMsgId, field checks
and the data checks (unknown user or group, membership, groupType). Every
rejected send must leave history and unread counters as they were.
"""

import asyncio
import time
from urllib.parse import urlencode

import pytest
from assertions import assert_error

PM = "/api/v1/chats/pm"
GM = "/api/v1/chats/gm"
SM = "/api/v1/chats/sm"

TEXT = 1
URL_CONTENT_TYPES = (2, 3, 4, 5)
ALL_CONTENT_TYPES = (1, 2, 3, 4, 5)
LONG_ID = "u" * 65
# 4,000 code points mixing emoji, a supplementary-plane CJK ideograph
# (4 bytes in UTF-8), a common CJK ideograph and ASCII.
MIXED_TEXT_4000 = "😀𠀀中a" * 1000


def sample_content(content_type):
    """Return valid content: text for type 1 and an https URL for the others."""
    if content_type == TEXT:
        return "hello 你好 😀"
    return f"https://files.example.com/media/{content_type}/item.bin?v=1"


def pm_body(sender, to, /, **changes):
    body = {"from": sender, "to": to, "contentType": TEXT, "content": "hello"}
    body.update(changes)
    return body


def gm_body(sender, group, /, **changes):
    body = {"from": sender, "group": group, "contentType": TEXT, "content": "hello"}
    body.update(changes)
    return body


def sm_body(to, /, **changes):
    body = {
        "to": to, "title": "Follow-up", "summary": "Your results are ready",
        "contentType": TEXT, "content": "Please open the report.",
    }
    body.update(changes)
    return body


def without(body, name):
    return {key: value for key, value in body.items() if key != name}


async def history(api, kind, user_id, **query):
    """Return one history page, read with the system token."""
    params = urlencode({"user_id": user_id, "limit": 100, **query})
    status, answer, _ = await api.get(f"/api/v1/chats/{kind}?{params}")
    assert status == 200, answer
    return answer


async def recent(api, user_id):
    status, answer, _ = await api.get(f"/api/v1/chats/recent?user_id={user_id}")
    assert status == 200, answer
    return answer


async def snapshot(api, user_id, group=None):
    """Return the history pages and recent list that a failed send must not change."""
    state = {
        "pm": await history(api, "pm", user_id),
        "sm": await history(api, "sm", user_id),
        "recent": await recent(api, user_id),
    }
    if group is not None:
        state["gm"] = await history(api, "gm", user_id, group=group)
    return state


async def care_team(api, unique, group_type=1):
    """Register a doctor and two patients in one group and return their ids."""
    doctor, patient, other = unique("doc"), unique("pat"), unique("pat2")
    tokens = {
        doctor: await api.user(doctor, "doctor"),
        patient: await api.user(patient, "patient"),
        other: await api.user(other, "patient"),
    }
    group = unique("team")
    await api.group(group, [doctor, patient, other], group_type=group_type)
    return doctor, patient, other, group, tokens


def expected_pm(message, sender, to, content_type, content):
    return {
        "id": message["id"], "channel": "p2p", "from": sender, "to": to,
        "contentType": content_type, "content": content,
        "timestamp": message["timestamp"],
    }


# -- p2p ----------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ALL_CONTENT_TYPES)
@pytest.mark.gen_test(timeout=30)
async def test_pm_with_content_type_is_stored(api, unique, content_type):
    doctor, patient = unique("doc"), unique("pat")
    doctor_token = await api.user(doctor, "doctor")
    await api.user(patient, "patient")
    content = sample_content(content_type)
    before_ms = int(time.time() * 1000)

    status, answer, _ = await api.post(
        PM, pm_body(doctor, patient, contentType=content_type, content=content),
        token=doctor_token,
    )

    assert status == 201, answer
    assert set(answer) == {"message", "online"}
    message = answer["message"]
    assert message == expected_pm(message, doctor, patient, content_type, content)
    assert isinstance(message["id"], int)
    assert message["id"] > 0
    assert before_ms <= message["timestamp"] <= int(time.time() * 1000)
    page = await history(api, "pm", patient, peer_id=doctor)
    assert page["messages"] == [message]


@pytest.mark.gen_test(timeout=30)
async def test_pm_to_connected_user_reports_online(api, connect, unique):
    doctor, patient = unique("doc"), unique("pat")
    doctor_token = await api.user(doctor, "doctor")
    patient_token = await api.user(patient, "patient")
    await connect(patient_token)

    status, answer, _ = await api.post(PM, pm_body(doctor, patient), token=doctor_token)

    assert status == 201, answer
    assert answer["online"] is True


@pytest.mark.gen_test(timeout=30)
async def test_pm_to_offline_user_reports_offline(api, connect, unique):
    doctor, patient = unique("doc"), unique("pat")
    doctor_token = await api.user(doctor, "doctor")
    await api.user(patient, "patient")
    # The sender's own socket must not count as a recipient's socket.
    await connect(doctor_token)

    status, answer, _ = await api.post(PM, pm_body(doctor, patient), token=doctor_token)

    assert status == 201, answer
    assert answer["online"] is False


@pytest.mark.gen_test(timeout=30)
async def test_pm_reaches_recipient_and_sender_sockets(api, connect, unique):
    doctor, patient = unique("doc"), unique("pat")
    doctor_token = await api.user(doctor, "doctor")
    patient_token = await api.user(patient, "patient")
    patient_socket = await connect(patient_token)
    doctor_socket = await connect(doctor_token)

    status, answer, _ = await api.post(PM, pm_body(doctor, patient), token=doctor_token)

    assert status == 201, answer
    patient_frame = await patient_socket.expect("message")
    assert patient_frame["message"] == answer["message"]
    doctor_frame = await doctor_socket.expect("message")
    assert doctor_frame["message"] == answer["message"]


@pytest.mark.gen_test(timeout=30)
async def test_system_token_sends_pm_for_user(api, unique):
    doctor, patient = unique("doc"), unique("pat")
    await api.user(doctor, "doctor")
    await api.user(patient, "patient")

    status, answer, _ = await api.post(PM, pm_body(doctor, patient))

    assert status == 201, answer
    assert answer["message"]["from"] == doctor


@pytest.mark.gen_test(timeout=30)
async def test_max_length_text_is_stored_exactly(api, connect, unique):
    doctor, patient = unique("doc"), unique("pat")
    doctor_token = await api.user(doctor, "doctor")
    patient_token = await api.user(patient, "patient")
    socket = await connect(patient_token)
    assert len(MIXED_TEXT_4000) == 4000

    status, answer, _ = await api.post(
        PM, pm_body(doctor, patient, content=MIXED_TEXT_4000), token=doctor_token
    )

    assert status == 201, answer
    assert answer["message"]["content"] == MIXED_TEXT_4000
    frame = await socket.expect("message")
    assert frame["message"]["content"] == MIXED_TEXT_4000
    page = await history(api, "pm", patient, peer_id=doctor)
    stored = page["messages"][0]["content"]
    assert stored.encode("utf-8") == MIXED_TEXT_4000.encode("utf-8")


@pytest.mark.parametrize("content_type", URL_CONTENT_TYPES)
@pytest.mark.gen_test(timeout=30)
async def test_url_of_1024_characters_is_accepted(api, unique, content_type):
    doctor, patient = unique("doc"), unique("pat")
    doctor_token = await api.user(doctor, "doctor")
    await api.user(patient, "patient")
    prefix = "https://files.example.com/"
    url = prefix + "a" * (1024 - len(prefix))

    status, answer, _ = await api.post(
        PM, pm_body(doctor, patient, contentType=content_type, content=url),
        token=doctor_token,
    )

    assert status == 201, answer
    assert answer["message"]["content"] == url


@pytest.mark.parametrize("url", [
    "http://example.com/a.png",
    "HTTPS://example.com/a.png",
    "https://example.com:8443/path/a%20b.png?x=1#frag",
])
@pytest.mark.gen_test(timeout=30)
async def test_http_and_https_urls_are_accepted(api, unique, url):
    doctor, patient = unique("doc"), unique("pat")
    doctor_token = await api.user(doctor, "doctor")
    await api.user(patient, "patient")

    status, answer, _ = await api.post(
        PM, pm_body(doctor, patient, contentType=2, content=url), token=doctor_token
    )

    assert status == 201, answer
    assert answer["message"]["content"] == url


# -- group --------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ALL_CONTENT_TYPES)
@pytest.mark.gen_test(timeout=30)
async def test_gm_with_content_type_is_stored(api, unique, content_type):
    doctor, patient, _, group, tokens = await care_team(api, unique, group_type=3)
    content = sample_content(content_type)

    status, answer, _ = await api.post(
        GM, gm_body(doctor, group, contentType=content_type, content=content),
        token=tokens[doctor],
    )

    assert status == 201, answer
    assert set(answer) == {"message", "online"}
    message = answer["message"]
    assert message == {
        "id": message["id"], "channel": "group", "from": doctor, "group": group,
        "groupType": 3, "contentType": content_type, "content": content,
        "timestamp": message["timestamp"],
    }
    page = await history(api, "gm", patient, group=group)
    assert page["messages"] == [message]


@pytest.mark.gen_test(timeout=30)
async def test_gm_with_at_list_keeps_it(api, unique):
    doctor, patient, other, group, tokens = await care_team(api, unique)

    status, answer, _ = await api.post(
        GM, gm_body(doctor, group, at=[patient, other]), token=tokens[doctor]
    )

    assert status == 201, answer
    assert answer["message"]["at"] == [patient, other]
    page = await history(api, "gm", patient, group=group)
    assert page["messages"][0]["at"] == [patient, other]


@pytest.mark.gen_test(timeout=30)
async def test_gm_with_at_all_alone_is_accepted(api, unique):
    doctor, _, _, group, tokens = await care_team(api, unique)

    status, answer, _ = await api.post(
        GM, gm_body(doctor, group, at=["all"]), token=tokens[doctor]
    )

    assert status == 201, answer
    assert answer["message"]["at"] == ["all"]


@pytest.mark.gen_test(timeout=30)
async def test_gm_with_50_at_ids_is_accepted(api, unique):
    doctor, _, _, group, tokens = await care_team(api, unique)
    at = [f"user-{n}" for n in range(50)]

    status, answer, _ = await api.post(GM, gm_body(doctor, group, at=at),
                                       token=tokens[doctor])

    assert status == 201, answer
    assert answer["message"]["at"] == at


@pytest.mark.gen_test(timeout=30)
async def test_gm_with_matching_group_type_is_accepted(api, unique):
    doctor, _, _, group, tokens = await care_team(api, unique, group_type=2)

    status, answer, _ = await api.post(
        GM, gm_body(doctor, group, groupType=2), token=tokens[doctor]
    )

    assert status == 201, answer
    assert answer["message"]["groupType"] == 2


@pytest.mark.gen_test(timeout=30)
async def test_gm_to_connected_member_reports_online(api, connect, unique):
    doctor, patient, _, group, tokens = await care_team(api, unique)
    await connect(tokens[patient])

    status, answer, _ = await api.post(GM, gm_body(doctor, group), token=tokens[doctor])

    assert status == 201, answer
    assert answer["online"] is True


@pytest.mark.gen_test(timeout=30)
async def test_gm_to_offline_members_reports_offline(api, connect, unique):
    doctor, _, _, group, tokens = await care_team(api, unique)
    await connect(tokens[doctor])

    status, answer, _ = await api.post(GM, gm_body(doctor, group), token=tokens[doctor])

    assert status == 201, answer
    assert answer["online"] is False


@pytest.mark.gen_test(timeout=30)
async def test_gm_reaches_every_member_socket(api, connect, unique):
    doctor, patient, other, group, tokens = await care_team(api, unique)
    sockets = [await connect(tokens[user]) for user in (doctor, patient, other)]

    status, answer, _ = await api.post(GM, gm_body(doctor, group), token=tokens[doctor])

    assert status == 201, answer
    for socket in sockets:
        frame = await socket.expect("message")
        assert frame["message"] == answer["message"]


# -- system -------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ALL_CONTENT_TYPES)
@pytest.mark.gen_test(timeout=30)
async def test_sm_with_content_type_is_stored(api, unique, content_type):
    patient = unique("pat")
    await api.user(patient, "patient")
    content = sample_content(content_type)

    status, answer, _ = await api.post(
        SM, sm_body(patient, contentType=content_type, content=content)
    )

    assert status == 201, answer
    assert set(answer) == {"message"}
    message = answer["message"]
    assert message == {
        "id": message["id"], "channel": "system", "from": "system", "to": patient,
        "title": "Follow-up", "summary": "Your results are ready",
        "contentType": content_type, "content": content,
        "timestamp": message["timestamp"],
    }
    page = await history(api, "sm", patient)
    assert page["messages"] == [message]


@pytest.mark.gen_test(timeout=30)
async def test_longest_sm_title_and_summary_accepted(api, unique):
    patient = unique("pat")
    await api.user(patient, "patient")
    title, summary = "标" * 100, "😀" * 200
    body = sm_body(patient, title=title, summary=summary)

    status, answer, _ = await api.post(SM, body)

    assert status == 201, answer
    assert answer["message"]["title"] == title
    assert answer["message"]["summary"] == summary


@pytest.mark.gen_test(timeout=30)
async def test_sm_reaches_recipient_socket(api, connect, unique):
    patient = unique("pat")
    patient_token = await api.user(patient, "patient")
    socket = await connect(patient_token)

    status, answer, _ = await api.post(SM, sm_body(patient))

    assert status == 201, answer
    frame = await socket.expect("message")
    assert frame["message"] == answer["message"]


# -- idempotency --------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_repeated_pm_returns_first_message(api, unique):
    doctor, patient = unique("doc"), unique("pat")
    doctor_token = await api.user(doctor, "doctor")
    await api.user(patient, "patient")
    _, first, _ = await api.post(
        PM, pm_body(doctor, patient, content="first", clientMsgId="c-1"),
        token=doctor_token,
    )

    status, answer, _ = await api.post(
        PM, pm_body(doctor, patient, content="second", clientMsgId="c-1"),
        token=doctor_token,
    )

    assert status == 200, answer
    assert answer["message"] == first["message"]
    assert answer["message"]["clientMsgId"] == "c-1"


@pytest.mark.gen_test(timeout=30)
async def test_repeated_pm_is_stored_and_counted_once(api, unique):
    doctor, patient = unique("doc"), unique("pat")
    doctor_token = await api.user(doctor, "doctor")
    await api.user(patient, "patient")
    body = pm_body(doctor, patient, clientMsgId="c-1")
    await api.post(PM, body, token=doctor_token)

    for _ in range(3):
        await api.post(PM, body, token=doctor_token)

    page = await history(api, "pm", patient, peer_id=doctor)
    assert len(page["messages"]) == 1
    state = await recent(api, patient)
    assert state["totalUnread"] == 1
    assert state["conversations"][0]["unread"] == 1


@pytest.mark.gen_test(timeout=30)
async def test_repeated_pm_is_delivered_once(api, connect, unique):
    doctor, patient = unique("doc"), unique("pat")
    doctor_token = await api.user(doctor, "doctor")
    patient_token = await api.user(patient, "patient")
    socket = await connect(patient_token)
    body = pm_body(doctor, patient, clientMsgId="c-1")
    await api.post(PM, body, token=doctor_token)
    await socket.expect("message")

    status, _, _ = await api.post(PM, body, token=doctor_token)

    assert status == 200
    await socket.no_frame()


@pytest.mark.gen_test(timeout=30)
async def test_repeated_gm_returns_first_message(api, unique):
    doctor, patient, _, group, tokens = await care_team(api, unique)
    body = gm_body(doctor, group, clientMsgId="g-1")
    _, first, _ = await api.post(GM, body, token=tokens[doctor])

    status, answer, _ = await api.post(GM, body, token=tokens[doctor])

    assert status == 200, answer
    assert answer["message"] == first["message"]
    page = await history(api, "gm", patient, group=group)
    assert len(page["messages"]) == 1
    state = await recent(api, patient)
    assert state["totalUnread"] == 1


@pytest.mark.gen_test(timeout=30)
async def test_repeated_sm_returns_first_message(api, unique):
    patient = unique("pat")
    await api.user(patient, "patient")
    body = sm_body(patient, clientMsgId=unique("notice"))
    _, first, _ = await api.post(SM, body)

    status, answer, _ = await api.post(SM, body)

    assert status == 200, answer
    assert answer["message"] == first["message"]
    page = await history(api, "sm", patient)
    assert len(page["messages"]) == 1


@pytest.mark.parametrize("kind", ["pm", "gm"])
@pytest.mark.gen_test(timeout=30)
async def test_concurrent_identical_sends_store_one(api, connect, unique, kind):
    doctor, patient, _, group, tokens = await care_team(api, unique)
    socket = await connect(tokens[patient])
    if kind == "pm":
        path, body = PM, pm_body(doctor, patient, clientMsgId="race")
    else:
        path, body = GM, gm_body(doctor, group, clientMsgId="race")

    results = await asyncio.gather(
        *[api.post(path, body, token=tokens[doctor]) for _ in range(8)]
    )

    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200] * 7 + [201]
    ids = {answer["message"]["id"] for _, answer, _ in results}
    assert len(ids) == 1
    query = {"peer_id": doctor} if kind == "pm" else {"group": group}
    page = await history(api, kind, patient, **query)
    assert len(page["messages"]) == 1
    state = await recent(api, patient)
    assert state["totalUnread"] == 1
    await socket.expect("message")
    await socket.no_frame()


@pytest.mark.gen_test(timeout=30)
async def test_client_msg_id_is_scoped_per_sender(api, unique):
    doctor, nurse, patient = unique("doc"), unique("nurse"), unique("pat")
    doctor_token = await api.user(doctor, "doctor")
    nurse_token = await api.user(nurse, "doctor")
    await api.user(patient, "patient")

    first_status, first, _ = await api.post(
        PM, pm_body(doctor, patient, clientMsgId="same"), token=doctor_token
    )
    second_status, second, _ = await api.post(
        PM, pm_body(nurse, patient, clientMsgId="same"), token=nurse_token
    )

    assert first_status == 201, first
    assert second_status == 201, second
    assert first["message"]["id"] != second["message"]["id"]


@pytest.mark.gen_test(timeout=30)
async def test_client_msg_id_is_scoped_per_channel(api, unique):
    doctor, patient, _, group, tokens = await care_team(api, unique)

    pm_status, pm_answer, _ = await api.post(
        PM, pm_body(doctor, patient, clientMsgId="same"), token=tokens[doctor]
    )
    gm_status, gm_answer, _ = await api.post(
        GM, gm_body(doctor, group, clientMsgId="same"), token=tokens[doctor]
    )

    assert pm_status == 201, pm_answer
    assert gm_status == 201, gm_answer


@pytest.mark.gen_test(timeout=30)
async def test_client_msg_id_reaches_recipient_socket(api, connect, unique):
    doctor, patient, other, group, tokens = await care_team(api, unique)
    patient_socket = await connect(tokens[patient])
    other_socket = await connect(tokens[other])

    await api.post(PM, pm_body(doctor, patient, clientMsgId="pm-7"),
                   token=tokens[doctor])
    await api.post(GM, gm_body(doctor, group, clientMsgId="gm-7"),
                   token=tokens[doctor])

    pm_frame = await patient_socket.expect("message")
    assert pm_frame["message"]["clientMsgId"] == "pm-7"
    gm_frame = await other_socket.expect("message")
    assert gm_frame["message"]["clientMsgId"] == "gm-7"
    page = await history(api, "pm", patient, peer_id=doctor)
    assert page["messages"][0]["clientMsgId"] == "pm-7"


@pytest.mark.gen_test(timeout=30)
async def test_message_without_client_msg_id_omits_it(api, unique):
    doctor, patient = unique("doc"), unique("pat")
    doctor_token = await api.user(doctor, "doctor")
    await api.user(patient, "patient")

    status, answer, _ = await api.post(PM, pm_body(doctor, patient), token=doctor_token)

    assert status == 201, answer
    assert "clientMsgId" not in answer["message"]


# -- field checks -------------------------------------------------------------

PM_INVALID_FIELDS = [
    ("content-type-string", {"contentType": "1"}, "contentType"),
    ("content-type-bool", {"contentType": True}, "contentType"),
    ("content-type-float", {"contentType": 1.0}, "contentType"),
    ("content-type-zero", {"contentType": 0}, "contentType"),
    ("content-type-six", {"contentType": 6}, "contentType"),
    ("content-type-negative", {"contentType": -1}, "contentType"),
    ("content-type-huge", {"contentType": 10**30}, "contentType"),
    ("content-number", {"content": 5}, "content"),
    ("content-bool", {"content": True}, "content"),
    ("content-list", {"content": ["hello"]}, "content"),
    ("content-empty", {"content": ""}, "content"),
    ("text-4001", {"content": "a" * 4001}, "content"),
    ("text-4001-emoji", {"content": "😀" * 4001}, "content"),
    ("url-1025", {"contentType": 2,
                  "content": "https://x.example/" + "a" * 1007}, "content"),
    ("url-javascript", {"contentType": 4, "content": "javascript:alert(1)"}, "content"),
    ("url-ftp", {"contentType": 5, "content": "ftp://files.example.com/a.pdf"},
     "content"),
    ("url-data", {"contentType": 2, "content": "data:image/png;base64,iVBORw0KGgo="},
     "content"),
    ("url-file", {"contentType": 5, "content": "file:///etc/passwd"}, "content"),
    ("url-no-scheme", {"contentType": 2, "content": "example.com/a.png"}, "content"),
    ("url-no-host", {"contentType": 2, "content": "https://"}, "content"),
    ("url-space", {"contentType": 2, "content": "https://example.com/a b.png"},
     "content"),
    ("url-newline", {"contentType": 3, "content": "https://example.com/\nX: 1"},
     "content"),
    ("from-number", {"from": 7}, "from"),
    ("from-empty", {"from": ""}, "from"),
    ("from-65-chars", {"from": LONG_ID}, "from"),
    ("to-number", {"to": 42}, "to"),
    ("to-list", {"to": ["pat"]}, "to"),
    ("to-empty", {"to": ""}, "to"),
    ("to-65-chars", {"to": LONG_ID}, "to"),
    ("client-msg-id-number", {"clientMsgId": 5}, "clientMsgId"),
    ("client-msg-id-empty", {"clientMsgId": ""}, "clientMsgId"),
    ("client-msg-id-65-chars", {"clientMsgId": "c" * 65}, "clientMsgId"),
]


@pytest.mark.parametrize(
    "changes, field",
    [case[1:] for case in PM_INVALID_FIELDS],
    ids=[case[0] for case in PM_INVALID_FIELDS],
)
@pytest.mark.gen_test(timeout=30)
async def test_pm_with_invalid_field_returns_400(api, unique, changes, field):
    doctor, patient = unique("doc"), unique("pat")
    await api.user(doctor, "doctor")
    await api.user(patient, "patient")
    before = await snapshot(api, patient)

    status, answer, _ = await api.post(PM, pm_body(doctor, patient, **changes))

    assert_error(status, answer, 400, "invalid_argument", field)
    assert await snapshot(api, patient) == before


@pytest.mark.parametrize("field", ["from", "to", "contentType", "content"])
@pytest.mark.gen_test(timeout=30)
async def test_pm_without_field_returns_400(api, unique, field):
    doctor, patient = unique("doc"), unique("pat")
    await api.user(doctor, "doctor")
    await api.user(patient, "patient")

    status, answer, _ = await api.post(PM, without(pm_body(doctor, patient), field))

    assert_error(status, answer, 400, "invalid_argument", field)


@pytest.mark.parametrize("field", ["from", "to", "contentType", "content"])
@pytest.mark.gen_test(timeout=30)
async def test_pm_with_null_field_returns_400(api, unique, field):
    doctor, patient = unique("doc"), unique("pat")
    await api.user(doctor, "doctor")
    await api.user(patient, "patient")

    status, answer, _ = await api.post(PM, pm_body(doctor, patient, **{field: None}))

    assert_error(status, answer, 400, "invalid_argument", field)


@pytest.mark.gen_test(timeout=30)
async def test_lone_surrogate_in_content_returns_400(api, unique):
    doctor, patient = unique("doc"), unique("pat")
    await api.user(doctor, "doctor")
    await api.user(patient, "patient")
    before = await snapshot(api, patient)
    # A lone UTF-16 surrogate is valid JSON syntax but no Unicode character.
    raw = (
        f'{{"from": "{doctor}", "to": "{patient}", "contentType": 1,'
        ' "content": "bad \\ud800 text"}'
    ).encode()

    status, answer, _ = await api.post(
        PM, raw_body=raw, headers={"Content-Type": "application/json"}
    )

    assert_error(status, answer, 400, "invalid_argument", "content")
    assert await snapshot(api, patient) == before


GM_INVALID_FIELDS = [
    ("group-number", {"group": 3}, "group"),
    ("group-empty", {"group": ""}, "group"),
    ("group-65-chars", {"group": "g" * 65}, "group"),
    ("group-type-string", {"groupType": "1"}, "groupType"),
    ("group-type-bool", {"groupType": True}, "groupType"),
    ("group-type-float", {"groupType": 1.5}, "groupType"),
    ("group-type-zero", {"groupType": 0}, "groupType"),
    ("at-string", {"at": "pat"}, "at"),
    ("at-51-ids", {"at": [f"user-{n}" for n in range(51)]}, "at"),
    ("at-all-with-ids", {"at": ["all", "pat"]}, "at"),
    ("at-number-item", {"at": [5]}, "at"),
    ("at-65-char-item", {"at": [LONG_ID]}, "at"),
    ("at-empty-item", {"at": [""]}, "at"),
    ("content-type-string", {"contentType": "2"}, "contentType"),
    ("text-4001", {"content": "中" * 4001}, "content"),
    ("url-javascript", {"contentType": 4, "content": "javascript:void(0)"}, "content"),
    ("client-msg-id-65-chars", {"clientMsgId": "c" * 65}, "clientMsgId"),
]


@pytest.mark.parametrize(
    "changes, field",
    [case[1:] for case in GM_INVALID_FIELDS],
    ids=[case[0] for case in GM_INVALID_FIELDS],
)
@pytest.mark.gen_test(timeout=30)
async def test_gm_with_invalid_field_returns_400(api, unique, changes, field):
    doctor, patient, _, group, tokens = await care_team(api, unique)
    before = await snapshot(api, patient, group)

    status, answer, _ = await api.post(
        GM, gm_body(doctor, group, **changes), token=tokens[doctor]
    )

    assert_error(status, answer, 400, "invalid_argument", field)
    assert await snapshot(api, patient, group) == before


@pytest.mark.parametrize("field", ["from", "group", "contentType", "content"])
@pytest.mark.gen_test(timeout=30)
async def test_gm_without_field_returns_400(api, unique, field):
    doctor, _, _, group, _ = await care_team(api, unique)

    status, answer, _ = await api.post(GM, without(gm_body(doctor, group), field))

    assert_error(status, answer, 400, "invalid_argument", field)


SM_INVALID_FIELDS = [
    ("title-101", {"title": "t" * 101}, "title"),
    ("title-101-emoji", {"title": "😀" * 101}, "title"),
    ("title-number", {"title": 5}, "title"),
    ("summary-201", {"summary": "s" * 201}, "summary"),
    ("summary-number", {"summary": 5}, "summary"),
    ("to-65-chars", {"to": LONG_ID}, "to"),
    ("to-number", {"to": 1}, "to"),
    ("content-type-float", {"contentType": 2.0}, "contentType"),
    ("text-4001", {"content": "x" * 4001}, "content"),
    ("url-1025", {"contentType": 4,
                  "content": "http://x.example/" + "a" * 1008}, "content"),
    ("url-data", {"contentType": 5, "content": "data:text/plain,hello"}, "content"),
]


@pytest.mark.parametrize(
    "changes, field",
    [case[1:] for case in SM_INVALID_FIELDS],
    ids=[case[0] for case in SM_INVALID_FIELDS],
)
@pytest.mark.gen_test(timeout=30)
async def test_sm_with_invalid_field_returns_400(api, unique, changes, field):
    patient = unique("pat")
    await api.user(patient, "patient")
    before = await snapshot(api, patient)

    status, answer, _ = await api.post(SM, sm_body(patient, **changes))

    assert_error(status, answer, 400, "invalid_argument", field)
    assert await snapshot(api, patient) == before


@pytest.mark.parametrize("field", ["to", "title", "summary", "contentType", "content"])
@pytest.mark.gen_test(timeout=30)
async def test_sm_without_field_returns_400(api, unique, field):
    patient = unique("pat")
    await api.user(patient, "patient")

    status, answer, _ = await api.post(SM, without(sm_body(patient), field))

    assert_error(status, answer, 400, "invalid_argument", field)


# -- data checks --------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_pm_to_unknown_user_returns_404(api, unique):
    doctor = unique("doc")
    doctor_token = await api.user(doctor, "doctor")
    before = await snapshot(api, doctor)

    status, answer, _ = await api.post(
        PM, pm_body(doctor, unique("nobody")), token=doctor_token
    )

    assert_error(status, answer, 404, "not_found", "to")
    assert await snapshot(api, doctor) == before


@pytest.mark.gen_test(timeout=30)
async def test_pm_from_unknown_user_returns_404(api, unique):
    patient = unique("pat")
    await api.user(patient, "patient")
    before = await snapshot(api, patient)

    status, answer, _ = await api.post(PM, pm_body(unique("nobody"), patient))

    assert_error(status, answer, 404, "not_found", "from")
    assert await snapshot(api, patient) == before


@pytest.mark.gen_test(timeout=30)
async def test_sm_to_unknown_user_returns_404(api, unique):
    status, answer, _ = await api.post(SM, sm_body(unique("nobody")))

    assert_error(status, answer, 404, "not_found", "to")


@pytest.mark.gen_test(timeout=30)
async def test_gm_to_unknown_group_returns_404(api, unique):
    doctor = unique("doc")
    doctor_token = await api.user(doctor, "doctor")
    before = await snapshot(api, doctor)

    status, answer, _ = await api.post(
        GM, gm_body(doctor, unique("no-team")), token=doctor_token
    )

    assert_error(status, answer, 404, "not_found", "group")
    assert await snapshot(api, doctor) == before


@pytest.mark.gen_test(timeout=30)
async def test_gm_from_non_member_returns_403(api, connect, unique):
    _, patient, _, group, tokens = await care_team(api, unique)
    outsider = unique("outsider")
    outsider_token = await api.user(outsider, "doctor")
    socket = await connect(tokens[patient])
    before = await snapshot(api, patient, group)

    status, answer, _ = await api.post(GM, gm_body(outsider, group),
                                       token=outsider_token)

    assert_error(status, answer, 403, "forbidden", "group")
    assert await snapshot(api, patient, group) == before
    await socket.no_frame()


@pytest.mark.gen_test(timeout=30)
async def test_gm_with_wrong_group_type_returns_400(api, connect, unique):
    doctor, patient, _, group, tokens = await care_team(api, unique, group_type=1)
    socket = await connect(tokens[patient])
    before = await snapshot(api, patient, group)

    status, answer, _ = await api.post(
        GM, gm_body(doctor, group, groupType=2), token=tokens[doctor]
    )

    assert_error(status, answer, 400, "invalid_argument", "groupType")
    assert await snapshot(api, patient, group) == before
    await socket.no_frame()


@pytest.mark.gen_test(timeout=30)
async def test_failed_pm_reaches_no_socket(api, connect, unique):
    doctor, patient = unique("doc"), unique("pat")
    doctor_token = await api.user(doctor, "doctor")
    patient_token = await api.user(patient, "patient")
    socket = await connect(patient_token)

    status, _, _ = await api.post(
        PM, pm_body(doctor, patient, content="a" * 4001), token=doctor_token
    )

    assert status == 400
    await socket.no_frame()


@pytest.mark.gen_test(timeout=30)
async def test_bad_send_leaves_concurrent_sends_stored(api, unique):
    doctor, patient = unique("doc"), unique("pat")
    doctor_token = await api.user(doctor, "doctor")
    await api.user(patient, "patient")
    bodies = [pm_body(doctor, patient, content=f"m{n}") for n in range(4)]
    bodies.insert(2, pm_body(doctor, unique("nobody")))

    results = await asyncio.gather(
        *[api.post(PM, body, token=doctor_token) for body in bodies]
    )

    statuses = [status for status, _, _ in results]
    assert statuses == [201, 201, 404, 201, 201]
    page = await history(api, "pm", patient, peer_id=doctor)
    contents = sorted(message["content"] for message in page["messages"])
    assert contents == ["m0", "m1", "m2", "m3"]
