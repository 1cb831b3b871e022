"""Cluster mode: several processes share sockets' traffic through Redis.

Enabled by IM_REDIS_URL. Three things cross processes:

- Message deliveries. Every process publishes each stored batch on one
  pub/sub channel while it still holds the channel's named database lock
  (see Dispatcher), and every process, the sender's included, writes frames
  to its sockets only from its subscription. Redis hands all subscribers
  the messages in publish order, and the lock makes publish order id order,
  so live frames leave in id order on every node.
- Other frames (receipts, unread counts, recalls, typing) and logouts,
  which need no order: the origin writes its own sockets directly and the
  others take the event from the subscription.
- Presence: a sorted set per user whose members are node names scored by
  an expiry time, refreshed by each node for its users, so a killed node's
  users fall offline within ``presence_ttl_seconds``.

When Redis cannot be reached, each process keeps serving its own sockets
directly and logs the outage. A process publishes a batch only while its
own subscription is up, because otherwise its own sockets would never see
it. Batches that were never published leave a gap in the ids, which the
next published batch reveals. Each node then reads the gap from the
database and writes it first (``_deliver_batches``).

NOTE: while a node's own Redis link is down, its sockets see its own sends
at once. They see other nodes' sends only when the link returns or through
``sync``, so during the outage a socket there can see a later id first.
"""

import asyncio
import json
import logging
import time

import redis
import redis.asyncio as aioredis

logger = logging.getLogger(__name__)

# Pub/sub channels are shared by every database of a Redis server, so the
# channel name carries the database number of IM_REDIS_URL.
EVENTS_CHANNEL = "im:events:{}"
PRESENCE_KEY = "im:online:{}"
RECONNECT_DELAY_SECONDS = 1.0
# A larger gap is left to the clients' sync rather than replayed live.
MAX_GAP_FILL_IDS = 2000
# Refreshes per presence TTL, so one late refresh does not expire a user.
PRESENCE_REFRESHES_PER_TTL = 3


class ClusterBus:
    def __init__(self, url, node, registry, tokens, presence_ttl_seconds=30,
                 presence_refresh_seconds=10):
        self.node = node
        self._url = url
        self._registry = registry
        self._tokens = tokens
        self._ttl = presence_ttl_seconds
        self._refresh = min(presence_refresh_seconds,
                            presence_ttl_seconds / PRESENCE_REFRESHES_PER_TTL)
        # Blocking client for database worker threads; its pool is thread-safe.
        self._sync = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._async = aioredis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
        database = self._sync.connection_pool.connection_kwargs.get("db", 0)
        self._channel = EVENTS_CHANNEL.format(database)
        self._tasks = []
        # True while this node's subscription is confirmed by Redis.
        self.connected = False
        # Redis errors seen, for the im_cluster_outages metric.
        self.outages = 0
        self._outage_logged = False
        self.events_received = 0
        # Set by IMServer: async fetch_range(channel, after_id, upto_id) that
        # returns [(message, recipient ids)] stored in that id range.
        self.fetch_range = None
        # Largest id of each channel seen in a published batch.
        self._last_seen = {}
        self._batches = asyncio.Queue()
        self.gaps_filled = 0

    # -- life ----------------------------------------------------------------

    async def start(self):
        self._tasks = [
            asyncio.ensure_future(self._deliver_batches()),
            asyncio.ensure_future(self._listen()),
            asyncio.ensure_future(self._refresh_presence()),
        ]
        logger.info("Cluster mode on, node %s", self.node)

    async def stop(self):
        for task in self._tasks:
            task.cancel()
        users = self._registry.online_user_ids()
        if users:
            try:
                pipe = self._async.pipeline()
                for user_id in users:
                    pipe.zrem(PRESENCE_KEY.format(user_id), self.node)
                await pipe.execute()
            except redis.RedisError as error:
                logger.warning("Could not clear presence of node %s: %s", self.node, error)
        await self._async.aclose()
        self._sync.close()

    def _outage(self, error, subscription_lost=False):
        """Count a Redis error, and log a lost subscription or an outage's first error."""
        self.outages += 1
        if subscription_lost or not self._outage_logged:
            self._outage_logged = True
            logger.error("Redis unreachable (%s); serving local sockets only", error)

    # -- publishing ----------------------------------------------------------

    def publish_deliveries_blocking(self, channel, deliveries):
        """Publish a stored batch from a worker thread and return True on success.

        ``deliveries`` is a list of ``{"users", "message", "origin"}`` dicts,
        where origin is ``[node, socket_id]`` of a sending socket, or None.
        Returns False, and the caller writes its own sockets, when publishing
        fails or this node's subscription is down: Redis would not hand the
        batch back to this node then.
        """
        if not self.connected:
            return False
        event = {"kind": "messages", "node": self.node, "channel": channel,
                 "deliveries": deliveries}
        try:
            self._sync.publish(self._channel, json.dumps(event, ensure_ascii=False))
        except redis.RedisError as error:
            self._outage(error)
            return False
        return True

    def publish_frame(self, user_ids, frame):
        """Send a frame to the given users' sockets on the other nodes."""
        self._publish_async({"kind": "frame", "node": self.node,
                             "users": list(user_ids), "frame": frame})

    def publish_logout(self, user_id, revoked_before):
        self._publish_async({"kind": "logout", "node": self.node, "user": user_id,
                             "revokedBefore": revoked_before})

    def _publish_async(self, event):
        payload = json.dumps(event, ensure_ascii=False)

        async def publish():
            try:
                await self._async.publish(self._channel, payload)
            except redis.RedisError as error:
                self._outage(error)

        asyncio.ensure_future(publish())

    # -- receiving -----------------------------------------------------------

    async def _listen(self):
        while True:
            pubsub = self._async.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                async for item in pubsub.listen():
                    if item.get("type") == "message":
                        self._handle(item["data"])
                    elif item.get("type") == "subscribe":
                        self._subscribed()
            except asyncio.CancelledError:
                self.connected = False
                await pubsub.aclose()
                raise
            except (redis.RedisError, OSError) as error:
                lost, self.connected = self.connected, False
                self._outage(error, subscription_lost=lost)
                await pubsub.aclose()
                await asyncio.sleep(RECONNECT_DELAY_SECONDS)

    def _subscribed(self):
        # Redis has confirmed the subscription: from now on every batch
        # published, by any node, comes back to this one.
        self.connected = True
        if self._outage_logged:
            logger.warning("Redis reachable again; node %s subscribed to %s",
                           self.node, self._channel)
            self._outage_logged = False
        else:
            logger.info("Subscribed to %s on Redis as node %s", self._channel, self.node)

    def _handle(self, data):
        try:
            event = json.loads(data)
        except ValueError:
            logger.warning("Ignored a malformed cluster event")
            return
        self.events_received += 1
        kind = event.get("kind")
        if kind == "messages":
            self._batches.put_nowait(event)
        elif event.get("node") == self.node:
            return
        elif kind == "frame":
            self._registry.send(event["users"], event["frame"], local_only=True)
        elif kind == "logout":
            self._tokens.revoke_before(event["user"], event["revokedBefore"])
            for socket in self._registry.sockets_of(event["user"]):
                socket.close(4001, "logged out")

    async def _deliver_batches(self):
        """Write published batches in arrival order, filling gaps first.

        The ids of one batch are consecutive, and batches of a channel are
        published in id order. A batch that does not start right after the
        last one seen therefore means some batch was never published, by a
        node whose Redis link was down or whose publish failed. The missing
        range is read from the database and written first, which keeps
        live frames gap-free and in id order on this node.
        """
        while True:
            event = await self._batches.get()
            try:
                await self._fill_gap(event)
            except Exception as error:  # noqa: BLE001 - keep delivering later batches
                logger.warning("Could not fill a %s gap before a batch from %s: %s",
                               event.get("channel"), event.get("node"), error)
            self._deliver(event)

    async def _fill_gap(self, event):
        channel = event["channel"]
        ids = [delivery["message"]["id"] for delivery in event["deliveries"]]
        if not ids:
            return
        first, last = min(ids), max(ids)
        seen = self._last_seen.get(channel)
        self._last_seen[channel] = max(seen or 0, last)
        if seen is None or first <= seen + 1 or self.fetch_range is None:
            return
        if first - seen > MAX_GAP_FILL_IDS:
            logger.warning("Gap of %d %s ids too large to fill live; clients sync",
                           first - seen - 1, channel)
            return
        missing = await self.fetch_range(channel, seen, first - 1)
        for message, user_ids in missing:
            frame = {"type": "message", "message": message}
            self._registry.send(user_ids, frame, local_only=True)
        self.gaps_filled += 1
        logger.info("Filled a gap of %s ids %d-%d with %d messages from the database",
                    channel, seen + 1, first - 1, len(missing))

    def _deliver(self, event):
        own = event["node"] == self.node
        for delivery in event["deliveries"]:
            message = delivery["message"]
            origin = delivery.get("origin")
            origin_socket = None
            if own and origin:
                origin_socket = self._registry.socket_by_id(origin[1])
            frame = {"type": "message", "message": message}
            self._registry.send(delivery["users"], frame, exclude=origin_socket,
                                local_only=True)
            if origin_socket is not None:
                origin_socket.send_frame({
                    "type": "sent",
                    "clientMsgId": message.get("clientMsgId"),
                    "message": message,
                })

    # -- presence ------------------------------------------------------------

    async def _refresh_presence(self):
        while True:
            users = self._registry.online_user_ids()
            if users:
                expires = time.time() + self._ttl
                try:
                    pipe = self._async.pipeline(transaction=False)
                    for user_id in users:
                        key = PRESENCE_KEY.format(user_id)
                        pipe.zadd(key, {self.node: expires})
                        pipe.expire(key, int(self._ttl) + 5)
                    await pipe.execute()
                except redis.RedisError as error:
                    self._outage(error)
            await asyncio.sleep(self._refresh)

    def mark_online(self, user_id):
        """Publish a user's presence on this node at once (first socket)."""
        key = PRESENCE_KEY.format(user_id)

        async def add():
            try:
                pipe = self._async.pipeline(transaction=False)
                pipe.zadd(key, {self.node: time.time() + self._ttl})
                pipe.expire(key, int(self._ttl) + 5)
                await pipe.execute()
            except redis.RedisError as error:
                self._outage(error)

        asyncio.ensure_future(add())

    def mark_offline(self, user_id):
        async def remove():
            try:
                await self._async.zrem(PRESENCE_KEY.format(user_id), self.node)
            except redis.RedisError as error:
                self._outage(error)

        asyncio.ensure_future(remove())

    def online_elsewhere_blocking(self, user_ids):
        """Return the users with a live socket on another node (worker threads)."""
        user_ids = list(user_ids)
        if not user_ids:
            return set()
        now = time.time()
        try:
            pipe = self._sync.pipeline(transaction=False)
            for user_id in user_ids:
                pipe.zrangebyscore(PRESENCE_KEY.format(user_id), now, "+inf")
            answers = pipe.execute()
        except redis.RedisError as error:
            self._outage(error)
            return set()
        node = self.node.encode()
        return {
            user_id for user_id, nodes in zip(user_ids, answers)
            if any(member != node for member in nodes)
        }
