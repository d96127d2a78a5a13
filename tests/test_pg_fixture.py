"""The PostgreSQL server of the test suite (tests/pg.py and the `postgres` and `pg_url`
fixtures): a database of one's own per test, and a server that stops, restarts and crashes on
request with its data kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Literal

import psycopg
import pytest

from tests.pg import PostgresServer, _alive


def test_create_insert_select(pg_url: str, postgres: PostgresServer) -> None:
    assert pg_url.startswith(f"postgresql://voltd@127.0.0.1:{postgres.port}/")
    with psycopg.connect(pg_url) as conn:
        conn.execute("CREATE TABLE t (id bigserial PRIMARY KEY, body text NOT NULL)")
        conn.execute("INSERT INTO t (body) VALUES (%s), (%s)", ["a", "ünïcode ✓"])
        conn.commit()
        rows = conn.execute("SELECT body FROM t ORDER BY id").fetchall()
        assert rows == [("a",), ("ünïcode ✓",)]
        assert conn.execute("SHOW server_encoding").fetchone() == ("UTF8",)
        assert conn.execute("SHOW max_connections").fetchone() == ("200",)


def test_databases_are_isolated(pg_url: str, postgres: PostgresServer) -> None:
    other = postgres.create_database("isolation_other")
    try:
        assert other != pg_url
        with psycopg.connect(pg_url, autocommit=True) as a:
            a.execute("CREATE TABLE t (x int)")
            a.execute("INSERT INTO t VALUES (1)")
        with psycopg.connect(other, autocommit=True) as b:
            with pytest.raises(psycopg.errors.UndefinedTable):
                b.execute("SELECT * FROM t")
            b.execute("CREATE TABLE t (x int)")  # the same name, its own table
            assert b.execute("SELECT count(*) FROM t").fetchone() == (0,)
    finally:
        postgres.drop_database("isolation_other")


def test_each_test_gets_an_empty_database(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        assert tables == (0,)


def _insert(url: str, value: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (x int)")
        conn.execute("INSERT INTO t VALUES (%s)", [value])


def _values(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT x FROM t ORDER BY x")]


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_stop_start_keeps_data_and_url(
    pg_url: str, postgres: PostgresServer, mode: Literal["fast", "immediate"]
) -> None:
    _insert(pg_url, 1)
    conn = psycopg.connect(pg_url, autocommit=True)
    try:
        port = postgres.port
        postgres.stop(mode)
        assert not postgres.running
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")  # the old connection is gone
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(pg_url, connect_timeout=2)
        postgres.start()
        assert postgres.running and postgres.port == port
    finally:
        conn.close()
    assert _values(pg_url) == [1]  # a new connection to the same URL
    _insert(pg_url, 2)
    assert _values(pg_url) == [1, 2]


def test_kill_then_start_recovers(pg_url: str, postgres: PostgresServer) -> None:
    _insert(pg_url, 1)
    conn = psycopg.connect(pg_url)
    conn.execute("INSERT INTO t VALUES (99)")  # open transaction: lost in the crash
    pid = postgres._pid
    postgres.kill()
    assert not postgres.running
    assert pid is not None
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()
    postgres.start()  # crash recovery, despite the killed postmaster's lock files
    assert postgres._pid != pid
    assert _values(pg_url) == [1]
    assert "database system was interrupted" in postgres.log()
    for _ in range(2):  # and again, right away
        postgres.kill()
        postgres.start()
    assert _values(pg_url) == [1]


def test_a_test_run_that_dies_leaves_nothing_running(postgres: PostgresServer) -> None:
    """A test run SIGKILLed (so no atexit): its watchdog stops the server and removes it.
    (`postgres` only for its skip, or failure, where PostgreSQL is missing.)"""
    script = textwrap.dedent(
        """
        import os, signal
        from tests.pg import PostgresServer, _alive
        s = PostgresServer()
        print(s.root, s._pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    root, pid = proc.stdout.split()
    deadline = time.monotonic() + 30
    while os.path.exists(root) or _alive(int(pid)):
        assert time.monotonic() < deadline, "the server outlived its test run"
        time.sleep(0.05)
