"""supervisord.conf: prod server processes under supervisord.

Each test starts supervisord (from the virtualenv that runs the tests) in
the foreground with the repository's supervisord.conf. It runs two server
processes on consecutive free ports of 127.0.0.1 against a fresh MariaDB
database, because the prod profile accepts only MySQL or MariaDB. Logs go to
the test's temporary directory and the control socket to a short temporary
directory, because a Unix socket path is limited to 107 bytes.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest

from conftest import MYSQL_URL_VARIABLE, ROOT, TEST_SECRET, create_database
from services.auth import TokenService

pytestmark = pytest.mark.skipif(
    not os.environ.get(MYSQL_URL_VARIABLE),
    reason=f"{MYSQL_URL_VARIABLE} is unset; the prod profile needs MySQL or MariaDB",
)

BIN = os.path.dirname(sys.executable)
SUPERVISORD = os.path.join(BIN, "supervisord")
SUPERVISORCTL = os.path.join(BIN, "supervisorctl")
CONFIG = os.path.join(ROOT, "supervisord.conf")
PROCESSES = 2
# supervisord's startsecs is 5, so RUNNING comes 5 s after the spawn.
START_TIMEOUT_SECONDS = 30
RESTART_TIMEOUT_SECONDS = 15
# Above the prod shutdown grace (20 s) that stopwaitsecs waits for.
SHUTDOWN_TIMEOUT_SECONDS = 60
COMMAND_TIMEOUT_SECONDS = 60
STATUS_LINE = re.compile(r"^(\S+)\s+(\S+)\s*(?:pid (\d+))?")


def port_is_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_range(count):
    """Return the first of ``count`` consecutive free ports."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        ports = range(base, base + count)
        if ports[-1] <= 65535 and all(port_is_free(port) for port in ports):
            return base
    raise AssertionError(f"no {count} consecutive free ports found")


def get_json(url, token=None, timeout=2):
    """Return (status, parsed JSON body) of a GET request."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, None


def health(port):
    """Return the status of /health, or None when the connection fails."""
    try:
        return get_json(f"http://127.0.0.1:{port}/health")[0]
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


class Supervisor:
    """supervisord running in the foreground, and supervisorctl to control it."""

    def __init__(self, env, log_dir, output_path):
        self.env = env
        self.log_dir = log_dir
        self.seen_pids = set()
        self._output = open(output_path, "wb")
        self.process = subprocess.Popen(
            [SUPERVISORD, "-n", "-c", CONFIG], cwd=log_dir, env=env,
            stdout=self._output, stderr=subprocess.STDOUT,
        )

    def ctl(self, *args):
        return subprocess.run([SUPERVISORCTL, "-c", CONFIG, *args], env=self.env,
                              capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT_SECONDS)

    def status(self):
        """Return {process name: (state, pid or None)} from supervisorctl status."""
        result = self.ctl("status")
        states = {}
        for line in result.stdout.splitlines():
            match = STATUS_LINE.match(line)
            if match and ":" in match.group(1):
                pid = int(match.group(3)) if match.group(3) else None
                states[match.group(1)] = (match.group(2), pid)
                if pid:
                    self.seen_pids.add(pid)
        return states

    def wait_for(self, condition, timeout, description):
        """Poll ``condition()`` until it returns a true value; return that value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"supervisord exited with {self.process.returncode}: "
                                     f"{self.log()}")
            value = condition()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"{description} not within {timeout} s; status {self.status()}, "
                             f"supervisord log:\n{self.log()}")

    def log(self):
        path = os.path.join(self.log_dir, "supervisord.log")
        if not os.path.exists(path):
            return ""
        with open(path, encoding="utf-8", errors="replace") as log_file:
            return log_file.read()

    def server_log(self, port):
        with open(os.path.join(self.log_dir, f"im-{port}.log"), encoding="utf-8",
                  errors="replace") as log_file:
            return log_file.read()

    def shut_down(self):
        """Stop supervisord and its processes; SIGKILL whatever outlives it."""
        if self.process.poll() is None:
            self.status()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=SHUTDOWN_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._output.close()
        for pid in self.seen_pids:
            if _is_our_server(pid):
                os.kill(pid, signal.SIGKILL)


def _is_our_server(pid):
    """Tell whether ``pid`` is still a server.py process (pids get reused)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return b"server.py" in cmdline.read()
    except OSError:
        return False


@pytest.fixture
def mariadb_url(tmp_path_factory):
    url, drop = create_database("mariadb", tmp_path_factory)
    yield url
    drop()


@pytest.fixture
def supervisor(mariadb_url, tmp_path):
    """supervisord with PROCESSES servers; yields (Supervisor, list of ports)."""
    assert os.path.exists(SUPERVISORD), \
        f"{SUPERVISORD} is missing; run pip install -r requirements.txt"
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    run_dir = tempfile.mkdtemp(prefix="im-sv-")
    base_port = free_port_range(PROCESSES)
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("IM_")}
    env.update({
        "IM_HOME": ROOT,
        "IM_PYTHON": sys.executable,
        "IM_LOG_DIR": str(log_dir),
        "IM_RUN_DIR": run_dir,
        "IM_BASE_PORT": str(base_port),
        "IM_PROCESSES": str(PROCESSES),
        "IM_ADDRESS": "127.0.0.1",
        "IM_SECRET": TEST_SECRET,
        "IM_DATABASE_URL": mariadb_url,
    })
    supervisor = Supervisor(env, str(log_dir), tmp_path / "supervisord.out")
    try:
        yield supervisor, [base_port + index for index in range(PROCESSES)]
    finally:
        supervisor.shut_down()
        shutil.rmtree(run_dir, ignore_errors=True)


def wait_all_healthy(supervisor, ports):
    supervisor.wait_for(lambda: all(health(port) == 200 for port in ports),
                        START_TIMEOUT_SECONDS, f"/health on ports {ports}")


def all_running(supervisor, count):
    """Return the status when ``count`` processes are RUNNING, else None."""
    states = supervisor.status()
    if len(states) == count and all(state == "RUNNING" for state, _ in states.values()):
        return states
    return None


def restarted_pid(supervisor, port, old_pid):
    """Return the new pid of the process on ``port`` once it serves /health."""
    pid = supervisor.status().get(f"im:im-{port}", (None, None))[1]
    if pid not in (None, old_pid) and health(port) == 200:
        return pid
    return None


def test_processes_serve_and_restart_after_kill(supervisor):
    supervisor, ports = supervisor
    wait_all_healthy(supervisor, ports)
    states = supervisor.wait_for(lambda: all_running(supervisor, len(ports)),
                                 START_TIMEOUT_SECONDS, "RUNNING state of every process")
    system_token, _ = TokenService(TEST_SECRET).mint("platform", "system", 600)
    server_status = {port: get_json(f"http://127.0.0.1:{port}/api/v1/status",
                                    system_token)
                     for port in ports}
    victim, survivor = ports[0], ports[1]
    old_pid = states[f"im:im-{victim}"][1]

    os.kill(old_pid, signal.SIGKILL)
    killed_at = time.monotonic()
    new_pid = supervisor.wait_for(lambda: restarted_pid(supervisor, victim, old_pid),
                                  RESTART_TIMEOUT_SECONDS,
                                  f"restart of the process on port {victim}")
    restarted_after = time.monotonic() - killed_at

    assert sorted(states) == [f"im:im-{port}" for port in ports]
    for port in ports:
        status, answer = server_status[port]
        assert status == 200, answer
        assert answer["profile"] == "prod"
        assert answer["node"].endswith(f":{port}")
    assert new_pid != old_pid
    assert restarted_after < RESTART_TIMEOUT_SECONDS
    assert health(survivor) == 200
    assert f"exited: im-{victim} (terminated by SIGKILL; not expected)" in supervisor.log()


def test_stop_all_exits_cleanly(supervisor):
    supervisor, ports = supervisor
    wait_all_healthy(supervisor, ports)

    result = supervisor.ctl("stop", "all")
    states = supervisor.status()
    log = supervisor.log()

    assert result.returncode == 0, result.stdout + result.stderr
    assert states == {f"im:im-{port}": ("STOPPED", None) for port in ports}
    for port in ports:
        assert f"stopped: im-{port} (exit status 0)" in log
        assert "IM server stopped" in supervisor.server_log(port)
        assert health(port) is None
    assert "SIGKILL" not in log
