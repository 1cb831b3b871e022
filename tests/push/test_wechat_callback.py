"""verify_callback_signature and parse_template_send_event."""

import hashlib

import pytest

from services.wechat import parse_template_send_event, verify_callback_signature
from tests.fakes.wechat_fake import template_event_xml

pytestmark = pytest.mark.timeout(10)

TOKEN = "callbackToken01"
TIMESTAMP = "1764806400"
NONCE = "482716"


def signature(token=TOKEN, timestamp=TIMESTAMP, nonce=NONCE):
    return hashlib.sha1("".join(sorted([token, timestamp, nonce])).encode()).hexdigest()


def test_valid_signature_accepted():
    assert verify_callback_signature(TOKEN, signature(), TIMESTAMP, NONCE) is True


def test_uppercase_signature_accepted():
    assert (
        verify_callback_signature(TOKEN, signature().upper(), TIMESTAMP, NONCE) is True
    )


@pytest.mark.parametrize(
    "token, sig, timestamp, nonce",
    [
        ("otherToken", signature(), TIMESTAMP, NONCE),
        (TOKEN, signature(), "1764806401", NONCE),
        (TOKEN, signature(), TIMESTAMP, "482717"),
        (TOKEN, "0" * 40, TIMESTAMP, NONCE),
        (TOKEN, "", TIMESTAMP, NONCE),
        ("", signature(token=""), TIMESTAMP, NONCE),
        (TOKEN, signature(), "", NONCE),
    ],
)
def test_wrong_signature_rejected(token, sig, timestamp, nonce):
    assert verify_callback_signature(token, sig, timestamp, nonce) is False


def test_event_parsed():
    body = template_event_xml("oFAKE01", 3717005636572528642, "success", 1395658920)

    event = parse_template_send_event(body.encode("utf-8"))

    assert event.msg_id == 3717005636572528642
    assert event.status == "success"
    assert event.openid == "oFAKE01"
    assert event.created_at == 1395658920
    assert event.delivered is True
    assert event.user_blocked is False


@pytest.mark.parametrize(
    "status, delivered, user_blocked",
    [
        ("failed:user block", False, True),
        ("failed: system failed", False, False),
        ("failed:freq limit", False, False),
    ],
)
def test_failed_statuses(status, delivered, user_blocked):
    event = parse_template_send_event(template_event_xml("oFAKE01", 1, status, 0))

    assert event.status == status
    assert event.delivered is delivered
    assert event.user_blocked is user_blocked


def test_other_event_returns_none():
    body = (
        "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[o1]]></FromUserName>"
        "<CreateTime>1</CreateTime><MsgType><![CDATA[event]]></MsgType>"
        "<Event><![CDATA[subscribe]]></Event></xml>"
    )

    assert parse_template_send_event(body) is None


def test_text_message_returns_none():
    body = (
        "<xml><MsgType><![CDATA[text]]></MsgType>"
        "<Content><![CDATA[hi]]></Content></xml>"
    )

    assert parse_template_send_event(body) is None


@pytest.mark.parametrize(
    "body, message",
    [
        ("<xml><MsgType>event", "not valid XML"),
        ("not xml at all", "not valid XML"),
        (
            '<!DOCTYPE xml [<!ENTITY a "aaaa">]><xml><MsgType>&a;</MsgType></xml>',
            "DOCTYPE",
        ),
        (
            "<xml><ToUserName>gh</ToUserName><Encrypt><![CDATA[abc]]></Encrypt></xml>",
            "encrypted",
        ),
        (
            "<xml><MsgType>event</MsgType><Event>TEMPLATESENDJOBFINISH</Event>"
            "<MsgID>abc</MsgID><Status>success</Status></xml>",
            "MsgID",
        ),
    ],
)
def test_bad_body_raises(body, message):
    with pytest.raises(ValueError, match=message):
        parse_template_send_event(body)
