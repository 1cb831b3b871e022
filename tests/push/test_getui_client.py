"""GetuiClient against the fake Getui server."""

import asyncio
import hashlib
import json
import logging

import pytest

from services.getui import GetuiClient
from services.push_outcome import PushStatus, utf16_length
from tests.push.support import (
    INACTIVE_CID,
    OFFLINE_CID,
    ONLINE_CID,
    REQUEST_TIMEOUT_SECONDS,
    wait_for,
)

pytestmark = pytest.mark.timeout(30)

PAYLOAD = {"channel": "p2p", "peer": "doctor-7", "messageId": 123}


def push(client, request_id="req00000000000001", cid=ONLINE_CID, **overrides):
    arguments = {
        "title": "Dr. Wang",
        "body": "Please come in tomorrow",
        "payload": PAYLOAD,
        "badge": 3,
    }
    arguments.update(overrides)
    return client.push_single(cid, request_id, **arguments)


# Sending


@pytest.mark.gen_test(timeout=10)
async def test_push_to_online_device_is_sent(getui_client, getui_fake):
    outcome = await push(getui_client)

    assert outcome.status == PushStatus.SENT
    assert outcome.vendor_code == 0
    assert outcome.detail == "successed_online"
    assert len(getui_fake.sent) == 1
    record = getui_fake.sent[0]
    assert outcome.vendor_message_id == record["task_id"]
    assert record["cid"] == ONLINE_CID
    assert record["request_id"] == "req00000000000001"


@pytest.mark.gen_test(timeout=10)
async def test_push_body_opens_conversation(getui_client, getui_fake):
    await push(getui_client)

    message = getui_fake.sent[0]["message"]
    notification = message["push_message"]["notification"]
    assert notification["title"] == "Dr. Wang"
    assert notification["body"] == "Please come in tomorrow"
    assert notification["click_type"] == "payload"
    assert json.loads(notification["payload"]) == PAYLOAD
    assert message["settings"]["ttl"] == 24 * 3600 * 1000
    ios = message["push_channel"]["ios"]
    assert ios["type"] == "notify"
    assert ios["aps"]["alert"] == {
        "title": "Dr. Wang",
        "body": "Please come in tomorrow",
    }
    assert ios["aps"]["badge"] == 3
    assert json.loads(ios["payload"]) == PAYLOAD
    assert "android" not in message["push_channel"]


@pytest.mark.gen_test(timeout=10)
async def test_push_without_badge_leaves_it_out(getui_client, getui_fake):
    await push(getui_client, badge=None)

    aps = getui_fake.sent[0]["message"]["push_channel"]["ios"]["aps"]
    assert "badge" not in aps


@pytest.mark.gen_test(timeout=10)
async def test_offline_and_inactive_devices_count_as_sent(getui_client, getui_fake):
    offline = await push(getui_client, "req00000000000001", OFFLINE_CID)
    inactive = await push(getui_client, "req00000000000002", INACTIVE_CID)

    assert offline.status == PushStatus.SENT
    assert offline.detail == "successed_offline"
    assert inactive.status == PushStatus.SENT
    assert inactive.detail == "successed_ignore"


@pytest.mark.gen_test(timeout=10)
async def test_android_component_adds_intent_block(
    curl_client, getui_settings, getui_fake, clock
):
    settings = dict(
        getui_settings, android_component="com.example.doctor/.MainActivity"
    )
    client = GetuiClient(curl_client, settings, clock=clock)

    outcome = await push(client)

    assert outcome.status == PushStatus.SENT
    ups = getui_fake.sent[0]["message"]["push_channel"]["android"]["ups"]
    intent = ups["notification"]["intent"]
    assert ups["notification"]["click_type"] == "intent"
    assert intent.startswith("intent:#Intent;")
    assert "component=com.example.doctor/.MainActivity;" in intent
    assert "S.payload=%7B%22channel%22" in intent
    assert intent.endswith(";end")


@pytest.mark.gen_test(timeout=10)
async def test_long_title_and_body_are_cut_to_limits(getui_client, getui_fake):
    title = "王医生" + "😀" * 40
    body = "复诊提醒。" * 80

    outcome = await push(getui_client, title=title, body=body)

    assert outcome.status == PushStatus.SENT
    notification = getui_fake.sent[0]["message"]["push_message"]["notification"]
    assert utf16_length(notification["title"]) <= 50
    assert notification["title"].startswith("王医生😀")
    assert notification["title"].endswith("…")
    assert utf16_length(notification["body"]) <= 256
    assert notification["body"].endswith("…")


@pytest.mark.gen_test(timeout=10)
async def test_line_breaks_removed_from_title(getui_client, getui_fake):
    await push(getui_client, title="Dr.\nWang\t(cardiology)")

    notification = getui_fake.sent[0]["message"]["push_message"]["notification"]
    assert notification["title"] == "Dr. Wang (cardiology)"


@pytest.mark.parametrize(
    "request_id",
    ["short", "x" * 33, "has space 0000000", "中文中文中文中文中文中文", ""],
)
@pytest.mark.gen_test(timeout=10)
async def test_malformed_request_id_raises(getui_client, getui_fake, request_id):
    with pytest.raises(ValueError, match="request_id"):
        await push(getui_client, request_id)

    assert getui_fake.calls["push"] == 0


@pytest.mark.gen_test(timeout=10)
async def test_oversized_payload_raises(getui_client):
    with pytest.raises(ValueError, match="payload"):
        await push(getui_client, payload="x" * 3073)


@pytest.mark.gen_test(timeout=10)
async def test_negative_badge_raises(getui_client):
    with pytest.raises(ValueError, match="badge"):
        await push(getui_client, badge=-1)


@pytest.mark.gen_test(timeout=10)
async def test_empty_body_raises(getui_client):
    with pytest.raises(ValueError, match="empty"):
        await push(getui_client, body="  \n ")


# Auth and token refresh


@pytest.mark.gen_test(timeout=10)
async def test_token_fetched_once_and_reused(getui_client, getui_fake):
    first = await push(getui_client, "req00000000000001")
    second = await push(getui_client, "req00000000000002")

    assert first.status == PushStatus.SENT
    assert second.status == PushStatus.SENT
    assert getui_fake.calls["auth"] == 1
    assert getui_fake.calls["push"] == 2


@pytest.mark.gen_test(timeout=10)
async def test_concurrent_pushes_share_one_auth_call(getui_client, getui_fake):
    outcomes = await asyncio.gather(
        *(push(getui_client, "req0000000000000%d" % i) for i in range(5))
    )

    assert [o.status for o in outcomes] == [PushStatus.SENT] * 5
    assert getui_fake.calls["auth"] == 1


@pytest.mark.gen_test(timeout=10)
async def test_token_refreshed_an_hour_before_expiry(getui_client, getui_fake, clock):
    await push(getui_client, "req00000000000001")
    clock.advance(23 * 3600 - 60)
    await push(getui_client, "req00000000000002")
    clock.advance(61)

    outcome = await push(getui_client, "req00000000000003")

    assert outcome.status == PushStatus.SENT
    assert getui_fake.calls["auth"] == 2
    # The refresh happened before the push, so no push was rejected.
    assert getui_fake.calls["push"] == 3


@pytest.mark.gen_test(timeout=10)
async def test_short_lived_token_not_refreshed_every_push(
    curl_client, getui_settings, clock, getui_fake
):
    getui_fake.token_lifetime_seconds = 600
    client = GetuiClient(curl_client, getui_settings, clock=clock)

    await push(client, "req00000000000001")
    clock.advance(200)
    await push(client, "req00000000000002")

    assert getui_fake.calls["auth"] == 1


@pytest.mark.gen_test(timeout=10)
async def test_expired_token_mid_run_refreshed_once(getui_client, getui_fake):
    await push(getui_client, "req00000000000001")
    getui_fake.expire_tokens()

    outcome = await push(getui_client, "req00000000000002")

    assert outcome.status == PushStatus.SENT
    assert getui_fake.calls["auth"] == 2
    # One push rejected with 10001, then one retry with the new token.
    assert getui_fake.calls["push"] == 3
    assert len(getui_fake.sent) == 2


@pytest.mark.gen_test(timeout=10)
async def test_token_rejected_twice_returns_retry(getui_client, getui_fake):
    getui_fake.inject(2, path="push", code=10001)

    outcome = await push(getui_client)

    assert outcome.status == PushStatus.RETRY
    assert outcome.vendor_code == 10001
    assert getui_fake.calls["auth"] == 2
    assert getui_fake.calls["push"] == 2
    assert getui_fake.sent == []


@pytest.mark.gen_test(timeout=10)
async def test_wrong_master_secret_is_permanent(
    curl_client, getui_settings, getui_fake, clock
):
    settings = dict(getui_settings, master_secret="not-the-secret")
    client = GetuiClient(curl_client, settings, clock=clock)

    outcome = await push(client)

    assert outcome.status == PushStatus.PERMANENT
    assert outcome.vendor_code == 10001
    assert "sign is invalid" in outcome.detail
    assert getui_fake.calls["push"] == 0


@pytest.mark.gen_test(timeout=10)
async def test_auth_rate_limit_pauses_auth_for_a_minute(
    getui_client, getui_fake, clock
):
    getui_fake.inject(path="auth", code=10003)

    first = await push(getui_client, "req00000000000001")
    second = await push(getui_client, "req00000000000002")
    clock.advance(61)
    third = await push(getui_client, "req00000000000003")

    assert first.status == PushStatus.RATE_LIMITED
    assert first.retry_after_seconds == 60
    assert second.status == PushStatus.RATE_LIMITED
    assert 0 < second.retry_after_seconds <= 60
    assert third.status == PushStatus.SENT
    # The second push did not call /auth while it was paused.
    assert getui_fake.calls["auth"] == 2


@pytest.mark.gen_test(timeout=10)
async def test_auth_outage_returns_retry(getui_client, getui_fake):
    getui_fake.inject(path="auth", http_status=502)

    outcome = await push(getui_client)

    assert outcome.status == PushStatus.RETRY
    assert outcome.vendor_code is None


@pytest.mark.gen_test(timeout=10)
async def test_revoke_token_forces_new_auth(getui_client, getui_fake):
    await push(getui_client, "req00000000000001")

    await getui_client.revoke_token()
    outcome = await push(getui_client, "req00000000000002")

    assert outcome.status == PushStatus.SENT
    assert getui_fake.calls["auth"] == 3  # auth, revoke, auth
    assert len(getui_fake.tokens) == 1


# Outcome classes


@pytest.mark.parametrize(
    "code, expected",
    [
        (1, PushStatus.PERMANENT),
        (2, PushStatus.RETRY),
        (301, PushStatus.PERMANENT),
        (10002, PushStatus.PERMANENT),
        (10004, PushStatus.PERMANENT),
        (10005, PushStatus.RATE_LIMITED),
        (20001, PushStatus.PERMANENT),
        (22002, PushStatus.PERMANENT),
        (30000, PushStatus.PERMANENT),
        (30004, PushStatus.QUOTA_EXHAUSTED),
        (30006, PushStatus.QUOTA_EXHAUSTED),
        (30007, PushStatus.QUOTA_EXHAUSTED),
        (30008, PushStatus.QUOTA_EXHAUSTED),
        (30009, PushStatus.QUOTA_EXHAUSTED),
        (30010, PushStatus.QUOTA_EXHAUSTED),
        (30013, PushStatus.RATE_LIMITED),
        (30014, PushStatus.RATE_LIMITED),
        (30015, PushStatus.RATE_LIMITED),
        (30018, PushStatus.RATE_LIMITED),
        (30019, PushStatus.RETRY),
    ],
)
@pytest.mark.gen_test(timeout=10)
async def test_vendor_code_classified(getui_client, getui_fake, code, expected):
    getui_fake.inject(path="push", code=code)

    outcome = await push(getui_client)

    assert outcome.status == expected
    assert outcome.vendor_code == code
    assert str(code) in outcome.detail
    assert getui_fake.sent == []


@pytest.mark.gen_test(timeout=10)
async def test_per_minute_limit_waits_for_next_minute(getui_client, getui_fake, clock):
    clock.advance(15)  # 15 seconds past a minute
    getui_fake.inject(path="push", code=30014)

    outcome = await push(getui_client)

    assert outcome.status == PushStatus.RATE_LIMITED
    assert 45 < outcome.retry_after_seconds <= 50


@pytest.mark.gen_test(timeout=10)
async def test_daily_quota_waits_for_beijing_midnight(getui_client, getui_fake):
    getui_fake.inject(path="push", code=30004)

    outcome = await push(getui_client)

    # The clock reads 08:00 in Beijing, 16 hours before midnight there.
    assert outcome.status == PushStatus.QUOTA_EXHAUSTED
    assert outcome.retry_after_seconds == 16 * 3600


@pytest.mark.gen_test(timeout=10)
async def test_unknown_cid_is_invalid_target(getui_client, getui_fake):
    outcome = await push(getui_client, cid="cidUnknown000000000000000000001")

    assert outcome.status == PushStatus.INVALID_TARGET
    assert outcome.vendor_code == 20001
    assert "target user is invalid" in outcome.detail


@pytest.mark.parametrize(
    "http_status, expected",
    [
        (500, PushStatus.RETRY),
        (502, PushStatus.RETRY),
        (503, PushStatus.RETRY),
        (200, PushStatus.RETRY),
        (404, PushStatus.PERMANENT),
        (429, PushStatus.RATE_LIMITED),
    ],
)
@pytest.mark.gen_test(timeout=10)
async def test_http_status_without_json_classified(
    getui_client, getui_fake, http_status, expected
):
    getui_fake.inject(path="push", http_status=http_status)

    outcome = await push(getui_client)

    assert outcome.status == expected
    assert outcome.vendor_code is None


@pytest.mark.gen_test(timeout=10)
async def test_dropped_connection_returns_retry(getui_client, getui_fake):
    # libcurl sends a request again, once, when a reused keep-alive
    # connection closes without a response. Two drops defeat that.
    getui_fake.inject(2, path="push", drop=True)

    outcome = await push(getui_client)

    assert outcome.status == PushStatus.RETRY
    assert outcome.vendor_code is None
    assert "network error" in outcome.detail


@pytest.mark.gen_test(timeout=10)
async def test_refused_connection_returns_retry(
    curl_client, getui_settings, getui_fake, clock
):
    client = GetuiClient(curl_client, getui_settings, clock=clock)
    await getui_fake.stop()

    outcome = await push(client)

    assert outcome.status == PushStatus.RETRY
    assert "network error" in outcome.detail


@pytest.mark.gen_test(timeout=10)
async def test_outage_window_then_recovery(getui_client, getui_fake, clock):
    await push(getui_client, "req00000000000001")
    getui_fake.start_outage(30)

    during = await push(getui_client, "req00000000000002")
    clock.advance(31)
    after = await push(getui_client, "req00000000000002")

    assert during.status == PushStatus.RETRY
    assert after.status == PushStatus.SENT
    assert [r["request_id"] for r in getui_fake.sent] == [
        "req00000000000001",
        "req00000000000002",
    ]


# Timeouts and idempotent retries


@pytest.mark.gen_test(timeout=10)
async def test_timeout_returns_retry_with_599(getui_client, getui_fake):
    getui_fake.inject(
        path="push", delay_seconds=REQUEST_TIMEOUT_SECONDS * 2, code=30019
    )

    outcome = await push(getui_client)

    assert outcome.status == PushStatus.RETRY
    assert outcome.vendor_code is None
    assert "HTTP 599" in outcome.detail
    assert "timed out" in outcome.detail


@pytest.mark.gen_test(timeout=10)
async def test_retry_after_timeout_recorded_once(getui_client, getui_fake):
    # The fake accepts the push only after the client gave up waiting.
    getui_fake.inject(path="push", delay_seconds=REQUEST_TIMEOUT_SECONDS * 2)

    first = await push(getui_client)
    await wait_for(lambda: len(getui_fake.sent) == 1)
    second = await push(getui_client)

    assert first.status == PushStatus.RETRY
    assert second.status == PushStatus.SENT
    assert len(getui_fake.sent) == 1
    assert second.vendor_message_id == getui_fake.sent[0]["task_id"]


@pytest.mark.gen_test(timeout=10)
async def test_retry_after_lost_response_recorded_once(getui_client, getui_fake):
    # Accepted, then the connection drops. libcurl's own resend counts too.
    getui_fake.inject(2, path="push", drop=True, process=True)

    first = await push(getui_client)
    second = await push(getui_client)

    assert first.status == PushStatus.RETRY
    assert second.status == PushStatus.SENT
    assert len(getui_fake.sent) == 1


@pytest.mark.gen_test(timeout=10)
async def test_same_request_id_recorded_once(getui_client, getui_fake):
    first = await push(getui_client)
    second = await push(getui_client)

    assert first.status == PushStatus.SENT
    assert second.status == PushStatus.SENT
    assert first.vendor_message_id == second.vendor_message_id
    assert len(getui_fake.sent) == 1


# Logging


@pytest.mark.gen_test(timeout=10)
async def test_logs_contain_no_credentials(getui_client, getui_fake, clock, caplog):
    caplog.set_level(logging.DEBUG)

    await push(getui_client, "req00000000000001")
    getui_fake.expire_tokens()
    await push(getui_client, "req00000000000002")
    await push(getui_client, "req00000000000003", cid="cidUnknown000000000000000000001")
    await getui_client.revoke_token()

    # tornado.access is the fake's own request log, which shows the revoked
    # token in the DELETE path.
    text = "\n".join(
        r.getMessage() for r in caplog.records if r.name != "tornado.access"
    )
    sign_source = (
        getui_fake.app_key + str(int(clock() * 1000)) + getui_fake.master_secret
    )
    sign = hashlib.sha256(sign_source.encode()).hexdigest()
    assert getui_fake.master_secret not in text
    assert sign not in text
    assert len(getui_fake.issued_tokens) == 2
    for token in getui_fake.issued_tokens:
        assert token not in text
    assert "request_id=req00000000000002 status=sent code=0" in text
    assert "status=invalid_target code=20001" in text


# Configuration


def test_config_from_dict_and_keywords(curl_client):
    client = GetuiClient(
        curl_client,
        {
            "app_id": "app",
            "app_key": "key",
            "master_secret": "secret",
            "request_timeout": 3,
        },
        request_timeout=4,
    )

    assert client.config.request_timeout == 4
    assert client.config.base_url == "https://restapi.getui.com/v2"
    assert "secret" not in repr(client.config)


@pytest.mark.parametrize(
    "settings, error",
    [
        ({"app_id": "app", "app_key": "key"}, TypeError),
        ({"app_id": "app", "app_key": "", "master_secret": "s"}, ValueError),
        (
            {"app_id": "app", "app_key": "k", "master_secret": "s", "ttl_ms": 10**10},
            ValueError,
        ),
        (
            {
                "app_id": "app",
                "app_key": "k",
                "master_secret": "s",
                "group_name": "bad name",
            },
            ValueError,
        ),
        (
            {"app_id": "app", "app_key": "k", "master_secret": "s", "unknown": 1},
            TypeError,
        ),
    ],
)
def test_invalid_config_raises(curl_client, settings, error):
    with pytest.raises(error):
        GetuiClient(curl_client, settings)
