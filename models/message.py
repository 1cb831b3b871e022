"""The three message tables: msg_p2p, msg_group and msg_system.

Every method takes an open ``Connection`` (see models.db) so callers decide
the transaction. Rows come back as API message objects (camelCase dicts).
"""

import json

from models.db import in_list

# A page query reads one row past the limit to learn whether more exist.
PAGE_PROBE = 1


def conv_key(user_a, user_b):
    """Return the key shared by both directions of a p2p conversation."""
    return f"{user_a}|{user_b}" if user_a <= user_b else f"{user_b}|{user_a}"


def _page_sql(base, where, before_id, after_id):
    """Build one page query; return (sql, ascending)."""
    if after_id is not None:
        return f"{base} WHERE {where} AND id > :cursor ORDER BY id ASC LIMIT :n", True
    if before_id is not None:
        return f"{base} WHERE {where} AND id < :cursor ORDER BY id DESC LIMIT :n", False
    return f"{base} WHERE {where} ORDER BY id DESC LIMIT :n", False


def _page(conn, base, where, params, before_id, after_id, limit, to_message):
    """Return ``(messages ascending, has_more)`` for one history page."""
    sql, ascending = _page_sql(base, where, before_id, after_id)
    cursor = after_id if after_id is not None else before_id
    rows = conn.query(sql, cursor=cursor, n=limit + PAGE_PROBE, **params)
    has_more = len(rows) > limit
    rows = rows[:limit]
    if not ascending:
        rows.reverse()
    return [to_message(row) for row in rows], has_more


def _merge_by_id(first, second, limit, descending):
    rows = sorted(first + second, key=lambda row: row["id"], reverse=descending)
    unique, seen = [], set()
    for row in rows:
        if row["id"] not in seen:
            seen.add(row["id"])
            unique.append(row)
    return unique[:limit]


def _find_by_client_ids(conn, table, pairs, to_message, by_sender=True):
    """Return {(sender, client_msg_id): message} for the pairs that exist.

    ``pairs`` are (sender, client message id); each pair is one probe of
    the (from_user, client_msg_id) unique index.
    """
    pairs = sorted(pairs)
    if not pairs:
        return {}
    params, terms = {}, []
    for n, (sender, client_msg_id) in enumerate(pairs):
        params[f"c{n}"] = client_msg_id
        if by_sender:
            params[f"f{n}"] = sender
            terms.append(f"(from_user = :f{n} AND client_msg_id = :c{n})")
        else:
            terms.append(f"client_msg_id = :c{n}")
    rows = conn.query(f"SELECT * FROM {table} WHERE " + " OR ".join(terms), **params)
    found = {}
    for row in rows:
        sender = row["from_user"] if by_sender else "system"
        found[(sender, row["client_msg_id"])] = to_message(row)
    return found


def _common(row, message):
    if row.get("client_msg_id"):
        message["clientMsgId"] = row["client_msg_id"]
    message["timestamp"] = row["created_at"]
    if row["recalled"]:
        message["recalled"] = True
    return message


class MsgP2P:
    table = "msg_p2p"
    channel = "p2p"

    @staticmethod
    def to_message(row):
        return _common(row, {
            "id": row["id"],
            "channel": "p2p",
            "from": row["from_user"],
            "to": row["to_user"],
            "contentType": row["content_type"],
            "content": row["content"],
        })

    @staticmethod
    def insert_many(conn, messages):
        conn.executemany(
            "INSERT INTO msg_p2p (id, from_user, to_user, conv_key, content_type,"
            " content, client_msg_id, recalled, created_at) VALUES (:id, :from_user,"
            " :to_user, :conv_key, :content_type, :content, :client_msg_id, 0,"
            " :created_at)",
            messages,
        )

    @classmethod
    def find_by_client_ids(cls, conn, pairs):
        return _find_by_client_ids(conn, "msg_p2p", pairs, cls.to_message, True)

    @staticmethod
    def get_row(conn, message_id, lock=False):
        suffix = conn.for_update if lock else ""
        return conn.get(f"SELECT * FROM msg_p2p WHERE id = :id{suffix}", id=message_id)

    @classmethod
    def page(cls, conn, user_id, peer_id, before_id, after_id, limit):
        """Return a history page of one conversation, or of all of a user's."""
        if peer_id is not None:
            return _page(
                conn, "SELECT * FROM msg_p2p", "conv_key = :key",
                {"key": conv_key(user_id, peer_id)},
                before_id, after_id, limit, cls.to_message,
            )
        probe_limit = limit + PAGE_PROBE
        rows = cls._to_or_from(conn, user_id, before_id, after_id, probe_limit)
        descending = after_id is None
        merged = _merge_by_id(rows, [], probe_limit, descending)
        has_more = len(merged) > limit
        merged = merged[:limit]
        merged.sort(key=lambda row: row["id"])
        return [cls.to_message(row) for row in merged], has_more

    @classmethod
    def after(cls, conn, user_id, after_id, limit):
        """Messages to or from a user with id > after_id, ascending."""
        rows = cls._to_or_from(conn, user_id, None, after_id, limit + PAGE_PROBE)
        merged = _merge_by_id(rows, [], limit + PAGE_PROBE, False)
        return [cls.to_message(row) for row in merged[:limit]], len(merged) > limit

    @staticmethod
    def _to_or_from(conn, user_id, before_id, after_id, limit):
        """Up to ``limit`` rows to and up to ``limit`` rows from a user, unsorted.

        Two index range scans (to and from) run as one UNION statement. An OR
        across two columns would make MySQL scan far more rows. Two separate
        statements would read two snapshots under READ COMMITTED, so a page
        could show a later message without an earlier one committed between
        them.
        """
        to_sql, _ = _page_sql("SELECT * FROM msg_p2p", "to_user = :u",
                              before_id, after_id)
        from_sql, _ = _page_sql("SELECT * FROM msg_p2p", "from_user = :u",
                                before_id, after_id)
        cursor = after_id if after_id is not None else before_id
        return conn.query(
            f"SELECT * FROM ({to_sql}) AS to_rows"
            f" UNION ALL SELECT * FROM ({from_sql}) AS from_rows",
            u=user_id, cursor=cursor, n=limit,
        )

    @staticmethod
    def count_unread(conn, user_id, peer_id, after_id):
        return conn.scalar(
            "SELECT COUNT(*) FROM msg_p2p WHERE conv_key = :key AND id > :a"
            " AND from_user = :peer AND to_user = :u AND recalled = 0",
            key=conv_key(user_id, peer_id), a=after_id, peer=peer_id, u=user_id,
        )

    @staticmethod
    def mark_recalled(conn, message_id):
        conn.execute(
            "UPDATE msg_p2p SET recalled = 1, content = '' WHERE id = :id",
            id=message_id,
        )

    @classmethod
    def by_ids(cls, conn, ids):
        return _by_ids(conn, "msg_p2p", ids, cls.to_message)


class MsgGroup:
    table = "msg_group"
    channel = "group"

    @staticmethod
    def to_message(row):
        message = {
            "id": row["id"],
            "channel": "group",
            "from": row["from_user"],
            "group": row["group_id"],
            "groupType": row["group_type"],
        }
        if row["at_users"]:
            message["at"] = json.loads(row["at_users"])
        message["contentType"] = row["content_type"]
        message["content"] = row["content"]
        return _common(row, message)

    @staticmethod
    def insert_many(conn, messages):
        conn.executemany(
            "INSERT INTO msg_group (id, from_user, group_id, group_type, at_users,"
            " content_type, content, client_msg_id, recalled, created_at) VALUES"
            " (:id, :from_user, :group_id, :group_type, :at_users, :content_type,"
            " :content, :client_msg_id, 0, :created_at)",
            messages,
        )

    @classmethod
    def find_by_client_ids(cls, conn, pairs):
        return _find_by_client_ids(conn, "msg_group", pairs, cls.to_message, True)

    @staticmethod
    def get_row(conn, message_id, lock=False):
        suffix = conn.for_update if lock else ""
        return conn.get(f"SELECT * FROM msg_group WHERE id = :id{suffix}", id=message_id)

    @classmethod
    def page(cls, conn, group_id, before_id, after_id, limit):
        return _page(
            conn, "SELECT * FROM msg_group", "group_id = :g", {"g": group_id},
            before_id, after_id, limit, cls.to_message,
        )

    @classmethod
    def after(cls, conn, user_id, after_id, limit):
        """Messages of the user's current groups with id > after_id."""
        rows = conn.query(
            "SELECT g.* FROM msg_group g JOIN talk_group_member m"
            " ON m.group_id = g.group_id AND m.user_id = :u"
            " WHERE g.id > :a ORDER BY g.id LIMIT :n",
            u=user_id, a=after_id, n=limit + PAGE_PROBE,
        )
        return [cls.to_message(row) for row in rows[:limit]], len(rows) > limit

    @staticmethod
    def count_unread(conn, user_id, group_id, after_id):
        return conn.scalar(
            "SELECT COUNT(*) FROM msg_group WHERE group_id = :g AND id > :a"
            " AND from_user <> :u AND recalled = 0",
            g=group_id, a=after_id, u=user_id,
        )

    @staticmethod
    def max_id(conn, group_id):
        return conn.scalar(
            "SELECT COALESCE(MAX(id), 0) FROM msg_group WHERE group_id = :g", g=group_id
        )

    @staticmethod
    def mark_recalled(conn, message_id):
        conn.execute(
            "UPDATE msg_group SET recalled = 1, content = '' WHERE id = :id",
            id=message_id,
        )

    @classmethod
    def by_ids(cls, conn, ids):
        return _by_ids(conn, "msg_group", ids, cls.to_message)


class MsgSystem:
    table = "msg_system"
    channel = "system"

    @staticmethod
    def to_message(row):
        return _common(row, {
            "id": row["id"],
            "channel": "system",
            "from": "system",
            "to": row["to_user"],
            "title": row["title"],
            "summary": row["summary"],
            "contentType": row["content_type"],
            "content": row["content"],
        })

    @staticmethod
    def insert_many(conn, messages):
        conn.executemany(
            "INSERT INTO msg_system (id, to_user, title, summary, content_type,"
            " content, client_msg_id, recalled, created_at) VALUES (:id, :to_user,"
            " :title, :summary, :content_type, :content, :client_msg_id, 0,"
            " :created_at)",
            messages,
        )

    @classmethod
    def find_by_client_ids(cls, conn, pairs):
        return _find_by_client_ids(conn, "msg_system", pairs, cls.to_message, False)

    @staticmethod
    def get_row(conn, message_id, lock=False):
        suffix = conn.for_update if lock else ""
        return conn.get(f"SELECT * FROM msg_system WHERE id = :id{suffix}", id=message_id)

    @classmethod
    def page(cls, conn, user_id, before_id, after_id, limit):
        return _page(
            conn, "SELECT * FROM msg_system", "to_user = :u", {"u": user_id},
            before_id, after_id, limit, cls.to_message,
        )

    @classmethod
    def after(cls, conn, user_id, after_id, limit):
        return cls.page(conn, user_id, None, after_id, limit)

    @staticmethod
    def count_unread(conn, user_id, after_id):
        return conn.scalar(
            "SELECT COUNT(*) FROM msg_system WHERE to_user = :u AND id > :a"
            " AND recalled = 0",
            u=user_id, a=after_id,
        )

    @staticmethod
    def mark_recalled(conn, message_id):
        conn.execute(
            "UPDATE msg_system SET recalled = 1, content = '' WHERE id = :id",
            id=message_id,
        )

    @classmethod
    def by_ids(cls, conn, ids):
        return _by_ids(conn, "msg_system", ids, cls.to_message)


def _by_ids(conn, table, ids, to_message):
    """Return {id: message} for the given ids (at most a few hundred)."""
    ids = sorted({int(i) for i in ids})
    if not ids:
        return {}
    placeholders, params = in_list(ids)
    rows = conn.query(f"SELECT * FROM {table} WHERE id IN ({placeholders})", **params)
    return {row["id"]: to_message(row) for row in rows}


MODELS = {"p2p": MsgP2P, "group": MsgGroup, "system": MsgSystem}
