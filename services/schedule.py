"""Delayed messages: ``sendAt`` on the send endpoints.

A scheduled send is checked when it is made, kept in msg_schedule, and sent
through the normal send path when due by a scheduler job. Each row is sent
with a client message id of its own (the caller's, or one derived from the
row id), so a row sent twice after a crash or by two processes stores one
message.
"""

import json
import logging
import time

from models.db import DatabaseUnavailable
from models.schedule import FAILED, SENT, MsgSchedule
from services.dispatch import SendRequest
from services.errors import ApiError, Forbidden, InvalidArgument, NotFound
from services.validation import integer

logger = logging.getLogger(__name__)

MAX_DELAY_MS = 30 * 24 * 3600 * 1000
CLAIM_LEASE_SECONDS = 60
CLAIM_BATCH_SIZE = 50
# SendRequest fields kept in msg_schedule.request.
STORED_FIELDS = ("channel", "sender", "content_type", "content", "to", "group",
                 "group_type", "at", "title", "summary", "client_msg_id")


class Schedules:
    def __init__(self, db, dispatcher, node):
        self._db = db
        self._dispatcher = dispatcher
        self._node = node
        self.sent_count = 0

    async def schedule(self, request, body):
        """Check and store a delayed send; return ``{"id", "sendAt"}``.

        Raises InvalidArgument for a ``sendAt`` that is not within the next
        30 days, and the send's own errors (unknown user or group, not a
        member) as an immediate send would.
        """
        now = int(time.time() * 1000)
        send_at = integer(body, "sendAt", 0, 2**63 - 1)
        if not now < send_at <= now + MAX_DELAY_MS:
            raise InvalidArgument(
                "sendAt must be a time (ms since the epoch) within the next 30 days",
                field="sendAt",
            )
        stored = {name: getattr(request, name) for name in STORED_FIELDS}
        schedule_id = await self._db.run_transaction(
            self._schedule_tx, request, json.dumps(stored, ensure_ascii=False),
            send_at, now,
        )
        logger.info("Scheduled %s message %s from %s for %d",
                    request.channel, schedule_id, request.sender, send_at)
        return {"id": schedule_id, "sendAt": send_at}

    def _schedule_tx(self, conn, request, request_json, send_at, now):
        self._dispatcher.check_request(conn, request)
        return MsgSchedule.insert(
            conn, request.channel, request.sender, request_json, send_at, now
        )

    async def cancel(self, principal, schedule_id):
        """Cancel a waiting message; NotFound once it was sent or cancelled."""
        await self._db.run_transaction(self._cancel_tx, principal, schedule_id)
        logger.info("Cancelled scheduled message %s", schedule_id)

    @staticmethod
    def _cancel_tx(conn, principal, schedule_id):
        row = MsgSchedule.get(conn, schedule_id, lock=True)
        if row is None or row["status"] != "waiting":
            raise NotFound(f"No waiting scheduled message {schedule_id}", field="id")
        if not principal.is_system and row["sender"] != principal.user_id:
            raise Forbidden("Only the sender may cancel a scheduled message")
        MsgSchedule.cancel(conn, schedule_id)

    async def release_own_claims(self):
        released = await self._db.run_transaction(MsgSchedule.release_claims, self._node)
        if released:
            logger.info("Re-queued %d scheduled messages claimed before a restart",
                        released)

    async def run_once(self):
        """Send every due scheduled message."""
        while True:
            now = int(time.time() * 1000)
            rows = await self._db.run_transaction(
                MsgSchedule.claim, self._node, now,
                CLAIM_LEASE_SECONDS * 1000, CLAIM_BATCH_SIZE,
            )
            for row in rows:
                await self._send(row)
            if len(rows) < CLAIM_BATCH_SIZE:
                return

    async def _send(self, row):
        fields = json.loads(row["request"])
        if not fields.get("client_msg_id"):
            fields["client_msg_id"] = f"scheduled-{row['id']}"
        request = SendRequest(**fields)
        try:
            result = await self._dispatcher.send(request)
        except ApiError as error:
            logger.error("Scheduled message %s could not be sent: %s",
                         row["id"], error.message)
            await self._db.run_transaction(
                MsgSchedule.finish, row["id"], self._node, FAILED, None
            )
            return
        except DatabaseUnavailable as error:
            # The lease runs out and the row is claimed again later.
            logger.warning("Scheduled message %s not sent yet: %s", row["id"], error)
            return
        await self._db.run_transaction(
            MsgSchedule.finish, row["id"], self._node, SENT, result.message["id"]
        )
        self.sent_count += 1
        logger.info("Sent scheduled message %s as %s message %s",
                    row["id"], request.channel, result.message["id"])
