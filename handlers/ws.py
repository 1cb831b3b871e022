"""The patients' WebSocket at /ws: authentication, frames in and out."""

import asyncio
import collections
import functools
import json
import logging
import time

import tornado.websocket
from tornado.iostream import StreamBufferFullError, StreamClosedError

from models.db import DatabaseUnavailable
from services import validation
from services.conversations import SYNC_CHANNELS
from services.connections import encode_frame
from services.dispatch import SendRequest
from services.limits import WS_SOCKET_SENDS
from services.errors import (
    ApiError,
    Forbidden,
    Internal,
    InvalidArgument,
    RateLimited,
    Unauthorized,
    Unavailable,
)

logger = logging.getLogger(__name__)

CLOSE_GOING_AWAY = 1001
CLOSE_UNAUTHORIZED = 4001
CLOSE_TOO_SLOW = 4008
# A socket over a cap: the user's sockets, or sockets waiting for a login
# from one address.
CLOSE_TOO_MANY = 4029
# Live ids kept per channel and socket; a sync reply skips them. More than
# a sync page, so a reply cannot reach past what is remembered.
LIVE_IDS_REMEMBERED = 2000
SYNC_DEFAULT_LIMIT = 200
SYNC_MAX_LIMIT = 1000
TYPING_INTERVAL_SECONDS = 1.0
MAX_MESSAGE_ID = 2**63 - 1
UNAVAILABLE = Unavailable("The database is unavailable; try again shortly")


class IMSocket(tornado.websocket.WebSocketHandler):
    """One client connection; registered under its user once authenticated."""

    def initialize(self):
        self.app = self.application.im
        self.principal = None
        self.socket_id = None
        self._login_timer = None
        self._expiry_timer = None
        self._send_times = []
        self._last_typing = 0.0
        self._tasks = set()
        # Largest message id written to this socket per channel.
        self._written_upto = {}
        # Ids recently written live, per channel: (deque, set of its ids).
        self._live_ids = {}
        # Frames waiting for the welcome frame: a list from login until the
        # welcome is sent, None before and after.
        self._frames_before_welcome = None
        # The address counted against the cap of sockets waiting for login.
        self._waiting_from = None

    def check_origin(self, origin):
        """Accept pages of allowed origins and of this server's own host.

        Tornado calls this only for handshakes that carry an Origin header.
        """
        return self.app.origins.allows(origin) or super().check_origin(origin)

    def get_compression_options(self):
        return None

    def log_exception(self, typ, value, tb):
        # Tornado's own message prints the request URI, which may carry
        # ?token=, so this one names the user and address instead.
        user = self.principal.user_id if self.principal else "-"
        logger.error("Unexpected error on the socket of %s from %s", user,
                     self.request.remote_ip, exc_info=(typ, value, tb))

    # -- connection life -----------------------------------------------------

    def open(self):
        stream = self.ws_connection.stream
        stream.max_write_buffer_size = self.app.config.ws_max_pending_output_bytes
        token = self.get_query_argument("token", None)
        if token is not None:
            self._login(token)
            return
        remote_ip = self.request.remote_ip
        if not self.app.limits.admit_unauthenticated(remote_ip):
            self.close(CLOSE_TOO_MANY, "too many sockets waiting for login")
            return
        self._waiting_from = remote_ip
        timeout = self.app.config.ws_login_timeout_seconds
        self._login_timer = asyncio.get_running_loop().call_later(
            timeout, self._close_unauthenticated
        )

    def _close_unauthenticated(self):
        if self.principal is None:
            self.close(CLOSE_UNAUTHORIZED, "login timeout")

    def _login(self, token):
        self._stop_waiting()
        try:
            principal = self.app.tokens.verify(token)
        except Unauthorized as error:
            logger.info("WebSocket login rejected from %s: %s",
                        self.request.remote_ip, error.message)
            self.close(CLOSE_UNAUTHORIZED, error.message)
            return
        open_sockets = len(self.app.registry.sockets_of(principal.user_id))
        if not self.app.limits.admit_user_socket(principal.user_id, open_sockets):
            self.close(CLOSE_TOO_MANY, "too many sockets for this user")
            return
        self.principal = principal
        if self._login_timer is not None:
            self._login_timer.cancel()
        expires_in = principal.expires_at - time.time()
        self._expiry_timer = asyncio.get_running_loop().call_later(
            max(expires_in, 0), self.close, CLOSE_UNAUTHORIZED, "token expired"
        )
        self._frames_before_welcome = []
        self.socket_id = self.app.registry.add(principal.user_id, self)
        logger.debug("Socket opened for %s", principal.user_id)
        self._spawn(self._welcome())

    async def _welcome(self):
        """Send ``welcome`` first, then the frames that arrived meanwhile.

        The socket is registered before the unread total is read, so no live
        message is missed. Frames for it wait in ``_frames_before_welcome``.
        """
        user_id = self.principal.user_id
        try:
            total = await self.app.conversations.total_unread(user_id)
        except DatabaseUnavailable as error:
            # The socket still works for live frames; the client learns the
            # count from its next read or the recent list.
            logger.warning("Could not read the unread total for the welcome of %s: %s",
                           user_id, error)
            total = None
        waiting, self._frames_before_welcome = self._frames_before_welcome, None
        self._write(encode_frame(
            {"type": "welcome", "userId": user_id, "totalUnread": total}
        ))
        for payload, message_key in waiting:
            self.send_encoded(payload, message_key)

    def _stop_waiting(self):
        if self._waiting_from is not None:
            self.app.limits.release_unauthenticated(self._waiting_from)
            self._waiting_from = None

    def on_close(self):
        self._stop_waiting()
        for timer in (self._login_timer, self._expiry_timer):
            if timer is not None:
                timer.cancel()
        if self.principal is not None:
            self.app.registry.remove(self.principal.user_id, self, self.socket_id)
            logger.debug("Socket closed for %s (code %s)",
                         self.principal.user_id, self.close_code)
        for task in list(self._tasks):
            task.cancel()

    # -- output --------------------------------------------------------------

    def send_frame(self, frame):
        return self.send_encoded(encode_frame(frame))

    def send_encoded(self, payload, message_key=None):
        """Write an encoded frame; return False when the socket is gone.

        ``message_key`` is ``(channel, id)`` of a live message frame. Such a
        frame is skipped (and True returned) when this socket has already
        written that id or a larger one of the channel. A sync reply can
        replay a committed message whose live delivery is still pending.
        Live frames leave in id order, so every smaller id was written
        already.

        A client that stops reading is closed with 4008 once its pending
        output passes the limit, instead of buffering without bound.
        """
        if self._frames_before_welcome is not None:
            self._frames_before_welcome.append((payload, message_key))
            return True
        if message_key is not None:
            channel, message_id = message_key
            if message_id <= self._written_upto.get(channel, 0):
                return True
        if not self._write(payload):
            return False
        if message_key is not None:
            self._note_written(*message_key)
            self._note_live(*message_key)
        return True

    def _write(self, payload):
        if self.ws_connection is None or self.ws_connection.is_closing():
            return False
        try:
            self.write_message(payload)
        except tornado.websocket.WebSocketClosedError:
            return False
        except StreamBufferFullError:
            user = self.principal.user_id if self.principal else "-"
            logger.warning("Closing socket of %s: pending output over %d bytes",
                           user, self.app.config.ws_max_pending_output_bytes)
            self.ws_connection.stream.max_write_buffer_size = None
            self.close(CLOSE_TOO_SLOW, "client too slow")
            return False
        return True

    def _note_written(self, channel, message_id):
        self._written_upto[channel] = max(self._written_upto.get(channel, 0), message_id)

    def _note_live(self, channel, message_id):
        """Remember a live id, so a later sync reply does not write it again."""
        recent, members = self._live_ids.setdefault(
            channel, (collections.deque(maxlen=LIVE_IDS_REMEMBERED), set())
        )
        if len(recent) == recent.maxlen:
            members.discard(recent[0])
        recent.append(message_id)
        members.add(message_id)

    def send_error(self, error, ref=None):
        frame = {"type": "error", "code": error.code, "message": error.message}
        if error.field:
            frame["field"] = error.field
        if ref is not None:
            frame["ref"] = ref
        self.send_frame(frame)

    # -- input ---------------------------------------------------------------

    def on_message(self, raw):
        try:
            frame = json.loads(raw)
        except (ValueError, TypeError):
            self.send_error(InvalidArgument("Frame is not valid JSON"))
            return
        except RecursionError:
            # A frame of up to 64 KiB can nest deeper than json.loads follows.
            self.send_error(InvalidArgument("Frame nested too deeply"))
            return
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            self.send_error(InvalidArgument("Frame must be an object with a type"))
            return
        kind = frame["type"]

        if self.principal is None:
            if kind == "login":
                self._login(frame.get("token"))
            else:
                self.send_error(Unauthorized("Log in first"), ref=kind)
                self.close(CLOSE_UNAUTHORIZED, "login required")
            return

        handler = FRAME_HANDLERS.get(kind)
        if handler is None:
            self.send_error(InvalidArgument(f"Unknown frame type {kind[:32]!r}"), ref=kind[:64])
            return
        try:
            handler(self, frame)
        except ApiError as error:
            self.send_error(error, ref=frame.get("clientMsgId") or kind)

    def _on_ping(self, frame):
        self.send_frame({"type": "pong"})

    def _on_login(self, frame):
        raise InvalidArgument("Already logged in")

    def _on_send(self, frame):
        client_msg_id = validation.identifier(frame, "clientMsgId")
        channel = frame.get("channel")
        if channel not in ("p2p", "group"):
            raise InvalidArgument("channel must be p2p or group", field="channel")
        self._check_send_rate()
        fields = validation.send_fields(channel, frame)
        sender = self.principal.user_id
        if channel == "p2p" and fields["to"] == sender:
            raise InvalidArgument("A message cannot be sent to its sender", field="to")
        request = SendRequest(sender=sender, origin_socket=self, **fields)
        future = self.app.dispatcher.send(request)
        self._spawn(self._await_send(future, client_msg_id))

    async def _await_send(self, future, client_msg_id):
        # The dispatcher writes the ``sent`` frame itself, in id order.
        try:
            await future
        except ApiError as error:
            self.send_error(error, ref=client_msg_id)
        except DatabaseUnavailable as error:
            logger.warning("Send %s of %s failed: %s", client_msg_id,
                           self.principal.user_id, error)
            self.send_error(UNAVAILABLE, ref=client_msg_id)
        except Exception:  # noqa: BLE001 - the client must hear back
            logger.exception("Send %s of %s failed", client_msg_id, self.principal.user_id)
            self.send_error(Internal("Internal server error"), ref=client_msg_id)

    def _check_send_rate(self):
        limit = self.app.config.ws_sends_per_second
        if not limit:
            return
        now = time.monotonic()
        self._send_times = [t for t in self._send_times if now - t < 1.0]
        if len(self._send_times) >= limit:
            self.app.limits.record(WS_SOCKET_SENDS, self.principal.user_id)
            raise RateLimited(
                f"More than {self.app.config.ws_sends_per_second} sends a second"
            )
        self._send_times.append(now)

    def _on_sync(self, frame):
        after = frame.get("after", {channel: 0 for channel in SYNC_CHANNELS})
        if not isinstance(after, dict) or not after:
            raise InvalidArgument("after must map channels to message ids", field="after")
        positions = {}
        for channel, value in after.items():
            if channel not in SYNC_CHANNELS:
                raise InvalidArgument(f"Unknown channel {channel[:16]!r}", field="after")
            positions[channel] = validation.integer(after, channel, 0, MAX_MESSAGE_ID)
        limit = frame.get("limit", SYNC_DEFAULT_LIMIT)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidArgument("limit must be a positive integer", field="limit")
        self._spawn(self._sync(positions, min(limit, SYNC_MAX_LIMIT)), ref="sync")

    async def _sync(self, positions, limit):
        batches = await self.app.conversations.sync(self.principal.user_id, positions, limit)
        # The reply can contain committed rows whose live frames are not
        # written yet. Waiting lets those frames go first, so none follows it.
        await self.app.dispatcher.settle()
        for channel, messages, has_more in batches:
            live = self._live_ids.get(channel, ((), set()))[1]
            for message in messages:
                if message["id"] in live:
                    continue
                if not self.send_frame({"type": "message", "message": message}):
                    return
                self._note_written(channel, message["id"])
            self.send_frame({"type": "synced", "channel": channel, "hasMore": has_more})

    def _on_read(self, frame):
        channel, target = validation.read_target(frame)
        up_to_id = validation.integer(frame, "upToId", 0, MAX_MESSAGE_ID)
        self._spawn(self.app.conversations.mark_read(
            self.principal.user_id, channel, target, up_to_id
        ), ref="read")

    def _on_typing(self, frame):
        # Validate before the rate check, so a rejected frame uses no slot.
        group = peer = None
        if frame.get("group") is not None:
            group = validation.identifier(frame, "group")
        else:
            peer = validation.identifier(frame, "to")
        now = time.monotonic()
        if now - self._last_typing < TYPING_INTERVAL_SECONDS:
            return
        self._last_typing = now
        sender = self.principal.user_id
        if group is not None:
            self._spawn(self._typing_to_group(group), ref="typing")
            return
        self.app.registry.send([peer], {"type": "typing", "from": sender})

    async def _typing_to_group(self, group):
        members = (await self.app.directory.get_group(group))["members"]
        member_ids = [member["userId"] for member in members]
        sender = self.principal.user_id
        if sender not in member_ids:
            raise Forbidden(f"Not a member of group {group!r}", field="group")
        others = [uid for uid in member_ids if uid != sender]
        self.app.registry.send(others, {"type": "typing", "from": sender, "group": group})

    # -- background work of this socket --------------------------------------

    def _spawn(self, coroutine, ref=None):
        """Run a coroutine for this socket and report its failure with ``ref``."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._task_done, ref=ref))

    def _task_done(self, task, ref=None):
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            return
        if isinstance(error, ApiError):
            self.send_error(error, ref=ref)
        elif isinstance(error, DatabaseUnavailable):
            logger.warning("Database unavailable for socket of %s: %s",
                           self.principal.user_id if self.principal else "-", error)
            self.send_error(UNAVAILABLE, ref=ref)
        elif not isinstance(error, (StreamClosedError,
                                    tornado.websocket.WebSocketClosedError)):
            logger.error("Socket task failed for %s",
                         self.principal.user_id if self.principal else "-",
                         exc_info=error)


FRAME_HANDLERS = {
    "ping": IMSocket._on_ping,
    "login": IMSocket._on_login,
    "send": IMSocket._on_send,
    "sync": IMSocket._on_sync,
    "read": IMSocket._on_read,
    "typing": IMSocket._on_typing,
}

ROUTES = [(r"/ws", IMSocket)]
