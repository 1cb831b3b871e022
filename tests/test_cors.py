"""Browsers on other origins: CORS on the REST API and Origin checks on /ws.

The test profile allows http://localhost, http://127.0.0.1 and http://[::1]
on any port, like dev. Tests that need another list set ``allowed_origins``
through ``with_origins``. The last test drives a real Chromium: a page
served on another port calls the API with fetch() and opens a WebSocket.
"""

import asyncio
import json
import os
import shutil
import threading
from types import SimpleNamespace

import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from assertions import assert_error
from conf import ConfigError, load_config
from conftest import TEST_SECRET, create_database
from handlers import make_app
from handlers.base import BaseHandler
from hardening_support import LiveServer
from services.origins import OriginPolicy

ALLOWED = "http://localhost:8080"
DISALLOWED = "https://evil.example.org"
CORS_HEADERS = ("Access-Control-Allow-Origin", "Access-Control-Allow-Methods",
                "Access-Control-Allow-Headers", "Access-Control-Max-Age",
                "Access-Control-Expose-Headers")
ALLOW_HEADERS = "Authorization, Content-Type, X-Request-Id"
CHROMIUM_PATH = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
BROWSER_TIMEOUT_SECONDS = 30


@pytest.fixture
def config(config, request):
    """The suite's config, with the origins a test passes through ``with_origins``."""
    origins = getattr(request, "param", None)
    if origins is not None:
        config.allowed_origins = origins
    return config


def with_origins(origins, name):
    return pytest.mark.parametrize("config", [origins], indirect=True, ids=[name])


async def preflight(api, path, origin=ALLOWED, method="POST",
                    headers="authorization, content-type"):
    request_headers = {"Access-Control-Request-Method": method,
                       "Access-Control-Request-Headers": headers}
    if origin is not None:
        request_headers["Origin"] = origin
    return await api.request("OPTIONS", path, token="", headers=request_headers)


def cors_headers(response):
    return {name: response.headers[name] for name in CORS_HEADERS
            if name in response.headers}


# -- the origin rules --------------------------------------------------------------


@pytest.mark.parametrize("origin, allowed", [
    ("http://localhost", True),
    ("http://localhost:80", True),
    ("http://localhost:3000", True),
    ("http://LOCALHOST:65535", True),
    ("http://127.0.0.1:1", True),
    ("http://[::1]:8080", True),
    ("https://localhost:8080", False),
    ("http://localhost.evil.example.org", False),
    ("http://127.0.0.2:8080", False),
    ("http://localhost:8080/path", False),
    ("null", False),
    ("", False),
    ("file://", False),
])
def test_dev_origins_allow_local_pages_on_any_port(origin, allowed):
    policy = OriginPolicy(load_config("dev", environ={"IM_SECRET": TEST_SECRET})
                          .allowed_origins)

    assert policy.allows(origin) is allowed


def test_prod_allows_no_origin_unless_configured():
    environ = {"IM_SECRET": TEST_SECRET,
               "IM_DATABASE_URL": "mysql+pymysql://im@127.0.0.1:3306/im"}

    default = OriginPolicy(load_config("prod", environ=environ).allowed_origins)
    configured = OriginPolicy(load_config("prod", environ={
        **environ, "IM_ALLOWED_ORIGINS": "https://care.example.org, http://localhost:*"
    }).allowed_origins)

    assert not default.allows("https://care.example.org")
    assert not default.allows("http://localhost:8080")
    assert configured.allows("https://care.example.org")
    assert configured.allows("https://care.example.org:443")
    assert configured.allows("http://localhost:5173")
    assert not configured.allows("http://care.example.org")


def test_test_profile_matches_dev_origins():
    dev = load_config("dev", environ={"IM_SECRET": TEST_SECRET})
    test = load_config("test", environ={})

    assert tuple(test.allowed_origins) == tuple(dev.allowed_origins)


def test_star_allows_every_origin():
    policy = OriginPolicy(["*"])

    assert policy.allows("https://anything.example.com:9")
    assert not policy.allows("")


@pytest.mark.parametrize("value", ["care.example.org", "https://care.example.org/",
                                   "https://care.example.org:99999", "https://*.org",
                                   "ftp//x"])
def test_malformed_allowed_origin_is_config_error(value):
    with pytest.raises(ConfigError, match="IM_ALLOWED_ORIGINS"):
        load_config("test", environ={"IM_ALLOWED_ORIGINS": value})


# -- preflights ---------------------------------------------------------------------


def route_samples():
    """(path, allowed methods) of one concrete path per REST route."""
    app = make_app(SimpleNamespace(config=load_config("test", environ={})))
    samples = {
        "/api/v1/chats/recent": None, "/api/v1/chats/read": None,
        "/api/v1/chats/scheduled/1": None, "/api/v1/chats/pm": None,
        "/api/v1/chats/sm/7": None, "/api/v1/users/u1": None,
        "/api/v1/users/u1/logout": None, "/api/v1/users/u1/groups": None,
        "/api/v1/groups": None, "/api/v1/groups/g1": None,
        "/api/v1/groups/g1/members": None, "/api/v1/groups/g1/members/u1": None,
        "/api/v1/tokens": None, "/api/v1/status": None, "/metrics": None,
        "/health": None, "/wechat/callback": None,
    }
    for path in samples:
        for rule in app.wildcard_router.rules:
            if rule.matcher.regex.fullmatch(path):
                samples[path] = ", ".join(rule.target.allowed_methods())
                break
    return sorted(samples.items())


@pytest.mark.parametrize("path, methods", route_samples())
@pytest.mark.gen_test(timeout=30)
async def test_preflight_from_allowed_origin_returns_cors_answer(api, path, methods):
    status, answer, response = await preflight(api, path)

    assert status == 204
    assert answer is None
    assert cors_headers(response) == {
        "Access-Control-Allow-Origin": ALLOWED,
        "Access-Control-Allow-Methods": methods,
        "Access-Control-Allow-Headers": ALLOW_HEADERS,
        "Access-Control-Max-Age": "600",
        "Access-Control-Expose-Headers": "Retry-After, X-Request-Id",
    }
    assert response.headers["Vary"] == "Origin"
    assert "OPTIONS" in methods


@pytest.mark.gen_test(timeout=30)
async def test_preflight_lists_only_the_route_methods(api):
    _, _, send = await preflight(api, "/api/v1/chats/pm")
    _, _, recall = await preflight(api, "/api/v1/chats/pm/1", method="DELETE")

    assert send.headers["Access-Control-Allow-Methods"] == "GET, POST, OPTIONS"
    assert recall.headers["Access-Control-Allow-Methods"] == "DELETE, OPTIONS"


@pytest.mark.parametrize("origin", [DISALLOWED, "null", "http://localhost.evil.example.org",
                                    "https://localhost:8080"])
@pytest.mark.gen_test(timeout=30)
async def test_preflight_from_other_origin_returns_403(api, origin):
    status, answer, response = await preflight(api, "/api/v1/chats/pm", origin=origin)

    assert_error(status, answer, 403, "forbidden")
    assert cors_headers(response) == {}


@pytest.mark.gen_test(timeout=30)
async def test_options_without_origin_lists_methods(api):
    status, answer, response = await preflight(api, "/api/v1/groups", origin=None)

    assert status == 204
    assert response.headers["Allow"] == "POST, OPTIONS"
    assert cors_headers(response) == {}


@pytest.mark.gen_test(timeout=30)
async def test_preflight_of_unknown_path_returns_404(api):
    status, answer, response = await preflight(api, "/api/v1/nothing")

    assert_error(status, answer, 404, "not_found")
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED


@pytest.mark.gen_test(timeout=30)
async def test_preflight_skips_token_and_path_checks(api):
    status, _, _ = await preflight(api, "/api/v1/users/" + "u" * 65, method="GET")

    assert status == 204


@with_origins(["https://care.example.org"], "care-only")
@pytest.mark.gen_test(timeout=30)
async def test_configured_origin_replaces_local_defaults(api):
    allowed, _, allowed_response = await preflight(api, "/api/v1/chats/pm",
                                                   origin="https://care.example.org")
    local, local_answer, local_response = await preflight(api, "/api/v1/chats/pm")

    assert allowed == 204
    assert allowed_response.headers["Access-Control-Allow-Origin"] == (
        "https://care.example.org")
    assert_error(local, local_answer, 403, "forbidden")
    assert cors_headers(local_response) == {}


@with_origins([], "none")
@pytest.mark.gen_test(timeout=30)
async def test_empty_origin_list_rejects_every_preflight(api):
    status, answer, response = await preflight(api, "/api/v1/chats/pm")

    assert_error(status, answer, 403, "forbidden")
    assert cors_headers(response) == {}


# -- actual requests ----------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_answer_to_allowed_origin_carries_cors_headers(api, unique):
    doctor = unique("doc")
    token = await api.user(doctor, "doctor")

    status, _, response = await api.get(f"/api/v1/users/{doctor}", token=token,
                                        headers={"Origin": ALLOWED})

    assert status == 200
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert response.headers["Access-Control-Expose-Headers"] == "Retry-After, X-Request-Id"
    assert response.headers["Vary"] == "Origin"


@pytest.mark.parametrize("method, path, status, code", [
    ("GET", "/api/v1/chats/recent?user_id=x", 401, "unauthorized"),
    ("GET", "/api/v1/nothing", 404, "not_found"),
    ("POST", "/api/v1/tokens", 400, "invalid_argument"),
    ("PATCH", "/api/v1/tokens", 405, "invalid_argument"),
])
@pytest.mark.gen_test(timeout=30)
async def test_error_answer_to_allowed_origin_carries_cors_headers(
        api, method, path, status, code):
    token = "" if status == 401 else None
    body = {} if method == "POST" else None
    got, answer, response = await api.request(method, path, body=body, token=token,
                                              headers={"Origin": ALLOWED})

    assert_error(got, answer, status, code, field=answer["error"].get("field"))
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert response.headers["X-Request-Id"]


@pytest.mark.gen_test(timeout=30)
async def test_answer_to_other_origin_has_no_cors_headers(api, unique):
    doctor = unique("doc")
    token = await api.user(doctor, "doctor")

    status, _, response = await api.get(f"/api/v1/users/{doctor}", token=token,
                                        headers={"Origin": DISALLOWED})

    assert status == 200
    assert cors_headers(response) == {}


@pytest.mark.gen_test(timeout=30)
async def test_answer_without_origin_has_no_cors_headers(api):
    status, _, response = await api.get("/health")

    assert status == 200
    assert cors_headers(response) == {}


def test_every_rest_handler_answers_options():
    app = make_app(SimpleNamespace(config=load_config("test", environ={})))
    handlers = {rule.target for rule in app.wildcard_router.rules
                if isinstance(rule.target, type) and issubclass(rule.target, BaseHandler)}

    missing = [handler.__name__ for handler in handlers
               if "OPTIONS" not in handler.allowed_methods()]

    assert handlers
    assert missing == []


# -- the WebSocket handshake ----------------------------------------------------------


async def ws_handshake(base_url, token, origin=None):
    """Open /ws with an Origin header; return the first frame's type or the HTTP error."""
    url = base_url.replace("http://", "ws://") + f"/ws?token={token}"
    headers = {"Origin": origin} if origin else {}
    try:
        connection = await websocket_connect(HTTPRequest(url, headers=headers))
    except HTTPClientError as error:
        return error.code
    frame = json.loads(await connection.read_message())
    connection.close()
    return frame["type"]


@pytest.mark.parametrize("origin, outcome", [
    (ALLOWED, "welcome"),
    ("http://127.0.0.1:9", "welcome"),
    (None, "welcome"),
    (DISALLOWED, 403),
    ("null", 403),
])
@pytest.mark.gen_test(timeout=30)
async def test_socket_handshake_checks_origin(api, base_url, unique, origin, outcome):
    token = await api.user(unique("pat"))

    assert await ws_handshake(base_url, token, origin) == outcome


@with_origins([], "none")
@pytest.mark.gen_test(timeout=30)
async def test_socket_from_own_host_is_accepted_without_origins(api, base_url, unique):
    token = await api.user(unique("pat"))
    own_origin = base_url  # http://127.0.0.1:PORT, the Host the client sends

    assert await ws_handshake(base_url, token, own_origin) == "welcome"
    assert await ws_handshake(base_url, token, "http://localhost:8080") == 403


# -- a real browser ---------------------------------------------------------------------
# Chromium runs on a thread of its own with Playwright's async API, so no
# asyncio loop is left marked as running on the main thread for the tests
# that pytest-tornado runs after this module.


class BrowserThread:
    """Chromium driven by Playwright on a thread with its own event loop."""

    def __init__(self):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="chromium", daemon=True)
        self._playwright = None
        self.browser = None

    def start(self):
        from playwright.async_api import async_playwright

        self._thread.start()

        async def launch():
            self._playwright = await async_playwright().start()
            self.browser = await self._playwright.chromium.launch(
                executable_path=CHROMIUM_PATH, args=CHROMIUM_ARGS)

        self.run(launch)
        return self

    def run(self, coroutine_function, *args):
        return asyncio.run_coroutine_threadsafe(
            coroutine_function(*args), self._loop
        ).result(BROWSER_TIMEOUT_SECONDS)

    def stop(self):
        async def close():
            await self.browser.close()
            await self._playwright.stop()

        self.run(close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(BROWSER_TIMEOUT_SECONDS)


@pytest.fixture(scope="module")
def chromium():
    pytest.importorskip("playwright.async_api")
    if not shutil.which(CHROMIUM_PATH):
        pytest.skip(f"{CHROMIUM_PATH} not found; install it with apt-get install chromium")
    browser = BrowserThread().start()
    yield browser
    browser.stop()


class PageHandler(tornado.web.RequestHandler):
    def get(self):
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish("<!doctype html><title>other origin</title><p>page</p>")


class PageServer:
    """An empty HTML page on 127.0.0.1, on a thread of its own."""

    def __init__(self):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="page-server", daemon=True)
        self.port = None

    def start(self):
        self._thread.start()
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]

        async def listen():
            self._server = tornado.httpserver.HTTPServer(
                tornado.web.Application([(r"/", PageHandler)]))
            self._server.add_sockets(sockets)

        asyncio.run_coroutine_threadsafe(listen(), self._loop).result(10)
        return self

    def stop(self):
        async def close():
            self._server.stop()
            await self._server.close_all_connections()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


CALL_API_SCRIPT = """async ([api, token, user]) => {
  const result = {};
  try {
    const response = await fetch(api + "/api/v1/users/" + user, {
      method: "PUT",
      headers: {"Authorization": "Bearer " + token, "Content-Type": "application/json",
                "X-Request-Id": "browser-check-1"},
      body: JSON.stringify({name: "Browser", role: "patient"}),
    });
    result.status = response.status;
    result.body = await response.json();
    result.requestId = response.headers.get("X-Request-Id");
  } catch (error) {
    result.fetchError = error.name;
  }
  result.socket = await new Promise((resolve) => {
    const socket = new WebSocket(api.replace("http:", "ws:") + "/ws?token=" + token);
    socket.onmessage = (event) => { resolve(JSON.parse(event.data).type); socket.close(); };
    socket.onclose = (event) => resolve("closed " + event.code);
  });
  return result;
}"""


def test_chromium_calls_api_only_from_allowed_origin(chromium, tmp_path_factory):
    url, _ = create_database("sqlite", tmp_path_factory)
    config = load_config("test", environ={}, overrides={
        "database_url": url, "secret": TEST_SECRET, "port": 0,
        "allowed_origins": ["http://localhost:*"],
    })
    server = LiveServer(config).start()
    pages = PageServer().start()
    user = "browser-patient"
    token, _ = server.im.tokens.mint(user, "patient", 600)

    async def call_from(page_url):
        context = await chromium.browser.new_context()
        page = await context.new_page()
        await page.goto(page_url)
        result = await page.evaluate(CALL_API_SCRIPT, [server.base_url, token, user])
        await context.close()
        return result

    try:
        allowed = chromium.run(call_from, f"http://localhost:{pages.port}/")
        other = chromium.run(call_from, f"http://127.0.0.1:{pages.port}/")
    finally:
        pages.stop()
        server.stop()

    assert allowed["status"] == 200
    assert allowed["body"]["id"] == user
    assert allowed["requestId"] == "browser-check-1"
    assert allowed["socket"] == "welcome"
    assert other.get("status") is None
    assert other["fetchError"] == "TypeError"
    assert other["socket"] == "closed 1006"
