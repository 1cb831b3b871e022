"""The fakes run as separate processes and obey their control API."""

import pytest

from services.getui import GetuiClient
from services.push_outcome import PushStatus
from services.wechat import WeChatClient, build_template_data
from tests.fakes import FakeControl
from tests.fakes.getui_fake import GetuiFake
from tests.fakes.wechat_fake import WeChatFake
from tests.push.support import TEMPLATE_MAPPING

pytestmark = pytest.mark.timeout(60)


@pytest.mark.gen_test(timeout=20)
async def test_getui_fake_process(start_fake_process, curl_client):
    port = start_fake_process("tests.fakes.getui_fake", "--cid", "cidScenario0001")
    defaults = GetuiFake()
    control = FakeControl("http://127.0.0.1:%d" % port)
    client = GetuiClient(
        curl_client,
        base_url="http://127.0.0.1:%d/v2" % port,
        app_id=defaults.app_id,
        app_key=defaults.app_key,
        master_secret=defaults.master_secret,
        request_timeout=2,
    )

    sent = await client.push_single(
        "cidScenario0001", "req00000000000001", "Dr. Wang", "Hello", {"c": 1}
    )
    unknown = await client.push_single(
        "cidOther0000001", "req00000000000002", "Dr. Wang", "Hello", {"c": 1}
    )
    control.inject(path="push", code=30019)
    busy = await client.push_single(
        "cidScenario0001", "req00000000000003", "Dr. Wang", "Hello", {"c": 1}
    )
    control.post("expire_tokens")
    after_expiry = await client.push_single(
        "cidScenario0001", "req00000000000003", "Dr. Wang", "Hi", {"c": 1}
    )

    assert sent.status == PushStatus.SENT
    assert sent.detail == "successed_offline"
    assert unknown.status == PushStatus.INVALID_TARGET
    assert busy.status == PushStatus.RETRY
    assert after_expiry.status == PushStatus.SENT
    records = control.sent()
    assert [r["request_id"] for r in records] == [
        "req00000000000001",
        "req00000000000003",
    ]
    assert control.get("calls")["auth"] == 2


@pytest.mark.gen_test(timeout=20)
async def test_getui_fake_process_accepts_any_cid(start_fake_process, curl_client):
    port = start_fake_process(
        "tests.fakes.getui_fake", "--accept-any-cid", "--app-id", "scenarioApp"
    )
    defaults = GetuiFake()
    client = GetuiClient(
        curl_client,
        base_url="http://127.0.0.1:%d/v2" % port,
        app_id="scenarioApp",
        app_key=defaults.app_key,
        master_secret=defaults.master_secret,
    )

    outcome = await client.push_single(
        "cid-fake-0001", "req00000000000001", "t", "b", {"c": 1}
    )

    assert outcome.status == PushStatus.SENT


@pytest.mark.gen_test(timeout=20)
async def test_wechat_fake_process(start_fake_process, curl_client):
    port = start_fake_process(
        "tests.fakes.wechat_fake",
        "--template",
        "tplNewMessage=thing1,time2,thing3",
        "--openid",
        "oFAKE01000001",
    )
    defaults = WeChatFake()
    control = FakeControl("http://127.0.0.1:%d" % port)
    client = WeChatClient(
        curl_client,
        base_url="http://127.0.0.1:%d" % port,
        app_id=defaults.app_id,
        app_secret=defaults.app_secret,
        request_timeout=2,
    )
    data = build_template_data(TEMPLATE_MAPPING, "王医生", 1764806400000, "复诊提醒")

    sent = await client.send_template(
        "oFAKE01000001", "tplNewMessage", data, client_msg_id="n1"
    )
    repeated = await client.send_template(
        "oFAKE01000001", "tplNewMessage", data, client_msg_id="n1"
    )
    control.post("users", openid="oFAKE01000003", subscribed=False)
    unfollowed = await client.send_template(
        "oFAKE01000003", "tplNewMessage", data, client_msg_id="n2"
    )
    control.post("outage", seconds=60, mode="drop")
    during_outage = await client.send_template(
        "oFAKE01000001", "tplNewMessage", data, client_msg_id="n3"
    )
    control.post("end_outage")
    after_outage = await client.send_template(
        "oFAKE01000001", "tplNewMessage", data, client_msg_id="n3"
    )

    assert sent.status == PushStatus.SENT
    assert repeated.vendor_message_id == sent.vendor_message_id
    assert unfollowed.status == PushStatus.INVALID_TARGET
    assert during_outage.status == PushStatus.RETRY
    assert after_outage.status == PushStatus.SENT
    records = control.sent()
    assert [r["client_msg_id"] for r in records] == ["n1", "n3"]
    assert records[0]["data"]["thing3"] == {"value": "复诊提醒"}


def test_fake_process_prints_port_first(start_fake_process):
    port = start_fake_process("tests.fakes.wechat_fake")

    assert 0 < port < 65536
    assert FakeControl("http://127.0.0.1:%d" % port).sent() == []
