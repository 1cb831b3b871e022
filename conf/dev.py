"""Development: embedded SQLite unless IM_DATABASE_URL is set, a generated
secret kept in var/dev-secret, debug-friendly logging."""

LOCAL_ORIGINS = ("http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*")

SETTINGS = {
    "sqlite_path": "var/im-dev.sqlite3",
    "secret_file": "var/dev-secret",
    "log_level": "info",
    # Pages served by a local dev server on any port may call the API.
    "allowed_origins": LOCAL_ORIGINS,
}
