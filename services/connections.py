"""Live sockets of this process and frame delivery to them.

The registry maps a user id to its open sockets (several devices each).
Sockets are added and removed on the IOLoop; ``is_online`` may also be read
from a database worker thread, where a stale answer only changes whether a
push is queued.
"""

import json
import logging

logger = logging.getLogger(__name__)


def encode_frame(frame):
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


class ConnectionRegistry:
    def __init__(self):
        self._sockets = {}

    def add(self, user_id, socket):
        self._sockets.setdefault(user_id, set()).add(socket)

    def remove(self, user_id, socket):
        sockets = self._sockets.get(user_id)
        if not sockets:
            return
        sockets.discard(socket)
        if not sockets:
            # Another thread may read the dict; replace rather than mutate
            # a set it could be iterating.
            self._sockets.pop(user_id, None)

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

    def send(self, user_ids, frame, exclude=None):
        """Write one frame to every socket of the given users; return the count.

        The frame is encoded once. A socket that is closing or cannot keep up
        handles its own failure (see IMSocket.send_frame).
        """
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
        return count
