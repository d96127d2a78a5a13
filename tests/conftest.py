"""pytest set-up: the hypothesis profiles and the fixtures. The helpers the tests import
(`Daemon`, `make_event`, `examples`, ...) are in tests/helpers.py; the PostgreSQL server behind
the `postgres` and `pg_url` fixtures is tests/pg.py."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.helpers import Daemon
from tests.pg import PostgresServer, PostgresUnavailable

# Property tests run a bounded number of examples in CI; `fuzz/run.py` (or
# HYPOTHESIS_PROFILE=fuzz) runs the same properties for as long as you let it.
settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "fuzz",
    deadline=None,
    max_examples=1_000_000,
    suppress_health_check=list(HealthCheck),
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A deployment in `tmp_path` with the session's keys and certificate; not started."""
    d = Daemon(tmp_path)
    yield d
    d.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session (tests/pg.py), as its superuser `voltd`. Tests may
    `stop()`, `start()` and `kill()` it. Without PostgreSQL the tests that use it are skipped,
    except where VOLTD_REQUIRE_POSTGRES=1 (CI): there they fail."""
    try:
        server = PostgresServer()
    except PostgresUnavailable as e:
        reason = f"PostgreSQL is unavailable: {e}"
        if os.environ.get("VOLTD_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{reason}\n(VOLTD_REQUIRE_POSTGRES=1: these tests must run)")
        pytest.skip(reason)
    try:
        yield server
    finally:
        server.cleanup()


_pg_databases = itertools.count(1)


@pytest.fixture
def pg_url(postgres: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a new, empty database of its own on `postgres` (postgresql://voltd@...),
    dropped after the test. A server that an earlier test left stopped is started first."""
    if not postgres.running:
        postgres.start()
    name = re.sub(r"[^a-z0-9_]+", "_", request.node.name.lower())[:40]
    name = f"t{next(_pg_databases)}_{name}".rstrip("_")
    url = postgres.create_database(name)
    yield url
    if postgres.running:  # best effort: the server is removed at the end of the session anyway
        with contextlib.suppress(Exception):
            postgres.drop_database(name)
