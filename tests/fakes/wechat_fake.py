"""Fake WeChat Official Account API server on 127.0.0.1.

It serves the paths of api.weixin.qq.com that template messages need:
``GET /cgi-bin/token`` (every call issues a new token and ends the old one
after an overlap), ``POST /cgi-bin/stable_token`` (the same token until
rotation, ``force_refresh`` with its limits) and
``POST /cgi-bin/message/template/send`` with token checks, typed field
validation (errcode 47003), unknown and unfollowed openids, the daily
quota, and de-duplication on openid plus ``client_msg_id`` for 10
minutes. Every response is HTTP 200, and every error ``errmsg`` ends with
`` rid: <hex>-<hex>-<hex>`` like WeChat's. After an accepted send the fake
can POST the signed ``TEMPLATESENDJOBFINISH`` XML event to a callback URL
on localhost.

Standalone: ``python -m tests.fakes.wechat_fake --port 0 --template
TPL=thing1,time2,thing3 --accept-any-openid`` prints the port.
``GET /_fake/sent`` returns the accepted messages and ``POST
/_fake/<action>`` steers the fake (see ``WeChatFake.control``).
"""

import asyncio
import dataclasses
import hashlib
import re
import secrets
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from xml.sax.saxutils import escape

import tornado.httpclient

from tests.fakes import FakeServer, FakeVendorHandler, run_standalone

DEFAULT_MESSAGES = {
    -1: "system error",
    40001: "invalid credential, access_token is invalid or not latest",
    40002: "invalid grant_type",
    40003: "invalid openid",
    40013: "invalid appid",
    40014: "invalid access_token",
    40037: "invalid template_id",
    41001: "access_token missing",
    41002: "appid missing",
    41004: "appsecret missing",
    42001: "access_token expired",
    43002: "require POST method",
    43004: "require subscribe",
    45009: "reach max api daily quota limit",
    45011: "api minute-quota reach limit, must slower, retry next minute",
    47001: "data format error",
    47003: "argument invalid!",
}

CALLBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
CALLBACK_STATUSES = (
    "success",
    "failed:user block",
    "failed: system failed",
    "failed:freq limit",
)
# Keys that WeChat stopped showing in 2023 and drops without an error.
DROPPED_KEYS = ("first", "remark")

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_CLOCK = r"\d{1,2}:\d{2}(?::\d{2})?"
_DAY = r"(?:\d{4}-\d{1,2}-\d{1,2}|\d{4}年\d{1,2}月\d{1,2}日)"
_MOMENT = r"(?:%s ?)?%s" % (_DAY, _CLOCK)
# NOTE: these rules restate the value types of category templates as
# developers report them. Lengths count code points, which is a guess.
VALUE_RULES: dict[str, Callable[[str], bool]] = {
    "thing": lambda v: len(v) <= 20,
    "character_string": lambda v: (
        len(v) <= 32 and re.fullmatch(r"[\x21-\x7e]+", v) is not None
    ),
    "time": lambda v: (
        re.fullmatch(r"%s(?: ?~ ?%s)?" % (_MOMENT, _MOMENT), v) is not None
    ),
    "date": lambda v: re.fullmatch(r"%s(?: %s)?" % (_DAY, _CLOCK), v) is not None,
    "amount": lambda v: (
        re.fullmatch(r"[¥￥$€£]\d{1,10}(?:\.\d{1,2})?元?", v) is not None
    ),
    "phrase": lambda v: len(v) <= 5 and re.fullmatch("[%s]+" % _HAN, v) is not None,
    "phone_number": lambda v: (
        len(v) <= 17 and re.fullmatch(r"[0-9+\-() ]+", v) is not None
    ),
    "car_number": lambda v: len(v) <= 8,
    "const": lambda v: len(v) <= 20,
    "number": lambda v: len(v) <= 32 and v.isascii() and v.isdigit(),
    "letter": lambda v: len(v) <= 32 and re.fullmatch(r"[A-Za-z]+", v) is not None,
    "symbol": lambda v: len(v) <= 5,
    "name": lambda v: len(v) <= 10 if re.search("[%s]" % _HAN, v) else len(v) <= 20,
}


@dataclasses.dataclass
class Token:
    """An issued access token: its expiry and, once replaced, its end of validity."""

    expires_at: float
    invalid_after: float = float("inf")


@dataclasses.dataclass
class Callback:
    url: str
    token: str
    status: str = "success"
    delay_seconds: float = 0.0


class WeChatFake(FakeServer):
    """Fake WeChat API for one Official Account. See the module docstring."""

    name = "wechat"

    def __init__(
        self,
        app_id: str = "wxfake0000000001",
        app_secret: str = "fakeWechatAppSecret0000000000001",
        *,
        token_lifetime_seconds: float = 7200,
        rotate_before_seconds: float = 300,
        token_overlap_seconds: float = 300,
        force_refresh_daily_limit: int = 20,
        force_refresh_min_interval_seconds: float = 30,
        daily_send_quota: int = 100_000,
        dedupe_window_seconds: float = 600,
        accept_any_openid: bool = False,
        clock: Callable[[], float] = time.time,
    ):
        super().__init__(clock)
        self.app_id = app_id
        self.app_secret = app_secret
        self.token_lifetime_seconds = token_lifetime_seconds
        self.rotate_before_seconds = rotate_before_seconds
        self.token_overlap_seconds = token_overlap_seconds
        self.force_refresh_daily_limit = force_refresh_daily_limit
        self.force_refresh_min_interval_seconds = force_refresh_min_interval_seconds
        self.daily_send_quota = daily_send_quota
        self.dedupe_window_seconds = dedupe_window_seconds
        self.accept_any_openid = accept_any_openid
        # openid -> whether the user follows the account.
        self.users: dict[str, bool] = {}
        # template id -> {key: allowed values of a const key, or None}.
        self.templates: dict[str, dict[str, list[str] | None]] = {}
        self.callback: Callback | None = None
        self._http_client: tornado.httpclient.AsyncHTTPClient | None = None
        self._init_records()

    def _init_records(self) -> None:
        self.tokens: dict[str, Token] = {}
        self.stable_token: str | None = None
        self.classic_token: str | None = None
        self.force_refresh_times: list[float] = []
        self.sent: list[dict[str, Any]] = []
        self.sends_today = 0
        self.callbacks: list[dict[str, Any]] = []
        # (openid, client_msg_id) -> (msgid, accepted at)
        self._msgid_by_client_msg_id: dict[tuple[str, str], tuple[int, float]] = {}
        self._callback_tasks: set[asyncio.Task] = set()

    def vendor_routes(self) -> list:
        arguments = {"fake": self}
        return [
            (r"/cgi-bin/token", ClassicTokenHandler, arguments),
            (r"/cgi-bin/stable_token", StableTokenHandler, arguments),
            (r"/cgi-bin/message/template/send", TemplateSendHandler, arguments),
        ]

    async def stop(self) -> None:
        for task in list(self._callback_tasks):
            task.cancel()
        await super().stop()
        if self._http_client is not None:
            self._http_client.close()
            self._http_client = None

    # Test controls

    def add_user(self, openid: str, subscribed: bool = True) -> None:
        self.users[openid] = subscribed

    def add_template(
        self, template_id: str, keys: Mapping[str, list[str] | None] | Iterable[str]
    ) -> None:
        """Register a template.

        ``keys`` lists the template's keys, or maps each key to the allowed
        values of a const key (None for other keys).
        """
        if isinstance(keys, Mapping):
            self.templates[template_id] = dict(keys)
        else:
            self.templates[template_id] = {key: None for key in keys}

    def set_callback(
        self, url: str, token: str, status: str = "success", delay_seconds: float = 0.0
    ) -> None:
        """POST a signed TEMPLATESENDJOBFINISH event to ``url`` after each send."""
        host = urllib.parse.urlsplit(url).hostname
        if host not in CALLBACK_HOSTS:
            raise ValueError("callback URL %r must point at localhost" % url)
        if status not in CALLBACK_STATUSES:
            raise ValueError(
                "callback status %r is invalid: use one of %s"
                % (status, CALLBACK_STATUSES)
            )
        self.callback = Callback(url, token, status, delay_seconds)

    def expire_tokens(self) -> None:
        """Expire every token: sends get 42001, the next fetch issues a new one."""
        now = self.clock()
        for token in self.tokens.values():
            token.expires_at = min(token.expires_at, now)

    def invalidate_tokens(self) -> None:
        """End every token early: sends get 40001, the next fetch issues a new one."""
        now = self.clock()
        for token in self.tokens.values():
            token.invalid_after = min(token.invalid_after, now)

    def reset(self) -> None:
        super().reset()
        for task in list(self._callback_tasks):
            task.cancel()
        self._init_records()

    def snapshot(self) -> dict[str, Any]:
        snapshot = super().snapshot()
        snapshot["sent"] = self.sent
        snapshot["callbacks"] = self.callbacks
        return snapshot

    def control(self, action: str, arguments: dict[str, Any]) -> Any:
        """Run a control API action.

        ``users`` {openid, subscribed?}, ``templates`` {template_id, keys},
        ``callback`` {url, token, status?, delay_seconds?}, ``expire_tokens``
        and ``invalidate_tokens``, plus the base actions ``inject``,
        ``outage``, ``end_outage`` and ``reset``.
        """
        if action == "users":
            self.add_user(arguments["openid"], bool(arguments.get("subscribed", True)))
        elif action == "templates":
            self.add_template(arguments["template_id"], arguments["keys"])
        elif action == "callback":
            self.set_callback(**arguments)
        elif action == "expire_tokens":
            self.expire_tokens()
        elif action == "invalidate_tokens":
            self.invalidate_tokens()
        else:
            return super().control(action, arguments)
        return {}

    def error_document(self, code: int, msg: str | None) -> tuple[int, dict[str, Any]]:
        text = msg or DEFAULT_MESSAGES.get(code, "error")
        rid = "-".join(secrets.token_hex(4) for _ in range(3))
        return 200, {"errcode": code, "errmsg": "%s rid: %s" % (text, rid)}

    # Tokens

    def issue_token(self) -> str:
        value = secrets.token_urlsafe(96)
        self.tokens[value] = Token(self.clock() + self.token_lifetime_seconds)
        return value

    def token_response(self, value: str) -> dict[str, Any]:
        remaining = self.tokens[value].expires_at - self.clock()
        return {"access_token": value, "expires_in": max(int(remaining), 0)}

    def token_usable(self, value: str | None) -> bool:
        if value is None or value not in self.tokens:
            return False
        token = self.tokens[value]
        now = self.clock()
        return now < token.expires_at and now < token.invalid_after

    def check_token(self, value: str | None) -> int | None:
        """Return the send API's errcode for token ``value``, or None when valid."""
        if not value:
            return 41001
        token = self.tokens.get(value)
        now = self.clock()
        if token is None or now >= token.invalid_after:
            return 40001
        if now >= token.expires_at:
            return 42001
        return None

    def stable_token_for(self, force: bool) -> str | int:
        """Return the stable token to hand out, or the errcode of a refused call."""
        now = self.clock()
        current = self.stable_token
        if force:
            self.force_refresh_times = [
                t for t in self.force_refresh_times if now - t < 86400
            ]
            last = self.force_refresh_times[-1] if self.force_refresh_times else None
            if (
                current
                and last is not None
                and now - last < self.force_refresh_min_interval_seconds
            ):
                # WeChat ignores a force refresh within 30 seconds of the last one.
                if self.token_usable(current):
                    return current
            if len(self.force_refresh_times) >= self.force_refresh_daily_limit:
                # NOTE: the errcode for going over 20 force refreshes a day is
                # not documented. 45009 is this fake's choice.
                return 45009
            self.force_refresh_times.append(now)
            if current:
                self.tokens[current].invalid_after = now
            self.stable_token = self.issue_token()
            return self.stable_token

        if current and self.token_usable(current):
            if self.tokens[current].expires_at - now > self.rotate_before_seconds:
                return current
        # Rotate. The old token stays valid until it expires, at most the
        # rotation window, which matches WeChat's overlap of old and new.
        self.stable_token = self.issue_token()
        return self.stable_token

    def classic_token_for(self) -> str:
        now = self.clock()
        if self.classic_token in self.tokens:
            old = self.tokens[self.classic_token]
            old.invalid_after = min(old.invalid_after, now + self.token_overlap_seconds)
        self.classic_token = self.issue_token()
        return self.classic_token

    # Sends

    def check_message(self, body: Any) -> tuple[int, str | None] | None:
        """Return (errcode, errmsg) for a send body WeChat rejects, else None."""
        if not isinstance(body, dict):
            return 47001, None
        openid = body.get("touser")
        if not isinstance(openid, str) or not openid:
            return 40003, None
        template_id = body.get("template_id")
        if template_id not in self.templates:
            return 40037, None
        if openid not in self.users:
            if not self.accept_any_openid:
                return 40003, None
            self.users[openid] = True
        if not self.users[openid]:
            return 43004, None
        if "url" in body and not isinstance(body["url"], str):
            return 47001, None
        miniprogram = body.get("miniprogram")
        if miniprogram is not None:
            if not isinstance(miniprogram, dict) or not miniprogram.get("appid"):
                return 47001, None
        data = body.get("data")
        if not isinstance(data, dict):
            return 47001, None
        return self.check_data(self.templates[template_id], data)

    def check_data(
        self, keys: dict[str, list[str] | None], data: dict
    ) -> tuple[int, str] | None:
        for key, allowed in keys.items():
            if key in DROPPED_KEYS:
                continue
            item = data.get(key)
            value = item.get("value") if isinstance(item, dict) else None
            if value is None or value == "":
                return 47003, "argument invalid! data.%s.value is empty" % key
            kind = key.rstrip("0123456789")
            rule = VALUE_RULES.get(kind, lambda v: len(v) <= 20)
            valid = (
                isinstance(value, str)
                and not _has_control_character(value)
                and rule(value)
            )
            if valid and allowed is not None:
                valid = value in allowed
            if not valid:
                return 47003, "argument invalid! data.%s.value invalid" % key
        return None

    def earlier_msgid(self, openid: str, client_msg_id: Any) -> int | None:
        if not isinstance(client_msg_id, str) or not client_msg_id:
            return None
        earlier = self._msgid_by_client_msg_id.get((openid, client_msg_id))
        if earlier is None or self.clock() - earlier[1] >= self.dedupe_window_seconds:
            return None
        return earlier[0]

    def accept(self, body: dict) -> int:
        """Record an accepted send, schedule its callback and return its msgid."""
        # Real msgids pass 2**53, which breaks clients that parse JSON numbers
        # as doubles.
        msgid = secrets.randbits(62) + 2**61
        openid = body["touser"]
        client_msg_id = body.get("client_msg_id")
        if isinstance(client_msg_id, str) and client_msg_id:
            self._msgid_by_client_msg_id[(openid, client_msg_id)] = (
                msgid,
                self.clock(),
            )

        data = {
            key: {"value": item.get("value")}
            for key, item in body["data"].items()
            if key not in DROPPED_KEYS and isinstance(item, dict)
        }
        self.sends_today += 1
        self.sent.append(
            {
                "msgid": msgid,
                "openid": openid,
                "template_id": body["template_id"],
                "data": data,
                "url": body.get("url"),
                "miniprogram": body.get("miniprogram"),
                "client_msg_id": client_msg_id,
                "received_at": self.clock(),
            }
        )
        if self.callback is not None:
            task = asyncio.ensure_future(
                self._send_callback(self.callback, msgid, openid)
            )
            self._callback_tasks.add(task)
            task.add_done_callback(self._callback_tasks.discard)
        return msgid

    async def _send_callback(self, callback: Callback, msgid: int, openid: str) -> None:
        if callback.delay_seconds:
            await asyncio.sleep(callback.delay_seconds)
        timestamp = str(int(self.clock()))
        nonce = str(secrets.randbelow(10**9))
        signature = hashlib.sha1(
            "".join(sorted([callback.token, timestamp, nonce])).encode("utf-8")
        ).hexdigest()
        query = urllib.parse.urlencode(
            {
                "signature": signature,
                "timestamp": timestamp,
                "nonce": nonce,
                "openid": openid,
            }
        )
        separator = "&" if "?" in callback.url else "?"
        body = template_event_xml(openid, msgid, callback.status, int(timestamp))

        if self._http_client is None:
            self._http_client = tornado.httpclient.AsyncHTTPClient(force_instance=True)
        record = {"msgid": msgid, "status": callback.status, "http_status": None}
        try:
            response = await self._http_client.fetch(
                callback.url + separator + query,
                method="POST",
                body=body,
                headers={"Content-Type": "text/xml"},
                request_timeout=5,
                raise_error=False,
            )
            record["http_status"] = response.code
            record["body"] = (response.body or b"").decode("utf-8", "replace")
        except (tornado.httpclient.HTTPClientError, OSError) as error:
            record["error"] = str(error)
        self.callbacks.append(record)


def template_event_xml(openid: str, msgid: int, status: str, created_at: int) -> str:
    """Return the TEMPLATESENDJOBFINISH event body that WeChat POSTs."""
    return (
        "<xml>"
        "<ToUserName><![CDATA[gh_fake00000001]]></ToUserName>"
        "<FromUserName><![CDATA[%s]]></FromUserName>"
        "<CreateTime>%d</CreateTime>"
        "<MsgType><![CDATA[event]]></MsgType>"
        "<Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event>"
        "<MsgID>%d</MsgID>"
        "<Status><![CDATA[%s]]></Status>"
        "</xml>"
    ) % (escape(openid), created_at, msgid, escape(status))


def _has_control_character(value: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F or c in "\u2028\u2029" for c in value)


# Handlers --------------------------------------------------------------------


class ClassicTokenHandler(FakeVendorHandler):
    label = "token"
    fake: WeChatFake

    async def get(self):
        problem = check_credentials(
            self.fake,
            self.get_query_argument("grant_type", ""),
            self.get_query_argument("appid", ""),
            self.get_query_argument("secret", ""),
        )
        if problem is not None:
            await self.reply_error(problem)
            return
        await self.reply(200, self.fake.token_response(self.fake.classic_token_for()))


class StableTokenHandler(FakeVendorHandler):
    label = "token"
    fake: WeChatFake

    async def get(self):
        await self.reply_error(43002)

    async def post(self):
        body = self.json_body()
        if not isinstance(body, dict):
            await self.reply_error(47001)
            return
        problem = check_credentials(
            self.fake, body.get("grant_type"), body.get("appid"), body.get("secret")
        )
        if problem is not None:
            await self.reply_error(problem)
            return

        result = self.fake.stable_token_for(force=body.get("force_refresh") is True)
        if isinstance(result, int):
            await self.reply_error(result)
            return
        await self.reply(200, self.fake.token_response(result))


def check_credentials(
    fake: WeChatFake, grant_type: Any, appid: Any, secret: Any
) -> int | None:
    if grant_type != "client_credential":
        return 40002
    if not appid:
        return 41002
    if appid != fake.app_id:
        return 40013
    if not secret:
        return 41004
    if secret != fake.app_secret:
        return 40001
    return None


class TemplateSendHandler(FakeVendorHandler):
    label = "send"
    fake: WeChatFake

    async def post(self):
        token_error = self.fake.check_token(
            self.get_query_argument("access_token", None)
        )
        if token_error is not None:
            await self.reply_error(token_error)
            return

        body = self.json_body()
        problem = self.fake.check_message(body)
        if problem is not None:
            await self.reply_error(*problem)
            return

        earlier = self.fake.earlier_msgid(body["touser"], body.get("client_msg_id"))
        if earlier is not None:
            await self.reply(200, {"errcode": 0, "errmsg": "ok", "msgid": earlier})
            return
        if self.fake.sends_today >= self.fake.daily_send_quota:
            await self.reply_error(45009)
            return

        msgid = self.fake.accept(body)
        await self.reply(200, {"errcode": 0, "errmsg": "ok", "msgid": msgid})


def add_arguments(parser) -> None:
    parser.add_argument("--app-id", default="wxfake0000000001")
    parser.add_argument("--app-secret", default="fakeWechatAppSecret0000000000001")
    parser.add_argument(
        "--template",
        action="append",
        default=[],
        metavar="ID=KEY,KEY",
        help="register a template and its keys, e.g. TPL=thing1,time2; repeatable",
    )
    parser.add_argument(
        "--openid",
        action="append",
        default=[],
        help="register a following user; repeatable",
    )
    parser.add_argument(
        "--accept-any-openid",
        action="store_true",
        help="treat every unknown openid as a following user instead of an invalid one",
    )
    parser.add_argument("--daily-send-quota", type=int, default=100_000)
    parser.add_argument(
        "--callback-url", help="localhost URL for TEMPLATESENDJOBFINISH events"
    )
    parser.add_argument(
        "--callback-token", default="", help="token that signs callbacks"
    )


def build_fake(options) -> WeChatFake:
    fake = WeChatFake(
        options.app_id,
        options.app_secret,
        daily_send_quota=options.daily_send_quota,
        accept_any_openid=options.accept_any_openid,
    )
    for template in options.template:
        template_id, _, keys = template.partition("=")
        fake.add_template(template_id, [key for key in keys.split(",") if key])
    for openid in options.openid:
        fake.add_user(openid)
    if options.callback_url:
        fake.set_callback(options.callback_url, options.callback_token)
    return fake


if __name__ == "__main__":
    run_standalone(
        "Fake WeChat Official Account API server on 127.0.0.1.",
        add_arguments,
        build_fake,
    )
