"""Concurrency proof of the ordering guarantee.

The guarantee: a user never sees message N of a channel (live, in a sync
reply or in a history page) while a smaller id of that channel addressed to
the user is still to come. Live frames may arrive while a sync replay runs,
so the client cannot tell them from replayed ones until the channel's
``synced`` frame with ``hasMore: false`` arrives. From then on, the largest
id seen is a lossless resume point and every further frame of the channel
is live.

The tests drive many concurrent senders at one recipient whose socket keeps
disconnecting and resuming. They record what the recipient and concurrent
history readers saw, read the stored messages back through the REST history
(the reference), and then audit the records against the reference. The audit
functions are plain Python, and the first tests feed them hand-made broken
records to show that they report each kind of violation.
"""

import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

from conftest import MYSQL_URL_VARIABLE, ROOT, TEST_SECRET, Socket, create_database
from services.auth import TokenService

CHANNELS = ("p2p", "group", "system")
HISTORY_PATHS = {"p2p": "pm", "group": "gm", "system": "sm"}
# Small sync batches, so that resuming follows hasMore chains often.
SYNC_LIMIT = 5
HISTORY_PAGE_LIMIT = 100
FRAME_WAIT_SECONDS = 10
SERVER_START_SECONDS = 20
# A socket sender stays under the server's limit of 20 sends a second.
SOCKET_SEND_INTERVAL_SECONDS = 0.07
RATE_LIMITED_PAUSE_SECONDS = 0.3
# How long a test delays the live delivery of a committed batch.
HOLD_SECONDS = 0.5


# -- recording what a client saw ------------------------------------------


@dataclass
class Session:
    """One socket session of the recipient, as the client saw it.

    ``events`` contains ``("sync", {channel: after})`` when a sync request was
    sent, ``("message", channel, id)`` and ``("synced", channel, has_more)``
    when those frames arrived, in arrival order.
    """

    node: str
    start: dict
    events: list = field(default_factory=list)


@dataclass
class Page:
    """One history page read while messages were being sent."""

    node: str
    channel: str
    ids: list
    has_more: bool
    limit: int
    after_id: int = None
    before_id: int = None


def next_sync_start(received_ids, after, limit):
    """Return where a sync chain continues after a batch with hasMore true.

    The batch is the ``limit`` smallest ids above ``after`` that were
    committed when the server read it. A live frame that arrived meanwhile is
    one of them or larger, so the limit-th smallest id received above
    ``after`` is the batch's last id. Returns None when fewer ids arrived.
    """
    above = sorted(message_id for message_id in set(received_ids) if message_id > after)
    if len(above) < limit:
        return None
    return above[limit - 1]


class ResumingClient:
    """A recipient that reconnects and resumes with ``sync``, recording it all.

    With ``live_resume`` (one server process delivers every message live),
    the resume point of a channel becomes the largest id seen once the
    channel's sync chain has ended, and then follows each live frame.

    Without it, the processes share only the database and deliver a message
    live only on the process that stored it. A session then trusts only the
    ids that ``origin_of`` maps to another process, because those can only
    have come from the sync reply.
    """

    def __init__(self, limit=SYNC_LIMIT, live_resume=True, origin_of=None):
        self.limit = limit
        self.live_resume = live_resume
        self.origin_of = origin_of or (lambda channel, message_id: None)
        self.resume = {channel: 0 for channel in CHANNELS}
        self.sessions = []

    async def run_session(self, ws, node="", seconds=None, early_frames=(),
                          until_caught_up=None):
        """Sync, then read frames until ``seconds`` pass.

        With ``until_caught_up`` (the default when ``seconds`` is None), the
        session also ends once every channel's sync chain has ended.
        """
        if until_caught_up is None:
            until_caught_up = seconds is None
        loop = asyncio.get_running_loop()
        deadline = None if seconds is None else loop.time() + seconds
        session = Session(node, dict(self.resume))
        self.sessions.append(session)
        state = _SessionState(dict(self.resume))
        await self._request_sync(ws, session, state, dict(self.resume))

        pending = list(early_frames)
        while True:
            if until_caught_up and len(state.caught_up) == len(CHANNELS):
                return
            if pending:
                frame = pending.pop(0)
            else:
                timeout = FRAME_WAIT_SECONDS
                if deadline is not None:
                    timeout = deadline - loop.time()
                    if timeout <= 0:
                        return
                try:
                    frame = await ws.recv(timeout)
                except asyncio.TimeoutError:
                    if deadline is None:
                        raise AssertionError(
                            f"sync did not catch up within {FRAME_WAIT_SECONDS} s"
                        ) from None
                    return
                if frame is None:
                    raise AssertionError(f"socket closed with {ws.close_code}")
            await self._on_frame(ws, session, state, frame)

    async def _request_sync(self, ws, session, state, after):
        state.after.update(after)
        state.waiting = set(after)
        session.events.append(("sync", dict(after)))
        await ws.send({"type": "sync", "after": after, "limit": self.limit})

    async def _on_frame(self, ws, session, state, frame):
        if frame["type"] == "message":
            channel, message_id = frame["message"]["channel"], frame["message"]["id"]
            session.events.append(("message", channel, message_id))
            state.received[channel].add(message_id)
            if channel in state.caught_up and self.live_resume:
                self.resume[channel] = max(self.resume[channel], message_id)
            return
        if frame["type"] != "synced":
            return

        channel, has_more = frame["channel"], frame["hasMore"]
        session.events.append(("synced", channel, has_more))
        state.waiting.discard(channel)
        if has_more:
            start = next_sync_start(
                state.received[channel], state.after[channel], self.limit
            )
            if start is None:
                raise AssertionError(
                    f"{channel}: hasMore true after fewer than {self.limit} messages"
                )
            state.next_after[channel] = start
            self.resume[channel] = start
        else:
            state.caught_up.add(channel)
            self.resume[channel] = max(self.resume[channel], self._trusted_end(
                session.node, channel, state
            ))
        if not state.waiting and state.next_after:
            after, state.next_after = state.next_after, {}
            await self._request_sync(ws, session, state, after)

    def _trusted_end(self, node, channel, state):
        """Return the largest lossless resume point of a finished sync chain."""
        received = state.received[channel]
        if self.live_resume:
            return max(received, default=0)
        replayed = [
            message_id for message_id in received
            if self.origin_of(channel, message_id) not in (None, node)
        ]
        return max(replayed, default=state.after[channel])


class _SessionState:
    def __init__(self, after):
        self.after = after
        self.waiting = set()
        self.next_after = {}
        self.caught_up = set()
        self.received = {channel: set() for channel in CHANNELS}


# -- auditing the records against the stored messages ----------------------


def audit_sessions(sessions, reference, limit, origins=None):
    """Return the ordering problems in a recipient's sessions, as sentences.

    ``reference`` maps each channel to the ascending ids stored for the
    recipient. With ``origins`` None, one process delivered everything live
    and the audit checks live order, lossless resume points, repeats and
    completeness. With ``origins`` (``{(channel, id): node}``), sessions ran
    on several processes and only sync replies are checked.
    """
    problems = []
    received_ever = {channel: set() for channel in CHANNELS}
    stored = {channel: set(ids) for channel, ids in reference.items()}
    for number, session in enumerate(sessions, start=1):
        problems += _audit_session(
            number, session, reference, stored, received_ever, limit, origins
        )
    if origins is None:
        for channel in CHANNELS:
            missing = sorted(stored[channel] - received_ever[channel])
            if missing:
                problems.append(f"{channel}: never received {missing}")
    return problems


def _audit_session(number, session, reference, stored, received_ever, limit, origins):
    problems = []
    where = f"session {number}"
    after = dict(session.start)
    received = {channel: set() for channel in CHANNELS}
    caught_up = set()
    newest = dict(session.start)

    for event in session.events:
        if event[0] == "sync":
            after.update(event[1])
            continue
        kind, channel, value = event
        if kind == "synced" and value:
            expected = [i for i in reference[channel] if i > after[channel]][:limit]
            got = sorted(i for i in received[channel] if i > after[channel])[:limit]
            if got != expected:
                problems.append(
                    f"{channel}: {where}: sync batch after {after[channel]} "
                    f"was {got}, expected {expected}"
                )
            continue
        if kind == "synced":
            caught_up.add(channel)
            if origins is None:
                problems += _missing_below(
                    channel, where, newest[channel], reference, received_ever
                )
            else:
                problems += _replay_gaps(
                    channel, where, session.node, after[channel], reference,
                    received[channel], origins,
                )
            continue

        message_id = value
        if message_id not in stored[channel]:
            problems.append(f"{channel}: {where}: id {message_id} is not stored")
        if origins is None and message_id <= session.start[channel]:
            problems.append(
                f"{channel}: {where}: id {message_id} received again, at or below "
                f"the resume point {session.start[channel]}"
            )
        if origins is None and channel in caught_up:
            if message_id <= newest[channel]:
                problems.append(
                    f"{channel}: {where}: live id {message_id} arrived after "
                    f"{newest[channel]}"
                )
            problems += _missing_below(
                channel, where, message_id - 1, reference, received_ever
            )
        received[channel].add(message_id)
        received_ever[channel].add(message_id)
        newest[channel] = max(newest[channel], message_id)
    return problems


def _missing_below(channel, where, upper, reference, received_ever):
    """Report stored ids up to ``upper`` that the client has not received."""
    missing = [
        i for i in reference[channel]
        if i <= upper and i not in received_ever[channel]
    ]
    if not missing:
        return []
    return [
        f"{channel}: {where}: saw ids up to {upper} while {missing} were still to come"
    ]


def _replay_gaps(channel, where, node, after, reference, received, origins):
    """Report gaps below ids that can only have come from the sync reply."""
    replayed = [
        i for i in received
        if i > after and origins.get((channel, i)) not in (None, node)
    ]
    if not replayed:
        return []
    upper = max(replayed)
    missing = [
        i for i in reference[channel] if after < i <= upper and i not in received
    ]
    if not missing:
        return []
    return [
        f"{channel}: {where} on {node}: sync after {after} replayed {upper} "
        f"without {missing}"
    ]


def audit_page(page, reference):
    """Return the problems of one history page, as sentences."""
    ids, stored = page.ids, reference[page.channel]
    where = f"{page.channel} page on {page.node or 'server'} " + _cursor_text(page)
    if not ids:
        return []
    if ids != sorted(set(ids)):
        return [f"{where}: ids {ids} are not ascending"]
    unknown = [i for i in ids if i not in stored]
    if unknown:
        return [f"{where}: ids {unknown} are not stored"]

    problems = []
    first, last = stored.index(ids[0]), stored.index(ids[-1])
    skipped = [i for i in stored[first:last + 1] if i not in ids]
    if skipped:
        problems.append(f"{where}: ids {ids} skip {skipped}")
    if page.after_id is not None:
        expected_first = next((i for i in stored if i > page.after_id), None)
        if ids[0] != expected_first:
            problems.append(f"{where}: starts at {ids[0]}, not {expected_first}")
    if page.before_id is not None:
        expected_last = max((i for i in stored if i < page.before_id), default=None)
        if ids[-1] != expected_last:
            problems.append(f"{where}: ends at {ids[-1]}, not {expected_last}")
    if page.after_id is None and not page.has_more and ids[0] != stored[0]:
        problems.append(f"{where}: hasMore false but {ids[0]} is not the first id")
    if page.has_more and len(ids) != page.limit:
        problems.append(f"{where}: hasMore true with {len(ids)} of {page.limit} ids")
    return problems


def _cursor_text(page):
    if page.after_id is not None:
        return f"after {page.after_id}"
    if page.before_id is not None:
        return f"before {page.before_id}"
    return "(newest)"


# -- the audit itself can fail ----------------------------------------------


def test_audit_accepts_ordered_sessions():
    reference = {"p2p": [1, 2, 3, 4, 5, 6], "group": [10], "system": []}
    sessions = [
        Session("", {"p2p": 0, "group": 0, "system": 0}, [
            ("sync", {"p2p": 0, "group": 0, "system": 0}),
            ("message", "p2p", 4),
            ("message", "p2p", 1), ("message", "p2p", 2),
            ("message", "p2p", 3), ("message", "p2p", 4),
            ("synced", "p2p", True),
            ("message", "group", 10), ("synced", "group", False),
            ("synced", "system", False),
            ("sync", {"p2p": 4}),
            ("message", "p2p", 5), ("synced", "p2p", False),
        ]),
        Session("", {"p2p": 5, "group": 10, "system": 0}, [
            ("sync", {"p2p": 5, "group": 10, "system": 0}),
            ("synced", "p2p", False), ("synced", "group", False),
            ("synced", "system", False),
            ("message", "p2p", 6),
        ]),
    ]

    problems = audit_sessions(sessions, reference, limit=4)

    assert problems == []


def _caught_up_session(start, *events):
    opening = [("sync", dict(start))] + [
        ("synced", channel, False) for channel in CHANNELS
    ]
    return Session("", dict(start), opening + list(events))


ZERO = {"p2p": 0, "group": 0, "system": 0}
BROKEN_SESSIONS = {
    "live_out_of_order": (
        [_caught_up_session(ZERO, ("message", "p2p", 2), ("message", "p2p", 1))],
        "live id 1 arrived after 2",
    ),
    "live_gap_filled_later": (
        [_caught_up_session(ZERO, ("message", "p2p", 1), ("message", "p2p", 3),
                            ("message", "p2p", 2))],
        "saw ids up to 2 while [2] were still to come",
    ),
    "sync_batch_with_gap": (
        [Session("", dict(ZERO), [
            ("sync", {"p2p": 0}),
            ("message", "p2p", 1), ("message", "p2p", 3), ("synced", "p2p", True),
        ])],
        "sync batch after 0 was [1, 3], expected [1, 2]",
    ),
    "resume_point_loses_message": (
        [Session("", dict(ZERO), [
            ("sync", dict(ZERO)),
            ("message", "p2p", 1), ("message", "p2p", 3), ("synced", "p2p", False),
        ])],
        "saw ids up to 3 while [2] were still to come",
    ),
    "message_received_twice": (
        [_caught_up_session(ZERO, ("message", "p2p", 1), ("message", "p2p", 2),
                            ("message", "p2p", 3)),
         _caught_up_session({"p2p": 3, "group": 0, "system": 0},
                            ("message", "p2p", 3))],
        "id 3 received again",
    ),
    "message_never_received": (
        [_caught_up_session(ZERO, ("message", "p2p", 1), ("message", "p2p", 2))],
        "never received [3]",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN_SESSIONS))
def test_audit_reports_broken_sessions(case):
    sessions, expected = BROKEN_SESSIONS[case]
    reference = {"p2p": [1, 2, 3], "group": [], "system": []}

    problems = audit_sessions(sessions, reference, limit=2)

    assert any(expected in problem for problem in problems), problems


def test_audit_reports_replay_gap_across_processes():
    reference = {"p2p": [1, 2, 3], "group": [], "system": []}
    origins = {("p2p", 1): "a", ("p2p", 2): "a", ("p2p", 3): "b"}
    session = Session("a", dict(ZERO), [
        ("sync", dict(ZERO)),
        ("message", "p2p", 1), ("message", "p2p", 3), ("synced", "p2p", False),
    ])

    problems = audit_sessions([session], reference, limit=5, origins=origins)

    assert problems == ["p2p: session 1 on a: sync after 0 replayed 3 without [2]"]


BROKEN_PAGES = {
    "gap_inside": (Page("", "p2p", [1, 3], False, 20), "skip [2]"),
    "gap_after_cursor": (Page("", "p2p", [3, 4], False, 20, after_id=1), "not 2"),
    "gap_before_cursor": (Page("", "p2p", [1, 2], False, 20, before_id=4), "not 3"),
    "newest_misses_first": (Page("", "p2p", [2, 3, 4], False, 20), "not the first"),
    "descending": (Page("", "p2p", [2, 1], False, 20), "not ascending"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_PAGES))
def test_audit_reports_broken_pages(case):
    page, expected = BROKEN_PAGES[case]
    reference = {"p2p": [1, 2, 3, 4]}

    problems = audit_page(page, reference)

    assert any(expected in problem for problem in problems), problems


# -- traffic ----------------------------------------------------------------


def text_for(sender, number):
    """A message text that differs per send and carries emoji and CJK."""
    return f"{sender} #{number} 血压 128/82 😀 {uuid.uuid4().hex[:6]}"


async def send_on_socket(ws, frame):
    """Send one ``send`` frame and return the stored message from ``sent``.

    A ``rate_limited`` error pauses and repeats the same clientMsgId, which
    the server treats as the same send.
    """
    while True:
        await ws.send(frame)
        while True:
            reply = await ws.recv(FRAME_WAIT_SECONDS)
            if reply is None:
                raise AssertionError(f"sender socket closed with {ws.close_code}")
            if reply["type"] == "sent" and reply["clientMsgId"] == frame["clientMsgId"]:
                return reply["message"]
            if reply["type"] == "error" and reply.get("ref") == frame["clientMsgId"]:
                break
        if reply["code"] != "rate_limited":
            raise AssertionError(f"send failed: {reply}")
        await asyncio.sleep(RATE_LIMITED_PAUSE_SECONDS)


class Traffic:
    """Concurrent senders aimed at one recipient; keeps every stored message."""

    def __init__(self, rng, recipient, group):
        self.rng = rng
        self.recipient = recipient
        self.group = group
        # (channel, id) -> node that stored it, from the send responses.
        self.origins = {}
        self.acknowledged = {channel: set() for channel in CHANNELS}

    def note(self, message, node):
        self.origins[(message["channel"], message["id"])] = node
        self.acknowledged[message["channel"]].add(message["id"])

    async def rest_sender(self, post, node, sender, token, count):
        """Send ``count`` messages over REST: mostly pm, every third a gm.

        Every ninth send is repeated with its clientMsgId, and the repeat must
        return the first message unchanged.
        """
        for number in range(count):
            body = {"from": sender, "contentType": 1,
                    "content": text_for(sender, number),
                    "clientMsgId": f"{sender}-{number}"}
            if number % 3 == 2:
                kind = "gm"
                body["group"] = self.group
            else:
                kind = "pm"
                body["to"] = self.recipient
            status, answer = await post(f"/api/v1/chats/{kind}", body, token)
            assert status == 201, answer
            self.note(answer["message"], node)
            if number % 9 == 4:
                repeat_status, repeat = await post(f"/api/v1/chats/{kind}", body, token)
                assert repeat_status == 200, repeat
                assert repeat["message"] == answer["message"]

    async def reply_sender(self, post, node, token, doctors, count):
        """The recipient replies to doctors, so its p2p stream mixes to and from."""
        for number in range(count):
            body = {"from": self.recipient, "to": self.rng.choice(doctors),
                    "contentType": 1, "content": text_for(self.recipient, number),
                    "clientMsgId": f"reply-{node}-{number}"}
            status, answer = await post("/api/v1/chats/pm", body, token)
            assert status == 201, answer
            self.note(answer["message"], node)

    async def system_sender(self, post, node, token, count):
        for number in range(count):
            body = {"to": self.recipient, "title": "随访提醒", "summary": f"第{number}条",
                    "contentType": 1, "content": text_for("platform", number)}
            status, answer = await post("/api/v1/chats/sm", body, token)
            assert status == 201, answer
            self.note(answer["message"], node)

    async def socket_sender(self, ws, node, sender, count):
        """Send ``count`` messages over a socket: pm, every fourth a gm."""
        for number in range(count):
            frame = {"type": "send", "contentType": 1,
                     "content": text_for(sender, number),
                     "clientMsgId": f"{sender}-ws-{number}"}
            if number % 4 == 3:
                frame.update(channel="group", group=self.group)
            else:
                frame.update(channel="p2p", to=self.recipient)
            message = await send_on_socket(ws, frame)
            self.note(message, node)
            await asyncio.sleep(SOCKET_SEND_INTERVAL_SECONDS)


class HistoryReader:
    """Reads history pages of the recipient at random cursors, recording each."""

    def __init__(self, rng, recipient, group):
        self.rng = rng
        self.recipient = recipient
        self.group = group
        self.pages = []
        self._seen = {channel: [] for channel in CHANNELS}

    async def run(self, get, node, token, done):
        while not done.is_set():
            channel = self.rng.choice(CHANNELS)
            limit = self.rng.randint(1, 30)
            query = {"user_id": self.recipient, "limit": limit}
            if channel == "group":
                query["group"] = self.group
            cursor = self.rng.choice(("newest", "after_id", "before_id"))
            if cursor != "newest" and self._seen[channel]:
                query[cursor] = self.rng.choice(self._seen[channel])
            status, answer = await get(f"/api/v1/chats/{HISTORY_PATHS[channel]}",
                                       query, token)
            assert status == 200, answer
            ids = [message["id"] for message in answer["messages"]]
            self._seen[channel] += ids
            self.pages.append(Page(node, channel, ids, answer["hasMore"], limit,
                                   query.get("after_id"), query.get("before_id")))


async def read_reference(get, recipient, group, token):
    """Read every stored message of the recipient, per channel, through REST."""
    reference = {}
    for channel in CHANNELS:
        messages, after_id = [], 0
        while True:
            query = {"user_id": recipient, "after_id": after_id,
                     "limit": HISTORY_PAGE_LIMIT}
            if channel == "group":
                query["group"] = group
            status, answer = await get(f"/api/v1/chats/{HISTORY_PATHS[channel]}",
                                       query, token)
            assert status == 200, answer
            messages += answer["messages"]
            if not answer["hasMore"]:
                break
            after_id = answer["messages"][-1]["id"]
        reference[channel] = [message["id"] for message in messages]
    return reference


def query_string(query):
    return "&".join(f"{name}={value}" for name, value in query.items())


# -- one process ---------------------------------------------------------------


REST_SENDERS = 8
REST_MESSAGES_EACH = 36
SOCKET_SENDERS = 4
SOCKET_MESSAGES_EACH = 24
REPLIES = 30
SYSTEM_MESSAGES = 30


@pytest.mark.gen_test(timeout=150)
async def test_concurrent_senders_keep_recipient_ordered(api, connect, unique):
    rng = random.Random(20261204)
    recipient = unique("pat-recipient")
    doctors = [unique(f"doc{number}") for number in range(REST_SENDERS)]
    patients = [unique(f"pat{number}") for number in range(SOCKET_SENDERS)]
    group = unique("team")
    recipient_token = await api.user(recipient, "patient")
    doctor_tokens = [await api.user(doctor, "doctor") for doctor in doctors]
    patient_tokens = [await api.user(patient, "patient") for patient in patients]
    await api.group(group, doctors + patients + [recipient])
    # More parallel requests than AsyncHTTPClient's default of 10.
    api.http = AsyncHTTPClient(force_instance=True, max_clients=40)

    async def post(path, body, token):
        status, answer, _ = await api.post(path, body, token=token)
        return status, answer

    async def get(path, query, token):
        status, answer, _ = await api.get(f"{path}?{query_string(query)}", token=token)
        return status, answer

    traffic = Traffic(rng, recipient, group)
    client = ResumingClient()
    readers = [HistoryReader(random.Random(seed), recipient, group) for seed in (1, 2)]
    senders_done = asyncio.Event()
    sender_sockets = [await connect(token) for token in patient_tokens]

    async def recipient_loop():
        while not senders_done.is_set():
            ws = await connect(recipient_token)
            await client.run_session(ws, seconds=rng.uniform(0.02, 0.5),
                                     early_frames=ws.frames)
            ws.close()

    async def all_senders():
        await asyncio.gather(
            *[traffic.rest_sender(post, "", doctor, token, REST_MESSAGES_EACH)
              for doctor, token in zip(doctors, doctor_tokens)],
            *[traffic.socket_sender(ws, "", patient, SOCKET_MESSAGES_EACH)
              for ws, patient in zip(sender_sockets, patients)],
            traffic.reply_sender(post, "", recipient_token, doctors, REPLIES),
            traffic.system_sender(post, "", api.system_token, SYSTEM_MESSAGES),
        )
        senders_done.set()

    await asyncio.gather(
        all_senders(), recipient_loop(),
        *[reader.run(get, "", recipient_token, senders_done) for reader in readers],
    )
    final = await connect(recipient_token)
    await client.run_session(final, early_frames=final.frames)
    reference = await read_reference(get, recipient, group, recipient_token)
    api.http.close()

    stored_count = sum(len(ids) for ids in reference.values())
    expected_count = (REST_SENDERS * REST_MESSAGES_EACH
                      + SOCKET_SENDERS * SOCKET_MESSAGES_EACH
                      + REPLIES + SYSTEM_MESSAGES)
    assert stored_count == expected_count
    for channel in CHANNELS:
        assert reference[channel] == sorted(set(reference[channel])), channel
        assert traffic.acknowledged[channel] <= set(reference[channel]), channel
    assert len(client.sessions) > 3
    assert audit_sessions(client.sessions, reference, SYNC_LIMIT) == []
    page_problems = [p for page in readers[0].pages + readers[1].pages
                     for p in audit_page(page, reference)]
    assert page_problems == []


# -- two processes on one MariaDB database -------------------------------------


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """``python server.py`` on 127.0.0.1 with the test profile."""

    def __init__(self, database_url, log_path):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.name = f"node-{self.port}"
        env = dict(os.environ, IM_PROFILE="test", IM_SECRET=TEST_SECRET,
                   IM_DATABASE_URL=database_url, IM_ADDRESS="127.0.0.1",
                   IM_NODE_NAME=self.name)
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "server.py", f"--port={self.port}"],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    async def wait_healthy(self, http):
        deadline = time.monotonic() + SERVER_START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.process.returncode}"
                )
            try:
                response = await http.fetch(self.base_url + "/health",
                                            raise_error=False)
            except OSError:
                response = None
            if response is not None and response.code == 200:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{self.name} not healthy within {SERVER_START_SECONDS} s")

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


class NodeClient:
    """JSON requests to one server process."""

    def __init__(self, server, http):
        self.server = server
        self.http = http

    async def call(self, method, path, body, token):
        headers = {"Authorization": f"Bearer {token}"}
        raw = None
        if body is not None:
            raw = json.dumps(body, ensure_ascii=False).encode()
            headers["Content-Type"] = "application/json"
        response = await self.http.fetch(
            HTTPRequest(self.server.base_url + path, method=method, headers=headers,
                        body=raw),
            raise_error=False,
        )
        return response.code, json.loads(response.body) if response.body else None

    async def post(self, path, body, token):
        return await self.call("POST", path, body, token)

    async def put(self, path, body, token):
        return await self.call("PUT", path, body, token)

    async def get(self, path, query, token):
        return await self.call("GET", f"{path}?{query_string(query)}", None, token)

    async def socket(self, token):
        url = self.server.base_url.replace("http://", "ws://") + f"/ws?token={token}"
        ws = Socket(await websocket_connect(url))
        while (await ws.recv(FRAME_WAIT_SECONDS))["type"] != "welcome":
            pass
        return ws


@pytest.fixture
def two_servers(tmp_path_factory, tmp_path):
    if not os.environ.get(MYSQL_URL_VARIABLE):
        pytest.skip(f"{MYSQL_URL_VARIABLE} is not set; two processes need MariaDB")
    database_url, drop = create_database("mariadb", tmp_path_factory)
    servers = [
        ServerProcess(database_url, tmp_path / f"server-{n}.log") for n in (1, 2)
    ]
    yield servers
    for server in servers:
        server.stop()
    drop()


CROSS_REST_SENDERS = 6
CROSS_REST_MESSAGES_EACH = 30
CROSS_SOCKET_SENDERS = 4
CROSS_SOCKET_MESSAGES_EACH = 20
CROSS_REPLIES_EACH = 15
CROSS_SYSTEM_EACH = 15
PROBE_BACKTRACK_IDS = 8
PROBE_SESSION_SECONDS = 1.0


@pytest.mark.gen_test(timeout=150)
async def test_two_processes_keep_reads_ordered(two_servers):
    rng = random.Random(7)
    http = AsyncHTTPClient(force_instance=True, max_clients=40)
    for server in two_servers:
        await server.wait_healthy(http)
    nodes = [NodeClient(server, http) for server in two_servers]
    tokens = TokenService(TEST_SECRET)
    system_token = tokens.mint("platform", "system", 3600)[0]
    recipient, group = "pat-recipient", "team-cross"
    doctors = [f"doc-{number}" for number in range(CROSS_REST_SENDERS)]
    patients = [f"pat-{number}" for number in range(CROSS_SOCKET_SENDERS)]
    roles = {recipient: "patient"}
    roles.update({doctor: "doctor" for doctor in doctors})
    roles.update({patient: "patient" for patient in patients})
    for user, role in roles.items():
        status, answer = await nodes[0].put(
            f"/api/v1/users/{user}", {"name": user, "role": role}, system_token)
        assert status == 200, answer
    status, answer = await nodes[1].post(
        "/api/v1/groups",
        {"id": group, "name": "team", "type": 1,
         "members": doctors + patients + [recipient]},
        system_token,
    )
    assert status == 201, answer

    def token(user, role="patient"):
        return tokens.mint(user, role, 3600)[0]

    traffic = Traffic(rng, recipient, group)
    client = ResumingClient(
        live_resume=False,
        origin_of=lambda channel, message_id: traffic.origins.get(
            (channel, message_id)
        ),
    )
    probers = [ResumingClient(live_resume=False, origin_of=client.origin_of)
               for _ in nodes]
    readers = [HistoryReader(random.Random(seed), recipient, group) for seed in (3, 4)]
    senders_done = asyncio.Event()
    sender_sockets = [
        await nodes[n % 2].socket(token(p)) for n, p in enumerate(patients)
    ]

    def node_of(number):
        return nodes[number % 2]

    async def recipient_loop():
        # Sessions alternate between the processes, so that each one's
        # stored messages are replay-only on the other.
        number = 0
        while not senders_done.is_set():
            node = node_of(number)
            ws = await node.socket(token(recipient))
            await client.run_session(ws, node=node.server.name,
                                     seconds=rng.uniform(0.05, 0.5),
                                     early_frames=ws.frames)
            ws.close()
            number += 1

    async def probe_loop(node, prober):
        # Sync chains from just below the newest stored ids, where a sync
        # reply most often races with commits.
        while not senders_done.is_set():
            prober.resume = {
                channel: max(0, max(traffic.acknowledged[channel], default=0)
                             - rng.randint(0, PROBE_BACKTRACK_IDS))
                for channel in CHANNELS
            }
            ws = await node.socket(token(recipient))
            await prober.run_session(ws, node=node.server.name,
                                     seconds=PROBE_SESSION_SECONDS,
                                     early_frames=ws.frames, until_caught_up=True)
            ws.close()

    async def all_senders():
        await asyncio.gather(
            *[traffic.rest_sender(node_of(n).post, node_of(n).server.name, doctor,
                                  token(doctor, "doctor"), CROSS_REST_MESSAGES_EACH)
              for n, doctor in enumerate(doctors)],
            *[traffic.socket_sender(ws, node_of(n).server.name, patient,
                                    CROSS_SOCKET_MESSAGES_EACH)
              for n, (ws, patient) in enumerate(zip(sender_sockets, patients))],
            *[traffic.reply_sender(node.post, node.server.name, token(recipient),
                                   doctors, CROSS_REPLIES_EACH) for node in nodes],
            *[traffic.system_sender(node.post, node.server.name, system_token,
                                    CROSS_SYSTEM_EACH) for node in nodes],
        )
        senders_done.set()

    await asyncio.gather(
        all_senders(), recipient_loop(),
        *[probe_loop(node, prober) for node, prober in zip(nodes, probers)],
        *[reader.run(node.get, node.server.name, token(recipient), senders_done)
          for reader, node in zip(readers, nodes)],
    )
    reference = await read_reference(nodes[0].get, recipient, group, token(recipient))
    replays = []
    for node in nodes:
        final = ResumingClient(live_resume=False)
        ws = await node.socket(token(recipient))
        await final.run_session(ws, node=node.server.name, early_frames=ws.frames)
        ws.close()
        replays.append(final)
    http.close()

    stored_count = sum(len(ids) for ids in reference.values())
    expected_count = (CROSS_REST_SENDERS * CROSS_REST_MESSAGES_EACH
                      + CROSS_SOCKET_SENDERS * CROSS_SOCKET_MESSAGES_EACH
                      + 2 * (CROSS_REPLIES_EACH + CROSS_SYSTEM_EACH))
    assert stored_count == expected_count
    for channel in CHANNELS:
        assert reference[channel] == sorted(set(reference[channel])), channel
        assert traffic.acknowledged[channel] <= set(reference[channel]), channel
    assert len(client.sessions) > 3
    sessions = client.sessions + probers[0].sessions + probers[1].sessions
    problems = audit_sessions(sessions, reference, SYNC_LIMIT, origins=traffic.origins)
    assert problems == []
    for final in replays:
        replayed = {channel: [event[2] for event in final.sessions[0].events
                              if event[:2] == ("message", channel)]
                    for channel in CHANNELS}
        assert replayed == reference
    page_problems = [p for page in readers[0].pages + readers[1].pages
                     for p in audit_page(page, reference)]
    assert page_problems == []


# -- a message in a sync reply whose live delivery is still pending ------------


async def hold_deliveries(im, monkeypatch):
    """Make the dispatcher wait for the returned event between commit and delivery.

    A slow COMMIT acknowledgement (the database flushes its log after the
    rows became visible) or a busy IOLoop opens the same window.
    """
    release = asyncio.Event()
    store_batch = im.dispatcher.store_batch

    async def store_then_hold(channel, requests):
        outcomes = await store_batch(channel, requests)
        await release.wait()
        return outcomes

    monkeypatch.setattr(im.dispatcher, "store_batch", store_then_hold)
    return release


async def wait_until_stored(api, user_id, token):
    """Poll the user's p2p history until a message is committed; return it."""
    while True:
        status, answer, _ = await api.get(f"/api/v1/chats/pm?user_id={user_id}",
                                          token=token)
        assert status == 200, answer
        if answer["messages"]:
            return answer["messages"][0]


async def read_until_synced(ws):
    """Read frames until every channel reported ``synced``; return the messages."""
    messages, waiting = [], set(CHANNELS)
    while waiting:
        frame = await ws.recv(FRAME_WAIT_SECONDS)
        assert frame is not None, f"socket closed with {ws.close_code}"
        if frame["type"] == "message":
            messages.append(frame["message"])
        elif frame["type"] == "synced":
            assert not frame["hasMore"], frame
            waiting.discard(frame["channel"])
    return messages


@pytest.mark.gen_test(timeout=30)
async def test_sync_reply_is_not_repeated_live(api, connect, unique, im, monkeypatch):
    doctor, patient = unique("doc"), unique("pat")
    doctor_token = await api.user(doctor, "doctor")
    patient_token = await api.user(patient, "patient")
    ws = await connect(patient_token)
    release = await hold_deliveries(im, monkeypatch)
    body = {"from": doctor, "to": patient, "contentType": 1, "content": "复诊 🩺"}
    sending = asyncio.ensure_future(
        api.post("/api/v1/chats/pm", body, token=doctor_token)
    )
    stored = await wait_until_stored(api, patient, patient_token)
    asyncio.get_running_loop().call_later(HOLD_SECONDS, release.set)

    await ws.send({"type": "sync", "after": {"p2p": 0, "group": 0, "system": 0}})
    seen = await read_until_synced(ws)
    status, answer, _ = await sending

    assert status == 201, answer
    assert stored in seen
    await ws.no_frame()


@pytest.mark.gen_test(timeout=30)
async def test_resumed_session_gets_no_repeats(api, connect, unique, im, monkeypatch):
    doctor, patient = unique("doc"), unique("pat")
    doctor_token = await api.user(doctor, "doctor")
    patient_token = await api.user(patient, "patient")
    first = await connect(patient_token)
    release = await hold_deliveries(im, monkeypatch)
    body = {"from": doctor, "to": patient, "contentType": 1, "content": "化验单 📄"}
    sending = asyncio.ensure_future(
        api.post("/api/v1/chats/pm", body, token=doctor_token)
    )
    stored = await wait_until_stored(api, patient, patient_token)
    asyncio.get_running_loop().call_later(HOLD_SECONDS, release.set)

    await first.send({"type": "sync", "after": {"p2p": 0, "group": 0, "system": 0}})
    seen = await read_until_synced(first)
    first.close()
    second = await connect(patient_token)
    resume_at = max(message["id"] for message in seen)
    await second.send({"type": "sync", "after": {"p2p": resume_at, "group": 0,
                                                  "system": 0}})
    replayed = await read_until_synced(second)
    status, answer, _ = await sending

    assert status == 201, answer
    assert resume_at == stored["id"]
    assert replayed == []
    await second.no_frame()
