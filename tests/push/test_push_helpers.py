"""scrub_url, outcome logging and the shared text and time helpers."""

import logging

import pytest

from services.httplog import (
    CURL_LOGGER_NAME,
    log_push_outcome,
    protect_http_client_logs,
    scrub_url,
)
from services.push_outcome import (
    PushOutcome,
    PushStatus,
    flatten_whitespace,
    seconds_until_next_day,
    seconds_until_next_minute,
    truncate_text,
    utf16_length,
)

pytestmark = pytest.mark.timeout(10)

BEIJING_MIDNIGHT = 1_764_777_600.0  # 2025-12-04 00:00 in Beijing


@pytest.mark.parametrize(
    "url, expected",
    [
        (
            "https://api.weixin.qq.com/cgi-bin/message/template/send?access_token=abc.DEF-123",
            "https://api.weixin.qq.com/cgi-bin/message/template/send?access_token=***",
        ),
        (
            "https://h/p?a=1&token=t0k&b=2&sign=s1g&secret=s3c&c=%20x",
            "https://h/p?a=1&token=***&b=2&sign=***&secret=***&c=%20x",
        ),
        (
            "https://h/p?ACCESS_TOKEN=abc&Secret=x",
            "https://h/p?ACCESS_TOKEN=***&Secret=***",
        ),
        ("https://h/p?access%5Ftoken=abc", "https://h/p?access%5Ftoken=***"),
        ("https://h/p?token", "https://h/p?token=***"),
        (
            "https://h/p?tokens=keep&mytoken=keep",
            "https://h/p?tokens=keep&mytoken=keep",
        ),
        ("https://user:pa55@h/p?x=1#frag", "https://user:***@h/p?x=1#frag"),
        ("https://h/v2/app/push/single/cid", "https://h/v2/app/push/single/cid"),
    ],
)
def test_scrub_url(url, expected):
    assert scrub_url(url) == expected


@pytest.mark.parametrize(
    "status, level",
    [
        (PushStatus.SENT, logging.INFO),
        (PushStatus.INVALID_TARGET, logging.INFO),
        (PushStatus.RETRY, logging.WARNING),
        (PushStatus.RATE_LIMITED, logging.WARNING),
        (PushStatus.QUOTA_EXHAUSTED, logging.ERROR),
        (PushStatus.PERMANENT, logging.ERROR),
    ],
)
def test_outcome_log_level(caplog, status, level):
    logger = logging.getLogger("tests.push.outcome")
    caplog.set_level(logging.DEBUG, logger="tests.push.outcome")

    log_push_outcome(
        logger,
        "getui",
        "request_id",
        "req0000000001",
        PushOutcome(status, 7, "why"),
        0.25,
    )

    record = caplog.records[-1]
    assert record.levelno == level
    assert record.getMessage() == (
        "getui push request_id=req0000000001 status=%s code=7 elapsed=0.250s detail=why"
        % status.value
    )


def test_curl_debug_log_capped_at_info():
    curl_logger = logging.getLogger(CURL_LOGGER_NAME)
    previous = curl_logger.level
    try:
        curl_logger.setLevel(logging.NOTSET)
        protect_http_client_logs()
        assert curl_logger.level == logging.INFO

        curl_logger.setLevel(logging.WARNING)
        protect_http_client_logs()
        assert curl_logger.level == logging.WARNING
    finally:
        curl_logger.setLevel(previous)


def test_outcome_retryable():
    assert PushOutcome(PushStatus.RETRY).retryable
    assert PushOutcome(PushStatus.RATE_LIMITED).retryable
    assert PushOutcome(PushStatus.QUOTA_EXHAUSTED).retryable
    assert not PushOutcome(PushStatus.SENT).retryable
    assert not PushOutcome(PushStatus.INVALID_TARGET).retryable
    assert not PushOutcome(PushStatus.PERMANENT).retryable


def test_status_compares_as_string():
    assert PushStatus.QUOTA_EXHAUSTED == "quota_exhausted"


def test_next_minute_wait():
    wait = seconds_until_next_minute(BEIJING_MIDNIGHT + 50)

    assert 11 <= wait <= 15


def test_next_day_wait():
    assert seconds_until_next_day(BEIJING_MIDNIGHT) == 86400
    assert seconds_until_next_day(BEIJING_MIDNIGHT + 86399) == 1


@pytest.mark.parametrize(
    "text, limit, expected",
    [
        ("short", 10, "short"),
        ("exactly10!", 10, "exactly10!"),
        ("eleven chars", 10, "eleven ch…"),
        ("word  and more", 6, "word…"),
        ("😀😀😀😀", 5, "😀😀…"),
        ("ab\u200d😀", 4, "ab…"),
        ("x👍\ufe0fyz", 5, "x👍…"),
        ("abc", 1, "…"),
    ],
)
def test_truncate_text(text, limit, expected):
    result = truncate_text(text, limit)

    assert result == expected
    assert utf16_length(result) <= limit


def test_flatten_whitespace():
    assert flatten_whitespace(" a\r\nb\t\tc\x00d\u2029e ") == "a b c d e"
