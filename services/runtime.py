"""The container of one server process: config, database, services, sockets."""

import logging
import time

from tornado.curl_httpclient import CurlAsyncHTTPClient

from conf import VERSION
from models.db import Database
from models.schema import apply_schema
from models.push import MsgPush
from models.user import TalkUser
from services.auth import TokenService
from services.cluster import ClusterBus
from services.connections import ConnectionRegistry
from services.conversations import Conversations
from services.directory import Directory
from services.dispatch import Dispatcher
from services.getui import GetuiClient
from services.jobs import Jobs
from services.limits import Limits
from services.metrics import Metrics
from services.origins import OriginPolicy
from services.outbox import (
    GETUI,
    WECHAT,
    DatabaseTokenStore,
    PushOutbox,
    PushSender,
    RetryPolicy,
)
from services.schedule import Schedules
from services.wechat import WeChatClient

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
        self.origins = OriginPolicy(config.allowed_origins)
        self.limits = Limits(config)
        if config.redis_url:
            self.registry.bus = ClusterBus(
                config.redis_url, config.node_name, self.registry, self.tokens,
                config.presence_ttl_seconds, config.presence_refresh_seconds,
            )
        self.dispatcher = Dispatcher(self.db, self.registry, config.max_batch_size)
        self.push_senders = {}
        self.dispatcher.outbox = PushOutbox(self._configured_vendors())
        self.conversations = Conversations(
            self.db, self.registry, config.recall_window_seconds
        )
        self.directory = Directory(self.db, self.registry, self.tokens)
        if self.registry.bus is not None:
            self.registry.bus.fetch_range = self.conversations.messages_between
        self.schedules = Schedules(self.db, self.dispatcher, config.node_name)
        self.jobs = Jobs()
        self.metrics = Metrics(self)

    def prepare_database(self):
        """Create the SQLite schema when needed and load token revocations."""
        if self.db.dialect == "sqlite":
            apply_schema(self.db)
        since_ms = int((time.time() - self.config.max_token_ttl_seconds) * 1000)
        revocations = self.db.transaction(TalkUser.revocations, since_ms)
        self.tokens.load_revocations(revocations)

    def _configured_vendors(self):
        config = self.config
        vendors = []
        if config.getui_app_id:
            vendors.append(GETUI)
        if config.wechat_app_id:
            vendors.append(WECHAT)
        return vendors

    def _make_push_senders(self):
        config = self.config
        # An instance of its own: AsyncHTTPClient.configure() would switch
        # every AsyncHTTPClient() of the process to curl, other code's too.
        http = CurlAsyncHTTPClient(force_instance=True,
                                   max_clients=config.http_max_clients)
        timeouts = {
            "connect_timeout": config.http_connect_timeout_seconds,
            "request_timeout": config.http_request_timeout_seconds,
        }
        node = config.node_name
        retry = RetryPolicy(
            config.push_initial_backoff_seconds,
            config.push_max_backoff_seconds,
            config.push_max_attempts,
        )
        if config.getui_app_id:
            client = GetuiClient(
                http, app_id=config.getui_app_id, app_key=config.getui_app_key,
                master_secret=config.getui_master_secret,
                base_url=config.getui_base_url, **timeouts,
            )
            self.push_senders[GETUI] = PushSender(self.db, node, GETUI, client, retry=retry)
        if config.wechat_app_id:
            client = WeChatClient(
                http, app_id=config.wechat_app_id, app_secret=config.wechat_app_secret,
                base_url=config.wechat_base_url,
                token_store=DatabaseTokenStore(self.db, WECHAT), **timeouts,
            )
            settings = {
                "template_id": config.wechat_template_id,
                "field_map": config.wechat_field_map,
                "chat_url": config.wechat_chat_url,
            }
            self.push_senders[WECHAT] = PushSender(
                self.db, node, WECHAT, client, settings, retry=retry
            )

    async def start(self, run_jobs=True):
        """Start background work; call inside the running IOLoop."""
        if self.registry.bus is not None:
            await self.registry.bus.start()
        self._make_push_senders()
        if run_jobs:
            await self.schedules.release_own_claims()
            self.jobs.add("scheduled_messages", self.schedules.run_once,
                          self.config.schedule_interval_seconds)
            for vendor, sender in self.push_senders.items():
                await sender.release_own_claims()
                self.jobs.add(f"push_{vendor}", sender.run_once,
                              self.config.push_interval_seconds)
            self.jobs.start()
        logger.info("Node %s ready (push vendors: %s)", self.config.node_name,
                    ", ".join(self.push_senders) or "none")

    async def stop(self):
        """Stop the jobs and finish queued sends before the process exits."""
        await self.jobs.stop()
        await self.dispatcher.drain()
        if self.registry.bus is not None:
            await self.registry.bus.stop()

    async def record_wechat_delivery(self, event):
        """Store a TEMPLATESENDJOBFINISH report; a user block stops WeChat pushes."""
        now = int(time.time() * 1000)

        def work(conn):
            MsgPush.record_delivery(conn, WECHAT, event.msg_id, event.status, now)
            if event.user_blocked:
                conn.execute(
                    "UPDATE talk_user SET wechat_unreachable = 1 WHERE wechat_open_id = :o",
                    o=event.openid,
                )

        await self.db.run_transaction(work)
        logger.info("WeChat delivery report for msgid %s: %s", event.msg_id, event.status)

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
