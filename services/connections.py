"""Live sockets of this process and frame delivery to them.

The registry maps a user id to its open sockets (several devices each).
Sockets are added and removed on the IOLoop; ``is_online`` and
``online_users`` may also be read from a database worker thread, where a
stale result only changes whether a push is queued. In cluster mode
(``bus`` set) frames and presence also reach the other processes.
"""

import itertools
import json
import logging

logger = logging.getLogger(__name__)


def encode_frame(frame):
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


class ConnectionRegistry:
    def __init__(self):
        self._sockets = {}
        self._by_id = {}
        self._ids = itertools.count(1)
        # services.cluster.ClusterBus in cluster mode, else None.
        self.bus = None
        self.frames_delivered = 0

    def add(self, user_id, socket):
        """Register a socket and return its id, unique within this process."""
        socket_id = next(self._ids)
        self._by_id[socket_id] = socket
        first = user_id not in self._sockets
        self._sockets.setdefault(user_id, set()).add(socket)
        if first and self.bus is not None:
            self.bus.mark_online(user_id)
        return socket_id

    def remove(self, user_id, socket, socket_id=None):
        self._by_id.pop(socket_id, None)
        sockets = self._sockets.get(user_id)
        if not sockets:
            return
        sockets.discard(socket)
        if not sockets:
            self._sockets.pop(user_id, None)
            if self.bus is not None:
                self.bus.mark_offline(user_id)

    def socket_by_id(self, socket_id):
        return self._by_id.get(socket_id)

    def online_user_ids(self):
        return list(self._sockets)

    def online_users(self, user_ids):
        """Return the given users that have a live socket on any node.

        Blocking in cluster mode (one Redis round trip): call it from a
        database worker thread or through the executor.
        """
        online = {user_id for user_id in user_ids if self._sockets.get(user_id)}
        if self.bus is not None:
            online |= self.bus.online_elsewhere_blocking(
                [user_id for user_id in user_ids if user_id not in online]
            )
        return online

    def sockets_of(self, user_id):
        return list(self._sockets.get(user_id, ()))

    def is_online(self, user_id):
        return bool(self._sockets.get(user_id))

    def all_sockets(self):
        return [socket for sockets in list(self._sockets.values()) for socket in sockets]

    @property
    def connection_count(self):
        return sum(len(sockets) for sockets in list(self._sockets.values()))

    @property
    def online_user_count(self):
        return len(self._sockets)

    def send(self, user_ids, frame, exclude=None, local_only=False):
        """Write one frame to every socket of the given users; return the count.

        The frame is encoded once. A socket that is closing or cannot keep up
        handles its own failure (see IMSocket.send_encoded). In cluster mode
        the frame is also published to the other nodes unless ``local_only``.
        """
        if self.bus is not None and not local_only:
            self.bus.publish_frame(user_ids, frame)
        payload = encode_frame(frame)
        message = frame.get("message") if frame.get("type") == "message" else None
        message_key = (message["channel"], message["id"]) if message else None
        count = 0
        for user_id in user_ids:
            for socket in self.sockets_of(user_id):
                if socket is exclude:
                    continue
                if socket.send_encoded(payload, message_key=message_key):
                    count += 1
        self.frames_delivered += count
        return count
