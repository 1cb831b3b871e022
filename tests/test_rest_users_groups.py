"""REST users (register, profile, logout) and care-team groups."""

import asyncio
from urllib.parse import urlencode

import pytest
from assertions import assert_error

GROUPS = "/api/v1/groups"
GM = "/api/v1/chats/gm"
LONG_ID = "x" * 65
CLOSE_UNAUTHORIZED = 4001


def user_path(user_id, suffix=""):
    return f"/api/v1/users/{user_id}{suffix}"


async def get_user(api, user_id, token=None):
    status, answer, _ = await api.get(user_path(user_id), token=token)
    assert status == 200, answer
    return answer


async def send_gm(api, sender, group, content="hello"):
    body = {"from": sender, "group": group, "contentType": 1, "content": content}
    status, answer, _ = await api.post(GM, body)
    assert status == 201, answer
    return answer["message"]


async def recent(api, user_id):
    status, answer, _ = await api.get(f"/api/v1/chats/recent?user_id={user_id}")
    assert status == 200, answer
    return answer


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


def member_ids(group):
    return [member["userId"] for member in group["members"]]


# -- users --------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_put_user_creates_user(api, unique):
    user_id = unique("doc")
    body = {"name": "Dr. 李", "role": "doctor",
            "avatar": "https://cdn.example.com/a.png", "getuiClientId": "cid-1",
            "wechatOpenId": "openid-1"}

    status, answer, _ = await api.put(user_path(user_id), body)

    assert status == 200, answer
    assert answer["id"] == user_id
    assert answer["name"] == "Dr. 李"
    assert answer["role"] == "doctor"
    assert answer["avatar"] == "https://cdn.example.com/a.png"
    assert answer["getuiClientId"] == "cid-1"
    assert answer["wechatOpenId"] == "openid-1"


@pytest.mark.gen_test(timeout=30)
async def test_put_user_updates_existing_user(api, unique):
    user_id = unique("pat")
    await api.user(user_id, "patient", name="Old name")

    status, answer, _ = await api.put(
        user_path(user_id), {"name": "New name", "role": "patient",
                             "getuiClientId": "cid-2"},
    )

    assert status == 200, answer
    stored = await get_user(api, user_id)
    assert stored["name"] == "New name"
    assert stored["getuiClientId"] == "cid-2"


@pytest.mark.gen_test(timeout=30)
async def test_user_updates_own_profile(api, unique):
    user_id = unique("pat")
    token = await api.user(user_id, "patient")

    status, answer, _ = await api.put(
        user_path(user_id), {"name": "Me", "role": "patient"}, token=token
    )

    assert status == 200, answer
    assert answer["name"] == "Me"


@pytest.mark.gen_test(timeout=30)
async def test_user_changing_own_role_returns_403(api, unique):
    user_id = unique("pat")
    token = await api.user(user_id, "patient")

    status, answer, _ = await api.put(
        user_path(user_id), {"name": "Me", "role": "doctor"}, token=token
    )

    assert_error(status, answer, 403, "forbidden", "role")
    assert (await get_user(api, user_id))["role"] == "patient"


@pytest.mark.gen_test(timeout=30)
async def test_system_changes_user_role(api, unique):
    user_id = unique("user")
    await api.user(user_id, "patient")

    status, answer, _ = await api.put(user_path(user_id),
                                      {"name": "U", "role": "doctor"})

    assert status == 200, answer
    assert answer["role"] == "doctor"


@pytest.mark.gen_test(timeout=30)
async def test_user_updating_other_user_returns_403(api, unique):
    user_id, other = unique("pat"), unique("pat2")
    token = await api.user(user_id, "patient")
    await api.user(other, "patient", name="Other")

    status, answer, _ = await api.put(
        user_path(other), {"name": "Hijacked", "role": "patient"}, token=token
    )

    assert_error(status, answer, 403, "forbidden", "id")
    assert (await get_user(api, other))["name"] == "Other"


USER_BAD_BODIES = [
    ("name-missing", {"name": None}, "name"),
    ("name-empty", {"name": ""}, "name"),
    ("name-101", {"name": "n" * 101}, "name"),
    ("name-number", {"name": 7}, "name"),
    ("role-missing", {"role": None}, "role"),
    ("role-unknown", {"role": "admin"}, "role"),
    ("avatar-javascript", {"avatar": "javascript:alert(1)"}, "avatar"),
    ("avatar-1025", {"avatar": "https://x.example/" + "a" * 1007}, "avatar"),
    ("getui-65", {"getuiClientId": "c" * 65}, "getuiClientId"),
    ("getui-number", {"getuiClientId": 5}, "getuiClientId"),
    ("wechat-65", {"wechatOpenId": "o" * 65}, "wechatOpenId"),
]


@pytest.mark.parametrize(
    "changes, field",
    [case[1:] for case in USER_BAD_BODIES],
    ids=[case[0] for case in USER_BAD_BODIES],
)
@pytest.mark.gen_test(timeout=30)
async def test_put_user_with_bad_field_returns_400(api, unique, changes, field):
    user_id = unique("user")
    body = {"name": "Name", "role": "patient", **changes}
    body = {key: value for key, value in body.items() if value is not None}

    status, answer, _ = await api.put(user_path(user_id), body)

    assert_error(status, answer, 400, "invalid_argument", field)
    status, _, _ = await api.get(user_path(user_id))
    assert status == 404


@pytest.mark.parametrize("method, suffix", [
    ("PUT", ""), ("GET", ""), ("POST", "/logout"), ("GET", "/groups"),
])
@pytest.mark.gen_test(timeout=30)
async def test_long_user_path_id_returns_400(api, method, suffix):
    body = {"name": "Long", "role": "patient"} if method == "PUT" else None

    status, answer, _ = await api.request(method, user_path(LONG_ID, suffix), body=body)

    assert_error(status, answer, 400, "invalid_argument", "id")


@pytest.mark.gen_test(timeout=30)
async def test_get_user_reports_online(api, connect, unique):
    user_id = unique("pat")
    token = await api.user(user_id, "patient", name="Pat")

    offline = await get_user(api, user_id)
    await connect(token)
    online = await get_user(api, user_id, token=token)

    assert offline["online"] is False
    assert online["online"] is True
    assert online["id"] == user_id
    assert online["name"] == "Pat"
    assert online["role"] == "patient"


@pytest.mark.gen_test(timeout=30)
async def test_get_unknown_user_returns_404(api, unique):
    status, answer, _ = await api.get(user_path(unique("nobody")))

    assert_error(status, answer, 404, "not_found", "id")


@pytest.mark.gen_test(timeout=30)
async def test_put_user_by_form_body_is_accepted(api, unique):
    user_id = unique("pat")
    raw = urlencode({"name": "Form User", "role": "patient"}).encode()

    status, answer, _ = await api.put(
        user_path(user_id), raw_body=raw,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )

    assert status == 200, answer
    assert answer["name"] == "Form User"


# -- logout -------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_logout_closes_sockets_with_4001(api, connect, unique):
    user_id = unique("pat")
    token = await api.user(user_id, "patient")
    phone = await connect(token)
    laptop = await connect(token)

    status, answer, _ = await api.post(user_path(user_id, "/logout"), token=token)

    assert status == 204, answer
    assert await phone.closed() == CLOSE_UNAUTHORIZED
    assert await laptop.closed() == CLOSE_UNAUTHORIZED


@pytest.mark.gen_test(timeout=30)
async def test_logout_drops_getui_client_id(api, unique):
    user_id = unique("pat")
    await api.user(user_id, "patient", getuiClientId="cid-9", wechatOpenId="open-9")

    status, _, _ = await api.post(user_path(user_id, "/logout"))

    assert status == 204
    user = await get_user(api, user_id)
    assert user["getuiClientId"] is None
    assert user["wechatOpenId"] == "open-9"


@pytest.mark.gen_test(timeout=30)
async def test_logout_rejects_old_token(api, connect, unique):
    user_id = unique("pat")
    token = await api.user(user_id, "patient")

    await api.post(user_path(user_id, "/logout"), token=token)

    status, answer, _ = await api.get(user_path(user_id), token=token)
    assert_error(status, answer, 401, "unauthorized")
    socket = await connect(token, login=False)
    await socket.send({"type": "login", "token": token})
    assert await socket.closed() == CLOSE_UNAUTHORIZED


@pytest.mark.gen_test(timeout=30)
async def test_token_minted_after_logout_works(api, unique):
    user_id = unique("pat")
    await api.user(user_id, "patient")
    await api.post(user_path(user_id, "/logout"))
    await asyncio.sleep(0.01)

    status, answer, _ = await api.post(
        "/api/v1/tokens", {"userId": user_id, "role": "patient", "ttlSeconds": 60}
    )
    fresh = answer["token"]

    assert status == 201, answer
    assert (await get_user(api, user_id, token=fresh))["id"] == user_id


@pytest.mark.gen_test(timeout=30)
async def test_logout_of_other_user_returns_403(api, connect, unique):
    user_id, other = unique("pat"), unique("pat2")
    token = await api.user(user_id, "patient")
    other_token = await api.user(other, "patient")
    socket = await connect(other_token)

    status, answer, _ = await api.post(user_path(other, "/logout"), token=token)

    assert_error(status, answer, 403, "forbidden", "id")
    await socket.send({"type": "ping"})
    assert (await socket.expect("pong"))["type"] == "pong"


@pytest.mark.gen_test(timeout=30)
async def test_logout_of_unknown_user_returns_404(api, unique):
    status, answer, _ = await api.post(user_path(unique("nobody"), "/logout"))

    assert_error(status, answer, 404, "not_found", "id")


# -- groups -------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_create_group_with_id(api, unique):
    doctor, patient = unique("doc"), unique("pat")
    await api.user(doctor, "doctor")
    await api.user(patient, "patient")
    group_id = unique("team")

    status, answer, _ = await api.post(
        GROUPS, {"id": group_id, "name": "Family 3", "type": 2,
                 "members": [doctor, patient]},
    )

    assert status == 201, answer
    assert answer == {
        "id": group_id, "name": "Family 3", "type": 2,
        "members": answer["members"], "createdAt": answer["createdAt"],
    }
    members = sorted(answer["members"], key=lambda member: member["userId"])
    assert members == [{"userId": doctor, "role": "doctor"},
                       {"userId": patient, "role": "patient"}]
    assert isinstance(answer["createdAt"], int)


@pytest.mark.gen_test(timeout=30)
async def test_create_group_without_id_generates_one(api, unique):
    doctor = unique("doc")
    await api.user(doctor, "doctor")

    status, answer, _ = await api.post(
        GROUPS, {"name": "Unnamed", "type": 1, "members": [doctor]}
    )

    assert status == 201, answer
    assert isinstance(answer["id"], str)
    assert 1 <= len(answer["id"]) <= 64
    status, fetched, _ = await api.get(f"{GROUPS}/{answer['id']}")
    assert status == 200, fetched
    assert member_ids(fetched) == [doctor]


@pytest.mark.gen_test(timeout=30)
async def test_create_group_with_taken_id_returns_409(api, unique):
    doctor = unique("doc")
    await api.user(doctor, "doctor")
    group_id = unique("team")
    await api.group(group_id, [doctor], name="First")

    status, answer, _ = await api.post(
        GROUPS, {"id": group_id, "name": "Second", "type": 1, "members": [doctor]}
    )

    assert_error(status, answer, 409, "conflict", "id")
    status, fetched, _ = await api.get(f"{GROUPS}/{group_id}")
    assert fetched["name"] == "First"


@pytest.mark.gen_test(timeout=30)
async def test_create_group_with_unknown_member_returns_404(api, unique):
    doctor = unique("doc")
    await api.user(doctor, "doctor")
    group_id = unique("team")

    status, answer, _ = await api.post(
        GROUPS, {"id": group_id, "name": "T", "type": 1,
                 "members": [doctor, unique("nobody")]},
    )

    assert_error(status, answer, 404, "not_found", "members")
    status, _, _ = await api.get(f"{GROUPS}/{group_id}")
    assert status == 404


GROUP_BAD_BODIES = [
    ("id-65", {"id": "g" * 65}, "id"),
    ("id-number", {"id": 5}, "id"),
    ("name-missing", {"name": None}, "name"),
    ("name-101", {"name": "n" * 101}, "name"),
    ("type-missing", {"type": None}, "type"),
    ("type-string", {"type": "1"}, "type"),
    ("type-bool", {"type": True}, "type"),
    ("type-zero", {"type": 0}, "type"),
    ("members-missing", {"members": None}, "members"),
    ("members-string", {"members": "doc"}, "members"),
    ("members-65-char-id", {"members": ["m" * 65]}, "members"),
    ("members-number", {"members": [1]}, "members"),
]


@pytest.mark.parametrize(
    "changes, field",
    [case[1:] for case in GROUP_BAD_BODIES],
    ids=[case[0] for case in GROUP_BAD_BODIES],
)
@pytest.mark.gen_test(timeout=30)
async def test_create_group_with_bad_field_returns_400(api, unique, changes, field):
    doctor = unique("doc")
    await api.user(doctor, "doctor")
    body = {"id": unique("team"), "name": "T", "type": 1, "members": [doctor],
            **changes}
    body = {key: value for key, value in body.items() if value is not None}

    status, answer, _ = await api.post(GROUPS, body)

    assert_error(status, answer, 400, "invalid_argument", field)


@pytest.mark.gen_test(timeout=30)
async def test_create_group_by_form_body_is_accepted(api, unique):
    doctor, patient = unique("doc"), unique("pat")
    await api.user(doctor, "doctor")
    await api.user(patient, "patient")
    raw = urlencode({"id": unique("team"), "name": "Form team", "type": "1",
                     "members": f"{doctor},{patient}"}).encode()

    status, answer, _ = await api.post(
        GROUPS, raw_body=raw,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )

    assert status == 201, answer
    assert sorted(member_ids(answer)) == sorted([doctor, patient])


@pytest.mark.gen_test(timeout=30)
async def test_member_reads_group(api, unique):
    _, patient, _, group, tokens = await care_team(api, unique)

    status, answer, _ = await api.get(f"{GROUPS}/{group}", token=tokens[patient])

    assert status == 200, answer
    assert answer["id"] == group
    assert patient in member_ids(answer)


@pytest.mark.gen_test(timeout=30)
async def test_system_reads_group(api, unique):
    doctor, patient, other, group, _ = await care_team(api, unique)

    status, answer, _ = await api.get(f"{GROUPS}/{group}")

    assert status == 200, answer
    assert set(answer) == {"id", "name", "type", "members", "createdAt"}
    assert sorted(member_ids(answer)) == sorted([doctor, patient, other])


@pytest.mark.gen_test(timeout=30)
async def test_non_member_reading_group_returns_403(api, unique):
    _, _, _, group, _ = await care_team(api, unique)
    outsider = unique("outsider")
    token = await api.user(outsider, "doctor")

    status, answer, _ = await api.get(f"{GROUPS}/{group}", token=token)

    assert_error(status, answer, 403, "forbidden", "group")


@pytest.mark.gen_test(timeout=30)
async def test_unknown_group_returns_404(api, unique):
    status, answer, _ = await api.get(f"{GROUPS}/{unique('no-team')}")

    assert_error(status, answer, 404, "not_found", "group")


@pytest.mark.parametrize("method, suffix", [
    ("GET", ""), ("POST", "/members"), ("DELETE", "/members/someone"),
])
@pytest.mark.gen_test(timeout=30)
async def test_long_group_path_id_returns_400(api, method, suffix):
    body = {"userIds": ["someone"]} if method == "POST" else None

    status, answer, _ = await api.request(method, f"{GROUPS}/{LONG_ID}{suffix}",
                                          body=body)

    assert_error(status, answer, 400, "invalid_argument", "id")


@pytest.mark.gen_test(timeout=30)
async def test_long_member_path_id_returns_400(api, unique):
    _, _, _, group, _ = await care_team(api, unique)

    status, answer, _ = await api.delete(f"{GROUPS}/{group}/members/{LONG_ID}")

    assert_error(status, answer, 400, "invalid_argument", "userId")


@pytest.mark.gen_test(timeout=30)
async def test_add_members_returns_group(api, unique):
    _, _, _, group, _ = await care_team(api, unique)
    newcomer, second = unique("new"), unique("new2")
    await api.user(newcomer, "patient")
    await api.user(second, "doctor")

    status, answer, _ = await api.post(f"{GROUPS}/{group}/members",
                                       {"userIds": [newcomer, second]})

    assert status == 200, answer
    assert len(answer["members"]) == 5
    assert {"userId": newcomer, "role": "patient"} in answer["members"]
    assert {"userId": second, "role": "doctor"} in answer["members"]


@pytest.mark.gen_test(timeout=30)
async def test_adding_existing_member_keeps_one_entry(api, unique):
    _, patient, _, group, _ = await care_team(api, unique)

    status, answer, _ = await api.post(f"{GROUPS}/{group}/members",
                                       {"userIds": [patient]})

    assert status == 200, answer
    assert member_ids(answer).count(patient) == 1


@pytest.mark.gen_test(timeout=30)
async def test_add_unknown_member_returns_404(api, unique):
    _, _, _, group, _ = await care_team(api, unique)
    before = (await api.get(f"{GROUPS}/{group}"))[1]

    status, answer, _ = await api.post(f"{GROUPS}/{group}/members",
                                       {"userIds": [unique("nobody")]})

    assert_error(status, answer, 404, "not_found", "userIds")
    assert (await api.get(f"{GROUPS}/{group}"))[1] == before


@pytest.mark.gen_test(timeout=30)
async def test_add_members_to_unknown_group_returns_404(api, unique):
    newcomer = unique("new")
    await api.user(newcomer, "patient")

    status, answer, _ = await api.post(f"{GROUPS}/{unique('no-team')}/members",
                                       {"userIds": [newcomer]})

    assert_error(status, answer, 404, "not_found", "group")


@pytest.mark.parametrize("body, field", [
    ({"userIds": []}, "userIds"),
    ({}, "userIds"),
    ({"userIds": "someone"}, "userIds"),
])
@pytest.mark.gen_test(timeout=30)
async def test_add_members_with_bad_body_returns_400(api, unique, body, field):
    _, _, _, group, _ = await care_team(api, unique)

    status, answer, _ = await api.post(f"{GROUPS}/{group}/members", body)

    assert_error(status, answer, 400, "invalid_argument", field)


@pytest.mark.gen_test(timeout=30)
async def test_added_member_starts_with_nothing_unread(api, unique):
    doctor, _, _, group, _ = await care_team(api, unique)
    for n in range(3):
        await send_gm(api, doctor, group, f"before {n}")
    newcomer = unique("new")
    await api.user(newcomer, "patient")

    await api.post(f"{GROUPS}/{group}/members", {"userIds": [newcomer]})

    state = await recent(api, newcomer)
    assert state["totalUnread"] == 0


@pytest.mark.gen_test(timeout=30)
async def test_added_member_counts_later_messages(api, connect, unique):
    doctor, _, _, group, _ = await care_team(api, unique)
    await send_gm(api, doctor, group, "before")
    newcomer = unique("new")
    token = await api.user(newcomer, "patient")
    await api.post(f"{GROUPS}/{group}/members", {"userIds": [newcomer]})
    socket = await connect(token)

    later = await send_gm(api, doctor, group, "after")

    frame = await socket.expect("message")
    assert frame["message"] == later
    state = await recent(api, newcomer)
    assert state["totalUnread"] == 1


@pytest.mark.gen_test(timeout=30)
async def test_added_member_reading_old_message_keeps_unread(api, unique):
    doctor, _, _, group, _ = await care_team(api, unique)
    old = [await send_gm(api, doctor, group, f"before {n}") for n in range(3)]
    newcomer = unique("new")
    await api.user(newcomer, "patient")
    await api.post(f"{GROUPS}/{group}/members", {"userIds": [newcomer]})
    await send_gm(api, doctor, group, "after")

    status, answer, _ = await api.post(
        "/api/v1/chats/read",
        {"userId": newcomer, "channel": "group", "group": group,
         "upToId": old[0]["id"]},
    )

    assert status == 200, answer
    assert answer["unread"] == 1


@pytest.mark.gen_test(timeout=30)
async def test_old_message_recall_spares_new_member(api, unique):
    doctor, _, _, group, _ = await care_team(api, unique)
    old = await send_gm(api, doctor, group, "before")
    newcomer = unique("new")
    await api.user(newcomer, "patient")
    await api.post(f"{GROUPS}/{group}/members", {"userIds": [newcomer]})
    await send_gm(api, doctor, group, "after")

    status, _, _ = await api.delete(f"/api/v1/chats/gm/{old['id']}")

    assert status == 200
    assert (await recent(api, newcomer))["totalUnread"] == 1


@pytest.mark.gen_test(timeout=30)
async def test_remove_member_returns_204(api, unique):
    _, patient, _, group, _ = await care_team(api, unique)

    status, answer, _ = await api.delete(f"{GROUPS}/{group}/members/{patient}")

    assert status == 204, answer
    status, fetched, _ = await api.get(f"{GROUPS}/{group}")
    assert patient not in member_ids(fetched)


@pytest.mark.gen_test(timeout=30)
async def test_removed_member_gets_no_live_frames(api, connect, unique):
    doctor, patient, other, group, tokens = await care_team(api, unique)
    removed_socket = await connect(tokens[patient])
    other_socket = await connect(tokens[other])

    await api.delete(f"{GROUPS}/{group}/members/{patient}")
    await send_gm(api, doctor, group, "after removal")

    await other_socket.expect("message")
    await removed_socket.no_frame()


@pytest.mark.gen_test(timeout=30)
async def test_removed_member_cannot_read_history(api, unique):
    doctor, patient, _, group, tokens = await care_team(api, unique)
    await send_gm(api, doctor, group, "before removal")

    await api.delete(f"{GROUPS}/{group}/members/{patient}")

    params = urlencode({"user_id": patient, "group": group})
    status, answer, _ = await api.get(f"/api/v1/chats/gm?{params}",
                                      token=tokens[patient])
    assert_error(status, answer, 403, "forbidden", "group")


@pytest.mark.gen_test(timeout=30)
async def test_removing_member_drops_group_unread(api, unique):
    doctor, patient, _, group, _ = await care_team(api, unique)
    await send_gm(api, doctor, group, "one")
    await send_gm(api, doctor, group, "two")
    body = {"from": doctor, "to": patient, "contentType": 1, "content": "pm"}
    await api.post("/api/v1/chats/pm", body)

    await api.delete(f"{GROUPS}/{group}/members/{patient}")

    state = await recent(api, patient)
    assert state["totalUnread"] == 1
    channels = [conversation["channel"] for conversation in state["conversations"]]
    assert channels == ["p2p"]


@pytest.mark.gen_test(timeout=30)
async def test_removed_member_sending_returns_403(api, unique):
    _, patient, other, group, tokens = await care_team(api, unique)
    await api.delete(f"{GROUPS}/{group}/members/{patient}")

    status, answer, _ = await api.post(
        GM, {"from": patient, "group": group, "contentType": 1, "content": "hi"},
        token=tokens[patient],
    )

    assert_error(status, answer, 403, "forbidden", "group")
    assert (await recent(api, other))["totalUnread"] == 0


@pytest.mark.gen_test(timeout=30)
async def test_removing_non_member_returns_404(api, unique):
    _, _, _, group, _ = await care_team(api, unique)
    outsider = unique("outsider")
    await api.user(outsider, "patient")

    status, answer, _ = await api.delete(f"{GROUPS}/{group}/members/{outsider}")

    assert_error(status, answer, 404, "not_found", "userId")


@pytest.mark.gen_test(timeout=30)
async def test_removing_from_unknown_group_returns_404(api, unique):
    patient = unique("pat")
    await api.user(patient, "patient")

    status, answer, _ = await api.delete(
        f"{GROUPS}/{unique('no-team')}/members/{patient}"
    )

    assert_error(status, answer, 404, "not_found", "group")


@pytest.mark.gen_test(timeout=30)
async def test_user_groups_lists_memberships(api, unique):
    doctor, patient, _, group, tokens = await care_team(api, unique)
    second = unique("team2")
    await api.group(second, [doctor])

    status, answer, _ = await api.get(user_path(patient, "/groups"),
                                      token=tokens[patient])
    doctor_groups = (await api.get(user_path(doctor, "/groups")))[1]

    assert status == 200, answer
    assert [g["id"] for g in answer["groups"]] == [group]
    assert {"userId": patient, "role": "patient"} in answer["groups"][0]["members"]
    assert sorted(g["id"] for g in doctor_groups["groups"]) == sorted([group, second])


@pytest.mark.gen_test(timeout=30)
async def test_user_groups_of_unknown_user_returns_404(api, unique):
    status, answer, _ = await api.get(user_path(unique("nobody"), "/groups"))

    assert_error(status, answer, 404, "not_found", "id")


@pytest.mark.gen_test(timeout=30)
async def test_user_groups_of_other_user_returns_403(api, unique):
    _, patient, other, _, tokens = await care_team(api, unique)

    status, answer, _ = await api.get(user_path(other, "/groups"),
                                      token=tokens[patient])

    assert_error(status, answer, 403, "forbidden", "id")
