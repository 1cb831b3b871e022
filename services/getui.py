"""Getui (个推) REST API v2 client for notifications to one device.

Wire contract, from Getui's REST API v2 documentation (the pages ``token``
and ``push`` under docs.getui.com/getui/server/rest_v2/) and its Java SDK
(GetuiLaboratory/getui-pushapi-java-client-v2, ``TokenDTO``):

- Paths are relative to ``{base_url}/{app_id}``. Bodies are JSON.
- ``POST /auth`` with ``sign = sha256(appkey + timestamp + mastersecret)``
  (lowercase hex, timestamp in milliseconds) returns a token and its
  absolute ``expire_time`` in milliseconds, as a string.
- Every other call carries that token in a header named ``token``.
- Every response body is ``{"code", "msg", "data"}`` where code 0 is success. The
  HTTP status repeats the class of error (401 auth, 400 parameters, 403
  quota). The client keys on ``code`` and looks at the HTTP status only
  when the body is not JSON.
"""

import asyncio
import dataclasses
import hashlib
import json
import logging
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from services.httplog import MASK, log_push_outcome, protect_http_client_logs, scrub_url
from services.push_outcome import (
    PushOutcome,
    PushStatus,
    flatten_whitespace,
    seconds_until_next_day,
    seconds_until_next_minute,
    truncate_text,
    utf16_length,
)

logger = logging.getLogger(__name__)

VENDOR = "getui"
DEFAULT_BASE_URL = "https://restapi.getui.com/v2"

# The Java SDK treats a token with less than one hour left as expired.
DEFAULT_TOKEN_REFRESH_MARGIN_SECONDS = 3600.0
# Getui allows 100 auth calls a minute and returns code 10003 beyond that, so
# the client stops calling /auth for a full minute after a 10003.
AUTH_RATE_LIMIT_BACKOFF_SECONDS = 60.0

DEFAULT_CONNECT_TIMEOUT_SECONDS = 5.0
DEFAULT_REQUEST_TIMEOUT_SECONDS = 10.0

# How long Getui keeps a notification for an offline device. Chat
# notifications are stale after a day. Getui accepts -1 (online devices
# only) up to three days.
DEFAULT_TTL_MS = 24 * 3600 * 1000
MIN_TTL_MS = -1
MAX_TTL_MS = 3 * 24 * 3600 * 1000

# Field limits of push_message.notification.
# NOTE: Getui does not say how it counts length. The client counts UTF-16
# code units, the stricter reading, so cut text fits either way.
TITLE_MAX_LENGTH = 50
BODY_MAX_LENGTH = 256
PAYLOAD_MAX_LENGTH = 3072
INTENT_MAX_LENGTH = 4096

# Getui drops a push whose request_id repeats an earlier one, which is what
# makes a retry with the same id safe. The length rule is Getui's. The
# alphabet is narrower than Getui's so that ids survive any log or URL.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{10,32}")
GROUP_NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,100}")

CODE_OK = 0
CODE_TOKEN_INVALID = 10001
CODE_AUTH_RATE_LIMITED = 10003
CODE_PARAMETER_ERROR = 20001
INVALID_TARGET_MESSAGE = "target user is invalid"

# 2: service starting. 30019: system busy.
TRANSIENT_CODES = frozenset({2, 30019})
# 10005: calls per minute. 30013, 30014, 30015, 30018: push caps per minute.
PER_MINUTE_LIMIT_CODES = frozenset({10005, 30013, 30014, 30015, 30018})
# Daily push totals of the app's plan.
DAILY_QUOTA_CODES = frozenset({30004, 30006, 30007, 30008, 30009, 30010})

# Keeps a single vendor message from flooding the outbox's error column.
MAX_DETAIL_LENGTH = 300


@dataclasses.dataclass(frozen=True)
class GetuiConfig:
    """Settings of one Getui app. Timeouts are in seconds."""

    app_id: str
    app_key: str
    master_secret: str = dataclasses.field(repr=False)
    base_url: str = DEFAULT_BASE_URL
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_SECONDS
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT_SECONDS
    ttl_ms: int = DEFAULT_TTL_MS
    token_refresh_margin_seconds: float = DEFAULT_TOKEN_REFRESH_MARGIN_SECONDS
    # Task group for Getui's delivery reports, or None for no group.
    group_name: str | None = None
    # Android activity ("package/.Activity") that opens a conversation when
    # the notification came through a phone maker's channel. Without it the
    # push carries no Android vendor block, and offline Android devices
    # get Getui's own notification only.
    android_component: str | None = None

    def __post_init__(self):
        for name in ("app_id", "app_key", "master_secret", "base_url"):
            if not getattr(self, name):
                raise ValueError("Getui setting %s is missing" % name)
        if self.connect_timeout <= 0 or self.request_timeout <= 0:
            raise ValueError("Getui timeouts must be positive seconds")
        if not MIN_TTL_MS <= self.ttl_ms <= MAX_TTL_MS:
            raise ValueError(
                "Getui ttl_ms %r is invalid: use -1 (online devices only) up to %d"
                % (self.ttl_ms, MAX_TTL_MS)
            )
        if self.group_name is not None:
            if not GROUP_NAME_PATTERN.fullmatch(self.group_name):
                raise ValueError(
                    "Getui group_name %r is invalid: use up to 100 letters, "
                    "digits, '-' or '_'" % self.group_name
                )


@dataclasses.dataclass
class _Reply:
    """One HTTP exchange with Getui, reduced to what classification needs."""

    http_status: int
    code: int | None = None
    msg: str = ""
    data: Any = None
    # Transport error text for HTTP 599 (timeout, refused, reset).
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class _Token:
    value: str
    expires_at: float
    refresh_at: float


class _TokenUnavailable(Exception):
    """Raised when /auth fails. ``outcome`` is what the push reports."""

    def __init__(self, outcome: PushOutcome):
        super().__init__(outcome.detail)
        self.outcome = outcome


class GetuiClient:
    """Sends Getui notifications to single devices and manages the auth token.

    One client serves one Getui app and should live for the whole process,
    because it caches the token. Concurrent pushes share one /auth call.
    """

    vendor = VENDOR

    def __init__(
        self,
        http_client: AsyncHTTPClient,
        config: GetuiConfig | Mapping[str, Any] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        **options: Any,
    ):
        """Build a client from a ``GetuiConfig``, a plain dict, keyword options or both.

        Keyword options override the dict. Raises ValueError or TypeError
        when a setting is missing, unknown or invalid. ``clock`` returns
        epoch seconds and exists for tests. Also caps Tornado's curl logger
        at INFO, see ``protect_http_client_logs``.
        """
        if isinstance(config, GetuiConfig):
            config = dataclasses.asdict(config)
        settings = dict(config or {})
        settings.update(options)
        self.config = GetuiConfig(**settings)
        self._http = http_client
        self._clock = clock
        self._app_url = "%s/%s" % (self.config.base_url.rstrip("/"), self.config.app_id)
        self._token: _Token | None = None
        self._token_refresh: asyncio.Future | None = None
        self._auth_blocked_until = 0.0
        protect_http_client_logs()

    async def push_single(
        self,
        cid: str,
        request_id: str,
        title: str,
        body: str,
        payload: Mapping[str, Any] | str,
        badge: int | None = None,
    ) -> PushOutcome:
        """Send one notification to the device ``cid`` and classify the result.

        ``request_id`` must be stable across retries of the same push, so
        Getui can drop a duplicate after an ambiguous timeout. ``payload``
        (a dict is sent as compact JSON) reaches the app when the user taps
        the notification and should name the conversation to open. Title
        and body are cut to Getui's limits. ``badge`` sets the iOS app icon
        badge, and None leaves it unchanged.

        Does not raise for vendor or network failures. Raises ValueError for
        arguments that no retry can fix: a malformed request_id, an empty
        title or body, an oversized payload or a negative badge.
        """
        push_body = self.build_push_body(cid, request_id, title, body, payload, badge)
        started = self._clock()
        try:
            outcome = await self._push_with_token(push_body)
        except _TokenUnavailable as failure:
            outcome = failure.outcome
        elapsed = self._clock() - started
        log_push_outcome(logger, VENDOR, "request_id", request_id, outcome, elapsed)
        return outcome

    def build_push_body(
        self,
        cid: str,
        request_id: str,
        title: str,
        body: str,
        payload: Mapping[str, Any] | str,
        badge: int | None = None,
    ) -> dict[str, Any]:
        """Return the JSON body of ``POST /push/single/cid`` for one notification.

        Raises ValueError for the same arguments as ``push_single``.
        """
        if not isinstance(request_id, str) or not REQUEST_ID_PATTERN.fullmatch(
            request_id
        ):
            raise ValueError(
                "Getui request_id %r is invalid: use 10 to 32 letters, digits, "
                "'-' or '_'" % (request_id,)
            )
        if not cid:
            raise ValueError("Getui cid is missing")
        if badge is not None and (isinstance(badge, bool) or badge < 0):
            raise ValueError("badge %r is invalid: use an integer >= 0" % (badge,))

        title = truncate_text(flatten_whitespace(title), TITLE_MAX_LENGTH)
        body = truncate_text(body.strip(), BODY_MAX_LENGTH)
        if not title or not body:
            raise ValueError("Getui notification title and body must not be empty")
        payload_text = _payload_text(payload)

        push_body: dict[str, Any] = {
            "request_id": request_id,
            "settings": {"ttl": self.config.ttl_ms, "strategy": {"default": 1}},
            "audience": {"cid": [cid]},
            "push_message": {
                "notification": {
                    "title": title,
                    "body": body,
                    "click_type": "payload",
                    "payload": payload_text,
                }
            },
            "push_channel": {"ios": _ios_channel(title, body, payload_text, badge)},
        }
        if self.config.group_name:
            push_body["group_name"] = self.config.group_name
        if self.config.android_component:
            push_body["push_channel"]["android"] = _android_channel(
                title, body, payload_text, self.config.android_component
            )
        return push_body

    async def revoke_token(self) -> None:
        """Revoke the cached token with ``DELETE /auth/{token}``, for shutdown.

        Failures are logged and otherwise ignored, because the token
        expires on its own.
        """
        token, self._token = self._token, None
        if token is None:
            return
        path = "/auth/" + urllib.parse.quote(token.value, safe="")
        reply = await self._call("DELETE", path, None, token=token.value)
        if reply.code != CODE_OK:
            logger.warning(
                "getui token revocation failed: http=%s code=%s msg=%s",
                reply.http_status,
                reply.code,
                reply.error or reply.msg,
            )

    async def _push_with_token(self, push_body: dict[str, Any]) -> PushOutcome:
        token = await self._current_token()
        reply = await self._call("POST", "/push/single/cid", push_body, token=token)

        # A token can die before its expire_time, for example when it was
        # revoked. Getui recommends a refresh on code 10001. The push is
        # retried once, never in a loop.
        if reply.code == CODE_TOKEN_INVALID:
            logger.info(
                "getui rejected the token (code %s) for request_id=%s, so the "
                "client refreshes it and retries once",
                reply.code,
                push_body["request_id"],
            )
            token = await self._current_token(rejected=token)
            reply = await self._call("POST", "/push/single/cid", push_body, token=token)

        if reply.code == CODE_OK:
            return _sent_outcome(reply, push_body["audience"]["cid"][0])
        return self._classify_failure(reply)

    async def _current_token(self, rejected: str | None = None) -> str:
        """Return a usable token, fetching a new one when needed.

        ``rejected`` is a token that Getui just refused. It is replaced even
        if it has not expired, unless another caller replaced it already.
        Concurrent callers share one /auth call.
        """
        cached = self._token
        if cached is not None and cached.value != rejected:
            if self._clock() < cached.refresh_at:
                return cached.value

        if self._token_refresh is None:
            self._token_refresh = asyncio.ensure_future(self._fetch_token())
            self._token_refresh.add_done_callback(self._forget_token_refresh)
        token = await asyncio.shield(self._token_refresh)
        return token.value

    def _forget_token_refresh(self, future: asyncio.Future) -> None:
        if self._token_refresh is future:
            self._token_refresh = None

    async def _fetch_token(self) -> _Token:
        now = self._clock()
        if now < self._auth_blocked_until:
            wait = self._auth_blocked_until - now
            raise _TokenUnavailable(
                PushOutcome(
                    PushStatus.RATE_LIMITED,
                    CODE_AUTH_RATE_LIMITED,
                    "getui auth is paused after code 10003 for %.0f more seconds"
                    % wait,
                    retry_after_seconds=wait,
                )
            )

        timestamp = str(int(now * 1000))
        sign_source = self.config.app_key + timestamp + self.config.master_secret
        auth_body = {
            "sign": hashlib.sha256(sign_source.encode("utf-8")).hexdigest(),
            "timestamp": timestamp,
            "appkey": self.config.app_key,
        }
        reply = await self._call("POST", "/auth", auth_body)

        if reply.code == CODE_OK:
            token = self._parse_token(reply)
            if token is not None:
                self._token = token
                logger.info(
                    "getui auth token refreshed; it expires in %.0f seconds",
                    token.expires_at - now,
                )
                return token
            outcome = PushOutcome(
                PushStatus.RETRY, CODE_OK, "getui /auth returned no usable token"
            )
        elif reply.code == CODE_AUTH_RATE_LIMITED:
            self._auth_blocked_until = now + AUTH_RATE_LIMIT_BACKOFF_SECONDS
            outcome = PushOutcome(
                PushStatus.RATE_LIMITED,
                reply.code,
                _detail("getui /auth rate limited", reply),
                retry_after_seconds=AUTH_RATE_LIMIT_BACKOFF_SECONDS,
            )
        elif reply.code is not None and 10000 <= reply.code < 11000:
            # A bad sign, app key or blacklisted app: only a configuration
            # change helps, so retrying would only burn the auth quota.
            outcome = PushOutcome(
                PushStatus.PERMANENT,
                reply.code,
                _detail("getui /auth rejected the app key or master secret", reply),
            )
        else:
            outcome = self._classify_failure(reply)

        logger.warning(
            "getui auth failed: status=%s code=%s detail=%s",
            outcome.status.value,
            outcome.vendor_code,
            outcome.detail,
        )
        raise _TokenUnavailable(outcome)

    def _parse_token(self, reply: _Reply) -> _Token | None:
        data = reply.data if isinstance(reply.data, dict) else {}
        value = data.get("token")
        try:
            expires_at = int(data.get("expire_time")) / 1000.0
        except (TypeError, ValueError):
            return None
        if not isinstance(value, str) or not value:
            return None

        # Refresh one margin before expiry, but never sooner than halfway
        # through the lifetime, so a short-lived token cannot cause an
        # /auth call on every push.
        now = self._clock()
        lifetime = max(expires_at - now, 0.0)
        margin = min(self.config.token_refresh_margin_seconds, lifetime / 2)
        return _Token(value, expires_at, expires_at - margin)

    async def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        token: str | None = None,
    ) -> _Reply:
        url = self._app_url + path
        headers = {"Content-Type": "application/json;charset=utf-8"}
        if token is not None:
            headers["token"] = token
        request = HTTPRequest(
            url,
            method=method,
            headers=headers,
            body=None
            if body is None
            else json.dumps(body, ensure_ascii=False).encode("utf-8"),
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
        if isinstance(document, dict) and isinstance(document.get("code"), int):
            reply.code = document["code"]
            reply.msg = str(document.get("msg") or "")
            reply.data = document.get("data")
        logged_url = scrub_url(url)
        if token:
            logged_url = logged_url.replace(token, MASK)
        logger.debug(
            "getui %s %s -> http=%s code=%s",
            method,
            logged_url,
            reply.http_status,
            reply.code,
        )
        return reply

    def _classify_failure(self, reply: _Reply) -> PushOutcome:
        """Map a failed exchange to what the caller should do next."""
        code = reply.code
        if code is None:
            return _classify_http_status(reply, self._clock())

        if code in TRANSIENT_CODES or code == CODE_TOKEN_INVALID:
            # A token refused twice in a row points at Getui's side.
            return PushOutcome(PushStatus.RETRY, code, _detail("getui busy", reply))
        if code == CODE_AUTH_RATE_LIMITED:
            return PushOutcome(
                PushStatus.RATE_LIMITED,
                code,
                _detail("getui /auth rate limited", reply),
                retry_after_seconds=AUTH_RATE_LIMIT_BACKOFF_SECONDS,
            )
        if code in PER_MINUTE_LIMIT_CODES:
            return PushOutcome(
                PushStatus.RATE_LIMITED,
                code,
                _detail("getui per-minute limit reached", reply),
                retry_after_seconds=seconds_until_next_minute(self._clock()),
            )
        if code in DAILY_QUOTA_CODES:
            return PushOutcome(
                PushStatus.QUOTA_EXHAUSTED,
                code,
                _detail("getui daily quota used up", reply),
                retry_after_seconds=seconds_until_next_day(self._clock()),
            )
        if code == CODE_PARAMETER_ERROR and INVALID_TARGET_MESSAGE in reply.msg:
            return PushOutcome(
                PushStatus.INVALID_TARGET, code, _detail("getui cid is invalid", reply)
            )
        if reply.http_status >= 500:
            return PushOutcome(
                PushStatus.RETRY, code, _detail("getui server error", reply)
            )
        return PushOutcome(
            PushStatus.PERMANENT, code, _detail("getui rejected the push", reply)
        )


def _classify_http_status(reply: _Reply, now: float) -> PushOutcome:
    """Classify an exchange whose body carried no Getui code."""
    status = reply.http_status
    if status == 599:
        return PushOutcome(
            PushStatus.RETRY, None, _truncate("getui network error: %s" % reply.error)
        )
    if status >= 500:
        return PushOutcome(
            PushStatus.RETRY, None, "getui HTTP %d without a JSON body" % status
        )
    if status == 429:
        return PushOutcome(
            PushStatus.RATE_LIMITED,
            None,
            "getui HTTP 429",
            retry_after_seconds=seconds_until_next_minute(now),
        )
    if 200 <= status < 300:
        # The push may or may not have been accepted. Retrying with the same
        # request_id is safe because Getui drops the duplicate.
        return PushOutcome(
            PushStatus.RETRY, None, "getui HTTP %d with an unreadable body" % status
        )
    return PushOutcome(
        PushStatus.PERMANENT, None, "getui HTTP %d without a JSON body" % status
    )


def _sent_outcome(reply: _Reply, cid: str) -> PushOutcome:
    """Build the outcome of an accepted push from ``{"<taskid>": {"<cid>": status}}``.

    The per-device status is ``successed_online``, ``successed_offline`` or
    ``successed_ignore`` (device inactive for 90 days, so nothing is shown).
    All three count as sent, because a retry cannot change them.
    """
    task_id = None
    device_status = ""
    if isinstance(reply.data, dict) and reply.data:
        task_id, per_device = next(iter(reply.data.items()))
        if isinstance(per_device, dict):
            device_status = str(per_device.get(cid, ""))
    return PushOutcome(
        PushStatus.SENT,
        CODE_OK,
        device_status or "accepted",
        vendor_message_id=task_id,
    )


def _payload_text(payload: Mapping[str, Any] | str) -> str:
    if isinstance(payload, str):
        text = payload
    else:
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    if not text:
        raise ValueError("Getui payload must not be empty")
    if utf16_length(text) > PAYLOAD_MAX_LENGTH:
        raise ValueError(
            "Getui payload is %d characters long; the limit is %d"
            % (utf16_length(text), PAYLOAD_MAX_LENGTH)
        )
    return text


def _ios_channel(title: str, body: str, payload_text: str, badge: int | None) -> dict:
    """Build the APNs block that iOS devices get while the app is not connected."""
    aps: dict[str, Any] = {
        "alert": {"title": title, "body": body},
        "content-available": 0,
        "sound": "default",
    }
    if badge is not None:
        aps["badge"] = badge
    return {"type": "notify", "aps": aps, "payload": payload_text}


def _android_channel(title: str, body: str, payload_text: str, component: str) -> dict:
    """Build the phone-maker block whose tap opens ``component`` with the payload.

    The payload travels as the string extra ``payload`` of the intent,
    because an intent is the only thing every Android vendor channel
    passes on a tap. Raises ValueError when the intent is too long.
    """
    intent = "intent:#Intent;launchFlags=0x04000000;component=%s;S.payload=%s;end" % (
        component,
        urllib.parse.quote(payload_text, safe=""),
    )
    if len(intent) > INTENT_MAX_LENGTH:
        raise ValueError(
            "Getui Android intent is %d characters long; the limit is %d"
            % (len(intent), INTENT_MAX_LENGTH)
        )
    notification = {
        "title": title,
        "body": body,
        "click_type": "intent",
        "intent": intent,
    }
    return {"ups": {"notification": notification}}


def _detail(prefix: str, reply: _Reply) -> str:
    return _truncate(
        "%s: HTTP %d, code %s, %s" % (prefix, reply.http_status, reply.code, reply.msg)
    )


def _truncate(text: str) -> str:
    return truncate_text(text, MAX_DETAIL_LENGTH, "...")
