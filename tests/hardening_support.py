"""Helpers for the hardening tests: bad tokens, a server on its own thread, a TCP proxy.

``LiveServer`` runs the application on a background thread with an event
loop of its own, for clients that block (schemathesis' requests, a
hypothesis loop driving one socket). ``TcpProxy`` forwards 127.0.0.1
connections to MariaDB and can cut them, so a test simulates a database
outage without touching the shared server.
"""

import asyncio
import base64
import json
import socket
import threading
import time

import tornado.httpserver
import tornado.netutil

from handlers import make_app
from services.auth import TokenService
from services.runtime import IMServer

OTHER_SECRET = "another-secret-that-did-not-sign-these-0123456789"
THREAD_START_TIMEOUT_SECONDS = 10


def b64url(data):
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def bad_tokens(tokens, user_id, role="patient"):
    """Return the tokens a server must reject for ``user_id``, by caller name.

    ``expired`` is signed with the server's secret but expired a minute
    ago. ``other_secret`` is signed with another key. ``alg_none`` is an
    unsigned token that claims the system role.
    """
    expired, _ = tokens.mint(user_id, role, 60, now=time.time() - 120)
    foreign, _ = TokenService(OTHER_SECRET).mint(user_id, role, 3600)
    now = int(time.time())
    claims = {"sub": user_id, "role": "system", "iat": now, "exp": now + 600}
    unsigned = f"{b64url({'alg': 'none', 'typ': 'JWT'})}.{b64url(claims)}."
    return {"expired": expired, "other_secret": foreign, "alg_none": unsigned}


# -- a server on its own thread -----------------------------------------------


class LiveServer:
    """The application on 127.0.0.1, served by a thread with its own event loop.

    ``run(coroutine_function)`` runs a coroutine on the server's loop and
    returns its result, for reads of server state from the test thread.
    """

    def __init__(self, config):
        self.config = config
        self.im = IMServer(config)
        self.im.prepare_database()
        self.port = None
        self._loop = None
        self._server = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="live-server",
                                        daemon=True)

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self):
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self):
        self._thread.start()
        if not self._ready.wait(THREAD_START_TIMEOUT_SECONDS):
            raise RuntimeError("the live server did not start")
        return self

    def _serve(self):
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
        self.port = sockets[0].getsockname()[1]

        async def listen():
            self._server = tornado.httpserver.HTTPServer(
                make_app(self.im), max_body_size=self.config.max_body_bytes
            )
            self._server.add_sockets(sockets)

        self._loop.run_until_complete(listen())
        self._ready.set()
        self._loop.run_forever()

    def run(self, coroutine_function, *args, timeout=30):
        future = asyncio.run_coroutine_threadsafe(coroutine_function(*args), self._loop)
        return future.result(timeout)

    def stop(self):
        async def shut_down():
            self._server.stop()
            for socket_handler in self.im.registry.all_sockets():
                socket_handler.close(1001, "test over")
            await self.im.dispatcher.drain()
            await self._server.close_all_connections()

        self.run(shut_down)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(THREAD_START_TIMEOUT_SECONDS)
        self.im.close()


# -- a TCP proxy that can cut connections -------------------------------------


class TcpProxy:
    """Forward connections from 127.0.0.1:<port> to an upstream host and port.

    ``cut()`` closes every open connection and turns new ones away (they are
    accepted and closed at once, as by a crashed server); ``restore()``
    forwards again. Runs on a thread with its own event loop.
    """

    def __init__(self, upstream_host, upstream_port):
        self._upstream = (upstream_host, upstream_port)
        self._loop = asyncio.new_event_loop()
        self._server = None
        self._writers = set()
        self.up = True
        self.connections_opened = 0
        self.port = None
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="tcp-proxy", daemon=True)

    def start(self):
        self._thread.start()
        self.port = self._call(self._listen)
        return self

    async def _listen(self):
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    async def _accept(self, client_reader, client_writer):
        if not self.up:
            _abort(client_writer)
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                *self._upstream
            )
        except OSError:
            _abort(client_writer)
            return
        self.connections_opened += 1
        self._writers.update((client_writer, upstream_writer))
        await asyncio.gather(
            self._pipe(client_reader, upstream_writer),
            self._pipe(upstream_reader, client_writer),
        )
        self._writers.difference_update((client_writer, upstream_writer))

    async def _pipe(self, reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            _abort(writer)

    @property
    def open_connections(self):
        return len(self._writers) // 2

    def cut(self):
        """Reset every forwarded connection and refuse new ones until restore()."""

        async def cut_all():
            self.up = False
            for writer in list(self._writers):
                _abort(writer)

        self._call(cut_all)

    def restore(self):
        async def bring_up():
            self.up = True

        self._call(bring_up)

    def stop(self):
        async def close():
            self.up = False
            for writer in list(self._writers):
                _abort(writer)
            self._server.close()

        self._call(close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(THREAD_START_TIMEOUT_SECONDS)

    def _call(self, coroutine_function):
        return asyncio.run_coroutine_threadsafe(
            coroutine_function(), self._loop
        ).result(THREAD_START_TIMEOUT_SECONDS)


def _abort(writer):
    """Close a connection at once with a reset, dropping unsent data."""
    transport = writer.transport
    if not transport.is_closing():
        transport.abort()
