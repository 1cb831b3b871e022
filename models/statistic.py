"""msg_statistic: one row per user and conversation with its unread count.

Rows are keyed by (user_id, channel, peer_id, group_id); the system
conversation has both ids empty. Writers that touch several rows sort them
by that key first, so two such writers do not wait on each other in a
cycle. A deadlock that still happens (a group-wide UPDATE locks rows in
index order) is retried by Database.transaction.
"""


def row_key(user_id, channel, peer_id="", group_id=""):
    return (user_id, channel, peer_id or "", group_id or "")


_UPSERT_COLUMNS = (
    "INSERT INTO msg_statistic (user_id, channel, peer_id, group_id, unread,"
    " last_msg_id, last_msg_at, read_upto_id, peer_read_upto_id)"
    " VALUES (:user_id, :channel, :peer_id, :group_id, :unread, :last_msg_id,"
    " :last_msg_at, 0, 0)"
)
_UPSERT = {
    "mysql": _UPSERT_COLUMNS + " ON DUPLICATE KEY UPDATE"
    " unread = unread + VALUES(unread),"
    " last_msg_id = GREATEST(last_msg_id, VALUES(last_msg_id)),"
    " last_msg_at = GREATEST(last_msg_at, VALUES(last_msg_at))",
    "sqlite": _UPSERT_COLUMNS + " ON CONFLICT (user_id, channel, peer_id, group_id)"
    " DO UPDATE SET unread = unread + excluded.unread,"
    " last_msg_id = MAX(last_msg_id, excluded.last_msg_id),"
    " last_msg_at = MAX(last_msg_at, excluded.last_msg_at)",
}
_ENSURE = {
    "mysql": "INSERT IGNORE INTO msg_statistic (user_id, channel, peer_id, group_id)"
    " VALUES (:user_id, :channel, :peer_id, :group_id)",
    "sqlite": "INSERT OR IGNORE INTO msg_statistic (user_id, channel, peer_id,"
    " group_id) VALUES (:user_id, :channel, :peer_id, :group_id)",
}


class MsgStatistic:
    @staticmethod
    def add(conn, changes):
        """Apply counter changes: ``{row_key: (unread_delta, last_id, last_at)}``.

        Missing rows are created. Unread deltas here are never negative.
        """
        rows = [
            {
                "user_id": key[0], "channel": key[1], "peer_id": key[2],
                "group_id": key[3], "unread": delta, "last_msg_id": last_id,
                "last_msg_at": last_at,
            }
            for key, (delta, last_id, last_at) in sorted(changes.items())
        ]
        conn.executemany(_UPSERT[conn.dialect], rows)

    @staticmethod
    def add_group_messages(conn, group_id, sent_by, last_id, last_at):
        """Count new group messages on every member row but their senders'.

        ``sent_by`` maps each sender to the number of the new messages it
        sent; a member's own messages never count as unread.
        """
        total = sum(sent_by.values())
        conn.execute(
            "UPDATE msg_statistic SET unread = unread + :n,"
            " last_msg_id = :m, last_msg_at = :t"
            " WHERE group_id = :g AND channel = 'group'",
            n=total, m=last_id, t=last_at, g=group_id,
        )
        for sender, count in sorted(sent_by.items()):
            conn.execute(
                "UPDATE msg_statistic SET unread = unread - :n"
                " WHERE group_id = :g AND channel = 'group' AND user_id = :u",
                n=count, g=group_id, u=sender,
            )

    @staticmethod
    def ensure(conn, keys, read_upto_id=0):
        """Create rows that do not exist yet, with nothing unread."""
        rows = [
            {"user_id": k[0], "channel": k[1], "peer_id": k[2], "group_id": k[3]}
            for k in sorted(keys)
        ]
        conn.executemany(_ENSURE[conn.dialect], rows)
        if read_upto_id:
            for key in sorted(keys):
                conn.execute(
                    "UPDATE msg_statistic SET read_upto_id = :r WHERE user_id = :u"
                    " AND channel = :c AND peer_id = :p AND group_id = :g"
                    " AND read_upto_id < :r",
                    r=read_upto_id, u=key[0], c=key[1], p=key[2], g=key[3],
                )

    @staticmethod
    def lock(conn, keys):
        """Lock the given rows in key order and return them by key."""
        found = {}
        for key in sorted(keys):
            row = conn.get(
                "SELECT * FROM msg_statistic WHERE user_id = :u AND channel = :c"
                " AND peer_id = :p AND group_id = :g" + conn.for_update,
                u=key[0], c=key[1], p=key[2], g=key[3],
            )
            if row is not None:
                found[key] = row
        return found

    @staticmethod
    def set_read(conn, key, read_upto_id, unread):
        conn.execute(
            "UPDATE msg_statistic SET read_upto_id = :r, unread = :n"
            " WHERE user_id = :u AND channel = :c AND peer_id = :p AND group_id = :g",
            r=read_upto_id, n=unread, u=key[0], c=key[1], p=key[2], g=key[3],
        )

    @staticmethod
    def set_peer_read(conn, key, peer_read_upto_id):
        conn.execute(
            "UPDATE msg_statistic SET peer_read_upto_id = :r"
            " WHERE user_id = :u AND channel = :c AND peer_id = :p AND group_id = :g"
            " AND peer_read_upto_id < :r",
            r=peer_read_upto_id, u=key[0], c=key[1], p=key[2], g=key[3],
        )

    @staticmethod
    def uncount(conn, key, message_id):
        """Drop one unread message from a row if its owner had not read it."""
        conn.execute(
            "UPDATE msg_statistic SET unread = unread - 1"
            " WHERE user_id = :u AND channel = :c AND peer_id = :p AND group_id = :g"
            " AND read_upto_id < :m AND unread > 0",
            u=key[0], c=key[1], p=key[2], g=key[3], m=message_id,
        )

    @staticmethod
    def uncount_group(conn, group_id, sender, message_id):
        conn.execute(
            "UPDATE msg_statistic SET unread = unread - 1"
            " WHERE group_id = :g AND channel = 'group' AND user_id <> :u"
            " AND read_upto_id < :m AND unread > 0",
            g=group_id, u=sender, m=message_id,
        )

    @staticmethod
    def delete(conn, key):
        conn.execute(
            "DELETE FROM msg_statistic WHERE user_id = :u AND channel = :c"
            " AND peer_id = :p AND group_id = :g",
            u=key[0], c=key[1], p=key[2], g=key[3],
        )

    @staticmethod
    def total_unread(conn, user_id):
        return int(conn.scalar(
            "SELECT COALESCE(SUM(unread), 0) FROM msg_statistic WHERE user_id = :u",
            u=user_id,
        ))

    @staticmethod
    def get(conn, key):
        return conn.get(
            "SELECT * FROM msg_statistic WHERE user_id = :u AND channel = :c"
            " AND peer_id = :p AND group_id = :g",
            u=key[0], c=key[1], p=key[2], g=key[3],
        )

    @staticmethod
    def recent(conn, user_id, before_at, limit):
        """Conversations with at least one message, newest first."""
        where = "user_id = :u AND last_msg_id > 0"
        if before_at is not None:
            where += " AND last_msg_at < :b"
        return conn.query(
            f"SELECT * FROM msg_statistic WHERE {where}"
            " ORDER BY last_msg_at DESC, last_msg_id DESC LIMIT :n",
            u=user_id, b=before_at, n=limit + 1,
        )
