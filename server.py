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
import tornado.ioloop
from tornado.options import define, options, parse_command_line

from conf import VERSION, ConfigError, load_config
from handlers import make_app
from models.db import Database
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
    # APScheduler logs every job run at INFO: once a second per job.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)

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
    app = make_app(im)
    server = tornado.httpserver.HTTPServer(
        app, max_body_size=config.max_body_bytes, xheaders=True
    )
    server.listen(config.port, address=config.address)
    await im.start()

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()

    logger.info("Shutting down: no new connections, closing %d sockets",
                im.registry.connection_count)
    server.stop()
    for socket in im.registry.all_sockets():
        socket.close(CLOSE_GOING_AWAY, "server shutting down")
    await im.stop()
    try:
        await asyncio.wait_for(server.close_all_connections(),
                               timeout=config.shutdown_grace_seconds)
    except asyncio.TimeoutError:
        logger.warning("Connections still open after %.0f s; closing anyway",
                       config.shutdown_grace_seconds)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
