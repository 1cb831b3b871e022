"""Turn py-spy's raw stacks of the IM server into costs per message.

run.py records with ``--gil --function --threads``. Each sample is the one
thread that held the GIL at that tick, so samples / RATE is the time the
interpreter was busy. (Samples of f) / RATE / messages is then f's share of
that time per message. Time spent without the GIL, such as waiting for
MariaDB, is not in it, so the report shows the server's CPU seconds from
/proc beside it. A thread that the kernel deschedules while it holds the
GIL still counts, so on a busy machine these figures run high.
"""

from collections import Counter

RATE = 250
TOP = 15

# Functions whose inclusive time shows where a message's cost goes.
KEY_FUNCTIONS = [
    ("SendHandler.post", "REST send handler, all of it"),
    ("BaseHandler.prepare", "request id and token check"),
    ("TokenService.verify", "JWT HS256 verify"),
    ("send_fields", "body validation"),
    ("BaseHandler.write_json", "answer encode and write"),
    ("Dispatcher._store_batch_tx", "send transaction body (db thread)"),
    ("_BatchCache.user_exists", "user lookups in the transaction"),
    ("MsgSequence.lock", "channel lock row SELECT ... FOR UPDATE"),
    ("MsgP2P.insert_many", "message INSERT"),
    ("Dispatcher._count", "unread counter upsert"),
    ("Database._run_once", "transaction incl. begin/commit"),
    ("Dispatcher.deliver", "live delivery after commit"),
    ("ConnectionRegistry.send", "frame encode and socket writes"),
    ("WebSocketHandler.write_message", "Tornado WebSocket frame write"),
    ("HTTP1ServerConnection._server_request_loop", "Tornado HTTP request loop"),
]


def parse(path):
    """Yield ``(thread name, [frames root first], count)`` from a raw file."""
    # Only "\n" ends a record: a frame name read while the process ran
    # (--nonblocking) can contain a stray "\r", which universal newlines
    # would take for a line break.
    with open(path, encoding="utf-8", errors="replace", newline="\n") as raw:
        for line in raw:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            head, _, frames = stack.partition(": ")
            names = frames.split(";")
            yield names[0], names[1:], int(count)


def component(frame):
    """Return the module group of a frame: a package, or a project file."""
    location = frame[frame.rfind("(") + 1: frame.rfind(":")]
    parts = location.split("/")
    if parts[0] in ("tornado", "asyncio", "concurrent", "json"):
        return "/".join(parts[:2])
    if parts[0] in ("handlers", "services", "models"):
        return location
    return parts[0]


def summarize(path, messages, load_result):
    """Top costs per message from a raw py-spy file.

    ``messages`` is the count delivered while py-spy sampled (its seconds
    times the closed loop's delivered rate).
    """
    try:
        samples = list(parse(path))
    except OSError as error:
        return {"error": f"no py-spy output: {error}"}
    total = sum(count for _, _, count in samples)
    if not total or not messages:
        return {"error": f"nothing to report ({total} samples, {messages} messages)"}

    def per_message_us(count):
        return round(count / RATE / messages * 1e6, 1)

    threads, leaves, groups, inclusive = Counter(), Counter(), Counter(), Counter()
    for thread, frames, count in samples:
        threads["IOLoop thread" if thread == "MainThread" else
                 "database threads" if thread.startswith("db") else thread] += count
        if frames:
            leaves[frames[-1]] += count
            groups[component(frames[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count

    key_costs = []
    for name, meaning in KEY_FUNCTIONS:
        count = sum(c for frame, c in inclusive.items() if frame.startswith(name + " "))
        key_costs.append({"function": name, "meaning": meaning,
                          "us_per_msg": per_message_us(count),
                          "share": round(count / total, 3)})

    closed = load_result.get("closed", {})
    cpu = closed.get("cpu", {})
    return {
        "messages": messages,
        "samples": total,
        "gil_busy_s": round(total / RATE, 2),
        "wall_s": cpu.get("wall_s"),
        "delivered_per_s": closed.get("delivered_per_s"),
        # From /proc over the whole closed loop, which outlasts the sampling.
        "server_cpu_us_per_msg": _per(cpu.get("server_cpu_s"), closed.get("delivered")),
        "mariadbd_cpu_us_per_msg": _per(cpu.get("mariadbd_cpu_s"), closed.get("delivered")),
        "other_cpu_cores": round(cpu["other_cpu_s"] / cpu["wall_s"], 2)
        if cpu.get("wall_s") and "other_cpu_s" in cpu else None,
        "gil_us_per_msg": per_message_us(total),
        "threads": {name: per_message_us(count) for name, count in threads.most_common()},
        "top_self": [{"frame": frame, "us_per_msg": per_message_us(count),
                      "share": round(count / total, 3)}
                     for frame, count in leaves.most_common(TOP)],
        "by_component": [{"component": name, "us_per_msg": per_message_us(count),
                          "share": round(count / total, 3)}
                         for name, count in groups.most_common(TOP)],
        "key_functions": key_costs,
        "load": closed,
    }


def _per(seconds, messages):
    if seconds is None or not messages:
        return None
    return round(seconds / messages * 1e6, 1)
