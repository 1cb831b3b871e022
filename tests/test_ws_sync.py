"""The ``sync`` frame: replay after given ids per channel, paging, limits."""

import asyncio

import pytest

SYNC_DEFAULT_LIMIT = 200
SYNC_MAX_LIMIT = 1000
# Concurrent REST sends while seeding a conversation.
SEED_CONCURRENCY = 10


async def post_message(api, path, body):
    """Send through REST with a system token; return the stored message."""
    status, answer, _ = await api.post(f"/api/v1/chats/{path}", body)
    assert status == 201, answer
    return answer["message"]


async def seed_pms(api, sender, recipient, count):
    """Store ``count`` pms from sender to recipient; return them in id order."""
    messages = []
    for start in range(0, count, SEED_CONCURRENCY):
        batch = range(start, min(start + SEED_CONCURRENCY, count))
        messages += await asyncio.gather(*(
            post_message(api, "pm", {"from": sender, "to": recipient,
                                     "contentType": 1, "content": f"note {number}"})
            for number in batch
        ))
    return sorted(messages, key=lambda message: message["id"])


async def sync(socket, after, channels, **options):
    """Send a sync; return {channel: (messages, synced frame)} once all are synced."""
    await socket.send({"type": "sync", "after": after, **options})
    replayed = {channel: [] for channel in channels}
    synced = {}
    while set(synced) != set(channels):
        frame = await socket.recv()
        assert frame is not None, f"socket closed ({socket.close_code}) during sync"
        if frame["type"] == "message":
            replayed[frame["message"]["channel"]].append(frame["message"])
        elif frame["type"] == "synced":
            assert frame["channel"] not in synced, f"second synced frame {frame}"
            synced[frame["channel"]] = frame
        else:
            raise AssertionError(f"unexpected frame during sync: {frame}")
    return {channel: (replayed[channel], synced[channel]) for channel in channels}


async def conversation(api, unique):
    """Register a doctor and a patient in a team; return their ids and tokens."""
    doctor, patient, team = unique("doc"), unique("pat"), unique("team")
    doctor_token = await api.user(doctor, "doctor")
    patient_token = await api.user(patient)
    await api.group(team, [doctor, patient])
    return doctor, patient, team, doctor_token, patient_token


@pytest.mark.gen_test(timeout=30)
async def test_sync_replays_messages_after_given_ids(api, connect, unique):
    doctor, patient, team, _, token = await conversation(api, unique)
    pms = [await post_message(api, "pm", {"from": doctor, "to": patient,
                                          "contentType": 1, "content": f"pm {n}"})
           for n in range(3)]
    gms = [await post_message(api, "gm", {"from": doctor, "group": team,
                                          "contentType": 1, "content": f"gm {n}"})
           for n in range(3)]
    sms = [await post_message(api, "sm", {"to": patient, "title": "Notice",
                                          "summary": f"sm {n}", "contentType": 1,
                                          "content": f"sm {n}"})
           for n in range(3)]
    socket = await connect(token)

    result = await sync(
        socket,
        {"p2p": pms[0]["id"], "group": gms[1]["id"], "system": 0},
        ["p2p", "group", "system"],
    )

    assert result["p2p"][0] == pms[1:]
    assert result["group"][0] == gms[2:]
    assert result["system"][0] == sms
    for channel in ("p2p", "group", "system"):
        assert result[channel][1] == {"type": "synced", "channel": channel,
                                      "hasMore": False}


@pytest.mark.gen_test(timeout=30)
async def test_sync_includes_messages_user_sent(api, connect, unique):
    doctor, patient, team, _, token = await conversation(api, unique)
    to_patient = await post_message(api, "pm", {"from": doctor, "to": patient,
                                                "contentType": 1, "content": "in"})
    from_patient = await post_message(api, "pm", {"from": patient, "to": doctor,
                                                  "contentType": 1, "content": "out"})
    own_gm = await post_message(api, "gm", {"from": patient, "group": team,
                                            "contentType": 1, "content": "mine"})
    socket = await connect(token)

    result = await sync(socket, {"p2p": 0, "group": 0}, ["p2p", "group"])

    assert result["p2p"][0] == [to_patient, from_patient]
    assert result["group"][0] == [own_gm]


@pytest.mark.gen_test(timeout=30)
async def test_sync_skips_channels_absent_from_after(api, connect, unique):
    doctor, patient, team, _, token = await conversation(api, unique)
    pm = await post_message(api, "pm", {"from": doctor, "to": patient,
                                        "contentType": 1, "content": "pm"})
    await post_message(api, "gm", {"from": doctor, "group": team,
                                   "contentType": 1, "content": "gm"})
    await post_message(api, "sm", {"to": patient, "title": "Notice", "summary": "s",
                                   "contentType": 1, "content": "sm"})
    socket = await connect(token)

    result = await sync(socket, {"p2p": 0}, ["p2p"])

    assert result["p2p"][0] == [pm]
    await socket.no_frame()


@pytest.mark.gen_test(timeout=30)
async def test_sync_pages_with_has_more(api, connect, unique):
    doctor, patient, _, _, token = await conversation(api, unique)
    pms = await seed_pms(api, doctor, patient, 5)
    socket = await connect(token)

    first = await sync(socket, {"p2p": 0}, ["p2p"], limit=2)
    second = await sync(socket, {"p2p": pms[1]["id"]}, ["p2p"], limit=2)
    last = await sync(socket, {"p2p": pms[3]["id"]}, ["p2p"], limit=2)

    assert first["p2p"][0] == pms[0:2]
    assert first["p2p"][1]["hasMore"] is True
    assert second["p2p"][0] == pms[2:4]
    assert second["p2p"][1]["hasMore"] is True
    assert last["p2p"][0] == pms[4:]
    assert last["p2p"][1]["hasMore"] is False


@pytest.mark.gen_test(timeout=30)
async def test_sync_with_exact_limit_has_no_more(api, connect, unique):
    doctor, patient, _, _, token = await conversation(api, unique)
    pms = await seed_pms(api, doctor, patient, 3)
    socket = await connect(token)

    result = await sync(socket, {"p2p": 0}, ["p2p"], limit=3)

    assert result["p2p"][0] == pms
    assert result["p2p"][1]["hasMore"] is False


@pytest.mark.gen_test(timeout=60)
async def test_sync_defaults_to_200_per_channel(api, connect, unique):
    doctor, patient, _, _, token = await conversation(api, unique)
    pms = await seed_pms(api, doctor, patient, SYNC_DEFAULT_LIMIT + 1)
    socket = await connect(token)

    result = await sync(socket, {"p2p": 0}, ["p2p"])

    assert result["p2p"][0] == pms[:SYNC_DEFAULT_LIMIT]
    assert result["p2p"][1]["hasMore"] is True


@pytest.mark.gen_test(timeout=120)
async def test_sync_clamps_limit_to_1000(api, connect, unique):
    doctor, patient, _, _, token = await conversation(api, unique)
    pms = await seed_pms(api, doctor, patient, SYNC_MAX_LIMIT + 1)
    socket = await connect(token)

    result = await sync(socket, {"p2p": 0}, ["p2p"], limit=5000)

    assert result["p2p"][0] == pms[:SYNC_MAX_LIMIT]
    assert result["p2p"][1]["hasMore"] is True


@pytest.mark.gen_test(timeout=30)
async def test_sync_replays_recalled_message_in_place(api, connect, unique):
    doctor, patient, _, doctor_token, token = await conversation(api, unique)
    pms = await seed_pms(api, doctor, patient, 3)
    status, answer, _ = await api.delete(
        f"/api/v1/chats/pm/{pms[1]['id']}", token=doctor_token)
    assert status == 200, answer
    socket = await connect(token)

    result = await sync(socket, {"p2p": 0}, ["p2p"])

    replayed = result["p2p"][0]
    assert [message["id"] for message in replayed] == [m["id"] for m in pms]
    assert replayed[1] == answer["message"]
    assert replayed[1]["recalled"] is True


@pytest.mark.gen_test(timeout=30)
async def test_resume_point_loses_nothing_across_reconnect(api, connect, unique):
    doctor, patient, team, _, token = await conversation(api, unique)
    first = await connect(token)
    seen_pm = await post_message(api, "pm", {"from": doctor, "to": patient,
                                             "contentType": 1, "content": "seen"})
    seen_gm = await post_message(api, "gm", {"from": doctor, "group": team,
                                             "contentType": 1, "content": "seen"})
    await first.expect("message", message=seen_pm)
    await first.expect("message", message=seen_gm)
    first.close()
    missed = [
        await post_message(api, "pm", {"from": doctor, "to": patient,
                                       "contentType": 1, "content": "missed"}),
        await post_message(api, "gm", {"from": doctor, "group": team,
                                       "contentType": 1, "content": "missed"}),
        await post_message(api, "sm", {"to": patient, "title": "Notice",
                                       "summary": "missed", "contentType": 1,
                                       "content": "missed"}),
    ]
    second = await connect(token)

    result = await sync(
        second,
        {"p2p": seen_pm["id"], "group": seen_gm["id"], "system": 0},
        ["p2p", "group", "system"],
    )

    assert result["p2p"][0] == [missed[0]]
    assert result["group"][0] == [missed[1]]
    assert result["system"][0] == [missed[2]]


@pytest.mark.gen_test(timeout=30)
async def test_removed_member_syncs_no_later_group_messages(api, connect, unique):
    doctor, patient, team, _, token = await conversation(api, unique)
    status, _, _ = await api.delete(f"/api/v1/groups/{team}/members/{patient}")
    assert status == 204
    await post_message(api, "gm", {"from": doctor, "group": team,
                                   "contentType": 1, "content": "after removal"})
    socket = await connect(token)

    result = await sync(socket, {"group": 0}, ["group"])

    assert result["group"][0] == []


BAD_SYNCS = {
    "limit_zero": {"after": {"p2p": 0}, "limit": 0},
    "limit_negative": {"after": {"p2p": 0}, "limit": -5},
    "limit_string": {"after": {"p2p": 0}, "limit": "10"},
    "limit_fraction": {"after": {"p2p": 0}, "limit": 2.5},
    "limit_bool": {"after": {"p2p": 0}, "limit": True},
    "after_list": {"after": [0, 0, 0]},
    "after_empty": {"after": {}},
    "after_unknown_channel": {"after": {"email": 0}},
    "after_negative_id": {"after": {"p2p": -1}},
    "after_string_id": {"after": {"p2p": "12"}},
    "after_null_id": {"after": {"p2p": None}},
}


@pytest.mark.parametrize("name", list(BAD_SYNCS))
@pytest.mark.gen_test(timeout=30)
async def test_sync_with_bad_field_is_invalid(api, connect, unique, name):
    socket = await connect(await api.user(unique("pat")))

    await socket.send({"type": "sync", **BAD_SYNCS[name]})

    error = await socket.recv()
    assert error["type"] == "error"
    assert error["code"] == "invalid_argument"
    assert error["ref"] == "sync"
    await socket.send({"type": "ping"})
    assert await socket.expect("pong") == {"type": "pong"}


@pytest.mark.gen_test(timeout=60)
async def test_live_frames_during_sync_keep_resume_point(api, connect, unique):
    doctor, patient, _, _, token = await conversation(api, unique)
    await seed_pms(api, doctor, patient, 100)
    socket = await connect(token)

    sending = asyncio.ensure_future(seed_pms(api, doctor, patient, 100))
    # Start the replay once live messages are flowing, so the two interleave.
    first_live = await socket.expect("message")
    await socket.send({"type": "sync", "after": {"p2p": 0}, "limit": SYNC_MAX_LIMIT})
    seen_ids = {first_live["message"]["id"]}
    while True:
        frame = await socket.recv()
        if frame["type"] == "message":
            seen_ids.add(frame["message"]["id"])
        elif frame["type"] == "synced":
            break
    resume_id = max(seen_ids)
    await sending

    stored_ids = await all_pm_ids(api, patient, doctor)
    assert frame == {"type": "synced", "channel": "p2p", "hasMore": False}
    assert [i for i in stored_ids if i <= resume_id] == sorted(
        i for i in seen_ids if i <= resume_id)


async def all_pm_ids(api, user_id, peer_id):
    """Every pm id between two users, read through REST history pages."""
    ids, after_id, has_more = [], 0, True
    while has_more:
        status, answer, _ = await api.get(
            f"/api/v1/chats/pm?user_id={user_id}&peer_id={peer_id}"
            f"&after_id={after_id}&limit=100")
        assert status == 200, answer
        ids += [message["id"] for message in answer["messages"]]
        after_id, has_more = ids[-1], answer["hasMore"]
    return ids
