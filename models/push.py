"""msg_push: the push outbox, and vendor_token: shared vendor access tokens.

Row life: ``pending`` → claimed as ``sending`` by one process for a lease →
``sent``, back to ``pending`` with a later ``next_attempt_at`` (retry), or
``failed`` / ``cancelled`` for good. A row whose lease ran out while
``sending`` (its process died between claim and send) is claimed again.
"""

import json

PENDING, SENDING, SENT, FAILED, CANCELLED = (
    "pending", "sending", "sent", "failed", "cancelled",
)
MAX_ERROR_CHARS = 255


class MsgPush:
    @staticmethod
    def enqueue(conn, user_id, vendor, message, conversation, payload, now):
        """Queue a push, or refresh one that is already waiting for a retry.

        A push that failed at least once and waits for its next attempt is
        rewritten with the newest message instead of adding a second
        notification, so a vendor outage ends with one push per user and
        not a burst. Returns the row id.
        """
        encoded = json.dumps(payload, ensure_ascii=False)
        waiting = conn.get(
            "SELECT id FROM msg_push WHERE user_id = :u AND vendor = :v"
            " AND status = 'pending' AND attempts > 0"
            " ORDER BY id DESC LIMIT 1" + conn.for_update,
            u=user_id, v=vendor,
        )
        if waiting is not None:
            conn.execute(
                "UPDATE msg_push SET payload = :p, message_id = :m, channel = :c,"
                " conversation = :conv, updated_at = :now WHERE id = :id",
                p=encoded, m=message["id"], c=message["channel"],
                conv=conversation, now=now, id=waiting["id"],
            )
            return waiting["id"]
        return conn.insert(
            "INSERT INTO msg_push (user_id, vendor, channel, conversation, message_id,"
            " payload, status, attempts, next_attempt_at, claimed_until, created_at,"
            " updated_at) VALUES (:u, :v, :c, :conv, :m, :p, 'pending', 0, :now, 0,"
            " :now, :now)",
            u=user_id, v=vendor, c=message["channel"], conv=conversation,
            m=message["id"], p=encoded, now=now,
        )

    @staticmethod
    def claim(conn, vendor, node, now, lease_ms, limit):
        """Claim due rows of one vendor for ``node``; return them.

        On MySQL, SKIP LOCKED lets several processes claim side by side
        without waiting on each other's rows.
        """
        skip = " SKIP LOCKED" if conn.dialect == "mysql" else ""
        rows = conn.query(
            "SELECT * FROM msg_push WHERE vendor = :v AND ("
            " (status = 'pending' AND next_attempt_at <= :now)"
            " OR (status = 'sending' AND claimed_until < :now))"
            " ORDER BY next_attempt_at, id LIMIT :n" + conn.for_update + skip,
            v=vendor, now=now, n=limit,
        )
        for row in rows:
            conn.execute(
                "UPDATE msg_push SET status = 'sending', claimed_by = :node,"
                " claimed_until = :until, updated_at = :now WHERE id = :id",
                node=node, until=now + lease_ms, now=now, id=row["id"],
            )
        return rows

    @staticmethod
    def finish(conn, push_id, node, status, attempts, next_attempt_at, error,
               vendor_message_id, now):
        """Record the outcome of an attempt, unless another node took the row."""
        return conn.execute(
            "UPDATE msg_push SET status = :s, attempts = :a, next_attempt_at = :next,"
            " last_error = :e, vendor_message_id = COALESCE(:vm, vendor_message_id),"
            " claimed_by = NULL, claimed_until = 0, updated_at = :now"
            " WHERE id = :id AND claimed_by = :node",
            s=status, a=attempts, next=next_attempt_at,
            e=(error or None) and error[:MAX_ERROR_CHARS], vm=vendor_message_id,
            now=now, id=push_id, node=node,
        )

    @staticmethod
    def retry_later(conn, push_id, user_id, vendor, node, attempts, next_attempt_at,
                    error, now):
        """Queue another attempt of a failed push, unless a newer push replaces it.

        After a failure the user should get one notification with the newest
        message, not one per message. Messages that arrived while this
        attempt was in flight have rows of their own, so this row is
        cancelled when the same user and vendor have a newer row waiting or
        being sent. Returns True when the row was cancelled.
        """
        newer = conn.scalar(
            "SELECT COUNT(*) FROM msg_push WHERE user_id = :u AND vendor = :v"
            " AND id > :id AND status IN ('pending', 'sending')",
            u=user_id, v=vendor, id=push_id,
        )
        if newer:
            MsgPush.finish(conn, push_id, node, CANCELLED, attempts, next_attempt_at,
                           "superseded by a newer push", None, now)
            return True
        MsgPush.finish(conn, push_id, node, PENDING, attempts, next_attempt_at, error,
                       None, now)
        return False

    @staticmethod
    def release_claims(conn, node, now):
        """Return rows this node had claimed to the queue (used at start-up)."""
        return conn.execute(
            "UPDATE msg_push SET status = 'pending', claimed_by = NULL,"
            " claimed_until = 0, updated_at = :now"
            " WHERE status = 'sending' AND claimed_by = :node",
            node=node, now=now,
        )

    @staticmethod
    def cancel_for_message(conn, channel, message_id, now):
        """Cancel the unsent pushes of a recalled message.

        A row with an attempt in flight is cancelled too, and its claim is
        dropped, so ``finish`` ignores the outcome of that attempt and a
        failed attempt is never retried.
        """
        return conn.execute(
            "UPDATE msg_push SET status = 'cancelled', last_error = 'message recalled',"
            " claimed_by = NULL, claimed_until = 0, updated_at = :now"
            " WHERE channel = :c AND message_id = :m"
            " AND status IN ('pending', 'sending')",
            c=channel, m=message_id, now=now,
        )

    @staticmethod
    def cancel_for_user(conn, user_id, vendor, reason, now):
        return conn.execute(
            "UPDATE msg_push SET status = 'cancelled', last_error = :r,"
            " updated_at = :now WHERE user_id = :u AND vendor = :v"
            " AND status = 'pending'",
            r=reason, u=user_id, v=vendor, now=now,
        )

    @staticmethod
    def record_delivery(conn, vendor, vendor_message_id, delivery_status, now):
        return conn.execute(
            "UPDATE msg_push SET delivery_status = :d, updated_at = :now"
            " WHERE vendor = :v AND vendor_message_id = :m",
            d=delivery_status[:32], now=now, v=vendor, m=str(vendor_message_id),
        )

    @staticmethod
    def has_vendor_message(conn, vendor, vendor_message_id):
        """Return whether a push row stores this vendor message id (WeChat msgid)."""
        row = conn.get(
            "SELECT id FROM msg_push WHERE vendor = :v AND vendor_message_id = :m",
            v=vendor, m=str(vendor_message_id),
        )
        return row is not None

    @staticmethod
    def counts(conn):
        """Rows by vendor and status: {(vendor, status): count}."""
        rows = conn.query(
            "SELECT vendor, status, COUNT(*) AS n FROM msg_push GROUP BY vendor, status"
        )
        return {(row["vendor"], row["status"]): row["n"] for row in rows}


class VendorToken:
    @staticmethod
    def get(conn, vendor):
        return conn.get(
            "SELECT token, expires_at FROM vendor_token WHERE vendor = :v", v=vendor
        )

    @staticmethod
    def set(conn, vendor, token, expires_at, now):
        conn.execute(
            "UPDATE vendor_token SET token = :t, expires_at = :e, updated_at = :now"
            " WHERE vendor = :v",
            t=token, e=expires_at, now=now, v=vendor,
        )
