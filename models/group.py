"""talk_group and talk_group_member: care-team groups and who is in them."""


class TalkGroup:
    @staticmethod
    def get(conn, group_id, lock=False):
        suffix = conn.for_update if lock else ""
        return conn.get(f"SELECT * FROM talk_group WHERE id = :id{suffix}", id=group_id)

    @staticmethod
    def insert(conn, group_id, name, group_type, now):
        conn.execute(
            "INSERT INTO talk_group (id, name, type, created_at)"
            " VALUES (:id, :name, :type, :now)",
            id=group_id, name=name, type=group_type, now=now,
        )

    @staticmethod
    def to_group(row, members):
        return {
            "id": row["id"],
            "name": row["name"],
            "type": row["type"],
            "members": members,
            "createdAt": row["created_at"],
        }


class TalkGroupMember:
    @staticmethod
    def members(conn, group_id):
        """Members with their user roles, in the order they joined."""
        rows = conn.query(
            "SELECT m.user_id, u.role FROM talk_group_member m"
            " LEFT JOIN talk_user u ON u.id = m.user_id"
            " WHERE m.group_id = :g ORDER BY m.joined_at, m.user_id",
            g=group_id,
        )
        return [{"userId": row["user_id"], "role": row["role"]} for row in rows]

    @staticmethod
    def member_ids(conn, group_id):
        rows = conn.query(
            "SELECT user_id FROM talk_group_member WHERE group_id = :g", g=group_id
        )
        return [row["user_id"] for row in rows]

    @staticmethod
    def is_member(conn, group_id, user_id):
        return conn.get(
            "SELECT 1 AS found FROM talk_group_member"
            " WHERE group_id = :g AND user_id = :u",
            g=group_id, u=user_id,
        ) is not None

    @staticmethod
    def add(conn, group_id, user_ids, now):
        existing = set(TalkGroupMember.member_ids(conn, group_id))
        new_ids = [uid for uid in user_ids if uid not in existing]
        conn.executemany(
            "INSERT INTO talk_group_member (group_id, user_id, joined_at)"
            " VALUES (:g, :u, :t)",
            [{"g": group_id, "u": uid, "t": now} for uid in new_ids],
        )
        return new_ids

    @staticmethod
    def remove(conn, group_id, user_id):
        return conn.execute(
            "DELETE FROM talk_group_member WHERE group_id = :g AND user_id = :u",
            g=group_id, u=user_id,
        )

    @staticmethod
    def groups_of(conn, user_id):
        return conn.query(
            "SELECT g.* FROM talk_group g JOIN talk_group_member m"
            " ON m.group_id = g.id WHERE m.user_id = :u ORDER BY g.created_at, g.id",
            u=user_id,
        )
