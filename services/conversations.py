"""Reading conversations: history pages, sync, recent list, read marks, recall."""

import logging

from models.group import TalkGroup, TalkGroupMember
from models.message import MODELS, MsgGroup, MsgP2P, MsgSystem
from models.push import MsgPush
from models.statistic import MsgStatistic, row_key
from models.user import TalkUser
from services.dispatch import now_ms
from services.errors import Forbidden, NotFound

logger = logging.getLogger(__name__)

EXCERPT_CHARS = 100
SYNC_CHANNELS = ("p2p", "group", "system")


class Conversations:
    def __init__(self, db, registry, recall_window_seconds=120):
        self._db = db
        self._registry = registry
        self._recall_window_ms = recall_window_seconds * 1000

    # -- history -------------------------------------------------------------

    async def page(self, channel, user_id, target, before_id, after_id, limit):
        """Return one history page; ``target`` is the peer (p2p) or the group id.

        Raises NotFound for an unknown group or peer, Forbidden when the
        user is not a member of the group.
        """
        return await self._db.run_transaction(
            self._page_tx, channel, user_id, target, before_id, after_id, limit
        )

    @staticmethod
    def _page_tx(conn, channel, user_id, target, before_id, after_id, limit):
        if channel == "group":
            _require_member(conn, target, user_id)
            return MsgGroup.page(conn, target, before_id, after_id, limit)
        if channel == "p2p":
            return MsgP2P.page(conn, user_id, target, before_id, after_id, limit)
        return MsgSystem.page(conn, user_id, before_id, after_id, limit)

    async def sync(self, user_id, after, limit):
        """Replay messages after the given ids: ``[(channel, messages, has_more)]``."""
        return await self._db.run_transaction(self._sync_tx, user_id, after, limit)

    @staticmethod
    def _sync_tx(conn, user_id, after, limit):
        batches = []
        for channel in SYNC_CHANNELS:
            if channel in after:
                messages, has_more = MODELS[channel].after(
                    conn, user_id, after[channel], limit
                )
                batches.append((channel, messages, has_more))
        return batches

    async def messages_between(self, channel, after_id, upto_id):
        """Return [(message, recipient ids)] with after_id < id <= upto_id."""
        return await self._db.run_transaction(
            self._between_tx, channel, after_id, upto_id
        )

    @staticmethod
    def _between_tx(conn, channel, after_id, upto_id):
        model = MODELS[channel]
        rows = conn.query(
            f"SELECT * FROM {model.table} WHERE id > :a AND id <= :b ORDER BY id",
            a=after_id, b=upto_id,
        )
        members = {}
        result = []
        for row in rows:
            if channel == "group":
                group_id = row["group_id"]
                if group_id not in members:
                    members[group_id] = TalkGroupMember.member_ids(conn, group_id)
                recipients = members[group_id]
            elif channel == "p2p":
                recipients = [row["to_user"], row["from_user"]]
            else:
                recipients = [row["to_user"]]
            result.append((model.to_message(row), recipients))
        return result

    # -- recent conversations ------------------------------------------------

    async def recent(self, user_id, before_at, limit):
        return await self._db.run_transaction(self._recent_tx, user_id, before_at, limit)

    @staticmethod
    def _recent_tx(conn, user_id, before_at, limit):
        rows = MsgStatistic.recent(conn, user_id, before_at, limit)
        has_more = len(rows) > limit
        rows = rows[:limit]

        last_messages = {}
        for channel, model in MODELS.items():
            ids = [row["last_msg_id"] for row in rows if row["channel"] == channel]
            last_messages[channel] = model.by_ids(conn, ids)

        peers = TalkUser.by_ids(
            conn, [row["peer_id"] for row in rows if row["channel"] == "p2p"]
        )
        groups = {
            group_id: TalkGroup.get(conn, group_id)
            for group_id in {row["group_id"] for row in rows if row["channel"] == "group"}
        }
        conversations = []
        for row in rows:
            message = last_messages[row["channel"]].get(row["last_msg_id"])
            if message is None:
                continue
            conversation = _conversation(row, _excerpt(message))
            # Names beside the ids, so a client can label its list without
            # reading other users' profiles (which is for the user itself).
            if row["channel"] == "p2p" and row["peer_id"] in peers:
                conversation["peerName"] = peers[row["peer_id"]]["name"]
            elif row["channel"] == "group" and groups.get(row["group_id"]):
                conversation["groupName"] = groups[row["group_id"]]["name"]
            conversations.append(conversation)
        return {
            "conversations": conversations,
            "totalUnread": MsgStatistic.total_unread(conn, user_id),
            "hasMore": has_more,
        }

    async def total_unread(self, user_id):
        return await self._db.run_transaction(MsgStatistic.total_unread, user_id)

    # -- read marks ----------------------------------------------------------

    async def mark_read(self, user_id, channel, target, up_to_id):
        """Mark a conversation read up to an id; notify sockets; return unread.

        ``up_to_id`` past the newest message counts as the newest message, so
        messages that arrive later stay unread.
        """
        outcome = await self._db.run_transaction(
            self._mark_read_tx, user_id, channel, target, up_to_id
        )
        unread, total, advanced_to = outcome
        frame = {"type": "unread", "channel": channel}
        if channel == "p2p":
            frame["peer"] = target
        elif channel == "group":
            frame["group"] = target
        frame.update(unread=unread, totalUnread=total)
        self._registry.send([user_id], frame)

        if advanced_to and channel != "system":
            receipt = {"type": "receipt", "channel": channel, "from": user_id}
            if channel == "group":
                receipt["group"] = target
                others = await self._db.run_transaction(
                    TalkGroupMember.member_ids, target
                )
                receivers = [uid for uid in others if uid != user_id]
            else:
                receivers = [target]
            receipt["upToId"] = advanced_to
            self._registry.send(receivers, receipt)
        return unread

    @staticmethod
    def _mark_read_tx(conn, user_id, channel, target, up_to_id):
        """Return (unread, total unread, new read position or None)."""
        if channel == "group":
            _require_member(conn, target, user_id)
            own_key = row_key(user_id, "group", group_id=target)
            keys = [own_key]
        elif channel == "p2p":
            if TalkUser.get(conn, target) is None:
                raise NotFound(f"Unknown user {target!r}", field="peer")
            own_key = row_key(user_id, "p2p", peer_id=target)
            keys = [own_key, row_key(target, "p2p", peer_id=user_id)]
        else:
            own_key = row_key(user_id, "system")
            keys = [own_key]

        # Locking the rows before counting keeps a concurrent send's +1 from
        # being overwritten by this count.
        rows = MsgStatistic.lock(conn, keys)
        own = rows.get(own_key)
        if own is None:
            return 0, MsgStatistic.total_unread(conn, user_id), None

        new_position = min(up_to_id, own["last_msg_id"])
        if new_position <= own["read_upto_id"]:
            return own["unread"], MsgStatistic.total_unread(conn, user_id), None

        if channel == "group":
            unread = MsgGroup.count_unread(conn, user_id, target, new_position)
        elif channel == "p2p":
            unread = MsgP2P.count_unread(conn, user_id, target, new_position)
        else:
            unread = MsgSystem.count_unread(conn, user_id, new_position)
        MsgStatistic.set_read(conn, own_key, new_position, unread)
        if channel == "p2p":
            MsgStatistic.set_peer_read(conn, keys[1], new_position)
        return unread, MsgStatistic.total_unread(conn, user_id), new_position

    # -- recall --------------------------------------------------------------

    async def recall(self, principal, channel, message_id):
        """Recall a message; return it with ``recalled: true``.

        Raises NotFound for an unknown id and Forbidden when the caller is
        not its sender or the recall window has passed. A repeated recall
        returns the message and changes nothing.
        """
        message, recipients, changed = await self._db.run_transaction(
            self._recall_tx, principal, channel, message_id
        )
        if changed:
            frame = {"type": "recalled", "channel": channel, "id": message_id}
            if channel == "group":
                frame["group"] = message["group"]
            self._registry.send(recipients, frame)
            logger.info("Recalled %s message %s by %s", channel, message_id,
                        principal.user_id)
        return message

    def _recall_tx(self, conn, principal, channel, message_id):
        model = MODELS[channel]
        row = model.get_row(conn, message_id, lock=True)
        if row is None:
            raise NotFound(f"No {channel} message with id {message_id}", field="id")
        sender = row.get("from_user", "system")
        if not principal.is_system:
            if sender != principal.user_id:
                raise Forbidden("Only the sender may recall a message")
            if now_ms() - row["created_at"] > self._recall_window_ms:
                raise Forbidden(
                    f"Messages can be recalled within {self._recall_window_ms // 1000}"
                    " seconds of sending"
                )

        if channel == "group":
            recipients = TalkGroupMember.member_ids(conn, row["group_id"])
        elif channel == "p2p":
            recipients = [row["to_user"], row["from_user"]]
        else:
            recipients = [row["to_user"]]
        if row["recalled"]:
            return model.to_message(row), recipients, False

        model.mark_recalled(conn, message_id)
        MsgPush.cancel_for_message(conn, channel, message_id, now_ms())
        if channel == "group":
            MsgStatistic.uncount_group(conn, row["group_id"], sender, message_id)
        elif channel == "p2p":
            MsgStatistic.uncount(
                conn, row_key(row["to_user"], "p2p", peer_id=sender), message_id
            )
        else:
            MsgStatistic.uncount(conn, row_key(row["to_user"], "system"), message_id)
        row.update(recalled=1, content="")
        return model.to_message(row), recipients, True


def _require_member(conn, group_id, user_id):
    if TalkGroup.get(conn, group_id) is None:
        raise NotFound(f"Unknown group {group_id!r}", field="group")
    if not TalkGroupMember.is_member(conn, group_id, user_id):
        raise Forbidden(f"{user_id!r} is not a member of group {group_id!r}",
                        field="group")


def _excerpt(message):
    if message["contentType"] == 1 and len(message["content"]) > EXCERPT_CHARS:
        message = dict(message, content=message["content"][:EXCERPT_CHARS])
    return message


def _conversation(row, last_message):
    conversation = {"channel": row["channel"]}
    if row["channel"] == "p2p":
        conversation["peer"] = row["peer_id"]
    elif row["channel"] == "group":
        conversation["group"] = row["group_id"]
    conversation["unread"] = row["unread"]
    conversation["lastMessage"] = last_message
    conversation["peerReadUpToId"] = (
        row["peer_read_upto_id"] if row["channel"] == "p2p" else None
    )
    return conversation
