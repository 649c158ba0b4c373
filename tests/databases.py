"""Test databases: clones of the schema template, reused while tests leave the schema alone.

Cloning a database (CREATE DATABASE ... TEMPLATE) costs a tenth to a third of a second;
emptying one costs a hundredth. So a test gets the last test's database back, emptied
(every other session ended, every table holding the template's rows again — none, or the
one-row tables schema.sql fills —, every sequence restarted), as long as
that test left the schema exactly as schema.sql makes it. A test that changed it (a
constraint added, a table dropped, a grant revoked, a role setting for the database) is
detected by a fingerprint of the catalog, and the next test gets a fresh clone instead.
To a test, every database is as good as new.
"""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import Connection, sql

from tests.cluster import Cluster

# What the schema is, as text: the objects of schema public and their definitions, the
# privileges on them, the database's role settings, extensions. Data is not in it.
_FINGERPRINT = """
    SELECT md5(string_agg(item, E'\\n' ORDER BY item)) FROM (
        SELECT format('class %s %s %s', c.oid::regclass, c.relkind, c.relacl)
        FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace
        UNION ALL
        SELECT format('column %s %s %s %s %s', a.attrelid::regclass, a.attname,
                      format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attacl)
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        WHERE c.relnamespace = 'public'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
        UNION ALL
        SELECT format('constraint %s %s', conname, pg_get_constraintdef(oid))
        FROM pg_constraint WHERE connamespace = 'public'::regnamespace
        UNION ALL
        SELECT format('index %s', pg_get_indexdef(indexrelid)) FROM pg_index i
        JOIN pg_class c ON c.oid = i.indrelid WHERE c.relnamespace = 'public'::regnamespace
        UNION ALL
        SELECT format('trigger %s %s %s', tgrelid::regclass, tgname, tgenabled)
        FROM pg_trigger WHERE NOT tgisinternal
        UNION ALL
        SELECT format('function %s %s %s', p.oid::regprocedure, md5(p.prosrc), p.proacl)
        FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
        UNION ALL
        SELECT format('type %s', t.oid::regtype) FROM pg_type t
        WHERE t.typnamespace = 'public'::regnamespace
        UNION ALL
        SELECT format('view %s %s', c.oid::regclass, pg_get_viewdef(c.oid))
        FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('v', 'm')
        UNION ALL
        SELECT format('namespace %s %s', nspname, nspacl) FROM pg_namespace
        UNION ALL
        SELECT format('extension %s %s', extname, extversion) FROM pg_extension
        UNION ALL
        SELECT format('setting %s %s', s.setrole, s.setconfig) FROM pg_db_role_setting s
        WHERE s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
        UNION ALL
        SELECT format('policy %s %s', polrelid::regclass, polname) FROM pg_policy
    ) f(item)
"""
_TABLES = """
    SELECT c.oid::regclass::text FROM pg_class c
    WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
"""
# setval, not ALTER SEQUENCE ... RESTART: no new file for the sequence.
_RESTART_SEQUENCES = """
    SELECT setval(format('%I.%I', schemaname, sequencename)::regclass, start_value, false)
    FROM pg_sequences WHERE schemaname = 'public'
"""
# Every other session on the database ended (a test's leftovers), waiting until each has
# gone: one left in a transaction holds its locks until then, and the fingerprint would wait.
_END_OTHER_SESSIONS = """
    SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid()
"""
# The rows schema.sql puts in a table, as one JSON array (NULL for none).
_ROWS = "SELECT json_agg(t) FROM {} t"


class Databases:
    """Hands out a database per test, reusing the last one when its schema is untouched."""

    def __init__(self, cluster: Cluster, *, template: str) -> None:
        self.cluster = cluster
        self.template = template
        self.clones = 0
        self.current: str | None = None
        self.schema: str | None = None
        # What empties the current clone: one round trip (its tables are known while its
        # schema is untouched).
        self._empty: bytes = b""
        self._session: Connection[Any] | None = None

    def connect(self, dbname: str) -> Connection[Any]:
        return psycopg.connect(self.cluster.admin_dsn(dbname), autocommit=True)

    @contextmanager
    def checkout(self) -> Iterator[Connection[Any]]:
        """A superuser connection (autocommit) to a database as good as new.

        The connection is the one that emptied the database; it is handed over as new too
        (settings reset, no transaction), and reused for the next test's clean-up.
        """
        if self.current is None or not self._reset():
            self._replace()
        assert self._session is not None
        yield self._session

    def _reset(self) -> bool:
        """Empty the current clone; False when its schema is no longer schema.sql's."""
        assert self.current is not None
        conn = self._session
        if conn is None or conn.closed or conn.broken:
            conn = self._session = self.connect(self.current)
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.rollback()
        conn.autocommit = True
        conn.execute("RESET ALL")
        conn.execute(_END_OTHER_SESSIONS)
        row = conn.execute(_FINGERPRINT).fetchone()
        if row is None or row[0] != self.schema:
            return False
        conn.execute(self._empty)
        return True

    def _replace(self) -> None:
        """Drop the current clone (if any) and make a new one from the template."""
        self._drop()
        self.clones += 1
        dbname = f"{self.template}_test_{self.clones}"
        with self.connect("postgres") as admin:
            admin.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(dbname), sql.Identifier(self.template)
                )
            )
        conn = self._session = self.connect(dbname)
        row = conn.execute(_FINGERPRINT).fetchone()
        assert row is not None
        tables = [name for (name,) in conn.execute(_TABLES).fetchall()]
        seeded = _rows_by_table(conn, tables)
        # DELETE, not TRUNCATE: a test leaves a few rows, and TRUNCATE's new files cost 10 ms
        # a table. Triggers and foreign keys are off for this session (replica role): a
        # change-log trigger must not log the clean-up, and the order of tables is free. The
        # rows schema.sql itself writes (the location MAIN, the retention floor) are put back
        # as they were.
        statements = [
            "SET session_replication_role = replica",
            *(f"DELETE FROM {table}" for table in tables),  # regclass text: quoted already
            *(
                sql.SQL(
                    "INSERT INTO {} OVERRIDING SYSTEM VALUE "
                    "SELECT * FROM json_populate_recordset(NULL::{}, {})"
                )
                .format(sql.SQL(table), sql.SQL(table), sql.Literal(json.dumps(rows)))
                .as_string(conn)
                for table, rows in seeded.items()
            ),
            _RESTART_SEQUENCES,
            "RESET session_replication_role",
        ]
        self._empty = ";\n".join(statements).encode()
        self.current, self.schema = dbname, row[0]

    def _drop(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
        if self.current is None:
            return
        with self.connect("postgres") as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(self.current)
                )
            )
        self.current = None

    def close(self) -> None:
        self._drop()


def _rows_by_table(conn: Connection[Any], tables: list[str]) -> dict[str, Any]:
    """The rows of each table that has any (in a fresh clone: the one-row tables schema.sql
    fills), as JSON."""
    found = {}
    for table in tables:
        row = conn.execute(_ROWS.format(table)).fetchone()
        if row is not None and row[0] is not None:
            found[table] = row[0]
    return found
