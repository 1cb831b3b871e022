"""Development: embedded SQLite unless IM_DATABASE_URL is set, a generated
secret kept in var/dev-secret, debug-friendly logging."""

SETTINGS = {
    "sqlite_path": "var/im-dev.sqlite3",
    "secret_file": "var/dev-secret",
    "log_level": "info",
}
