"""pytest set-up: the hypothesis profiles and the fixtures. The helpers the tests import
(`Daemon`, `make_event`, `examples`, ...) are in tests/helpers.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.helpers import Daemon

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
