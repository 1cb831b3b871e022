"""The schema files in sql/: MySQL and SQLite twins, charset, idempotence, initdb.

The server runs on MariaDB in production and on SQLite in development with
the same queries, so the two sets of files must define the same tables and
columns. The MySQL side is read from a real MariaDB database when
IM_TEST_MYSQL_URL is set, and parsed from the files otherwise.
"""

import os
import re
import subprocess
import sys
import uuid

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from conftest import MYSQL_URL_VARIABLE, ROOT, TEST_SECRET, backends
from models.db import Database
from models.schema import apply_schema, schema_paths, split_statements

MYSQL_CHARSET = "utf8mb4"
MYSQL_COLLATION = "utf8mb4_unicode_ci"
TABLE_KEYWORDS = {"PRIMARY", "KEY", "UNIQUE", "INDEX", "CONSTRAINT", "FULLTEXT"}
CREATE_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+) \((.*)\)(.*)", re.S)
CLI_TIMEOUT_SECONDS = 60


# -- databases ----------------------------------------------------------------


def mysql_admin_url():
    url = os.environ[MYSQL_URL_VARIABLE]
    if url.startswith("mysql://"):
        url = "mysql+pymysql://" + url[len("mysql://"):]
    if "charset=" not in url:
        url += ("&" if "?" in url else "?") + "charset=utf8mb4"
    return make_url(url)


@pytest.fixture
def empty_mariadb():
    """An empty MariaDB database whose default charset is latin1; yields its URL.

    The latin1 default makes the test see whether every table sets utf8mb4
    itself instead of inheriting it from the database.
    """
    if not os.environ.get(MYSQL_URL_VARIABLE):
        pytest.skip(f"{MYSQL_URL_VARIABLE} is not set")
    admin_url = mysql_admin_url()
    name = f"im_schema_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE DATABASE {name} CHARACTER SET latin1"))
    yield admin_url.set(database=name).render_as_string(hide_password=False)
    with admin.begin() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
    admin.dispose()


@pytest.fixture(params=backends())
def empty_database(request, tmp_path):
    """An empty database of each backend; yields its URL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'schema.sqlite3'}"
    else:
        yield request.getfixturevalue("empty_mariadb")


def applied(url):
    """Apply the schema to ``url`` and return the open Database."""
    db = Database(url, pool_size=1)
    apply_schema(db)
    return db


# -- reading table definitions ------------------------------------------------


def sqlite_tables(db):
    """``{table: [column names]}`` from SQLite's catalog."""
    names = db.query(
        "SELECT name FROM sqlite_master WHERE type = 'table'"
        " AND name NOT LIKE 'sqlite_%' ORDER BY name"
    )
    return {
        row["name"]: [c["name"] for c in db.query(f"PRAGMA table_info({row['name']})")]
        for row in names
    }


def mariadb_tables(db):
    """``{table: [column names]}`` from information_schema."""
    rows = db.query(
        "SELECT TABLE_NAME AS t, COLUMN_NAME AS c FROM information_schema.COLUMNS"
        " WHERE TABLE_SCHEMA = DATABASE() ORDER BY TABLE_NAME, ORDINAL_POSITION"
    )
    tables = {}
    for row in rows:
        tables.setdefault(row["t"], []).append(row["c"])
    return tables


def parsed_mysql_tables():
    """``{table: (columns, table options)}`` parsed from the MySQL files."""
    tables = {}
    for path in schema_paths("mysql"):
        with open(path, encoding="utf-8") as schema_file:
            statements = split_statements(schema_file.read())
        for statement in statements:
            match = CREATE_TABLE.match(statement.strip())
            if match is None:
                continue
            name, body, options = match.groups()
            columns = []
            for line in body.splitlines():
                word = line.strip().split(" ", 1)[0]
                if word and word.upper() not in TABLE_KEYWORDS:
                    columns.append(word)
            tables[name] = (columns, options)
    return tables


@pytest.fixture
def mysql_tables(request):
    """``{table: [column names]}`` of the MySQL schema, from MariaDB if set."""
    if not os.environ.get(MYSQL_URL_VARIABLE):
        return {name: columns for name, (columns, _) in parsed_mysql_tables().items()}
    db = applied(request.getfixturevalue("empty_mariadb"))
    try:
        return mariadb_tables(db)
    finally:
        db.close()


@pytest.fixture
def sqlite_schema_tables(tmp_path):
    db = applied(f"sqlite:///{tmp_path / 'twin.sqlite3'}")
    try:
        return sqlite_tables(db)
    finally:
        db.close()


# -- the twins agree ----------------------------------------------------------


def test_twins_define_same_tables(mysql_tables, sqlite_schema_tables):
    assert sorted(sqlite_schema_tables) == sorted(mysql_tables)


def test_twins_define_same_columns(mysql_tables, sqlite_schema_tables):
    differences = {
        table: {"mysql": columns, "sqlite": sqlite_schema_tables.get(table)}
        for table, columns in mysql_tables.items()
        if sqlite_schema_tables.get(table) != columns
    }

    assert differences == {}


def test_parsed_mysql_schema_matches_mariadb(empty_mariadb):
    parsed = {name: columns for name, (columns, _) in parsed_mysql_tables().items()}
    db = applied(empty_mariadb)
    try:
        created = mariadb_tables(db)
    finally:
        db.close()

    assert created == parsed


def test_mysql_files_declare_utf8mb4_tables():
    options = {name: opts for name, (_, opts) in parsed_mysql_tables().items()}
    missing = [
        name for name, table_options in options.items()
        if f"CHARSET={MYSQL_CHARSET}" not in table_options
        or f"COLLATE={MYSQL_COLLATION}" not in table_options
    ]

    assert options
    assert missing == []


def test_mariadb_tables_are_utf8mb4(empty_mariadb):
    db = applied(empty_mariadb)
    try:
        tables = db.query(
            "SELECT TABLE_NAME AS t, TABLE_COLLATION AS c"
            " FROM information_schema.TABLES"
            " WHERE TABLE_SCHEMA = DATABASE()"
        )
        columns = db.query(
            "SELECT TABLE_NAME AS t, COLUMN_NAME AS c, CHARACTER_SET_NAME AS s"
            " FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()"
            " AND CHARACTER_SET_NAME IS NOT NULL"
        )
    finally:
        db.close()

    assert tables
    assert {row["t"]: row["c"] for row in tables if row["c"] != MYSQL_COLLATION} == {}
    assert columns
    assert [(row["t"], row["c"]) for row in columns if row["s"] != MYSQL_CHARSET] == []


def test_mariadb_stores_four_byte_characters(empty_mariadb):
    name = "患者 𠮷 👨‍👩‍👧‍👦"
    db = applied(empty_mariadb)
    try:
        db.execute(
            "INSERT INTO talk_user (id, name, role, created_at, updated_at)"
            " VALUES ('u-emoji', :name, 'patient', 0, 0)", name=name,
        )
        stored = db.scalar("SELECT name FROM talk_user WHERE id = 'u-emoji'")
    finally:
        db.close()

    assert stored == name


# -- applying twice ------------------------------------------------------------


def table_counts(db, tables):
    return {table: db.scalar(f"SELECT COUNT(*) FROM {table}") for table in tables}


def test_schema_applies_twice_and_keeps_data(empty_database):
    db = applied(empty_database)
    try:
        db.execute(
            "INSERT INTO talk_user (id, name, role, created_at, updated_at)"
            " VALUES ('kept-user', '保留', 'patient', 1, 1)"
        )
        db.execute(
            "INSERT INTO msg_p2p (id, from_user, to_user, conv_key, content_type,"
            " content, recalled, created_at) VALUES (7, 'kept-user', 'doc-demo-1',"
            " 'doc-demo-1|kept-user', 1, '还在吗 😀', 0, 1)"
        )
        db.execute("UPDATE msg_sequence SET last_id = 7 WHERE channel = 'p2p'")
        if db.dialect == "sqlite":
            tables = sorted(sqlite_tables(db))
        else:
            tables = sorted(mariadb_tables(db))
        before = table_counts(db, tables)

        apply_schema(db)

        after = table_counts(db, tables)
        last_id = db.scalar("SELECT last_id FROM msg_sequence WHERE channel = 'p2p'")
        content = db.scalar("SELECT content FROM msg_p2p WHERE id = 7")
    finally:
        db.close()

    assert after == before
    assert last_id == 7
    assert content == "还在吗 😀"


# -- ids compare the same on both backends --------------------------------------


@pytest.mark.parametrize("backend", [
    "sqlite",
    "mariadb",
])
def test_ids_differing_in_case_are_distinct(backend, request, tmp_path):
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'case.sqlite3'}"
    else:
        url = request.getfixturevalue("empty_mariadb")
    db = applied(url)
    try:
        # Trailing spaces are rejected by the API's id check instead, since
        # MySQL's PAD SPACE comparison ignores them even under utf8mb4_bin.
        for user_id in ("doc-case", "DOC-CASE", "Doc-Case"):
            db.execute(
                "INSERT INTO talk_user (id, name, role, created_at, updated_at)"
                " VALUES (:id, 'x', 'doctor', 0, 0)", id=user_id,
            )
        matches = db.scalar("SELECT COUNT(*) FROM talk_user WHERE id = 'doc-case'")
    except IntegrityError as error:
        pytest.fail(f"distinct ids collided: {error.orig}")
    finally:
        db.close()

    assert matches == 1


# -- python server.py initdb ------------------------------------------------------


def run_initdb(database_url, cwd):
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("IM_")}
    env.update(IM_PROFILE="test", IM_SECRET=TEST_SECRET)
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "server.py"), "initdb",
         "--db-url", database_url],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_SECONDS,
    )


def test_initdb_creates_mariadb_schema(empty_mariadb, tmp_path):
    first = run_initdb(empty_mariadb, tmp_path)
    second = run_initdb(empty_mariadb, tmp_path)
    db = Database(empty_mariadb, pool_size=1)
    try:
        tables = mariadb_tables(db)
    finally:
        db.close()

    assert first.returncode == 0, first.stderr
    assert "Schema applied to the mysql database" in first.stdout
    assert second.returncode == 0, second.stderr
    assert sorted(tables) == sorted(parsed_mysql_tables())


def test_initdb_reports_unreachable_database(tmp_path):
    result = run_initdb("mysql+pymysql://root@127.0.0.1:1/none", tmp_path)

    assert result.returncode != 0
    assert "mysql database" in result.stderr
    assert "Traceback" not in result.stderr
