"""Result type and text helpers shared by the Getui and WeChat push clients.

A vendor client does not raise for a vendor or network failure. It returns
a ``PushOutcome`` whose ``status`` tells the push outbox what to do with
the row: mark it sent, retry it later, park it, drop the device, or give up.
"""

import dataclasses
import datetime
import enum
import random
import unicodedata

# Both vendors reset their daily quotas at midnight China Standard Time,
# which has no daylight saving time.
# NOTE: neither vendor's documentation states the reset time zone. Beijing
# midnight is an assumption, so treat the returned wait as an estimate.
CHINA_STANDARD_TIME = datetime.timezone(datetime.timedelta(hours=8), "CST")

# Added to a per-minute wait so that parked rows do not all wake at once.
RATE_LIMIT_JITTER_SECONDS = (1.0, 5.0)

ELLIPSIS = "\u2026"

# Characters that attach to the previous one and mean nothing at the end
# of a cut string: zero-width joiner and variation selectors.
_DANGLING_JOINERS = {"\u200d", "\ufe0e", "\ufe0f"}


class PushStatus(enum.StrEnum):
    """Classification of one push attempt, which decides the caller's next step."""

    # The vendor accepted the push.
    SENT = "sent"
    # Transient failure (network error, timeout, HTTP 5xx, vendor busy):
    # retry with backoff, reusing the same request id or client_msg_id.
    RETRY = "retry"
    # A short-window rate limit: retry after ``retry_after_seconds``.
    RATE_LIMITED = "rate_limited"
    # The daily quota is used up: park the push until the next day.
    QUOTA_EXHAUSTED = "quota_exhausted"
    # The Getui client id or WeChat openid cannot receive pushes: drop it
    # from the user's record and do not retry.
    INVALID_TARGET = "invalid_target"
    # Any other rejection (bad payload, bad configuration): do not retry.
    PERMANENT = "permanent"


@dataclasses.dataclass(frozen=True)
class PushOutcome:
    """Result of one push attempt, as returned by a vendor client.

    ``vendor_code`` is the vendor's body code (Getui ``code``, WeChat
    ``errcode``), or None when the vendor sent none. ``detail`` is text for
    logs and the outbox's last-error column. It never contains a token,
    secret or signature. ``vendor_message_id`` is the Getui task id or the
    WeChat ``msgid`` of an accepted push.
    """

    status: PushStatus
    vendor_code: int | None = None
    detail: str = ""
    retry_after_seconds: float | None = None
    vendor_message_id: str | None = None

    @property
    def retryable(self) -> bool:
        """Whether a later attempt of the same push may succeed."""
        return self.status in (
            PushStatus.RETRY,
            PushStatus.RATE_LIMITED,
            PushStatus.QUOTA_EXHAUSTED,
        )


def seconds_until_next_minute(now: float) -> float:
    """Return the wait from ``now`` (epoch seconds) to the next minute plus jitter."""
    return 60.0 - now % 60.0 + random.uniform(*RATE_LIMIT_JITTER_SECONDS)


def seconds_until_next_day(now: float, tz=CHINA_STANDARD_TIME) -> float:
    """Return the wait from ``now`` (epoch seconds) to the next midnight in ``tz``."""
    current = datetime.datetime.fromtimestamp(now, tz)
    next_day = current.date() + datetime.timedelta(days=1)
    midnight = datetime.datetime.combine(next_day, datetime.time(), tz)
    return (midnight - current).total_seconds()


def utf16_length(text: str) -> int:
    """Return the length of ``text`` in UTF-16 code units.

    Java's ``String.length()`` counts these, so a character outside the
    Basic Multilingual Plane (most emoji) counts twice.
    """
    return len(text.encode("utf-16-le")) // 2


def truncate_text(text: str, max_length: int, ellipsis: str = ELLIPSIS) -> str:
    """Cut ``text`` to at most ``max_length`` UTF-16 code units.

    A cut string ends with ``ellipsis``, which counts toward the limit.
    The cut never splits a surrogate pair and drops a dangling zero-width
    joiner or variation selector. Counting UTF-16 units is the stricter of
    the two usual counts, so the result also fits a limit in code points.
    """
    if utf16_length(text) <= max_length:
        return text
    budget = max_length - utf16_length(ellipsis)
    if budget <= 0:
        return ellipsis[:max_length]

    kept = []
    used = 0
    for char in text:
        size = 2 if ord(char) > 0xFFFF else 1
        if used + size > budget:
            break
        kept.append(char)
        used += size
    while kept and kept[-1] in _DANGLING_JOINERS:
        kept.pop()
    return "".join(kept).rstrip() + ellipsis


def flatten_whitespace(text: str) -> str:
    """Replace line breaks, tabs and other control characters with single spaces."""
    characters = []
    for char in text:
        category = unicodedata.category(char)
        if category in ("Cc", "Zl", "Zp") or char.isspace():
            characters.append(" ")
        else:
            characters.append(char)
    return " ".join("".join(characters).split())
