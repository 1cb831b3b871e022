"""Constants and helpers shared by the push client tests and their fixtures."""

import asyncio
from pathlib import Path

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]

# 2025-12-04 00:00:00 UTC, 08:00 in Beijing.
START_TIME = 1_764_806_400.0

# Short enough that timeout tests stay fast, long enough for a loaded CI host.
REQUEST_TIMEOUT_SECONDS = 0.5

ONLINE_CID = "cidOnline00000000000000000000001"
OFFLINE_CID = "cidOffline0000000000000000000001"
INACTIVE_CID = "cidInactive000000000000000000001"

FOLLOWER_OPENID = "oFAKE0000000000000000000001"
UNFOLLOWED_OPENID = "oFAKE0000000000000000000002"
TEMPLATE_ID = "tplNewMessage0001"
TEMPLATE_KEYS = ("thing1", "time2", "thing3")
TEMPLATE_MAPPING = {"thing1": "sender_name", "time2": "sent_at", "thing3": "excerpt"}


async def wait_for(condition, timeout_seconds=3.0):
    """Poll ``condition`` until it is true, for effects after a client timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_seconds
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition still false after %.1f s" % timeout_seconds)
        await asyncio.sleep(0.02)


class FakeClock:
    """Epoch seconds that move only when a test calls ``advance``."""

    def __init__(self, start: float = START_TIME):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
