"""msg_sequence: the per-channel lock row and id counter.

Locking a channel's row is the first statement of every transaction that
adds messages to the channel. The lock is held until commit, so the next
transaction of that channel (in any process) can only take its ids after
this one's messages are committed: ids become visible in id order.
"""


class MsgSequence:
    @staticmethod
    def lock(conn, channel):
        """Lock the channel's row until commit; return the last id used."""
        last_id = conn.scalar(
            "SELECT last_id FROM msg_sequence WHERE channel = :c" + conn.for_update,
            c=channel,
        )
        if last_id is None:
            raise RuntimeError(f"msg_sequence has no row for channel {channel!r}")
        return last_id

    @staticmethod
    def advance(conn, channel, last_id):
        """Record ``last_id`` as used; call only while holding the lock."""
        conn.execute(
            "UPDATE msg_sequence SET last_id = :n WHERE channel = :c",
            n=last_id, c=channel,
        )
