"""WebSocket frames besides messages: read marks, recall, typing, ping, bad frames."""

import asyncio

import pytest

TYPING_INTERVAL_SECONDS = 1.0


async def post_message(api, path, body, token=None):
    """Send through REST; return the stored message."""
    status, answer, _ = await api.post(f"/api/v1/chats/{path}", body, token=token)
    assert status == 201, answer
    return answer["message"]


def text(**fields):
    return {"contentType": 1, "content": "hello", **fields}


def pm(sender, recipient):
    """The REST body of a text pm."""
    return text(**{"from": sender, "to": recipient})


def gm(sender, group):
    """The REST body of a text group message."""
    return text(**{"from": sender, "group": group})


async def assert_still_open(socket):
    await socket.send({"type": "ping"})
    assert await socket.expect("pong") == {"type": "pong"}


# -- read marks ---------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_read_updates_every_reader_socket(api, connect, unique):
    doctor, patient = unique("doc"), unique("pat")
    await api.user(doctor, "doctor")
    token = await api.user(patient)
    phone = await connect(token)
    tablet = await connect(token)
    first = await post_message(api, "pm", pm(doctor, patient))
    await post_message(api, "pm", pm(doctor, patient))

    await phone.send({"type": "read", "channel": "p2p", "peer": doctor,
                      "upToId": first["id"]})

    expected = {"type": "unread", "channel": "p2p", "peer": doctor,
                "unread": 1, "totalUnread": 1}
    assert await phone.expect("unread") == expected
    assert await tablet.expect("unread") == expected


@pytest.mark.gen_test(timeout=30)
async def test_read_sends_receipt_to_peer(api, connect, unique):
    doctor, patient = unique("doc"), unique("pat")
    doctor_socket = await connect(await api.user(doctor, "doctor"))
    patient_socket = await connect(await api.user(patient))
    message = await post_message(api, "pm", pm(doctor, patient))

    await patient_socket.send({"type": "read", "channel": "p2p", "peer": doctor,
                               "upToId": message["id"]})

    receipt = await doctor_socket.expect("receipt")
    assert receipt == {"type": "receipt", "channel": "p2p", "from": patient,
                       "upToId": message["id"]}


@pytest.mark.gen_test(timeout=30)
async def test_group_read_sends_receipt_to_members(api, connect, unique):
    doctor, nurse, patient, team = (
        unique("doc"), unique("nurse"), unique("pat"), unique("team"))
    doctor_socket = await connect(await api.user(doctor, "doctor"))
    nurse_socket = await connect(await api.user(nurse, "doctor"))
    patient_socket = await connect(await api.user(patient))
    await api.group(team, [doctor, nurse, patient])
    message = await post_message(api, "gm", gm(doctor, team))

    await patient_socket.send({"type": "read", "channel": "group", "group": team,
                               "upToId": message["id"]})

    unread = await patient_socket.expect("unread")
    assert unread == {"type": "unread", "channel": "group", "group": team,
                      "unread": 0, "totalUnread": 0}
    expected = {"type": "receipt", "channel": "group", "from": patient,
                "group": team, "upToId": message["id"]}
    assert await doctor_socket.expect("receipt") == expected
    assert await nurse_socket.expect("receipt") == expected


@pytest.mark.gen_test(timeout=30)
async def test_system_read_updates_unread(api, connect, unique):
    patient = unique("pat")
    socket = await connect(await api.user(patient))
    message = await post_message(
        api, "sm", text(to=patient, title="Notice", summary="Lab results"))

    await socket.send({"type": "read", "channel": "system", "upToId": message["id"]})

    unread = await socket.expect("unread")
    assert unread == {"type": "unread", "channel": "system",
                      "unread": 0, "totalUnread": 0}


@pytest.mark.gen_test(timeout=30)
async def test_rest_read_updates_reader_sockets(api, connect, unique):
    doctor, patient = unique("doc"), unique("pat")
    doctor_socket = await connect(await api.user(doctor, "doctor"))
    token = await api.user(patient)
    socket = await connect(token)
    message = await post_message(api, "pm", pm(doctor, patient))

    status, answer, _ = await api.post("/api/v1/chats/read", {
        "userId": patient, "channel": "p2p", "peer": doctor, "upToId": message["id"],
    }, token=token)

    assert status == 200, answer
    assert await socket.expect("unread") == {
        "type": "unread", "channel": "p2p", "peer": doctor,
        "unread": 0, "totalUnread": 0,
    }
    assert await doctor_socket.expect("receipt") == {
        "type": "receipt", "channel": "p2p", "from": patient, "upToId": message["id"],
    }


@pytest.mark.gen_test(timeout=30)
async def test_read_of_foreign_group_is_forbidden(api, connect, unique):
    doctor, outsider, team = unique("doc"), unique("out"), unique("team")
    doctor_socket = await connect(await api.user(doctor, "doctor"))
    socket = await connect(await api.user(outsider))
    await api.group(team, [doctor])
    message = await post_message(api, "gm", gm(doctor, team))

    await socket.send({"type": "read", "channel": "group", "group": team,
                       "upToId": message["id"]})

    error = await socket.recv()
    assert error["type"] == "error"
    assert error["code"] == "forbidden"
    assert error["ref"] == "read"
    await doctor_socket.expect("message")
    await doctor_socket.no_frame()
    await assert_still_open(socket)


@pytest.mark.gen_test(timeout=30)
async def test_read_of_unknown_peer_is_not_found(api, connect, unique):
    socket = await connect(await api.user(unique("pat")))

    await socket.send({"type": "read", "channel": "p2p", "peer": unique("nobody"),
                       "upToId": 1})

    error = await socket.recv()
    assert error["code"] == "not_found"
    assert error["ref"] == "read"
    await assert_still_open(socket)


BAD_READS = {
    "channel_missing": {"peer": "someone", "upToId": 1},
    "channel_unknown": {"channel": "email", "peer": "someone", "upToId": 1},
    "peer_missing": {"channel": "p2p", "upToId": 1},
    "group_missing": {"channel": "group", "upToId": 1},
    "up_to_id_missing": {"channel": "system"},
    "up_to_id_negative": {"channel": "system", "upToId": -1},
    "up_to_id_string": {"channel": "system", "upToId": "5"},
    "up_to_id_fraction": {"channel": "system", "upToId": 1.5},
}


@pytest.mark.parametrize("name", list(BAD_READS))
@pytest.mark.gen_test(timeout=30)
async def test_read_with_bad_field_is_invalid(api, connect, unique, name):
    socket = await connect(await api.user(unique("pat")))

    await socket.send({"type": "read", **BAD_READS[name]})

    error = await socket.recv()
    assert error["type"] == "error"
    assert error["code"] == "invalid_argument"
    assert error["ref"] == "read"
    await assert_still_open(socket)


# -- recall -------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_recall_sends_recalled_to_both_sides(api, connect, unique):
    doctor, patient = unique("doc"), unique("pat")
    doctor_token = await api.user(doctor, "doctor")
    doctor_socket = await connect(doctor_token)
    patient_socket = await connect(await api.user(patient))
    message = await post_message(
        api, "pm", pm(doctor, patient), token=doctor_token)

    status, answer, _ = await api.delete(
        f"/api/v1/chats/pm/{message['id']}", token=doctor_token)

    assert status == 200, answer
    expected = {"type": "recalled", "channel": "p2p", "id": message["id"]}
    assert await patient_socket.expect("recalled") == expected
    assert await doctor_socket.expect("recalled") == expected


@pytest.mark.gen_test(timeout=30)
async def test_group_recall_names_group(api, connect, unique):
    doctor, patient, team = unique("doc"), unique("pat"), unique("team")
    doctor_token = await api.user(doctor, "doctor")
    patient_socket = await connect(await api.user(patient))
    await api.group(team, [doctor, patient])
    message = await post_message(
        api, "gm", gm(doctor, team), token=doctor_token)

    status, _, _ = await api.delete(
        f"/api/v1/chats/gm/{message['id']}", token=doctor_token)

    assert status == 200
    assert await patient_socket.expect("recalled") == {
        "type": "recalled", "channel": "group", "id": message["id"], "group": team,
    }


@pytest.mark.gen_test(timeout=30)
async def test_system_recall_reaches_recipient(api, connect, unique):
    patient = unique("pat")
    socket = await connect(await api.user(patient))
    message = await post_message(
        api, "sm", text(to=patient, title="Notice", summary="Sent by mistake"))

    status, _, _ = await api.delete(f"/api/v1/chats/sm/{message['id']}")

    assert status == 200
    assert await socket.expect("recalled") == {
        "type": "recalled", "channel": "system", "id": message["id"],
    }


@pytest.mark.gen_test(timeout=30)
async def test_second_recall_sends_no_frame(api, connect, unique):
    doctor, patient = unique("doc"), unique("pat")
    doctor_token = await api.user(doctor, "doctor")
    patient_socket = await connect(await api.user(patient))
    message = await post_message(
        api, "pm", pm(doctor, patient), token=doctor_token)
    await api.delete(f"/api/v1/chats/pm/{message['id']}", token=doctor_token)
    await patient_socket.expect("recalled")

    status, _, _ = await api.delete(
        f"/api/v1/chats/pm/{message['id']}", token=doctor_token)

    assert status == 200
    await patient_socket.no_frame()


# -- typing -------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_typing_reaches_peer(api, connect, unique):
    doctor, patient = unique("doc"), unique("pat")
    doctor_socket = await connect(await api.user(doctor, "doctor"))
    token = await api.user(patient)
    patient_socket = await connect(token)

    await patient_socket.send({"type": "typing", "to": doctor})

    assert await doctor_socket.recv() == {"type": "typing", "from": patient}
    await patient_socket.no_frame()


@pytest.mark.gen_test(timeout=30)
async def test_typing_is_not_stored(api, connect, unique):
    doctor, patient = unique("doc"), unique("pat")
    doctor_socket = await connect(await api.user(doctor, "doctor"))
    patient_socket = await connect(await api.user(patient))
    await patient_socket.send({"type": "typing", "to": doctor})
    await doctor_socket.expect("typing")

    status, answer, _ = await api.get(
        f"/api/v1/chats/pm?user_id={doctor}&peer_id={patient}")

    assert status == 200
    assert answer["messages"] == []


@pytest.mark.gen_test(timeout=30)
async def test_group_typing_reaches_other_members(api, connect, unique):
    doctor, nurse, patient, team = (
        unique("doc"), unique("nurse"), unique("pat"), unique("team"))
    doctor_socket = await connect(await api.user(doctor, "doctor"))
    nurse_socket = await connect(await api.user(nurse, "doctor"))
    patient_socket = await connect(await api.user(patient))
    await api.group(team, [doctor, nurse, patient])

    await patient_socket.send({"type": "typing", "group": team})

    expected = {"type": "typing", "from": patient, "group": team}
    assert await doctor_socket.recv() == expected
    assert await nurse_socket.recv() == expected
    await patient_socket.no_frame()


@pytest.mark.gen_test(timeout=30)
async def test_typing_forwarded_once_per_second(api, connect, unique):
    doctor, patient = unique("doc"), unique("pat")
    doctor_socket = await connect(await api.user(doctor, "doctor"))
    patient_socket = await connect(await api.user(patient))

    for _ in range(5):
        await patient_socket.send({"type": "typing", "to": doctor})

    assert await doctor_socket.recv() == {"type": "typing", "from": patient}
    await doctor_socket.no_frame()
    await asyncio.sleep(TYPING_INTERVAL_SECONDS)
    await patient_socket.send({"type": "typing", "to": doctor})
    assert await doctor_socket.recv() == {"type": "typing", "from": patient}


@pytest.mark.gen_test(timeout=30)
async def test_typing_limit_is_per_socket(api, connect, unique):
    doctor, patient = unique("doc"), unique("pat")
    doctor_socket = await connect(await api.user(doctor, "doctor"))
    token = await api.user(patient)
    phone = await connect(token)
    tablet = await connect(token)

    await phone.send({"type": "typing", "to": doctor})
    await tablet.send({"type": "typing", "to": doctor})

    assert await doctor_socket.recv() == {"type": "typing", "from": patient}
    assert await doctor_socket.recv() == {"type": "typing", "from": patient}


@pytest.mark.gen_test(timeout=30)
async def test_rejected_typing_uses_no_slot(api, connect, unique):
    doctor, patient = unique("doc"), unique("pat")
    doctor_socket = await connect(await api.user(doctor, "doctor"))
    patient_socket = await connect(await api.user(patient))
    await patient_socket.send({"type": "typing"})
    await patient_socket.expect("error")

    await patient_socket.send({"type": "typing", "to": doctor})

    assert await doctor_socket.recv() == {"type": "typing", "from": patient}


@pytest.mark.parametrize("frame", [
    {"type": "typing"},
    {"type": "typing", "to": ""},
    {"type": "typing", "to": 5},
    {"type": "typing", "group": ["team"]},
], ids=["no_target", "empty_to", "number_to", "list_group"])
@pytest.mark.gen_test(timeout=30)
async def test_typing_with_bad_target_is_invalid(api, connect, unique, frame):
    socket = await connect(await api.user(unique("pat")))

    await socket.send(frame)

    error = await socket.recv()
    assert error["type"] == "error"
    assert error["code"] == "invalid_argument"
    assert error["ref"] == "typing"
    await assert_still_open(socket)


@pytest.mark.gen_test(timeout=30)
async def test_group_typing_by_outsider_is_forbidden(api, connect, unique):
    doctor, outsider, team = unique("doc"), unique("out"), unique("team")
    doctor_socket = await connect(await api.user(doctor, "doctor"))
    socket = await connect(await api.user(outsider))
    await api.group(team, [doctor])

    await socket.send({"type": "typing", "group": team})

    error = await socket.recv()
    assert error["code"] == "forbidden"
    assert error["ref"] == "typing"
    await doctor_socket.no_frame()


# -- ping and bad frames ------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_ping_answers_pong(api, connect, unique):
    socket = await connect(await api.user(unique("pat")))

    await socket.send({"type": "ping"})

    assert await socket.recv() == {"type": "pong"}


@pytest.mark.parametrize("raw", [
    "not json",
    "{\"type\": \"ping\"",
    "",
    "[{\"type\": \"ping\"}]",
    "\"ping\"",
    "42",
    "null",
    "{\"kind\": \"ping\"}",
    "{\"type\": 5}",
    "{\"type\": null}",
], ids=["text", "truncated", "empty", "array", "string", "number", "null",
        "no_type", "number_type", "null_type"])
@pytest.mark.gen_test(timeout=30)
async def test_malformed_frame_gets_error(api, connect, unique, raw):
    socket = await connect(await api.user(unique("pat")))

    await socket.connection.write_message(raw)

    error = await socket.recv()
    assert error["type"] == "error"
    assert error["code"] == "invalid_argument"
    assert isinstance(error["message"], str)
    await assert_still_open(socket)


@pytest.mark.gen_test(timeout=30)
async def test_unknown_frame_type_gets_error(api, connect, unique):
    socket = await connect(await api.user(unique("pat")))

    await socket.send({"type": "subscribe", "channel": "p2p"})

    error = await socket.recv()
    assert error["type"] == "error"
    assert error["code"] == "invalid_argument"
    assert error["ref"] == "subscribe"
    await assert_still_open(socket)
