"""The benchmark workloads; each one runs inside a load-generator process.

run.py starts one process per workload, pinned away from the server, and
calls ``run_workload(name, params)`` there. The result is a dict of figures.
Every workload also checks correctness while it measures: each message that
a connected recipient should get must arrive exactly once and in id order.

Times come from ``time.monotonic()``. Open-loop latencies count from the
scheduled send time, so a send that the server (or a full connection)
delays is measured with its wait, not hidden by it.
"""

import asyncio
import math
import os
import time
from collections import Counter, defaultdict

from clients import HttpPool, auth_lines, json_body, mint_token, open_socket

CLK_TCK = os.sysconf("SC_CLK_TCK")
# Every message carries "#<sequence number>" first, then a short CJK text.
TEXT = " 复诊提醒：请按时服药，早晚各测一次血压并记下读数。"
CONNECT_CONCURRENCY = 100
SOCKET_TIMEOUT_SECONDS = 30.0
SYNC_CHANNELS = ("p2p", "group", "system")


def now():
    return time.monotonic()


def percentile(values, fraction):
    """Nearest-rank percentile; None for an empty list."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def to_ms(seconds):
    return None if seconds is None else round(seconds * 1000, 2)


def content_for(seq):
    return f"#{seq}{TEXT}"


def seq_of(content):
    return int(content[1: content.index(" ")])


def process_cpu_seconds(pid):
    """User plus system CPU seconds of a process, all threads; None if gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds():
    """CPU seconds all cores spent outside idle and iowait, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(value) for value in stat.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def rss_bytes(pid):
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return None


class CpuMeter:
    """CPU use of this process and of watched processes over a `with` block.

    ``result`` contains ``wall_s`` and, per name, the CPU seconds used, so a
    reader can tell whether the load generator kept up. ``other_cpu_s`` is
    what every other process on the machine used meanwhile: on a shared
    machine it says how much the figures were disturbed.
    """

    def __init__(self, pids):
        self.pids = {name: pid for name, pid in pids.items() if pid}
        self.result = {}

    def __enter__(self):
        self._wall = now()
        self._own = time.process_time()
        self._start = {name: process_cpu_seconds(pid) for name, pid in self.pids.items()}
        self._busy = machine_busy_seconds()
        return self

    def __exit__(self, *exc_info):
        wall = now() - self._wall
        self.result = {"wall_s": round(wall, 3),
                       "loadgen_cpu_s": round(time.process_time() - self._own, 3)}
        known = self.result["loadgen_cpu_s"]
        for name, pid in self.pids.items():
            end = process_cpu_seconds(pid)
            if end is not None and self._start[name] is not None:
                self.result[f"{name}_cpu_s"] = round(end - self._start[name], 3)
                known += end - self._start[name]
        other = machine_busy_seconds() - self._busy - known
        self.result["other_cpu_s"] = round(max(0.0, other), 3)
        return False


class Ledger:
    """Sends, responses and deliveries of one workload, keyed by sequence number."""

    def __init__(self):
        self.next_seq = 0
        self.sent_at = {}
        self.answer_latency = {}
        # user -> {message id: seq} for every successful send to that user.
        self.expected = defaultdict(dict)
        self.expected_count = 0
        # user -> [(message id, seq)] in arrival order.
        self.received = defaultdict(list)
        # (seq, seconds from send to arrival) per delivered frame.
        self.delivery = []
        self.pending = 0
        self.errors = Counter()

    def start(self, sent_at):
        seq = self.next_seq
        self.next_seq += 1
        self.sent_at[seq] = sent_at
        self.pending += 1
        return seq

    def answered(self, seq, message_id, recipients):
        self.pending -= 1
        self.answer_latency[seq] = now() - self.sent_at[seq]
        for user in recipients:
            self.expected[user][message_id] = seq
        self.expected_count += len(recipients)

    def failed(self, seq, reason):
        self.pending -= 1
        self.errors[reason] += 1

    def delivered(self, user, message, at):
        seq = seq_of(message["content"])
        self.received[user].append((message["id"], seq))
        sent_at = self.sent_at.get(seq)
        if sent_at is not None:
            self.delivery.append((seq, at - sent_at))

    async def drain(self, timeout):
        """Wait until every send has a response and every expected frame arrived."""
        deadline = now() + timeout
        while now() < deadline:
            if self.pending <= 0 and len(self.delivery) >= self.expected_count:
                return True
            await asyncio.sleep(0.01)
        return False

    def check(self):
        """Loss, duplicates and id order per recipient over the whole workload."""
        lost = duplicated = out_of_order = unexpected = 0
        for user in set(self.expected) | set(self.received):
            expected = self.expected.get(user, {})
            seen, last = set(), 0
            for message_id, seq in self.received.get(user, ()):
                if message_id in seen:
                    duplicated += 1
                    continue
                seen.add(message_id)
                if message_id < last:
                    out_of_order += 1
                last = max(last, message_id)
                if expected.get(message_id) != seq:
                    unexpected += 1
            lost += sum(1 for message_id in expected if message_id not in seen)
        return {
            "passed": not (lost or duplicated or out_of_order or unexpected),
            "lost": lost, "duplicated": duplicated, "out_of_order": out_of_order,
            "unexpected": unexpected, "send_errors": dict(self.errors),
            "expected_deliveries": self.expected_count,
        }

    def figures(self, first_seq, end_seq, started):
        """Latency and throughput of the sends numbered first_seq..end_seq-1."""
        delays, last_arrival = [], None
        for seq, delay in self.delivery:
            if first_seq <= seq < end_seq:
                delays.append(delay)
                arrival = self.sent_at[seq] + delay
                if last_arrival is None or arrival > last_arrival:
                    last_arrival = arrival
        answers = [self.answer_latency[seq] for seq in range(first_seq, end_seq)
                   if seq in self.answer_latency]
        span = (last_arrival - started) if last_arrival else None
        return {
            "sent": end_seq - first_seq,
            "answered": len(answers),
            "delivered": len(delays),
            "delivered_per_s": round(len(delays) / span, 1) if span else 0.0,
            "p50_ms": to_ms(percentile(delays, 0.50)),
            "p99_ms": to_ms(percentile(delays, 0.99)),
            "max_ms": to_ms(max(delays) if delays else None),
            "answer_p50_ms": to_ms(percentile(answers, 0.50)),
            "answer_p99_ms": to_ms(percentile(answers, 0.99)),
        }


async def connect_all(port_of, users, tokens, on_frame, concurrency):
    """Open one socket per user and wait for each ``welcome`` frame.

    ``port_of(index)`` picks the server of the index-th user. Returns the
    clients by user, seconds from connect to welcome per socket, errors by
    kind, and the seconds taken for all of them.
    """
    gate = asyncio.Semaphore(concurrency)
    clients, durations, errors = {}, [], Counter()

    async def one(index, user, token):
        async with gate:
            start = now()
            try:
                client = await open_socket(port_of(index), token, on_frame, user,
                                           SOCKET_TIMEOUT_SECONDS)
                await asyncio.wait_for(asyncio.shield(client.welcomed),
                                       SOCKET_TIMEOUT_SECONDS)
            except (OSError, asyncio.TimeoutError) as error:
                errors[type(error).__name__] += 1
                return
            durations.append(now() - start)
            clients[user] = client

    started = now()
    await asyncio.gather(*(one(i, u, t) for i, (u, t) in enumerate(zip(users, tokens))))
    return clients, durations, errors, now() - started


async def close_all(clients, timeout=10.0):
    for client in clients.values():
        client.close()
    pending = [client.closed for client in clients.values()]
    if pending:
        await asyncio.wait(pending, timeout=timeout)


def connect_figures(durations, errors, elapsed):
    return {
        "sockets": len(durations), "errors": dict(errors), "seconds": round(elapsed, 3),
        "welcome_p50_ms": to_ms(percentile(durations, 0.50)),
        "welcome_p99_ms": to_ms(percentile(durations, 0.99)),
        "welcome_max_ms": to_ms(max(durations) if durations else None),
    }


async def open_loop(rate, duration, issue, ledger, max_pending, stop=None):
    """Issue ``rate * duration`` sends on a fixed schedule.

    Stops early when more than ``max_pending`` sends wait for a response (the
    target cannot keep up) or when ``stop()`` returns True. Returns the count
    issued, the start time, whether it stopped for overload, and how late
    each send left compared with its schedule.
    """
    total = int(rate * duration)
    started = now() + 0.01
    count, lags = 0, []
    while count < total:
        wait = started + count / rate - now()
        if wait > 0:
            await asyncio.sleep(wait)
        current = now()
        while count < total and started + count / rate <= current:
            due = started + count / rate
            lags.append(current - due)
            issue(due)
            count += 1
        if ledger.pending > max_pending:
            return count, started, True, lags
        if stop is not None and stop():
            break
    return count, started, False, lags


async def closed_loop(duration, concurrency, issue_and_wait, limit=None):
    """Run ``concurrency`` loops that each send and wait for the response, for ``duration``."""
    deadline = now() + duration
    issued = [0]

    async def loop():
        while now() < deadline and (limit is None or issued[0] < limit):
            issued[0] += 1
            await issue_and_wait()

    started = now()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return started, now()


def watched_pids(params):
    return {"server": params.get("server_pid"), "server2": params.get("server2_pid"),
            "mariadbd": params.get("db_pid")}


def with_cpu(figures, cpu):
    figures["cpu"] = cpu.result
    return figures


def lag_figures(lags):
    return {"loadgen_lag_p99_ms": to_ms(percentile(lags, 0.99)),
            "loadgen_lag_max_ms": to_ms(max(lags) if lags else None)}


# -- idle capacity -----------------------------------------------------------

async def idle_capacity(params):
    pid = params["server_pid"]
    users = params["users"]
    tokens = [mint_token(params["secret"], user, "patient") for user in users]
    rss_before = rss_bytes(pid)
    with CpuMeter(watched_pids(params)) as cpu:
        clients, durations, errors, elapsed = await connect_all(
            lambda index: params["port"], users, tokens, lambda *frame: None,
            params.get("concurrency", CONNECT_CONCURRENCY),
        )
    await asyncio.sleep(params.get("hold_seconds", 2.0))
    rss_after = rss_bytes(pid)
    open_count = sum(1 for client in clients.values() if not client.closed.done())
    await close_all(clients)
    figures = connect_figures(durations, errors, elapsed)
    figures.update(
        still_open=open_count,
        rss_before_mb=round(rss_before / 2**20, 1),
        rss_after_mb=round(rss_after / 2**20, 1),
        rss_per_socket_kb=round((rss_after - rss_before) / max(1, len(clients)) / 1024, 1),
    )
    figures["check"] = {"passed": not errors and open_count == len(users),
                        "connect_errors": dict(errors), "dropped": len(clients) - open_count}
    return with_cpu(figures, cpu)


# -- p2p over REST -----------------------------------------------------------

class P2PRest:
    """Doctors send pm over REST to online patients; patients receive live."""

    def __init__(self, params, pools):
        self.params = params
        self.pools = pools
        self.ledger = Ledger()
        self.recipients = params["recipients"]
        self.doctors = params["doctors"]
        self.alternate = params.get("route") == "alternate"
        secret = params["secret"]
        self.doctor_lines = [auth_lines(mint_token(secret, d, "doctor")) for d in self.doctors]

    def on_frame(self, client, frame, at):
        if frame.get("type") == "message":
            self.ledger.delivered(client.user_id, frame["message"], at)

    def issue(self, sent_at, waiter=None):
        ledger = self.ledger
        seq = ledger.start(sent_at)
        index = seq % len(self.recipients)
        recipient = self.recipients[index]
        doctor = seq % len(self.doctors)
        body = json_body({"from": self.doctors[doctor], "to": recipient,
                          "contentType": 1, "content": content_for(seq)})
        pool_index = (seq if self.alternate else index) % len(self.pools)

        def answered(status, data):
            if status in (200, 201):
                ledger.answered(seq, _message_id(data), [recipient])
            else:
                ledger.failed(seq, f"HTTP {status}")
            if waiter is not None:
                waiter.set_result(None)

        self.pools[pool_index].request("POST", "/api/v1/chats/pm",
                                       self.doctor_lines[doctor], body, answered)

    async def issue_and_wait(self):
        waiter = asyncio.get_running_loop().create_future()
        self.issue(now(), waiter)
        await waiter


def _message_id(data):
    # The id comes early in the response body: {"message":{"id":123,...
    start = data.index(b'"id":') + 5
    stop = start
    while data[stop:stop + 1].isdigit():
        stop += 1
    return int(data[start:stop])


async def p2p_rest(params):
    ports = params["ports"]
    pools = [await HttpPool(port, params.get("pool_size", 64)).open() for port in ports]
    work = P2PRest(params, pools)
    ledger = work.ledger
    tokens = [mint_token(params["secret"], user, "patient") for user in work.recipients]
    clients, durations, errors, elapsed = await connect_all(
        lambda index: ports[index % len(ports)], work.recipients, tokens, work.on_frame,
        CONNECT_CONCURRENCY,
    )
    result = {"connect": connect_figures(durations, errors, elapsed), "steps": []}
    drain_s = params.get("drain_seconds", 10.0)

    warmup = params.get("warmup", 200)
    if warmup:
        await closed_loop(30.0, 16, work.issue_and_wait, limit=warmup)
        await ledger.drain(drain_s)

    for rate in params.get("rates", []):
        first = ledger.next_seq
        with CpuMeter(watched_pids(params)) as cpu:
            _, started, overloaded, lags = await open_loop(
                rate, params["step_seconds"], work.issue, ledger, max(500, 2 * rate)
            )
            drained = await ledger.drain(drain_s)
        figures = ledger.figures(first, ledger.next_seq, started)
        figures.update(rate=rate, overloaded=overloaded, drained=drained, **lag_figures(lags))
        result["steps"].append(with_cpu(figures, cpu))
        await asyncio.sleep(0.3)

    if params.get("ready_file"):
        # Tells run.py that the timed part starts now (the profiler waits for it).
        with open(params["ready_file"], "w", encoding="ascii") as ready:
            ready.write("ready\n")
    if params.get("closed_seconds"):
        first = ledger.next_seq
        with CpuMeter(watched_pids(params)) as cpu:
            started, ended = await closed_loop(
                params["closed_seconds"], params.get("closed_concurrency", 64),
                work.issue_and_wait,
            )
            drained = await ledger.drain(drain_s)
        figures = ledger.figures(first, ledger.next_seq, started)
        figures.update(concurrency=params.get("closed_concurrency", 64), drained=drained)
        result["closed"] = with_cpu(figures, cpu)

    await close_all(clients)
    for pool in pools:
        pool.close()
    result["check"] = ledger.check()
    result["check"]["connect_errors"] = dict(errors)
    result["check"]["passed"] = result["check"]["passed"] and not errors
    return result


# -- patient -> doctor over WebSocket ----------------------------------------

async def ws_p2d(params):
    """Send p2p from patients' sockets to online doctors, acknowledged by `sent` frames."""
    port, secret = params["port"], params["secret"]
    patients, doctors = params["patients"], params["doctors"]
    ledger = Ledger()
    doctor_of = {patient: doctors[i % len(doctors)] for i, patient in enumerate(patients)}

    def on_frame(client, frame, at):
        kind = frame.get("type")
        if kind == "message":
            ledger.delivered(client.user_id, frame["message"], at)
        elif kind == "sent":
            seq = int(frame["clientMsgId"][1:])
            ledger.answered(seq, frame["message"]["id"], [doctor_of[client.user_id]])
        elif kind == "error":
            ref = frame.get("ref") or ""
            if ref.startswith("b") and ref[1:].isdigit():
                ledger.failed(int(ref[1:]), frame.get("code"))

    doctor_tokens = [mint_token(secret, d, "doctor") for d in doctors]
    patient_tokens = [mint_token(secret, p, "patient") for p in patients]
    doctor_clients, d_times, d_errors, _ = await connect_all(
        lambda index: port, doctors, doctor_tokens, on_frame, CONNECT_CONCURRENCY)
    patient_clients, p_times, p_errors, elapsed = await connect_all(
        lambda index: port, patients, patient_tokens, on_frame, CONNECT_CONCURRENCY)
    sockets = [patient_clients.get(patient) for patient in patients]

    def issue(sent_at):
        seq = ledger.start(sent_at)
        client = sockets[seq % len(sockets)]
        if client is None:
            ledger.failed(seq, "not connected")
            return
        client.send({"type": "send", "channel": "p2p", "to": doctor_of[client.user_id],
                     "contentType": 1, "content": content_for(seq), "clientMsgId": f"b{seq}"})

    result = {"connect": connect_figures(p_times + d_times, p_errors + d_errors, elapsed),
              "steps": []}
    for rate in params["rates"]:
        first = ledger.next_seq
        with CpuMeter(watched_pids(params)) as cpu:
            _, started, overloaded, lags = await open_loop(
                rate, params["step_seconds"], issue, ledger, max(500, 2 * rate))
            drained = await ledger.drain(params.get("drain_seconds", 10.0))
        figures = ledger.figures(first, ledger.next_seq, started)
        figures.update(rate=rate, overloaded=overloaded, drained=drained, **lag_figures(lags))
        result["steps"].append(with_cpu(figures, cpu))
        await asyncio.sleep(0.3)

    await close_all({**doctor_clients, **patient_clients})
    result["check"] = ledger.check()
    connect_errors = p_errors + d_errors
    result["check"]["connect_errors"] = dict(connect_errors)
    result["check"]["passed"] = result["check"]["passed"] and not connect_errors
    return result


# -- group fan-out -----------------------------------------------------------

async def group_fanout(params):
    """Send gm over REST from one doctor to a group whose members are all online."""
    port, secret = params["port"], params["secret"]
    members, group = params["members"], params["group"]
    sender = members[0]
    ledger = Ledger()
    pool = await HttpPool(port, params.get("pool_size", 32)).open()
    lines = auth_lines(mint_token(secret, sender, "doctor"))

    def on_frame(client, frame, at):
        if frame.get("type") == "message":
            ledger.delivered(client.user_id, frame["message"], at)

    def issue(sent_at):
        seq = ledger.start(sent_at)
        body = json_body({"from": sender, "group": group, "contentType": 1,
                          "content": content_for(seq)})

        def answered(status, data):
            if status in (200, 201):
                ledger.answered(seq, _message_id(data), members)
            else:
                ledger.failed(seq, f"HTTP {status}")

        pool.request("POST", "/api/v1/chats/gm", lines, body, answered)

    tokens = [mint_token(secret, user, "doctor" if user == sender else "patient")
              for user in members]
    clients, durations, errors, elapsed = await connect_all(
        lambda index: port, members, tokens, on_frame, CONNECT_CONCURRENCY)
    result = {"connect": connect_figures(durations, errors, elapsed), "steps": [],
              "members": len(members)}
    for rate in params["rates"]:
        first = ledger.next_seq
        with CpuMeter(watched_pids(params)) as cpu:
            _, started, overloaded, lags = await open_loop(
                rate, params["step_seconds"], issue, ledger, max(200, 2 * rate))
            drained = await ledger.drain(params.get("drain_seconds", 10.0))
        figures = ledger.figures(first, ledger.next_seq, started)
        figures.update(rate=rate, overloaded=overloaded, drained=drained, **lag_figures(lags))
        result["steps"].append(with_cpu(figures, cpu))
        if overloaded or not drained or (figures["p99_ms"] or 0) > 2000:
            break
        await asyncio.sleep(0.3)

    await close_all(clients)
    pool.close()
    result["check"] = ledger.check()
    result["check"]["connect_errors"] = dict(errors)
    result["check"]["passed"] = result["check"]["passed"] and not errors
    return result


# -- reconnect storm ---------------------------------------------------------

class StormClient:
    """The frames one user's two connections received, and the user's resume point."""

    def __init__(self):
        self.first = []  # message ids on the first connection
        self.second = []  # (message id, arrived after the final synced frame)
        self.resume = 0
        self.owed = set()  # ids stored before the reconnect and not yet seen
        self.sync = None
        self.synced_at = None


async def reconnect_storm(params):
    """Drop every socket, send while they are away, then reconnect all at once and `sync`."""
    port, secret = params["port"], params["secret"]
    users, doctors = params["users"], params["doctors"]
    limit = params.get("sync_limit", 200)
    ledger = Ledger()
    state = {user: StormClient() for user in users}
    pool = await HttpPool(port, 64).open()
    doctor_lines = [auth_lines(mint_token(secret, d, "doctor")) for d in doctors]
    tokens = [mint_token(secret, user, "patient") for user in users]

    def issue(sent_at, waiter=None):
        seq = ledger.start(sent_at)
        user = users[seq % len(users)]
        doctor = seq % len(doctors)
        body = json_body({"from": doctors[doctor], "to": user, "contentType": 1,
                          "content": content_for(seq)})

        def answered(status, data):
            if status in (200, 201):
                ledger.answered(seq, _message_id(data), [user])
            else:
                ledger.failed(seq, f"HTTP {status}")
            if waiter is not None:
                waiter.set_result(None)

        pool.request("POST", "/api/v1/chats/pm", doctor_lines[doctor], body, answered)

    async def issue_and_wait():
        waiter = asyncio.get_running_loop().create_future()
        issue(now(), waiter)
        await waiter

    def first_frame(client, frame, at):
        if frame.get("type") == "message":
            user = state[client.user_id]
            message_id = frame["message"]["id"]
            user.first.append(message_id)
            user.resume = max(user.resume, message_id)

    def send_sync(client, user, after):
        user.sync = {"after": after, "waiting": set(after),
                     "received": {channel: set() for channel in after}}
        client.send({"type": "sync", "after": after, "limit": limit})

    def second_frame(client, frame, at):
        user = state[client.user_id]
        kind = frame.get("type")
        if kind == "welcome":
            send_sync(client, user, {"p2p": user.resume, "group": 0, "system": 0})
        elif kind == "message":
            message = frame["message"]
            message_id, channel = message["id"], message["channel"]
            user.second.append((message_id, user.synced_at is not None))
            user.owed.discard(message_id)
            sync = user.sync
            if sync and channel in sync["waiting"] and message_id > sync["after"][channel]:
                sync["received"][channel].add(message_id)
        elif kind == "synced":
            sync = user.sync
            channel = frame["channel"]
            if not sync or channel not in sync["waiting"]:
                return
            if frame["hasMore"]:
                # The batch contained the `limit` smallest ids above `after`, and
                # live frames mixed in are among them or larger (as in the SDK).
                ids = sorted(sync["received"][channel])
                if len(ids) >= limit:
                    start = ids[limit - 1]
                elif ids:
                    start = ids[-1]
                else:
                    start = 0
                sync["after"][channel] = start
                sync["received"][channel] = set()
                client.send({"type": "sync", "after": {channel: start}, "limit": limit})
                return
            sync["waiting"].discard(channel)
            if not sync["waiting"]:
                user.synced_at = at

    clients, durations, errors, elapsed = await connect_all(
        lambda index: port, users, tokens, first_frame, CONNECT_CONCURRENCY)
    result = {"users": len(users), "connect": connect_figures(durations, errors, elapsed)}

    live_rate = params["live_rate"]
    stop_live = [False]
    live = asyncio.ensure_future(open_loop(
        live_rate, 3600, issue, ledger, 10 * live_rate, stop=lambda: stop_live[0]))
    await asyncio.sleep(params["live_seconds"])

    for client in clients.values():
        client.abort()
    dropped_at = now()
    await closed_loop(120.0, 64, issue_and_wait, limit=params["backlog_per_user"] * len(users))
    while ledger.pending > 0 and now() - dropped_at < 60:
        await asyncio.sleep(0.01)
    result["backlog_seconds"] = round(now() - dropped_at, 3)
    for user_id, user in state.items():
        user.owed = set(ledger.expected[user_id]) - set(user.first)
    owed_total = sum(len(user.owed) for user in state.values())

    reconnect_at = now()
    with CpuMeter(watched_pids(params)) as cpu:
        second, r_durations, r_errors, r_elapsed = await connect_all(
            lambda index: port, users, tokens, second_frame,
            params.get("storm_concurrency") or len(users))
        deadline = now() + params.get("catch_up_timeout", 60.0)
        while now() < deadline and any(u.synced_at is None for u in state.values()):
            await asyncio.sleep(0.01)
    synced = [u.synced_at for u in state.values() if u.synced_at is not None]
    result.update(
        owed_messages=owed_total,
        reconnect=connect_figures(r_durations, r_errors, r_elapsed),
        caught_up_users=len(synced),
        caught_up_seconds=round(max(synced) - reconnect_at, 3) if synced else None,
        caught_up_p50_s=round(percentile([t - reconnect_at for t in synced], 0.5), 3)
        if synced else None,
        owed_missing_at_synced=sum(len(u.owed) for u in state.values()),
    )
    result["cpu"] = cpu.result

    await asyncio.sleep(params.get("after_seconds", 2.0))
    stop_live[0] = True
    await live
    await ledger.drain(params.get("drain_seconds", 10.0))
    await asyncio.sleep(0.5)
    await close_all(second)
    pool.close()
    result["check"] = storm_check(ledger, state, r_errors)
    result["check"]["send_errors"] = dict(ledger.errors)
    return result


def storm_check(ledger, state, connect_errors):
    """Check that every stored message reached its user once over both connections.

    Live frames may interleave with the sync replay, so ids on the second
    connection are in order only after the final ``synced``. An id that
    arrives twice is a duplicate wherever it comes from. ``live_then_replayed``
    counts the duplicates that came first live and then again in the replay.
    """
    lost = duplicated = out_of_order = unexpected = live_then_replayed = 0
    for user_id, user in state.items():
        expected = set(ledger.expected.get(user_id, {}))
        seen, last = set(), 0
        for message_id in user.first:
            if message_id in seen:
                duplicated += 1
            elif message_id < last:
                out_of_order += 1
            seen.add(message_id)
            last = max(last, message_id)
        for message_id, after_synced in user.second:
            if message_id in seen:
                duplicated += 1
                if not after_synced and message_id not in user.first:
                    live_then_replayed += 1
                continue
            if after_synced and message_id < last:
                out_of_order += 1
            seen.add(message_id)
            last = max(last, message_id)
        lost += len(expected - seen)
        unexpected += len(seen - expected)
    not_synced = sum(1 for user in state.values() if user.synced_at is None)
    return {
        "passed": not (lost or duplicated or out_of_order or unexpected or not_synced
                       or connect_errors),
        "lost": lost, "duplicated": duplicated, "out_of_order": out_of_order,
        "unexpected": unexpected, "live_then_replayed": live_then_replayed,
        "not_synced": not_synced, "connect_errors": dict(connect_errors),
        "expected_deliveries": ledger.expected_count,
    }


WORKLOADS = {
    "idle": idle_capacity,
    "p2p": p2p_rest,
    "ws": ws_p2d,
    "group": group_fanout,
    "storm": reconnect_storm,
}


def run_workload(name, params):
    """Entry point inside the load-generator process."""
    started_cpu = time.process_time()
    started = now()
    result = asyncio.run(WORKLOADS[name](params))
    result["loadgen"] = {"cpu_s": round(time.process_time() - started_cpu, 3),
                         "wall_s": round(now() - started, 3)}
    return result
