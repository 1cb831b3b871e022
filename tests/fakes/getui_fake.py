"""Fake Getui REST API v2 server on 127.0.0.1.

It serves ``/v2/{app_id}/...`` like restapi.getui.com: ``/auth`` with the
SHA-256 sign check, tokens that expire, the ``token`` header on business
calls, single, list and alias pushes with Getui's field limits and exact
20001 messages, and de-duplication on ``request_id``. Every accepted push
is recorded in ``sent``.

Standalone: ``python -m tests.fakes.getui_fake --port 0 --accept-any-cid``
prints the port. ``GET /_fake/sent`` returns the recorded pushes, and
``POST /_fake/<action>`` steers the fake (see ``GetuiFake.control``).
"""

import dataclasses
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

from tests.fakes import FakeServer, FakeVendorHandler, run_standalone

# HTTP status that Getui pairs with each class of body code.
CODE_HTTP_STATUS = {0: 200, 1: 200, 2: 200, 301: 200}

DEFAULT_MESSAGES = {
    1: "failed",
    2: "service is starting",
    10001: "token error",
    10002: "appId or ip in blacklist",
    10003: "auth too frequently",
    10005: "call too frequently",
    20001: "param error",
    30004: "push total of today over limit",
    30019: "system busy, please try later",
}

REQUEST_ID_LENGTHS = (10, 32)
GROUP_NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{0,100}")
CLICK_TYPES = ("intent", "url", "payload", "payload_custom", "startapp", "none")
STRATEGY_KEYS = {
    "default",
    "ios",
    "hw",
    "xm",
    "mz",
    "op",
    "vv",
    "st",
    "hx",
    "hwq",
    "ho",
    "hoshw",
}
IOS_TYPES = ("notify", "voip", "liveactivity")
MIN_TTL_MS = -1
MAX_TTL_MS = 3 * 24 * 3600 * 1000
MAX_LIST_CIDS = 1000
MAX_ALIAS_BINDINGS = 1000
MAX_CIDS_PER_ALIAS = 10
# Fields of push_message.notification and their maximum length in UTF-16
# code units, as Getui's Java SDK counts them.
NOTIFICATION_LIMITS = {
    "title": 50,
    "body": 256,
    "intent": 4096,
    "url": 1024,
    "payload": 3072,
}
TRANSMISSION_MAX_LENGTH = 3072

STATUS_ONLINE = "successed_online"
STATUS_OFFLINE = "successed_offline"
STATUS_IGNORE = "successed_ignore"
INVALID_TARGET = "target user is invalid"


class ParameterError(Exception):
    """A request field breaks Getui's rules. The message is Getui's 20001 text."""


@dataclasses.dataclass
class Device:
    """Delivery state of one cid.

    Online gets ``successed_online``, inactive ``successed_ignore`` and any
    other device ``successed_offline``.
    """

    online: bool = False
    inactive: bool = False


class GetuiFake(FakeServer):
    """Fake Getui server for one app. See the module docstring."""

    name = "getui"

    def __init__(
        self,
        app_id: str = "fakeGetuiAppId01",
        app_key: str = "fakeGetuiAppKey01",
        master_secret: str = "fakeGetuiMasterSecret01",
        *,
        token_lifetime_seconds: float = 24 * 3600,
        auth_limit_per_minute: int = 100,
        max_clock_skew_seconds: float = 600,
        auth_failure_code: int = 10001,
        accept_any_cid: bool = False,
        clock: Callable[[], float] = time.time,
    ):
        super().__init__(clock)
        self.app_id = app_id
        self.app_key = app_key
        self.master_secret = master_secret
        self.token_lifetime_seconds = token_lifetime_seconds
        self.auth_limit_per_minute = auth_limit_per_minute
        self.max_clock_skew_seconds = max_clock_skew_seconds
        # NOTE: Getui's table only states that auth errors are 10xxx with
        # HTTP 401. The code for a bad sign is a guess, so it is a setting.
        self.auth_failure_code = auth_failure_code
        self.accept_any_cid = accept_any_cid
        self.devices: dict[str, Device] = {}
        self.aliases: dict[str, list[str]] = {}
        self._init_records()

    def _init_records(self) -> None:
        # token -> expiry in epoch seconds. Revoked tokens are removed.
        self.tokens: dict[str, float] = {}
        # Every token ever issued, for tests that check logs for leaks.
        self.issued_tokens: list[str] = []
        self.auth_times: list[float] = []
        self.sent: list[dict[str, Any]] = []
        self.list_tasks: dict[str, dict[str, Any]] = {}
        self._responses_by_request_id: dict[str, dict[str, Any]] = {}

    def vendor_routes(self) -> list:
        prefix = r"/v2/([^/]+)"
        arguments = {"fake": self}
        return [
            (prefix + r"/auth", AuthHandler, arguments),
            (prefix + r"/auth/([^/]+)", RevokeHandler, arguments),
            (prefix + r"/push/single/cid", SingleCidHandler, arguments),
            (prefix + r"/push/single/alias", SingleAliasHandler, arguments),
            (prefix + r"/push/list/message", ListMessageHandler, arguments),
            (prefix + r"/push/list/cid", ListCidHandler, arguments),
            (prefix + r"/user/alias", AliasHandler, arguments),
        ]

    # Test controls

    @property
    def base_url(self) -> str:
        """The client's ``base_url``: the fake's address plus ``/v2``."""
        return super().base_url + "/v2"

    def add_cid(self, cid: str, online: bool = False, inactive: bool = False) -> None:
        self.devices[cid] = Device(online, inactive)

    def expire_tokens(self) -> None:
        """Make every issued token expired, so business calls get 10001."""
        now = self.clock()
        for token in self.tokens:
            self.tokens[token] = now

    def reset(self) -> None:
        super().reset()
        self._init_records()

    def snapshot(self) -> dict[str, Any]:
        snapshot = super().snapshot()
        snapshot["sent"] = self.sent
        snapshot["tokens"] = len(self.tokens)
        return snapshot

    def control(self, action: str, arguments: dict[str, Any]) -> Any:
        """Run a control API action.

        ``cids`` {cid, online?, inactive?} registers a device,
        ``expire_tokens`` expires every token, and the base actions
        ``inject``, ``outage``, ``end_outage`` and ``reset`` also apply.
        """
        if action == "cids":
            self.add_cid(
                arguments["cid"],
                bool(arguments.get("online")),
                bool(arguments.get("inactive")),
            )
            return {}
        if action == "expire_tokens":
            self.expire_tokens()
            return {}
        return super().control(action, arguments)

    def error_document(self, code: int, msg: str | None) -> tuple[int, dict[str, Any]]:
        if code in CODE_HTTP_STATUS:
            status = CODE_HTTP_STATUS[code]
        elif 10000 <= code < 20000:
            status = 401
        elif 20000 <= code < 30000:
            status = 400
        else:
            status = 403
        return status, {"code": code, "msg": msg or DEFAULT_MESSAGES.get(code, "error")}

    # Vendor behaviour

    def check_sign(self, appkey: Any, timestamp: Any, sign: Any) -> str | None:
        """Return why an /auth request is rejected, or None when it is valid."""
        if appkey != self.app_key:
            return "appkey is invalid"
        if isinstance(timestamp, bool) or not isinstance(timestamp, (str, int)):
            return "timestamp type error"
        try:
            timestamp_ms = int(timestamp)
        except ValueError:
            return "timestamp is invalid"
        if abs(timestamp_ms / 1000.0 - self.clock()) > self.max_clock_skew_seconds:
            return "timestamp is invalid"
        source = self.app_key + str(timestamp) + self.master_secret
        expected = hashlib.sha256(source.encode("utf-8")).hexdigest()
        if not isinstance(sign, str) or not hmac.compare_digest(expected, sign):
            return "sign is invalid"
        return None

    def issue_token(self) -> tuple[str, float]:
        token = secrets.token_hex(16)
        expires_at = self.clock() + self.token_lifetime_seconds
        self.tokens[token] = expires_at
        self.issued_tokens.append(token)
        return token, expires_at

    def token_valid(self, token: str | None) -> bool:
        return token in self.tokens and self.clock() < self.tokens[token]

    def auth_rate_exceeded(self) -> bool:
        now = self.clock()
        self.auth_times = [t for t in self.auth_times if now - t < 60]
        self.auth_times.append(now)
        return len(self.auth_times) > self.auth_limit_per_minute

    def device(self, cid: str) -> Device | None:
        if cid not in self.devices and self.accept_any_cid:
            self.devices[cid] = Device()
        return self.devices.get(cid)

    def deliver(
        self, cid: str, request_id: str, task_id: str, message: dict[str, Any]
    ) -> str:
        """Record one accepted push to ``cid`` and return its per-device status."""
        device = self.devices[cid]
        if device.inactive:
            status = STATUS_IGNORE
        elif device.online:
            status = STATUS_ONLINE
        else:
            status = STATUS_OFFLINE

        ttl_ms = message.get("settings", {}).get("ttl", 2 * 3600 * 1000)
        now = self.clock()
        notification = message["push_message"].get("notification") or {}
        ios = message.get("push_channel", {}).get("ios") or {}
        self.sent.append(
            {
                "request_id": request_id,
                "task_id": task_id,
                "cid": cid,
                "status": status,
                "title": notification.get("title"),
                "body": notification.get("body"),
                "click_type": notification.get("click_type"),
                "payload": notification.get("payload"),
                "transmission": message["push_message"].get("transmission"),
                "badge": ios.get("aps", {}).get("badge"),
                "ttl": ttl_ms,
                "received_at": now,
                "expires_at": now + ttl_ms / 1000.0 if ttl_ms > 0 else now,
                "message": message,
            }
        )
        return status

    def remember(self, request_id: str, document: dict[str, Any]) -> None:
        self._responses_by_request_id[request_id] = document

    def response_for(self, request_id: str) -> dict[str, Any] | None:
        return self._responses_by_request_id.get(request_id)


def new_task_id(clock: Callable[[], float]) -> str:
    return "RASS_%s_%s" % (
        time.strftime("%m%d", time.gmtime(clock())),
        secrets.token_hex(16),
    )


# Validation ------------------------------------------------------------------


def utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def require_object(parent: dict, key: str, required: bool = True) -> dict | None:
    value = parent.get(key)
    if value is None:
        if required:
            raise ParameterError("%s can not be empty" % key)
        return None
    if not isinstance(value, dict):
        raise ParameterError("%s type error" % key)
    return value


def check_text(parent: dict, key: str, max_length: int, required: bool) -> None:
    value = parent.get(key)
    if value is None or value == "":
        if required:
            raise ParameterError("%s can not be empty" % key)
        return
    if not isinstance(value, str):
        raise ParameterError("%s type error" % key)
    if utf16_length(value) > max_length:
        raise ParameterError("%s size over limit" % key)


def validate_message(body: dict) -> None:
    """Check the fields that every push body shares, raising ParameterError."""
    request_id = body.get("request_id")
    if request_id is None or request_id == "":
        raise ParameterError("request_id can not be empty")
    if not isinstance(request_id, str):
        raise ParameterError("request_id type error")
    low, high = REQUEST_ID_LENGTHS
    if not low <= len(request_id) <= high:
        raise ParameterError("request_id is invalid")

    group_name = body.get("group_name")
    if group_name is not None:
        if not isinstance(group_name, str) or not GROUP_NAME_PATTERN.fullmatch(
            group_name
        ):
            raise ParameterError("group_name is invalid")

    settings = require_object(body, "settings", required=False) or {}
    ttl = settings.get("ttl")
    if ttl is not None:
        if isinstance(ttl, bool) or not isinstance(ttl, int):
            raise ParameterError("ttl type error")
        if not MIN_TTL_MS <= ttl <= MAX_TTL_MS:
            raise ParameterError("ttl is invalid")
    strategy = require_object(settings, "strategy", required=False) or {}
    for key, value in strategy.items():
        if key not in STRATEGY_KEYS or value not in (1, 2, 3, 4):
            raise ParameterError("strategy is invalid")

    push_message = require_object(body, "push_message")
    kinds = [
        k
        for k in ("notification", "transmission", "revoke")
        if push_message.get(k) is not None
    ]
    if len(kinds) != 1:
        raise ParameterError(
            "please choose one of notification and transmission and revoke"
        )
    if kinds[0] == "notification":
        validate_notification(require_object(push_message, "notification"))
    elif kinds[0] == "transmission":
        check_text(push_message, "transmission", TRANSMISSION_MAX_LENGTH, required=True)
    else:
        require_object(push_message, "revoke")

    push_channel = require_object(body, "push_channel", required=False)
    if push_channel is not None:
        validate_push_channel(push_channel)


def validate_notification(notification: dict) -> None:
    check_text(notification, "title", NOTIFICATION_LIMITS["title"], required=True)
    check_text(notification, "body", NOTIFICATION_LIMITS["body"], required=True)
    click_type = notification.get("click_type")
    if click_type is None or click_type == "":
        raise ParameterError("click_type can not be empty")
    if click_type not in CLICK_TYPES:
        raise ParameterError("click_type is invalid")
    required_field = {
        "intent": "intent",
        "url": "url",
        "payload": "payload",
        "payload_custom": "payload",
    }
    for key in ("intent", "url", "payload"):
        required = required_field.get(click_type) == key
        check_text(notification, key, NOTIFICATION_LIMITS[key], required=required)


def validate_push_channel(push_channel: dict) -> None:
    ios = require_object(push_channel, "ios", required=False)
    if ios is not None:
        if ios.get("type", "notify") not in IOS_TYPES:
            raise ParameterError("type is invalid")
        aps = require_object(ios, "aps", required=False) or {}
        alert = aps.get("alert")
        if alert is not None and not isinstance(alert, (dict, str)):
            raise ParameterError("alert type error")
        badge = aps.get("badge")
        if badge is not None and (
            isinstance(badge, bool) or not isinstance(badge, int) or badge < 0
        ):
            raise ParameterError("badge type error")
        check_text(ios, "payload", NOTIFICATION_LIMITS["payload"], required=False)

    android = require_object(push_channel, "android", required=False)
    if android is not None:
        ups = require_object(android, "ups")
        kinds = [k for k in ("notification", "transmission") if ups.get(k) is not None]
        if len(kinds) != 1:
            raise ParameterError("choose one of notification and transmission")
        if kinds[0] == "notification":
            validate_notification(require_object(ups, "notification"))
        else:
            check_text(ups, "transmission", TRANSMISSION_MAX_LENGTH, required=True)


def single_target(body: dict, kind: str) -> str:
    audience = require_object(body, "audience")
    targets = audience.get(kind)
    if not targets:
        raise ParameterError("%s can not be empty" % kind)
    if not isinstance(targets, list) or not all(
        isinstance(t, str) and t for t in targets
    ):
        raise ParameterError("%s type error" % kind)
    if len(targets) != 1:
        raise ParameterError("%s size over limit" % kind)
    return targets[0]


# Handlers --------------------------------------------------------------------


class GetuiHandler(FakeVendorHandler):
    """Common checks of every Getui path: app id, token header and JSON body."""

    fake: GetuiFake
    needs_token = True

    async def prepare(self):
        await super().prepare()
        if self.responded:
            return
        if self.path_args[0] != self.fake.app_id:
            self.write_bare_status(404)
            return
        if self.needs_token and not self.fake.token_valid(
            self.request.headers.get("token")
        ):
            await self.reply_error(10001)

    async def parsed_body(self) -> dict | None:
        """Return the JSON object body, or respond with code 1 and return None."""
        body = self.json_body()
        if not isinstance(body, dict):
            await self.reply_error(1, "request body is not a JSON object")
            return None
        return body


class AuthHandler(GetuiHandler):
    label = "auth"
    needs_token = False

    async def post(self, app_id):
        if self.fake.auth_rate_exceeded():
            await self.reply_error(10003)
            return
        body = await self.parsed_body()
        if body is None:
            return
        for key in ("sign", "timestamp", "appkey"):
            if body.get(key) in (None, ""):
                await self.reply_error(20001, "%s can not be empty" % key)
                return
        problem = self.fake.check_sign(body["appkey"], body["timestamp"], body["sign"])
        if problem is not None:
            await self.reply_error(self.fake.auth_failure_code, problem)
            return

        token, expires_at = self.fake.issue_token()
        data = {"expire_time": str(int(expires_at * 1000)), "token": token}
        await self.reply(200, {"code": 0, "msg": "success", "data": data})


class RevokeHandler(GetuiHandler):
    label = "auth"
    needs_token = False

    async def delete(self, app_id, token):
        self.fake.tokens.pop(token, None)
        await self.reply(200, {"code": 0, "msg": ""})


class SingleCidHandler(GetuiHandler):
    label = "push"
    target_kind = "cid"

    async def post(self, app_id):
        body = await self.parsed_body()
        if body is None:
            return
        try:
            validate_message(body)
            target = single_target(body, self.target_kind)
        except ParameterError as error:
            await self.reply_error(20001, str(error))
            return

        request_id = body["request_id"]
        earlier = self.fake.response_for(request_id)
        if earlier is not None:
            # NOTE: Getui documents only that a repeated request_id makes the
            # push "lost". Returning the first result again is this fake's choice.
            await self.reply(200, earlier)
            return

        cids = self.resolve(target)
        if not cids:
            await self.reply_error(20001, INVALID_TARGET)
            return
        task_id = new_task_id(self.fake.clock)
        statuses = {
            cid: self.fake.deliver(cid, request_id, task_id, body) for cid in cids
        }
        response = {"code": 0, "msg": "", "data": {task_id: statuses}}
        self.fake.remember(request_id, response)
        await self.reply(200, response)

    def resolve(self, target: str) -> list[str]:
        return [target] if self.fake.device(target) is not None else []


class SingleAliasHandler(SingleCidHandler):
    target_kind = "alias"

    def resolve(self, target: str) -> list[str]:
        bound = self.fake.aliases.get(target, [])
        return [cid for cid in bound if self.fake.device(cid) is not None]


class ListMessageHandler(GetuiHandler):
    label = "push"

    async def post(self, app_id):
        body = await self.parsed_body()
        if body is None:
            return
        try:
            if "audience" in body:
                raise ParameterError("audience is invalid")
            validate_message(body)
        except ParameterError as error:
            await self.reply_error(20001, str(error))
            return

        earlier = self.fake.response_for(body["request_id"])
        if earlier is not None:
            await self.reply(200, earlier)
            return
        task_id = new_task_id(self.fake.clock)
        self.fake.list_tasks[task_id] = body
        response = {"code": 0, "msg": "", "data": {"taskid": task_id}}
        self.fake.remember(body["request_id"], response)
        await self.reply(200, response)


class ListCidHandler(GetuiHandler):
    label = "push"

    async def post(self, app_id):
        body = await self.parsed_body()
        if body is None:
            return
        try:
            cids, task_id = self.validate(body)
        except ParameterError as error:
            await self.reply_error(20001, str(error))
            return

        message = self.fake.list_tasks[task_id]
        # NOTE: how Getui reports unknown cids inside a list is not
        # documented. This fake leaves them out of the response.
        known = [cid for cid in cids if self.fake.device(cid) is not None]
        if not known:
            await self.reply_error(20001, INVALID_TARGET)
            return
        statuses = {
            cid: self.fake.deliver(cid, message["request_id"], task_id, message)
            for cid in known
        }
        if body.get("is_async"):
            await self.reply(200, {"code": 0, "msg": ""})
        else:
            await self.reply(200, {"code": 0, "msg": "", "data": {task_id: statuses}})

    def validate(self, body: dict) -> tuple[list[str], str]:
        audience = require_object(body, "audience")
        cids = audience.get("cid")
        if not cids:
            raise ParameterError("cid can not be empty")
        if not isinstance(cids, list) or not all(
            isinstance(c, str) and c for c in cids
        ):
            raise ParameterError("cid type error")
        if len(cids) > MAX_LIST_CIDS:
            raise ParameterError("cid size over limit")
        if len(set(cids)) != len(cids):
            raise ParameterError("contains duplicate cid")
        task_id = body.get("taskid")
        if not task_id:
            raise ParameterError("taskid can not be empty")
        if task_id not in self.fake.list_tasks:
            raise ParameterError("taskid is invalid")
        return cids, task_id


class AliasHandler(GetuiHandler):
    label = "user"

    async def post(self, app_id):
        body = await self.parsed_body()
        if body is None:
            return
        bindings = body.get("data_list")
        if not bindings:
            await self.reply_error(20001, "data_list can not be empty")
            return
        if not isinstance(bindings, list) or len(bindings) > MAX_ALIAS_BINDINGS:
            await self.reply_error(20001, "data_list size over limit")
            return
        for binding in bindings:
            if (
                not isinstance(binding, dict)
                or not binding.get("cid")
                or not binding.get("alias")
            ):
                await self.reply_error(20001, "data_list is invalid")
                return

        for binding in bindings:
            cid, alias = binding["cid"], binding["alias"]
            # A cid has one alias: binding a new one unbinds the old one.
            for bound in self.fake.aliases.values():
                if cid in bound:
                    bound.remove(cid)
            bound = self.fake.aliases.setdefault(alias, [])
            bound.append(cid)
            del bound[:-MAX_CIDS_PER_ALIAS]
        await self.reply(200, {"code": 0, "msg": ""})


def add_arguments(parser) -> None:
    defaults = GetuiFake()
    parser.add_argument("--app-id", default=defaults.app_id)
    parser.add_argument("--app-key", default=defaults.app_key)
    parser.add_argument("--master-secret", default=defaults.master_secret)
    parser.add_argument(
        "--token-lifetime-seconds",
        type=float,
        default=defaults.token_lifetime_seconds,
        help="lifetime of issued tokens in seconds",
    )
    parser.add_argument(
        "--cid",
        action="append",
        default=[],
        help="register an offline device; repeatable",
    )
    parser.add_argument(
        "--accept-any-cid",
        action="store_true",
        help="treat an unknown cid as an offline device, not an invalid target",
    )


def build_fake(options) -> GetuiFake:
    fake = GetuiFake(
        options.app_id,
        options.app_key,
        options.master_secret,
        token_lifetime_seconds=options.token_lifetime_seconds,
        accept_any_cid=options.accept_any_cid,
    )
    for cid in options.cid:
        fake.add_cid(cid)
    return fake


if __name__ == "__main__":
    run_standalone(
        "Fake Getui REST API v2 server on 127.0.0.1.", add_arguments, build_fake
    )
