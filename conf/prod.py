"""Production: MySQL only; IM_DATABASE_URL and IM_SECRET are required."""

SETTINGS = {
    "db_pool_size": 16,
    "log_level": "info",
    "shutdown_grace_seconds": 20.0,
}
