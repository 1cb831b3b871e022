"""A small records/torndb-style database helper on SQLAlchemy Core.

Raw SQL with ``:named`` parameters, rows as dicts. records itself is not used
because on SQLAlchemy 2 it silently rolls back writes and leaks pooled
connections (see the README's dependency notes).

Every public method is blocking. Code on the IOLoop calls them through
``Database.run``, which uses a bounded thread pool, so the loop never waits
on the driver.
"""

import asyncio
import contextlib
import functools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import create_engine, event, text
from sqlalchemy.exc import DBAPIError, OperationalError

logger = logging.getLogger(__name__)

# MySQL error numbers worth one more try of the whole transaction.
MYSQL_DEADLOCK = 1213
MYSQL_LOCK_WAIT_TIMEOUT = 1205
TRANSACTION_ATTEMPTS = 4


class DatabaseUnavailable(Exception):
    """The database could not be reached or dropped the connection."""


def in_list(values, prefix="v"):
    """Build ``(":v0, :v1, ...", params)`` for an ``IN (...)`` of named parameters."""
    params = {f"{prefix}{n}": value for n, value in enumerate(values)}
    return ", ".join(f":{name}" for name in params), params


class Connection:
    """One connection inside a transaction, with the records-style helpers."""

    def __init__(self, sa_connection, dialect):
        self._conn = sa_connection
        self.dialect = dialect

    def query(self, sql, **params):
        result = self._conn.execute(text(sql), params)
        return [dict(row) for row in result.mappings()]

    def get(self, sql, **params):
        rows = self.query(sql, **params)
        return rows[0] if rows else None

    def scalar(self, sql, **params):
        return self._conn.execute(text(sql), params).scalar()

    def execute(self, sql, **params):
        """Run one statement and return the number of rows it changed."""
        return self._conn.execute(text(sql), params).rowcount

    def insert(self, sql, **params):
        """Run one INSERT and return the new row's auto-increment id."""
        return self._conn.execute(text(sql), params).lastrowid

    def executemany(self, sql, rows):
        if rows:
            self._conn.execute(text(sql), list(rows))

    @property
    def for_update(self):
        """The row-lock suffix for SELECT; SQLite locks the whole file instead."""
        return " FOR UPDATE" if self.dialect == "mysql" else ""


class Database:
    """Engine, thread pool and transaction runner for one database URL."""

    def __init__(self, url, pool_size=8, pool_timeout_seconds=10):
        self.url = url
        if url.startswith("sqlite"):
            self.dialect = "sqlite"
            self.engine = create_engine(
                url,
                connect_args={"check_same_thread": False, "timeout": 30},
            )
            event.listen(self.engine, "connect", _configure_sqlite)
            # SQLite has one writer; serialising here avoids "database is
            # locked" errors between our own threads.
            self._serial = threading.Lock()
            workers = 2
        else:
            self.dialect = "mysql"
            self.engine = create_engine(
                url,
                pool_size=pool_size,
                max_overflow=0,
                pool_timeout=pool_timeout_seconds,
                pool_pre_ping=True,
                pool_recycle=3600,
                isolation_level="READ COMMITTED",
                connect_args={"connect_timeout": 5},
            )
            self._serial = None
            workers = pool_size
        self.executor = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="db"
        )

    def transaction(self, work, *args):
        """Run ``work(conn, *args)`` in one transaction and return its result.

        Commits when ``work`` returns and rolls back when it raises. A MySQL
        deadlock or lock-wait timeout reruns the whole of ``work``, so it must
        not have side effects outside the database. Raises
        DatabaseUnavailable when the database cannot be reached.
        """
        for attempt in range(1, TRANSACTION_ATTEMPTS + 1):
            try:
                return self._run_once(work, args)
            except OperationalError as error:
                code = _mysql_error_code(error)
                if code in (MYSQL_DEADLOCK, MYSQL_LOCK_WAIT_TIMEOUT):
                    if attempt < TRANSACTION_ATTEMPTS:
                        logger.info(
                            "Retrying %s after MySQL error %s (attempt %d)",
                            getattr(work, "__name__", "transaction"),
                            code,
                            attempt,
                        )
                        time.sleep(0.01 * attempt)
                        continue
                raise DatabaseUnavailable(_describe(error)) from error
            except DBAPIError as error:
                if error.connection_invalidated:
                    raise DatabaseUnavailable(_describe(error)) from error
                raise

    def _run_once(self, work, args):
        lock = self._serial
        if lock is not None:
            lock.acquire()
        try:
            with self.engine.begin() as sa_connection:
                return work(Connection(sa_connection, self.dialect), *args)
        finally:
            if lock is not None:
                lock.release()

    @contextlib.contextmanager
    def named_lock(self, name, timeout_seconds=30):
        """Hold a MySQL named lock (GET_LOCK) around a block; no-op on SQLite.

        Unlike a row lock it outlives COMMIT, so work after the commit can
        stay inside it. The name is scoped to this database. Raises
        DatabaseUnavailable when the lock cannot be had in time.
        """
        if self.dialect != "mysql":
            yield
            return
        full_name = f"im:{self.engine.url.database}:{name}"
        try:
            with self.engine.connect() as sa_connection:
                got = sa_connection.execute(
                    text("SELECT GET_LOCK(:n, :t)"), {"n": full_name, "t": timeout_seconds}
                ).scalar()
                if got != 1:
                    raise DatabaseUnavailable(f"Timed out waiting for lock {full_name}")
                try:
                    yield
                finally:
                    sa_connection.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": full_name})
        except OperationalError as error:
            raise DatabaseUnavailable(_describe(error)) from error

    def query(self, sql, **params):
        return self.transaction(lambda conn: conn.query(sql, **params))

    def get(self, sql, **params):
        return self.transaction(lambda conn: conn.get(sql, **params))

    def scalar(self, sql, **params):
        return self.transaction(lambda conn: conn.scalar(sql, **params))

    def execute(self, sql, **params):
        return self.transaction(lambda conn: conn.execute(sql, **params))

    async def run(self, fn, *args, **kwargs):
        """Run a blocking call in the database thread pool."""
        loop = asyncio.get_running_loop()
        call = functools.partial(fn, *args, **kwargs)
        return await loop.run_in_executor(self.executor, call)

    async def run_transaction(self, work, *args):
        return await self.run(self.transaction, work, *args)

    def ping(self):
        self.scalar("SELECT 1")

    def close(self):
        self.executor.shutdown(wait=True)
        self.engine.dispose()


def _configure_sqlite(dbapi_connection, _record):
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _mysql_error_code(error):
    orig = getattr(error, "orig", None)
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):
        return args[0]
    return None


def _describe(error):
    """Name the driver error without its SQL text or parameters."""
    orig = getattr(error, "orig", error)
    code = _mysql_error_code(error)
    name = type(orig).__name__
    return f"{name} {code}" if code is not None else name
