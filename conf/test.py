"""Tests: the test suite sets IM_DATABASE_URL (SQLite file or MariaDB) and
IM_SECRET itself; these values only fill what it leaves out."""

SETTINGS = {
    "sqlite_path": "var/im-test.sqlite3",
    "secret": "test-secret-not-for-production-0123456789",
    "log_level": "warning",
    "ws_login_timeout_seconds": 10.0,
}
