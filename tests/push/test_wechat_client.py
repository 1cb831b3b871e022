"""WeChatClient against the fake WeChat server."""

import asyncio
import logging

import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web

from services.push_outcome import PushStatus
from services.wechat import (
    MemoryTokenStore,
    WeChatClient,
    build_template_data,
    parse_template_send_event,
    verify_callback_signature,
)
from tests.push.support import (
    FOLLOWER_OPENID,
    REQUEST_TIMEOUT_SECONDS,
    START_TIME,
    TEMPLATE_ID,
    TEMPLATE_MAPPING,
    UNFOLLOWED_OPENID,
    wait_for,
)

pytestmark = pytest.mark.timeout(30)

DATA = build_template_data(
    TEMPLATE_MAPPING, "王医生", int(START_TIME * 1000), "明天上午请来复诊"
)
CONVERSATION_URL = "https://im.example.com/chat?peer=doctor-7"


def send(client, client_msg_id="n1", openid=FOLLOWER_OPENID, **overrides):
    arguments = {"template_id": TEMPLATE_ID, "data": DATA, "url": CONVERSATION_URL}
    arguments.update(overrides)
    return client.send_template(openid, client_msg_id=client_msg_id, **arguments)


# Sending


@pytest.mark.gen_test(timeout=10)
async def test_send_template_is_sent(wechat_client, wechat_fake):
    outcome = await send(wechat_client)

    assert outcome.status == PushStatus.SENT
    assert outcome.vendor_code == 0
    assert len(wechat_fake.sent) == 1
    record = wechat_fake.sent[0]
    assert outcome.vendor_message_id == str(record["msgid"])
    assert record["msgid"] > 2**53
    assert record["openid"] == FOLLOWER_OPENID
    assert record["template_id"] == TEMPLATE_ID
    assert record["url"] == CONVERSATION_URL
    assert record["client_msg_id"] == "n1"
    assert record["data"] == {
        "thing1": {"value": "王医生"},
        "time2": {"value": "2025-12-04 08:00"},
        "thing3": {"value": "明天上午请来复诊"},
    }


@pytest.mark.gen_test(timeout=10)
async def test_plain_string_data_accepted(wechat_client, wechat_fake):
    data = {"thing1": "王医生", "time2": "08:00", "thing3": "复诊"}

    outcome = await send(wechat_client, data=data)

    assert outcome.status == PushStatus.SENT
    assert wechat_fake.sent[0]["data"]["time2"] == {"value": "08:00"}


@pytest.mark.gen_test(timeout=10)
async def test_dropped_fields_not_delivered(wechat_client, wechat_fake):
    data = dict(DATA, first={"value": "您有新消息", "color": "#173177"})
    data["thing1"] = {"value": "王医生", "color": "#FF0000"}

    outcome = await send(wechat_client, data=data)

    assert outcome.status == PushStatus.SENT
    assert "first" not in wechat_fake.sent[0]["data"]
    assert wechat_fake.sent[0]["data"]["thing1"] == {"value": "王医生"}


@pytest.mark.parametrize("client_msg_id", ["", "x" * 33, "has space", "中文"])
@pytest.mark.gen_test(timeout=10)
async def test_malformed_client_msg_id_raises(
    wechat_client, wechat_fake, client_msg_id
):
    with pytest.raises(ValueError, match="client_msg_id"):
        await send(wechat_client, client_msg_id)

    assert wechat_fake.calls["send"] == 0


# Access token


@pytest.mark.gen_test(timeout=10)
async def test_token_fetched_once_and_stored(
    wechat_client, wechat_fake, token_store, clock
):
    await send(wechat_client, "n1")
    await send(wechat_client, "n2")

    stored = await token_store.get()
    assert wechat_fake.calls["token"] == 1
    assert stored.value == wechat_fake.stable_token
    assert stored.expires_at == pytest.approx(clock() + 7200, abs=1)


@pytest.mark.gen_test(timeout=10)
async def test_clients_share_token_store(
    curl_client, wechat_settings, wechat_fake, clock
):
    store = MemoryTokenStore()
    first = WeChatClient(curl_client, wechat_settings, token_store=store, clock=clock)
    second = WeChatClient(curl_client, wechat_settings, token_store=store, clock=clock)

    await send(first, "n1")
    await send(second, "n2")

    assert wechat_fake.calls["token"] == 1


@pytest.mark.gen_test(timeout=10)
async def test_concurrent_sends_share_one_token_fetch(wechat_client, wechat_fake):
    outcomes = await asyncio.gather(*(send(wechat_client, "n%d" % i) for i in range(5)))

    assert [o.status for o in outcomes] == [PushStatus.SENT] * 5
    assert wechat_fake.calls["token"] == 1


@pytest.mark.gen_test(timeout=10)
async def test_token_refreshed_before_expiry(
    wechat_client, wechat_fake, token_store, clock
):
    await send(wechat_client, "n1")
    first_token = (await token_store.get()).value
    clock.advance(7200 - 299)

    outcome = await send(wechat_client, "n2")

    assert outcome.status == PushStatus.SENT
    assert wechat_fake.calls["token"] == 2
    assert wechat_fake.calls["send"] == 2
    assert (await token_store.get()).value != first_token


@pytest.mark.gen_test(timeout=10)
async def test_expired_token_mid_run_refreshed_once(wechat_client, wechat_fake):
    await send(wechat_client, "n1")
    wechat_fake.expire_tokens()

    outcome = await send(wechat_client, "n2")

    assert outcome.status == PushStatus.SENT
    assert wechat_fake.calls["token"] == 2
    # One send rejected with 42001, then one retry with the new token.
    assert wechat_fake.calls["send"] == 3
    assert wechat_fake.force_refresh_times == []


@pytest.mark.gen_test(timeout=10)
async def test_invalidated_token_refreshed_once(wechat_client, wechat_fake):
    await send(wechat_client, "n1")
    wechat_fake.invalidate_tokens()

    outcome = await send(wechat_client, "n2")

    assert outcome.status == PushStatus.SENT
    assert wechat_fake.calls["send"] == 3


@pytest.mark.gen_test(timeout=10)
async def test_rejected_current_token_forces_refresh(
    wechat_client, wechat_fake, token_store
):
    await send(wechat_client, "n1")
    rejected = (await token_store.get()).value
    wechat_fake.inject(path="send", code=40014)

    outcome = await send(wechat_client, "n2")

    assert outcome.status == PushStatus.SENT
    # Normal mode returned the rejected token again, so one force refresh followed.
    assert wechat_fake.calls["token"] == 3
    assert len(wechat_fake.force_refresh_times) == 1
    assert (await token_store.get()).value != rejected


@pytest.mark.gen_test(timeout=10)
async def test_force_refresh_respects_30_second_spacing(
    wechat_client, wechat_fake, clock
):
    await send(wechat_client, "n1")
    wechat_fake.inject(2, path="send", code=40001)
    first = await send(wechat_client, "n2")
    wechat_fake.inject(path="send", code=40001)

    second = await send(wechat_client, "n3")
    clock.advance(31)
    third = await send(wechat_client, "n3")

    assert first.status == PushStatus.RETRY
    assert first.vendor_code == 40001
    assert second.status == PushStatus.RETRY
    assert 0 < second.retry_after_seconds <= 30
    assert third.status == PushStatus.SENT
    assert len(wechat_fake.force_refresh_times) == 1


@pytest.mark.gen_test(timeout=10)
async def test_wrong_app_secret_is_permanent(
    curl_client, wechat_settings, wechat_fake, clock
):
    settings = dict(wechat_settings, app_secret="not-the-secret")
    client = WeChatClient(curl_client, settings, clock=clock)

    outcome = await send(client)

    # At the token API 40001 means a wrong secret, not a stale token.
    assert outcome.status == PushStatus.PERMANENT
    assert outcome.vendor_code == 40001
    assert wechat_fake.calls["token"] == 1
    assert wechat_fake.calls["send"] == 0


@pytest.mark.gen_test(timeout=10)
async def test_wrong_app_id_is_permanent(
    curl_client, wechat_settings, wechat_fake, clock
):
    client = WeChatClient(
        curl_client, dict(wechat_settings, app_id="wxwrong"), clock=clock
    )

    outcome = await send(client)

    assert outcome.status == PushStatus.PERMANENT
    assert outcome.vendor_code == 40013


@pytest.mark.parametrize(
    "code, expected",
    [
        (-1, PushStatus.RETRY),
        (45009, PushStatus.QUOTA_EXHAUSTED),
        (45011, PushStatus.RATE_LIMITED),
        (40164, PushStatus.PERMANENT),
    ],
)
@pytest.mark.gen_test(timeout=10)
async def test_token_api_errors_classified(wechat_client, wechat_fake, code, expected):
    wechat_fake.inject(path="token", code=code)

    outcome = await send(wechat_client)

    assert outcome.status == expected
    assert outcome.vendor_code == code
    assert wechat_fake.calls["send"] == 0


# Outcome classes


@pytest.mark.parametrize(
    "code, expected",
    [
        (-1, PushStatus.RETRY),
        (40003, PushStatus.INVALID_TARGET),
        (43004, PushStatus.INVALID_TARGET),
        (45009, PushStatus.QUOTA_EXHAUSTED),
        (45011, PushStatus.RATE_LIMITED),
        (45047, PushStatus.RATE_LIMITED),
        (40037, PushStatus.PERMANENT),
        (47003, PushStatus.PERMANENT),
        (41001, PushStatus.PERMANENT),
        (40164, PushStatus.PERMANENT),
    ],
)
@pytest.mark.gen_test(timeout=10)
async def test_errcode_classified(wechat_client, wechat_fake, code, expected):
    wechat_fake.inject(path="send", code=code)

    outcome = await send(wechat_client)

    assert outcome.status == expected
    assert outcome.vendor_code == code
    assert wechat_fake.sent == []


@pytest.mark.gen_test(timeout=10)
async def test_daily_quota_waits_for_beijing_midnight(wechat_client, wechat_fake):
    wechat_fake.daily_send_quota = 1
    await send(wechat_client, "n1")

    outcome = await send(wechat_client, "n2")

    assert outcome.status == PushStatus.QUOTA_EXHAUSTED
    assert outcome.vendor_code == 45009
    assert outcome.retry_after_seconds == 16 * 3600


@pytest.mark.gen_test(timeout=10)
async def test_unfollowed_user_is_invalid_target(wechat_client):
    outcome = await send(wechat_client, openid=UNFOLLOWED_OPENID)

    assert outcome.status == PushStatus.INVALID_TARGET
    assert outcome.vendor_code == 43004


@pytest.mark.gen_test(timeout=10)
async def test_unknown_openid_is_invalid_target(wechat_client):
    outcome = await send(wechat_client, openid="oFAKEunknown")

    assert outcome.status == PushStatus.INVALID_TARGET
    assert outcome.vendor_code == 40003


@pytest.mark.gen_test(timeout=10)
async def test_unknown_template_is_permanent(wechat_client):
    outcome = await send(wechat_client, template_id="tplUnknown")

    assert outcome.status == PushStatus.PERMANENT
    assert outcome.vendor_code == 40037


@pytest.mark.gen_test(timeout=10)
async def test_overlong_thing_value_is_permanent(wechat_client):
    data = dict(DATA, thing3={"value": "复诊" * 11})

    outcome = await send(wechat_client, data=data)

    assert outcome.status == PushStatus.PERMANENT
    assert outcome.vendor_code == 47003
    assert "data.thing3.value invalid" in outcome.detail


@pytest.mark.gen_test(timeout=10)
async def test_missing_template_key_is_permanent(wechat_client):
    data = {"thing1": DATA["thing1"], "time2": DATA["time2"]}

    outcome = await send(wechat_client, data=data)

    assert outcome.status == PushStatus.PERMANENT
    assert "data.thing3.value is empty" in outcome.detail


@pytest.mark.parametrize(
    "http_status, expected",
    [
        (500, PushStatus.RETRY),
        (502, PushStatus.RETRY),
        (200, PushStatus.RETRY),
        (404, PushStatus.PERMANENT),
    ],
)
@pytest.mark.gen_test(timeout=10)
async def test_http_status_without_json_classified(
    wechat_client, wechat_fake, http_status, expected
):
    wechat_fake.inject(path="send", http_status=http_status)

    outcome = await send(wechat_client)

    assert outcome.status == expected
    assert outcome.vendor_code is None


@pytest.mark.gen_test(timeout=10)
async def test_dropped_connection_returns_retry(wechat_client, wechat_fake):
    # libcurl resends once on a reused connection that closes without a response.
    wechat_fake.inject(2, path="send", drop=True)

    outcome = await send(wechat_client)

    assert outcome.status == PushStatus.RETRY
    assert "network error" in outcome.detail


@pytest.mark.gen_test(timeout=10)
async def test_outage_window_then_recovery(wechat_client, wechat_fake, clock):
    wechat_fake.start_outage(60, mode="drop")

    during = await send(wechat_client)
    clock.advance(61)
    after = await send(wechat_client)

    assert during.status == PushStatus.RETRY
    assert after.status == PushStatus.SENT
    assert len(wechat_fake.sent) == 1


# Timeouts and idempotent retries


@pytest.mark.gen_test(timeout=10)
async def test_timeout_returns_retry(wechat_client, wechat_fake):
    wechat_fake.inject(path="send", delay_seconds=REQUEST_TIMEOUT_SECONDS * 2, code=-1)

    outcome = await send(wechat_client)

    assert outcome.status == PushStatus.RETRY
    assert outcome.vendor_code is None
    assert "HTTP 599" in outcome.detail
    assert "timed out" in outcome.detail


@pytest.mark.gen_test(timeout=10)
async def test_retry_after_timeout_recorded_once(wechat_client, wechat_fake):
    # The fake accepts the message only after the client gave up waiting.
    wechat_fake.inject(path="send", delay_seconds=REQUEST_TIMEOUT_SECONDS * 2)

    first = await send(wechat_client)
    await wait_for(lambda: len(wechat_fake.sent) == 1)
    second = await send(wechat_client)

    assert first.status == PushStatus.RETRY
    assert second.status == PushStatus.SENT
    assert len(wechat_fake.sent) == 1
    assert second.vendor_message_id == str(wechat_fake.sent[0]["msgid"])


@pytest.mark.gen_test(timeout=10)
async def test_same_client_msg_id_recorded_once(wechat_client, wechat_fake):
    first = await send(wechat_client)
    second = await send(wechat_client)

    assert first.vendor_message_id == second.vendor_message_id
    assert len(wechat_fake.sent) == 1


@pytest.mark.gen_test(timeout=10)
async def test_client_msg_id_dedupe_ends_after_ten_minutes(
    wechat_client, wechat_fake, clock
):
    first = await send(wechat_client)
    clock.advance(601)
    second = await send(wechat_client)

    assert first.vendor_message_id != second.vendor_message_id
    assert len(wechat_fake.sent) == 2


@pytest.mark.gen_test(timeout=10)
async def test_same_client_msg_id_other_user_not_deduplicated(
    wechat_client, wechat_fake
):
    wechat_fake.add_user("oFAKE0000000000000000000003")

    await send(wechat_client)
    await send(wechat_client, openid="oFAKE0000000000000000000003")

    assert len(wechat_fake.sent) == 2


# Delivery callback


class CallbackHandler(tornado.web.RequestHandler):
    def initialize(self, received, token):
        self.received = received
        self.token = token

    def post(self):
        signed = verify_callback_signature(
            self.token,
            self.get_query_argument("signature"),
            self.get_query_argument("timestamp"),
            self.get_query_argument("nonce"),
        )
        self.received.append((signed, parse_template_send_event(self.request.body)))
        self.finish("success")


@pytest.fixture
def callback_receiver(io_loop):
    received = []
    token = "callbackToken01"
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    app = tornado.web.Application(
        [(r"/wechat/callback", CallbackHandler, {"received": received, "token": token})]
    )
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(sockets)
    url = "http://127.0.0.1:%d/wechat/callback" % sockets[0].getsockname()[1]
    yield url, token, received
    server.stop()
    io_loop.run_sync(server.close_all_connections)


@pytest.mark.parametrize(
    "status", ["success", "failed:user block", "failed: system failed"]
)
@pytest.mark.gen_test(timeout=10)
async def test_callback_reports_delivery(
    wechat_client, wechat_fake, callback_receiver, status
):
    url, token, received = callback_receiver
    wechat_fake.set_callback(url, token, status=status)

    outcome = await send(wechat_client)
    await wait_for(lambda: len(received) == 1)
    # The fake records the callback once it has read the receiver's response.
    await wait_for(lambda: len(wechat_fake.callbacks) == 1)

    signed, event = received[0]
    assert signed is True
    assert str(event.msg_id) == outcome.vendor_message_id
    assert event.status == status
    assert event.openid == FOLLOWER_OPENID
    assert event.delivered is (status == "success")
    assert event.user_blocked is (status == "failed:user block")
    assert wechat_fake.callbacks[0]["http_status"] == 200


# Logging


@pytest.mark.gen_test(timeout=10)
async def test_logs_contain_no_credentials(wechat_client, wechat_fake, caplog):
    caplog.set_level(logging.DEBUG)

    await send(wechat_client, "n1")
    wechat_fake.expire_tokens()
    await send(wechat_client, "n2")
    wechat_fake.inject(path="send", code=40001)
    await send(wechat_client, "n3")

    # tornado.access is the fake's own request log.
    text = "\n".join(
        r.getMessage() for r in caplog.records if r.name != "tornado.access"
    )
    assert len(wechat_fake.tokens) == 3
    for token in wechat_fake.tokens:
        assert token not in text
    assert wechat_fake.app_secret not in text
    assert "access_token=***" in text
    assert "client_msg_id=n3 status=sent code=0" in text


# Configuration


def test_config_from_dict_and_keywords(curl_client):
    client = WeChatClient(
        curl_client, {"app_id": "wx1", "app_secret": "s3cret"}, request_timeout=2
    )

    assert client.config.request_timeout == 2
    assert client.config.base_url == "https://api.weixin.qq.com"
    assert "s3cret" not in repr(client.config)


@pytest.mark.parametrize(
    "settings, error",
    [
        ({"app_id": "wx1"}, TypeError),
        ({"app_id": "", "app_secret": "s"}, ValueError),
        ({"app_id": "wx1", "app_secret": "s", "request_timeout": 0}, ValueError),
        ({"app_id": "wx1", "app_secret": "s", "secret": "s"}, TypeError),
    ],
)
def test_invalid_config_raises(curl_client, settings, error):
    with pytest.raises(error):
        WeChatClient(curl_client, settings)
