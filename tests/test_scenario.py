"""Replay a day of clinic traffic end to end and check what the server stored.

A scenario is JSON data: users, groups and steps (``pm``, ``gm``, ``sm``
with the request body, and ``read_all`` for a user). The replay registers
the users, creates the groups, opens a socket for every patient that has
neither a Getui client id nor a WeChat openid, and runs the steps in order.
The checks then compare the database, read back through the REST history,
with expectations the test computes from the steps alone:

- every message is stored once, unchanged and in step order (ids ascend);
- a send that repeats a clientMsgId returns the first message and stores
  and counts nothing new;
- each user's unread counts equal the messages addressed to it after its
  last ``read_all``, never counting its own messages;
- each open socket received each of its messages exactly once.

The scenarios are the recorded clinic day (``clinic_day.json``, kept beside
the repository) and one generated here from a seed, so that passing does not
depend on one fixed data set.
"""

import asyncio
import copy
import json
import os
import random
from dataclasses import dataclass

import pytest

from conftest import ROOT, backends, create_database

SCENARIO_NAME = "clinic_day.json"
SCENARIO_PATHS = (
    os.path.join(ROOT, "..", "shared", "scenarios", SCENARIO_NAME),
    os.path.join("/work", "shared", "scenarios", SCENARIO_NAME),
)
CHANNEL_OF_ACT = {"pm": "p2p", "gm": "group", "sm": "system"}
HISTORY_PATHS = {"p2p": "pm", "group": "gm", "system": "sm"}
PUSH_FIELDS = ("getuiClientId", "wechatOpenId")
USER_FIELDS = ("name", "role", "avatar") + PUSH_FIELDS
HISTORY_PAGE_LIMIT = 100
RECENT_PAGE_LIMIT = 500
# The clinic day repeats no clientMsgId. Its replay sends every send step
# whose index is a multiple of RETRY_EVERY_STEPS a second time,
# RETRY_DISTANCE_STEPS steps later, as a client retry would.
RETRY_EVERY_STEPS = 9
RETRY_DISTANCE_STEPS = 4
SOCKET_QUIET_SECONDS = 0.5


def load_clinic_day():
    """Read the clinic day scenario, and fail the test when it is missing."""
    for path in SCENARIO_PATHS:
        if os.path.exists(path):
            with open(path, encoding="utf-8") as scenario_file:
                return json.load(scenario_file)
    pytest.fail(f"{SCENARIO_NAME} not found; looked in {list(SCENARIO_PATHS)}")


@pytest.fixture(params=backends())
def database_url(request, tmp_path_factory):
    """A fresh database per test, so that the replay starts from empty tables."""
    url, drop = create_database(request.param, tmp_path_factory)
    yield url
    drop()


# -- replaying ---------------------------------------------------------------


@dataclass
class SentMessage:
    step: int
    channel: str
    sender: str
    body: dict
    message: dict


class Replay:
    """Runs a scenario's steps against the server and records the responses."""

    def __init__(self, api, connect, scenario):
        self.api = api
        self.connect = connect
        self.users = {user["id"]: user for user in scenario["users"]}
        self.groups = {group["id"]: group["members"] for group in scenario["groups"]}
        self.scenario = scenario
        self.sent = []
        self.repeats = 0
        self.last_read_step = {}
        self.sockets = {}
        self._first = {}

    def token(self, user_id):
        role = self.users[user_id]["role"]
        if role == "system":
            return self.api.system_token
        return self.api.token(user_id, role)

    async def run(self, steps):
        for user in self.scenario["users"]:
            body = {name: user[name] for name in USER_FIELDS if name in user}
            status, answer, _ = await self.api.put(f"/api/v1/users/{user['id']}", body)
            assert status == 200, answer
        for group in self.scenario["groups"]:
            status, answer, _ = await self.api.post("/api/v1/groups", group)
            assert status == 201, answer
        for user_id in live_users(self.scenario):
            self.sockets[user_id] = await self.connect(self.token(user_id))
        done = asyncio.Event()
        readers = [keep_reading(ws, done) for ws in self.sockets.values()]
        replaying = asyncio.ensure_future(asyncio.gather(*readers))

        for number, step in enumerate(steps):
            if step["act"] == "read_all":
                await self.read_all(step["userId"])
                self.last_read_step[step["userId"]] = number
            else:
                await self.send(number, step)
        done.set()
        await replaying

    async def send(self, number, step):
        channel, body = CHANNEL_OF_ACT[step["act"]], step["body"]
        sender = "system" if channel == "system" else body["from"]
        token = self.api.system_token if channel == "system" else self.token(sender)
        status, answer, _ = await self.api.post(f"/api/v1/chats/{step['act']}", body,
                                                token=token)
        key = (channel, sender, body.get("clientMsgId"))
        if key[2] is not None and key in self._first:
            assert status == 200, answer
            assert answer["message"] == self._first[key]
            self.repeats += 1
            return
        assert status == 201, answer
        self.sent.append(SentMessage(number, channel, sender, body, answer["message"]))
        if key[2] is not None:
            self._first[key] = answer["message"]

    async def read_all(self, user_id):
        """Mark every conversation of the user read up to its newest message."""
        token = self.token(user_id)
        for conversation in await recent_conversations(self.api, user_id, token):
            body = {"userId": user_id, "channel": conversation["channel"],
                    "upToId": conversation["lastMessage"]["id"]}
            for name in ("peer", "group"):
                if name in conversation:
                    body[name] = conversation[name]
            status, answer, _ = await self.api.post("/api/v1/chats/read", body,
                                                    token=token)
            assert status == 200, answer


def live_users(scenario):
    """Patients reachable by no push: these hold a socket during the replay."""
    return [
        user["id"] for user in scenario["users"]
        if user["role"] == "patient" and not any(user.get(name) for name in PUSH_FIELDS)
    ]


async def keep_reading(ws, done):
    """Read frames into ``ws.frames``; once ``done`` is set, until it stays quiet."""
    while True:
        try:
            frame = await ws.recv(SOCKET_QUIET_SECONDS)
        except asyncio.TimeoutError:
            if done.is_set():
                return
            continue
        assert frame is not None, f"socket closed with {ws.close_code}"


async def recent_conversations(api, user_id, token):
    """Every conversation of a user, following ``before`` pages."""
    conversations, before = [], None
    while True:
        path = f"/api/v1/chats/recent?user_id={user_id}&limit={RECENT_PAGE_LIMIT}"
        if before is not None:
            path += f"&before={before}"
        status, answer, _ = await api.get(path, token=token)
        assert status == 200, answer
        conversations += answer["conversations"]
        if not answer["hasMore"]:
            return conversations
        before = answer["conversations"][-1]["lastMessage"]["timestamp"]


async def read_history(api, channel, query, token=None):
    """All messages of one history query, paging forward with after_id."""
    messages, after_id = [], 0
    while True:
        page_query = dict(query, after_id=after_id, limit=HISTORY_PAGE_LIMIT)
        path = f"/api/v1/chats/{HISTORY_PATHS[channel]}?" + "&".join(
            f"{name}={value}" for name, value in page_query.items()
        )
        status, answer, _ = await api.get(path, token=token)
        assert status == 200, answer
        messages += answer["messages"]
        if not answer["hasMore"]:
            return messages
        after_id = answer["messages"][-1]["id"]


async def read_stored(api, scenario):
    """Every stored message per channel, by id, from all users' histories."""
    stored = {channel: {} for channel in CHANNEL_OF_ACT.values()}
    conflicts = []
    queries = []
    for user in scenario["users"]:
        if user["role"] != "system":
            queries.append(("p2p", {"user_id": user["id"]}))
            queries.append(("system", {"user_id": user["id"]}))
    for group in scenario["groups"]:
        first_member = group["members"][0]
        queries.append(("group", {"user_id": first_member, "group": group["id"]}))
    for channel, query in queries:
        for message in await read_history(api, channel, query):
            earlier = stored[channel].setdefault(message["id"], message)
            if earlier != message:
                conflicts.append((earlier, message))
    return stored, conflicts


# -- what the steps imply ------------------------------------------------------


def addressed_to(sent, groups):
    """The users a message counts as unread for: never its sender."""
    if sent.channel == "group":
        members = groups[sent.body["group"]]
        return [member for member in members if member != sent.sender]
    return [sent.body["to"]]


def conversation_of(sent, user_id):
    if sent.channel == "group":
        return f"group:{sent.body['group']}"
    if sent.channel == "system":
        return "system"
    peer = sent.body["to"] if sent.sender == user_id else sent.sender
    return f"p2p:{peer}"


def expected_unread(replay):
    """Unread per user and conversation, computed from the steps only.

    A ``read_all`` reads everything sent before it, so a message is unread
    when it was sent after the recipient's last ``read_all``. Every
    conversation with a message is listed, with zero when all is read.
    """
    unread = {user_id: {} for user_id, user in replay.users.items()
              if user["role"] != "system"}
    for sent in replay.sent:
        involved = set(addressed_to(sent, replay.groups))
        if sent.channel != "system":
            involved.add(sent.sender)
        for user_id in involved:
            conversation = conversation_of(sent, user_id)
            counts = unread[user_id]
            counts.setdefault(conversation, 0)
            is_new = sent.step > replay.last_read_step.get(user_id, -1)
            if user_id != sent.sender and is_new:
                counts[conversation] += 1
    return unread


def expected_on_socket(replay, user_id):
    """Message ids per channel that a socket of the user must receive."""
    ids = {channel: [] for channel in CHANNEL_OF_ACT.values()}
    for sent in replay.sent:
        if sent.channel == "group":
            receives = user_id in replay.groups[sent.body["group"]]
        else:
            receives = user_id in (sent.sender, sent.body["to"])
        if receives:
            ids[sent.channel].append(sent.message["id"])
    return ids


def content_mismatches(sent, stored, group_types):
    """Fields of a stored message that differ from the step's request body."""
    body, message = sent.body, stored.get(sent.message["id"])
    if message is None:
        return [(sent.step, "missing", None, None)]
    expected = {"contentType": body["contentType"], "content": body["content"],
                "clientMsgId": body.get("clientMsgId")}
    if sent.channel == "system":
        expected.update(to=body["to"], title=body["title"], summary=body["summary"])
    elif sent.channel == "p2p":
        expected.update({"from": sent.sender, "to": body["to"]})
    else:
        expected.update({"from": sent.sender, "group": body["group"],
                         "groupType": group_types[body["group"]],
                         "at": body.get("at") or None})
    mismatches = [
        (sent.step, name, value, message.get(name))
        for name, value in expected.items() if message.get(name) != value
    ]
    stored_bytes = (message.get("content") or "").encode("utf-8")
    if stored_bytes != body["content"].encode("utf-8"):
        mismatches.append((sent.step, "content bytes", len(body["content"]),
                           len(stored_bytes)))
    return mismatches


async def check_replay(api, replay):
    """Run every check of the module docstring against a finished replay."""
    stored, conflicts = await read_stored(api, replay.scenario)

    assert conflicts == []
    for channel in CHANNEL_OF_ACT.values():
        step_ids = [
            sent.message["id"] for sent in replay.sent if sent.channel == channel
        ]
        assert step_ids == sorted(step_ids), f"{channel} ids do not ascend by step"
        assert sorted(stored[channel]) == step_ids, f"{channel} stored ids"
    group_types = {group["id"]: group["type"] for group in replay.scenario["groups"]}
    mismatches = [
        mismatch for sent in replay.sent
        for mismatch in content_mismatches(sent, stored[sent.channel], group_types)
    ]
    assert mismatches == []
    answer_differences = [
        sent.step for sent in replay.sent
        if stored[sent.channel].get(sent.message["id"]) != sent.message
    ]
    assert answer_differences == []

    expected = expected_unread(replay)
    actual, totals = {}, {}
    for user_id in expected:
        conversations = await recent_conversations(api, user_id, None)
        actual[user_id] = {_conversation_key(c): c["unread"] for c in conversations}
        status, answer, _ = await api.get(
            f"/api/v1/chats/recent?user_id={user_id}&limit=1"
        )
        assert status == 200, answer
        totals[user_id] = answer["totalUnread"]
    assert actual == expected
    expected_totals = {
        user_id: sum(counts.values()) for user_id, counts in expected.items()
    }
    assert totals == expected_totals

    received, on_socket = {}, {}
    frame_differences = []
    for user_id, ws in replay.sockets.items():
        frames = [frame["message"] for frame in ws.frames if frame["type"] == "message"]
        received[user_id] = {
            channel: [m["id"] for m in frames if m["channel"] == channel]
            for channel in CHANNEL_OF_ACT.values()
        }
        on_socket[user_id] = expected_on_socket(replay, user_id)
        frame_differences += [
            (user_id, m["id"]) for m in frames if stored[m["channel"]].get(m["id"]) != m
        ]
    assert received == on_socket
    assert frame_differences == []


def _conversation_key(conversation):
    if conversation["channel"] == "group":
        return f"group:{conversation['group']}"
    if conversation["channel"] == "system":
        return "system"
    return f"p2p:{conversation['peer']}"


def with_retries(steps):
    """The steps plus client retries: some sends repeated a few steps later."""
    result, retries = [], []
    for number, step in enumerate(steps):
        result.append(step)
        has_id = step["act"] != "read_all" and step["body"].get("clientMsgId")
        if has_id and number % RETRY_EVERY_STEPS == 0:
            retries.append((number + RETRY_DISTANCE_STEPS, copy.deepcopy(step)))
        while retries and retries[0][0] <= number:
            result.append(retries.pop(0)[1])
    result += [step for _, step in retries]
    return result


# -- a generated scenario --------------------------------------------------------


TEXT_FRAGMENTS = (
    "您好，今天血压多少？", "收缩压 135，舒张压 85 mmHg", "记得饭后半小时服药💊",
    "👨‍👩‍👧‍👦 全家都签约了", "🇨🇳🇭🇰", "👍🏽👍🏿", "❤️‍🩹", "🩺🩸🧑‍⚕️",
    "𠮷野家", "𪚥", "𤭢𡃁𰻞", "龘靐齉", "e\u0301 (combining accent)",
    "第一行\n第二行", "制表\t符\t号", "回车\r\n换行", "行分隔\u2028符",
    "<b>加粗</b>", "<script>alert('x')</script>", "&amp; &lt;tag&gt;",
    "**markdown** _斜体_", "'单引号' \"双引号\" `反引号`", "“中文引号”‘单’「括号」",
    "C:\\病历\\2026\\报告.pdf", "{\"json\": [1, 2, \"三\"]}", "'; DROP TABLE msg_p2p; --",
    "%s %d %% {0} :name ?", "零宽\u200b空格", "\u202e右到左", "\ufeffBOM 开头",
    "空字符\u0000之后", "  前后空格  ", "١٢٣ مرحبا", "Ωμέγα ß ﬁ",
)
URLS = (
    "https://files.example.org/img/{n}.jpg",
    "https://files.example.org/voice/{n}.amr?sig=a%2Fb&t=1",
    "http://health.example.org/article/{n}?from=im&lang=zh#段落",
    "https://files.example.org/doc/{n}/报告.pdf",
)
MAX_TEXT_CHARS = 4000


def random_text(rng):
    """A text of 1-4000 code points: short phrases, long notes, astral runs."""
    roll = rng.random()
    if roll < 0.08:
        return "".join(rng.choice(("𠮷", "😀", "🩺", "龘"))
                       for _ in range(MAX_TEXT_CHARS))
    if roll < 0.2:
        target = rng.randint(500, MAX_TEXT_CHARS)
        parts = []
        while sum(len(part) for part in parts) < target:
            parts.append(rng.choice(TEXT_FRAGMENTS))
        return "".join(parts)[:target]
    return " ".join(rng.choice(TEXT_FRAGMENTS) for _ in range(rng.randint(1, 4)))


def random_content(rng, number):
    content_type = rng.choices((1, 2, 3, 4, 5), weights=(10, 2, 1, 1, 1))[0]
    if content_type == 1:
        return content_type, random_text(rng)
    return content_type, rng.choice(URLS).format(n=number)


def generate_scenario(seed, step_count=220):
    """Build a scenario in the clinic day's format from a seed.

    Users get a Getui client id, a WeChat openid or neither, and groups mix
    doctors and patients. The steps mix pm, gm (with ``at`` lists and
    groupType) and sm carrying long texts, emoji and control characters.
    Between them come ``read_all`` steps of random users and repeats of
    earlier sends with the same clientMsgId.
    """
    rng = random.Random(seed)
    users = [{"id": "platform", "name": "家庭医生平台", "role": "system"}]
    doctors = [f"dr-{seed}-{n}" for n in range(rng.randint(3, 5))]
    patients = [f"pt-{seed}-{n}" for n in range(rng.randint(8, 14))]
    for n, doctor in enumerate(doctors):
        user = {"id": doctor, "name": f"医生{n}号 👩‍⚕️", "role": "doctor"}
        if rng.random() < 0.5:
            user["getuiClientId"] = f"cid-{seed}-{n}"
        users.append(user)
    for n, patient in enumerate(patients):
        user = {"id": patient, "name": f"患者{n} 𠮷", "role": "patient"}
        reach = "none" if n < 3 else rng.choice(("none", "getui", "wechat"))
        if reach == "getui":
            user["getuiClientId"] = f"cid-p-{seed}-{n}"
        elif reach == "wechat":
            user["wechatOpenId"] = f"oSEED{seed}x{n}"
        users.append(user)

    groups = []
    for n in range(rng.randint(2, 4)):
        members = rng.sample(doctors, rng.randint(1, len(doctors)))
        members += rng.sample(patients, rng.randint(2, 6))
        groups.append({"id": f"grp-{seed}-{n}", "name": f"团队{n} 🏥",
                       "type": rng.choice((1, 2)), "members": members})

    people = doctors + patients
    steps, sends_with_ids = [], []
    for number in range(step_count):
        act = rng.choices(("pm", "gm", "sm", "read_all", "repeat"),
                          weights=(40, 25, 12, 13, 10))[0]
        if act == "repeat" and not sends_with_ids:
            act = "pm"
        if act == "repeat":
            steps.append(copy.deepcopy(rng.choice(sends_with_ids)))
            continue
        if act == "read_all":
            steps.append({"act": "read_all", "userId": rng.choice(people)})
            continue

        content_type, content = random_content(rng, number)
        body = {"contentType": content_type, "content": content}
        if act == "pm":
            sender, receiver = rng.choice(doctors), rng.choice(patients)
            if rng.random() < 0.5:
                sender, receiver = receiver, sender
            body.update({"from": sender, "to": receiver})
        elif act == "gm":
            group = rng.choice(groups)
            members = group["members"]
            body.update({"from": rng.choice(members), "group": group["id"],
                         "at": rng.choice(([], ["all"], rng.sample(members, 1),
                                           rng.sample(members, 2)))})
            if rng.random() < 0.5:
                body["groupType"] = group["type"]
        else:
            body.update({"to": rng.choice(people),
                         "title": random_text(rng)[:100],
                         "summary": random_text(rng)[:200]})
        if act != "sm" or rng.random() < 0.3:
            body["clientMsgId"] = f"{act}-{seed}-{number}-{rng.getrandbits(32):08x}"
        step = {"act": act, "body": body}
        steps.append(step)
        if "clientMsgId" in body:
            sends_with_ids.append(step)
    return {"seed": seed, "users": users, "groups": groups, "steps": steps}


def test_generated_scenario_has_every_kind():
    scenario = generate_scenario(11)

    acts = {step["act"] for step in scenario["steps"]}
    client_ids = [step["body"]["clientMsgId"] for step in scenario["steps"]
                  if step["act"] != "read_all" and "clientMsgId" in step["body"]]
    longest = max(len(step["body"]["content"]) for step in scenario["steps"]
                  if step["act"] != "read_all")
    assert acts == {"pm", "gm", "sm", "read_all"}
    assert len(client_ids) > len(set(client_ids))
    assert longest == MAX_TEXT_CHARS
    assert len(live_users(scenario)) >= 3


# -- the replays -------------------------------------------------------------------


@pytest.mark.gen_test(timeout=120)
async def test_clinic_day_replays_exactly(api, connect):
    scenario = load_clinic_day()
    replay = Replay(api, connect, scenario)

    await replay.run(with_retries(scenario["steps"]))

    assert replay.repeats > 0
    await check_replay(api, replay)


@pytest.mark.gen_test(timeout=120)
async def test_generated_scenario_replays_exactly(api, connect):
    scenario = generate_scenario(20261204)
    replay = Replay(api, connect, scenario)

    await replay.run(scenario["steps"])

    assert replay.repeats > 0
    await check_replay(api, replay)
