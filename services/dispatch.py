"""Message sending: store, count, queue pushes, deliver.

Ordering guarantee (API.md: no user sees id N of a channel while a smaller
id of it can still appear) rests on two mechanisms:

1. Across processes, every transaction that adds messages to a channel
   first locks that channel's row in ``msg_sequence`` and takes its ids from
   it (models.sequence). The lock is held until commit, so when id N is
   committed every smaller id of the channel is committed already. Sync and
   history read committed rows only, so they can never skip an id.
2. Within a process, one ``ChannelWriter`` per channel runs these
   transactions one at a time and writes each batch's frames to the sockets
   right after its commit, before the next batch starts, so live frames
   leave in id order.

Throughput comes from group commit: all sends that arrive while a
transaction runs are stored together in the next one.
"""

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field

from models.db import DatabaseUnavailable
from models.group import TalkGroup, TalkGroupMember
from models.message import MODELS, conv_key
from models.sequence import MsgSequence
from models.statistic import MsgStatistic, row_key
from models.user import TalkUser
from services.errors import ApiError, Forbidden, InvalidArgument, NotFound

logger = logging.getLogger(__name__)


def now_ms():
    return int(time.time() * 1000)


@dataclass
class SendRequest:
    """A validated send; ``sender`` is a user id, or "system" for system messages."""

    channel: str
    sender: str
    content_type: int
    content: str
    to: str = None
    group: str = None
    group_type: int = None
    at: list = None
    title: str = ""
    summary: str = ""
    client_msg_id: str = None
    # The socket that sent it: it gets a ``sent`` frame instead of the message.
    origin_socket: object = field(default=None, repr=False)


@dataclass
class SendResult:
    message: dict
    created: bool
    online: bool
    recipients: list = field(default_factory=list)


class ChannelWriter:
    """Stores the sends of one channel in batches, one transaction at a time."""

    def __init__(self, channel, dispatcher, max_batch):
        self.channel = channel
        self._dispatcher = dispatcher
        self._max_batch = max_batch
        self._queue = []
        self._draining = False
        # Resolved once the batch being stored now has been delivered.
        self._batch_delivered = None

    @property
    def busy(self):
        return self._draining or bool(self._queue)

    async def wait_for_current_batch(self):
        """Wait until the batch being stored now, if any, has been delivered."""
        if self._batch_delivered is not None:
            await asyncio.shield(self._batch_delivered)

    def submit(self, request):
        future = asyncio.get_running_loop().create_future()
        self._queue.append((request, future))
        if not self._draining:
            self._draining = True
            asyncio.ensure_future(self._drain())
        return future

    async def _drain(self):
        try:
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                self._batch_delivered = asyncio.get_running_loop().create_future()
                try:
                    await self._store_and_deliver(batch)
                finally:
                    self._batch_delivered.set_result(None)
                    self._batch_delivered = None
        finally:
            self._draining = False

    async def _store_and_deliver(self, batch):
        requests = [request for request, _ in batch]
        try:
            outcomes, published = await self._dispatcher.store_batch(
                self.channel, requests
            )
        except Exception as error:  # noqa: BLE001 - every waiter must hear back
            retry_alone = not isinstance(error, (ApiError, DatabaseUnavailable))
            if len(batch) > 1 and retry_alone:
                # One bad request must not fail its neighbours: store each
                # alone so only the faulty one reports the error.
                logger.warning(
                    "Batch of %d %s sends failed (%s); retrying one by one",
                    len(batch), self.channel, type(error).__name__,
                )
                for item in batch:
                    await self._store_and_deliver([item])
                return
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return

        for (request, future), outcome in zip(batch, outcomes):
            if isinstance(outcome, SendResult) and outcome.created:
                self._dispatcher.deliver(request, outcome, published)
            elif isinstance(outcome, SendResult):
                self._dispatcher.answer_origin(request, outcome)
            if future.done():
                continue
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)


class Dispatcher:
    """Entry point for sending; owns one ChannelWriter per channel."""

    def __init__(self, db, registry, max_batch=200, outbox=None, hooks=None):
        self._db = db
        self._registry = registry
        self.outbox = outbox
        # Callables run after each delivered message: hook(message, recipients).
        self.hooks = list(hooks or [])
        self._writers = {
            channel: ChannelWriter(channel, self, max_batch) for channel in MODELS
        }
        self.messages_stored = {channel: 0 for channel in MODELS}

    async def send(self, request):
        """Store a message and deliver it; return a SendResult.

        Raises ApiError for a request the data rejects (unknown user or
        group, not a member) and DatabaseUnavailable when the database is
        down. Nothing is stored or delivered then.
        """
        return await self._writers[request.channel].submit(request)

    async def settle(self):
        """Wait until the batches being stored now have been delivered.

        Their rows can be visible to other transactions before this process
        learns that the commit succeeded. A reader that is about to write
        rows it read to a socket waits here first, so no live frame of those
        rows reaches the socket after them.

        NOTE: in cluster mode frames come through the bus, which this does not
        wait for. IMSocket.send_encoded drops a repeat on the same socket, but
        a socket opened meanwhile by a resuming client can still get one.
        """
        await asyncio.gather(
            *(writer.wait_for_current_batch() for writer in self._writers.values())
        )

    async def drain(self):
        """Wait until every queued send has been stored and delivered."""
        while any(writer.busy for writer in self._writers.values()):
            await asyncio.sleep(0.01)

    async def store_batch(self, channel, requests):
        """Store a batch; return (outcomes, published to the cluster bus)."""
        if self._registry.bus is None:
            outcomes = await self._db.run_transaction(
                self._store_batch_tx, channel, requests
            )
            return outcomes, False
        return await self._db.run(self._store_and_publish, channel, requests)

    def _store_and_publish(self, channel, requests):
        """Commit and publish under one named lock (worker thread).

        The channel's row lock ends at COMMIT; the named lock also covers
        the publish, so batches reach Redis in id order (services.cluster).
        """
        with self._db.named_lock(f"send:{channel}"):
            outcomes = self._db.transaction(self._store_batch_tx, channel, requests)
            deliveries = []
            for request, outcome in zip(requests, outcomes):
                if isinstance(outcome, SendResult) and outcome.created:
                    socket = request.origin_socket
                    origin = [self._registry.bus.node, socket.socket_id] if socket else None
                    deliveries.append({"users": outcome.recipients,
                                       "message": outcome.message, "origin": origin})
            published = not deliveries or self._registry.bus.publish_deliveries_blocking(
                channel, deliveries
            )
        return outcomes, published

    # -- the transaction (runs in a database thread) -------------------------

    def _store_batch_tx(self, conn, channel, requests):
        """Check, store and count a batch; return one outcome per request.

        An outcome is a SendResult or an ApiError. The channel lock is taken
        first, so idempotency checks and id allocation see every earlier
        committed send of the channel.
        """
        model = MODELS[channel]
        cache = _BatchCache(conn)
        # Users are never deleted, so they can be checked before the lock,
        # which keeps the lock's hold short. Membership and client message
        # ids change under the lock, so they are read after it.
        cache.prefetch_users(
            {request.sender for request in requests if request.channel != "system"}
            | {request.to for request in requests if request.to}
        )
        first_id = MsgSequence.lock(conn, channel) + 1
        now = now_ms()
        outcomes, rows, stored = [], [], []
        by_client_id = model.find_by_client_ids(conn, {
            (request.sender, request.client_msg_id)
            for request in requests if request.client_msg_id
        })

        for request in requests:
            try:
                recipients = self._check(cache, request)
            except ApiError as error:
                outcomes.append(error)
                continue

            if request.client_msg_id:
                earlier = by_client_id.get((request.sender, request.client_msg_id))
                existing = earlier.message if isinstance(earlier, SendResult) else earlier
                if existing is not None:
                    outcomes.append(SendResult(existing, False, False, recipients))
                    continue

            message_id = first_id + len(rows)
            row = _row_for(request, message_id, now)
            rows.append(row)
            result = SendResult(_message_for(request, message_id, now), True, False, recipients)
            outcomes.append(result)
            stored.append((request, result))
            if request.client_msg_id:
                by_client_id[(request.sender, request.client_msg_id)] = result

        if not rows:
            return outcomes
        model.insert_many(conn, rows)
        MsgSequence.advance(conn, channel, first_id - 1 + len(rows))
        self._count(conn, channel, stored)

        everyone = {uid for _, result in stored for uid in result.recipients}
        online = self._registry.online_users(everyone)
        for request, result in stored:
            targets = [uid for uid in result.recipients if uid != request.sender]
            result.online = any(uid in online for uid in targets)
            offline = [uid for uid in targets if uid not in online]
            if offline and self.outbox is not None:
                self.outbox.enqueue(conn, result.message, offline)
        return outcomes

    def check_request(self, conn, request):
        """Check a request against stored data without storing it."""
        return self._check(_BatchCache(conn), request)

    @staticmethod
    def _check(cache, request):
        """Check a request against stored data; return the recipient ids."""
        if request.channel == "system":
            if not cache.user_exists(request.to):
                raise NotFound(f"Unknown user {request.to!r}", field="to")
            return [request.to]

        if not cache.user_exists(request.sender):
            raise NotFound(f"Unknown user {request.sender!r}", field="from")
        if request.channel == "p2p":
            if not cache.user_exists(request.to):
                raise NotFound(f"Unknown user {request.to!r}", field="to")
            return [request.to, request.sender]

        group = cache.group(request.group)
        if group is None:
            raise NotFound(f"Unknown group {request.group!r}", field="group")
        if request.group_type is not None and request.group_type != group["type"]:
            raise InvalidArgument(
                f"groupType {request.group_type} does not match the group's type "
                f"{group['type']}",
                field="groupType",
            )
        request.group_type = group["type"]
        members = cache.members(request.group)
        if request.sender not in members:
            raise Forbidden(
                f"{request.sender!r} is not a member of group {request.group!r}",
                field="group",
            )
        return members

    @staticmethod
    def _count(conn, channel, stored):
        """Update every recipient's counters for the stored messages."""
        if channel == "group":
            # One counter update per group and batch: every member gets the
            # batch's count, less the messages it sent itself.
            per_group = {}
            for request, result in stored:
                entry = per_group.setdefault(request.group, {"senders": {}})
                entry["senders"][request.sender] = entry["senders"].get(request.sender, 0) + 1
                entry["last_id"] = result.message["id"]
                entry["last_at"] = result.message["timestamp"]
            for group_id, entry in sorted(per_group.items()):
                MsgStatistic.add_group_messages(
                    conn, group_id, entry["senders"], entry["last_id"], entry["last_at"]
                )
            return

        changes = {}
        for request, result in stored:
            message_id, created_at = result.message["id"], result.message["timestamp"]
            if channel == "system":
                keys = [(row_key(request.to, "system"), 1)]
            else:
                keys = [
                    (row_key(request.to, "p2p", peer_id=request.sender), 1),
                    (row_key(request.sender, "p2p", peer_id=request.to), 0),
                ]
            for key, delta in keys:
                old_delta = changes.get(key, (0, 0, 0))[0]
                changes[key] = (old_delta + delta, message_id, created_at)
        MsgStatistic.add(conn, changes)

    # -- after commit (runs on the IOLoop) -----------------------------------

    def deliver(self, request, result, published=False):
        """Write a stored message to its recipients' and sender's sockets.

        A batch published to the cluster bus is written by the bus's
        subscriber instead, on every node, this one included.
        """
        message = result.message
        if not published:
            frame = {"type": "message", "message": message}
            self._registry.send(result.recipients, frame,
                                exclude=request.origin_socket, local_only=True)
            self.answer_origin(request, result)
        self.messages_stored[request.channel] += 1
        for hook in self.hooks:
            try:
                hook(message, result.recipients)
            except Exception:  # noqa: BLE001 - a hook must not stop delivery
                logger.exception("Delivery hook failed for %s message %s",
                                 request.channel, message["id"])

    @staticmethod
    def answer_origin(request, result):
        socket = request.origin_socket
        if socket is not None:
            socket.send_frame({
                "type": "sent",
                "clientMsgId": request.client_msg_id,
                "message": result.message,
            })


class _BatchCache:
    """Lookups shared by the requests of one batch transaction."""

    def __init__(self, conn):
        self._conn = conn
        self._users = {}
        self._groups = {}
        self._members = {}

    def prefetch_users(self, user_ids):
        existing = TalkUser.existing_ids(self._conn, user_ids)
        for user_id in user_ids:
            self._users[user_id] = user_id in existing

    def user_exists(self, user_id):
        if user_id not in self._users:
            self._users[user_id] = TalkUser.get(self._conn, user_id) is not None
        return self._users[user_id]

    def group(self, group_id):
        if group_id not in self._groups:
            self._groups[group_id] = TalkGroup.get(self._conn, group_id)
        return self._groups[group_id]

    def members(self, group_id):
        if group_id not in self._members:
            self._members[group_id] = TalkGroupMember.member_ids(self._conn, group_id)
        return self._members[group_id]


def _row_for(request, message_id, now):
    row = {
        "id": message_id,
        "content_type": request.content_type,
        "content": request.content,
        "client_msg_id": request.client_msg_id,
        "created_at": now,
    }
    if request.channel == "p2p":
        row.update(from_user=request.sender, to_user=request.to,
                   conv_key=conv_key(request.sender, request.to))
    elif request.channel == "group":
        row.update(from_user=request.sender, group_id=request.group,
                   group_type=request.group_type,
                   at_users=json.dumps(request.at) if request.at else None)
    else:
        row.update(to_user=request.to, title=request.title, summary=request.summary)
    return row


def _message_for(request, message_id, now):
    """Build the API message object of a new message, as models read it back."""
    message = {"id": message_id, "channel": request.channel}
    if request.channel == "p2p":
        message.update({"from": request.sender, "to": request.to})
    elif request.channel == "group":
        message.update({"from": request.sender, "group": request.group,
                        "groupType": request.group_type})
        if request.at:
            message["at"] = request.at
    else:
        message.update({"from": "system", "to": request.to,
                        "title": request.title, "summary": request.summary})
    message["contentType"] = request.content_type
    message["content"] = request.content
    if request.client_msg_id:
        message["clientMsgId"] = request.client_msg_id
    message["timestamp"] = now
    return message
