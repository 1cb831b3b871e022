"""msg_schedule: messages waiting for their ``sendAt`` time.

Row life: ``waiting`` → claimed as ``sending`` for a lease → ``sent`` (with
the stored message id) or ``failed``. A DELETE while still waiting sets
``cancelled``. A ``sending`` row whose lease ran out is claimed again, and
the send repeats with the same client message id, so it stores nothing
twice.
"""

WAITING, SENDING, SENT, FAILED, CANCELLED = (
    "waiting", "sending", "sent", "failed", "cancelled",
)


class MsgSchedule:
    @staticmethod
    def insert(conn, channel, sender, request_json, send_at, now):
        return conn.insert(
            "INSERT INTO msg_schedule (channel, sender, request, send_at, status,"
            " claimed_until, created_at) VALUES (:c, :s, :r, :at, 'waiting', 0, :now)",
            c=channel, s=sender, r=request_json, at=send_at, now=now,
        )

    @staticmethod
    def get(conn, schedule_id, lock=False):
        suffix = conn.for_update if lock else ""
        return conn.get(f"SELECT * FROM msg_schedule WHERE id = :id{suffix}", id=schedule_id)

    @staticmethod
    def cancel(conn, schedule_id):
        return conn.execute(
            "UPDATE msg_schedule SET status = 'cancelled'"
            " WHERE id = :id AND status = 'waiting'",
            id=schedule_id,
        )

    @staticmethod
    def claim(conn, node, now, lease_ms, limit):
        skip = " SKIP LOCKED" if conn.dialect == "mysql" else ""
        rows = conn.query(
            "SELECT * FROM msg_schedule WHERE"
            " (status = 'waiting' AND send_at <= :now)"
            " OR (status = 'sending' AND claimed_until < :now)"
            " ORDER BY send_at, id LIMIT :n" + conn.for_update + skip,
            now=now, n=limit,
        )
        for row in rows:
            conn.execute(
                "UPDATE msg_schedule SET status = 'sending', claimed_by = :node,"
                " claimed_until = :until WHERE id = :id",
                node=node, until=now + lease_ms, id=row["id"],
            )
        return rows

    @staticmethod
    def finish(conn, schedule_id, node, status, message_id):
        return conn.execute(
            "UPDATE msg_schedule SET status = :s, message_id = :m, claimed_by = NULL,"
            " claimed_until = 0 WHERE id = :id AND claimed_by = :node",
            s=status, m=message_id, id=schedule_id, node=node,
        )

    @staticmethod
    def release_claims(conn, node):
        return conn.execute(
            "UPDATE msg_schedule SET status = 'waiting', claimed_by = NULL,"
            " claimed_until = 0 WHERE status = 'sending' AND claimed_by = :node",
            node=node,
        )
