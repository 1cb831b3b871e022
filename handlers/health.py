"""GET /health for load balancers and GET /api/v1/status for operators."""

import logging
import time

from handlers.base import BaseHandler
from models.db import DatabaseUnavailable
from services.errors import Unavailable

logger = logging.getLogger(__name__)


class HealthHandler(BaseHandler):
    auth_required = False

    async def get(self):
        try:
            await self.app.db.run(self.app.db.ping)
        except DatabaseUnavailable as error:
            logger.warning("Health check failed: %s", error)
            raise Unavailable(
                "The database is unavailable. Try again shortly."
            ) from None
        self.write_json({"status": "ok"})


class StatusHandler(BaseHandler):
    async def get(self):
        self.require_system()
        app = self.app
        counts = await app.db.run(app.pending_counts)
        self.write_json({
            "version": app.version,
            "profile": app.config.profile,
            "node": app.config.node_name,
            "uptimeSeconds": int(time.time() - app.started_at),
            "connections": app.registry.connection_count,
            "onlineUsers": app.registry.online_user_count,
            "pendingPushes": counts["pending_pushes"],
            "scheduled": counts["scheduled"],
        })


class MetricsHandler(BaseHandler):
    """GET /metrics in the Prometheus text format (system token only)."""

    async def get(self):
        self.require_system()
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(self.app.metrics.render())


ROUTES = [
    (r"/metrics", MetricsHandler),
    (r"/health", HealthHandler),
    (r"/api/v1/status", StatusHandler),
]
