"""WebSocket authentication: tokens, welcome, expiry, logout, token-free logs."""

import logging
import time

import pytest

from services.auth import TokenService

CLOSE_UNAUTHORIZED = 4001
OTHER_SECRET = "another-secret-that-did-not-sign-0123456789"


def bad_tokens(im, user_id):
    """Tokens the server must reject, by name."""
    expired, _ = im.tokens.mint(user_id, "patient", 60, now=time.time() - 120)
    foreign, _ = TokenService(OTHER_SECRET).mint(user_id, "patient", 3600)
    valid, _ = im.tokens.mint(user_id, "patient", 3600)
    return {
        "garbage": "not-a-jwt",
        "expired": expired,
        "wrong_signature": foreign,
        "truncated": valid[:-4],
    }


BAD_TOKEN_NAMES = ["garbage", "expired", "wrong_signature", "truncated"]


# -- logging in ---------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_query_token_gets_welcome(api, connect, unique):
    patient = unique("pat")
    token = await api.user(patient)

    socket = await connect(token, query_token=True, login=False)

    frame = await socket.recv()
    assert frame == {"type": "welcome", "userId": patient, "totalUnread": 0}


@pytest.mark.gen_test(timeout=30)
async def test_login_frame_gets_welcome(api, connect, unique):
    patient = unique("pat")
    token = await api.user(patient)
    socket = await connect(login=False)

    await socket.send({"type": "login", "token": token})

    frame = await socket.recv()
    assert frame == {"type": "welcome", "userId": patient, "totalUnread": 0}


@pytest.mark.gen_test(timeout=30)
async def test_welcome_counts_unread_of_every_channel(api, connect, unique):
    doctor, patient, team = unique("doc"), unique("pat"), unique("team")
    await api.user(doctor, "doctor")
    token = await api.user(patient)
    await api.group(team, [doctor, patient])
    text = {"contentType": 1, "content": "hello"}
    system = {"to": patient, "title": "Notice", "summary": "Results", **text}
    for path, body in [
        ("pm", {"from": doctor, "to": patient, **text}),
        ("pm", {"from": doctor, "to": patient, **text}),
        ("gm", {"from": doctor, "group": team, **text}),
        ("sm", system),
    ]:
        status, answer, _ = await api.post(f"/api/v1/chats/{path}", body)
        assert status == 201, answer

    socket = await connect(token, query_token=True, login=False)

    frame = await socket.recv()
    assert frame["type"] == "welcome"
    assert frame["totalUnread"] == 4


@pytest.mark.parametrize("name", BAD_TOKEN_NAMES)
@pytest.mark.gen_test(timeout=30)
async def test_bad_query_token_closes_4001(api, im, connect, unique, name):
    patient = unique("pat")
    await api.user(patient)
    token = bad_tokens(im, patient)[name]

    socket = await connect(token, query_token=True, login=False)

    assert await socket.closed() == CLOSE_UNAUTHORIZED


@pytest.mark.parametrize("name", BAD_TOKEN_NAMES)
@pytest.mark.gen_test(timeout=30)
async def test_bad_login_token_closes_4001(api, im, connect, unique, name):
    patient = unique("pat")
    await api.user(patient)
    socket = await connect(login=False)

    await socket.send({"type": "login", "token": bad_tokens(im, patient)[name]})

    assert await socket.closed() == CLOSE_UNAUTHORIZED


@pytest.mark.parametrize("frame", [
    {"type": "login"},
    {"type": "login", "token": ""},
    {"type": "login", "token": None},
    {"type": "login", "token": 12345},
], ids=["absent", "empty", "null", "number"])
@pytest.mark.gen_test(timeout=30)
async def test_login_without_token_closes_4001(im, connect, frame):
    # ``im`` is unused, but it puts the test on every database backend.
    socket = await connect(login=False)

    await socket.send(frame)

    assert await socket.closed() == CLOSE_UNAUTHORIZED


@pytest.mark.gen_test(timeout=30)
async def test_first_frame_other_than_login_closes_4001(api, connect, unique):
    await api.user(unique("pat"))
    socket = await connect(login=False)

    await socket.send({"type": "ping"})

    assert await socket.closed() == CLOSE_UNAUTHORIZED


@pytest.mark.gen_test(timeout=30)
async def test_no_login_within_timeout_closes_4001(im, connect):
    im.config.ws_login_timeout_seconds = 0.3
    socket = await connect(login=False)

    code = await socket.closed()

    assert code == CLOSE_UNAUTHORIZED


@pytest.mark.gen_test(timeout=30)
async def test_login_before_timeout_keeps_socket_open(api, im, connect, unique):
    im.config.ws_login_timeout_seconds = 0.5
    token = await api.user(unique("pat"))
    socket = await connect(token)

    await socket.no_frame(1.0)
    await socket.send({"type": "ping"})

    assert await socket.expect("pong") == {"type": "pong"}


# -- while connected ----------------------------------------------------------


@pytest.mark.parametrize("query_token", [True, False], ids=["query", "login_frame"])
@pytest.mark.gen_test(timeout=30)
async def test_token_expiry_closes_4001(api, im, connect, unique, query_token):
    patient = unique("pat")
    await api.user(patient)
    token, _ = im.tokens.mint(patient, "patient", 2)
    socket = await connect(token, query_token=query_token)

    code = await socket.closed(timeout=6)

    assert code == CLOSE_UNAUTHORIZED


@pytest.mark.gen_test(timeout=30)
async def test_logout_closes_every_socket_4001(api, connect, unique):
    patient, other = unique("pat"), unique("other")
    token = await api.user(patient)
    other_token = await api.user(other)
    phone = await connect(token)
    browser = await connect(token, query_token=True)
    bystander = await connect(other_token)

    status, _, _ = await api.post(f"/api/v1/users/{patient}/logout")

    assert status == 204
    assert await phone.closed() == CLOSE_UNAUTHORIZED
    assert await browser.closed() == CLOSE_UNAUTHORIZED
    await bystander.send({"type": "ping"})
    assert await bystander.expect("pong") == {"type": "pong"}


@pytest.mark.gen_test(timeout=30)
async def test_own_logout_closes_own_sockets(api, connect, unique):
    patient = unique("pat")
    token = await api.user(patient)
    socket = await connect(token)

    status, _, _ = await api.post(f"/api/v1/users/{patient}/logout", token=token)

    assert status == 204
    assert await socket.closed() == CLOSE_UNAUTHORIZED


# -- logs ---------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_server_never_logs_tokens(api, im, connect, unique, caplog):
    patient = unique("pat")
    await api.user(patient)
    query_token, _ = im.tokens.mint(patient, "patient", 3600)
    frame_token, _ = im.tokens.mint(patient, "patient", 1800)
    expiring_token, _ = im.tokens.mint(patient, "patient", 1)
    rejected = bad_tokens(im, patient)
    caplog.set_level(logging.DEBUG)

    await connect(query_token, query_token=True)
    await connect(frame_token)
    expiring = await connect(expiring_token)
    await expiring.closed(timeout=5)
    for token in rejected.values():
        by_query = await connect(token, query_token=True, login=False)
        await by_query.closed()
        by_frame = await connect(login=False)
        await by_frame.send({"type": "login", "token": token})
        await by_frame.closed()

    # The user id shows that the socket logs were captured at all.
    assert patient in caplog.text
    for token in [query_token, frame_token, expiring_token, *rejected.values()]:
        assert token not in caplog.text
    # A JWT's signature is its last part; a partial leak would show it.
    assert query_token.rsplit(".", 1)[1] not in caplog.text
