"""The entry point, run as a subprocess: profiles, start, stop and commands.

Each test starts ``python server.py`` with an environment holding only the
IM_ variables it sets, on 127.0.0.1 and a free port, with a SQLite file in
the test's temporary directory.
"""

import asyncio
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from tornado.websocket import websocket_connect

from conftest import ROOT, TEST_SECRET

SERVER = os.path.join(ROOT, "server.py")
START_TIMEOUT_SECONDS = 20
STOP_TIMEOUT_SECONDS = 20
COMMAND_TIMEOUT_SECONDS = 30
CLOSE_GOING_AWAY = 1001
MYSQL_EXAMPLE_URL = "mysql+pymysql://im:password@127.0.0.1:3306/im"
JWT = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_env(**variables):
    """os.environ without IM_ variables, plus ``variables``."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("IM_")}
    env.update(variables)
    return env


def env_for_test_profile(tmp_path, **variables):
    """The test profile on 127.0.0.1 with a SQLite file in ``tmp_path``."""
    defaults = {"IM_PROFILE": "test", "IM_SECRET": TEST_SECRET,
                "IM_ADDRESS": "127.0.0.1",
                "IM_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.sqlite3'}"}
    return server_env(**{**defaults, **variables})


def run_command(args, env, cwd=ROOT):
    return subprocess.run([sys.executable, SERVER, *args], cwd=cwd, env=env,
                          capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT_SECONDS)


class RunningServer:
    """``python server.py`` in the background, with its output in a file."""

    def __init__(self, args, env, log_path, cwd=ROOT):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen([sys.executable, SERVER, *args], cwd=cwd,
                                        env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT)

    def wait_healthy(self, port):
        """Poll /health until it returns 200; return the parsed body."""
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"server exited with {self.process.returncode}: {self.output()}"
                )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health",
                                            timeout=2) as response:
                    return json.loads(response.read())
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        raise AssertionError(
            f"no /health within {START_TIMEOUT_SECONDS} s: {self.output()}"
        )

    def terminate(self):
        """Send SIGTERM and return the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=STOP_TIMEOUT_SECONDS)

    def output(self):
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


@pytest.fixture
def start_server(tmp_path):
    """Return a function that starts a server; every one is stopped afterwards."""
    servers = []

    def start(args, env, cwd=ROOT):
        server = RunningServer(args, env, tmp_path / f"server-{len(servers)}.log", cwd)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


# -- configuration errors ------------------------------------------------------


def test_unknown_profile_lists_valid_ones(tmp_path):
    result = run_command([], server_env(IM_PROFILE="bogus"), cwd=tmp_path)

    assert result.returncode != 0
    assert "bogus" in result.stderr
    for profile in ("dev", "test", "prod"):
        assert profile in result.stderr


PROD_CONFIG_ERRORS = {
    "missing_secret": ({"IM_DATABASE_URL": MYSQL_EXAMPLE_URL}, "IM_SECRET"),
    "short_secret": ({"IM_DATABASE_URL": MYSQL_EXAMPLE_URL, "IM_SECRET": "short"},
                     "at least 32 bytes"),
    "missing_database_url": ({"IM_SECRET": TEST_SECRET},
                             "MySQL URL in IM_DATABASE_URL"),
    "sqlite_database_url": ({"IM_SECRET": TEST_SECRET,
                             "IM_DATABASE_URL": "sqlite:///im.sqlite3"},
                            "MySQL URL in IM_DATABASE_URL"),
}


@pytest.mark.parametrize("case", sorted(PROD_CONFIG_ERRORS))
def test_prod_profile_rejects_incomplete_config(case, tmp_path):
    variables, expected_message = PROD_CONFIG_ERRORS[case]

    result = run_command([], server_env(IM_PROFILE="prod", **variables), cwd=tmp_path)

    assert result.returncode != 0
    assert expected_message in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir())


# -- a real start --------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_server_starts_serves_and_stops(start_server, tmp_path):
    port = free_port()
    server = start_server([f"--port={port}"], env_for_test_profile(tmp_path))
    health = await asyncio.to_thread(server.wait_healthy, port)
    token = run_command(["token", "--user", "pat-cli", "--role", "patient"],
                        env_for_test_profile(tmp_path)).stdout.strip()
    ws = await websocket_connect(f"ws://127.0.0.1:{port}/ws?token={token}")
    welcome = json.loads(await ws.read_message())

    exit_code = await asyncio.to_thread(server.terminate)
    closing = await asyncio.wait_for(ws.read_message(), STOP_TIMEOUT_SECONDS)
    output = server.output()

    assert health == {"status": "ok"}
    assert welcome["type"] == "welcome"
    assert exit_code == 0
    assert closing is None
    assert ws.close_code == CLOSE_GOING_AWAY
    assert f"Starting IM server, version 1.0.0, running on port {port}" in output
    assert "Configuration profile: test" in output


@pytest.mark.parametrize("form", ["separate", "joined"])
def test_port_option_takes_both_forms(form, start_server, tmp_path):
    port = free_port()
    args = ["--port", str(port)] if form == "separate" else [f"--port={port}"]

    server = start_server(args, env_for_test_profile(tmp_path))

    assert server.wait_healthy(port) == {"status": "ok"}
    assert f"running on port {port}" in server.output()


# -- the token command ---------------------------------------------------------


def test_token_command_prints_accepted_jwt(start_server, tmp_path):
    port = free_port()
    server = start_server([f"--port={port}"], env_for_test_profile(tmp_path))
    server.wait_healthy(port)

    result = run_command(["token", "--user", "doc-cli", "--role", "doctor"],
                         env_for_test_profile(tmp_path))
    token = result.stdout.strip()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/chats/recent?user_id=doc-cli",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        status, body = response.status, json.loads(response.read())

    assert result.returncode == 0, result.stderr
    assert JWT.match(token), result.stdout
    assert status == 200
    assert body["totalUnread"] == 0


def test_token_from_other_secret_is_rejected(start_server, tmp_path):
    port = free_port()
    server = start_server([f"--port={port}"], env_for_test_profile(tmp_path))
    server.wait_healthy(port)
    other_secret = "another-secret-of-at-least-32-bytes-000000"
    other_env = env_for_test_profile(tmp_path, IM_SECRET=other_secret)
    token = run_command(["token", "--user", "doc-cli", "--role", "doctor"],
                        other_env).stdout.strip()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/chats/recent?user_id=doc-cli",
        headers={"Authorization": f"Bearer {token}"},
    )

    with pytest.raises(urllib.error.HTTPError) as rejected:
        urllib.request.urlopen(request, timeout=5)

    assert rejected.value.code == 401


@pytest.mark.parametrize("args", [
    ["token", "--user", "doc-cli", "--role", "admin"],
    ["token", "--user", "doc-cli"],
    ["token", "--role", "doctor"],
])
def test_token_command_rejects_bad_arguments(args, tmp_path):
    result = run_command(args, env_for_test_profile(tmp_path))

    assert result.returncode != 0
    assert "Usage" in result.stderr
    assert result.stdout == ""


# -- the dev profile -----------------------------------------------------------


def sqlite_table_names(path):
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {row[0] for row in rows}


@pytest.mark.parametrize("placement", ["working_directory", "sqlite_path"])
def test_dev_profile_creates_sqlite_database(placement, start_server, tmp_path):
    port = free_port()
    env = server_env(IM_ADDRESS="127.0.0.1")
    if placement == "sqlite_path":
        database = tmp_path / "dev.sqlite3"
        env["IM_SQLITE_PATH"] = str(database)
    else:
        database = tmp_path / "var" / "im-dev.sqlite3"

    server = start_server([f"--port={port}"], env, cwd=tmp_path)
    health = server.wait_healthy(port)
    exit_code = server.terminate()

    assert health == {"status": "ok"}
    assert exit_code == 0
    assert database.exists()
    tables = sqlite_table_names(database)
    assert {"msg_p2p", "msg_group", "msg_system", "talk_user"} <= tables
    assert "Configuration profile: dev" in server.output()
