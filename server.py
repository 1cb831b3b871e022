"""Entry point of the IM server.

    python server.py [--port N] [--db-url URL]           start serving
    python server.py initdb [--db-url URL]                apply sql/ to the database
    python server.py token --user ID --role ROLE [--ttl SECONDS]
                                                          print a token

IM_PROFILE chooses the configuration profile (dev, test, prod; default dev).
"""

import asyncio
import logging
import signal
import sys

import tornado.httpserver
import tornado.httputil
import tornado.ioloop
from tornado.options import define, options, parse_command_line

from conf import VERSION, ConfigError, load_config
from handlers import make_app
from models.db import Database, DatabaseUnavailable
from models.schema import apply_schema
from services.auth import ROLES, TokenService
from services.runtime import IMServer

logger = logging.getLogger("im.server")

define("port", type=int, default=None, help="TCP port to listen on (default 3000)")
define("db_url", type=str, default=None,
       help="SQLAlchemy database URL, e.g. mysql+pymysql://user:pw@host/db")
define("user", type=str, default=None, help="token: the user id (sub claim)")
define("role", type=str, default=None, help=f"token: one of {', '.join(ROLES)}")
define("ttl", type=int, default=None, help="token: lifetime in seconds")

# Our options, all of which take a value.
VALUE_OPTIONS = {"port", "db_url", "user", "role", "ttl", "logging"}
CLOSE_GOING_AWAY = 1001
COMMANDS = ("serve", "initdb", "token")


def main(argv):
    argv = join_option_values(argv)
    rest = parse_command_line(argv)
    command = rest[0] if rest else "serve"
    if command not in COMMANDS:
        print(f"Unknown command {command!r}; valid commands: {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    if len(rest) > 1:
        # Options may also follow the command: `server.py token --user X`.
        parse_command_line([argv[0]] + rest[1:], final=True)

    try:
        config = load_config(overrides={"port": options.port,
                                        "database_url": options.db_url})
    except ConfigError as error:
        print(f"Configuration error: {error}", file=sys.stderr)
        return 2
    logging.getLogger().setLevel(config.log_level.upper())
    # Start, stop and the profile in use are logged at every log level.
    logger.setLevel(logging.INFO)
    # APScheduler logs every job run at INFO, and a run skipped because the
    # previous one is still going at WARNING. Jobs logs failures itself.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)

    if command == "initdb":
        return initdb(config)
    if command == "token":
        return print_token(config)
    return serve(config)


def join_option_values(argv):
    """Accept `--port 3000` beside tornado.options' own `--port=3000`."""
    joined, index = [argv[0]], 1
    while index < len(argv):
        arg = argv[index]
        name = arg[2:].replace("-", "_")
        if name in VALUE_OPTIONS and index + 1 < len(argv):
            joined.append(f"{arg}={argv[index + 1]}")
            index += 2
        else:
            joined.append(arg)
            index += 1
    return joined


def initdb(config):
    db = Database(config.database_url, pool_size=1)
    try:
        apply_schema(db)
    except DatabaseUnavailable as error:
        print(f"Cannot reach the {db.dialect} database ({error}); check --db-url "
              "or IM_DATABASE_URL", file=sys.stderr)
        return 1
    finally:
        db.close()
    print(f"Schema applied to the {db.dialect} database")
    return 0


def print_token(config):
    if not options.user or options.role not in ROLES:
        print(f"Usage: server.py token --user ID --role {{{'|'.join(ROLES)}}} "
              "[--ttl SECONDS]", file=sys.stderr)
        return 2
    ttl = options.ttl or config.default_token_ttl_seconds
    if not 1 <= ttl <= config.max_token_ttl_seconds:
        print(f"--ttl must be 1-{config.max_token_ttl_seconds} seconds", file=sys.stderr)
        return 2
    token, _ = TokenService(config.secret).mint(options.user, options.role, ttl)
    print(token)
    return 0


def serve(config):
    logger.info("Starting IM server, version %s, running on port %d",
                VERSION, config.port)
    logger.info("Configuration profile: %s", config.profile)
    im = IMServer(config)
    try:
        im.prepare_database()
    except Exception as error:  # noqa: BLE001 - report and stop start-up
        logger.error("Database not ready (%s): %s", im.db.dialect, type(error).__name__)
        logger.error("Run `python server.py initdb` for MySQL, and check IM_DATABASE_URL")
        return 1
    logger.info("Database: %s", im.db.dialect)

    asyncio.run(_serve_forever(im))
    im.close()
    logger.info("IM server stopped")
    return 0


async def _serve_forever(im):
    config = im.config
    # Handlers first: a signal that arrives during start-up still shuts
    # down cleanly instead of killing the process.
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)

    app = make_app(im)
    server = DrainingHTTPServer(
        app, max_body_size=config.max_body_bytes, xheaders=True
    )
    server.listen(config.port, address=config.address)
    await im.start()
    await stopping.wait()
    await _shut_down(im, server)


async def _shut_down(im, server):
    """Stop accepting, close sockets, finish requests and jobs, drain sends.

    Requests and job runs in progress get up to shutdown_grace_seconds in
    all. Queued sends are always stored, however long that takes.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + im.config.shutdown_grace_seconds
    logger.info("Shutting down: no new connections, closing %d sockets",
                im.registry.connection_count)
    server.stop()
    await server.close_idle_connections()
    _close_sockets(im)

    if not await server.wait_for_requests(deadline - loop.time()):
        logger.warning("%d connections still busy with a request after %.0f s; "
                       "closing them", server.busy_count,
                       im.config.shutdown_grace_seconds)
    # A WebSocket upgrade that was in progress above has opened a socket since.
    _close_sockets(im)
    if not await im.jobs.finish_running(deadline - loop.time()):
        logger.warning("Job runs still in progress after %.0f s; cancelling them",
                       im.config.shutdown_grace_seconds)
    await im.stop()
    await server.close_all_connections()


def _close_sockets(im):
    for socket in im.registry.all_sockets():
        socket.close(CLOSE_GOING_AWAY, "server shutting down")


class DrainingHTTPServer(tornado.httpserver.HTTPServer):
    """An HTTPServer that lets the requests in progress finish on shutdown.

    A connection is busy from the arrival of a request's headers until
    Tornado starts reading the next request on it, which happens once the
    response has been written, or until it closes. A WebSocket is busy
    only until its upgrade. After close_idle_connections(), a connection
    is closed as soon as it stops being busy.
    """

    def initialize(self, *args, **kwargs):
        super().initialize(*args, **kwargs)
        self._open = set()
        self._busy = set()
        # Connections being closed. A request read from one of them is
        # dropped, because its handler could not send the response.
        self._closing = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._draining = False

    @property
    def busy_count(self):
        return len(self._busy)

    def start_request(self, server_conn, request_conn):
        self._open.add(server_conn)
        self._mark_idle(server_conn)
        if self._draining:
            # The previous response is written, so closing loses nothing.
            self._closing.add(server_conn)
            request_conn.close()
        delegate = super().start_request(server_conn, request_conn)
        return _RequestGate(delegate, lambda: self._admit(server_conn))

    def on_close(self, server_conn):
        self._open.discard(server_conn)
        self._closing.discard(server_conn)
        self._mark_idle(server_conn)
        super().on_close(server_conn)

    async def close_idle_connections(self):
        """Close connections between requests. Busy ones close after their response."""
        self._draining = True
        idle = [conn for conn in self._open if conn not in self._busy]
        self._closing.update(idle)
        await asyncio.gather(*(conn.close() for conn in idle))

    async def wait_for_requests(self, timeout):
        """Wait until no request is in progress. Return False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), max(timeout, 0))
        except asyncio.TimeoutError:
            return False
        return True

    async def close_all_connections(self):
        self._closing.update(self._open)
        await super().close_all_connections()

    def _admit(self, server_conn):
        """Mark a connection busy as its request headers arrive.

        Return False, so that the request is dropped, on a closing connection.
        """
        if server_conn in self._closing:
            return False
        self._busy.add(server_conn)
        self._idle.clear()
        return True

    def _mark_idle(self, server_conn):
        self._busy.discard(server_conn)
        if not self._busy:
            self._idle.set()


class _RequestGate(tornado.httputil.HTTPMessageDelegate):
    """Pass a request on to ``delegate`` only if ``admit()`` allows it.

    Tornado 6.6's IOStream.close() still hands already buffered bytes to
    a pending read, so a request may arrive on a connection being closed.
    """

    def __init__(self, delegate, admit):
        self._delegate = delegate
        self._admit = admit
        self._admitted = False

    def headers_received(self, start_line, headers):
        self._admitted = self._admit()
        if self._admitted:
            return self._delegate.headers_received(start_line, headers)
        return None

    def data_received(self, chunk):
        if self._admitted:
            return self._delegate.data_received(chunk)
        return None

    def finish(self):
        if self._admitted:
            self._delegate.finish()

    def on_connection_close(self):
        if self._admitted:
            self._delegate.on_connection_close()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
