"""Configuration profiles.

``IM_PROFILE`` picks one of the modules in this package (``dev``, ``test``,
``prod``; default ``dev``). Each module defines ``SETTINGS``, a dict that
overrides the defaults of ``Config`` below. Environment variables override the profile,
and command-line options override both.
"""

import importlib
import json
import os
import secrets
from dataclasses import dataclass, field, fields

from services.origins import OriginPolicy

PROFILES = ("dev", "test", "prod")
LIMIT_SETTINGS = (
    "ws_sends_per_second", "ws_max_sockets_per_user", "ws_max_unauthenticated_per_ip",
    "rest_user_sends_per_second", "rest_user_send_burst",
    "rest_ip_sends_per_second", "rest_ip_send_burst",
)
MIN_SECRET_BYTES = 32
VERSION = "1.0.0"


class ConfigError(Exception):
    """An invalid configuration; the message names the key and the reason."""


@dataclass
class Config:
    profile: str = "dev"
    port: int = 3000
    address: str = "0.0.0.0"
    # SQLAlchemy URL; empty means the embedded SQLite file below.
    database_url: str = ""
    sqlite_path: str = "var/im-dev.sqlite3"
    db_pool_size: int = 8
    # HS256 key for tokens, at least MIN_SECRET_BYTES bytes.
    secret: str = ""
    # Where dev keeps a generated secret so the CLI and the server agree.
    secret_file: str = ""
    node_name: str = ""
    log_level: str = "info"
    default_token_ttl_seconds: int = 86400
    max_token_ttl_seconds: int = 30 * 86400
    # Writes per channel collected into one transaction (group commit).
    max_batch_size: int = 200
    ws_login_timeout_seconds: float = 10.0
    # The server pings every interval and drops a socket with no pong within
    # the timeout, so a silent socket goes after at most 60 s. Tornado 6.6
    # caps the timeout at the interval.
    ws_ping_interval_seconds: float = 30.0
    ws_ping_timeout_seconds: float = 30.0
    ws_max_message_bytes: int = 64 * 1024
    ws_max_pending_output_bytes: int = 1024 * 1024
    # Flood limits, kept in memory and so applied per process (see
    # services/limits.py). A rate or cap of 0 turns that limit off.
    ws_sends_per_second: int = 20
    ws_max_sockets_per_user: int = 10
    ws_max_unauthenticated_per_ip: int = 100
    # REST sends (POST /api/v1/chats/...): a token bucket per user (system
    # tokens exempt) and one per client address.
    rest_user_sends_per_second: float = 5.0
    rest_user_send_burst: int = 20
    rest_ip_sends_per_second: float = 100.0
    rest_ip_send_burst: int = 200
    # Requests are read up to this size; bodies over 64 KiB get a JSON 413.
    max_body_bytes: int = 4 * 1024 * 1024
    recall_window_seconds: int = 120
    shutdown_grace_seconds: float = 10.0
    # Browser origins that may call the REST API (CORS) and open the
    # WebSocket: exact origins, "scheme://host:*" for any port, or "*".
    # Empty allows none. Requests without an Origin header always pass.
    allowed_origins: list = field(default_factory=list)
    # Redis URL for cluster mode (several processes); empty runs one process.
    redis_url: str = ""
    # A node's users count as online this long after its last refresh.
    presence_ttl_seconds: float = 30.0
    presence_refresh_seconds: float = 10.0
    # Outbound HTTP to Getui and WeChat, in seconds.
    http_connect_timeout_seconds: float = 5.0
    http_request_timeout_seconds: float = 10.0
    http_max_clients: int = 20
    # How often the push and delayed-message jobs look for due rows.
    push_interval_seconds: float = 1.0
    # Retry policy of a failed push: exponential backoff with jitter.
    push_initial_backoff_seconds: float = 2.0
    push_max_backoff_seconds: float = 600.0
    push_max_attempts: int = 8
    schedule_interval_seconds: float = 1.0
    # Getui REST v2; pushes via Getui are off while the app id is empty.
    getui_app_id: str = ""
    getui_app_key: str = ""
    getui_master_secret: str = ""
    getui_base_url: str = "https://restapi.getui.com/v2"
    # WeChat template messages; off while the app id is empty.
    wechat_app_id: str = ""
    wechat_app_secret: str = ""
    wechat_base_url: str = "https://api.weixin.qq.com"
    wechat_template_id: str = ""
    # Template key -> source: sender_name, sent_at, excerpt or "text:<fixed>".
    wechat_field_map: dict = field(default_factory=lambda: {
        "thing1": "sender_name", "time2": "sent_at", "thing3": "excerpt",
    })
    # The patient chat page opened from a template message.
    wechat_chat_url: str = ""
    # The token configured for the account's server URL (callback signature).
    wechat_callback_token: str = ""

    @property
    def uses_sqlite(self):
        return self.database_url.startswith("sqlite")


def _comma_list(raw):
    return [item.strip() for item in raw.split(",") if item.strip()]


def _json_object(raw):
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


# Environment variable → (Config field, type).
ENVIRONMENT = {
    "IM_PORT": ("port", int),
    "IM_ADDRESS": ("address", str),
    "IM_DATABASE_URL": ("database_url", str),
    "IM_SQLITE_PATH": ("sqlite_path", str),
    "IM_DB_POOL_SIZE": ("db_pool_size", int),
    "IM_SECRET": ("secret", str),
    "IM_NODE_NAME": ("node_name", str),
    "IM_LOG_LEVEL": ("log_level", str),
    "IM_MAX_BATCH_SIZE": ("max_batch_size", int),
    "IM_SHUTDOWN_GRACE_SECONDS": ("shutdown_grace_seconds", float),
    "IM_ALLOWED_ORIGINS": ("allowed_origins", _comma_list),
    "IM_WS_SENDS_PER_SECOND": ("ws_sends_per_second", int),
    "IM_WS_MAX_SOCKETS_PER_USER": ("ws_max_sockets_per_user", int),
    "IM_WS_MAX_UNAUTHENTICATED_PER_IP": ("ws_max_unauthenticated_per_ip", int),
    "IM_REST_USER_SENDS_PER_SECOND": ("rest_user_sends_per_second", float),
    "IM_REST_USER_SEND_BURST": ("rest_user_send_burst", int),
    "IM_REST_IP_SENDS_PER_SECOND": ("rest_ip_sends_per_second", float),
    "IM_REST_IP_SEND_BURST": ("rest_ip_send_burst", int),
    "IM_REDIS_URL": ("redis_url", str),
    "IM_PRESENCE_TTL_SECONDS": ("presence_ttl_seconds", float),
    "IM_HTTP_CONNECT_TIMEOUT_SECONDS": ("http_connect_timeout_seconds", float),
    "IM_HTTP_REQUEST_TIMEOUT_SECONDS": ("http_request_timeout_seconds", float),
    "IM_PUSH_INTERVAL_SECONDS": ("push_interval_seconds", float),
    "IM_SCHEDULE_INTERVAL_SECONDS": ("schedule_interval_seconds", float),
    "IM_PUSH_INITIAL_BACKOFF_SECONDS": ("push_initial_backoff_seconds", float),
    "IM_PUSH_MAX_BACKOFF_SECONDS": ("push_max_backoff_seconds", float),
    "IM_PUSH_MAX_ATTEMPTS": ("push_max_attempts", int),
    "IM_GETUI_APP_ID": ("getui_app_id", str),
    "IM_GETUI_APP_KEY": ("getui_app_key", str),
    "IM_GETUI_MASTER_SECRET": ("getui_master_secret", str),
    "IM_GETUI_BASE_URL": ("getui_base_url", str),
    "IM_WECHAT_APP_ID": ("wechat_app_id", str),
    "IM_WECHAT_APP_SECRET": ("wechat_app_secret", str),
    "IM_WECHAT_BASE_URL": ("wechat_base_url", str),
    "IM_WECHAT_TEMPLATE_ID": ("wechat_template_id", str),
    "IM_WECHAT_FIELD_MAP": ("wechat_field_map", _json_object),
    "IM_WECHAT_CHAT_URL": ("wechat_chat_url", str),
    "IM_WECHAT_CALLBACK_TOKEN": ("wechat_callback_token", str),
}


def load_config(profile=None, environ=None, overrides=None):
    """Build the Config for a profile; raise ConfigError when it is invalid."""
    environ = os.environ if environ is None else environ
    profile = profile or environ.get("IM_PROFILE") or "dev"
    if profile not in PROFILES:
        raise ConfigError(
            f"Unknown profile {profile!r} in IM_PROFILE; "
            f"valid profiles: {', '.join(PROFILES)}"
        )
    module = importlib.import_module(f"conf.{profile}")
    values = dict(module.SETTINGS)

    for variable, (name, kind) in ENVIRONMENT.items():
        raw = environ.get(variable)
        if raw is None or raw == "":
            continue
        try:
            values[name] = kind(raw)
        except ValueError:
            expected = getattr(kind, "__name__", "value").lstrip("_").replace("_", " ")
            raise ConfigError(f"Invalid {variable}: expected {expected}") from None
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value

    known = {f.name for f in fields(Config)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"Unknown settings in conf/{profile}.py: {sorted(unknown)}")
    config = Config(profile=profile, **values)
    _finish(config)
    return config


def _finish(config):
    if config.database_url.startswith("mysql://"):
        config.database_url = "mysql+pymysql://" + config.database_url[8:]
    if config.database_url.startswith("mysql") and "charset=" not in config.database_url:
        separator = "&" if "?" in config.database_url else "?"
        config.database_url += f"{separator}charset=utf8mb4"

    if config.profile == "prod":
        if not config.database_url.startswith("mysql"):
            raise ConfigError(
                "Profile prod needs a MySQL URL in IM_DATABASE_URL, e.g. "
                "mysql+pymysql://im:PASSWORD@127.0.0.1:3306/im"
            )
        if not config.secret:
            raise ConfigError("Profile prod needs IM_SECRET (at least 32 bytes)")
    if not config.database_url:
        config.database_url = "sqlite:///" + os.path.abspath(config.sqlite_path)
    if not config.secret and config.secret_file:
        config.secret = _read_or_create_secret(config.secret_file)
    if len(config.secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"IM_SECRET must be at least {MIN_SECRET_BYTES} bytes long"
        )
    if config.wechat_app_id and not config.wechat_template_id:
        raise ConfigError("IM_WECHAT_TEMPLATE_ID is needed when IM_WECHAT_APP_ID is set")
    _check_limits(config)
    try:
        OriginPolicy(config.allowed_origins)
    except ValueError as error:
        raise ConfigError(f"Invalid IM_ALLOWED_ORIGINS: {error}") from None
    if not config.node_name:
        config.node_name = f"{os.uname().nodename}:{config.port}"


def _check_limits(config):
    variables = {name: variable for variable, (name, _) in ENVIRONMENT.items()}
    for name in LIMIT_SETTINGS:
        if getattr(config, name) < 0:
            raise ConfigError(f"{variables[name]} must be 0 (off) or positive")
    for rate, burst in (("rest_user_sends_per_second", "rest_user_send_burst"),
                        ("rest_ip_sends_per_second", "rest_ip_send_burst")):
        if getattr(config, rate) > 0 and getattr(config, burst) < 1:
            raise ConfigError(
                f"{variables[burst]} must be at least 1 while {variables[rate]} is above 0"
            )


def _read_or_create_secret(path):
    """Return the dev secret kept in ``path``, creating it on first use."""
    path = os.path.abspath(path)
    if os.path.exists(path):
        with open(path, encoding="ascii") as secret_file:
            return secret_file.read().strip()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    value = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as secret_file:
        secret_file.write(value + "\n")
    return value
