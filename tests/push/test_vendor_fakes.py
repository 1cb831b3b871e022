"""The fake vendor servers reject what the real services reject.

These tests talk HTTP to the fakes directly, so that a fake that drifts
from the vendor contract fails here instead of hiding a client bug.
"""

import hashlib
import json

import pytest

from tests.fakes.getui_fake import GetuiFake
from tests.push.support import FOLLOWER_OPENID, OFFLINE_CID, ONLINE_CID, TEMPLATE_ID

pytestmark = pytest.mark.timeout(30)


async def call(http, url, body=None, method="POST", headers=None):
    """Return (HTTP status, parsed JSON or raw text) of one request."""
    encoded = body
    if body is not None and not isinstance(body, bytes):
        encoded = json.dumps(body).encode()
    response = await http.fetch(
        url,
        method=method,
        body=encoded,
        headers=headers or {"Content-Type": "application/json"},
        raise_error=False,
        allow_nonstandard_methods=True,
    )
    try:
        return response.code, json.loads(response.body)
    except ValueError:
        return response.code, response.body.decode("utf-8", "replace")


# Getui


def auth_body(fake, timestamp_ms=None, secret=None):
    timestamp = str(int(fake.clock() * 1000) if timestamp_ms is None else timestamp_ms)
    source = fake.app_key + timestamp + (secret or fake.master_secret)
    return {
        "sign": hashlib.sha256(source.encode()).hexdigest(),
        "timestamp": timestamp,
        "appkey": fake.app_key,
    }


async def getui_token(http, fake):
    status, response = await call(
        http, "%s/%s/auth" % (fake.base_url, fake.app_id), auth_body(fake)
    )
    assert status == 200
    return response["data"]["token"]


def single_push(**changes):
    body = {
        "request_id": "req00000000000001",
        "settings": {"ttl": 3600000},
        "audience": {"cid": [ONLINE_CID]},
        "push_message": {
            "notification": {
                "title": "t",
                "body": "b",
                "click_type": "payload",
                "payload": "{}",
            }
        },
    }
    body.update(changes)
    return body


async def push_single(http, fake, body, token=None):
    token = token or await getui_token(http, fake)
    url = "%s/%s/push/single/cid" % (fake.base_url, fake.app_id)
    return await call(
        http, url, body, headers={"Content-Type": "application/json", "token": token}
    )


@pytest.mark.gen_test(timeout=10)
async def test_getui_auth_response_shape(curl_client, getui_fake, clock):
    status, response = await call(
        curl_client,
        "%s/%s/auth" % (getui_fake.base_url, getui_fake.app_id),
        auth_body(getui_fake),
    )

    assert status == 200
    assert response["code"] == 0
    assert isinstance(response["data"]["expire_time"], str)
    assert int(response["data"]["expire_time"]) == int((clock() + 86400) * 1000)
    assert len(response["data"]["token"]) == 32


@pytest.mark.gen_test(timeout=10)
async def test_getui_auth_accepts_numeric_timestamp(curl_client, getui_fake):
    body = auth_body(getui_fake)
    body["timestamp"] = int(body["timestamp"])

    status, response = await call(
        curl_client, "%s/%s/auth" % (getui_fake.base_url, getui_fake.app_id), body
    )

    assert status == 200
    assert response["code"] == 0


@pytest.mark.parametrize(
    "change, message",
    [
        ({"secret": "wrong"}, "sign is invalid"),
        ({"timestamp_ms": 1}, "timestamp is invalid"),
    ],
)
@pytest.mark.gen_test(timeout=10)
async def test_getui_auth_rejects_bad_sign(curl_client, getui_fake, change, message):
    body = auth_body(getui_fake, change.get("timestamp_ms"), change.get("secret"))

    status, response = await call(
        curl_client, "%s/%s/auth" % (getui_fake.base_url, getui_fake.app_id), body
    )

    assert status == 401
    assert response == {"code": 10001, "msg": message}


@pytest.mark.gen_test(timeout=10)
async def test_getui_auth_rate_limited(curl_client, clock):
    fake = GetuiFake(clock=clock, auth_limit_per_minute=2)
    fake.listen()
    url = "%s/%s/auth" % (fake.base_url, fake.app_id)

    codes = [
        (await call(curl_client, url, auth_body(fake)))[1]["code"] for _ in range(3)
    ]
    clock.advance(60)
    after_a_minute = (await call(curl_client, url, auth_body(fake)))[1]["code"]

    assert codes == [0, 0, 10003]
    assert after_a_minute == 0
    await fake.stop()


@pytest.mark.parametrize("token", [None, "unknown0000000000000000000000000"])
@pytest.mark.gen_test(timeout=10)
async def test_getui_push_needs_valid_token(curl_client, getui_fake, token):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["token"] = token
    url = "%s/%s/push/single/cid" % (getui_fake.base_url, getui_fake.app_id)

    status, response = await call(curl_client, url, single_push(), headers=headers)

    assert status == 401
    assert response["code"] == 10001


@pytest.mark.gen_test(timeout=10)
async def test_getui_wrong_app_id_is_404(curl_client, getui_fake):
    status, _ = await call(
        curl_client, "%s/otherApp/auth" % getui_fake.base_url, auth_body(getui_fake)
    )

    assert status == 404


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"request_id": "short"}, "request_id is invalid"),
        ({"request_id": "x" * 33}, "request_id is invalid"),
        ({"request_id": None}, "request_id can not be empty"),
        ({"request_id": 12345678901}, "request_id type error"),
        ({"group_name": "has space"}, "group_name is invalid"),
        ({"settings": {"ttl": 3 * 24 * 3600 * 1000 + 1}}, "ttl is invalid"),
        ({"settings": {"ttl": -2}}, "ttl is invalid"),
        ({"audience": {"cid": [ONLINE_CID, OFFLINE_CID]}}, "cid size over limit"),
        ({"audience": {"cid": []}}, "cid can not be empty"),
        (
            {"push_message": {}},
            "please choose one of notification and transmission and revoke",
        ),
        (
            {
                "push_message": {
                    "notification": {"title": "t", "body": "b", "click_type": "none"},
                    "transmission": "x",
                }
            },
            "please choose one of notification and transmission and revoke",
        ),
        (
            {
                "push_message": {
                    "notification": {
                        "title": "t" * 51,
                        "body": "b",
                        "click_type": "none",
                    }
                }
            },
            "title size over limit",
        ),
        (
            {
                "push_message": {
                    "notification": {
                        "title": "😀" * 26,
                        "body": "b",
                        "click_type": "none",
                    }
                }
            },
            "title size over limit",
        ),
        (
            {
                "push_message": {
                    "notification": {
                        "title": "t",
                        "body": "b" * 257,
                        "click_type": "none",
                    }
                }
            },
            "body size over limit",
        ),
        (
            {"push_message": {"notification": {"body": "b", "click_type": "none"}}},
            "title can not be empty",
        ),
        (
            {
                "push_message": {
                    "notification": {"title": "t", "body": "b", "click_type": "open"}
                }
            },
            "click_type is invalid",
        ),
        (
            {
                "push_message": {
                    "notification": {"title": "t", "body": "b", "click_type": "payload"}
                }
            },
            "payload can not be empty",
        ),
        (
            {
                "push_message": {
                    "notification": {"title": "t", "body": "b", "click_type": "intent"}
                }
            },
            "intent can not be empty",
        ),
        (
            {
                "push_message": {
                    "notification": {
                        "title": "t",
                        "body": "b",
                        "click_type": "url",
                        "url": "u" * 1025,
                    }
                }
            },
            "url size over limit",
        ),
        (
            {"push_message": {"transmission": "x" * 3073}},
            "transmission size over limit",
        ),
        (
            {"push_channel": {"ios": {"type": "notify", "aps": {"badge": "3"}}}},
            "badge type error",
        ),
        ({"push_channel": {"ios": {"type": "alert"}}}, "type is invalid"),
        (
            {"push_channel": {"android": {"ups": {}}}},
            "choose one of notification and transmission",
        ),
    ],
)
@pytest.mark.gen_test(timeout=10)
async def test_getui_push_field_rules(curl_client, getui_fake, changes, message):
    status, response = await push_single(
        curl_client, getui_fake, single_push(**changes)
    )

    assert status == 400
    assert response == {"code": 20001, "msg": message}
    assert getui_fake.sent == []


@pytest.mark.gen_test(timeout=10)
async def test_getui_push_response_and_status_spelling(curl_client, getui_fake):
    status, response = await push_single(curl_client, getui_fake, single_push())

    assert status == 200
    assert response["code"] == 0
    ((task_id, statuses),) = response["data"].items()
    assert task_id.startswith("RASS_")
    assert statuses == {ONLINE_CID: "successed_online"}


@pytest.mark.gen_test(timeout=10)
async def test_getui_accept_any_cid_registers_offline_device(curl_client, clock):
    fake = GetuiFake(clock=clock, accept_any_cid=True)
    fake.listen()

    status, response = await push_single(
        curl_client, fake, single_push(audience={"cid": ["anyCid01"]})
    )

    assert status == 200
    assert list(response["data"].values()) == [{"anyCid01": "successed_offline"}]
    await fake.stop()


@pytest.mark.gen_test(timeout=10)
async def test_getui_list_push(curl_client, getui_fake):
    token = await getui_token(curl_client, getui_fake)
    headers = {"Content-Type": "application/json", "token": token}
    base = "%s/%s" % (getui_fake.base_url, getui_fake.app_id)
    message = single_push()
    del message["audience"]

    _, created = await call(
        curl_client, base + "/push/list/message", message, headers=headers
    )
    task_id = created["data"]["taskid"]
    _, duplicate = await call(
        curl_client,
        base + "/push/list/cid",
        {"audience": {"cid": [ONLINE_CID, ONLINE_CID]}, "taskid": task_id},
        headers=headers,
    )
    _, unknown_task = await call(
        curl_client,
        base + "/push/list/cid",
        {"audience": {"cid": [ONLINE_CID]}, "taskid": "RASS_nope"},
        headers=headers,
    )
    _, too_many = await call(
        curl_client,
        base + "/push/list/cid",
        {"audience": {"cid": ["c%d" % i for i in range(1001)]}, "taskid": task_id},
        headers=headers,
    )
    _, sent = await call(
        curl_client,
        base + "/push/list/cid",
        {
            "audience": {"cid": [ONLINE_CID, OFFLINE_CID]},
            "taskid": task_id,
            "is_async": False,
        },
        headers=headers,
    )

    assert duplicate == {"code": 20001, "msg": "contains duplicate cid"}
    assert unknown_task == {"code": 20001, "msg": "taskid is invalid"}
    assert too_many == {"code": 20001, "msg": "cid size over limit"}
    assert sent["data"] == {
        task_id: {ONLINE_CID: "successed_online", OFFLINE_CID: "successed_offline"}
    }
    assert [record["cid"] for record in getui_fake.sent] == [ONLINE_CID, OFFLINE_CID]


@pytest.mark.gen_test(timeout=10)
async def test_getui_alias_push(curl_client, getui_fake):
    token = await getui_token(curl_client, getui_fake)
    headers = {"Content-Type": "application/json", "token": token}
    base = "%s/%s" % (getui_fake.base_url, getui_fake.app_id)

    await call(
        curl_client,
        base + "/user/alias",
        {
            "data_list": [
                {"cid": ONLINE_CID, "alias": "doctor7"},
                {"cid": OFFLINE_CID, "alias": "doctor7"},
            ]
        },
        headers=headers,
    )
    body = single_push(audience={"alias": ["doctor7"]})
    _, response = await call(
        curl_client, base + "/push/single/alias", body, headers=headers
    )
    _, unknown = await call(
        curl_client,
        base + "/push/single/alias",
        single_push(request_id="req00000000000002", audience={"alias": ["nobody"]}),
        headers=headers,
    )

    assert list(response["data"].values()) == [
        {ONLINE_CID: "successed_online", OFFLINE_CID: "successed_offline"}
    ]
    assert unknown == {"code": 20001, "msg": "target user is invalid"}


@pytest.mark.gen_test(timeout=10)
async def test_getui_non_json_body_is_code_1(curl_client, getui_fake):
    token = await getui_token(curl_client, getui_fake)

    status, response = await push_single(curl_client, getui_fake, b"{not json", token)

    assert status == 200
    assert response["code"] == 1


# WeChat


async def stable_token(http, fake, **changes):
    body = {
        "grant_type": "client_credential",
        "appid": fake.app_id,
        "secret": fake.app_secret,
    }
    body.update(changes)
    return await call(http, fake.base_url + "/cgi-bin/stable_token", body)


async def send_template(http, fake, body, token=None):
    if token is None:
        _, response = await stable_token(http, fake)
        token = response["access_token"]
    url = fake.base_url + "/cgi-bin/message/template/send"
    if token:
        url += "?access_token=" + token
    return await call(http, url, body)


def template_body(**changes):
    body = {
        "touser": FOLLOWER_OPENID,
        "template_id": TEMPLATE_ID,
        "data": {
            "thing1": {"value": "王医生"},
            "time2": {"value": "15:01"},
            "thing3": {"value": "复诊"},
        },
    }
    body.update(changes)
    return body


@pytest.mark.gen_test(timeout=10)
async def test_wechat_stable_token_same_until_rotation(curl_client, wechat_fake, clock):
    _, first = await stable_token(curl_client, wechat_fake)
    clock.advance(100)
    _, second = await stable_token(curl_client, wechat_fake)
    clock.advance(7200 - 100 - 299)
    _, rotated = await stable_token(curl_client, wechat_fake)
    _, old_still_works = await send_template(
        curl_client, wechat_fake, template_body(), first["access_token"]
    )

    assert first["expires_in"] == 7200
    assert second == {"access_token": first["access_token"], "expires_in": 7100}
    assert rotated["access_token"] != first["access_token"]
    assert rotated["expires_in"] == 7200
    assert old_still_works["errcode"] == 0


@pytest.mark.gen_test(timeout=10)
async def test_wechat_force_refresh_rules(curl_client, wechat_fake, clock):
    _, normal = await stable_token(curl_client, wechat_fake)
    _, forced = await stable_token(curl_client, wechat_fake, force_refresh=True)
    _, too_soon = await stable_token(curl_client, wechat_fake, force_refresh=True)
    _, old_token_send = await send_template(
        curl_client, wechat_fake, template_body(), normal["access_token"]
    )

    assert forced["access_token"] != normal["access_token"]
    assert too_soon["access_token"] == forced["access_token"]
    assert old_token_send["errcode"] == 40001

    for _ in range(19):
        clock.advance(31)
        await stable_token(curl_client, wechat_fake, force_refresh=True)
    clock.advance(31)
    _, over_limit = await stable_token(curl_client, wechat_fake, force_refresh=True)

    assert len(wechat_fake.force_refresh_times) == 20
    assert over_limit["errcode"] == 45009


@pytest.mark.gen_test(timeout=10)
async def test_wechat_classic_token_replaces_old_after_overlap(
    curl_client, wechat_fake, clock
):
    url = "%s/cgi-bin/token?grant_type=client_credential&appid=%s&secret=%s" % (
        wechat_fake.base_url,
        wechat_fake.app_id,
        wechat_fake.app_secret,
    )
    _, first = await call(curl_client, url, method="GET")
    _, second = await call(curl_client, url, method="GET")
    _, during_overlap = await send_template(
        curl_client, wechat_fake, template_body(), first["access_token"]
    )
    clock.advance(301)
    _, after_overlap = await send_template(
        curl_client,
        wechat_fake,
        template_body(client_msg_id="m2"),
        first["access_token"],
    )

    assert first["access_token"] != second["access_token"]
    assert during_overlap["errcode"] == 0
    assert after_overlap["errcode"] == 40001


@pytest.mark.parametrize(
    "changes, errcode",
    [
        ({"grant_type": "password"}, 40002),
        ({"appid": ""}, 41002),
        ({"appid": "wxother"}, 40013),
        ({"secret": ""}, 41004),
        ({"secret": "wrong"}, 40001),
    ],
)
@pytest.mark.gen_test(timeout=10)
async def test_wechat_stable_token_errors(curl_client, wechat_fake, changes, errcode):
    status, response = await stable_token(curl_client, wechat_fake, **changes)

    assert status == 200
    assert response["errcode"] == errcode
    assert " rid: " in response["errmsg"]


@pytest.mark.gen_test(timeout=10)
async def test_wechat_stable_token_rejects_get(curl_client, wechat_fake):
    _, response = await call(
        curl_client, wechat_fake.base_url + "/cgi-bin/stable_token", method="GET"
    )

    assert response["errcode"] == 43002


@pytest.mark.parametrize(
    "token, errcode",
    [("", 41001), ("unknown", 40001)],
)
@pytest.mark.gen_test(timeout=10)
async def test_wechat_send_token_errors(curl_client, wechat_fake, token, errcode):
    _, response = await send_template(curl_client, wechat_fake, template_body(), token)

    assert response["errcode"] == errcode


@pytest.mark.gen_test(timeout=10)
async def test_wechat_expired_token_is_42001(curl_client, wechat_fake, clock):
    _, token = await stable_token(curl_client, wechat_fake)
    clock.advance(7201)

    _, response = await send_template(
        curl_client, wechat_fake, template_body(), token["access_token"]
    )

    assert response["errcode"] == 42001
    assert response["errmsg"].startswith("access_token expired rid: ")


@pytest.mark.parametrize(
    "key, value",
    [
        ("thing1", "二" * 21),
        ("thing1", "line\nbreak"),
        ("time2", "tomorrow"),
        ("time2", "25点"),
        ("thing3", 42),
    ],
)
@pytest.mark.gen_test(timeout=10)
async def test_wechat_typed_values_rejected(curl_client, wechat_fake, key, value):
    body = template_body()
    body["data"][key] = {"value": value}

    _, response = await send_template(curl_client, wechat_fake, body)

    assert response["errcode"] == 47003
    assert response["errmsg"].startswith(
        "argument invalid! data.%s.value invalid rid: " % key
    )


@pytest.mark.parametrize(
    "kind, good, bad",
    [
        ("character_string", "ORDER-2023_01", "订单123"),
        ("amount", "¥99.00", "99.00"),
        ("phrase", "已完成", "done"),
        ("phone_number", "+86 138-0000-0000", "phone"),
        ("time", "2023年10月1日 15:01", "2023-10-01"),
        ("time", "2023-08-09 15:25:00 ~ 2023-08-09 16:25:00", "15:25 to 16:25"),
    ],
)
@pytest.mark.gen_test(timeout=10)
async def test_wechat_value_types(curl_client, wechat_fake, kind, good, bad):
    wechat_fake.add_template("tplTyped", [kind + "1"])

    _, accepted = await send_template(
        curl_client,
        wechat_fake,
        template_body(template_id="tplTyped", data={kind + "1": {"value": good}}),
    )
    _, rejected = await send_template(
        curl_client,
        wechat_fake,
        template_body(template_id="tplTyped", data={kind + "1": {"value": bad}}),
    )

    assert accepted["errcode"] == 0
    assert rejected["errcode"] == 47003


@pytest.mark.gen_test(timeout=10)
async def test_wechat_const_value_must_be_predefined(curl_client, wechat_fake):
    wechat_fake.add_template("tplConst", {"const1": ["待回复", "已回复"]})

    _, accepted = await send_template(
        curl_client,
        wechat_fake,
        template_body(template_id="tplConst", data={"const1": {"value": "待回复"}}),
    )
    _, rejected = await send_template(
        curl_client,
        wechat_fake,
        template_body(template_id="tplConst", data={"const1": {"value": "其他"}}),
    )

    assert accepted["errcode"] == 0
    assert rejected["errcode"] == 47003


@pytest.mark.gen_test(timeout=10)
async def test_wechat_data_key_with_data_suffix_is_empty(curl_client, wechat_fake):
    body = template_body()
    body["data"]["thing1.DATA"] = body["data"].pop("thing1")

    _, response = await send_template(curl_client, wechat_fake, body)

    assert response["errcode"] == 47003
    assert "data.thing1.value is empty" in response["errmsg"]


@pytest.mark.gen_test(timeout=10)
async def test_wechat_non_json_body_is_47001(curl_client, wechat_fake):
    _, response = await send_template(curl_client, wechat_fake, b"<xml/>")

    assert response["errcode"] == 47001


@pytest.mark.gen_test(timeout=10)
async def test_wechat_callback_url_must_be_local(wechat_fake):
    with pytest.raises(ValueError, match="localhost"):
        wechat_fake.set_callback("http://example.com/cb", "token")


@pytest.mark.gen_test(timeout=10)
async def test_fake_control_api(curl_client, wechat_fake):
    control = wechat_fake.base_url + "/_fake/"

    await call(
        curl_client, control + "inject", {"count": 1, "path": "send", "code": -1}
    )
    _, busy = await send_template(curl_client, wechat_fake, template_body())
    _, sent = await send_template(curl_client, wechat_fake, template_body())
    _, listing = await call(curl_client, control + "sent", method="GET")
    unknown_status, _ = await call(curl_client, control + "explode", {})
    bad_status, _ = await call(curl_client, control + "inject", {"colour": "red"})

    assert busy["errcode"] == -1
    assert sent["errcode"] == 0
    assert [record["msgid"] for record in listing["sent"]] == [sent["msgid"]]
    assert unknown_status == 404
    assert bad_status == 400
