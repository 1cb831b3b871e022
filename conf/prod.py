"""Production: MySQL only; IM_DATABASE_URL and IM_SECRET are required.

No browser origin may call the API until IM_ALLOWED_ORIGINS names it.
"""

SETTINGS = {
    "db_pool_size": 16,
    "log_level": "info",
    "shutdown_grace_seconds": 20.0,
}
