"""The container of one server process: config, database, services, sockets."""

import logging
import time

from conf import VERSION
from models.db import Database
from models.schema import apply_schema
from models.user import TalkUser
from services.auth import TokenService
from services.connections import ConnectionRegistry
from services.conversations import Conversations
from services.directory import Directory
from services.dispatch import Dispatcher

logger = logging.getLogger(__name__)


class IMServer:
    """Everything the handlers reach through ``application.im``."""

    def __init__(self, config):
        self.config = config
        self.version = VERSION
        self.started_at = time.time()
        self.db = Database(config.database_url, pool_size=config.db_pool_size)
        self.registry = ConnectionRegistry()
        self.tokens = TokenService(config.secret)
        self.dispatcher = Dispatcher(self.db, self.registry, config.max_batch_size)
        self.conversations = Conversations(
            self.db, self.registry, config.recall_window_seconds
        )
        self.directory = Directory(self.db, self.registry, self.tokens)
        # Delayed messages; set by services.schedule when it is wired in.
        self.schedules = None

    def prepare_database(self):
        """Create the SQLite schema when needed and load token revocations."""
        if self.db.dialect == "sqlite":
            apply_schema(self.db)
        since_ms = int((time.time() - self.config.max_token_ttl_seconds) * 1000)
        revocations = self.db.transaction(TalkUser.revocations, since_ms)
        self.tokens.load_revocations(revocations)

    async def start(self):
        """Start background work; call inside the running IOLoop."""
        logger.info("Node %s ready", self.config.node_name)

    async def stop(self):
        """Finish queued sends before the process exits."""
        await self.dispatcher.drain()

    def pending_counts(self):
        """Counts for /api/v1/status (blocking; run in the database pool)."""

        def work(conn):
            return {
                "pending_pushes": conn.scalar(
                    "SELECT COUNT(*) FROM msg_push WHERE status IN ('pending', 'sending')"
                ),
                "scheduled": conn.scalar(
                    "SELECT COUNT(*) FROM msg_schedule WHERE status = 'waiting'"
                ),
            }

        return self.db.transaction(work)

    def close(self):
        self.db.close()
