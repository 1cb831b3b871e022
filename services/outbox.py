"""Pushes to offline users: queued in the send transaction, sent by a job.

``PushOutbox.enqueue`` runs inside the transaction that stores a message, so
a push exists exactly when its message does. ``PushSender`` is run by the
scheduler once per vendor: it claims due rows (one process per row, see
models.push), calls the vendor and records the outcome. Each vendor has its
own job, so a failing vendor never delays the other.
"""

import asyncio
import hashlib
import json
import logging
import random
import time
from dataclasses import dataclass

from models.push import CANCELLED, FAILED, SENT, MsgPush, VendorToken
from models.statistic import MsgStatistic
from models.user import TalkUser
from services.push_outcome import PushStatus, seconds_until_next_day
from services.wechat import AccessToken, build_template_data

logger = logging.getLogger(__name__)

GETUI, WECHAT = "getui", "wechat"
CLAIM_LEASE_SECONDS = 60
CLAIM_BATCH_SIZE = 50
EXCERPT_CHARS = 60
MEDIA_EXCERPTS = {2: "[图片]", 3: "[语音]", 4: "[链接]", 5: "[文件]"}
# Getui's request_id takes 10-32 characters. WeChat documents no limit for
# client_msg_id, and services.wechat accepts at most 32.
MAX_REQUEST_ID_CHARS = 32


def excerpt_of(message):
    """Return the notification text of a message: its text, or a media label."""
    label = MEDIA_EXCERPTS.get(message["contentType"])
    if label is not None:
        return label
    text = " ".join(message["content"].split())
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"


def push_request_id(row):
    """Return the Getui request_id and WeChat client_msg_id of an outbox row.

    Both vendors drop a repeated id. Every attempt for one message reuses
    its id, so a retry after a lost response is not shown twice. A row
    rewritten with a newer message gets a new id, because the vendor would
    otherwise drop the newer message when an earlier attempt had been
    delivered. The form is ``im<row id, 8 digits><channel letter><message
    id>``, replaced by the first 32 hex digits of its SHA-256 when it is
    longer than 32 characters.
    """
    request_id = f"im{row['id']:08d}{row['channel'][0]}{row['message_id']}"
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        request_id = hashlib.sha256(request_id.encode("ascii")).hexdigest()
        request_id = request_id[:MAX_REQUEST_ID_CHARS]
    return request_id


@dataclass(frozen=True)
class RetryPolicy:
    """When to retry a failed push; times in seconds."""

    initial_backoff_seconds: float = 2.0
    max_backoff_seconds: float = 600.0
    max_attempts: int = 8

    def backoff_seconds(self, attempts):
        """Exponential backoff with jitter for the given failed-attempt count."""
        ceiling = min(
            self.max_backoff_seconds,
            self.initial_backoff_seconds * 2 ** (attempts - 1),
        )
        return random.uniform(ceiling / 2, ceiling)


class PushOutbox:
    """Decides, inside a send transaction, which pushes a message needs."""

    def __init__(self, vendors):
        # Only configured vendors get rows; others would wait forever.
        self.vendors = set(vendors)

    def enqueue(self, conn, message, offline_user_ids):
        """Queue pushes for recipients without a live socket."""
        if not self.vendors:
            return
        users = TalkUser.by_ids(conn, offline_user_ids)
        if message["channel"] == "system":
            sender_name, conversation = message["title"], ""
        else:
            sender = TalkUser.get(conn, message["from"])
            sender_name = sender["name"] if sender else message["from"]
            conversation = message.get("group") or message["from"]
        now = int(time.time() * 1000)

        for user_id in sorted(offline_user_ids):
            user = users.get(user_id)
            if user is None:
                continue
            targets = []
            if GETUI in self.vendors and user["getui_client_id"]:
                targets.append(GETUI)
            if WECHAT in self.vendors and user["wechat_open_id"] and not user[
                "wechat_unreachable"
            ]:
                targets.append(WECHAT)
            if not targets:
                continue
            payload = {
                "title": sender_name,
                "body": excerpt_of(message),
                "channel": message["channel"],
                "conversation": conversation,
                "messageId": message["id"],
                "sentAt": message["timestamp"],
                "badge": MsgStatistic.total_unread(conn, user_id),
            }
            for vendor in targets:
                MsgPush.enqueue(conn, user_id, vendor, message, conversation, payload, now)


class DatabaseTokenStore:
    """A vendor access token in the vendor_token table, shared by all processes."""

    def __init__(self, db, vendor):
        self._db = db
        self._vendor = vendor

    async def get(self):
        row = await self._db.run_transaction(VendorToken.get, self._vendor)
        if row is None or not row["token"]:
            return None
        return AccessToken(row["token"], float(row["expires_at"]))

    async def set(self, token, expires_at):
        now = int(time.time() * 1000)
        await self._db.run_transaction(VendorToken.set, self._vendor, token, expires_at, now)


class PushSender:
    """Claims due outbox rows of one vendor and sends them."""

    def __init__(self, db, node, vendor, client, wechat_settings=None, retry=None):
        self._db = db
        self._retry = retry or RetryPolicy()
        self._node = node
        self.vendor = vendor
        self._client = client
        self._wechat = wechat_settings or {}
        # Outcomes since start, for metrics: {status: count}.
        self.outcomes = {}

    async def release_own_claims(self):
        now = int(time.time() * 1000)
        released = await self._db.run_transaction(MsgPush.release_claims, self._node, now)
        if released:
            logger.info("Re-queued %d %s pushes this node had claimed before a restart",
                        released, self.vendor)

    async def run_once(self):
        """Send every due push of this vendor, one claim batch at a time."""
        while True:
            now = int(time.time() * 1000)
            rows = await self._db.run_transaction(
                MsgPush.claim, self.vendor, self._node, now,
                CLAIM_LEASE_SECONDS * 1000, CLAIM_BATCH_SIZE,
            )
            if not rows:
                return
            await asyncio.gather(*(self._send(row) for row in rows))
            if len(rows) < CLAIM_BATCH_SIZE:
                return

    async def _send(self, row):
        payload = json.loads(row["payload"])
        user = await self._db.run_transaction(TalkUser.get, row["user_id"])
        target = None
        if user is not None:
            if self.vendor == GETUI:
                target = user["getui_client_id"]
            elif not user["wechat_unreachable"]:
                target = user["wechat_open_id"]
        if not target:
            await self._finish(row, CANCELLED, row["attempts"], "no push registration")
            return

        try:
            outcome = await self._call_vendor(row, payload, target)
        except ValueError as error:
            logger.error("Push %s for %s rejected before sending: %s",
                         row["id"], row["user_id"], error)
            await self._finish(row, FAILED, row["attempts"] + 1, f"invalid push: {error}")
            return
        await self._record(row, outcome)

    async def _call_vendor(self, row, payload, target):
        request_id = push_request_id(row)
        if self.vendor == GETUI:
            click = {
                "channel": payload["channel"],
                "conversation": payload["conversation"],
                "messageId": payload["messageId"],
            }
            return await self._client.push_single(
                target, request_id, payload["title"], payload["body"], click,
                badge=payload.get("badge"),
            )
        settings = self._wechat
        data = build_template_data(
            settings["field_map"], payload["title"], payload["sentAt"], payload["body"]
        )
        url = settings.get("chat_url") or None
        return await self._client.send_template(
            target, settings["template_id"], data, url=url, client_msg_id=request_id
        )

    async def _record(self, row, outcome):
        status, attempts = outcome.status, row["attempts"] + 1
        self.outcomes[status.value] = self.outcomes.get(status.value, 0) + 1
        if status == PushStatus.SENT:
            await self._finish(row, SENT, attempts, None, outcome.vendor_message_id)
            return
        if status == PushStatus.INVALID_TARGET:
            await self._drop_target(row)
            await self._finish(row, FAILED, attempts, outcome.detail)
            return
        if status == PushStatus.PERMANENT or attempts >= self._retry.max_attempts:
            logger.error("Push %s to %s via %s failed for good after %d attempts: %s",
                         row["id"], row["user_id"], self.vendor, attempts, outcome.detail)
            await self._finish(row, FAILED, attempts, outcome.detail)
            return

        if status == PushStatus.QUOTA_EXHAUSTED:
            delay = seconds_until_next_day(time.time()) + random.uniform(0, 300)
            logger.error("%s daily quota used up; push %s parked for %.0f s",
                         self.vendor, row["id"], delay)
        else:
            delay = outcome.retry_after_seconds or self._retry.backoff_seconds(attempts)
        next_at = int((time.time() + delay) * 1000)
        superseded = await self._db.run_transaction(
            MsgPush.retry_later, row["id"], row["user_id"], self.vendor, self._node,
            attempts, next_at, outcome.detail, int(time.time() * 1000),
        )
        if superseded:
            logger.warning("Push %s to %s via %s failed and a newer push replaces it"
                           " (attempt %d): %s", row["id"], row["user_id"], self.vendor,
                           attempts, outcome.detail)
            return
        logger.warning("Push %s to %s via %s will retry in %.1f s (attempt %d): %s",
                       row["id"], row["user_id"], self.vendor, delay, attempts,
                       outcome.detail)

    async def _drop_target(self, row):
        """Forget a device or openid that the vendor reported as unable to receive pushes."""
        if self.vendor == GETUI:
            sql = "UPDATE talk_user SET getui_client_id = NULL WHERE id = :id"
        else:
            sql = "UPDATE talk_user SET wechat_unreachable = 1 WHERE id = :id"
        await self._db.run_transaction(lambda conn: conn.execute(sql, id=row["user_id"]))
        logger.warning("Dropped the %s registration of %s: the vendor rejected it",
                       self.vendor, row["user_id"])

    async def _finish(self, row, status, attempts, error, vendor_message_id=None,
                      next_at=None):
        now = int(time.time() * 1000)
        await self._db.run_transaction(
            MsgPush.finish, row["id"], self._node, status, attempts,
            next_at if next_at is not None else row["next_attempt_at"],
            error, vendor_message_id, now,
        )
