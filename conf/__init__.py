"""Configuration profiles.

``IM_PROFILE`` picks one of the modules in this package (``dev``, ``test``,
``prod``; default ``dev``). Each module defines ``SETTINGS``, a dict that
overrides ``DEFAULTS`` below. Environment variables override the profile,
and command-line options override both.
"""

import importlib
import os
import secrets
from dataclasses import dataclass, field, fields

PROFILES = ("dev", "test", "prod")
MIN_SECRET_BYTES = 32
VERSION = "1.0.0"


class ConfigError(Exception):
    """The configuration is invalid; the message says which key and why."""


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
    ws_ping_interval_seconds: float = 30.0
    ws_ping_timeout_seconds: float = 60.0
    ws_max_message_bytes: int = 64 * 1024
    ws_max_pending_output_bytes: int = 1024 * 1024
    ws_sends_per_second: int = 20
    # Requests are read up to this size; bodies over 64 KiB get a JSON 413.
    max_body_bytes: int = 4 * 1024 * 1024
    recall_window_seconds: int = 120
    shutdown_grace_seconds: float = 10.0
    # Origins whose pages may open the WebSocket; empty allows any origin.
    allowed_origins: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @property
    def uses_sqlite(self):
        return self.database_url.startswith("sqlite")


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
    "IM_ALLOWED_ORIGINS": ("allowed_origins", lambda raw: [
        origin.strip() for origin in raw.split(",") if origin.strip()
    ]),
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
            raise ConfigError(
                f"Invalid {variable}={raw!r}: expected {getattr(kind, '__name__', 'list')}"
            ) from None
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
    if not config.node_name:
        config.node_name = f"{os.uname().nodename}:{config.port}"


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
