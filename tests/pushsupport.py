"""Fixtures and helpers for the push and delayed-message integration tests.

In-process tests run the server on the test's IOLoop with the vendor fakes
beside it. ``getui_fake`` and ``wechat_fake`` listen on 127.0.0.1, and the
``config`` fixture points the server at them with short job intervals and
backoff. ``running`` starts the push and delayed-message jobs. Each test
gets a database of its own, so outbox rows and counters never leak between
tests.

Process-level tests run ``server.py`` and the fakes as subprocesses on
MariaDB (``ServerProcess``, ``fake_processes``) and are skipped without
IM_TEST_MYSQL_URL.
"""

import asyncio
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from conf import load_config
from models.db import Database
from services.auth import TokenService
from tests.conftest import MYSQL_URL_VARIABLE, TEST_SECRET, backends, create_database
from tests.fakes import FakeControl
from tests.fakes.getui_fake import GetuiFake
from tests.fakes.wechat_fake import WeChatFake

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]

TEMPLATE_ID = "tplNewMessage0001"
TEMPLATE_KEYS = ("thing1", "time2", "thing3")
CHAT_URL = "https://care.example.org/patient/chat"
CALLBACK_TOKEN = "callbackToken01"
# WeChat template times are shown in Beijing time, which has no DST.
BEIJING = datetime.timezone(datetime.timedelta(hours=8))

# Short intervals and backoff so that retries happen within a test. The
# request timeout stays above the fakes' usual delays of a test.
IN_PROCESS_SETTINGS = {
    "push_interval_seconds": 0.1,
    "schedule_interval_seconds": 0.1,
    "push_initial_backoff_seconds": 0.5,
    "push_max_backoff_seconds": 1.0,
    "push_max_attempts": 50,
    "http_connect_timeout_seconds": 1.0,
    "http_request_timeout_seconds": 5.0,
}

SETTLE_TIMEOUT_SECONDS = 15.0


# Waiting ---------------------------------------------------------------------


async def wait_until(condition, timeout=SETTLE_TIMEOUT_SECONDS, description="condition",
                     interval=0.05):
    """Poll ``condition`` (a function, or a coroutine function) until it is true.

    ``description`` names the awaited state in the failure message. Returns
    the last truthy value. Raises AssertionError after ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"{description} still false after {timeout:.0f} s")
        await asyncio.sleep(interval)


# Outbox rows -----------------------------------------------------------------


def query(db, sql, **params):
    return db.transaction(lambda conn: conn.query(sql, **params))


async def push_rows(im, user_id, vendor=None):
    """Return the msg_push rows of a user, oldest first."""
    sql, params = "SELECT * FROM msg_push WHERE user_id = :u", {"u": user_id}
    if vendor is not None:
        sql += " AND vendor = :v"
        params["v"] = vendor
    return await im.db.run(query, im.db, sql + " ORDER BY id", **params)


async def unsettled_count(source):
    """Count outbox rows that are still pending or being sent.

    ``source`` is an IMServer (in-process tests) or a Database.
    """
    db = source.db if hasattr(source, "db") else source
    rows = await asyncio.get_running_loop().run_in_executor(
        None, query, db,
        "SELECT COUNT(*) AS n FROM msg_push WHERE status IN ('pending', 'sending')",
    )
    return rows[0]["n"]


async def wait_settled(source, timeout=SETTLE_TIMEOUT_SECONDS):
    """Wait until no outbox row of ``source`` is pending or being sent."""

    async def settled():
        return await unsettled_count(source) == 0

    await wait_until(settled, timeout, "every push sent or given up")


async def wait_for_row(im, user_id, vendor, predicate, description):
    """Wait until a push row of the user matches ``predicate``; return it."""

    async def matching():
        for row in await push_rows(im, user_id, vendor):
            if predicate(row):
                return row
        return None

    return await wait_until(matching, description=description)


def is_parked_for_retry(row):
    """Whether a row failed at least once and waits for its next attempt."""
    return row["status"] == "pending" and row["attempts"] >= 1


# Vendor records --------------------------------------------------------------


def getui_records(fake, cid):
    """Return the notifications a Getui fake accepted for one device."""
    return [record for record in fake.sent if record["cid"] == cid]


def wechat_records(fake, openid):
    """Return the template messages a WeChat fake accepted for one user."""
    return [record for record in fake.sent if record["openid"] == openid]


def click_payload(record):
    """Return the tap payload of a Getui record as a dict."""
    return json.loads(record["payload"])


def beijing_minute(timestamp_ms):
    """Format a message time as the WeChat template shows it."""
    moment = datetime.datetime.fromtimestamp(timestamp_ms / 1000, BEIJING)
    return moment.strftime("%Y-%m-%d %H:%M")


# In-process fixtures ---------------------------------------------------------


@pytest.fixture(params=backends())
def database_url(request, tmp_path_factory):
    """A fresh database for each test, on SQLite and (when configured) MariaDB."""
    url, drop = create_database(request.param, tmp_path_factory)
    yield url
    drop()


@pytest.fixture
def getui_fake(io_loop):
    """A Getui fake on the test's IOLoop; tests register cids with ``add_cid``."""
    fake = GetuiFake()
    fake.listen()
    yield fake
    io_loop.run_sync(fake.stop)


@pytest.fixture
def wechat_fake(io_loop):
    """A WeChat fake with the chat template; tests register users with ``add_user``."""
    fake = WeChatFake()
    fake.add_template(TEMPLATE_ID, TEMPLATE_KEYS)
    fake.listen()
    yield fake
    io_loop.run_sync(fake.stop)


@pytest.fixture
def config(database_url, getui_fake, wechat_fake):
    """The test profile, with both push vendors pointing at the fakes."""
    overrides = {
        "database_url": database_url,
        "secret": TEST_SECRET,
        "port": 0,
        "getui_app_id": getui_fake.app_id,
        "getui_app_key": getui_fake.app_key,
        "getui_master_secret": getui_fake.master_secret,
        "getui_base_url": getui_fake.base_url,
        "wechat_app_id": wechat_fake.app_id,
        "wechat_app_secret": wechat_fake.app_secret,
        "wechat_base_url": wechat_fake.base_url,
        "wechat_template_id": TEMPLATE_ID,
        "wechat_field_map": dict(zip(TEMPLATE_KEYS, ("sender_name", "sent_at", "excerpt"))),
        "wechat_chat_url": CHAT_URL,
        "wechat_callback_token": CALLBACK_TOKEN,
        **IN_PROCESS_SETTINGS,
    }
    return load_config("test", environ={}, overrides=overrides)


@pytest.fixture
def running(im, io_loop, http_server):
    """Start the server's push and delayed-message jobs; stop them at teardown.

    IMServer.start configures AsyncHTTPClient for the whole process, so the
    previous configuration comes back at teardown for the tests that follow.
    """
    http_client_configuration = AsyncHTTPClient._save_configuration()
    io_loop.run_sync(im.start)
    yield im

    async def stop():
        # APScheduler cancels runs in progress when it shuts down, so let
        # them finish first, as server.py does.
        await im.jobs.finish_running(timeout=5)
        await im.stop()
        # The shutdown itself happens on a later loop iteration.
        await asyncio.sleep(0.05)

    try:
        io_loop.run_sync(stop)
    finally:
        AsyncHTTPClient._restore_configuration(http_client_configuration)


async def register(api, user_id, role="patient", name=None, *, getui=None,
                   wechat=None, cid=None, openid=None, subscribed=True):
    """Register a user, and its device or openid with the fakes; return its token."""
    extra = {}
    if cid is not None:
        extra["getuiClientId"] = cid
        if getui is not None:
            getui.add_cid(cid)
    if openid is not None:
        extra["wechatOpenId"] = openid
        if wechat is not None:
            wechat.add_user(openid, subscribed=subscribed)
    return await api.user(user_id, role, name=name, **extra)


async def send_pm(api, sender, token, to, content="您好", content_type=1, **extra):
    """Send a p2p message through REST; return the stored message."""
    body = {"from": sender, "to": to, "contentType": content_type, "content": content,
            **extra}
    status, answer, _ = await api.post("/api/v1/chats/pm", body, token=token)
    assert status == 201, answer
    return answer["message"]


# Process-level support -------------------------------------------------------


def require_mariadb():
    """Skip the calling test when no MariaDB is configured; return its URL."""
    url = os.environ.get(MYSQL_URL_VARIABLE)
    if not url:
        pytest.skip(
            f"process-level tests run on MariaDB only: set {MYSQL_URL_VARIABLE}, "
            "e.g. mysql+pymysql://root@127.0.0.1:3306/test"
        )
    return url


@pytest.fixture
def mariadb_url():
    """A fresh MariaDB database with the schema; skips without IM_TEST_MYSQL_URL."""
    require_mariadb()
    url, drop = create_database("mariadb", None)
    yield url
    drop()


@pytest.fixture
def mariadb(mariadb_url):
    """A Database on ``mariadb_url`` for checks from the test."""
    db = Database(mariadb_url, pool_size=2)
    yield db
    db.close()


def free_port():
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def child_environment(extra):
    """Return os.environ without IM_* and proxy settings, plus ``extra``.

    Proxy variables are dropped so that libcurl in the server never routes
    the calls to the local fakes through a proxy.
    """
    environment = {
        key: value for key, value in os.environ.items()
        if not key.startswith("IM_") and "proxy" not in key.lower()
    }
    environment["NO_PROXY"] = "127.0.0.1,localhost"
    environment["PYTHONPATH"] = str(REPOSITORY_ROOT)
    environment.update(extra)
    return environment


class FakeProcess:
    """A vendor fake running as ``python -m tests.fakes.<module>``."""

    def __init__(self, module, arguments):
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, "--port", "0", *arguments],
            cwd=REPOSITORY_ROOT,
            env=child_environment({}),
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"{module} printed {line!r} instead of its port")
        self.port = int(line)
        self.url = f"http://127.0.0.1:{self.port}"
        self.control = FakeControl(self.url)

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()


class FakePair:
    """A Getui fake and a WeChat fake as processes, and the server settings for them."""

    def __init__(self):
        self._started = []
        try:
            self.getui = self._start("tests.fakes.getui_fake", ["--accept-any-cid"])
            self.wechat = self._start(
                "tests.fakes.wechat_fake",
                ["--template", f"{TEMPLATE_ID}={','.join(TEMPLATE_KEYS)}",
                 "--accept-any-openid"],
            )
        except BaseException:
            self.stop()
            raise

    def _start(self, module, arguments):
        fake = FakeProcess(module, arguments)
        self._started.append(fake)
        return fake

    def server_environment(self):
        getui, wechat = GetuiFake(), WeChatFake()
        field_map = dict(zip(TEMPLATE_KEYS, ("sender_name", "sent_at", "excerpt")))
        return {
            "IM_GETUI_APP_ID": getui.app_id,
            "IM_GETUI_APP_KEY": getui.app_key,
            "IM_GETUI_MASTER_SECRET": getui.master_secret,
            "IM_GETUI_BASE_URL": self.getui.url + "/v2",
            "IM_WECHAT_APP_ID": wechat.app_id,
            "IM_WECHAT_APP_SECRET": wechat.app_secret,
            "IM_WECHAT_BASE_URL": self.wechat.url,
            "IM_WECHAT_TEMPLATE_ID": TEMPLATE_ID,
            "IM_WECHAT_FIELD_MAP": json.dumps(field_map),
            "IM_WECHAT_CHAT_URL": CHAT_URL,
        }

    def stop(self):
        for fake in self._started:
            fake.stop()


@pytest.fixture
def fake_processes():
    """Start a Getui and a WeChat fake as processes; terminate both at teardown."""
    pair = FakePair()
    try:
        yield pair
    finally:
        pair.stop()


class ServerProcess:
    """``python server.py`` as a subprocess on 127.0.0.1, with a fixed node name.

    A restart keeps the port and node name, as a supervisor restarting the
    same instance would, so the new process takes back the rows that the
    killed one had claimed.
    """

    def __init__(self, database_url, node_name, log_dir, extra_environment):
        self.port = free_port()
        self.node_name = node_name
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_dir) / f"server-{node_name}.log"
        self.environment = child_environment({
            "IM_PROFILE": "test",
            "IM_DATABASE_URL": database_url,
            "IM_SECRET": TEST_SECRET,
            "IM_NODE_NAME": node_name,
            "IM_ADDRESS": "127.0.0.1",
            "IM_LOG_LEVEL": "info",
            "IM_PUSH_INTERVAL_SECONDS": "0.1",
            "IM_SCHEDULE_INTERVAL_SECONDS": "0.1",
            "IM_PUSH_INITIAL_BACKOFF_SECONDS": "0.5",
            "IM_PUSH_MAX_BACKOFF_SECONDS": "1",
            "IM_PUSH_MAX_ATTEMPTS": "50",
            "IM_HTTP_CONNECT_TIMEOUT_SECONDS": "2",
            "IM_HTTP_REQUEST_TIMEOUT_SECONDS": "10",
            "IM_SHUTDOWN_GRACE_SECONDS": "2",
            **extra_environment,
        })
        self.process = None
        self.starts = 0

    def start(self):
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"server {self.node_name} is already running")
        self.starts += 1
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(f"--- start {self.starts} ---\n")
            log.flush()
            self.process = subprocess.Popen(
                [sys.executable, "server.py", "--port", str(self.port)],
                cwd=REPOSITORY_ROOT,
                env=self.environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def wait_healthy(self, timeout=30.0):
        """Wait until GET /health returns 200; raise with the log tail if the process ends."""
        http = AsyncHTTPClient()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"server {self.node_name} exited with {self.process.returncode}:\n"
                    + self.log_tail()
                )
            try:
                response = await http.fetch(
                    HTTPRequest(self.base_url + "/health", request_timeout=2),
                    raise_error=False,
                )
            except (OSError, HTTPClientError):
                response = None
            if response is not None and response.code == 200:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"server {self.node_name} not healthy:\n" + self.log_tail())

    def kill(self):
        """Kill the process with SIGKILL: no shutdown code runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self):
        """Terminate the process, killing it when it does not stop in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, lines=40):
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


@pytest.fixture
def servers(tmp_path):
    """Make ``ServerProcess`` objects; every one still running is killed at teardown."""
    created = []

    def make(database_url, node_name, extra_environment=None):
        server = ServerProcess(database_url, node_name, tmp_path, extra_environment or {})
        created.append(server)
        return server

    try:
        yield make
    finally:
        for server in created:
            server.kill()


class RestClient:
    """A JSON client for a server subprocess, with tokens signed by the test secret."""

    def __init__(self, base_url):
        self.base_url = base_url
        self.tokens = TokenService(TEST_SECRET)
        self.system_token = self.token("platform", "system")
        self.http = AsyncHTTPClient()

    def token(self, user_id, role):
        return self.tokens.mint(user_id, role, 3600)[0]

    async def request(self, method, path, body=None, token=None, timeout=10.0):
        """Return (status, parsed JSON or None); status 599 means no response."""
        headers = {"Authorization": f"Bearer {token or self.system_token}"}
        raw_body = None
        if body is not None:
            raw_body = json.dumps(body, ensure_ascii=False).encode()
            headers["Content-Type"] = "application/json"
        elif method in ("POST", "PUT"):
            raw_body = b""
        request = HTTPRequest(
            self.base_url + path, method=method, headers=headers, body=raw_body,
            request_timeout=timeout, allow_nonstandard_methods=True,
        )
        try:
            response = await self.http.fetch(request, raise_error=False)
        except (OSError, HTTPClientError):
            return 599, None
        parsed = None
        if response.body:
            try:
                parsed = json.loads(response.body)
            except ValueError:
                parsed = None
        return response.code, parsed

    async def put_user(self, user_id, role, name, **extra):
        body = {"name": name, "role": role, **extra}
        status, answer = await self.request("PUT", f"/api/v1/users/{user_id}", body)
        assert status == 200, answer

    async def send(self, kind, body, token=None):
        """Send a message with POST; return (status, parsed JSON or None)."""
        return await self.request("POST", f"/api/v1/chats/{kind}", body, token)


class SocketReader:
    """A live WebSocket of one user that reads and keeps every frame."""

    def __init__(self, connection):
        self.connection = connection
        self.frames = []
        self.task = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, base_url, token):
        url = base_url.replace("http://", "ws://") + f"/ws?token={token}"
        connection = await websocket_connect(url)
        reader = cls(connection)
        await wait_until(
            lambda: any(frame["type"] == "welcome" for frame in reader.frames),
            timeout=10, description="welcome frame",
        )
        return reader

    async def _read(self):
        while True:
            raw = await self.connection.read_message()
            if raw is None:
                return
            self.frames.append(json.loads(raw))

    def close(self):
        self.connection.close()
        self.task.cancel()


def now_ms():
    return int(time.time() * 1000)
