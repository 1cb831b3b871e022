"""Messages over the WebSocket: live delivery, send and sent, send errors."""

import pytest

# Each case mixes scripts, astral code points (𠀀 U+20000, 𪚥 U+2A6A5, emoji),
# combining marks, ZWJ sequences, tabs and line breaks.
UNICODE_TEXTS = [
    "你好，医生！今天体温 38.5℃，咳嗽。",
    "😀👍🏽❤️👨‍👩‍👧 🏥💊",
    "𠀀𪚥𠮷𩸽 rare CJK",
    "col1\tcol2\tcol3\nline two\r\nline three\n",
    "e\u0301 a\u0308 \u200b zero-width, \u00a0 no-break space",
    "🩺" * 1000 + "𪚥" * 3000,
]


async def post_message(api, path, body):
    """Send through REST with a system token; return the stored message."""
    status, answer, _ = await api.post(f"/api/v1/chats/{path}", body)
    assert status == 201, answer
    return answer["message"]


async def history(api, path, query):
    status, answer, _ = await api.get(f"/api/v1/chats/{path}?{query}")
    assert status == 200, answer
    return answer["messages"]


def text_send(client_msg_id, to=None, group=None, content="hello", **extra):
    frame = {"type": "send", "contentType": 1, "content": content,
             "clientMsgId": client_msg_id, **extra}
    if group is None:
        frame.update(channel="p2p", to=to)
    else:
        frame.update(channel="group", group=group)
    return frame


async def assert_still_open(socket):
    await socket.send({"type": "ping"})
    assert await socket.expect("pong") == {"type": "pong"}


# -- live message frames ------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_pm_arrives_as_message_frame(api, connect, unique):
    doctor, patient = unique("doc"), unique("pat")
    await api.user(doctor, "doctor")
    socket = await connect(await api.user(patient))

    message = await post_message(api, "pm", {
        "from": doctor, "to": patient, "contentType": 1, "content": "Take it twice a day",
    })

    frame = await socket.recv()
    assert frame == {"type": "message", "message": message}


@pytest.mark.gen_test(timeout=30)
async def test_group_message_reaches_every_member(api, connect, unique):
    doctor, nurse, patient, team = (
        unique("doc"), unique("nurse"), unique("pat"), unique("team"))
    doctor_socket = await connect(await api.user(doctor, "doctor"))
    nurse_socket = await connect(await api.user(nurse, "doctor"))
    patient_socket = await connect(await api.user(patient))
    await api.group(team, [doctor, nurse, patient], group_type=2)

    message = await post_message(api, "gm", {
        "from": doctor, "group": team, "at": [patient], "contentType": 1,
        "content": "Blood test tomorrow",
    })

    assert message["groupType"] == 2
    assert message["at"] == [patient]
    for socket in (doctor_socket, nurse_socket, patient_socket):
        assert await socket.recv() == {"type": "message", "message": message}


@pytest.mark.gen_test(timeout=30)
async def test_system_message_arrives_live(api, connect, unique):
    patient = unique("pat")
    socket = await connect(await api.user(patient))

    message = await post_message(api, "sm", {
        "to": patient, "title": "Appointment", "summary": "Monday 9:00",
        "contentType": 4, "content": "https://example.org/appointments/1",
    })

    frame = await socket.recv()
    assert frame == {"type": "message", "message": message}
    assert frame["message"]["from"] == "system"
    assert frame["message"]["channel"] == "system"


@pytest.mark.gen_test(timeout=30)
async def test_message_reaches_every_recipient_socket(api, connect, unique):
    doctor, patient = unique("doc"), unique("pat")
    await api.user(doctor, "doctor")
    token = await api.user(patient)
    phone = await connect(token)
    browser = await connect(token, query_token=True)

    message = await post_message(api, "pm", {
        "from": doctor, "to": patient, "contentType": 1, "content": "hello",
    })

    assert await phone.recv() == {"type": "message", "message": message}
    assert await browser.recv() == {"type": "message", "message": message}


@pytest.mark.gen_test(timeout=30)
async def test_removed_member_gets_no_group_messages(api, connect, unique):
    doctor, patient, team = unique("doc"), unique("pat"), unique("team")
    doctor_socket = await connect(await api.user(doctor, "doctor"))
    patient_socket = await connect(await api.user(patient))
    await api.group(team, [doctor, patient])
    status, _, _ = await api.delete(f"/api/v1/groups/{team}/members/{patient}")
    assert status == 204

    message = await post_message(api, "gm", {
        "from": doctor, "group": team, "contentType": 1, "content": "after removal",
    })

    assert await doctor_socket.recv() == {"type": "message", "message": message}
    await patient_socket.no_frame()


# -- send and sent ------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_send_answers_sent_with_stored_message(api, connect, unique):
    doctor, patient = unique("doc"), unique("pat")
    doctor_socket = await connect(await api.user(doctor, "doctor"))
    patient_socket = await connect(await api.user(patient))

    await doctor_socket.send(text_send("c-1", to=patient, content="Rest well"))

    sent = await doctor_socket.recv()
    (stored,) = await history(api, "pm", f"user_id={patient}&peer_id={doctor}")
    assert set(sent) == {"type", "clientMsgId", "message"}
    assert sent["type"] == "sent"
    assert sent["clientMsgId"] == "c-1"
    assert sent["message"] == stored
    assert stored["from"] == doctor
    assert stored["to"] == patient
    assert stored["content"] == "Rest well"
    assert stored["clientMsgId"] == "c-1"
    assert await patient_socket.recv() == {"type": "message", "message": stored}


@pytest.mark.gen_test(timeout=30)
async def test_group_send_reaches_other_members(api, connect, unique):
    doctor, nurse, patient, team = (
        unique("doc"), unique("nurse"), unique("pat"), unique("team"))
    doctor_socket = await connect(await api.user(doctor, "doctor"))
    nurse_socket = await connect(await api.user(nurse, "doctor"))
    patient_socket = await connect(await api.user(patient))
    await api.group(team, [doctor, nurse, patient], group_type=3)

    await doctor_socket.send(text_send("g-1", group=team, at=["all"]))

    sent = await doctor_socket.expect("sent")
    message = sent["message"]
    assert message["channel"] == "group"
    assert message["group"] == team
    assert message["groupType"] == 3
    assert message["at"] == ["all"]
    assert message["clientMsgId"] == "g-1"
    assert await nurse_socket.recv() == {"type": "message", "message": message}
    assert await patient_socket.recv() == {"type": "message", "message": message}
    await doctor_socket.no_frame()


@pytest.mark.gen_test(timeout=30)
async def test_sender_other_socket_sees_sent_message(api, connect, unique):
    doctor, patient = unique("doc"), unique("pat")
    doctor_token = await api.user(doctor, "doctor")
    patient_token = await api.user(patient)
    desk = await connect(doctor_token)
    laptop = await connect(doctor_token)
    phone = await connect(patient_token)
    tablet = await connect(patient_token)

    await desk.send(text_send("multi-1", to=patient))

    sent = await desk.recv()
    assert sent["type"] == "sent"
    for socket in (laptop, phone, tablet):
        assert await socket.recv() == {"type": "message", "message": sent["message"]}
    await desk.no_frame()


@pytest.mark.gen_test(timeout=30)
async def test_repeated_send_answers_first_message(api, connect, unique):
    doctor, patient = unique("doc"), unique("pat")
    doctor_token = await api.user(doctor, "doctor")
    desk = await connect(doctor_token)
    laptop = await connect(doctor_token)
    patient_socket = await connect(await api.user(patient))
    await desk.send(text_send("same-id", to=patient, content="first"))
    first = await desk.expect("sent")

    await desk.send(text_send("same-id", to=patient, content="second"))

    repeat = await desk.expect("sent")
    assert repeat == first
    assert (await patient_socket.recv())["message"] == first["message"]
    await patient_socket.no_frame()
    assert (await laptop.recv())["message"] == first["message"]
    await laptop.no_frame()
    stored = await history(api, "pm", f"user_id={patient}&peer_id={doctor}")
    assert stored == [first["message"]]


@pytest.mark.gen_test(timeout=30)
async def test_repeated_send_counts_unread_once(api, connect, unique):
    doctor, patient = unique("doc"), unique("pat")
    desk = await connect(await api.user(doctor, "doctor"))
    await api.user(patient)
    await desk.send(text_send("once", to=patient))
    await desk.expect("sent")

    await desk.send(text_send("once", to=patient))
    await desk.expect("sent")

    status, answer, _ = await api.get(f"/api/v1/chats/recent?user_id={patient}")
    assert status == 200
    assert answer["totalUnread"] == 1


@pytest.mark.gen_test(timeout=30)
async def test_send_shares_client_msg_id_with_rest(api, connect, unique):
    doctor, patient = unique("doc"), unique("pat")
    doctor_token = await api.user(doctor, "doctor")
    desk = await connect(doctor_token)
    await api.user(patient)
    status, answer, _ = await api.post("/api/v1/chats/pm", {
        "from": doctor, "to": patient, "contentType": 1, "content": "by REST",
        "clientMsgId": "shared",
    }, token=doctor_token)
    assert status == 201, answer
    await desk.expect("message")

    await desk.send(text_send("shared", to=patient, content="by socket"))

    sent = await desk.expect("sent")
    assert sent["message"] == answer["message"]


@pytest.mark.parametrize("text", UNICODE_TEXTS)
@pytest.mark.gen_test(timeout=30)
async def test_unicode_text_round_trips_exactly(api, connect, unique, text):
    doctor, patient = unique("doc"), unique("pat")
    desk = await connect(await api.user(doctor, "doctor"))
    patient_socket = await connect(await api.user(patient))

    await desk.send(text_send("uni-1", to=patient, content=text))

    sent = await desk.expect("sent")
    live = await patient_socket.expect("message")
    (stored,) = await history(api, "pm", f"user_id={patient}&peer_id={doctor}")
    expected = text.encode("utf-8")
    assert sent["message"]["content"].encode("utf-8") == expected
    assert live["message"]["content"].encode("utf-8") == expected
    assert stored["content"].encode("utf-8") == expected


@pytest.mark.gen_test(timeout=30)
async def test_text_limit_counts_code_points(api, connect, unique):
    doctor, patient = unique("doc"), unique("pat")
    desk = await connect(await api.user(doctor, "doctor"))
    await api.user(patient)

    await desk.send(text_send("max", to=patient, content="𪚥" * 4000))
    await desk.send(text_send("over", to=patient, content="𪚥" * 4001))

    # The sent frame and the error frame may arrive in either order.
    answers = {frame["type"]: frame for frame in [await desk.recv(), await desk.recv()]}
    sent, error = answers["sent"], answers["error"]
    assert sent["message"]["content"] == "𪚥" * 4000
    assert error["code"] == "invalid_argument"
    assert error["ref"] == "over"


@pytest.mark.parametrize("content_type", [2, 3, 4, 5])
@pytest.mark.gen_test(timeout=30)
async def test_send_stores_url_content(api, connect, unique, content_type):
    doctor, patient = unique("doc"), unique("pat")
    desk = await connect(await api.user(doctor, "doctor"))
    patient_socket = await connect(await api.user(patient))
    url = "https://files.example.org/患者/报告 1.pdf".replace(" ", "%20")

    await desk.send(text_send("url-1", to=patient, contentType=content_type,
                              content=url))

    sent = await desk.expect("sent")
    assert sent["message"]["contentType"] == content_type
    assert sent["message"]["content"] == url
    assert await patient_socket.recv() == {"type": "message", "message": sent["message"]}


# -- send errors --------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_send_to_unknown_user_is_not_found(api, connect, unique):
    socket = await connect(await api.user(unique("doc"), "doctor"))

    await socket.send(text_send("to-nobody", to=unique("nobody")))

    error = await socket.recv()
    assert error["type"] == "error"
    assert error["code"] == "not_found"
    assert error["ref"] == "to-nobody"
    assert isinstance(error["message"], str)
    await assert_still_open(socket)


@pytest.mark.gen_test(timeout=30)
async def test_send_to_unknown_group_is_not_found(api, connect, unique):
    socket = await connect(await api.user(unique("doc"), "doctor"))

    await socket.send(text_send("to-no-group", group=unique("no-team")))

    error = await socket.recv()
    assert error["type"] == "error"
    assert error["code"] == "not_found"
    assert error["ref"] == "to-no-group"
    await assert_still_open(socket)


@pytest.mark.gen_test(timeout=30)
async def test_send_to_foreign_group_is_forbidden(api, connect, unique):
    doctor, outsider, team = unique("doc"), unique("out"), unique("team")
    doctor_socket = await connect(await api.user(doctor, "doctor"))
    socket = await connect(await api.user(outsider))
    await api.group(team, [doctor])

    await socket.send(text_send("intrude", group=team))

    error = await socket.recv()
    assert error["type"] == "error"
    assert error["code"] == "forbidden"
    assert error["ref"] == "intrude"
    await doctor_socket.no_frame()
    await assert_still_open(socket)


@pytest.mark.gen_test(timeout=30)
async def test_send_by_removed_member_is_forbidden(api, connect, unique):
    doctor, patient, team = unique("doc"), unique("pat"), unique("team")
    await api.user(doctor, "doctor")
    socket = await connect(await api.user(patient))
    await api.group(team, [doctor, patient])
    status, _, _ = await api.delete(f"/api/v1/groups/{team}/members/{patient}")
    assert status == 204

    await socket.send(text_send("left", group=team))

    error = await socket.recv()
    assert error["code"] == "forbidden"
    assert error["ref"] == "left"


BAD_SENDS = {
    "content_missing": {"content": None},
    "content_empty": {"content": ""},
    "content_not_string": {"content": 42},
    "text_over_4000": {"content": "x" * 4001},
    "content_type_zero": {"contentType": 0},
    "content_type_six": {"contentType": 6},
    "content_type_string": {"contentType": "1"},
    "content_type_bool": {"contentType": True},
    "url_not_http": {"contentType": 2, "content": "ftp://example.org/a.png"},
    "url_without_host": {"contentType": 2, "content": "https://"},
    "url_over_1024": {"contentType": 5,
                      "content": "https://example.org/" + "a" * 1005},
    "channel_system": {"channel": "system"},
    "channel_unknown": {"channel": "broadcast"},
    "channel_missing": {"channel": None},
    "to_missing": {"to": None},
    "to_empty": {"to": ""},
    "to_over_64": {"to": "u" * 65},
    "to_number": {"to": 7},
    "client_msg_id_over_64": {"clientMsgId": "c" * 65},
}


@pytest.mark.parametrize("name", list(BAD_SENDS))
@pytest.mark.gen_test(timeout=30)
async def test_send_with_bad_field_is_invalid(api, connect, unique, name):
    doctor, patient = unique("doc"), unique("pat")
    socket = await connect(await api.user(doctor, "doctor"))
    patient_socket = await connect(await api.user(patient))
    frame = text_send("bad-1", to=patient)
    for key, value in BAD_SENDS[name].items():
        if value is None:
            del frame[key]
        else:
            frame[key] = value

    await socket.send(frame)

    error = await socket.recv()
    assert error["type"] == "error"
    assert error["code"] == "invalid_argument"
    assert error["ref"] in (frame.get("clientMsgId"), "send")
    await patient_socket.no_frame()
    await assert_still_open(socket)


@pytest.mark.parametrize("group_fields", [
    {"group": None},
    {"at": "all"},
    {"at": ["all", "someone"]},
    {"at": [f"u{i}" for i in range(51)]},
    {"groupType": "1"},
], ids=["group_missing", "at_not_list", "all_not_alone", "at_over_50", "type_string"])
@pytest.mark.gen_test(timeout=30)
async def test_group_send_with_bad_field_is_invalid(api, connect, unique, group_fields):
    doctor, team = unique("doc"), unique("team")
    socket = await connect(await api.user(doctor, "doctor"))
    await api.group(team, [doctor])
    frame = text_send("bad-g", group=team)
    for key, value in group_fields.items():
        if value is None:
            del frame[key]
        else:
            frame[key] = value

    await socket.send(frame)

    error = await socket.recv()
    assert error["type"] == "error"
    assert error["code"] == "invalid_argument"
    assert error["ref"] == "bad-g"
    await assert_still_open(socket)


@pytest.mark.gen_test(timeout=30)
async def test_send_without_client_msg_id_is_invalid(api, connect, unique):
    patient = unique("pat")
    socket = await connect(await api.user(unique("doc"), "doctor"))
    await api.user(patient)
    frame = text_send("unused", to=patient)
    del frame["clientMsgId"]

    await socket.send(frame)

    error = await socket.recv()
    assert error["code"] == "invalid_argument"
    assert error["ref"] == "send"
    await assert_still_open(socket)


# -- send rate ----------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_sends_over_20_a_second_are_rate_limited(api, connect, unique):
    doctor, patient = unique("doc"), unique("pat")
    socket = await connect(await api.user(doctor, "doctor"))
    patient_socket = await connect(await api.user(patient))

    for number in range(21):
        await socket.send(text_send(f"burst-{number}", to=patient))

    frames = [await socket.recv() for _ in range(21)]
    errors = [frame for frame in frames if frame["type"] == "error"]
    sent = [frame for frame in frames if frame["type"] == "sent"]
    assert len(sent) == 20
    assert [error["code"] for error in errors] == ["rate_limited"]
    assert errors[0]["ref"] == "burst-20"
    delivered = [await patient_socket.recv() for _ in range(20)]
    assert [f["message"] for f in delivered] == [f["message"] for f in sent]
    await patient_socket.no_frame()
    await assert_still_open(socket)
