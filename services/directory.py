"""Users and care-team groups: registration, logout, membership."""

import logging
import secrets

from models.group import TalkGroup, TalkGroupMember
from models.message import MsgGroup
from models.push import MsgPush
from models.sequence import MsgSequence
from models.statistic import MsgStatistic, row_key
from models.user import TalkUser, to_user
from services.dispatch import now_ms
from services.errors import Conflict, NotFound

logger = logging.getLogger(__name__)

# Close code sent to sockets whose token is no longer valid.
CLOSE_UNAUTHORIZED = 4001


class Directory:
    def __init__(self, db, registry, tokens):
        self._db = db
        self._registry = registry
        self._tokens = tokens

    # -- users ---------------------------------------------------------------

    async def put_user(self, user_id, fields):
        """Create or update a user; return ``(user, created)``."""
        created = await self._db.run_transaction(
            lambda conn: TalkUser.upsert(conn, user_id, fields, now_ms())
        )
        user = await self.get_user(user_id, private=True)
        logger.info("%s user %s", "Created" if created else "Updated", user_id)
        return user, created

    async def get_user(self, user_id, private):
        row = await self._db.run_transaction(TalkUser.get, user_id)
        if row is None:
            raise NotFound(f"Unknown user {user_id!r}", field="id")
        user = to_user(row, private=private)
        online = await self._db.run(self._registry.online_users, [user_id])
        user["online"] = user_id in online
        return user

    async def logout(self, user_id):
        """Drop push registration, revoke tokens issued so far, close sockets."""
        now = now_ms()
        changed = await self._db.run_transaction(self._logout_tx, user_id, now)
        if not changed:
            raise NotFound(f"Unknown user {user_id!r}", field="id")
        self._tokens.revoke_before(user_id, now / 1000)
        if self._registry.bus is not None:
            self._registry.bus.publish_logout(user_id, now / 1000)
        sockets = self._registry.sockets_of(user_id)
        for socket in sockets:
            socket.close(CLOSE_UNAUTHORIZED, "logged out")
        logger.info("Logged out user %s, closed %d sockets", user_id, len(sockets))

    @staticmethod
    def _logout_tx(conn, user_id, now):
        changed = TalkUser.logout(conn, user_id, now)
        if changed:
            MsgPush.cancel_for_user(conn, user_id, "getui", "logged out", now)
        return changed

    # -- groups --------------------------------------------------------------

    async def create_group(self, group_id, name, group_type, member_ids):
        group_id = group_id or "g-" + secrets.token_hex(8)
        await self._db.run_transaction(
            self._create_group_tx, group_id, name, group_type, member_ids
        )
        logger.info("Created group %s with %d members", group_id, len(member_ids))
        return await self.get_group(group_id)

    @staticmethod
    def _create_group_tx(conn, group_id, name, group_type, member_ids):
        _require_users(conn, member_ids, "members")
        if TalkGroup.get(conn, group_id) is not None:
            raise Conflict(f"Group {group_id!r} already exists", field="id")
        now = now_ms()
        TalkGroup.insert(conn, group_id, name, group_type, now)
        TalkGroupMember.add(conn, group_id, member_ids, now)
        MsgStatistic.ensure(
            conn, [row_key(uid, "group", group_id=group_id) for uid in member_ids]
        )

    async def get_group(self, group_id):
        return await self._db.run_transaction(self._get_group_tx, group_id)

    @staticmethod
    def _get_group_tx(conn, group_id):
        row = TalkGroup.get(conn, group_id)
        if row is None:
            raise NotFound(f"Unknown group {group_id!r}", field="group")
        return TalkGroup.to_group(row, TalkGroupMember.members(conn, group_id))

    async def is_member(self, group_id, user_id):
        return await self._db.run_transaction(
            TalkGroupMember.is_member, group_id, user_id
        )

    async def add_members(self, group_id, user_ids):
        added = await self._db.run_transaction(self._add_members_tx, group_id, user_ids)
        logger.info("Added %d members to group %s", len(added), group_id)
        return await self.get_group(group_id)

    @staticmethod
    def _add_members_tx(conn, group_id, user_ids):
        # The group channel lock orders this change with group sends, so a
        # new member's counter starts exactly after the last stored message.
        MsgSequence.lock(conn, "group")
        if TalkGroup.get(conn, group_id) is None:
            raise NotFound(f"Unknown group {group_id!r}", field="group")
        _require_users(conn, user_ids, "userIds")
        added = TalkGroupMember.add(conn, group_id, user_ids, now_ms())
        if added:
            keys = [row_key(uid, "group", group_id=group_id) for uid in added]
            MsgStatistic.ensure(conn, keys, read_upto_id=MsgGroup.max_id(conn, group_id))
        return added

    async def remove_member(self, group_id, user_id):
        await self._db.run_transaction(self._remove_member_tx, group_id, user_id)
        logger.info("Removed %s from group %s", user_id, group_id)

    @staticmethod
    def _remove_member_tx(conn, group_id, user_id):
        MsgSequence.lock(conn, "group")
        if TalkGroup.get(conn, group_id) is None:
            raise NotFound(f"Unknown group {group_id!r}", field="group")
        if not TalkGroupMember.remove(conn, group_id, user_id):
            raise NotFound(
                f"{user_id!r} is not a member of group {group_id!r}", field="userId"
            )
        MsgStatistic.delete(conn, row_key(user_id, "group", group_id=group_id))

    async def groups_of(self, user_id):
        return await self._db.run_transaction(self._groups_of_tx, user_id)

    @staticmethod
    def _groups_of_tx(conn, user_id):
        if TalkUser.get(conn, user_id) is None:
            raise NotFound(f"Unknown user {user_id!r}", field="id")
        return [
            TalkGroup.to_group(row, TalkGroupMember.members(conn, row["id"]))
            for row in TalkGroupMember.groups_of(conn, user_id)
        ]


def _require_users(conn, user_ids, field):
    missing = sorted(set(user_ids) - TalkUser.existing_ids(conn, user_ids))
    if missing:
        shown = ", ".join(repr(uid) for uid in missing[:5])
        raise NotFound(f"Unknown users: {shown}", field=field)
