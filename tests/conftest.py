"""Shared fixtures: a real server on 127.0.0.1 over SQLite and MariaDB.

Every test that uses ``app`` (through pytest-tornado's ``http_server`` and
``base_url``) runs once per backend: SQLite always, MariaDB when
IM_TEST_MYSQL_URL is set (e.g. mysql+pymysql://root@127.0.0.1:3306/test).
With that variable set and the server unreachable, the run stops with an
error instead of skipping.

Tests share one database per backend and session, so each test makes its
own users and groups with ``unique`` ids.
"""

import asyncio
import json
import os
import sys
import uuid

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from conf import load_config  # noqa: E402
from handlers import make_app  # noqa: E402
from models.db import Database  # noqa: E402
from models.schema import apply_schema  # noqa: E402
from services.runtime import IMServer  # noqa: E402

MYSQL_URL_VARIABLE = "IM_TEST_MYSQL_URL"
TEST_SECRET = "test-secret-for-the-suite-0123456789abcdef"
FRAME_TIMEOUT_SECONDS = 5


def pytest_configure(config):
    url = os.environ.get(MYSQL_URL_VARIABLE)
    if not url:
        return
    try:
        engine = create_engine(_pymysql(url), connect_args={"connect_timeout": 5})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as error:  # noqa: BLE001 - report any failure to connect
        pytest.exit(
            f"{MYSQL_URL_VARIABLE} is set but MariaDB is unreachable "
            f"({type(error).__name__}: {error}); start it or unset the variable",
            returncode=3,
        )


def _pymysql(url):
    if url.startswith("mysql://"):
        url = "mysql+pymysql://" + url[len("mysql://"):]
    if "charset=" not in url:
        url += ("&" if "?" in url else "?") + "charset=utf8mb4"
    return url


def backends():
    names = ["sqlite"]
    if os.environ.get(MYSQL_URL_VARIABLE):
        names.append("mariadb")
    return names


def create_database(backend, tmp_path_factory):
    """Create an empty database with the schema; return (url, drop)."""
    if backend == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "im.sqlite3"
        url = f"sqlite:///{path}"
        db = Database(url)
        apply_schema(db)
        db.close()
        return url, lambda: None

    base = make_url(_pymysql(os.environ[MYSQL_URL_VARIABLE]))
    name = f"im_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(
            f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        ))
    url = base.set(database=name).render_as_string(hide_password=False)
    db = Database(url, pool_size=1)
    apply_schema(db)
    db.close()

    def drop():
        with admin.begin() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()

    return url, drop


@pytest.fixture(scope="session", params=backends())
def database_url(request, tmp_path_factory):
    url, drop = create_database(request.param, tmp_path_factory)
    yield url
    drop()


@pytest.fixture
def config(database_url):
    return load_config(
        "test",
        environ={},
        overrides={"database_url": database_url, "secret": TEST_SECRET, "port": 0},
    )


@pytest.fixture
def im(config):
    server = IMServer(config)
    server.prepare_database()
    yield server
    server.close()


@pytest.fixture
def app(im):
    return make_app(im)


@pytest.fixture
def unique():
    """Return a function that makes ids unique to this test: unique("doc")."""
    suffix = uuid.uuid4().hex[:8]
    return lambda prefix: f"{prefix}-{suffix}"


class ApiClient:
    """A small JSON client for the REST API of the server under test."""

    def __init__(self, base_url, tokens):
        self.base_url = base_url
        self.tokens = tokens
        self.http = AsyncHTTPClient()
        self.system_token, _ = tokens.mint("platform", "system", 3600)

    def token(self, user_id, role="patient", ttl=3600):
        return self.tokens.mint(user_id, role, ttl)[0]

    async def request(self, method, path, body=None, token=None, headers=None,
                      raw_body=None):
        """Return (status, parsed JSON or None, response)."""
        all_headers = {"Authorization": f"Bearer {token or self.system_token}"}
        if token == "":
            all_headers.pop("Authorization")
        if body is not None:
            raw_body = json.dumps(body, ensure_ascii=False).encode()
            all_headers["Content-Type"] = "application/json"
        all_headers.update(headers or {})
        if raw_body is None and method in ("POST", "PUT"):
            raw_body = b""
        response = await self.http.fetch(
            HTTPRequest(self.base_url + path, method=method, headers=all_headers,
                        body=raw_body, allow_nonstandard_methods=True),
            raise_error=False,
        )
        parsed = None
        if response.body:
            try:
                parsed = json.loads(response.body)
            except ValueError:
                parsed = None
        return response.code, parsed, response

    async def get(self, path, **kwargs):
        return await self.request("GET", path, **kwargs)

    async def post(self, path, body=None, **kwargs):
        return await self.request("POST", path, body=body, **kwargs)

    async def put(self, path, body=None, **kwargs):
        return await self.request("PUT", path, body=body, **kwargs)

    async def delete(self, path, **kwargs):
        return await self.request("DELETE", path, **kwargs)

    async def user(self, user_id, role="patient", name=None, **extra):
        """Register a user and return its token."""
        body = {"name": name or user_id, "role": role, **extra}
        status, answer, _ = await self.put(f"/api/v1/users/{user_id}", body)
        assert status == 200, answer
        return self.token(user_id, role)

    async def group(self, group_id, members, group_type=1, name="care team"):
        body = {"id": group_id, "name": name, "type": group_type, "members": members}
        status, answer, _ = await self.post("/api/v1/groups", body)
        assert status == 201, answer
        return answer


@pytest.fixture
def api(base_url, im, http_server):
    return ApiClient(base_url, im.tokens)


class Socket:
    """A WebSocket client that keeps every frame it receives."""

    def __init__(self, connection):
        self.connection = connection
        self.frames = []

    async def send(self, frame):
        await self.connection.write_message(json.dumps(frame, ensure_ascii=False))

    async def recv(self, timeout=FRAME_TIMEOUT_SECONDS):
        """Return the next frame as a dict, or None when the socket closed."""
        raw = await asyncio.wait_for(self.connection.read_message(), timeout)
        if raw is None:
            return None
        frame = json.loads(raw)
        self.frames.append(frame)
        return frame

    async def expect(self, frame_type, timeout=FRAME_TIMEOUT_SECONDS, **fields):
        """Read until a frame of ``frame_type`` (matching ``fields``) arrives."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"no {frame_type!r} frame within {timeout}s")
            frame = await self.recv(remaining)
            if frame is None:
                raise AssertionError(
                    f"socket closed ({self.close_code}) while waiting for {frame_type!r}"
                )
            if frame["type"] == frame_type and all(
                frame.get(key) == value for key, value in fields.items()
            ):
                return frame

    async def no_frame(self, seconds=0.3):
        """Assert that nothing arrives for a short while."""
        try:
            frame = await self.recv(seconds)
        except asyncio.TimeoutError:
            return
        raise AssertionError(f"unexpected frame {frame}")

    async def closed(self, timeout=FRAME_TIMEOUT_SECONDS):
        """Wait for the server to close the socket; return the close code."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            raw = await asyncio.wait_for(
                self.connection.read_message(), deadline - loop.time()
            )
            if raw is None:
                return self.connection.close_code
        raise AssertionError("socket still open")

    @property
    def close_code(self):
        return self.connection.close_code

    def close(self):
        self.connection.close()


@pytest.fixture
def connect(base_url, im, http_server):
    """Open a socket: ``await connect(token)`` logs in with a login frame."""
    opened = []
    ws_base = base_url.replace("http://", "ws://")

    async def open_socket(token=None, query_token=False, login=True, headers=None):
        url = f"{ws_base}/ws"
        if query_token:
            url += f"?token={token}"
        request = HTTPRequest(url, headers=headers or {})
        socket = Socket(await websocket_connect(request))
        opened.append(socket)
        if token and login and not query_token:
            await socket.send({"type": "login", "token": token})
        if token and login:
            await socket.expect("welcome")
        return socket

    yield open_socket
    for socket in opened:
        socket.close()
