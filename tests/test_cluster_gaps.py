"""The cluster bus fills a gap between published batches from the database."""

import asyncio

from services.cluster import ClusterBus


class RecordingRegistry:
    """Stands in for ConnectionRegistry and keeps the message ids written."""

    def __init__(self):
        self.written = []
        self.bus = None

    def send(self, user_ids, frame, exclude=None, local_only=False):
        assert local_only
        self.written.append(frame["message"]["id"])
        return len(user_ids)

    def socket_by_id(self, socket_id):
        return None


def batch(node, *ids):
    deliveries = [
        {"users": ["pat-1"], "message": {"id": i, "channel": "p2p"}, "origin": None}
        for i in ids
    ]
    return {"kind": "messages", "node": node, "channel": "p2p", "deliveries": deliveries}


def run_batches(events, stored):
    registry = RecordingRegistry()
    bus = ClusterBus("redis://127.0.0.1:6379/11", "node-a", registry, tokens=None)
    requested = []

    async def fetch_range(channel, after_id, upto_id):
        requested.append((channel, after_id, upto_id))
        return [({"id": i, "channel": channel}, ["pat-1"])
                for i in stored if after_id < i <= upto_id]

    bus.fetch_range = fetch_range

    async def main():
        for event in events:
            await bus._fill_gap(event)
            bus._deliver(event)

    asyncio.run(main())
    return registry.written, requested


def test_gap_between_batches_is_filled_in_order():
    events = [batch("node-b", 1), batch("node-b", 4, 5)]

    written, requested = run_batches(events, stored=[1, 2, 3, 4, 5])

    assert written == [1, 2, 3, 4, 5]
    assert requested == [("p2p", 1, 3)]


def test_consecutive_batches_read_nothing():
    events = [batch("node-b", 1, 2), batch("node-a", 3), batch("node-b", 4)]

    written, requested = run_batches(events, stored=[1, 2, 3, 4])

    assert written == [1, 2, 3, 4]
    assert requested == []


def test_first_batch_sets_the_baseline():
    events = [batch("node-b", 7)]

    written, requested = run_batches(events, stored=[1, 2, 3, 4, 5, 6, 7])

    assert written == [7]
    assert requested == []
