"""Benchmark the IM server against a storage-free relay and print a table.

    .venv/bin/python bench/run.py [--quick] [--profile] [--json FILE]

It creates a fresh MariaDB database, starts the IM server (IM_PROFILE=prod,
pushes off) and bench/bare_relay.py on 127.0.0.1, runs every workload of
bench/workloads.py against each in a separate load-generator process, stops
everything, drops the database and prints the results. docs/benchmarks.md
explains the workloads, the figures and the last full run.
"""

import argparse
import json
import multiprocessing
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path

import pymysql

import profiling
import report
import workloads
from clients import mint_token

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
SERVER_CORES = {0}
LOADGEN_CORES = {1}
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 30.0
GROUP_ID = "bench-g200"

SIZES = {
    "full": {
        "idle_sockets": 10000,
        "p2p_recipients": 200, "p2p_rates": [100, 250, 500, 1000, 2000],
        "step_seconds": 6.0, "closed_seconds": 8.0,
        "ws_patients": 300, "ws_rates": [250, 500, 1000, 2000],
        "group_members": 200, "group_rates": [25, 50, 100, 150, 200, 300],
        "group_step_seconds": 4.0,
        "storm_users": 2000, "storm_backlog": 3, "storm_live_rate": 100,
        "cluster_seconds": 8.0, "profile_seconds": 15.0, "drain_seconds": 10.0,
    },
    "quick": {
        "idle_sockets": 1000,
        "p2p_recipients": 100, "p2p_rates": [100, 500],
        "step_seconds": 2.0, "closed_seconds": 3.0,
        "ws_patients": 100, "ws_rates": [250],
        "group_members": 200, "group_rates": [25, 100],
        "group_step_seconds": 2.0,
        "storm_users": 300, "storm_backlog": 3, "storm_live_rate": 50,
        "cluster_seconds": 3.0, "profile_seconds": 5.0, "drain_seconds": 5.0,
    },
}

# User id ranges, one per workload, so that no workload receives another's
# messages or shares its unread counts.
PATIENT_RANGES = {
    "idle": 1, "p2p": 1, "ws": 2001, "group": 3001, "storm": 5001,
    "cluster1": 8001, "cluster2": 8501, "profile": 9001,
}
DOCTOR_RANGES = {
    "p2p": (1, 20), "ws": (21, 30), "group": (40, 40), "storm": (41, 60),
    "cluster1": (61, 80), "cluster2": (81, 100), "profile": (1, 20),
}
PATIENT_COUNT = 10000
DOCTOR_COUNT = 100


def patients(workload, count):
    first = PATIENT_RANGES[workload]
    return [f"p{number:05d}" for number in range(first, first + count)]


def doctors(workload):
    first, last = DOCTOR_RANGES[workload]
    return [f"d{number:03d}" for number in range(first, last + 1)]


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def can_pin():
    try:
        return {0, 1} <= os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return False


class Processes:
    """Every child this run starts, so that all of them stop, also on failure."""

    def __init__(self, log_dir):
        self.log_dir = log_dir
        self.children = []

    def start(self, name, command, env, cwd, cores):
        log = open(self.log_dir / f"{name}.log", "wb")

        def pin():
            if cores:
                os.sched_setaffinity(0, cores)

        child = subprocess.Popen(command, cwd=cwd, env=env, stdout=log,
                                 stderr=subprocess.STDOUT, preexec_fn=pin,
                                 start_new_session=True)
        child.bench_name, child.bench_log = name, log
        self.children.append(child)
        return child

    def stop(self, child):
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                print(f"{child.bench_name} did not stop within {STOP_TIMEOUT_SECONDS:.0f} s;"
                      " killing it", file=sys.stderr)
                child.kill()
                child.wait()
        child.bench_log.close()
        if child in self.children:
            self.children.remove(child)

    def stop_all(self):
        for child in list(self.children):
            self.stop(child)

    def tail(self, child, lines=20):
        path = self.log_dir / f"{child.bench_name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_healthy(processes, child, port):
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"{child.bench_name} exited with {child.returncode} at start:\n"
                               f"{processes.tail(child)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{child.bench_name} not healthy on port {port} after "
                       f"{START_TIMEOUT_SECONDS:.0f} s:\n{processes.tail(child)}")


class Bench:
    def __init__(self, args):
        self.args = args
        self.sizes = SIZES["quick" if args.quick else "full"]
        self.secret = secrets.token_urlsafe(48)
        self.pin = can_pin() and not args.no_pin
        self.log_dir = Path(tempfile.mkdtemp(prefix="im-bench-"))
        self.processes = Processes(self.log_dir)
        self.database = f"bench_{time.strftime('%Y%m%d%H%M%S')}_{os.getpid()}"
        self.db_url = (f"mysql+pymysql://{args.mysql_user}@{args.mysql_host}:"
                       f"{args.mysql_port}/{self.database}?charset=utf8mb4")
        self.server_dir = Path(args.server_dir).resolve()
        self.results = {"sizes": "quick" if args.quick else "full", "ours": {},
                        "relay": {}, "cluster": {}}
        self.db_created = False
        self.redis_url = None

    # -- database ------------------------------------------------------------

    def mysql(self, database=None):
        args = self.args
        return pymysql.connect(host=args.mysql_host, port=args.mysql_port,
                               user=args.mysql_user, database=database,
                               charset="utf8mb4", autocommit=True)

    def create_database(self):
        with self.mysql() as conn, conn.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{self.database}` CHARACTER SET utf8mb4"
                           " COLLATE utf8mb4_unicode_ci")
        self.db_created = True
        initdb = subprocess.run(
            [sys.executable, "server.py", "initdb", "--db-url", self.db_url],
            cwd=self.server_dir, env=self.server_env(free_port(), "bench-initdb"),
            capture_output=True, text=True, timeout=120,
        )
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{initdb.stdout}{initdb.stderr}")
        now_ms = int(time.time() * 1000)
        rows = [(f"p{n:05d}", f"患者{n}", "patient", now_ms, now_ms)
                for n in range(1, PATIENT_COUNT + 1)]
        rows += [(f"d{n:03d}", f"医生{n}", "doctor", now_ms, now_ms)
                 for n in range(1, DOCTOR_COUNT + 1)]
        with self.mysql(self.database) as conn, conn.cursor() as cursor:
            cursor.executemany("INSERT INTO talk_user (id, name, role, created_at, updated_at)"
                               " VALUES (%s, %s, %s, %s, %s)", rows)

    def drop_database(self):
        if not self.db_created or self.args.keep_db:
            return
        with self.mysql() as conn, conn.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{self.database}`")
        self.db_created = False

    def machine_facts(self):
        facts = {"cores": os.cpu_count(), "python": platform.python_version(),
                 "pinned": self.pin}
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    facts["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            facts["memory_gib"] = round(int(meminfo.readline().split()[1]) / 2**20, 1)
        with self.mysql() as conn, conn.cursor() as cursor:
            cursor.execute("SELECT VERSION()")
            facts["mariadb"] = cursor.fetchone()[0]
            for name in ("innodb_flush_log_at_trx_commit", "sync_binlog", "log_bin",
                         "innodb_buffer_pool_size"):
                cursor.execute("SHOW GLOBAL VARIABLES LIKE %s", (name,))
                row = cursor.fetchone()
                facts[name] = row[1] if row else None
        with open("/proc/loadavg", encoding="ascii") as loadavg:
            facts["loadavg_at_start"] = " ".join(loadavg.read().split()[:3])
        facts["server_commit"] = git_describe(self.server_dir)
        facts["server_dir"] = str(self.server_dir)
        facts["redis_cluster_support"] = self.redis_supported()
        return facts

    # -- servers -------------------------------------------------------------

    def server_env(self, port, node, redis=False):
        env = {key: value for key, value in os.environ.items() if not key.startswith("IM_")}
        env.update(IM_PROFILE="prod", IM_DATABASE_URL=self.db_url, IM_SECRET=self.secret,
                   IM_ADDRESS="127.0.0.1", IM_PORT=str(port), IM_NODE_NAME=node)
        # All load comes from 127.0.0.1 and a few senders, so the flood
        # limits would reject most of it: 0 turns them off. Trees without
        # these limits ignore the variables.
        env.update(IM_REST_USER_SENDS_PER_SECOND="0", IM_REST_IP_SENDS_PER_SECOND="0",
                   IM_WS_SENDS_PER_SECOND="0")
        if redis:
            env["IM_REDIS_URL"] = self.redis_url
        return env

    def redis_supported(self):
        config = self.server_dir / "conf" / "__init__.py"
        return "IM_REDIS_URL" in config.read_text(encoding="utf-8")

    def start_ours(self, name, cores, redis=False):
        port = free_port()
        child = self.processes.start(
            name, [sys.executable, "server.py", "--port", str(port)],
            self.server_env(port, name, redis), self.server_dir, cores if self.pin else None)
        wait_healthy(self.processes, child, port)
        return child, port

    def start_relay(self, cores):
        port = free_port()
        child = self.processes.start(
            "relay", [sys.executable, str(BENCH_DIR / "bare_relay.py"), "--port", str(port),
                      "--secret", self.secret],
            dict(os.environ), BENCH_DIR, cores if self.pin else None)
        wait_healthy(self.processes, child, port)
        return child, port

    def create_group(self, port, members):
        token = mint_token(self.secret, "platform", "system")
        body = json.dumps({"id": GROUP_ID, "name": "随访团队 200", "type": 1,
                           "members": members}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v1/groups", data=body, method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            if answer.status != 201:
                raise RuntimeError(f"creating {GROUP_ID} returned HTTP {answer.status}")

    # -- load generator ------------------------------------------------------

    def load(self, name, params, cores=None, timeout=900):
        """Run one workload in a fresh load-generator process; return its result."""
        return self.finish_load(self.start_load(name, params, cores), timeout)

    def start_load(self, name, params, cores=None):
        if not self.pin:
            cores = None
        elif cores is None:
            cores = LOADGEN_CORES
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        worker = context.Process(target=loadgen_main, args=(name, params, queue, cores),
                                 name=f"loadgen-{name}")
        worker.start()
        return name, worker, queue

    def finish_load(self, started, timeout=900):
        name, worker, queue = started
        try:
            outcome = queue.get(timeout=timeout)
        except Exception as error:  # queue.Empty or a broken pipe: report the workload
            outcome = {"error": f"no result from load generator: {type(error).__name__}"}
        finally:
            worker.join(10)
            if worker.is_alive():
                worker.terminate()
                worker.join(5)
            if worker.is_alive():
                worker.kill()
                worker.join()
        if "error" in outcome:
            print(f"  {name}: {outcome['error']}", file=sys.stderr)
        return outcome

    def common(self, child, port):
        return {"port": port, "ports": [port], "secret": self.secret,
                "server_pid": child.pid, "db_pid": self.db_pid,
                "drain_seconds": self.sizes["drain_seconds"]}

    # -- the run -------------------------------------------------------------

    def run_target(self, target):
        sizes = self.sizes
        print(f"== {target}", flush=True)
        if target == "ours":
            child, port = self.start_ours("ours", SERVER_CORES)
        else:
            child, port = self.start_relay(SERVER_CORES)
        results = self.results[target]
        try:
            base = self.common(child, port)
            members = doctors("group") + patients("group", sizes["group_members"] - 1)
            self.create_group(port, members)
            steps = [
                ("idle", {"users": patients("idle", sizes["idle_sockets"])}),
                ("p2p", {"recipients": patients("p2p", sizes["p2p_recipients"]),
                         "doctors": doctors("p2p"), "rates": sizes["p2p_rates"],
                         "step_seconds": sizes["step_seconds"],
                         "closed_seconds": sizes["closed_seconds"]}),
                ("ws", {"patients": patients("ws", sizes["ws_patients"]),
                        "doctors": doctors("ws"), "rates": sizes["ws_rates"],
                        "step_seconds": sizes["step_seconds"]}),
                ("group", {"members": members, "group": GROUP_ID,
                           "rates": sizes["group_rates"],
                           "step_seconds": sizes["group_step_seconds"]}),
            ]
            if target == "ours":
                steps.append(("storm", {
                    "users": patients("storm", sizes["storm_users"]),
                    "doctors": doctors("storm"), "live_rate": sizes["storm_live_rate"],
                    "live_seconds": 2.0, "backlog_per_user": sizes["storm_backlog"]}))
            for name, params in steps:
                if self.args.only and name not in self.args.only:
                    continue
                print(f"   {name} ...", flush=True)
                results[name] = self.load(name, {**base, **params})
                if child.poll() is not None:
                    raise RuntimeError(f"{target} exited during {name}:\n"
                                       f"{self.processes.tail(child)}")
        finally:
            self.processes.stop(child)

    def start_redis(self):
        """Start a private Redis so that no other program's pub/sub reaches the servers."""
        port = free_port()
        child = self.processes.start(
            "redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                      "--save", "", "--appendonly", "no"],
            dict(os.environ), self.log_dir, None)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
                    probe.sendall(b"PING\r\n")
                    if probe.recv(16).startswith(b"+PONG"):
                        return child, f"redis://127.0.0.1:{port}/0"
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"redis-server did not respond to PING on port {port}:\n"
                           f"{self.processes.tail(child)}")

    def run_cluster(self):
        """Compare closed-loop p2p throughput of one process and of two on one database."""
        redis = self.redis_supported()
        redis_child, self.redis_url = self.start_redis() if redis else (None, None)
        try:
            self._run_cluster(redis)
        finally:
            if redis_child is not None:
                self.processes.stop(redis_child)

    def _run_cluster(self, redis):
        seconds = self.sizes["cluster_seconds"]
        mode = ("Redis, sends alternate between the processes" if redis else
                "no Redis: each recipient on the process that receives its sends")
        print(f"== cluster ({mode})", flush=True)
        self.results["cluster"]["redis"] = redis
        for count, users in ((1, "cluster1"), (2, "cluster2")):
            children = []
            try:
                ports = []
                for index in range(count):
                    cores = {index} if count == 2 else SERVER_CORES
                    child, port = self.start_ours(f"ours-{count}p-{index}", cores, redis)
                    children.append(child)
                    ports.append(port)
                params = {**self.common(children[0], ports[0]),
                          "server2_pid": children[1].pid if count == 2 else None,
                          "ports": ports, "route": "alternate" if redis else "same",
                          "recipients": patients(users, self.sizes["p2p_recipients"]),
                          "doctors": doctors(users), "rates": [], "warmup": 200,
                          "closed_seconds": seconds, "closed_concurrency": 64 * count,
                          "pool_size": 64}
                # Both cores serve in the two-process case, so the load
                # generator floats in both runs to keep them comparable.
                self.results["cluster"][f"{count}p"] = self.load("p2p", params, cores={0, 1})
            finally:
                for child in children:
                    self.processes.stop(child)

    def run_profile(self):
        print("== profile (py-spy on ours, closed-loop p2p)", flush=True)
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(py_spy).exists():
            self.results["profile"] = {"error": "py-spy not installed; "
                                       "pip install py-spy into the venv"}
            return
        child, port = self.start_ours("ours-profile", SERVER_CORES)
        try:
            seconds = self.sizes["profile_seconds"]
            raw = self.log_dir / "profile.raw"
            ready = self.log_dir / "profile.ready"
            params = {**self.common(child, port),
                      "recipients": patients("profile", self.sizes["p2p_recipients"]),
                      "doctors": doctors("profile"), "rates": [], "warmup": 200,
                      "closed_seconds": seconds + 2, "closed_concurrency": 64,
                      "ready_file": str(ready)}
            started = self.start_load("p2p", params)
            deadline = time.monotonic() + 120
            while not ready.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            # Sample only the closed loop, not the sockets' connects and warm-up.
            spy = self.processes.start(
                "py-spy", [py_spy, "record", "--pid", str(child.pid), "--format", "raw",
                           "--output", str(raw), "--rate", str(profiling.RATE),
                           "--duration", str(int(seconds)), "--gil", "--function",
                           "--threads", "--nonblocking"],
                dict(os.environ), BENCH_DIR, None)
            result = self.finish_load(started)
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                pass
            self.processes.stop(spy)
            rate = result.get("closed", {}).get("delivered_per_s", 0)
            self.results["profile"] = profiling.summarize(raw, int(rate * int(seconds)), result)
            if self.args.profile_out and raw.exists():
                shutil.copyfile(raw, self.args.profile_out)
        finally:
            self.processes.stop(child)

    def wait_quiet(self):
        """Wait until the machine is nearly idle; return the cores busy at start."""
        deadline = time.monotonic() + self.args.wait_quiet
        while True:
            before = workloads.machine_busy_seconds()
            time.sleep(3)
            busy = (workloads.machine_busy_seconds() - before) / 3
            if busy < 0.25 or time.monotonic() >= deadline:
                return round(busy, 2)
            print(f"   other processes keep {busy:.2f} cores busy; waiting", flush=True)

    def run(self):
        if self.args.wait_quiet:
            self.results["busy_cores_at_start"] = self.wait_quiet()
        if self.args.keep_db:
            print(f"database {self.database}, secret {self.secret}", flush=True)
        self.create_database()
        self.db_pid = find_pid("mariadbd") or find_pid("mysqld")
        self.results["machine"] = self.machine_facts()
        started = time.monotonic()
        only = set(self.args.only or ())
        for target in ("ours", "relay"):
            if self.args.only_target and target != self.args.only_target:
                continue
            if not only or only & {"idle", "p2p", "ws", "group", "storm"}:
                self.run_target(target)
        if not only or "cluster" in only:
            self.run_cluster()
        if self.args.profile or "profile" in only:
            self.run_profile()
        self.results["seconds"] = round(time.monotonic() - started, 1)


def loadgen_main(name, params, queue, cores):
    """Body of a load-generator process."""
    if cores:
        os.sched_setaffinity(0, cores)
    raise_open_files_limit()
    try:
        result = workloads.run_workload(name, params)
    except Exception as error:  # noqa: BLE001 - the parent reports it
        import traceback
        result = {"error": f"{type(error).__name__}: {error}",
                  "traceback": traceback.format_exc()}
    queue.put(result)


def raise_open_files_limit():
    """10,000 sockets need more descriptors than the usual soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return wanted


def find_pid(command_name):
    """Return the pid of a running process by its command name, read from /proc."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm", encoding="utf-8") as comm:
                if comm.read().strip() == command_name:
                    return int(entry)
        except OSError:
            continue
    return None


def git_describe(directory):
    try:
        commit = subprocess.run(["git", "-C", str(directory), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(directory), "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return f"{commit}{' with uncommitted changes' if dirty else ''}" if commit else "unknown"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, about 2 minutes in all")
    parser.add_argument("--profile", action="store_true",
                        help="also run closed-loop p2p under py-spy and list the top costs")
    parser.add_argument("--profile-out", help="keep py-spy's raw stacks in this file")
    parser.add_argument("--json", help="write every figure to this JSON file")
    parser.add_argument("--only", nargs="*",
                        choices=["idle", "p2p", "ws", "group", "storm", "cluster", "profile"],
                        help="run only these workloads")
    parser.add_argument("--only-target", choices=["ours", "relay"],
                        help="run the workloads against one target only")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin the server and the load generator to cores")
    parser.add_argument("--server-dir", default=str(REPO_DIR),
                        help="the IM server's source tree (default: this repository)")
    parser.add_argument("--mysql-host", default="127.0.0.1")
    parser.add_argument("--mysql-port", type=int, default=3306)
    parser.add_argument("--mysql-user", default="root",
                        help="a MariaDB user allowed to create and drop databases")
    parser.add_argument("--keep-db", action="store_true",
                        help="leave the database in place for inspection (drop it yourself)")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="first wait up to this long for other processes to leave"
                        " the CPUs nearly idle (under 0.25 cores busy)")
    return parser.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    raise_open_files_limit()
    bench = Bench(args)
    signal.signal(signal.SIGTERM, lambda *unused: sys.exit(143))
    failed = False
    try:
        bench.run()
    except (RuntimeError, OSError, pymysql.MySQLError) as error:
        failed = True
        print(f"Benchmark stopped: {error}", file=sys.stderr)
    except Exception:  # noqa: BLE001 - a bug in one step must not lose the others' figures
        failed = True
        traceback.print_exc()
        print("Benchmark stopped by the error above", file=sys.stderr)
    finally:
        bench.processes.stop_all()
        try:
            bench.drop_database()
        except pymysql.MySQLError as error:
            print(f"Could not drop database {bench.database}: {error}", file=sys.stderr)
    print()
    print(report.render(bench.results))
    if args.json:
        Path(args.json).write_text(json.dumps(bench.results, indent=1, ensure_ascii=False))
    print(f"\nServer logs: {bench.log_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
