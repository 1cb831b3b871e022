"""talk_user: the registered users, with their push registrations."""

from models.db import in_list


def to_user(row, private=True):
    """Build the API user object; ``private`` adds push registrations."""
    user = {
        "id": row["id"],
        "name": row["name"],
        "role": row["role"],
        "avatar": row["avatar"],
        "createdAt": row["created_at"],
        "updatedAt": row["updated_at"],
    }
    if private:
        user["getuiClientId"] = row["getui_client_id"]
        user["wechatOpenId"] = row["wechat_open_id"]
    return user


class TalkUser:
    @staticmethod
    def get(conn, user_id):
        return conn.get("SELECT * FROM talk_user WHERE id = :id", id=user_id)

    @staticmethod
    def existing_ids(conn, user_ids):
        return set(TalkUser.by_ids(conn, user_ids))

    @staticmethod
    def by_ids(conn, user_ids):
        """Return ``{id: row}`` for the users that exist among ``user_ids``."""
        ids = sorted(set(user_ids))
        if not ids:
            return {}
        placeholders, params = in_list(ids)
        rows = conn.query(
            f"SELECT * FROM talk_user WHERE id IN ({placeholders})", **params
        )
        return {row["id"]: row for row in rows}

    @staticmethod
    def upsert(conn, user_id, fields, now):
        """Create or update a user; ``fields`` maps columns to the values to set."""
        current = conn.get(
            "SELECT * FROM talk_user WHERE id = :id" + conn.for_update, id=user_id
        )
        if current is None:
            row = {
                "id": user_id, "avatar": None, "getui_client_id": None,
                "wechat_open_id": None, **fields, "created_at": now, "updated_at": now,
            }
            conn.execute(
                "INSERT INTO talk_user (id, name, role, avatar, getui_client_id,"
                " wechat_open_id, wechat_unreachable, tokens_valid_after,"
                " created_at, updated_at) VALUES (:id, :name, :role, :avatar,"
                " :getui_client_id, :wechat_open_id, 0, 0, :created_at, :updated_at)",
                **row,
            )
            return True
        assignments = ", ".join(f"{name} = :{name}" for name in fields)
        if "wechat_open_id" in fields and fields["wechat_open_id"] != current[
            "wechat_open_id"
        ]:
            assignments += ", wechat_unreachable = 0"
        conn.execute(
            f"UPDATE talk_user SET {assignments}, updated_at = :updated_at"
            " WHERE id = :id",
            id=user_id, updated_at=now, **fields,
        )
        return False

    @staticmethod
    def logout(conn, user_id, now):
        return conn.execute(
            "UPDATE talk_user SET getui_client_id = NULL, tokens_valid_after = :t,"
            " updated_at = :t WHERE id = :id",
            id=user_id, t=now,
        )

    @staticmethod
    def revocations(conn, since):
        rows = conn.query(
            "SELECT id, tokens_valid_after FROM talk_user"
            " WHERE tokens_valid_after > :since",
            since=since,
        )
        return [(row["id"], row["tokens_valid_after"]) for row in rows]
