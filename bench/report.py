"""Render the results of bench/run.py as Markdown tables."""

TARGETS_HEADER = "| target | measured | result |"


def render(results):
    lines = [_machine(results.get("machine", {})), "", _table(results), ""]
    lines += _targets(results)
    if "profile" in results:
        lines += ["", *_profile(results["profile"])]
    if "seconds" in results:
        lines += ["", f"Workloads took {results['seconds']:.0f} s ({results['sizes']} sizes)."]
    return "\n".join(lines)


def _machine(facts):
    if not facts:
        return "(no machine facts: the run stopped before the database was ready)"
    return (
        f"Machine: {facts.get('cores')} cores, {facts.get('cpu')}, "
        f"{facts.get('memory_gib')} GiB; MariaDB {facts.get('mariadb')} "
        f"(innodb_flush_log_at_trx_commit={facts.get('innodb_flush_log_at_trx_commit')}, "
        f"sync_binlog={facts.get('sync_binlog')}, log_bin={facts.get('log_bin')}); "
        f"Python {facts.get('python')}; server {facts.get('server_dir')} "
        f"(git: {facts.get('server_commit')}); "
        f"{'server on core 0, load generator on core 1' if facts.get('pinned') else 'no pinning'}"
        f"; load average at start {facts.get('loadavg_at_start')}"
    )


# -- formatting helpers ------------------------------------------------------

def _num(value, digits=0):
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def _lat(step, prefix=""):
    return f"{_num(step.get(prefix + 'p50_ms'), 1)}/{_num(step.get(prefix + 'p99_ms'), 1)}"


def _ratio(ours, relay):
    if not ours or not relay:
        return ""
    return f"{ours / relay:.2f}"


def _cpu(figures, with_db=True):
    cpu = figures.get("cpu") if figures else None
    if not cpu or not cpu.get("wall_s"):
        return ""
    wall = cpu["wall_s"]
    parts = [cpu.get("server_cpu_s", 0) + cpu.get("server2_cpu_s", 0)]
    if with_db:
        parts.append(cpu.get("mariadbd_cpu_s", 0))
    parts.append(cpu.get("loadgen_cpu_s", 0))
    parts.append(cpu.get("other_cpu_s", 0))
    return "/".join(f"{100 * part / wall:.0f}" for part in parts)


def _check(result):
    if result is None:
        return "not run"
    if "error" in result:
        return f"ERROR {result['error'][:60]}"
    check = result.get("check", {})
    if check.get("passed"):
        errors = check.get("send_errors") or {}
        note = f" ({sum(errors.values())} send errors)" if errors else ""
        return "ok" + note
    problems = [f"{name} {check[name]}" for name in
                ("lost", "duplicated", "out_of_order", "unexpected", "not_synced", "dropped")
                if check.get(name)]
    if check.get("connect_errors"):
        problems.append(f"connect errors {sum(check['connect_errors'].values())}")
    return "FAILED " + ", ".join(problems)


def _step_note(step):
    notes = []
    if step.get("overloaded"):
        notes.append("overloaded")
    elif not step.get("drained", True):
        notes.append("not drained")
    return f" ({', '.join(notes)})" if notes else ""


class _Rows:
    def __init__(self):
        self.rows = []

    def add(self, workload, figure, ours="", relay="", ratio="", cpu_ours="",
            cpu_relay="", check=""):
        self.rows.append([workload, figure, ours, relay, ratio, cpu_ours, cpu_relay, check])


def _table(results):
    ours, relay = results.get("ours", {}), results.get("relay", {})
    rows = _Rows()
    _idle_rows(rows, ours.get("idle"), relay.get("idle"))
    _p2p_rows(rows, ours.get("p2p"), relay.get("p2p"))
    _ws_rows(rows, ours.get("ws"), relay.get("ws"))
    _group_rows(rows, ours.get("group"), relay.get("group"))
    _storm_rows(rows, ours.get("storm"))
    _cluster_rows(rows, results.get("cluster", {}))
    header = ["workload", "figure", "ours", "bare relay", "ours/relay",
              "CPU % ours srv/db/load/other", "CPU % relay srv/db/load/other", "check ours; relay"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows.rows]
    return "\n".join(lines)


def _both_checks(ours, relay):
    if relay is None:
        return _check(ours)
    return f"{_check(ours)}; {_check(relay)}"


def _idle_rows(rows, ours, relay):
    if not ours and not relay:
        return
    ours, relay = ours or {}, relay or {}
    count = ours.get("sockets") or relay.get("sockets")
    rows.add(f"idle sockets ({_num(count)})", "time to connect all, s",
             _num(ours.get("seconds"), 2), _num(relay.get("seconds"), 2),
             _ratio(ours.get("seconds"), relay.get("seconds")),
             _cpu(ours), _cpu(relay), _both_checks(ours, relay))
    rows.add("", "welcome p50/p99, ms",
             f"{_num(ours.get('welcome_p50_ms'), 1)}/{_num(ours.get('welcome_p99_ms'), 1)}",
             f"{_num(relay.get('welcome_p50_ms'), 1)}/{_num(relay.get('welcome_p99_ms'), 1)}")
    rows.add("", "server RSS with all open, MB", _num(ours.get("rss_after_mb"), 1),
             _num(relay.get("rss_after_mb"), 1),
             _ratio(ours.get("rss_after_mb"), relay.get("rss_after_mb")))
    rows.add("", "RSS per socket, KB", _num(ours.get("rss_per_socket_kb"), 1),
             _num(relay.get("rss_per_socket_kb"), 1),
             _ratio(ours.get("rss_per_socket_kb"), relay.get("rss_per_socket_kb")))


def _steps_by_rate(result):
    return {step["rate"]: step for step in (result or {}).get("steps", [])}


def _p2p_rows(rows, ours, relay):
    if not ours and not relay:
        return
    ours_steps, relay_steps = _steps_by_rate(ours), _steps_by_rate(relay)
    first = True
    for rate in sorted(set(ours_steps) | set(relay_steps)):
        mine, theirs = ours_steps.get(rate, {}), relay_steps.get(rate, {})
        rows.add(f"p2p REST open loop {rate}/s" if first else f"… {rate}/s",
                 "delivered msg/s; p50/p99 send→receive ms",
                 f"{_num(mine.get('delivered_per_s'))}; {_lat(mine)}{_step_note(mine)}",
                 f"{_num(theirs.get('delivered_per_s'))}; {_lat(theirs)}{_step_note(theirs)}",
                 _ratio(mine.get("delivered_per_s"), theirs.get("delivered_per_s")),
                 _cpu(mine), _cpu(theirs), _both_checks(ours, relay) if first else "")
        first = False
    mine, theirs = (ours or {}).get("closed", {}), (relay or {}).get("closed", {})
    if mine or theirs:
        rows.add(f"p2p REST closed loop ({mine.get('concurrency') or theirs.get('concurrency')}"
                 " in flight)", "delivered msg/s; p50/p99 ms",
                 f"{_num(mine.get('delivered_per_s'))}; {_lat(mine)}",
                 f"{_num(theirs.get('delivered_per_s'))}; {_lat(theirs)}",
                 _ratio(mine.get("delivered_per_s"), theirs.get("delivered_per_s")),
                 _cpu(mine), _cpu(theirs))
    rows.add("", "server CPU per message, µs (IM process + mariadbd)",
             _cpu_per(mine, "delivered"), _cpu_per(theirs, "delivered"),
             _ratio(_cpu_total(mine, "delivered"), _cpu_total(theirs, "delivered")))
    rows.add("p2p REST", "highest open-loop rate with p99 < 50 ms, msg/s",
             _num(highest_rate_under(ours, 50)), _num(highest_rate_under(relay, 50)))


def _cpu_total(figures, count_key):
    """CPU µs of the server and mariadbd per counted item, or None."""
    cpu, count = (figures or {}).get("cpu"), (figures or {}).get(count_key)
    if not cpu or not count:
        return None
    server = cpu.get("server_cpu_s", 0) + cpu.get("server2_cpu_s", 0)
    return (server + cpu.get("mariadbd_cpu_s", 0)) / count * 1e6


def _cpu_per(figures, count_key):
    cpu, count = (figures or {}).get("cpu"), (figures or {}).get(count_key)
    if not cpu or not count:
        return "–"
    server = cpu.get("server_cpu_s", 0) + cpu.get("server2_cpu_s", 0)
    return (f"{server / count * 1e6:,.0f} + {cpu.get('mariadbd_cpu_s', 0) / count * 1e6:,.0f}")


def highest_rate_under(result, p99_ms):
    """Return the largest offered rate whose step kept up with p99 under the bound."""
    best = None
    for step in (result or {}).get("steps", []):
        good = (not step.get("overloaded") and step.get("drained")
                and step.get("p99_ms") is not None and step["p99_ms"] < p99_ms)
        if good and (best is None or step["rate"] > best):
            best = step["rate"]
    return best


def _ws_rows(rows, ours, relay):
    if not ours and not relay:
        return
    ours_steps, relay_steps = _steps_by_rate(ours), _steps_by_rate(relay)
    first = True
    for rate in sorted(set(ours_steps) | set(relay_steps)):
        mine, theirs = ours_steps.get(rate, {}), relay_steps.get(rate, {})
        rows.add(f"WS patient→doctor {rate}/s" if first else f"… {rate}/s",
                 "delivered msg/s; p50/p99 send→sent; p50/p99 send→doctor ms",
                 f"{_num(mine.get('delivered_per_s'))}; {_lat(mine, 'answer_')}; "
                 f"{_lat(mine)}{_step_note(mine)}",
                 f"{_num(theirs.get('delivered_per_s'))}; {_lat(theirs, 'answer_')}; "
                 f"{_lat(theirs)}{_step_note(theirs)}",
                 _ratio(mine.get("delivered_per_s"), theirs.get("delivered_per_s")),
                 _cpu(mine), _cpu(theirs), _both_checks(ours, relay) if first else "")
        first = False


def _group_rows(rows, ours, relay):
    if not ours and not relay:
        return
    ours_steps, relay_steps = _steps_by_rate(ours), _steps_by_rate(relay)
    members = (ours or relay or {}).get("members", 200)
    first = True
    for rate in sorted(set(ours_steps) | set(relay_steps)):
        mine, theirs = ours_steps.get(rate, {}), relay_steps.get(rate, {})
        rows.add(f"group fan-out, {members} members, {rate} gm/s" if first else
                 f"… {rate} gm/s",
                 "deliveries/s; p50/p99 send→receive ms",
                 f"{_num(mine.get('delivered_per_s'))}; {_lat(mine)}{_step_note(mine)}",
                 f"{_num(theirs.get('delivered_per_s'))}; {_lat(theirs)}{_step_note(theirs)}",
                 _ratio(mine.get("delivered_per_s"), theirs.get("delivered_per_s")),
                 _cpu(mine), _cpu(theirs), _both_checks(ours, relay) if first else "")
        first = False
    rows.add("group fan-out", "best sustained deliveries/s",
             _num(best_fanout(ours)), _num(best_fanout(relay)),
             _ratio(best_fanout(ours), best_fanout(relay)))
    mine = (ours or {}).get("steps", [{}])[-1] if (ours or {}).get("steps") else {}
    theirs = (relay or {}).get("steps", [{}])[-1] if (relay or {}).get("steps") else {}
    rows.add("", "CPU per delivery in the last step, µs (IM process + mariadbd)",
             _cpu_per(mine, "delivered"), _cpu_per(theirs, "delivered"),
             _ratio(_cpu_total(mine, "delivered"), _cpu_total(theirs, "delivered")))


def best_fanout(result):
    """Return the highest deliveries/s of a step that kept up (drained, not overloaded)."""
    rates = [step["delivered_per_s"] for step in (result or {}).get("steps", [])
             if step.get("drained") and not step.get("overloaded")]
    return max(rates) if rates else None


def _storm_rows(rows, ours):
    if not ours:
        return
    reconnect = ours.get("reconnect", {})
    rows.add(f"reconnect storm ({_num(ours.get('users'))} sockets, "
             f"{_num(ours.get('owed_messages'))} missed messages)",
             "all caught up after, s (p50 user)",
             f"{_num(ours.get('caught_up_seconds'), 2)} ({_num(ours.get('caught_up_p50_s'), 2)})",
             "n/a: no storage", "", _cpu(ours), "", _check(ours))
    rows.add("", "reconnect welcome p50/p99/max, ms",
             f"{_num(reconnect.get('welcome_p50_ms'))}/{_num(reconnect.get('welcome_p99_ms'))}"
             f"/{_num(reconnect.get('welcome_max_ms'))}")


def _cluster_rows(rows, cluster):
    one, two = cluster.get("1p"), cluster.get("2p")
    if not one and not two:
        return
    mode = "Redis" if cluster.get("redis") else "no Redis, same-process recipients"
    one_closed, two_closed = (one or {}).get("closed", {}), (two or {}).get("closed", {})
    rows.add(f"p2p REST closed loop, 1 vs 2 processes ({mode})",
             "delivered msg/s; p50/p99 ms: 1 process",
             f"{_num(one_closed.get('delivered_per_s'))}; {_lat(one_closed)}", "", "",
             _cpu(one_closed), "", _check(one))
    rows.add("", "… 2 processes",
             f"{_num(two_closed.get('delivered_per_s'))}; {_lat(two_closed)}", "", "",
             _cpu(two_closed), "", _check(two))
    rows.add("", "2 processes / 1 process",
             _ratio(two_closed.get("delivered_per_s"), one_closed.get("delivered_per_s")))


# -- targets -----------------------------------------------------------------

def _target_line(name, measured, value, goal, at_least):
    if value is None:
        return f"| {name} | not measured | – |"
    met = value >= goal if at_least else value < goal
    verdict = "met" if met else "missed"
    if at_least:
        return f"| {name} | {measured} | {verdict}: {value / goal:.2f}× the target |"
    return f"| {name} | {measured} | {verdict}: {value / goal:.2f}× the bound |"


def _targets(results):
    ours, relay = results.get("ours", {}), results.get("relay", {})
    lines = ["Targets:", "", TARGETS_HEADER, "|---|---|---|"]

    mine = (ours.get("p2p") or {}).get("closed", {}).get("delivered_per_s")
    theirs = (relay.get("p2p") or {}).get("closed", {}).get("delivered_per_s")
    ratio = mine / theirs if mine and theirs else None
    lines.append(_target_line(
        "persisted p2p ≥ 0.5 × bare relay (closed loop)",
        f"{ratio:.2f}× ({_num(mine)} vs {_num(theirs)} msg/s)" if ratio else "–",
        ratio, 0.5, True))

    step = _steps_by_rate(ours.get("p2p")).get(500)
    p99 = step.get("p99_ms") if step else None
    lines.append(_target_line("p99 send→receive < 50 ms at 500 msg/s",
                              f"{_num(p99, 1)} ms", p99, 50.0, False))

    idle = ours.get("idle") or {}
    rss = idle.get("rss_after_mb")
    count = idle.get("sockets")
    label = f"{_num(rss, 1)} MB with {_num(count)} sockets"
    if count and count < 10000:
        label += " (fewer than 10,000: run without --quick)"
    lines.append(_target_line("10,000 idle sockets < 400 MB RSS", label, rss, 400.0, False))

    fanout = best_fanout(ours.get("group"))
    lines.append(_target_line("200-member fan-out ≥ 20,000 deliveries/s",
                              f"{_num(fanout)} deliveries/s", fanout, 20000.0, True))

    cluster = results.get("cluster", {})
    one = (cluster.get("1p") or {}).get("closed", {}).get("delivered_per_s")
    two = (cluster.get("2p") or {}).get("closed", {}).get("delivered_per_s")
    scale = two / one if one and two else None
    lines.append(_target_line("2 processes ≥ 1.7 × 1 process",
                              f"{scale:.2f}× ({_num(two)} vs {_num(one)} msg/s)"
                              if scale else "–", scale, 1.7, True))
    return lines


# -- profile -----------------------------------------------------------------

def _profile(profile):
    if "error" in profile:
        return [f"Profile: {profile['error']}"]
    lines = [
        f"Profile (py-spy --gil, {profile['samples']} samples over {profile['messages']:,} "
        f"messages at {_num(profile.get('delivered_per_s'))} msg/s): GIL held "
        f"{profile['gil_us_per_msg']} µs/msg; server CPU "
        f"{profile.get('server_cpu_us_per_msg')} µs/msg; mariadbd CPU "
        f"{profile.get('mariadbd_cpu_us_per_msg')} µs/msg; other processes kept "
        f"{profile.get('other_cpu_cores')} cores busy.",
        "GIL time by thread: " + ", ".join(
            f"{name} {value} µs/msg" for name, value in profile["threads"].items()),
        "",
        "| function (inclusive) | what | µs/msg | share of GIL time |",
        "|---|---|---|---|",
    ]
    for item in profile["key_functions"]:
        lines.append(f"| {item['function']} | {item['meaning']} | {item['us_per_msg']} "
                     f"| {item['share'] * 100:.1f}% |")
    lines += ["", "| self time by component | µs/msg | share |", "|---|---|---|"]
    for item in profile["by_component"]:
        lines.append(f"| {item['component']} | {item['us_per_msg']} "
                     f"| {item['share'] * 100:.1f}% |")
    lines += ["", "| self time by function | µs/msg | share |", "|---|---|---|"]
    for item in profile["top_self"]:
        lines.append(f"| {item['frame']} | {item['us_per_msg']} | {item['share'] * 100:.1f}% |")
    return lines
