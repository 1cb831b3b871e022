"""REST authentication, authorization, request bodies and error responses."""

import base64
import json
import time
from urllib.parse import urlencode

import jwt
import pytest
from sqlalchemy.exc import IntegrityError

from models.db import DatabaseUnavailable
from models.user import TalkUser
from assertions import assert_error

PM = "/api/v1/chats/pm"
GM = "/api/v1/chats/gm"
SM = "/api/v1/chats/sm"
TOKENS = "/api/v1/tokens"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
MAX_BODY_BYTES = 64 * 1024


def pm_body(sender, to, /, **changes):
    body = {"from": sender, "to": to, "contentType": 1, "content": "hello"}
    body.update(changes)
    return body


def b64url(data):
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def claims_for(user_id, role="system", lifetime_seconds=600):
    now = int(time.time())
    return {"sub": user_id, "role": role, "iat": now, "exp": now + lifetime_seconds}


async def pair(api, unique):
    doctor, patient = unique("doc"), unique("pat")
    tokens = {
        doctor: await api.user(doctor, "doctor"),
        patient: await api.user(patient, "patient"),
    }
    return doctor, patient, tokens


async def pm_count(api, user_id):
    status, answer, _ = await api.get(f"/api/v1/chats/pm?user_id={user_id}&limit=100")
    assert status == 200, answer
    return len(answer["messages"])


# -- authentication -----------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_request_without_token_returns_401(api, unique):
    doctor, _, _ = await pair(api, unique)

    status, answer, _ = await api.get(f"/api/v1/users/{doctor}", token="")

    assert_error(status, answer, 401, "unauthorized")


@pytest.mark.parametrize("header", [
    "Basic dXNlcjpwYXNz",
    "Bearer",
    "Bearer ",
    "Token abc.def.ghi",
    "bearer-abc",
])
@pytest.mark.gen_test(timeout=30)
async def test_malformed_authorization_header_returns_401(api, unique, header):
    doctor, _, _ = await pair(api, unique)

    status, answer, _ = await api.get(f"/api/v1/users/{doctor}",
                                      headers={"Authorization": header})

    assert_error(status, answer, 401, "unauthorized")


@pytest.mark.parametrize("token", [
    "not-a-jwt",
    "a.b.c",
    "eyJhbGciOiJIUzI1NiJ9.e30",
    "....",
])
@pytest.mark.gen_test(timeout=30)
async def test_malformed_token_returns_401(api, unique, token):
    doctor, _, _ = await pair(api, unique)

    status, answer, _ = await api.get(f"/api/v1/users/{doctor}", token=token)

    assert_error(status, answer, 401, "unauthorized")


@pytest.mark.gen_test(timeout=30)
async def test_token_with_wrong_secret_returns_401(api, unique):
    doctor, _, _ = await pair(api, unique)
    forged = jwt.encode(claims_for(doctor, "doctor"),
                        "another-secret-of-at-least-32-bytes!!", algorithm="HS256")

    status, answer, _ = await api.get(f"/api/v1/users/{doctor}", token=forged)

    assert_error(status, answer, 401, "unauthorized")


@pytest.mark.gen_test(timeout=30)
async def test_tampered_token_returns_401(api, unique):
    doctor, patient, tokens = await pair(api, unique)
    header, _, signature = tokens[patient].split(".")
    payload = b64url(claims_for(patient, "system"))

    status, answer, _ = await api.get(f"/api/v1/users/{doctor}",
                                      token=f"{header}.{payload}.{signature}")

    assert_error(status, answer, 401, "unauthorized")


@pytest.mark.gen_test(timeout=30)
async def test_expired_token_returns_401(api, unique):
    doctor = unique("doc")
    await api.user(doctor, "doctor")
    expired = api.token(doctor, "doctor", ttl=-60)

    status, answer, _ = await api.get(f"/api/v1/users/{doctor}", token=expired)

    assert_error(status, answer, 401, "unauthorized")


@pytest.mark.parametrize("algorithm", ["none", "None", "NONE"])
@pytest.mark.gen_test(timeout=30)
async def test_unsigned_alg_none_token_returns_401(api, unique, algorithm):
    doctor, _, _ = await pair(api, unique)
    header = b64url({"alg": algorithm, "typ": "JWT"})
    unsigned = f"{header}.{b64url(claims_for('platform', 'system'))}."

    status, answer, _ = await api.get(f"/api/v1/users/{doctor}", token=unsigned)

    assert_error(status, answer, 401, "unauthorized")


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest.mark.gen_test(timeout=30)
async def test_token_signed_with_other_algorithm_returns_401(api, im, unique):
    doctor, _, _ = await pair(api, unique)
    token = jwt.encode(claims_for(doctor, "doctor"), im.config.secret,
                       algorithm="HS512")

    status, answer, _ = await api.get(f"/api/v1/users/{doctor}", token=token)

    assert_error(status, answer, 401, "unauthorized")


@pytest.mark.parametrize("claims", [
    {"role": "doctor"},
    {"sub": "someone"},
    {"sub": "someone", "role": "admin"},
    {"sub": "s" * 65, "role": "doctor"},
    {"sub": 42, "role": "doctor"},
], ids=["no-sub", "no-role", "unknown-role", "sub-65-chars", "sub-number"])
@pytest.mark.gen_test(timeout=30)
async def test_token_with_bad_claims_returns_401(api, im, claims):
    token = jwt.encode({**claims, "exp": int(time.time()) + 600}, im.config.secret,
                       algorithm="HS256")

    status, answer, _ = await api.get("/api/v1/chats/recent?user_id=someone",
                                      token=token)

    assert_error(status, answer, 401, "unauthorized")


@pytest.mark.gen_test(timeout=30)
async def test_token_without_exp_returns_401(api, im, unique):
    doctor, _, _ = await pair(api, unique)
    token = jwt.encode({"sub": doctor, "role": "doctor"}, im.config.secret,
                       algorithm="HS256")

    status, answer, _ = await api.get(f"/api/v1/users/{doctor}", token=token)

    assert_error(status, answer, 401, "unauthorized")


@pytest.mark.gen_test(timeout=30)
async def test_token_without_iat_is_accepted(api, im, unique):
    doctor, _, _ = await pair(api, unique)
    claims = {"sub": doctor, "role": "doctor", "exp": int(time.time()) + 600}
    token = jwt.encode(claims, im.config.secret, algorithm="HS256")

    status, answer, _ = await api.get(f"/api/v1/users/{doctor}", token=token)

    assert status == 200, answer


@pytest.mark.gen_test(timeout=30)
async def test_rejected_send_stores_nothing(api, unique):
    doctor, patient, _ = await pair(api, unique)
    expired = api.token(doctor, "doctor", ttl=-60)

    status, _, _ = await api.post(PM, pm_body(doctor, patient), token=expired)

    assert status == 401
    assert await pm_count(api, patient) == 0


# -- tokens -------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_system_mints_token_that_works(api, unique):
    doctor, patient, _ = await pair(api, unique)
    before_ms = int(time.time() * 1000)

    status, answer, _ = await api.post(
        TOKENS, {"userId": doctor, "role": "doctor", "ttlSeconds": 600}
    )

    assert status == 201, answer
    assert set(answer) == {"token", "expiresAt"}
    assert before_ms + 599_000 <= answer["expiresAt"] <= before_ms + 602_000
    send_status, sent, _ = await api.post(PM, pm_body(doctor, patient),
                                          token=answer["token"])
    assert send_status == 201, sent


@pytest.mark.gen_test(timeout=30)
async def test_minted_token_holds_requested_claims(api, im, unique):
    patient = unique("pat")

    _, answer, _ = await api.post(
        TOKENS, {"userId": patient, "role": "patient", "ttlSeconds": 60}
    )

    claims = jwt.decode(answer["token"], im.config.secret, algorithms=["HS256"])
    assert claims["sub"] == patient
    assert claims["role"] == "patient"
    assert claims["exp"] * 1000 == answer["expiresAt"]


@pytest.mark.gen_test(timeout=30)
async def test_minted_token_acts_only_as_its_user(api, unique):
    doctor, patient, _ = await pair(api, unique)
    _, answer, _ = await api.post(
        TOKENS, {"userId": patient, "role": "patient", "ttlSeconds": 60}
    )

    status, denied, _ = await api.post(PM, pm_body(doctor, patient),
                                       token=answer["token"])

    assert_error(status, denied, 403, "forbidden", "from")


@pytest.mark.gen_test(timeout=30)
async def test_token_without_ttl_gets_default_lifetime(api, im, unique):
    before_ms = int(time.time() * 1000)

    status, answer, _ = await api.post(
        TOKENS, {"userId": unique("pat"), "role": "patient"}
    )

    assert status == 201, answer
    default_ms = im.config.default_token_ttl_seconds * 1000
    assert before_ms + default_ms - 1000 <= answer["expiresAt"]
    assert answer["expiresAt"] <= int(time.time() * 1000) + default_ms


@pytest.mark.parametrize("ttl_name", ["one-second", "maximum"])
@pytest.mark.gen_test(timeout=30)
async def test_token_ttl_at_bounds_is_accepted(api, im, unique, ttl_name):
    ttl = 1 if ttl_name == "one-second" else im.config.max_token_ttl_seconds

    status, answer, _ = await api.post(
        TOKENS, {"userId": unique("pat"), "role": "patient", "ttlSeconds": ttl}
    )

    assert status == 201, answer


@pytest.mark.parametrize("ttl_name, ttl", [
    ("zero", 0), ("negative", -10), ("over-maximum", None), ("string", "60"),
    ("float", 1.5), ("bool", True),
])
@pytest.mark.gen_test(timeout=30)
async def test_token_ttl_out_of_bounds_returns_400(api, im, unique, ttl_name, ttl):
    if ttl is None:
        ttl = im.config.max_token_ttl_seconds + 1

    status, answer, _ = await api.post(
        TOKENS, {"userId": unique("pat"), "role": "patient", "ttlSeconds": ttl}
    )

    assert_error(status, answer, 400, "invalid_argument", "ttlSeconds")


@pytest.mark.parametrize("changes, field", [
    ({"userId": None}, "userId"),
    ({"userId": "u" * 65}, "userId"),
    ({"userId": 7}, "userId"),
    ({"role": None}, "role"),
    ({"role": "admin"}, "role"),
], ids=["user-missing", "user-65-chars", "user-number", "role-missing",
        "role-unknown"])
@pytest.mark.gen_test(timeout=30)
async def test_token_with_bad_field_returns_400(api, changes, field):
    body = {"userId": "someone", "role": "doctor", "ttlSeconds": 60, **changes}
    body = {key: value for key, value in body.items() if value is not None}

    status, answer, _ = await api.post(TOKENS, body)

    assert_error(status, answer, 400, "invalid_argument", field)


@pytest.mark.parametrize("role", ["doctor", "patient"])
@pytest.mark.gen_test(timeout=30)
async def test_user_minting_token_returns_403(api, unique, role):
    user_id = unique(role)
    token = await api.user(user_id, role)

    status, answer, _ = await api.post(
        TOKENS, {"userId": user_id, "role": "system", "ttlSeconds": 60}, token=token
    )

    assert_error(status, answer, 403, "forbidden")


# -- acting as someone else ---------------------------------------------------


@pytest.mark.parametrize("role", ["doctor", "patient"])
@pytest.mark.gen_test(timeout=30)
async def test_pm_from_other_user_returns_403(api, unique, role):
    doctor, patient, _ = await pair(api, unique)
    impostor = unique("impostor")
    token = await api.user(impostor, role)

    status, answer, _ = await api.post(PM, pm_body(doctor, patient), token=token)

    assert_error(status, answer, 403, "forbidden", "from")
    assert await pm_count(api, patient) == 0


@pytest.mark.gen_test(timeout=30)
async def test_gm_from_other_member_returns_403(api, unique):
    doctor, patient, tokens = await pair(api, unique)
    group = unique("team")
    await api.group(group, [doctor, patient])

    status, answer, _ = await api.post(
        GM, {"from": doctor, "group": group, "contentType": 1, "content": "hi"},
        token=tokens[patient],
    )

    assert_error(status, answer, 403, "forbidden", "from")


@pytest.mark.parametrize("path", [
    "/api/v1/chats/pm?user_id={other}",
    "/api/v1/chats/pm?user_id={other}&peer_id={me}",
    "/api/v1/chats/gm?user_id={other}&group=any",
    "/api/v1/chats/sm?user_id={other}",
    "/api/v1/chats/recent?user_id={other}",
])
@pytest.mark.gen_test(timeout=30)
async def test_reading_as_other_user_returns_403(api, unique, path):
    doctor, patient, tokens = await pair(api, unique)

    status, answer, _ = await api.get(path.format(other=patient, me=doctor),
                                      token=tokens[doctor])

    assert_error(status, answer, 403, "forbidden", "user_id")


@pytest.mark.gen_test(timeout=30)
async def test_marking_read_as_other_user_returns_403(api, unique):
    doctor, patient, tokens = await pair(api, unique)
    await api.post(PM, pm_body(doctor, patient))

    status, answer, _ = await api.post(
        "/api/v1/chats/read",
        {"userId": patient, "channel": "p2p", "peer": doctor, "upToId": 2**40},
        token=tokens[doctor],
    )

    assert_error(status, answer, 403, "forbidden", "userId")
    _, state, _ = await api.get(f"/api/v1/chats/recent?user_id={patient}")
    assert state["totalUnread"] == 1


@pytest.mark.parametrize("method, suffix", [
    ("PUT", ""), ("POST", "/logout"), ("GET", "/groups"),
])
@pytest.mark.gen_test(timeout=30)
async def test_user_path_of_other_user_returns_403(api, unique, method, suffix):
    doctor, patient, tokens = await pair(api, unique)
    body = {"name": "Taken over", "role": "patient"} if method == "PUT" else None

    status, answer, _ = await api.request(
        method, f"/api/v1/users/{patient}{suffix}", body=body, token=tokens[doctor]
    )

    assert_error(status, answer, 403, "forbidden", "id")


@pytest.mark.parametrize("role", ["doctor", "patient"])
@pytest.mark.gen_test(timeout=30)
async def test_user_sending_system_message_returns_403(api, unique, role):
    user_id, patient = unique(role), unique("pat")
    token = await api.user(user_id, role)
    await api.user(patient, "patient")

    status, answer, _ = await api.post(
        SM, {"to": patient, "title": "Fake", "summary": "", "contentType": 1,
             "content": "phishing"},
        token=token,
    )

    assert_error(status, answer, 403, "forbidden")
    _, page, _ = await api.get(f"/api/v1/chats/sm?user_id={patient}")
    assert page["messages"] == []


@pytest.mark.parametrize("role", ["doctor", "patient"])
@pytest.mark.parametrize("action", ["create", "add-member", "remove-member"])
@pytest.mark.gen_test(timeout=30)
async def test_user_managing_groups_returns_403(api, unique, role, action):
    user_id, other = unique(role), unique("other")
    token = await api.user(user_id, role)
    await api.user(other, "patient")
    group = unique("team")
    await api.group(group, [user_id, other])
    requests = {
        "create": ("POST", "/api/v1/groups",
                   {"id": unique("new"), "name": "T", "type": 1,
                    "members": [user_id]}),
        "add-member": ("POST", f"/api/v1/groups/{group}/members",
                       {"userIds": [unique("x")]}),
        "remove-member": ("DELETE", f"/api/v1/groups/{group}/members/{other}", None),
    }
    method, path, body = requests[action]

    status, answer, _ = await api.request(method, path, body=body, token=token)

    assert_error(status, answer, 403, "forbidden")
    _, fetched, _ = await api.get(f"/api/v1/groups/{group}")
    assert sorted(m["userId"] for m in fetched["members"]) == sorted([user_id, other])


# -- request bodies -----------------------------------------------------------


@pytest.mark.parametrize("raw", [
    b"{",
    b'{"from": }',
    b"{'from': 'a'}",
    b'{"contentType": NaN}',
    b'{"contentType": Infinity}',
    b"\xff\xfe{}",
    b"",
], ids=["open-brace", "missing-value", "single-quotes", "nan", "infinity",
        "not-utf8", "empty"])
@pytest.mark.gen_test(timeout=30)
async def test_malformed_json_returns_400(api, unique, raw):
    _, patient, _ = await pair(api, unique)

    status, answer, _ = await api.post(
        PM, raw_body=raw, headers={"Content-Type": "application/json"}
    )

    assert_error(status, answer, 400, "invalid_argument")
    assert await pm_count(api, patient) == 0


@pytest.mark.parametrize("raw", [b"[]", b'"text"', b"42", b"null", b"true"])
@pytest.mark.gen_test(timeout=30)
async def test_json_that_is_not_object_returns_400(api, raw):
    status, answer, _ = await api.post(
        PM, raw_body=raw, headers={"Content-Type": "application/json"}
    )

    assert_error(status, answer, 400, "invalid_argument")


def padded_body(body, size):
    """Encode ``body`` as JSON of exactly ``size`` bytes with a padding field."""
    empty = json.dumps({**body, "padding": ""}).encode()
    return json.dumps({**body, "padding": "p" * (size - len(empty))}).encode()


@pytest.mark.gen_test(timeout=30)
async def test_body_over_64_kib_returns_413(api, unique):
    doctor, patient, _ = await pair(api, unique)
    raw = padded_body(pm_body(doctor, patient), MAX_BODY_BYTES + 1)
    assert len(raw) == MAX_BODY_BYTES + 1

    status, answer, _ = await api.post(
        PM, raw_body=raw, headers={"Content-Type": "application/json"}
    )

    assert_error(status, answer, 413, "payload_too_large")
    assert await pm_count(api, patient) == 0


@pytest.mark.gen_test(timeout=30)
async def test_body_of_64_kib_is_accepted(api, unique):
    doctor, patient, _ = await pair(api, unique)
    raw = padded_body(pm_body(doctor, patient), MAX_BODY_BYTES)
    assert len(raw) == MAX_BODY_BYTES

    status, answer, _ = await api.post(
        PM, raw_body=raw, headers={"Content-Type": "application/json"}
    )

    assert status == 201, answer


@pytest.mark.gen_test(timeout=30)
async def test_form_body_over_64_kib_returns_413(api, unique):
    doctor, patient, _ = await pair(api, unique)
    raw = urlencode({**pm_body(doctor, patient), "padding": "p" * MAX_BODY_BYTES})

    status, answer, _ = await api.post(PM, raw_body=raw.encode(), headers=FORM)

    assert_error(status, answer, 413, "payload_too_large")


@pytest.mark.parametrize("content_type", [
    "text/plain", "application/xml", "application/octet-stream", "image/png",
])
@pytest.mark.gen_test(timeout=30)
async def test_unknown_content_type_returns_415(api, unique, content_type):
    doctor, patient, _ = await pair(api, unique)
    raw = json.dumps(pm_body(doctor, patient)).encode()

    status, answer, _ = await api.post(PM, raw_body=raw,
                                       headers={"Content-Type": content_type})

    assert_error(status, answer, 415, "unsupported_media_type")
    assert await pm_count(api, patient) == 0


@pytest.mark.gen_test(timeout=30)
async def test_multipart_form_returns_415(api, unique):
    doctor, patient, _ = await pair(api, unique)
    parts = [
        f'--b0undary\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
        f"{value}\r\n"
        for name, value in pm_body(doctor, patient).items()
    ]
    raw = ("".join(parts) + "--b0undary--\r\n").encode()

    status, answer, _ = await api.post(
        PM, raw_body=raw,
        headers={"Content-Type": "multipart/form-data; boundary=b0undary"},
    )

    assert_error(status, answer, 415, "unsupported_media_type")
    assert await pm_count(api, patient) == 0


@pytest.mark.gen_test(timeout=30)
async def test_json_with_charset_parameter_is_accepted(api, unique):
    doctor, patient, _ = await pair(api, unique)
    raw = json.dumps(pm_body(doctor, patient, content="你好")).encode()

    status, answer, _ = await api.post(
        PM, raw_body=raw, headers={"Content-Type": "application/json; charset=UTF-8"}
    )

    assert status == 201, answer
    assert answer["message"]["content"] == "你好"


@pytest.mark.gen_test(timeout=30)
async def test_form_encoded_pm_is_accepted(api, unique):
    doctor, patient, tokens = await pair(api, unique)
    raw = urlencode({"from": doctor, "to": patient, "contentType": "1",
                     "content": "你好 & goodbye", "clientMsgId": "form-1"})

    status, answer, _ = await api.post(PM, raw_body=raw.encode(), headers=FORM,
                                       token=tokens[doctor])

    assert status == 201, answer
    message = answer["message"]
    assert message["contentType"] == 1
    assert message["content"] == "你好 & goodbye"
    assert message["clientMsgId"] == "form-1"


@pytest.mark.parametrize("pairs", [
    [("at", "{first}"), ("at", "{second}")],
    [("at", "{first},{second}")],
], ids=["repeated", "comma-separated"])
@pytest.mark.gen_test(timeout=30)
async def test_form_encoded_gm_takes_at_list(api, unique, pairs):
    doctor, patient, _ = await pair(api, unique)
    group = unique("team")
    await api.group(group, [doctor, patient], group_type=2)
    fields = [("from", doctor), ("group", group), ("groupType", "2"),
              ("contentType", "1"), ("content", "see this")]
    fields += [(name, value.format(first=doctor, second=patient))
               for name, value in pairs]

    status, answer, _ = await api.post(GM, raw_body=urlencode(fields).encode(),
                                       headers=FORM)

    assert status == 201, answer
    assert answer["message"]["at"] == [doctor, patient]
    assert answer["message"]["groupType"] == 2


@pytest.mark.gen_test(timeout=30)
async def test_form_encoded_sm_is_accepted(api, unique):
    _, patient, _ = await pair(api, unique)
    raw = urlencode({"to": patient, "title": "Visit", "summary": "Tomorrow 9:00",
                     "contentType": "4", "content": "https://clinic.example/v/1"})

    status, answer, _ = await api.post(SM, raw_body=raw.encode(), headers=FORM)

    assert status == 201, answer
    assert answer["message"]["contentType"] == 4
    assert answer["message"]["summary"] == "Tomorrow 9:00"


@pytest.mark.parametrize("value", ["one", "1.0", ""])
@pytest.mark.gen_test(timeout=30)
async def test_bad_form_content_type_returns_400(api, unique, value):
    doctor, patient, _ = await pair(api, unique)
    raw = urlencode({"from": doctor, "to": patient, "contentType": value,
                     "content": "hi"})

    status, answer, _ = await api.post(PM, raw_body=raw.encode(), headers=FORM)

    assert_error(status, answer, 400, "invalid_argument", "contentType")


@pytest.mark.gen_test(timeout=30)
async def test_form_without_content_returns_400(api, unique):
    doctor, patient, _ = await pair(api, unique)
    raw = urlencode({"from": doctor, "to": patient, "contentType": "1"})

    status, answer, _ = await api.post(PM, raw_body=raw.encode(), headers=FORM)

    assert_error(status, answer, 400, "invalid_argument", "content")


@pytest.mark.gen_test(timeout=30)
async def test_json_labelled_as_form_is_accepted(api, unique):
    doctor, patient, _ = await pair(api, unique)
    raw = json.dumps(pm_body(doctor, patient, content="sent by curl -d")).encode()

    status, answer, _ = await api.post(PM, raw_body=raw, headers=FORM)

    assert status == 201, answer
    assert answer["message"]["content"] == "sent by curl -d"


# -- unknown paths and methods ------------------------------------------------


@pytest.mark.parametrize("method, path", [
    ("GET", "/nope"),
    ("GET", "/api/v1/nope"),
    ("POST", "/api/v1/chats/xm"),
    ("DELETE", "/api/v1/chats/pm/not-a-number"),
    ("DELETE", "/api/v1/chats/pm/123456789012345678901"),
    ("GET", "/api/v2/chats/pm"),
])
@pytest.mark.gen_test(timeout=30)
async def test_unknown_path_returns_json_404(api, method, path):
    status, answer, response = await api.request(method, path, token="")

    assert_error(status, answer, 404, "not_found")
    assert response.headers["Content-Type"].startswith("application/json")


# -- what an error response must never contain --------------------------------


def assert_no_internals(response, *secrets):
    text = response.body.decode("utf-8")
    for marker in ("Traceback", 'File "', "SELECT", "INSERT", "UPDATE ",
                   "sqlalchemy", "pymysql", "sqlite3", "Exception"):
        assert marker not in text, text
    for secret in secrets:
        assert secret not in text, text


@pytest.mark.gen_test(timeout=30)
async def test_error_bodies_leak_no_token_or_internals(api, im, unique):
    doctor, patient, tokens = await pair(api, unique)
    good = tokens[doctor]
    forged = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    requests = [
        ("GET", f"/api/v1/users/{doctor}", None, forged),
        ("GET", f"/api/v1/users/{doctor}", None, api.token(doctor, "doctor", ttl=-5)),
        ("GET", f"/nope?token={good}", None, good),
        ("GET", f"/api/v1/chats/pm?user_id={patient}&token={good}", None, good),
        ("POST", PM, pm_body(doctor, unique("nobody"), content=good), good),
        ("POST", PM, pm_body(doctor, patient, contentType=2, content=good), good),
        ("POST", TOKENS, {"userId": doctor, "role": "root"}, None),
    ]

    for method, path, body, token in requests:
        status, _, response = await api.request(method, path, body=body, token=token)

        assert status >= 400
        assert_no_internals(response, good, forged, im.config.secret)


@pytest.mark.gen_test(timeout=30)
async def test_database_error_returns_generic_500(api, im, unique, monkeypatch):
    doctor, _, _ = await pair(api, unique)

    def failing_get(conn, user_id):
        raise IntegrityError(
            f"SELECT * FROM talk_user WHERE id = '{user_id}'", {}, Exception("boom")
        )

    monkeypatch.setattr(TalkUser, "get", staticmethod(failing_get))

    status, answer, response = await api.get(f"/api/v1/users/{doctor}")

    assert_error(status, answer, 500, "internal")
    assert_no_internals(response, im.config.secret, "boom")


@pytest.mark.gen_test(timeout=30)
async def test_unexpected_error_returns_generic_500(api, im, unique, monkeypatch):
    doctor, _, _ = await pair(api, unique)

    async def failing_get_user(user_id, private):
        raise RuntimeError(f"secret={im.config.secret} while loading {user_id}")

    monkeypatch.setattr(im.directory, "get_user", failing_get_user)

    status, answer, response = await api.get(f"/api/v1/users/{doctor}")

    assert_error(status, answer, 500, "internal")
    assert_no_internals(response, im.config.secret, "RuntimeError")


@pytest.mark.gen_test(timeout=30)
async def test_database_outage_returns_503(api, im, unique, monkeypatch):
    doctor, _, _ = await pair(api, unique)

    def unreachable(work, *args):
        raise DatabaseUnavailable("OperationalError 2003")

    monkeypatch.setattr(im.db, "transaction", unreachable)

    status, answer, response = await api.get(f"/api/v1/users/{doctor}")

    assert_error(status, answer, 503, "unavailable")
    assert_no_internals(response, "OperationalError")


@pytest.mark.gen_test(timeout=30)
async def test_ids_with_edge_spaces_return_400(api, unique):
    user = unique("doc")

    path_status, path_answer, _ = await api.put(
        f"/api/v1/users/{user}%20", {"name": "x", "role": "doctor"}
    )
    body_status, body_answer, _ = await api.post("/api/v1/chats/pm", {
        "from": user, "to": f" {user}", "contentType": 1, "content": "hi",
    })

    assert_error(path_status, path_answer, 400, "invalid_argument", "id")
    assert_error(body_status, body_answer, 400, "invalid_argument", "to")
