"""REST reads: history pages, recent conversations, read marks and recall."""

import asyncio
from urllib.parse import urlencode

import pytest
from assertions import assert_error

PM = "/api/v1/chats/pm"
GM = "/api/v1/chats/gm"
SM = "/api/v1/chats/sm"
READ = "/api/v1/chats/read"
FAR_ID = 2**62


async def send_pm(api, sender, to, content="hello", **extra):
    body = {"from": sender, "to": to, "contentType": 1, "content": content, **extra}
    status, answer, _ = await api.post(PM, body)
    assert status == 201, answer
    return answer["message"]


async def send_gm(api, sender, group, content="hello"):
    body = {"from": sender, "group": group, "contentType": 1, "content": content}
    status, answer, _ = await api.post(GM, body)
    assert status == 201, answer
    return answer["message"]


async def send_sm(api, to, content="notice"):
    body = {"to": to, "title": "Notice", "summary": "", "contentType": 1,
            "content": content}
    status, answer, _ = await api.post(SM, body)
    assert status == 201, answer
    return answer["message"]


async def fetch_history(api, kind, token=None, **query):
    """Return the status and parsed body of a history request."""
    status, answer, _ = await api.get(f"/api/v1/chats/{kind}?{urlencode(query)}",
                                      token=token)
    return status, answer


async def history(api, kind, **query):
    status, answer = await fetch_history(api, kind, **query)
    assert status == 200, answer
    return answer


async def recent(api, user_id, **query):
    params = urlencode({"user_id": user_id, **query})
    status, answer, _ = await api.get(f"/api/v1/chats/recent?{params}")
    assert status == 200, answer
    return answer


async def mark_read(api, user_id, channel, up_to_id, token=None, **target):
    body = {"userId": user_id, "channel": channel, "upToId": up_to_id, **target}
    status, answer, _ = await api.post(READ, body, token=token)
    assert status == 200, answer
    return answer["unread"]


def ids(messages):
    return [message["id"] for message in messages]


def conversation_with(state, **match):
    """Return the conversation of a recent list whose fields equal ``match``."""
    for conversation in state["conversations"]:
        if all(conversation.get(key) == value for key, value in match.items()):
            return conversation
    raise AssertionError(f"no conversation with {match} in {state}")


async def pair(api, unique):
    doctor, patient = unique("doc"), unique("pat")
    tokens = {
        doctor: await api.user(doctor, "doctor"),
        patient: await api.user(patient, "patient"),
    }
    return doctor, patient, tokens


async def care_team(api, unique):
    doctor, patient, other = unique("doc"), unique("pat"), unique("pat2")
    tokens = {
        doctor: await api.user(doctor, "doctor"),
        patient: await api.user(patient, "patient"),
        other: await api.user(other, "patient"),
    }
    group = unique("team")
    await api.group(group, [doctor, patient, other])
    return doctor, patient, other, group, tokens


async def pause_for_new_timestamp():
    """Sleep past the current millisecond so the next message sorts later."""
    await asyncio.sleep(0.005)


# -- history ------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_history_without_cursor_returns_newest_page(api, unique):
    doctor, patient, _ = await pair(api, unique)
    sent = [await send_pm(api, doctor, patient, f"m{n}") for n in range(5)]

    page = await history(api, "pm", user_id=patient, peer_id=doctor, limit=2)

    assert ids(page["messages"]) == ids(sent[3:])
    assert page["hasMore"] is True


@pytest.mark.gen_test(timeout=30)
async def test_history_pages_back_with_before_id(api, unique):
    doctor, patient, _ = await pair(api, unique)
    sent = [await send_pm(api, doctor, patient, f"m{n}") for n in range(5)]

    second = await history(api, "pm", user_id=patient, peer_id=doctor, limit=2,
                           before_id=sent[3]["id"])
    last = await history(api, "pm", user_id=patient, peer_id=doctor, limit=2,
                         before_id=sent[1]["id"])

    assert ids(second["messages"]) == ids(sent[1:3])
    assert second["hasMore"] is True
    assert ids(last["messages"]) == ids(sent[:1])
    assert last["hasMore"] is False


@pytest.mark.gen_test(timeout=30)
async def test_history_pages_forward_with_after_id(api, unique):
    doctor, patient, _ = await pair(api, unique)
    sent = [await send_pm(api, doctor, patient, f"m{n}") for n in range(5)]

    first = await history(api, "pm", user_id=patient, peer_id=doctor, limit=3,
                          after_id=0)
    rest = await history(api, "pm", user_id=patient, peer_id=doctor, limit=3,
                         after_id=sent[2]["id"])
    beyond = await history(api, "pm", user_id=patient, peer_id=doctor, limit=3,
                           after_id=sent[4]["id"])

    assert ids(first["messages"]) == ids(sent[:3])
    assert first["hasMore"] is True
    assert ids(rest["messages"]) == ids(sent[3:])
    assert rest["hasMore"] is False
    assert beyond["messages"] == []
    assert beyond["hasMore"] is False


@pytest.mark.gen_test(timeout=30)
async def test_full_last_page_has_no_more(api, unique):
    doctor, patient, _ = await pair(api, unique)
    sent = [await send_pm(api, doctor, patient, f"m{n}") for n in range(3)]

    page = await history(api, "pm", user_id=patient, peer_id=doctor, limit=3)

    assert ids(page["messages"]) == ids(sent)
    assert page["hasMore"] is False


@pytest.mark.gen_test(timeout=30)
async def test_history_limit_defaults_to_20(api, unique):
    doctor, patient, _ = await pair(api, unique)
    sent = [await send_pm(api, doctor, patient, f"m{n}") for n in range(21)]

    page = await history(api, "pm", user_id=patient, peer_id=doctor)

    assert ids(page["messages"]) == ids(sent[1:])
    assert page["hasMore"] is True


@pytest.mark.gen_test(timeout=30)
async def test_history_limit_of_100_is_accepted(api, unique):
    doctor, patient, _ = await pair(api, unique)
    sent = await send_pm(api, doctor, patient)

    page = await history(api, "pm", user_id=patient, peer_id=doctor, limit=100)

    assert page["messages"] == [sent]


@pytest.mark.gen_test(timeout=30)
async def test_pm_history_without_peer_spans_all_peers(api, unique):
    doctor, patient, _ = await pair(api, unique)
    nurse = unique("nurse")
    await api.user(nurse, "doctor")
    first = await send_pm(api, doctor, patient, "from doctor")
    second = await send_pm(api, patient, nurse, "to nurse")
    third = await send_pm(api, nurse, patient, "from nurse")
    await send_pm(api, doctor, nurse, "not the patient's")

    page = await history(api, "pm", user_id=patient)

    assert page["messages"] == [first, second, third]
    assert page["hasMore"] is False


@pytest.mark.gen_test(timeout=30)
async def test_pm_history_without_peer_pages_both_ways(api, unique):
    doctor, patient, _ = await pair(api, unique)
    nurse = unique("nurse")
    await api.user(nurse, "doctor")
    sent = []
    for n in range(7):
        sender, to = [(doctor, patient), (patient, nurse), (nurse, patient)][n % 3]
        sent.append(await send_pm(api, sender, to, f"m{n}"))

    backward, before_id = [], None
    while True:
        query = {"user_id": patient, "limit": 2}
        if before_id is not None:
            query["before_id"] = before_id
        page = await history(api, "pm", **query)
        backward = page["messages"] + backward
        if not page["hasMore"]:
            break
        before_id = page["messages"][0]["id"]
    forward, after_id = [], 0
    while True:
        page = await history(api, "pm", user_id=patient, limit=3, after_id=after_id)
        forward += page["messages"]
        if not page["hasMore"]:
            break
        after_id = page["messages"][-1]["id"]

    assert ids(backward) == ids(sent)
    assert ids(forward) == ids(sent)


@pytest.mark.gen_test(timeout=30)
async def test_peer_history_excludes_other_conversations(api, unique):
    doctor, patient, _ = await pair(api, unique)
    nurse = unique("nurse")
    await api.user(nurse, "doctor")
    wanted = await send_pm(api, doctor, patient, "wanted")
    await send_pm(api, nurse, patient, "other conversation")

    page = await history(api, "pm", user_id=patient, peer_id=doctor)

    assert page["messages"] == [wanted]


@pytest.mark.gen_test(timeout=30)
async def test_user_reads_own_history(api, unique):
    doctor, patient, tokens = await pair(api, unique)
    sent = await send_pm(api, doctor, patient)

    status, answer = await fetch_history(
        api, "pm", token=tokens[patient], user_id=patient, peer_id=doctor
    )

    assert status == 200, answer
    assert answer["messages"] == [sent]


@pytest.mark.gen_test(timeout=30)
async def test_gm_history_for_member(api, unique):
    doctor, patient, _, group, tokens = await care_team(api, unique)
    sent = [await send_gm(api, doctor, group, f"m{n}") for n in range(3)]

    status, answer = await fetch_history(
        api, "gm", token=tokens[patient], user_id=patient, group=group, limit=2
    )

    assert status == 200, answer
    assert ids(answer["messages"]) == ids(sent[1:])
    assert answer["hasMore"] is True


@pytest.mark.gen_test(timeout=30)
async def test_gm_history_pages_with_cursors(api, unique):
    doctor, patient, _, group, _ = await care_team(api, unique)
    sent = [await send_gm(api, doctor, group, f"m{n}") for n in range(4)]

    older = await history(api, "gm", user_id=patient, group=group, limit=2,
                          before_id=sent[2]["id"])
    newer = await history(api, "gm", user_id=patient, group=group, limit=2,
                          after_id=sent[1]["id"])

    assert ids(older["messages"]) == ids(sent[:2])
    assert older["hasMore"] is False
    assert ids(newer["messages"]) == ids(sent[2:])
    assert newer["hasMore"] is False


@pytest.mark.gen_test(timeout=30)
async def test_gm_history_for_non_member_returns_403(api, unique):
    doctor, _, _, group, _ = await care_team(api, unique)
    await send_gm(api, doctor, group)
    outsider = unique("outsider")
    outsider_token = await api.user(outsider, "patient")

    status, answer = await fetch_history(
        api, "gm", token=outsider_token, user_id=outsider, group=group
    )

    assert_error(status, answer, 403, "forbidden", "group")


@pytest.mark.gen_test(timeout=30)
async def test_gm_history_of_unknown_group_returns_404(api, unique):
    doctor, _, _ = await pair(api, unique)

    status, answer = await fetch_history(api, "gm", user_id=doctor,
                                         group=unique("no-team"))

    assert_error(status, answer, 404, "not_found", "group")


@pytest.mark.gen_test(timeout=30)
async def test_gm_history_without_group_returns_400(api, unique):
    doctor, _, _ = await pair(api, unique)

    status, answer = await fetch_history(api, "gm", user_id=doctor)

    assert_error(status, answer, 400, "invalid_argument", "group")


@pytest.mark.gen_test(timeout=30)
async def test_sm_history_holds_own_system_messages(api, unique):
    doctor, patient, tokens = await pair(api, unique)
    first = await send_sm(api, patient, "one")
    second = await send_sm(api, patient, "two")
    await send_sm(api, doctor, "someone else's")

    status, answer = await fetch_history(api, "sm", token=tokens[patient],
                                         user_id=patient)

    assert status == 200, answer
    assert answer["messages"] == [first, second]
    assert answer["hasMore"] is False


@pytest.mark.gen_test(timeout=30)
async def test_sm_history_pages_with_cursors(api, unique):
    _, patient, _ = await pair(api, unique)
    sent = [await send_sm(api, patient, f"n{n}") for n in range(3)]

    older = await history(api, "sm", user_id=patient, limit=1, before_id=sent[1]["id"])
    newer = await history(api, "sm", user_id=patient, limit=1, after_id=sent[1]["id"])

    assert ids(older["messages"]) == ids(sent[:1])
    assert older["hasMore"] is False
    assert ids(newer["messages"]) == ids(sent[2:])
    assert newer["hasMore"] is False


@pytest.mark.parametrize("kind", ["pm", "gm", "sm"])
@pytest.mark.gen_test(timeout=30)
async def test_history_with_both_cursors_returns_400(api, unique, kind):
    doctor, patient, _, group, _ = await care_team(api, unique)

    status, answer = await fetch_history(
        api, kind, user_id=patient, group=group, before_id=10, after_id=5
    )

    assert status == 400, answer
    assert answer["error"]["code"] == "invalid_argument"


HISTORY_BAD_QUERIES = [
    ("limit-zero", {"limit": 0}, "limit"),
    ("limit-101", {"limit": 101}, "limit"),
    ("limit-negative", {"limit": -5}, "limit"),
    ("limit-text", {"limit": "ten"}, "limit"),
    ("limit-float", {"limit": "2.5"}, "limit"),
    ("before-id-zero", {"before_id": 0}, "before_id"),
    ("before-id-text", {"before_id": "x"}, "before_id"),
    ("before-id-too-big", {"before_id": 2**63}, "before_id"),
    ("after-id-negative", {"after_id": -1}, "after_id"),
    ("after-id-text", {"after_id": "1e3"}, "after_id"),
    ("peer-id-65-chars", {"peer_id": "p" * 65}, "peer_id"),
]


@pytest.mark.parametrize(
    "query, field",
    [case[1:] for case in HISTORY_BAD_QUERIES],
    ids=[case[0] for case in HISTORY_BAD_QUERIES],
)
@pytest.mark.gen_test(timeout=30)
async def test_history_with_bad_query_returns_400(api, unique, query, field):
    _, patient, _ = await pair(api, unique)

    status, answer = await fetch_history(api, "pm", user_id=patient, **query)

    assert_error(status, answer, 400, "invalid_argument", field)


@pytest.mark.parametrize("kind", ["pm", "gm", "sm"])
@pytest.mark.gen_test(timeout=30)
async def test_history_without_user_id_returns_400(api, unique, kind):
    status, answer = await fetch_history(api, kind, group=unique("team"))

    assert_error(status, answer, 400, "invalid_argument", "user_id")


@pytest.mark.gen_test(timeout=30)
async def test_history_long_user_id_returns_400(api):
    status, answer = await fetch_history(api, "pm", user_id="u" * 65)

    assert_error(status, answer, 400, "invalid_argument", "user_id")


# -- recent conversations -----------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_recent_lists_newest_conversation_first(api, unique):
    doctor, patient, _, group, _ = await care_team(api, unique)
    nurse = unique("nurse")
    await api.user(nurse, "doctor")
    await send_pm(api, doctor, patient)
    await pause_for_new_timestamp()
    await send_gm(api, doctor, group)
    await pause_for_new_timestamp()
    await send_sm(api, patient)
    await pause_for_new_timestamp()
    await send_pm(api, nurse, patient)

    state = await recent(api, patient)

    order = [(c["channel"], c.get("peer") or c.get("group"))
             for c in state["conversations"]]
    assert order == [("p2p", nurse), ("system", None), ("group", group),
                     ("p2p", doctor)]
    assert state["hasMore"] is False


@pytest.mark.gen_test(timeout=30)
async def test_recent_moves_active_conversation_to_top(api, unique):
    doctor, patient, _ = await pair(api, unique)
    nurse = unique("nurse")
    await api.user(nurse, "doctor")
    await send_pm(api, doctor, patient)
    await pause_for_new_timestamp()
    await send_pm(api, nurse, patient)
    await pause_for_new_timestamp()
    latest = await send_pm(api, patient, doctor, "reply")

    state = await recent(api, patient)

    first = state["conversations"][0]
    assert first["peer"] == doctor
    assert first["lastMessage"] == latest


@pytest.mark.gen_test(timeout=30)
async def test_recent_counts_unread_per_conversation(api, unique):
    doctor, patient, _, group, _ = await care_team(api, unique)
    for _ in range(3):
        await send_pm(api, doctor, patient)
    await send_pm(api, patient, doctor, "own messages are not unread")
    for _ in range(2):
        await send_gm(api, doctor, group)

    state = await recent(api, patient)

    assert conversation_with(state, channel="p2p", peer=doctor)["unread"] == 3
    assert conversation_with(state, channel="group", group=group)["unread"] == 2
    assert state["totalUnread"] == 5


@pytest.mark.gen_test(timeout=30)
async def test_recent_total_unread_covers_every_channel(api, unique):
    doctor, patient, _, group, _ = await care_team(api, unique)
    await send_pm(api, doctor, patient)
    await send_gm(api, doctor, group)
    await send_sm(api, patient)
    await send_sm(api, patient)

    state = await recent(api, patient, limit=1)

    assert len(state["conversations"]) == 1
    assert state["totalUnread"] == 4
    assert state["hasMore"] is True


@pytest.mark.gen_test(timeout=30)
async def test_recent_cuts_text_to_100_characters(api, unique):
    doctor, patient, _ = await pair(api, unique)
    text = "😀𠀀" * 60 + "tail"
    sent = await send_pm(api, doctor, patient, text)

    state = await recent(api, patient)

    last = conversation_with(state, peer=doctor)["lastMessage"]
    assert last["content"] == text[:100]
    assert last["id"] == sent["id"]
    page = await history(api, "pm", user_id=patient, peer_id=doctor)
    assert page["messages"][0]["content"] == text


@pytest.mark.gen_test(timeout=30)
async def test_recent_keeps_short_text_whole(api, unique):
    doctor, patient, _ = await pair(api, unique)
    text = "x" * 100
    sent = await send_pm(api, doctor, patient, text)

    state = await recent(api, patient)

    assert conversation_with(state, peer=doctor)["lastMessage"] == sent


@pytest.mark.gen_test(timeout=30)
async def test_recent_keeps_url_content_whole(api, unique):
    doctor, patient, _ = await pair(api, unique)
    url = "https://files.example.com/" + "a" * 300 + ".png"
    body = {"from": doctor, "to": patient, "contentType": 2, "content": url}
    _, answer, _ = await api.post(PM, body)

    state = await recent(api, patient)

    assert conversation_with(state, peer=doctor)["lastMessage"] == answer["message"]


@pytest.mark.gen_test(timeout=30)
async def test_recent_shows_how_far_peer_read(api, unique):
    doctor, patient, _ = await pair(api, unique)
    first = await send_pm(api, doctor, patient, "one")
    await send_pm(api, doctor, patient, "two")
    await mark_read(api, patient, "p2p", first["id"], peer=doctor)

    state = await recent(api, doctor)

    assert conversation_with(state, peer=patient)["peerReadUpToId"] == first["id"]


@pytest.mark.gen_test(timeout=30)
async def test_system_conversation_lacks_peer_and_group(api, unique):
    doctor, patient, _, group, _ = await care_team(api, unique)
    await send_sm(api, patient)
    await send_gm(api, doctor, group)

    state = await recent(api, patient)

    system = conversation_with(state, channel="system")
    assert "peer" not in system
    assert "group" not in system
    assert system["peerReadUpToId"] is None
    assert system["unread"] == 1
    group_conversation = conversation_with(state, channel="group")
    assert "peer" not in group_conversation
    assert group_conversation["peerReadUpToId"] is None


@pytest.mark.gen_test(timeout=30)
async def test_recent_conversation_has_contract_fields(api, unique):
    doctor, patient, _ = await pair(api, unique)
    sent = await send_pm(api, doctor, patient)

    state = await recent(api, patient)

    assert set(state) == {"conversations", "totalUnread", "hasMore"}
    assert state["conversations"] == [{
        "channel": "p2p", "peer": doctor, "peerName": doctor, "unread": 1,
        "lastMessage": sent,
        "peerReadUpToId": state["conversations"][0]["peerReadUpToId"],
    }]


@pytest.mark.gen_test(timeout=30)
async def test_recent_names_peers_and_groups(api, unique):
    doctor, patient = unique("doc"), unique("pat")
    await api.user(doctor, "doctor", name="王医生")
    await api.user(patient, "patient")
    group = unique("team")
    await api.group(group, [doctor, patient], name="签约团队")
    await send_pm(api, doctor, patient)
    status, answer, _ = await api.post("/api/v1/chats/gm", {
        "from": doctor, "group": group, "contentType": 1, "content": "大家好",
    })
    assert status == 201, answer

    state = await recent(api, patient)

    by_channel = {item["channel"]: item for item in state["conversations"]}
    assert by_channel["p2p"]["peerName"] == "王医生"
    assert by_channel["group"]["groupName"] == "签约团队"
    assert "groupName" not in by_channel["p2p"]
    assert "peerName" not in by_channel["group"]


@pytest.mark.gen_test(timeout=30)
async def test_recent_omits_conversations_without_messages(api, unique):
    _, patient, _, _, _ = await care_team(api, unique)

    state = await recent(api, patient)

    assert state["conversations"] == []
    assert state["totalUnread"] == 0
    assert state["hasMore"] is False


@pytest.mark.gen_test(timeout=30)
async def test_recent_pages_with_limit_and_before(api, unique):
    _, patient, _ = await pair(api, unique)
    peers = []
    for n in range(5):
        peer = unique(f"doc{n}")
        await api.user(peer, "doctor")
        await send_pm(api, peer, patient)
        peers.append(peer)
        await pause_for_new_timestamp()

    first = await recent(api, patient, limit=2)
    before = first["conversations"][-1]["lastMessage"]["timestamp"]
    second = await recent(api, patient, limit=2, before=before)
    before = second["conversations"][-1]["lastMessage"]["timestamp"]
    third = await recent(api, patient, limit=2, before=before)

    pages = [first, second, third]
    listed = [c["peer"] for page in pages for c in page["conversations"]]
    assert listed == peers[::-1]
    assert [page["hasMore"] for page in pages] == [True, True, False]
    assert [page["totalUnread"] for page in pages] == [5, 5, 5]


@pytest.mark.parametrize("query, field", [
    ({"limit": 0}, "limit"),
    ({"limit": 501}, "limit"),
    ({"limit": "many"}, "limit"),
    ({"before": -1}, "before"),
    ({"before": "yesterday"}, "before"),
])
@pytest.mark.gen_test(timeout=30)
async def test_recent_with_bad_query_returns_400(api, unique, query, field):
    _, patient, _ = await pair(api, unique)
    params = urlencode({"user_id": patient, **query})

    status, answer, _ = await api.get(f"/api/v1/chats/recent?{params}")

    assert_error(status, answer, 400, "invalid_argument", field)


@pytest.mark.gen_test(timeout=30)
async def test_recent_limit_of_500_is_accepted(api, unique):
    doctor, patient, _ = await pair(api, unique)
    await send_pm(api, doctor, patient)

    state = await recent(api, patient, limit=500)

    assert len(state["conversations"]) == 1


@pytest.mark.gen_test(timeout=30)
async def test_recent_without_user_id_returns_400(api):
    status, answer, _ = await api.get("/api/v1/chats/recent")

    assert_error(status, answer, 400, "invalid_argument", "user_id")


# -- read marks ---------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_read_returns_unread_left(api, unique):
    doctor, patient, tokens = await pair(api, unique)
    sent = [await send_pm(api, doctor, patient, f"m{n}") for n in range(3)]

    unread = await mark_read(api, patient, "p2p", sent[1]["id"], token=tokens[patient],
                             peer=doctor)

    assert unread == 1
    state = await recent(api, patient)
    assert conversation_with(state, peer=doctor)["unread"] == 1
    assert state["totalUnread"] == 1


@pytest.mark.gen_test(timeout=30)
async def test_read_beyond_newest_leaves_later_messages_unread(api, unique):
    doctor, patient, _ = await pair(api, unique)
    await send_pm(api, doctor, patient)

    unread = await mark_read(api, patient, "p2p", FAR_ID, peer=doctor)
    later = await send_pm(api, doctor, patient, "arrives later")

    assert unread == 0
    state = await recent(api, patient)
    assert conversation_with(state, peer=doctor)["unread"] == 1
    assert await mark_read(api, patient, "p2p", later["id"], peer=doctor) == 0


@pytest.mark.gen_test(timeout=30)
async def test_read_never_moves_back(api, unique):
    doctor, patient, _ = await pair(api, unique)
    sent = [await send_pm(api, doctor, patient, f"m{n}") for n in range(3)]
    await mark_read(api, patient, "p2p", sent[2]["id"], peer=doctor)

    unread = await mark_read(api, patient, "p2p", sent[0]["id"], peer=doctor)

    assert unread == 0


@pytest.mark.gen_test(timeout=30)
async def test_read_sends_receipt_to_peer_socket(api, connect, unique):
    doctor, patient, tokens = await pair(api, unique)
    doctor_socket = await connect(tokens[doctor])
    sent = [await send_pm(api, doctor, patient, f"m{n}") for n in range(2)]

    await mark_read(api, patient, "p2p", sent[0]["id"], peer=doctor)

    receipt = await doctor_socket.expect("receipt")
    assert receipt == {"type": "receipt", "channel": "p2p", "from": patient,
                       "upToId": sent[0]["id"]}


@pytest.mark.gen_test(timeout=30)
async def test_read_sends_unread_frame_to_reader_sockets(api, connect, unique):
    doctor, patient, tokens = await pair(api, unique)
    phone = await connect(tokens[patient])
    laptop = await connect(tokens[patient])
    await send_sm(api, patient)
    sent = [await send_pm(api, doctor, patient, f"m{n}") for n in range(3)]

    await mark_read(api, patient, "p2p", sent[1]["id"], peer=doctor)

    for socket in (phone, laptop):
        frame = await socket.expect("unread")
        assert frame == {"type": "unread", "channel": "p2p", "peer": doctor,
                         "unread": 1, "totalUnread": 2}


@pytest.mark.gen_test(timeout=30)
async def test_group_read_sends_receipt_to_members(api, connect, unique):
    doctor, patient, other, group, tokens = await care_team(api, unique)
    doctor_socket = await connect(tokens[doctor])
    other_socket = await connect(tokens[other])
    sent = await send_gm(api, doctor, group)

    unread = await mark_read(api, patient, "group", sent["id"], group=group)

    assert unread == 0
    for socket in (doctor_socket, other_socket):
        receipt = await socket.expect("receipt")
        assert receipt == {"type": "receipt", "channel": "group", "from": patient,
                           "group": group, "upToId": sent["id"]}


@pytest.mark.gen_test(timeout=30)
async def test_group_read_sends_unread_frame_with_group(api, connect, unique):
    doctor, patient, _, group, tokens = await care_team(api, unique)
    socket = await connect(tokens[patient])
    sent = [await send_gm(api, doctor, group, f"m{n}") for n in range(2)]

    await mark_read(api, patient, "group", sent[0]["id"], group=group)

    frame = await socket.expect("unread")
    assert frame == {"type": "unread", "channel": "group", "group": group,
                     "unread": 1, "totalUnread": 1}


@pytest.mark.gen_test(timeout=30)
async def test_system_read_clears_system_unread(api, connect, unique):
    _, patient, tokens = await pair(api, unique)
    socket = await connect(tokens[patient])
    sent = [await send_sm(api, patient, f"n{n}") for n in range(2)]

    unread = await mark_read(api, patient, "system", sent[-1]["id"],
                             token=tokens[patient])

    assert unread == 0
    frame = await socket.expect("unread")
    assert frame == {"type": "unread", "channel": "system", "unread": 0,
                     "totalUnread": 0}
    state = await recent(api, patient)
    assert conversation_with(state, channel="system")["unread"] == 0


@pytest.mark.gen_test(timeout=30)
async def test_read_by_form_body_is_accepted(api, unique):
    doctor, patient, _ = await pair(api, unique)
    sent = await send_pm(api, doctor, patient)
    raw = urlencode({"userId": patient, "channel": "p2p", "peer": doctor,
                     "upToId": sent["id"]}).encode()

    status, answer, _ = await api.post(
        READ, raw_body=raw,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )

    assert status == 200, answer
    assert answer == {"unread": 0}


READ_BAD_BODIES = [
    ("channel-missing", {"channel": None}, "channel"),
    ("channel-unknown", {"channel": "email"}, "channel"),
    ("peer-missing", {"peer": None}, "peer"),
    ("peer-65-chars", {"peer": "p" * 65}, "peer"),
    ("up-to-id-missing", {"upToId": None}, "upToId"),
    ("up-to-id-negative", {"upToId": -1}, "upToId"),
    ("up-to-id-string", {"upToId": "5"}, "upToId"),
    ("up-to-id-float", {"upToId": 5.5}, "upToId"),
    ("up-to-id-bool", {"upToId": True}, "upToId"),
    ("up-to-id-too-big", {"upToId": 2**63}, "upToId"),
    ("user-id-missing", {"userId": None}, "userId"),
    ("user-id-65-chars", {"userId": "u" * 65}, "userId"),
]


@pytest.mark.parametrize(
    "changes, field",
    [case[1:] for case in READ_BAD_BODIES],
    ids=[case[0] for case in READ_BAD_BODIES],
)
@pytest.mark.gen_test(timeout=30)
async def test_read_with_bad_field_returns_400(api, unique, changes, field):
    doctor, patient, _ = await pair(api, unique)
    await send_pm(api, doctor, patient)
    body = {"userId": patient, "channel": "p2p", "peer": doctor, "upToId": 1}
    body.update(changes)
    body = {key: value for key, value in body.items() if value is not None}

    status, answer, _ = await api.post(READ, body)

    assert_error(status, answer, 400, "invalid_argument", field)
    state = await recent(api, patient)
    assert state["totalUnread"] == 1


@pytest.mark.gen_test(timeout=30)
async def test_group_read_without_group_returns_400(api, unique):
    _, patient, _ = await pair(api, unique)

    status, answer, _ = await api.post(
        READ, {"userId": patient, "channel": "group", "upToId": 1}
    )

    assert_error(status, answer, 400, "invalid_argument", "group")


@pytest.mark.gen_test(timeout=30)
async def test_group_read_by_non_member_returns_403(api, unique):
    doctor, _, _, group, _ = await care_team(api, unique)
    await send_gm(api, doctor, group)
    outsider = unique("outsider")
    outsider_token = await api.user(outsider, "patient")

    status, answer, _ = await api.post(
        READ, {"userId": outsider, "channel": "group", "group": group, "upToId": 1},
        token=outsider_token,
    )

    assert_error(status, answer, 403, "forbidden", "group")


@pytest.mark.gen_test(timeout=30)
async def test_read_with_unknown_peer_returns_404(api, unique):
    _, patient, _ = await pair(api, unique)

    status, answer, _ = await api.post(
        READ, {"userId": patient, "channel": "p2p", "peer": unique("nobody"),
               "upToId": 1},
    )

    assert_error(status, answer, 404, "not_found", "peer")


# -- recall -------------------------------------------------------------------


async def recall(api, kind, message_id, token=None):
    status, answer, _ = await api.delete(f"/api/v1/chats/{kind}/{message_id}",
                                         token=token)
    return status, answer


@pytest.mark.gen_test(timeout=30)
async def test_sender_recalls_pm_within_window(api, unique):
    doctor, patient, tokens = await pair(api, unique)
    sent = await send_pm(api, doctor, patient, "oops")

    status, answer = await recall(api, "pm", sent["id"], token=tokens[doctor])

    assert status == 200, answer
    message = answer["message"]
    assert message["recalled"] is True
    assert not message.get("content")
    assert message["id"] == sent["id"]
    assert message["from"] == doctor


@pytest.mark.gen_test(timeout=30)
async def test_recalled_message_keeps_place_in_history(api, unique):
    doctor, patient, tokens = await pair(api, unique)
    sent = [await send_pm(api, doctor, patient, f"m{n}") for n in range(3)]

    await recall(api, "pm", sent[1]["id"], token=tokens[doctor])

    page = await history(api, "pm", user_id=patient, peer_id=doctor)
    assert ids(page["messages"]) == ids(sent)
    middle = page["messages"][1]
    assert middle["recalled"] is True
    assert not middle.get("content")
    assert "recalled" not in page["messages"][0]
    assert page["messages"][2]["content"] == "m2"


@pytest.mark.gen_test(timeout=30)
async def test_recall_sends_recalled_frame_to_live_sockets(api, connect, unique):
    doctor, patient, tokens = await pair(api, unique)
    patient_socket = await connect(tokens[patient])
    doctor_socket = await connect(tokens[doctor])
    sent = await send_pm(api, doctor, patient)

    await recall(api, "pm", sent["id"], token=tokens[doctor])

    expected = {"type": "recalled", "channel": "p2p", "id": sent["id"]}
    assert await patient_socket.expect("recalled") == expected
    assert await doctor_socket.expect("recalled") == expected


@pytest.mark.gen_test(timeout=30)
async def test_gm_recall_frame_names_group(api, connect, unique):
    doctor, patient, _, group, tokens = await care_team(api, unique)
    socket = await connect(tokens[patient])
    sent = await send_gm(api, doctor, group)

    status, answer = await recall(api, "gm", sent["id"], token=tokens[doctor])

    assert status == 200, answer
    frame = await socket.expect("recalled")
    assert frame == {"type": "recalled", "channel": "group", "id": sent["id"],
                     "group": group}


@pytest.mark.gen_test(timeout=30)
async def test_recall_by_recipient_returns_403(api, unique):
    doctor, patient, tokens = await pair(api, unique)
    sent = await send_pm(api, doctor, patient)

    status, answer = await recall(api, "pm", sent["id"], token=tokens[patient])

    assert_error(status, answer, 403, "forbidden")
    page = await history(api, "pm", user_id=patient, peer_id=doctor)
    assert page["messages"] == [sent]


@pytest.mark.gen_test(timeout=30)
async def test_gm_recall_by_other_member_returns_403(api, unique):
    doctor, patient, _, group, tokens = await care_team(api, unique)
    sent = await send_gm(api, doctor, group)

    status, answer = await recall(api, "gm", sent["id"], token=tokens[patient])

    assert_error(status, answer, 403, "forbidden")


@pytest.mark.gen_test(timeout=30)
async def test_sm_recall_by_user_returns_403(api, unique):
    _, patient, tokens = await pair(api, unique)
    sent = await send_sm(api, patient)

    status, answer = await recall(api, "sm", sent["id"], token=tokens[patient])

    assert_error(status, answer, 403, "forbidden")


@pytest.mark.gen_test(timeout=30)
async def test_recall_after_window_returns_403(api, im, unique):
    doctor, patient, tokens = await pair(api, unique)
    sent = await send_pm(api, doctor, patient)
    im.conversations._recall_window_ms = 0
    await asyncio.sleep(0.01)

    status, answer = await recall(api, "pm", sent["id"], token=tokens[doctor])

    assert_error(status, answer, 403, "forbidden")
    page = await history(api, "pm", user_id=patient, peer_id=doctor)
    assert page["messages"] == [sent]


@pytest.mark.gen_test(timeout=30)
async def test_system_token_recalls_after_window(api, im, unique):
    doctor, patient, _ = await pair(api, unique)
    sent = await send_pm(api, doctor, patient)
    im.conversations._recall_window_ms = 0
    await asyncio.sleep(0.01)

    status, answer = await recall(api, "pm", sent["id"])

    assert status == 200, answer
    assert answer["message"]["recalled"] is True


@pytest.mark.gen_test(timeout=30)
async def test_system_token_recalls_system_message(api, unique):
    _, patient, _ = await pair(api, unique)
    sent = await send_sm(api, patient)

    status, answer = await recall(api, "sm", sent["id"])

    assert status == 200, answer
    assert answer["message"]["recalled"] is True
    state = await recent(api, patient)
    assert state["totalUnread"] == 0


@pytest.mark.gen_test(timeout=30)
async def test_second_recall_changes_nothing(api, connect, unique):
    doctor, patient, tokens = await pair(api, unique)
    socket = await connect(tokens[patient])
    sent = [await send_pm(api, doctor, patient, f"m{n}") for n in range(2)]
    _, first = await recall(api, "pm", sent[0]["id"], token=tokens[doctor])
    await socket.expect("recalled")

    status, answer = await recall(api, "pm", sent[0]["id"], token=tokens[doctor])

    assert status == 200, answer
    assert answer == first
    state = await recent(api, patient)
    assert state["totalUnread"] == 1
    await socket.no_frame()


@pytest.mark.gen_test(timeout=30)
async def test_recall_drops_unread_of_recipient(api, unique):
    doctor, patient, tokens = await pair(api, unique)
    sent = [await send_pm(api, doctor, patient, f"m{n}") for n in range(2)]

    await recall(api, "pm", sent[0]["id"], token=tokens[doctor])

    state = await recent(api, patient)
    assert conversation_with(state, peer=doctor)["unread"] == 1
    assert state["totalUnread"] == 1


@pytest.mark.gen_test(timeout=30)
async def test_recall_keeps_unread_of_reader(api, unique):
    doctor, patient, tokens = await pair(api, unique)
    sent = [await send_pm(api, doctor, patient, f"m{n}") for n in range(2)]
    await mark_read(api, patient, "p2p", sent[0]["id"], peer=doctor)

    await recall(api, "pm", sent[0]["id"], token=tokens[doctor])

    state = await recent(api, patient)
    assert conversation_with(state, peer=doctor)["unread"] == 1


@pytest.mark.gen_test(timeout=30)
async def test_gm_recall_drops_only_unread_counts(api, unique):
    doctor, patient, other, group, tokens = await care_team(api, unique)
    sent = [await send_gm(api, doctor, group, f"m{n}") for n in range(2)]
    await mark_read(api, patient, "group", sent[0]["id"], group=group)

    await recall(api, "gm", sent[0]["id"], token=tokens[doctor])

    reader = await recent(api, patient)
    assert conversation_with(reader, group=group)["unread"] == 1
    unread_member = await recent(api, other)
    assert conversation_with(unread_member, group=group)["unread"] == 1
    sender = await recent(api, doctor)
    assert conversation_with(sender, group=group)["unread"] == 0


@pytest.mark.gen_test(timeout=30)
async def test_recall_of_unknown_message_returns_404(api):
    status, answer = await recall(api, "pm", 2**62)

    assert_error(status, answer, 404, "not_found", "id")


@pytest.mark.gen_test(timeout=30)
async def test_recall_id_beyond_range_returns_400(api):
    status, answer = await recall(api, "gm", 2**63)

    assert_error(status, answer, 400, "invalid_argument", "id")


@pytest.mark.gen_test(timeout=30)
async def test_recalled_text_stays_out_of_recent(api, unique):
    doctor, patient, tokens = await pair(api, unique)
    sent = await send_pm(api, doctor, patient, "secret dosage")

    await recall(api, "pm", sent["id"], token=tokens[doctor])

    state = await recent(api, patient)
    last = conversation_with(state, peer=doctor)["lastMessage"]
    assert last["recalled"] is True
    assert not last.get("content")
