"""Tests: the test suite sets IM_DATABASE_URL (SQLite file or MariaDB) and
IM_SECRET itself; these values only fill what it leaves out."""

from conf.dev import LOCAL_ORIGINS

SETTINGS = {
    "sqlite_path": "var/im-test.sqlite3",
    "secret": "test-secret-not-for-production-0123456789",
    "log_level": "warning",
    "ws_login_timeout_seconds": 10.0,
    "allowed_origins": LOCAL_ORIGINS,
    # The whole suite sends from 127.0.0.1, faster than any user would;
    # the tests of these limits turn them on.
    "rest_user_sends_per_second": 0,
    "rest_ip_sends_per_second": 0,
}
