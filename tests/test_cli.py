"""The command line as an operator runs it: `python -m voltd ...` in a real subprocess."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import Daemon, make_event, session_material
from voltd.events import as_json_line
from voltd.keys import generate_signing_pair


def voltd(
    *args: str | Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run the command line exactly as a user would, capturing both streams."""
    return subprocess.run(
        [sys.executable, "-m", "voltd", *(str(a) for a in args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=dict(os.environ, **(env or {})),
        timeout=timeout,
        check=False,
    )


def assert_clean_failure(result: subprocess.CompletedProcess[str], code: int) -> None:
    """Failed with `code`, said why on stderr, and without a Python traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.strip(), "a failure must say why"
    assert "Traceback" not in result.stderr
    assert "Traceback" not in result.stdout


@pytest.fixture(scope="module")
def public_key() -> Path:
    """The session's public key (RSA key generation is slow); every config gets a copy."""
    return session_material() / "keys" / "volt_id_rsa.pub"


def deployment(directory: Path, public_key: Path, config: str) -> Path:
    """A config directory with the public key at keys/volt_id_rsa.pub and `config.toml`."""
    (directory / "keys").mkdir(parents=True, exist_ok=True)
    shutil.copy(public_key, directory / "keys" / "volt_id_rsa.pub")
    path = directory / "config.toml"
    path.write_text(textwrap.dedent(config), encoding="utf-8")
    return path


PAGER_PLUGIN = """\
import voltd


class PagerSink:
    class Options(voltd.SinkOptions):
        url: str
        token: str
        retries: int = 3

    def __init__(self, options, context):
        self.options = options

    async def send(self, event):
        pass


@voltd.hookimpl
def register_sink_types(register):
    register("pager", PagerSink)
"""

BASE = """\
[server]
bind = ["127.0.0.1:0"]
path = "/webhooks"

[admin]
bind = "127.0.0.1:0"

[verify]
public_keys = ["keys/volt_id_rsa.pub"]
"""

GOOD = (
    'plugin_dirs = ["plugins"]\n\n'
    + BASE
    + """
[spool]
path = "state/spool.db"

[numbers]
front-desk = "+1 (555) 555-0123"
sales = "+1 555 555 0145"

[[routes]]
name = "front desk inbound"
match = { number = ["front-desk"], direction = ["inbound"] }
sinks = ["archive", "pager-env"]

[[routes]]
name = "delivery failures"
match = { status = ["failed"] }
sinks = ["pager-file"]
final = true

[sinks.archive]
type = "file"
path = "archive/{our_number}/{date}.jsonl"

[sinks.pager-env]
type = "pager"
url = "https://pager.example/hook"
token = "${env:VOLTD_TEST_PAGER_TOKEN}"

[sinks.pager-file]
type = "pager"
url = "https://pager.example/${file:secrets/url-part}"
token = "${file:secrets/pager-token}"
"""
)

ENV_SECRET = "env-s3cr3t-7f3a9c"
FILE_SECRET = "file-s3cr3t-91bc40"
URL_SECRET = "url-s3cr3t-d00d"


@pytest.fixture
def good_config(tmp_path: Path, public_key: Path) -> Path:
    path = deployment(tmp_path, public_key, GOOD)
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "pager.py").write_text(PAGER_PLUGIN)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "pager-token").write_text(FILE_SECRET + "\n")
    (tmp_path / "secrets" / "url-part").write_text(URL_SECRET)
    return path


# --------------------------------------------------------------------------------------------
# voltd check


def test_check_good_config_prints_routes_and_sinks_without_secrets(
    good_config: Path, tmp_path: Path
) -> None:
    env = {"VOLTD_TEST_PAGER_TOKEN": ENV_SECRET}
    result = voltd("check", "-c", "config.toml", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("config.toml: OK")
    # Routes, in order, with their sinks.
    assert "1. front desk inbound" in out
    assert "2. delivery failures (final)" in out
    assert "-> archive, pager-env" in out
    assert "-> pager-file" in out
    # Sinks, with their type and where the type came from.
    sinks = {
        line.split(":")[0].strip(): line
        for line in out.splitlines()[out.splitlines().index("sinks:") + 1 :]
        if line.startswith("  ") and not line.startswith("    ")
    }
    assert set(sinks) == {"archive", "pager-env", "pager-file"}
    assert "file (plugin 'file' from voltd" in sinks["archive"]
    assert "archive/{our_number}/{date}.jsonl" in sinks["archive"]
    plugin = tmp_path / "plugins" / "pager.py"
    assert f"pager (plugin 'pager' from {plugin})" in sinks["pager-env"]
    assert "https://pager.example/hook" in sinks["pager-env"]  # not a secret: shown
    assert "token" in sinks["pager-env"] and "token" in sinks["pager-file"]
    # Secrets never appear, whole or as part of a value.
    for secret in (ENV_SECRET, FILE_SECRET, URL_SECRET):
        assert secret not in out
        assert secret not in result.stderr


def test_check_does_not_echo_a_secret_that_fails_validation(
    good_config: Path, tmp_path: Path
) -> None:
    text = good_config.read_text().replace(
        'url = "https://pager.example/hook"',
        'url = "https://pager.example/hook"\nretries = "${env:VOLTD_TEST_PAGER_TOKEN}"',
    )
    good_config.write_text(text)
    env = {"VOLTD_TEST_PAGER_TOKEN": ENV_SECRET}
    result = voltd("check", "-c", "config.toml", cwd=tmp_path, env=env)
    assert_clean_failure(result, 2)
    assert "config.toml: sinks.pager-env.retries: " in result.stderr
    assert ENV_SECRET not in result.stderr + result.stdout


GOOD_SINK = """
[[routes]]
name = "all"
sinks = ["archive"]

[sinks.archive]
type = "file"
path = "archive.jsonl"
"""

BROKEN = {
    "unknown key": (
        BASE + '\n[spool]\npath = "spool.db"\nretension = "7d"\n' + GOOD_SINK,
        [
            "config.toml: spool.retension: unknown key",
            "expected one of: path, url, password, state_dir, retention",
        ],
    ),
    "undefined sink in a route": (
        BASE + GOOD_SINK.replace('sinks = ["archive"]', 'sinks = ["archive", "nowhere"]'),
        ["config.toml: routes[0].sinks[1]: no sink named 'nowhere'", "defined: archive"],
    ),
    "bad duration": (
        BASE + '\n[retry]\ninitial = "2 seconds"\n' + GOOD_SINK,
        ["config.toml: retry.initial: expected a duration like", "'2 seconds'"],
    ),
    "bad number": (
        BASE + '\n[numbers]\nfront-desk = "555-CALL-NOW"\n' + GOOD_SINK,
        ["config.toml: numbers.front-desk: expected a phone number", "'555-CALL-NOW'"],
    ),
    "missing public key file": (
        BASE.replace("keys/volt_id_rsa.pub", "keys/gone.pub") + GOOD_SINK,
        ["config.toml: verify.public_keys[0]: cannot read", "gone.pub"],
    ),
    "unknown sink type": (
        BASE + GOOD_SINK + '\n[sinks.pigeon]\ntype = "carrier-pigeon"\n',
        [
            "config.toml: sinks.pigeon.type: unknown sink type 'carrier-pigeon'",
            "(available: email, file, http, slack)",
        ],
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_check_broken_config_names_file_key_and_expectation(
    case: str, tmp_path: Path, public_key: Path
) -> None:
    text, expected = BROKEN[case]
    deployment(tmp_path, public_key, text)
    result = voltd("check", "-c", "config.toml", cwd=tmp_path)
    assert_clean_failure(result, 2)
    assert result.stdout == ""
    for part in expected:
        assert part in result.stderr


def test_check_summary_keeps_one_line_per_route(tmp_path: Path, public_key: Path) -> None:
    deployment(tmp_path, public_key, BASE + GOOD_SINK.replace('name = "all"', 'name = "a\\nb"'))
    result = voltd("check", "-c", "config.toml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "  1. 'a\\nb': match everything -> archive" in result.stdout.splitlines()


def test_check_reports_every_problem_at_once(tmp_path: Path, public_key: Path) -> None:
    text = BASE + '\n[retry]\ninitial = "soon"\n[numbers]\nx = "nope"\n' + GOOD_SINK
    deployment(tmp_path, public_key, text.replace('sinks = ["archive"]', 'sinks = ["nowhere"]'))
    result = voltd("check", "-c", "config.toml", cwd=tmp_path)
    assert_clean_failure(result, 2)
    lines = result.stderr.strip().splitlines()
    assert [line.split(": ")[1] for line in lines] == [
        "retry.initial",
        "numbers.x",
        "routes[0].sinks[0]",
    ]


# --------------------------------------------------------------------------------------------
# voltd route

ROUTES = (
    BASE
    + """
[numbers]
front-desk = "+1 (555) 555-0123"
sales = "+1 555 555 0145"

[[routes]]
name = "everything"
sinks = ["archive"]

[[routes]]
name = "front desk inbound"
match = { number = ["front-desk"], direction = ["inbound"] }
sinks = ["front-desk"]

[[routes]]
name = "sales outbound"
match = { number = ["sales"], direction = ["outbound"] }
sinks = ["sales"]

[sinks.archive]
type = "file"
path = "out/archive.jsonl"

[sinks.front-desk]
type = "file"
path = "out/front-desk.jsonl"

[sinks.sales]
type = "file"
path = "out/sales.jsonl"
"""
)


def test_route_explains_inbound_and_outbound_events(tmp_path: Path, public_key: Path) -> None:
    config = deployment(tmp_path, public_key, ROUTES)
    inbound = tmp_path / "inbound.json"
    inbound.write_bytes(make_event(eid="rfw_in_1", our="+15555550123"))
    outbound = tmp_path / "outbound.json"
    outbound.write_bytes(make_event(eid="rfw_out_1", direction="outbound", our="+15555550145"))

    result = voltd("route", "-c", config, inbound)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("event rfw_in_1: direction inbound")
    assert "our number +15555550123" in lines[0]
    assert "  route 1 'everything': FIRED -> archive" in lines
    assert "  route 2 'front desk inbound': FIRED -> front-desk" in lines
    assert "  route 3 'sales outbound': not fired (match failed)" in lines
    assert lines[-1] == "sinks: archive, front-desk"

    result = voltd("route", "-c", config, outbound)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("event rfw_out_1: direction outbound")
    assert "  route 2 'front desk inbound': not fired (match failed)" in lines
    assert "  route 3 'sales outbound': FIRED -> sales" in lines
    assert lines[-1] == "sinks: archive, sales"


def test_route_refuses_an_event_file_that_is_not_json(tmp_path: Path, public_key: Path) -> None:
    config = deployment(tmp_path, public_key, ROUTES)
    bad = tmp_path / "event.json"
    bad.write_text("this is { not json")
    result = voltd("route", "-c", config, bad)
    assert_clean_failure(result, 2)
    assert str(bad) in result.stderr
    assert "not JSON" in result.stderr

    missing = tmp_path / "missing.json"
    result = voltd("route", "-c", config, missing)
    assert_clean_failure(result, 2)
    assert f"{missing}: cannot read" in result.stderr


# --------------------------------------------------------------------------------------------
# voltd keygen


def test_keygen_writes_a_private_and_a_public_key_and_never_overwrites(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    result = voltd("keygen", directory)
    assert result.returncode == 0, result.stderr
    private = directory / "volt_signing_key.pem"
    public = directory / "volt_id_rsa.pub"
    assert sorted(directory.iterdir()) == sorted([private, public])
    assert str(private) in result.stdout and str(public) in result.stdout
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public.read_bytes().startswith(b"ssh-rsa AAAA")
    before = {p: p.read_bytes() for p in (private, public)}

    again = voltd("keygen", directory)
    assert_clean_failure(again, 1)
    assert "refusing to overwrite" in again.stderr
    assert str(private) in again.stderr
    assert {p: p.read_bytes() for p in (private, public)} == before


# --------------------------------------------------------------------------------------------
# voltd send, against a running daemon


@pytest.mark.slow
def test_send_signs_and_delivers_to_a_running_daemon(daemon: Daemon, tmp_path: Path) -> None:
    daemon.start()
    first = tmp_path / "first.json"
    first.write_bytes(make_event(text="sent with voltd send"))
    result = voltd(
        "send", "--url", daemon.url, "--key", daemon.private_key, "--cacert", daemon.cert, first
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("200 ")
    assert json.loads(result.stdout.splitlines()[1]) == {
        "ok": True,
        "id": json.loads(first.read_bytes())["id"],
    }
    daemon.wait_for(lambda: len(daemon.lines("out/all.jsonl")) == 1)
    assert daemon.lines("out/all.jsonl") == [as_json_line(first.read_bytes())]

    # A key Volt's public key does not match: refused, and the status is shown.
    other_key, _ = generate_signing_pair(tmp_path / "other")
    forged = tmp_path / "forged.json"
    forged.write_bytes(make_event(text="forged"))
    result = voltd("send", "--url", daemon.url, "--key", other_key, "--cacert", daemon.cert, forged)
    assert result.returncode == 1
    assert result.stdout.startswith("401 ")

    # Without a CA file, --insecure still reaches the daemon.
    third = tmp_path / "third.json"
    third.write_bytes(make_event(text="insecure"))
    result = voltd("send", "--url", daemon.url, "--key", daemon.private_key, "--insecure", third)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("200 ")

    # Neither: the self-signed certificate is refused, with a message and no traceback.
    result = voltd("send", "--url", daemon.url, "--key", daemon.private_key, third)
    assert_clean_failure(result, 1)
    assert daemon.url in result.stderr

    daemon.wait_for(lambda: len(daemon.lines("out/all.jsonl")) == 2)
    # The forged event was never stored, so only the two genuine ones were delivered.
    assert daemon.lines("out/all.jsonl") == [
        as_json_line(first.read_bytes()),
        as_json_line(third.read_bytes()),
    ]
    assert daemon.stop() == 0


# --------------------------------------------------------------------------------------------
# voltd plugins

BROKEN_PLUGIN = "import voltd_sdk_that_is_not_installed\n"


def test_plugins_lists_the_file_sink_and_its_origin() -> None:
    result = voltd("plugins")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "sink types:"
    [file_line] = [line for line in lines if line.startswith("  file: ")]
    assert "voltd_file.FileSink" in file_line
    assert "(plugin 'file' from voltd" in file_line
    assert "problems:" not in result.stdout


def test_plugins_with_a_broken_plugin_lists_the_problem(tmp_path: Path, public_key: Path) -> None:
    config = deployment(tmp_path, public_key, 'plugin_dirs = ["plugins"]\n' + BASE + GOOD_SINK)
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "pager.py").write_text(PAGER_PLUGIN)
    broken = tmp_path / "plugins" / "sms_gateway.py"
    broken.write_text(BROKEN_PLUGIN)

    result = voltd("plugins", "-c", config)
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert "  file: voltd_file.FileSink" in result.stdout
    assert "  pager: " in result.stdout  # the good plugin still loaded
    problems = result.stdout.split("problems:\n", 1)[1]
    assert f"plugin 'sms_gateway' from {broken}" in problems
    assert "failed to import: ModuleNotFoundError" in problems


# --------------------------------------------------------------------------------------------
# voltd serve: refusing to start


def test_serve_refuses_to_start_when_a_configured_sinks_plugin_is_broken(
    tmp_path: Path, public_key: Path
) -> None:
    text = (
        'plugin_dirs = ["plugins"]\n'
        + BASE
        + GOOD_SINK
        + '\n[sinks.pager]\ntype = "pager"\nurl = "https://p.example/"\ntoken = "t"\n'
    )
    config = deployment(tmp_path, public_key, text)
    (tmp_path / "plugins").mkdir()
    broken = tmp_path / "plugins" / "pager.py"
    broken.write_text(BROKEN_PLUGIN + PAGER_PLUGIN)

    result = voltd("serve", "-c", config)
    assert_clean_failure(result, 2)
    assert f"{config}: sinks.pager.type: " in result.stderr
    assert f"plugin 'pager' from {broken}" in result.stderr
    assert "failed to import" in result.stderr
    assert not (tmp_path / "spool.db").exists()  # refused before touching anything


def test_serve_with_the_port_taken_says_cannot_start(tmp_path: Path, public_key: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        text = BASE.replace('"127.0.0.1:0"]', f'"127.0.0.1:{port}"]') + GOOD_SINK
        assert f"127.0.0.1:{port}" in text
        config = deployment(tmp_path, public_key, text)
        result = voltd("serve", "-c", config)
    assert_clean_failure(result, 1)
    messages = [line for line in result.stderr.splitlines() if "cannot start" in line]
    assert len(messages) == 1
    assert "address already in use" in messages[0].lower()
    assert result.stderr.strip().splitlines()[-1] == messages[0]


# --------------------------------------------------------------------------------------------
# voltd demo and voltd spool


def test_demo_delivers_into_the_given_directory(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    result = voltd("demo", "--dir", workdir, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "where each event landed:" in result.stdout
    assert "out/archive/" in result.stdout
    # The Slack and SMTP stand-ins got the failure and the front desk's text.
    assert "what Slack received" in result.stdout
    slack = [json.loads(p.read_text()) for p in sorted((workdir / "out/slack").glob("*.json"))]
    headers = [m["blocks"][0]["text"]["text"] for m in slack]
    # One message each, or, when both were waiting at once, one summary of the two.
    assert headers in (
        ["Message to front-desk failed to deliver", "New text to front-desk"],
        ["2 events: 1 failed, 1 received"],
    )
    assert "what the SMTP server received (2 mails)" in result.stdout
    assert "Subject: Message failed to deliver: sales (+15555550145)" in result.stdout
    assert len(list((workdir / "out/mail").glob("*.eml"))) == 2
    landed = sorted(p for p in (workdir / "out").rglob("*.jsonl"))
    assert landed
    for path in landed:
        for line in path.read_bytes().splitlines():
            assert json.loads(line)["type"] == "messaging"
    # The spool the demo left behind can be inspected.
    status = voltd("spool", "status", "-c", workdir / "config.toml")
    assert status.returncode == 0, status.stderr
    assert "archive" in status.stdout


def test_spool_status_before_the_spool_exists(tmp_path: Path, public_key: Path) -> None:
    config = deployment(tmp_path, public_key, BASE + GOOD_SINK)
    result = voltd("spool", "status", "-c", config)
    assert_clean_failure(result, 1)
    assert str(tmp_path / "spool.db") in result.stderr
    assert "no spool yet" in result.stderr
    assert not (tmp_path / "spool.db").exists()  # looking does not create it
