"""Authorization matrix: every REST endpoint and socket frame against every caller.

Each test builds a small world around one patient, the *subject*. Around
it are its doctor (``other_doctor``, its p2p peer but not in its group), a
patient outside the group (``other_patient``), a doctor in its group
(``member``), a patient removed from the group (``removed_member``) and a
user who watches typing frames. The test sends one request, or one frame,
as each caller and compares the whole row of outcomes with the expected row.

Bad-token callers (``expired``, ``other_secret``, ``alg_none``) hold
tokens for the subject, so only the token itself can make them fail.
"""

import asyncio
import dataclasses
import json
import time
from urllib.parse import urlencode

import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from hardening_support import bad_tokens

BAD_TOKEN_CALLERS = ("expired", "other_secret", "alg_none")
# Callers that succeed last, so that a logout or a removal by one of them
# cannot change what the others get.
CALLERS = ("no_token", *BAD_TOKEN_CALLERS, "other_doctor", "other_patient",
           "member", "removed_member", "self", "system")
ERROR_CODES = {400: "invalid_argument", 401: "unauthorized", 403: "forbidden",
               404: "not_found"}
TEXT = {"contentType": 1, "content": "hello"}
ANSWER_SECONDS = 3
QUIET_SECONDS = 0.25


@dataclasses.dataclass
class World:
    subject: str
    other_doctor: str
    other_patient: str
    member: str
    removed_member: str
    watcher: str
    spare: str
    group: str
    tokens: dict

    def acting(self, caller):
        """The user a caller acts as: itself, or the subject for system and bad tokens."""
        if caller in ("self", "system", "no_token", *BAD_TOKEN_CALLERS):
            return self.subject
        return getattr(self, caller)

    def socket_user(self, caller):
        """The user a caller's socket logs in as."""
        return "platform" if caller == "system" else self.acting(caller)


async def build_world(api, im, unique):
    world = World(
        subject=unique("subject"), other_doctor=unique("doctor"),
        other_patient=unique("patient"), member=unique("member"),
        removed_member=unique("removed"), watcher=unique("watcher"),
        spare=unique("spare"), group=unique("team"), tokens={},
    )
    roles = {"subject": "patient", "other_doctor": "doctor",
             "other_patient": "patient", "member": "doctor",
             "removed_member": "patient", "watcher": "doctor", "spare": "patient"}
    for name, role in roles.items():
        world.tokens[name] = await api.user(getattr(world, name), role)
    world.tokens["self"] = world.tokens.pop("subject")
    world.tokens["system"] = api.system_token
    world.tokens["no_token"] = ""
    world.tokens.update(bad_tokens(im.tokens, world.subject))

    await api.group(world.group, [world.subject, world.member, world.removed_member,
                                  world.watcher])
    status, answer, _ = await api.delete(
        f"/api/v1/groups/{world.group}/members/{world.removed_member}")
    assert status == 204, answer
    await send(api, "pm", {"from": world.other_doctor, "to": world.subject, **TEXT})
    await send(api, "gm", {"from": world.member, "group": world.group, **TEXT})
    await send(api, "sm", {"to": world.subject, "title": "t", "summary": "", **TEXT})
    return world


async def send(api, kind, body, expected=201):
    status, answer, _ = await api.post(f"/api/v1/chats/{kind}", body)
    assert status == expected, answer
    return answer


def row(ok, allowed=("self", "system"), denied=403, auth=True, **overrides):
    """Expected outcomes by caller: ``ok`` for ``allowed``, ``denied`` for the rest.

    With ``auth`` the bad-token and no-token callers get 401 unauthorized.
    ``overrides`` set single callers.
    """
    expected = {caller: ok if caller in allowed else denied for caller in CALLERS}
    if auth:
        for caller in ("no_token", *BAD_TOKEN_CALLERS):
            expected[caller] = 401
    expected.update(overrides)
    return {caller: _outcome(status) for caller, status in expected.items()}


def _outcome(status):
    return status if status < 400 else (status, ERROR_CODES[status])


# -- REST requests, one builder per row ----------------------------------------
# A builder returns (method, path, body) for one caller. It may create what
# that caller acts on first (a message to recall, a delayed send), so that
# every caller meets the same state.


def query(path, **params):
    return f"{path}?{urlencode(params)}"


async def pm_history(api, w, caller):
    return "GET", query("/api/v1/chats/pm", user_id=w.subject), None


async def pm_history_with_peer(api, w, caller):
    return "GET", query("/api/v1/chats/pm", user_id=w.subject, peer_id=w.other_doctor), None


async def gm_history_of_subject(api, w, caller):
    return "GET", query("/api/v1/chats/gm", user_id=w.subject, group=w.group), None


async def sm_history(api, w, caller):
    return "GET", query("/api/v1/chats/sm", user_id=w.subject), None


async def recent(api, w, caller):
    return "GET", query("/api/v1/chats/recent", user_id=w.subject), None


async def read_mark(api, w, caller):
    body = {"userId": w.subject, "channel": "p2p", "peer": w.other_doctor, "upToId": 1}
    return "POST", "/api/v1/chats/read", body


async def send_pm_as_subject(api, w, caller):
    return "POST", "/api/v1/chats/pm", {"from": w.subject, "to": w.other_doctor, **TEXT}


async def send_gm_as_subject(api, w, caller):
    return "POST", "/api/v1/chats/gm", {"from": w.subject, "group": w.group, **TEXT}


async def send_sm(api, w, caller):
    body = {"to": w.subject, "title": "Results", "summary": "", **TEXT}
    return "POST", "/api/v1/chats/sm", body


async def recall_pm(api, w, caller):
    answer = await send(api, "pm", {"from": w.subject, "to": w.other_doctor, **TEXT})
    return "DELETE", f"/api/v1/chats/pm/{answer['message']['id']}", None


async def recall_gm(api, w, caller):
    answer = await send(api, "gm", {"from": w.subject, "group": w.group, **TEXT})
    return "DELETE", f"/api/v1/chats/gm/{answer['message']['id']}", None


async def recall_sm(api, w, caller):
    answer = await send(api, "sm", {"to": w.subject, "title": "t", "summary": "", **TEXT})
    return "DELETE", f"/api/v1/chats/sm/{answer['message']['id']}", None


async def cancel_scheduled(api, w, caller):
    send_at = int(time.time() * 1000) + 24 * 3600 * 1000
    body = {"from": w.subject, "to": w.other_doctor, "sendAt": send_at, **TEXT}
    answer = await send(api, "pm", body, expected=202)
    return "DELETE", f"/api/v1/chats/scheduled/{answer['scheduled']['id']}", None


async def put_user(api, w, caller):
    return "PUT", f"/api/v1/users/{w.subject}", {"name": "Zhang", "role": "patient"}


async def get_user(api, w, caller):
    return "GET", f"/api/v1/users/{w.subject}", None


async def user_groups(api, w, caller):
    return "GET", f"/api/v1/users/{w.subject}/groups", None


async def logout(api, w, caller):
    return "POST", f"/api/v1/users/{w.subject}/logout", None


async def create_group(api, w, caller):
    body = {"id": f"{w.group}-{caller}", "name": "new team", "type": 1,
            "members": [w.subject]}
    return "POST", "/api/v1/groups", body


async def add_members(api, w, caller):
    return "POST", f"/api/v1/groups/{w.group}/members", {"userIds": [w.spare]}


async def remove_member(api, w, caller):
    return "DELETE", f"/api/v1/groups/{w.group}/members/{w.watcher}", None


async def get_group(api, w, caller):
    return "GET", f"/api/v1/groups/{w.group}", None


async def mint_token(api, w, caller):
    return "POST", "/api/v1/tokens", {"userId": w.subject, "role": "patient"}


async def get_status(api, w, caller):
    return "GET", "/api/v1/status", None


async def get_metrics(api, w, caller):
    return "GET", "/metrics", None


async def gm_history_as_caller(api, w, caller):
    return "GET", query("/api/v1/chats/gm", user_id=w.acting(caller), group=w.group), None


async def send_gm_as_caller(api, w, caller):
    return "POST", "/api/v1/chats/gm", {"from": w.acting(caller), "group": w.group, **TEXT}


async def read_group_as_caller(api, w, caller):
    body = {"userId": w.acting(caller), "channel": "group", "group": w.group,
            "upToId": 1}
    return "POST", "/api/v1/chats/read", body


async def health(api, w, caller):
    return "GET", "/health", None


async def wechat_callback(api, w, caller):
    return "GET", "/wechat/callback?signature=x&timestamp=1&nonce=2&echostr=e", None


async def sdk_file(api, w, caller):
    return "GET", "/sdk/im.client.js", None


async def unknown_path(api, w, caller):
    return "GET", "/api/v1/nothing-here", None


GROUP_MEMBERS = ("self", "member", "system")

REST_ROWS = {
    # Reading or changing the subject's own things: itself and system only.
    "pm_history": (pm_history, row(200)),
    "pm_history_with_peer": (pm_history_with_peer, row(200)),
    "gm_history_of_subject": (gm_history_of_subject, row(200)),
    "sm_history": (sm_history, row(200)),
    "recent": (recent, row(200)),
    "read_mark": (read_mark, row(200)),
    "send_pm_as_subject": (send_pm_as_subject, row(201)),
    "send_gm_as_subject": (send_gm_as_subject, row(201)),
    "recall_pm": (recall_pm, row(200)),
    "recall_gm": (recall_gm, row(200)),
    "cancel_scheduled": (cancel_scheduled, row(204)),
    "put_user": (put_user, row(200)),
    "get_user": (get_user, row(200)),
    "user_groups": (user_groups, row(200)),
    "logout": (logout, row(204)),
    # System only: a patient sends no system message and manages no group.
    "send_sm": (send_sm, row(201, allowed=("system",))),
    "recall_sm": (recall_sm, row(200, allowed=("system",))),
    "create_group": (create_group, row(201, allowed=("system",))),
    "add_members": (add_members, row(200, allowed=("system",))),
    "remove_member": (remove_member, row(204, allowed=("system",))),
    "mint_token": (mint_token, row(201, allowed=("system",))),
    "status": (get_status, row(200, allowed=("system",))),
    "metrics": (get_metrics, row(200, allowed=("system",))),
    # Group membership, each caller acting as itself.
    "get_group": (get_group, row(200, allowed=GROUP_MEMBERS)),
    "gm_history_as_caller": (gm_history_as_caller, row(200, allowed=GROUP_MEMBERS)),
    "send_gm_as_caller": (send_gm_as_caller, row(201, allowed=GROUP_MEMBERS)),
    "read_group_as_caller": (read_group_as_caller, row(200, allowed=GROUP_MEMBERS)),
    # No token needed, and no token changes the response.
    "health": (health, row(200, allowed=CALLERS, auth=False)),
    "wechat_callback_unconfigured": (wechat_callback, row(404, allowed=CALLERS, auth=False)),
    "sdk_file": (sdk_file, row(200, allowed=CALLERS, auth=False)),
    "unknown_path": (unknown_path, row(404, allowed=CALLERS, auth=False)),
}


def test_matrix_covers_every_route(app):
    # One concrete path per route that the rows above (or the socket tests
    # below) call; a new route fails here until it gets a row.
    described = {"/api/v1/chats/recent", "/api/v1/chats/read",
                 "/api/v1/chats/scheduled/1", "/api/v1/chats/pm", "/api/v1/chats/gm",
                 "/api/v1/chats/sm", "/api/v1/chats/pm/1", "/api/v1/chats/gm/1",
                 "/api/v1/chats/sm/1", "/api/v1/users/u", "/api/v1/users/u/logout",
                 "/api/v1/users/u/groups", "/api/v1/groups", "/api/v1/groups/g",
                 "/api/v1/groups/g/members", "/api/v1/groups/g/members/u",
                 "/api/v1/tokens", "/metrics", "/health", "/api/v1/status",
                 "/wechat/callback", "/ws", "/sdk/im.client.js", "/chat"}

    routes = [rule.matcher.regex for rule in app.wildcard_router.rules]

    unmatched = [regex.pattern for regex in routes
                 if not any(regex.fullmatch(path) for path in described)]
    assert unmatched == []


@pytest.mark.parametrize("name", list(REST_ROWS))
@pytest.mark.gen_test(timeout=60)
async def test_rest_endpoint_by_caller(api, im, unique, name):
    build, expected = REST_ROWS[name]
    world = await build_world(api, im, unique)

    answers = {}
    for caller in CALLERS:
        method, path, body = await build(api, world, caller)
        status, answer, _ = await api.request(method, path, body=body,
                                              token=world.tokens[caller])
        answers[caller] = _answer(status, answer)

    assert answers == expected


def _answer(status, answer):
    if status < 400:
        return status
    code = answer["error"]["code"] if isinstance(answer, dict) else None
    return status, code


# -- WebSocket frames -----------------------------------------------------------
# Each frame is sent on a socket of its own, after a login frame with the
# caller's token. The outcome names the first reply (frame type, error
# code or close code), with "+closed:CODE" when the server then closed the
# socket.

FRAME_ROWS = {}


def frame_row(name, build, expected):
    FRAME_ROWS[name] = (build, expected)


def ws_row(ok, allowed=CALLERS[4:], denied="error:forbidden", **overrides):
    expected = {caller: ok if caller in allowed else denied for caller in CALLERS}
    expected["no_token"] = "error:unauthorized+closed:4001"
    for caller in BAD_TOKEN_CALLERS:
        expected[caller] = "closed:4001"
    expected.update(overrides)
    return expected


frame_row("ping", lambda w: {"type": "ping"}, ws_row("pong"))
frame_row("second_login", lambda w: {"type": "login", "token": w.tokens["self"]},
          ws_row("error:invalid_argument",
                 no_token="welcome"))
frame_row("unknown_type", lambda w: {"type": "shout"}, ws_row("error:invalid_argument"))
frame_row("send_p2p", lambda w: {"type": "send", "channel": "p2p", "to": w.watcher,
                                 "clientMsgId": "c1", **TEXT},
          ws_row("sent"))
frame_row("send_group", lambda w: {"type": "send", "channel": "group", "group": w.group,
                                   "clientMsgId": "c1", **TEXT},
          ws_row("sent", allowed=("self", "member")))
frame_row("sync", lambda w: {"type": "sync"}, ws_row("synced"))
frame_row("read_p2p", lambda w: {"type": "read", "channel": "p2p", "peer": w.watcher,
                                 "upToId": 1},
          ws_row("unread"))
frame_row("read_group", lambda w: {"type": "read", "channel": "group", "group": w.group,
                                   "upToId": 1},
          ws_row("unread", allowed=("self", "member")))
frame_row("read_system", lambda w: {"type": "read", "channel": "system", "upToId": 1},
          ws_row("unread"))
frame_row("typing_p2p", lambda w: {"type": "typing", "to": w.watcher},
          ws_row("typing_delivered"))
frame_row("typing_group", lambda w: {"type": "typing", "group": w.group},
          ws_row("typing_delivered", allowed=("self", "member")))

# Frames that only answer, with nothing else to wait for.
IGNORED_FRAMES = {"welcome", "message", "receipt", "typing", "recalled", "unread"}


async def open_socket(base_url, token=None):
    url = base_url.replace("http://", "ws://") + "/ws"
    if token is not None:
        url += f"?token={token}"
    return await websocket_connect(HTTPRequest(url))


async def next_frame(connection, timeout):
    """Return the next frame as a dict, None once closed, or raise TimeoutError."""
    raw = await asyncio.wait_for(connection.read_message(), timeout)
    return None if raw is None else json.loads(raw)


async def login(connection, token):
    """Log in; return "welcome" or how the socket ended."""
    await connection.write_message(json.dumps({"type": "login", "token": token}))
    frame = await next_frame(connection, ANSWER_SECONDS)
    if frame is None:
        return f"closed:{connection.close_code}"
    return frame["type"]


async def frame_outcome(connection, frame, observer, world, caller):
    """Send ``frame`` and name what came back (see the section comment)."""
    try:
        await connection.write_message(json.dumps(frame))
    except Exception:  # noqa: BLE001 - a closed socket is the outcome
        return f"closed:{connection.close_code}"
    expects_typing = frame["type"] == "typing"
    wanted = {"pong", "sent", "synced", "error", "unread", "welcome"}
    if frame["type"] != "read":
        wanted.discard("unread")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (QUIET_SECONDS if expects_typing else ANSWER_SECONDS)
    synced = []
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            reply = await next_frame(connection, remaining)
        except asyncio.TimeoutError:
            break
        if reply is None:
            return f"closed:{connection.close_code}"
        if reply["type"] == "message":
            synced.append(reply["message"])
        if reply["type"] not in wanted:
            continue
        if reply["type"] == "synced" and reply["channel"] != "system":
            continue
        outcome = reply["type"]
        if reply["type"] == "error":
            outcome = f"error:{reply['code']}"
        elif reply["type"] == "synced":
            foreign = [m for m in synced if not visible_to(m, world, caller)]
            if foreign:
                outcome = f"synced with foreign messages {foreign}"
        return outcome + await closed_suffix(connection)
    if expects_typing:
        return await typing_outcome(observer, world, caller)
    return "no answer"


def visible_to(message, world, caller):
    user = world.socket_user(caller)
    if message["channel"] == "group":
        return user in (world.subject, world.member, world.watcher)
    return user in (message.get("from"), message.get("to"))


async def typing_outcome(observer, world, caller):
    try:
        while True:
            frame = await next_frame(observer, ANSWER_SECONDS)
            if frame is None:
                return "observer closed"
            if frame["type"] == "typing" and frame["from"] == world.socket_user(caller):
                return "typing_delivered"
    except asyncio.TimeoutError:
        return "no answer"


async def closed_suffix(connection):
    """Return "+closed:CODE" when the server closes the socket right after."""
    try:
        await connection.write_message('{"type": "ping"}')
        while True:
            frame = await next_frame(connection, ANSWER_SECONDS)
            if frame is None:
                return f"+closed:{connection.close_code}"
            if frame["type"] == "pong":
                return ""
    except Exception:  # noqa: BLE001 - writing to a closed socket
        return f"+closed:{connection.close_code}"


@pytest.mark.parametrize("name", list(FRAME_ROWS))
@pytest.mark.gen_test(timeout=90)
async def test_socket_frame_by_caller(api, im, base_url, unique, name):
    build, expected = FRAME_ROWS[name]
    world = await build_world(api, im, unique)
    observer = await open_socket(base_url, world.tokens["watcher"])
    assert (await next_frame(observer, ANSWER_SECONDS))["type"] == "welcome"

    outcomes = {}
    for caller in CALLERS:
        connection = await open_socket(base_url)
        logged_in = "welcome"
        if caller != "no_token":
            logged_in = await login(connection, world.tokens[caller])
        if logged_in == "welcome":
            outcomes[caller] = await frame_outcome(connection, build(world), observer,
                                                   world, caller)
        else:
            outcomes[caller] = logged_in
        connection.close()

    observer.close()
    assert outcomes == expected


@pytest.mark.parametrize("caller", ["self", *BAD_TOKEN_CALLERS])
@pytest.mark.gen_test(timeout=30)
async def test_query_token_by_caller(api, im, base_url, unique, caller):
    world = await build_world(api, im, unique)
    expected = "welcome" if caller == "self" else "closed:4001"

    connection = await open_socket(base_url, world.tokens[caller])
    frame = await next_frame(connection, ANSWER_SECONDS)

    outcome = frame["type"] if frame else f"closed:{connection.close_code}"
    assert outcome == expected
    connection.close()
