"""Plugins as their users get them: real distributions in fresh virtual environments.

Two plugins are built: what `voltd plugin new` makes, and the example of
docs/writing-plugins.md (extracted as tests/test_docs.py does). Each is installed with voltd
from this checkout into a venv of its own (`uv venv`, `uv pip install`), and that venv's
`voltd` must list it, accept a config using it, and deliver Volt's example through a running
daemon to a local HTTP receiver. The scaffold's own tests run inside its venv too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.test_docs import Receiver, extract_files

#: uv sets UV for what `uv run` starts (also when it runs as `python -m uv`).
UV = os.environ.get("UV") or shutil.which("uv")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        UV is None and not os.environ.get("CI"), reason="needs uv to make the venvs"
    ),
]

ROOT = Path(__file__).resolve().parent.parent  # the voltd checkout
EXAMPLE = ROOT / "voltd" / "examples" / "finalized-failed.json"
URL_ENV = "VOLTD_DIST_TEST_URL"


@dataclass(frozen=True)
class Dist:
    """One plugin distribution and the venv it is installed in."""

    kind: str
    src: Path
    venv: Path
    type: str
    dist: str
    cls: str  # module.Class
    url_option: str

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)


KINDS = {
    # kind: sink type, distribution, class, its URL option
    "scaffold": ("chat-relay", "voltd-chat-relay", "voltd_chat_relay.ChatRelaySink", "url"),
    "docs": ("teams", "voltd-teams", "voltd_teams.TeamsSink", "webhook_url"),
}


def _env(**extra: str) -> dict[str, str]:
    """The environment for the venv's programs: nothing of the outer venv or pytest."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTEST_ADDOPTS")
        and not k.startswith("PYTEST_")
        and k != "NOTIFY_SOCKET"
    }
    return {**env, **extra}


def _run(args: list[str], *, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess:
    kwargs.setdefault("env", _env())
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, **kwargs
    )
    return done


def _ok(args: list[str], **kwargs: Any) -> str:
    done = _run(args, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, args))}: {done.stdout}{done.stderr}"
    return done.stdout


def _install(dist: Dist) -> None:
    assert UV is not None, "uv is needed to make the venvs (CI must not skip this)"
    _ok([UV, "venv", "-q", "--python", sys.executable, dist.venv])
    _ok(
        [
            UV,
            "pip",
            "install",
            "-q",
            "--python",
            dist.bin("python"),
            "--refresh-package",  # voltd as it is in the checkout now, not a cached build
            "voltd",
            ROOT,
            dist.src,
            "pytest",
            "pytest-trio",
        ],
        timeout=300,
    )


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Dist]:
    base = tmp_path_factory.mktemp("dists")
    name = KINDS["scaffold"][0]
    _ok([sys.executable, "-m", "voltd", "plugin", "new", name, "--dir", base], env=_env())
    extract_files(base)
    out = {}
    for kind, (sink_type, dist, cls, url_option) in KINDS.items():
        src = base / dist
        assert (src / "pyproject.toml").is_file(), f"{kind}: no distribution at {src}"
        out[kind] = Dist(kind, src, base / f"venv-{kind}", sink_type, dist, cls, url_option)
    with ThreadPoolExecutor(len(out)) as pool:  # the two installs overlap their waiting
        for future in [pool.submit(_install, d) for d in out.values()]:
            future.result()
    return out


@pytest.fixture(params=sorted(KINDS))
def dist(request: pytest.FixtureRequest, dists: dict[str, Dist]) -> Dist:
    return dists[request.param]


def test_voltd_plugins_lists_the_installed_sink_type(dist: Dist) -> None:
    text = _ok([dist.bin("voltd"), "plugins"])
    assert f"  {dist.type}: {dist.cls} (plugin {dist.type!r} from {dist.dist} 0.1.0)" in text
    assert str(dist.venv) in text  # installed, not imported from the source tree
    assert "problems:" not in text
    listing = json.loads(_ok([dist.bin("voltd"), "plugins", "--json"]))
    [row] = [t for t in listing["sink_types"] if t["type"] == dist.type]
    assert (row["distribution"], row["version"], row["plugin"]) == (dist.dist, "0.1.0", dist.type)
    options = {o["name"]: o for o in row["options"]}
    assert options[dist.url_option]["required"] is True
    assert all(o["description"] for o in options.values()), options
    assert listing["problems"] == []


def _config(dist: Dist, directory: Path) -> Path:
    """A config routing everything to the plugin's sink; keys made by the venv's voltd."""
    directory.mkdir()
    _ok([dist.bin("voltd"), "keygen", directory / "keys"])
    path = directory / "config.toml"
    path.write_text(
        f"""\
[server]
bind = ["127.0.0.1:0"]

[admin]
bind = "127.0.0.1:0"

[verify]
public_keys = ["keys/volt_id_rsa.pub"]
max_age = "0"  # Volt's example is from 2022

[retry]
initial = "1s"

[[routes]]
name = "everything"
sinks = ["out"]

[sinks.out]
type = "{dist.type}"
{dist.url_option} = "${{env:{URL_ENV}}}"
""",
        encoding="utf-8",
    )
    return path


def test_voltd_check_accepts_a_config_using_it(dist: Dist, tmp_path: Path) -> None:
    config = _config(dist, tmp_path / "etc")
    url = "https://hooks.example.com/webhookb2/0123-secret-token"
    done = _run([dist.bin("voltd"), "check", "-c", config], env=_env(**{URL_ENV: url}))
    assert done.returncode == 0, done.stdout + done.stderr
    line = f"  out: {dist.type} (plugin {dist.type!r} from {dist.dist} 0.1.0)"
    assert line in done.stdout, done.stdout
    assert f'"{dist.url_option}": "***"' in done.stdout
    assert "secret-token" not in done.stdout + done.stderr


class Serving:
    """`voltd serve` from a venv, with a NOTIFY_SOCKET of its own to learn where it listens."""

    def __init__(self, dist: Dist, config: Path, env: dict[str, str]) -> None:
        self._dir = tempfile.mkdtemp(prefix="vn", dir="/tmp")  # AF_UNIX paths are short
        notify = os.path.join(self._dir, "n")
        assert len(notify) < 100
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(notify)
        self.log = config.parent / "voltd.log"
        self._log = self.log.open("wb")
        self.proc = subprocess.Popen(
            [dist.bin("voltd"), "serve", "-c", str(config)],
            env={**env, "NOTIFY_SOCKET": notify},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            self.webhook_url, self.admin_url = self._wait_ready(30.0)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> tuple[str, str]:
        deadline = time.monotonic() + timeout
        self._sock.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                message = self._sock.recv(4096).decode()
            except TimeoutError:
                assert self.proc.poll() is None, f"voltd serve exited: {self.output()}"
                continue
            if "READY=1" in message:
                m = re.search(r"^STATUS=serving webhooks on (\S+); admin on (\S+)", message, re.M)
                assert m, message
                return m.group(1), m.group(2)
        raise AssertionError(f"no READY=1 within {timeout}s: {self.output()}")

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log.close()
            self._sock.close()
            shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def test_a_running_daemon_delivers_volt_example_through_it(
    dist: Dist, tmp_path: Path, receiver: Receiver
) -> None:
    config = _config(dist, tmp_path / "etc")
    serving = Serving(dist, config, _env(**{URL_ENV: receiver.url}))
    try:
        assert serving.webhook_url.startswith("http://127.0.0.1:")
        key = config.parent / "keys" / "volt_signing_key.pem"
        sent = _ok([dist.bin("voltd"), "send", "--url", serving.webhook_url, "--key", key, EXAMPLE])
        assert sent.startswith("200 "), sent
        [body] = receiver.wait(1)
    finally:
        code = serving.stop()
    assert code == 0, serving.output()
    [(path, headers, _)] = receiver.requests
    assert path == receiver.path
    assert headers["content-type"] == "application/json"
    if dist.kind == "scaffold":
        # The scaffold's default template: "outbound failed: +15555550123 and +15555550145: …"
        assert set(body) == {"text"}
        assert body["text"].startswith("outbound failed: +15555550123 and +15555550145"), body
    else:
        assert body["@type"] == "MessageCard"
        assert body["title"] == "+15555550145: failed"  # no [numbers] in this config
        assert body["themeColor"] == "D13438"
        assert "Blocked as spam - temporary." in body["sections"][0]["text"]
    assert "secret-token" not in serving.output()


def test_the_plugins_own_tests_pass_in_its_venv(dist: Dist) -> None:
    done = _run([dist.bin("python"), "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=dist.src)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"\b\d+ passed\b", done.stdout) and "failed" not in done.stdout, done.stdout
