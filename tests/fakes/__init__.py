"""Fake vendor servers for tests: shared machinery.

``getui_fake.GetuiFake`` and ``wechat_fake.WeChatFake`` are real Tornado
HTTP servers on 127.0.0.1. A test can start one on its own IOLoop
(``fake.listen()`` and ``await fake.stop()``), or run one as a separate
process (``python -m tests.fakes.getui_fake --port 0``, which prints the
port it bound) and steer it through the control API under ``/_fake/``
with ``FakeControl``.

Every fake supports, through Python calls and the control API:

- ``inject``: the next N vendor calls (optionally only those of one
  endpoint label) return a vendor error code, a bare HTTP status, a delay
  or a dropped connection. With ``process=True`` the fake handles the
  call first, so a test can model a push that was accepted but whose
  response was lost.
- ``start_outage``: every vendor call in a time window gets HTTP 503 or a
  dropped connection.
- ``calls``: a counter of vendor calls per endpoint label.
"""

import argparse
import asyncio
import collections
import dataclasses
import json
import signal
import socket
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import tornado.httpserver
import tornado.ioloop
import tornado.netutil
import tornado.web
from tornado.log import access_log

HOST = "127.0.0.1"
OUTAGE_MODES = ("http_503", "drop")


@dataclasses.dataclass
class Fault:
    """A failure that the fake applies to its next ``remaining`` matching calls.

    ``path`` is an endpoint label such as ``auth`` or ``push``, or None for
    every vendor call. With ``code`` the fake responds with that vendor error
    code (and ``http_status`` if given, else the vendor's usual status). With
    only ``http_status`` it responds with that status and a non-JSON body.
    ``drop`` closes the connection without a response. ``delay_seconds``
    comes first in every case, and alone it only slows the call down.
    ``process`` makes the fake handle the call normally before it applies
    the delay, drop or error to the response.
    """

    remaining: int = 1
    path: str | None = None
    code: int | None = None
    http_status: int | None = None
    msg: str | None = None
    delay_seconds: float = 0.0
    drop: bool = False
    process: bool = False

    def matches(self, label: str) -> bool:
        return self.remaining > 0 and (self.path is None or self.path == label)

    @property
    def replaces_response(self) -> bool:
        return self.drop or self.code is not None or self.http_status is not None


class FakeServer:
    """Base of the fake vendor servers: listening, faults, outages and control API."""

    name = "fake"

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        self.port: int | None = None
        self.calls: collections.Counter = collections.Counter()
        self._faults: list[Fault] = []
        self._outage_until: float | None = None
        self._outage_mode = "http_503"
        self._server: tornado.httpserver.HTTPServer | None = None
        # Vendor requests still being handled, such as those held by a delay.
        self.active_requests = 0

    # Lifecycle

    def listen(self, port: int = 0) -> int:
        """Start serving on 127.0.0.1 on the current IOLoop and return the port."""
        sockets = tornado.netutil.bind_sockets(port, HOST, family=socket.AF_INET)
        self._server = tornado.httpserver.HTTPServer(self.make_application())
        self._server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        return self.port

    async def stop(self, drain_seconds: float = 5.0) -> None:
        """Stop listening and close connections after delayed requests finish.

        Waits at most ``drain_seconds`` for requests held by a delay fault.
        """
        if self._server is None:
            return
        self._server.stop()
        deadline = time.monotonic() + drain_seconds
        while self.active_requests and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await self._server.close_all_connections()
        self._server = None

    @property
    def base_url(self) -> str:
        return "http://%s:%d" % (HOST, self.port)

    def make_application(self) -> tornado.web.Application:
        control = [(r"/_fake/([a-z_]+)", ControlHandler, {"fake": self})]
        return tornado.web.Application(
            self.vendor_routes() + control, log_function=self.log_request
        )

    def log_request(self, handler: tornado.web.RequestHandler) -> None:
        # Tornado's default access log prints the query string, which contains
        # WeChat access tokens. The path alone is enough for a fake.
        request = handler.request
        access_log.info(
            "%s %d %s %s %.2fms",
            self.name,
            handler.get_status(),
            request.method,
            request.path,
            1000.0 * request.request_time(),
        )

    def vendor_routes(self) -> list:
        raise NotImplementedError

    # Test controls

    def inject(
        self,
        count: int = 1,
        *,
        path: str | None = None,
        code: int | None = None,
        http_status: int | None = None,
        msg: str | None = None,
        delay_seconds: float = 0.0,
        drop: bool = False,
        process: bool = False,
    ) -> Fault:
        """Queue a failure for the next ``count`` matching vendor calls (``Fault``)."""
        fault = Fault(count, path, code, http_status, msg, delay_seconds, drop, process)
        self._faults.append(fault)
        return fault

    def start_outage(self, seconds: float, mode: str = "http_503") -> None:
        """Fail every vendor call for ``seconds`` of the fake's clock."""
        if mode not in OUTAGE_MODES:
            raise ValueError(
                "outage mode %r is invalid: use one of %s" % (mode, OUTAGE_MODES)
            )
        self._outage_until = self.clock() + seconds
        self._outage_mode = mode

    def end_outage(self) -> None:
        self._outage_until = None

    def outage_mode(self) -> str | None:
        if self._outage_until is not None and self.clock() < self._outage_until:
            return self._outage_mode
        return None

    def take_fault(self, label: str) -> Fault | None:
        for fault in self._faults:
            if fault.matches(label):
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
                return fault
        return None

    def reset(self) -> None:
        """Forget recorded calls, queued faults and any outage. Configuration stays."""
        self.calls.clear()
        self._faults.clear()
        self._outage_until = None

    def snapshot(self) -> dict[str, Any]:
        """Return the recorded state for ``GET /_fake/sent``."""
        return {"calls": dict(self.calls)}

    def control(self, action: str, arguments: dict[str, Any]) -> Any:
        """Run one control API action. Subclasses add their own and call this last."""
        if action == "inject":
            fault = self.inject(arguments.pop("count", 1), **arguments)
            return dataclasses.asdict(fault)
        if action == "outage":
            self.start_outage(
                float(arguments["seconds"]), arguments.get("mode", "http_503")
            )
            return {}
        if action == "end_outage":
            self.end_outage()
            return {}
        if action == "reset":
            self.reset()
            return {}
        raise KeyError(action)

    # Responses, implemented by each vendor

    def error_document(self, code: int, msg: str | None) -> tuple[int, dict[str, Any]]:
        """Return the HTTP status and body of a vendor error with ``code``."""
        raise NotImplementedError


class FakeVendorHandler(tornado.web.RequestHandler):
    """Base of the vendor endpoints, which applies outages and faults.

    Subclasses set ``label`` and respond through ``reply`` so that faults
    with ``process=True`` can replace the response.
    """

    label = "vendor"

    def initialize(self, fake: FakeServer):
        self.fake = fake
        self.fault: Fault | None = None
        # True once this request has had a response or was dropped.
        self.responded = False
        self._counted_finish = False

    async def prepare(self):
        self.fake.calls[self.label] += 1
        self.fake.active_requests += 1

        outage = self.fake.outage_mode()
        if outage == "drop":
            self.drop_connection()
            return
        if outage == "http_503":
            self.write_bare_status(503)
            return

        fault = self.fake.take_fault(self.label)
        if fault is None:
            return
        if fault.process:
            self.fault = fault
            return
        if fault.delay_seconds:
            await asyncio.sleep(fault.delay_seconds)
        if fault.replaces_response:
            self.write_fault(fault)

    async def reply(self, status: int, document: dict[str, Any]) -> None:
        fault = self.fault
        if fault is not None:
            if fault.delay_seconds:
                await asyncio.sleep(fault.delay_seconds)
            if fault.replaces_response:
                self.write_fault(fault)
                return
        self.write_json(status, document)

    async def reply_error(self, code: int, msg: str | None = None) -> None:
        status, document = self.fake.error_document(code, msg)
        await self.reply(status, document)

    def write_fault(self, fault: Fault) -> None:
        if fault.drop:
            self.drop_connection()
        elif fault.code is not None:
            status, document = self.fake.error_document(fault.code, fault.msg)
            self.write_json(fault.http_status or status, document)
        else:
            self.write_bare_status(fault.http_status)

    def write_json(self, status: int, document: dict[str, Any]) -> None:
        self.responded = True
        self.set_status(status)
        self.set_header("Content-Type", "application/json;charset=utf-8")
        self.finish(json.dumps(document, ensure_ascii=False))

    def write_bare_status(self, status: int) -> None:
        """Respond like a proxy in front of the vendor: a status and an HTML body."""
        self.responded = True
        self.set_status(status)
        self.set_header("Content-Type", "text/html")
        self.finish("<html><body><h1>%d</h1></body></html>" % status)

    def drop_connection(self) -> None:
        self.responded = True
        self.detach().close()
        self.on_finish()

    def on_finish(self) -> None:
        if not self._counted_finish:
            self._counted_finish = True
            self.fake.active_requests -= 1

    def json_body(self) -> Any:
        """Return the parsed JSON body, or None when it is not JSON."""
        try:
            return json.loads(self.request.body or b"")
        except ValueError:
            return None


class ControlHandler(tornado.web.RequestHandler):
    """Control API: ``GET /_fake/<view>`` and ``POST /_fake/<action>``."""

    def initialize(self, fake: FakeServer):
        self.fake = fake

    def get(self, view: str):
        snapshot = self.fake.snapshot()
        if view not in snapshot:
            raise tornado.web.HTTPError(404)
        self.set_header("Content-Type", "application/json;charset=utf-8")
        self.finish(json.dumps({view: snapshot[view]}, ensure_ascii=False))

    def post(self, action: str):
        try:
            arguments = json.loads(self.request.body or b"{}")
        except ValueError:
            raise tornado.web.HTTPError(400, "control body is not JSON") from None
        try:
            result = self.fake.control(action, dict(arguments))
        except KeyError as error:
            raise tornado.web.HTTPError(
                404, "unknown control action %s" % error
            ) from None
        except (TypeError, ValueError) as error:
            raise tornado.web.HTTPError(400, str(error)) from None
        self.set_header("Content-Type", "application/json;charset=utf-8")
        self.finish(json.dumps(result, ensure_ascii=False))


class FakeControl:
    """Blocking client of a fake's control API, for a fake in another process."""

    def __init__(self, base_url: str, timeout_seconds: float = 5.0):
        self.base_url = base_url.rstrip("/")
        self.timeout_seconds = timeout_seconds

    def get(self, view: str) -> Any:
        with self._open(urllib.request.Request(self._url(view))) as response:
            return json.loads(response.read())[view]

    def post(self, action: str, **arguments: Any) -> Any:
        request = urllib.request.Request(
            self._url(action),
            data=json.dumps(arguments).encode("utf-8"),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with self._open(request) as response:
            return json.loads(response.read())

    def sent(self) -> list[dict[str, Any]]:
        return self.get("sent")

    def inject(self, count: int = 1, **fault: Any) -> Any:
        return self.post("inject", count=count, **fault)

    def _url(self, name: str) -> str:
        return "%s/_fake/%s" % (self.base_url, name)

    def _open(self, request: urllib.request.Request):
        # The fakes listen on 127.0.0.1 only, so never route through a proxy.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        return opener.open(request, timeout=self.timeout_seconds)


def run_standalone(
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    build_fake: Callable[[argparse.Namespace], FakeServer],
    argv: list[str] | None = None,
) -> None:
    """Run a fake until SIGINT or SIGTERM, after printing its port on stdout."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--port", type=int, default=0, help="TCP port on 127.0.0.1; 0 picks a free one"
    )
    add_arguments(parser)
    options = parser.parse_args(argv)

    async def serve() -> None:
        fake = build_fake(options)
        port = fake.listen(options.port)
        print(port, flush=True)

        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopped.set)
        await stopped.wait()
        await fake.stop()

    asyncio.run(serve())
