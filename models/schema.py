"""Apply the schema files in sql/ to a database."""

import logging
import os

logger = logging.getLogger(__name__)

SQL_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "sql")
SCHEMA_FILES = ("im_schema.sql", "talk_group_schema.sql")


def schema_paths(dialect):
    folder = SQL_DIR if dialect == "mysql" else os.path.join(SQL_DIR, "sqlite")
    return [os.path.join(folder, name) for name in SCHEMA_FILES]


def split_statements(sql):
    """Split a schema file into statements.

    The files keep every statement's closing ``;`` at the end of a line and
    use no ``;`` inside string literals, which is all this parser handles.
    """
    statements, current = [], []
    for line in sql.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("--"):
            continue
        current.append(line)
        if stripped.endswith(";"):
            statements.append("\n".join(current).rstrip().rstrip(";"))
            current = []
    if current:
        statements.append("\n".join(current))
    return statements


def apply_schema(db):
    """Create missing tables and demo rows; existing data is left alone."""

    def work(conn):
        for path in schema_paths(db.dialect):
            with open(path, encoding="utf-8") as schema_file:
                statements = split_statements(schema_file.read())
            for statement in statements:
                # The driver's own escaping is bypassed: these files hold
                # no parameters, and ':' inside them is literal text.
                conn._conn.exec_driver_sql(statement)
            logger.info("Applied %s (%d statements)", path, len(statements))

    db.transaction(work)
