"""WeChat Official Account (服务号) template messages.

This module has four parts: ``WeChatClient`` sends template messages and
manages the access token, ``build_template_data`` fills a template's
fields under the value rules of 2023, and ``verify_callback_signature``
and ``parse_template_send_event`` handle the delivery callback.

Wire contract, from WeChat's documentation of getStableAccessToken and
sendTemplateMessage (developers.weixin.qq.com/doc/service/api/):

- ``POST /cgi-bin/stable_token`` returns the account's access token. In
  normal mode it returns the same token until the platform rotates it,
  about 5 minutes before expiry. ``force_refresh`` issues a new token, at
  most 20 times a day and 30 seconds apart. A force call sooner than that
  returns the current token unchanged.
- ``POST /cgi-bin/message/template/send?access_token=...`` returns HTTP 200
  with ``{"errcode", "errmsg", "msgid"}`` for success and for business
  errors. ``errmsg`` ends with a request id, so only ``errcode`` is matched.
- WeChat sends one message per ``openid`` and ``client_msg_id`` within
  10 minutes, which makes a retry with the same id safe.
"""

import asyncio
import dataclasses
import datetime
import hashlib
import hmac
import json
import logging
import re
import time
import urllib.parse
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from services.httplog import log_push_outcome, protect_http_client_logs, scrub_url
from services.push_outcome import (
    CHINA_STANDARD_TIME,
    PushOutcome,
    PushStatus,
    flatten_whitespace,
    seconds_until_next_day,
    seconds_until_next_minute,
    truncate_text,
)

logger = logging.getLogger(__name__)

VENDOR = "wechat"
DEFAULT_BASE_URL = "https://api.weixin.qq.com"
DEFAULT_CONNECT_TIMEOUT_SECONDS = 5.0
DEFAULT_REQUEST_TIMEOUT_SECONDS = 10.0

# Refresh when this little of the token's life is left. WeChat rotates a
# stable token 5 minutes before expiry, so a normal-mode call in that
# window returns the new token.
DEFAULT_TOKEN_REFRESH_MARGIN_SECONDS = 300.0
FORCE_REFRESH_MIN_INTERVAL_SECONDS = 30.0
FORCE_REFRESH_DAILY_LIMIT = 20
SECONDS_PER_DAY = 86400.0

CODE_OK = 0
CODE_SYSTEM_BUSY = -1
# 40001 invalid credential, 40014 invalid access_token, 42001 expired.
TOKEN_REJECTED_CODES = frozenset({40001, 40014, 42001})
# 40003 invalid openid, 43004 the user does not follow the account.
INVALID_TARGET_CODES = frozenset({40003, 43004})
CODE_DAILY_QUOTA = 45009
# 45011 calls per minute. 45047 is the customer-service message cap, listed
# here because a send with it later succeeds once the window passes.
RATE_LIMIT_CODES = frozenset({45011, 45047})

# NOTE: WeChat documents no maximum length for client_msg_id. 32 ASCII
# characters is the limit we chose to stay safe.
CLIENT_MSG_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,32}")

MAX_DETAIL_LENGTH = 300


@dataclasses.dataclass(frozen=True)
class WeChatConfig:
    """Settings of one Official Account. Timeouts are in seconds."""

    app_id: str
    app_secret: str = dataclasses.field(repr=False)
    base_url: str = DEFAULT_BASE_URL
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_SECONDS
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT_SECONDS
    token_refresh_margin_seconds: float = DEFAULT_TOKEN_REFRESH_MARGIN_SECONDS

    def __post_init__(self):
        for name in ("app_id", "app_secret", "base_url"):
            if not getattr(self, name):
                raise ValueError("WeChat setting %s is missing" % name)
        if self.connect_timeout <= 0 or self.request_timeout <= 0:
            raise ValueError("WeChat timeouts must be positive seconds")
        if self.token_refresh_margin_seconds < 0:
            raise ValueError("WeChat token_refresh_margin_seconds must not be negative")


@dataclasses.dataclass(frozen=True)
class AccessToken:
    """An access token and the epoch second at which WeChat stops accepting it."""

    value: str = dataclasses.field(repr=False)
    expires_at: float


class TokenStore(Protocol):
    """Storage for the account's access token, shared by every process that sends.

    A database or Redis implementation lets several processes reuse one
    token instead of fetching their own.
    """

    async def get(self) -> AccessToken | None: ...

    async def set(self, token: str, expires_at: float) -> None: ...


class MemoryTokenStore:
    """Token store for one process, and for tests."""

    def __init__(self):
        self._token: AccessToken | None = None

    async def get(self) -> AccessToken | None:
        return self._token

    async def set(self, token: str, expires_at: float) -> None:
        self._token = AccessToken(token, expires_at)


@dataclasses.dataclass
class _Reply:
    """One HTTP exchange with WeChat, reduced to what classification needs."""

    http_status: int
    errcode: int | None = None
    errmsg: str = ""
    document: dict | None = None
    # Transport error text for HTTP 599 (timeout, refused, reset).
    error: str | None = None


class _TokenUnavailable(Exception):
    """Raised when no usable access token is available.

    ``outcome`` is what the send reports.
    """

    def __init__(self, outcome: PushOutcome):
        super().__init__(outcome.detail)
        self.outcome = outcome


class WeChatClient:
    """Sends template messages of one Official Account.

    The access token lives in ``token_store`` (a ``MemoryTokenStore`` by
    default). Concurrent sends in one process share one token fetch.
    """

    vendor = VENDOR

    def __init__(
        self,
        http_client: AsyncHTTPClient,
        config: WeChatConfig | Mapping[str, Any] | None = None,
        *,
        token_store: TokenStore | None = None,
        clock: Callable[[], float] = time.time,
        **options: Any,
    ):
        """Build a client from a ``WeChatConfig``, a dict, keyword options or both.

        Keyword options override the dict. Raises ValueError or TypeError
        when a setting is missing, unknown or invalid. ``clock`` returns
        epoch seconds and exists for tests. Also caps Tornado's curl logger
        at INFO, see ``protect_http_client_logs``.
        """
        if isinstance(config, WeChatConfig):
            config = dataclasses.asdict(config)
        settings = dict(config or {})
        settings.update(options)
        self.config = WeChatConfig(**settings)
        self._http = http_client
        self._store = token_store if token_store is not None else MemoryTokenStore()
        self._clock = clock
        self._base_url = self.config.base_url.rstrip("/")
        self._token_fetch: asyncio.Task | None = None
        self._force_refresh_times: list[float] = []
        protect_http_client_logs()

    async def send_template(
        self,
        openid: str,
        template_id: str,
        data: Mapping[str, Any],
        url: str | None = None,
        client_msg_id: str | None = None,
        *,
        miniprogram: Mapping[str, str] | None = None,
    ) -> PushOutcome:
        """Send one template message to ``openid`` and classify the result.

        ``data`` maps template keys (``thing1``, not ``thing1.DATA``) to a
        string or to ``{"value": string}``, for example the result of
        ``build_template_data``. ``client_msg_id`` must be stable across
        retries of the same message, because WeChat sends one message per
        openid and id within 10 minutes.

        Does not raise for vendor or network failures. Raises ValueError
        for a missing openid or template id, or a malformed client_msg_id.
        Exceptions from the token store propagate.
        """
        body = _send_body(openid, template_id, data, url, client_msg_id, miniprogram)
        started = self._clock()
        try:
            outcome = await self._send_with_token(body)
        except _TokenUnavailable as failure:
            outcome = failure.outcome
        elapsed = self._clock() - started
        log_push_outcome(
            logger, VENDOR, "client_msg_id", client_msg_id, outcome, elapsed
        )
        return outcome

    async def _send_with_token(self, body: dict[str, Any]) -> PushOutcome:
        token = await self._current_token()
        reply = await self._post_send(body, token)

        if reply.errcode in TOKEN_REJECTED_CODES:
            logger.info(
                "wechat rejected the access token (errcode %s) for client_msg_id=%s, "
                "so the client refreshes it and retries once",
                reply.errcode,
                body.get("client_msg_id"),
            )
            token = await self._current_token(rejected=token)
            reply = await self._post_send(body, token)

        if reply.errcode == CODE_OK:
            return PushOutcome(
                PushStatus.SENT,
                CODE_OK,
                "accepted",
                vendor_message_id=str(reply.document.get("msgid")),
            )
        return self._classify_send_failure(reply)

    async def _post_send(self, body: dict[str, Any], token: str) -> _Reply:
        path = "/cgi-bin/message/template/send?access_token=" + urllib.parse.quote(
            token, safe=""
        )
        reply = await self._call(path, body)
        if reply.errcode is None and reply.document is not None:
            # WeChat's success carries errcode 0. A msgid alone also counts.
            if "msgid" in reply.document:
                reply.errcode = CODE_OK
        return reply

    async def _current_token(self, rejected: str | None = None) -> str:
        """Return a usable access token, fetching a new one when needed.

        ``rejected`` is a token that WeChat just refused. A normal-mode
        fetch keeps returning that token until it expires, so when it does,
        one force refresh follows, within WeChat's force budget.
        """
        stored = await self._store.get()
        if stored is not None and stored.value != rejected:
            refresh_at = stored.expires_at - self.config.token_refresh_margin_seconds
            if self._clock() < refresh_at:
                return stored.value

        token = await self._shared_fetch(force=False)
        if rejected is None or token.value != rejected:
            return token.value

        token = await self._shared_fetch(force=True)
        if token.value != rejected:
            return token.value
        raise _TokenUnavailable(
            PushOutcome(
                PushStatus.RETRY,
                None,
                "wechat keeps returning the access token that the send API rejected",
            )
        )

    async def _shared_fetch(self, force: bool) -> AccessToken:
        if self._token_fetch is None:
            self._token_fetch = asyncio.ensure_future(self._fetch_token(force))
        return await asyncio.shield(self._token_fetch)

    async def _fetch_token(self, force: bool) -> AccessToken:
        try:
            if force:
                self._spend_force_refresh()
            return await self._request_token(force)
        finally:
            self._token_fetch = None

    def _spend_force_refresh(self) -> None:
        """Record one force refresh, or raise _TokenUnavailable if WeChat ignores it."""
        now = self._clock()
        recent = [t for t in self._force_refresh_times if now - t < SECONDS_PER_DAY]
        self._force_refresh_times = recent

        wait = 0.0
        if len(recent) >= FORCE_REFRESH_DAILY_LIMIT:
            wait = recent[0] + SECONDS_PER_DAY - now
        elif recent and now - recent[-1] < FORCE_REFRESH_MIN_INTERVAL_SECONDS:
            wait = recent[-1] + FORCE_REFRESH_MIN_INTERVAL_SECONDS - now
        if wait > 0:
            raise _TokenUnavailable(
                PushOutcome(
                    PushStatus.RETRY,
                    None,
                    "wechat access token was rejected and a force refresh is "
                    "not allowed for %.0f more seconds" % wait,
                    retry_after_seconds=wait,
                )
            )
        recent.append(now)

    async def _request_token(self, force: bool) -> AccessToken:
        body = {
            "grant_type": "client_credential",
            "appid": self.config.app_id,
            "secret": self.config.app_secret,
            "force_refresh": force,
        }
        now = self._clock()
        reply = await self._call("/cgi-bin/stable_token", body)

        document = reply.document or {}
        value = document.get("access_token")
        expires_in = document.get("expires_in")
        if reply.errcode in (None, CODE_OK) and isinstance(value, str) and value:
            if isinstance(expires_in, (int, float)) and expires_in > 0:
                expires_at = now + expires_in
                await self._store.set(value, expires_at)
                logger.info(
                    "wechat access token fetched (force_refresh=%s), "
                    "it expires in %s seconds",
                    force,
                    expires_in,
                )
                return AccessToken(value, expires_at)

        outcome = self._classify_token_failure(reply)
        logger.warning(
            "wechat access token fetch failed: status=%s code=%s detail=%s",
            outcome.status.value,
            outcome.vendor_code,
            outcome.detail,
        )
        raise _TokenUnavailable(outcome)

    async def _call(self, path: str, body: dict[str, Any]) -> _Reply:
        url = self._base_url + path
        request = HTTPRequest(
            url,
            method="POST",
            headers={"Content-Type": "application/json;charset=utf-8"},
            body=json.dumps(body, ensure_ascii=False).encode("utf-8"),
            connect_timeout=self.config.connect_timeout,
            request_timeout=self.config.request_timeout,
        )
        try:
            response = await self._http.fetch(request, raise_error=False)
        except HTTPClientError as error:
            # Raised only for code 599: timeouts and connection failures.
            return _Reply(error.code, error=str(error))
        except OSError as error:
            return _Reply(599, error="%s: %s" % (type(error).__name__, error))

        reply = _Reply(response.code)
        try:
            document = json.loads(response.body or b"")
        except ValueError:
            document = None
        if isinstance(document, dict):
            reply.document = document
            if isinstance(document.get("errcode"), int):
                reply.errcode = document["errcode"]
                reply.errmsg = str(document.get("errmsg") or "")
        logger.debug(
            "wechat POST %s -> http=%s errcode=%s",
            scrub_url(url),
            reply.http_status,
            reply.errcode,
        )
        return reply

    def _classify_send_failure(self, reply: _Reply) -> PushOutcome:
        """Map a failed send to what the caller should do next."""
        code = reply.errcode
        if code is None:
            return _classify_http_status(reply, "send")

        if code == CODE_SYSTEM_BUSY:
            return PushOutcome(
                PushStatus.RETRY, code, _detail("wechat system busy", reply)
            )
        if code in TOKEN_REJECTED_CODES:
            # Still rejected after one refresh: most likely another process
            # fetched a new token in between.
            return PushOutcome(
                PushStatus.RETRY,
                code,
                _detail("wechat rejected a fresh access token", reply),
            )
        if code == CODE_DAILY_QUOTA:
            return PushOutcome(
                PushStatus.QUOTA_EXHAUSTED,
                code,
                _detail("wechat daily quota used up", reply),
                retry_after_seconds=seconds_until_next_day(self._clock()),
            )
        if code in RATE_LIMIT_CODES:
            return PushOutcome(
                PushStatus.RATE_LIMITED,
                code,
                _detail("wechat rate limit reached", reply),
                retry_after_seconds=seconds_until_next_minute(self._clock()),
            )
        if code in INVALID_TARGET_CODES:
            return PushOutcome(
                PushStatus.INVALID_TARGET,
                code,
                _detail("wechat openid cannot receive template messages", reply),
            )
        return PushOutcome(
            PushStatus.PERMANENT, code, _detail("wechat rejected the message", reply)
        )

    def _classify_token_failure(self, reply: _Reply) -> PushOutcome:
        """Map a failed token fetch to the outcome of the send that needed it.

        Unlike at the send API, 40001 here means a wrong AppSecret, which
        only a configuration change fixes.
        """
        code = reply.errcode
        if code is None:
            return _classify_http_status(reply, "stable_token")
        if code == CODE_SYSTEM_BUSY:
            return PushOutcome(
                PushStatus.RETRY, code, _detail("wechat token API busy", reply)
            )
        if code == CODE_DAILY_QUOTA:
            return PushOutcome(
                PushStatus.QUOTA_EXHAUSTED,
                code,
                _detail("wechat token API daily quota used up", reply),
                retry_after_seconds=seconds_until_next_day(self._clock()),
            )
        if code in RATE_LIMIT_CODES:
            return PushOutcome(
                PushStatus.RATE_LIMITED,
                code,
                _detail("wechat token API rate limit reached", reply),
                retry_after_seconds=seconds_until_next_minute(self._clock()),
            )
        return PushOutcome(
            PushStatus.PERMANENT,
            code,
            _detail("wechat token API rejected the app_id or app_secret", reply),
        )


def _send_body(
    openid: str,
    template_id: str,
    data: Mapping[str, Any],
    url: str | None,
    client_msg_id: str | None,
    miniprogram: Mapping[str, str] | None,
) -> dict[str, Any]:
    if not openid:
        raise ValueError("WeChat openid is missing")
    if not template_id:
        raise ValueError("WeChat template_id is missing")
    if client_msg_id is not None and not CLIENT_MSG_ID_PATTERN.fullmatch(client_msg_id):
        raise ValueError(
            "WeChat client_msg_id %r is invalid: use 1 to 32 letters, digits, "
            "'-' or '_'" % (client_msg_id,)
        )

    items = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            value = value.get("value", "")
        items[key] = {"value": str(value)}

    body: dict[str, Any] = {"touser": openid, "template_id": template_id, "data": items}
    if url:
        body["url"] = url
    if miniprogram:
        body["miniprogram"] = dict(miniprogram)
    if client_msg_id is not None:
        body["client_msg_id"] = client_msg_id
    return body


def _classify_http_status(reply: _Reply, api: str) -> PushOutcome:
    """Classify an exchange whose body carried no errcode."""
    status = reply.http_status
    if status == 599:
        return PushOutcome(
            PushStatus.RETRY,
            None,
            _truncate("wechat %s network error: %s" % (api, reply.error)),
        )
    if status >= 500 or 200 <= status < 300:
        # WeChat returns business errors as HTTP 200 with JSON, so a 5xx
        # or an unreadable 200 comes from a proxy or an outage.
        return PushOutcome(
            PushStatus.RETRY,
            None,
            "wechat %s HTTP %d with an unreadable body" % (api, status),
        )
    return PushOutcome(
        PushStatus.PERMANENT,
        None,
        "wechat %s HTTP %d with an unreadable body" % (api, status),
    )


def _detail(prefix: str, reply: _Reply) -> str:
    return _truncate("%s: errcode %s, %s" % (prefix, reply.errcode, reply.errmsg))


def _truncate(text: str) -> str:
    return truncate_text(text, MAX_DETAIL_LENGTH, "...")


# Template data ---------------------------------------------------------------

# Sources that a template field mapping can name. Any other mapping value
# must start with TEXT_SOURCE_PREFIX and is sent as fixed text.
SOURCE_SENDER_NAME = "sender_name"
SOURCE_SENT_AT = "sent_at"
SOURCE_EXCERPT = "excerpt"
TEXT_SOURCE_PREFIX = "text:"

# Fields that WeChat stopped showing in 2023 and silently drops.
DROPPED_FIELD_KINDS = frozenset({"first", "remark"})

# Placeholder for a text field whose source is empty, because WeChat
# rejects an empty value.
EMPTY_VALUE_PLACEHOLDER = "-"

TIME_FORMAT = "%Y-%m-%d %H:%M"
_TIME_PART = (
    r"(?:\d{4}-\d{1,2}-\d{1,2} |\d{4}年\d{1,2}月\d{1,2}日 ?)?\d{1,2}:\d{2}(?::\d{2})?"
)
TIME_VALUE_PATTERN = re.compile(r"%s(?:\s?~\s?%s)?" % (_TIME_PART, _TIME_PART))
DATE_VALUE_PATTERN = re.compile(
    r"(?:\d{4}-\d{1,2}-\d{1,2}|\d{4}年\d{1,2}月\d{1,2}日)(?: \d{1,2}:\d{2}(?::\d{2})?)?"
)
AMOUNT_VALUE_PATTERN = re.compile(r"[¥￥$€£]\d{1,10}(?:\.\d{1,2})?元?")
PHONE_NUMBER_CHARACTERS = frozenset("0123456789+-() ")

# Maximum lengths by field kind. WeChat rejects a longer value with 47003.
FIELD_MAX_LENGTHS = {
    "thing": 20,
    "character_string": 32,
    "phrase": 5,
    "phone_number": 17,
    "car_number": 8,
    "const": 20,
    "number": 32,
    "letter": 32,
    "symbol": 5,
}
NAME_MAX_HAN_LENGTH = 10
NAME_MAX_LATIN_LENGTH = 20


def template_field_kind(key: str) -> str:
    """Return the value type of a template key, e.g. ``time2`` -> ``time``."""
    return key.rstrip("0123456789")


def build_template_data(
    mapping: Mapping[str, str],
    sender_name: str,
    sent_at_ms: int,
    excerpt: str,
    *,
    tz: datetime.tzinfo = CHINA_STANDARD_TIME,
) -> dict[str, dict[str, str]]:
    """Fill the fields of a template from one chat message.

    ``mapping`` is the configured template, such as ``{"thing1":
    "sender_name", "time2": "sent_at", "thing3": "excerpt", "phrase4":
    "text:新消息"}``. Each value follows the rule of its key's type: line
    breaks become spaces, a ``thing`` value is cut to 20 characters with
    an ellipsis inside the limit, and a ``time`` value reads like
    ``2025-12-04 08:30`` in ``tz``. ``first`` and ``remark`` are left out,
    because WeChat no longer shows them.

    Returns ``{key: {"value": text}}`` for ``WeChatClient.send_template``.
    Raises ValueError when a mapping value is not a known source, or a
    value cannot be made to fit its type (for example a ``phrase`` from a
    text with no Chinese characters).
    """
    dynamic_values = {
        SOURCE_SENDER_NAME: sender_name or "",
        SOURCE_EXCERPT: excerpt or "",
    }
    data = {}
    for key, source in mapping.items():
        kind = template_field_kind(key)
        if kind in DROPPED_FIELD_KINDS:
            continue

        if source == SOURCE_SENT_AT:
            value = _format_sent_at(key, kind, sent_at_ms, tz)
        elif source in dynamic_values:
            value = _fit_value(key, kind, dynamic_values[source], fixed=False)
        elif isinstance(source, str) and source.startswith(TEXT_SOURCE_PREFIX):
            value = _fit_value(key, kind, source[len(TEXT_SOURCE_PREFIX) :], fixed=True)
        else:
            raise ValueError(
                "template field %s has unknown source %r: use %s, %s, %s or %s<text>"
                % (
                    key,
                    source,
                    SOURCE_SENDER_NAME,
                    SOURCE_SENT_AT,
                    SOURCE_EXCERPT,
                    TEXT_SOURCE_PREFIX,
                )
            )
        data[key] = {"value": value}
    return data


def _format_sent_at(key: str, kind: str, sent_at_ms: int, tz: datetime.tzinfo) -> str:
    moment = datetime.datetime.fromtimestamp(sent_at_ms / 1000.0, tz)
    if kind in ("time", "thing", "character_string"):
        return moment.strftime(TIME_FORMAT)
    if kind == "date":
        return "%d年%d月%d日" % (moment.year, moment.month, moment.day)
    raise ValueError("template field %s of type %s cannot hold a time" % (key, kind))


def _fit_value(key: str, kind: str, text: str, fixed: bool) -> str:
    """Clean ``text`` and cut it to the rule of ``kind``, or raise ValueError."""
    text = flatten_whitespace(text)

    if kind == "thing":
        return truncate_text(text, FIELD_MAX_LENGTHS[kind]) or EMPTY_VALUE_PLACEHOLDER
    if kind == "character_string":
        ascii_text = "".join(c for c in text if "!" <= c <= "~")
        cut = truncate_text(ascii_text, FIELD_MAX_LENGTHS[kind], "...")
        return cut or EMPTY_VALUE_PLACEHOLDER
    if kind == "phrase":
        value = "".join(c for c in text if _is_han(c))[: FIELD_MAX_LENGTHS[kind]]
    elif kind == "name":
        value = "".join(c for c in text if c.isalpha() or c in " ·").strip()
        limit = (
            NAME_MAX_HAN_LENGTH
            if any(_is_han(c) for c in value)
            else NAME_MAX_LATIN_LENGTH
        )
        value = value[:limit].strip()
    elif kind == "number":
        value = "".join(c for c in text if c.isascii() and c.isdigit())[:32]
    elif kind == "letter":
        value = "".join(c for c in text if c.isascii() and c.isalpha())[:32]
    elif kind == "phone_number":
        value = "".join(c for c in text if c in PHONE_NUMBER_CHARACTERS).strip()
        value = value[: FIELD_MAX_LENGTHS[kind]]
    elif kind in ("time", "date", "amount", "const", "car_number", "symbol") and fixed:
        # Fixed text comes from configuration: check it, never rewrite it.
        value = text
        _check_fixed_value(key, kind, value)
    else:
        raise ValueError(
            "template field %s of type %s cannot hold %s text"
            % (key, kind, "fixed" if fixed else "message")
        )

    if not value:
        raise ValueError(
            "template field %s of type %s has no usable characters" % (key, kind)
        )
    return value


def _check_fixed_value(key: str, kind: str, value: str) -> None:
    patterns = {
        "time": TIME_VALUE_PATTERN,
        "date": DATE_VALUE_PATTERN,
        "amount": AMOUNT_VALUE_PATTERN,
    }
    if kind in patterns:
        valid = patterns[kind].fullmatch(value) is not None
    else:
        valid = 0 < len(value) <= FIELD_MAX_LENGTHS[kind]
    if not valid:
        raise ValueError(
            "template field %s: %r is not a valid %s value" % (key, value, kind)
        )


def _is_han(char: str) -> bool:
    """Return whether ``char`` is a Chinese (Han) ideograph."""
    code = ord(char)
    return (
        0x4E00 <= code <= 0x9FFF
        or 0x3400 <= code <= 0x4DBF
        or 0xF900 <= code <= 0xFAFF
        or 0x20000 <= code <= 0x3134F
    )


# Delivery callback -----------------------------------------------------------

EVENT_TEMPLATE_SEND_JOB_FINISH = "TEMPLATESENDJOBFINISH"
STATUS_SUCCESS = "success"
STATUS_USER_BLOCK = "failed:user block"


@dataclasses.dataclass(frozen=True)
class TemplateSendEvent:
    """Final delivery status of one template message, from WeChat's callback.

    ``msg_id`` equals the ``msgid`` that the send returned. ``status`` is
    WeChat's text: ``success``, ``failed:user block`` (the user refuses the
    account's messages), ``failed: system failed`` (with a space), and
    ``failed:freq limit`` in practice.
    """

    msg_id: int
    status: str
    openid: str
    created_at: int

    @property
    def delivered(self) -> bool:
        return self.status == STATUS_SUCCESS

    @property
    def user_blocked(self) -> bool:
        return self.status.replace(" ", "") == STATUS_USER_BLOCK.replace(" ", "")


def verify_callback_signature(
    token: str, signature: str, timestamp: str, nonce: str
) -> bool:
    """Check the ``signature`` query parameter of a WeChat server callback.

    WeChat signs with the SHA-1 of the token, timestamp and nonce sorted as
    strings and concatenated. ``token`` is the one configured for the
    account's server URL, not the access token. The comparison takes
    constant time. This does not check that ``timestamp`` is recent.
    """
    if not (token and signature and timestamp and nonce):
        return False
    expected = hashlib.sha1("".join(sorted([token, timestamp, nonce])).encode("utf-8"))
    return hmac.compare_digest(expected.hexdigest(), signature.lower())


def parse_template_send_event(body: bytes | str) -> TemplateSendEvent | None:
    """Parse a callback body and return its TEMPLATESENDJOBFINISH event.

    Returns None for any other message or event, which the same callback
    URL also receives. Raises ValueError for malformed XML, for a body that
    declares a DOCTYPE or entities (WeChat never does, and they enable
    entity-expansion attacks), and for safe-mode bodies, whose content is
    encrypted and which this parser does not decrypt.
    """
    text = body.decode("utf-8") if isinstance(body, bytes) else body
    if "<!DOCTYPE" in text.upper() or "<!ENTITY" in text.upper():
        raise ValueError("callback XML must not declare a DOCTYPE or entities")
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as error:
        raise ValueError("callback body is not valid XML: %s" % error) from None

    def field(name: str) -> str:
        return (root.findtext(name) or "").strip()

    if root.find("Encrypt") is not None and not field("MsgType"):
        raise ValueError("encrypted (safe mode) callbacks are not supported")
    if field("MsgType") != "event" or field("Event") != EVENT_TEMPLATE_SEND_JOB_FINISH:
        return None
    try:
        msg_id = int(field("MsgID"))
        created_at = int(field("CreateTime") or 0)
    except ValueError:
        raise ValueError("callback MsgID or CreateTime is not an integer") from None
    return TemplateSendEvent(msg_id, field("Status"), field("FromUserName"), created_at)
