"""Fixtures for browser tests: Debian's Chromium driven by Playwright, and a Tornado
server on 127.0.0.1 that serves the sdk/ folder plus whatever handlers a test adds.

The server runs its own asyncio loop in a background thread, because Playwright's
sync API blocks the test thread. Tests reach the server's loop with LiveServer.call().
"""

import asyncio
import os
import pathlib
import shutil
import threading

import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web

playwright_sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed; run: .venv/bin/pip install playwright"
)

CHROMIUM_PATH = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SDK_DIR = pathlib.Path(__file__).resolve().parents[2] / "sdk"
SERVER_START_TIMEOUT_S = 10


class ChatPageHandler(tornado.web.RequestHandler):
    """Serves sdk/chat.html at /chat, as the IM server does."""

    def get(self):
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.write((SDK_DIR / "chat.html").read_bytes())


class LiveServer:
    """A Tornado application served on 127.0.0.1 from a background thread."""

    def __init__(self, handlers):
        self._handlers = handlers
        self._started = threading.Event()
        self._startup_error = None
        self._thread = threading.Thread(target=self._run, name="browser-test-server", daemon=True)
        self.loop = None
        self.port = None

    def start(self):
        self._thread.start()
        if not self._started.wait(SERVER_START_TIMEOUT_S):
            raise RuntimeError(f"the test server did not start within {SERVER_START_TIMEOUT_S} s")
        if self._startup_error is not None:
            raise self._startup_error
        return self

    def url(self, path="/"):
        return f"http://127.0.0.1:{self.port}{path}"

    def call(self, function, *args, timeout=10):
        """Run function(*args) on the server's loop and return its result.

        function may be a plain function or a coroutine function.
        """

        async def invoke():
            result = function(*args)
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(invoke(), self.loop).result(timeout)

    def stop(self):
        if self.loop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop_event.set)
        self._thread.join(SERVER_START_TIMEOUT_S)

    def _run(self):
        asyncio.run(self._serve())

    async def _serve(self):
        self.loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        try:
            app = tornado.web.Application(
                [
                    (r"/chat", ChatPageHandler),
                    (r"/sdk/(.*)", tornado.web.StaticFileHandler, {"path": str(SDK_DIR)}),
                    *self._handlers,
                ]
            )
            sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
            server = tornado.httpserver.HTTPServer(app)
            server.add_sockets(sockets)
            self.port = sockets[0].getsockname()[1]
        except Exception as error:  # reported to the test thread by start()
            self._startup_error = error
            self._started.set()
            return
        self._started.set()
        await self._stop_event.wait()
        server.stop()
        await server.close_all_connections()


@pytest.fixture
def live_server_factory():
    """Return a function that starts a LiveServer with extra handlers. All of them stop when the test ends."""
    servers = []

    def start(handlers=()):
        server = LiveServer(list(handlers)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


# Module scope, not session scope: while Playwright's sync API (1.65) is open it marks an
# asyncio loop as running in the main thread, and later pytest-tornado tests then fail
# with "Cannot run the event loop while another loop is running".
@pytest.fixture(scope="module")
def chromium():
    if not shutil.which(CHROMIUM_PATH):
        pytest.skip(f"{CHROMIUM_PATH} not found; install it with: apt-get install -y chromium")
    with playwright_sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM_PATH, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def browser_page(chromium):
    """A page in a fresh browser context (empty localStorage).

    page.errors lists uncaught page exceptions, so a test can assert there were none.
    """
    context = chromium.new_context()
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.set_default_timeout(10_000)
    yield page
    context.close()
