"""Configuration loading: typed values for a good file, one clear line per mistake otherwise."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pydantic
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.tomlw import toml_value
from voltd import config
from voltd.config import BindAddress, ConfigError, load, normalize_number, parse_duration
from voltd.keys import generate_signing_pair, make_self_signed_cert

REPO = Path(__file__).resolve().parent.parent

MINIMAL = """
[verify]
public_keys = ["volt_id_rsa.pub"]

[sinks.archive]
type = "file"
path = "archive/{date}.jsonl"
"""


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real key and certificate files, made once: RSA key generation is slow."""
    d = tmp_path_factory.mktemp("material")
    _, public = generate_signing_pair(d)
    cert, key = make_self_signed_cert(d / "tls")
    other_cert, other_key = make_self_signed_cert(d / "other")
    return {
        "public": public,
        "cert": cert,
        "key": key,
        "other_cert": other_cert,
        "other_key": other_key,
    }


@pytest.fixture
def confdir(tmp_path: Path, material: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config directory holding the key files; the cwd, so FILE is just `config.toml`."""
    shutil.copy(material["public"], tmp_path / "volt_id_rsa.pub")
    (tmp_path / "tls").mkdir()
    shutil.copy(material["cert"], tmp_path / "tls" / "cert.pem")
    shutil.copy(material["key"], tmp_path / "tls" / "key.pem")
    shutil.copy(material["other_key"], tmp_path / "tls" / "other-key.pem")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(directory: Path, text: str, name: str = "config.toml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def problems(directory: Path, text: str) -> list[str]:
    write(directory, text)
    with pytest.raises(ConfigError) as info:
        load("config.toml")
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


# --------------------------------------------------------------------------------------------
# A good configuration

GOOD = """
plugin_dirs = ["plugins"]

[server]
bind = ["0.0.0.0:8443", "[::1]:0"]
path = "/hooks/volt"
certfile = "tls/cert.pem"
keyfile = "tls/key.pem"
max_body_bytes = 4096
answer_probes = false

[admin]
bind = "[::1]:9310"

[verify]
public_keys = ["volt_id_rsa.pub"]
header = "X-Sig"
algorithm = "rsa-pss-sha256"
encoding = "hex"

[spool]
path = "state/spool.db"
retention = "3d"

[retry]
initial = "500ms"
max_delay = "10m"
give_up_after = "1h30m"

[numbers]
front-desk = "+1 (555) 555-0123"
support = "+44 20 7946 0958"

[[routes]]
name = "front desk inbound"
match.number = ["front-desk", "+1 555 555 0199", "+1 555-555-01[0-4]*"]
match.event = "Message.Received"
exclude = { error_code = [702, "7*"], direction = "OUTBOUND" }
sinks = ["slack", "archive"]

[[routes]]
match = { text = ['(?i)\\bstop\\b'], carrier = ["T-Mobile*"] }
sinks = "archive"
final = true

[sinks.archive]
type = "file"
path = "archive/{our_number}/{date}.jsonl"
fsync = true

[sinks.slack]
type = "slack"
webhook_url = "https://hooks.example.com/${env:VOLTD_TEST_SLACK_TOKEN}"
channel = "$${not a secret}"

[defaults]
unmatched = "archive"
"""


def test_good_config_loads_typed_and_resolved(
    confdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (confdir / "plugins").mkdir()
    monkeypatch.setenv("VOLTD_TEST_SLACK_TOKEN", "T0K3N")
    path = write(confdir, GOOD)
    c = load(path)

    assert c.source == path and c.source_name == str(path)
    assert c.config_dir == confdir
    assert c.server.bind == [BindAddress("0.0.0.0", 8443), BindAddress("::1", 0)]
    assert [str(b) for b in c.server.bind] == ["0.0.0.0:8443", "[::1]:0"]
    assert c.server.path == "/hooks/volt"
    assert c.server.certfile == confdir / "tls" / "cert.pem"
    assert c.server.keyfile == confdir / "tls" / "key.pem"
    assert c.server.https is True
    assert c.server.max_body_bytes == 4096
    assert c.server.answer_probes is False
    assert c.admin.bind == BindAddress("::1", 9310)

    assert c.verify.public_keys == [confdir / "volt_id_rsa.pub"]
    assert len(c.verify.keys) == 1 and c.verify.keys[0].key_size == 2048
    assert (c.verify.header, c.verify.algorithm, c.verify.encoding) == (
        "X-Sig",
        "rsa-pss-sha256",
        "hex",
    )
    assert c.verify.max_age == 3 * 86400.0  # defaults to spool.retention

    assert c.spool.path == confdir / "state" / "spool.db"
    assert c.spool.retention == 3 * 86400.0
    assert (c.retry.initial, c.retry.max_delay, c.retry.give_up_after) == (0.5, 600.0, 5400.0)

    assert c.numbers == {"front-desk": "+15555550123", "support": "+442079460958"}

    first, second = c.routes
    assert first.name == "front desk inbound"
    assert first.match.conditions == {
        "number": ("+15555550123", "+15555550199", "+155555501[0-4]*"),
        "event": ("message.received",),
    }
    assert first.match.written["number"] == (
        "front-desk",
        "+1 555 555 0199",
        "+1 555-555-01[0-4]*",
    )
    assert dict(first.match.items()) == first.match.conditions  # a read-only mapping
    assert first.exclude is not None
    assert first.exclude.conditions == {"error_code": ("702", "7*"), "direction": ("outbound",)}
    assert first.sinks == ["slack", "archive"] and first.final is False
    assert second.name == "route 2"
    assert second.match.conditions == {"text": ("(?i)\\bstop\\b",), "carrier": ("t-mobile*",)}
    assert second.exclude is None and second.sinks == ["archive"] and second.final is True

    assert c.sinks["archive"].type == "file"
    assert c.sinks["archive"].options == {
        "path": "archive/{our_number}/{date}.jsonl",
        "fsync": True,
    }
    assert c.sinks["slack"].options == {
        "webhook_url": "https://hooks.example.com/T0K3N",
        "channel": "${not a secret}",
    }
    assert c.defaults.unmatched == "archive"
    assert c.plugin_dirs == [confdir / "plugins"]
    assert c.secret_keys == frozenset({"sinks.slack.webhook_url"})


def test_defaults(confdir: Path) -> None:
    c = load(write(confdir, MINIMAL))
    assert c.server.bind == [BindAddress("0.0.0.0", 8443)]
    assert c.server.path == "/webhooks"
    assert c.server.certfile is None and c.server.keyfile is None and not c.server.https
    assert c.server.max_body_bytes == 1048576 and c.server.answer_probes is True
    assert c.admin.bind == BindAddress("127.0.0.1", 9310)
    assert c.verify.header == "X-Respond-Flow-Signature"
    assert c.verify.algorithm == "rsa-pkcs1v15-sha256" and c.verify.encoding == "base64"
    assert c.verify.max_age == 7 * 86400.0
    assert c.spool.path == confdir / "spool.db" and c.spool.retention == 7 * 86400.0
    assert (c.retry.initial, c.retry.max_delay, c.retry.give_up_after) == (2.0, 3600.0, 86400.0)
    assert c.numbers == {} and c.routes == [] and c.defaults.unmatched is None
    assert c.plugin_dirs == [] and c.secret_keys == frozenset()


def test_admin_disabled_single_bind_and_max_age_zero(confdir: Path) -> None:
    text = (
        MINIMAL
        + """
[server]
bind = "127.0.0.1:8080"
[admin]
bind = ""
"""
    )
    text = text.replace(
        'public_keys = ["volt_id_rsa.pub"]', 'public_keys = "volt_id_rsa.pub"\nmax_age = "0"'
    )
    c = load(write(confdir, text))
    assert c.server.bind == [BindAddress("127.0.0.1", 8080)]
    assert c.admin.bind is None
    assert c.verify.max_age == 0.0
    assert c.verify.public_keys == [confdir / "volt_id_rsa.pub"]


def test_config_given_by_relative_path_resolves_against_its_directory(
    confdir: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(confdir, MINIMAL)
    elsewhere = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(elsewhere)
    rel = os.path.relpath(confdir / "config.toml", elsewhere)
    c = load(rel)
    assert c.source_name == rel
    assert c.source == confdir / "config.toml"
    assert c.verify.public_keys == [confdir / "volt_id_rsa.pub"]


# --------------------------------------------------------------------------------------------
# One problem per mistake, with FILE, key path and expectation

ERRORS = [
    pytest.param(
        "serverr = 1\n",
        "config.toml: serverr: unknown key (expected one of: server, admin, verify, spool, "
        "retry, numbers, routes, sinks, defaults, plugin_dirs)",
        id="unknown-top-level-key",
    ),
    pytest.param(
        "[server]\nbnd = '0.0.0.0:1'\n",
        "config.toml: server.bnd: unknown key (expected one of: bind, path, certfile, keyfile, "
        "max_body_bytes, answer_probes)",
        id="unknown-section-key",
    ),
    pytest.param(
        "[[routes]]\nmatch = { numbr = 'x' }\nsinks = ['archive']\n",
        "config.toml: routes[0].match.numbr: unknown key (expected one of: number, from, to, "
        "direction, event, status, message_type, error_code, carrier, text)",
        id="unknown-match-key",
    ),
    pytest.param(
        "[[routes]]\nsinks = ['archive']\nexclude = { sttus = 'x' }\n",
        "config.toml: routes[0].exclude.sttus: unknown key (expected one of: number, from, to, "
        "direction, event, status, message_type, error_code, carrier, text)",
        id="unknown-exclude-key",
    ),
    pytest.param(
        "[[routes]]\nsinks = ['archive']\nfinall = true\n",
        "config.toml: routes[0].finall: unknown key (expected one of: name, match, exclude, "
        "sinks, final)",
        id="unknown-route-key",
    ),
    pytest.param(
        "[retry]\ninitial = 'soon'\n",
        "config.toml: retry.initial: expected a duration like 200ms, 2s, 5m, 1h or 7d, got 'soon'",
        id="bad-duration",
    ),
    pytest.param(
        "[spool]\nretention = '0'\n",
        "config.toml: spool.retention: expected a duration greater than 0, got '0'",
        id="zero-retention",
    ),
    pytest.param(
        "[retry]\ninitial = '2h'\nmax_delay = '1h'\n",
        "config.toml: retry.initial: the first retry delay (7200s) is longer than "
        "retry.max_delay (3600s); expected initial <= max_delay",
        id="initial-above-max-delay",
    ),
    pytest.param(
        "[numbers]\nfront-desk = '555-0123'\n",
        "config.toml: numbers.front-desk: expected a phone number in international form like "
        "+1 555 555 0123, got '555-0123'",
        id="bad-number",
    ),
    pytest.param(
        "[[routes]]\nsinks = ['archive']\n[[routes]]\nsinks = ['archive', 'ops-mial']\n",
        "config.toml: routes[1].sinks[1]: no sink named 'ops-mial' (defined: archive)",
        id="route-to-undefined-sink",
    ),
    pytest.param(
        "[[routes]]\nmatch = {}\n",
        "config.toml: routes[0].sinks: missing: expected the sinks this route delivers to, "
        'e.g. sinks = ["archive"]',
        id="route-without-sinks",
    ),
    pytest.param(
        "[defaults]\nunmatched = 'archve'\n",
        "config.toml: defaults.unmatched: no sink named 'archve' (defined: archive)",
        id="unmatched-undefined",
    ),
    pytest.param(
        "[[routes]]\nsinks = ['archive']\n[[routes]]\nsinks = ['archive']\n"
        "[[routes]]\nsinks = ['archive']\nmatch = { text = ['(unclosed', 'fine'] }\n",
        "config.toml: routes[2].match.text[0]: not a valid regular expression: missing ), "
        "unterminated subpattern at position 0",
        id="bad-regex",
    ),
    pytest.param(
        "[[routes]]\nsinks = ['archive']\nmatch = { number = 'front-dsk' }\n"
        "[numbers]\nfront-desk = '+15555550123'\n",
        "config.toml: routes[0].match.number: no number named 'front-dsk' in [numbers] "
        "(defined: front-desk)",
        id="unknown-number-name",
    ),
    pytest.param(
        "[[routes]]\nsinks = ['archive']\nmatch = { from = ['+1555*x'] }\n",
        "config.toml: routes[0].match.from[0]: expected a number glob made of +, digits, spaces "
        "and * ? [0-9] like +1555*, got '+1555*x'",
        id="bad-number-glob",
    ),
    pytest.param(
        "[[routes]]\nsinks = ['archive']\nmatch = { direction = 'sideways' }\n",
        "config.toml: routes[0].match.direction: expected inbound or outbound, got 'sideways'",
        id="bad-direction",
    ),
    pytest.param(
        "[[routes]]\nsinks = ['archive']\nmatch = { status = [] }\n",
        "config.toml: routes[0].match.status: expected at least one value "
        "(an empty list never matches)",
        id="empty-match-list",
    ),
    pytest.param(
        "[[routes]]\nsinks = ['archive']\nexclude = {}\n",
        "config.toml: routes[0].exclude: an empty exclude table would exclude every event; "
        "expected at least one key, or remove exclude",
        id="empty-exclude",
    ),
    pytest.param(
        "[[routes]]\nsinks = ['archive']\nmatch = { status = 5 }\n",
        "config.toml: routes[0].match.status: expected a string or an array of them, "
        "got an integer (5)",
        id="match-value-type",
    ),
    pytest.param(
        "[server]\nbind = '0.0.0.0'\n",
        "config.toml: server.bind: expected host:port like 0.0.0.0:8443 or [::1]:8443, "
        "got '0.0.0.0'",
        id="bad-bind",
    ),
    pytest.param(
        "[server]\nbind = ['::1:8443']\n",
        "config.toml: server.bind[0]: expected host:port like 0.0.0.0:8443 or [::1]:8443; "
        "put an IPv6 address in brackets, got '::1:8443'",
        id="ipv6-without-brackets",
    ),
    pytest.param(
        "[server]\nbind = '0.0.0.0:70000'\n",
        "config.toml: server.bind: expected host:port like 0.0.0.0:8443 or [::1]:8443; "
        "the port must be a number from 0 to 65535, got '0.0.0.0:70000'",
        id="bad-port",
    ),
    pytest.param(
        "[server]\npath = 'webhooks'\n",
        "config.toml: server.path: expected a URL path starting with /, got 'webhooks'",
        id="bad-path",
    ),
    pytest.param(
        "[server]\nmax_body_bytes = 0\n",
        "config.toml: server.max_body_bytes: expected a whole number of bytes, at least 1, "
        "got an integer (0)",
        id="bad-max-body",
    ),
    pytest.param(
        "[server]\nanswer_probes = 'yes'\n",
        "config.toml: server.answer_probes: expected true or false, got 'yes'",
        id="bad-bool",
    ),
    pytest.param(
        "[server]\nbind = '127.0.0.1:9310'\n",
        "config.toml: admin.bind: 127.0.0.1:9310 is also in server.bind; expected another port",
        id="admin-same-as-server",
    ),
    pytest.param(
        "[sinks.mail]\nhost = 'smtp.example.com'\n",
        'config.toml: sinks.mail.type: missing: every sink needs a type, e.g. type = "file"',
        id="sink-without-type",
    ),
    pytest.param(
        "plugin_dirs = ['no-such-dir']\n",
        "config.toml: plugin_dirs[0]: directory does not exist (path {dir}/no-such-dir)",
        id="missing-plugin-dir",
    ),
    pytest.param(
        "[server]\ncertfile = 'tls/cert.pem'\n",
        "config.toml: server.keyfile: missing: server.certfile is set, so keyfile (its private "
        "key) is needed too; set both for HTTPS, or neither for plain HTTP behind a TLS proxy",
        id="cert-without-key",
    ),
    pytest.param(
        "[server]\ncertfile = 'tls/cert.pem'\nkeyfile = 'tls/nope.pem'\n",
        "config.toml: server.keyfile: cannot read: No such file or directory "
        "(file {dir}/tls/nope.pem)",
        id="missing-keyfile",
    ),
    pytest.param(
        "[server]\ncertfile = 'volt_id_rsa.pub'\nkeyfile = 'tls/key.pem'\n",
        "config.toml: server.certfile: not a PEM certificate; expected a PEM file "
        "('-----BEGIN CERTIFICATE-----') (file {dir}/volt_id_rsa.pub)",
        id="bad-cert",
    ),
    pytest.param(
        "[server]\ncertfile = 'tls/cert.pem'\nkeyfile = 'tls/other-key.pem'\n",
        "config.toml: server.keyfile: this private key does not belong to the certificate in "
        "server.certfile (file {dir}/tls/other-key.pem)",
        id="mismatched-key",
    ),
    pytest.param(
        "[verify]\nalgorithm = 'rsa'\n",
        "config.toml: verify.algorithm: expected one of rsa-pkcs1v15-sha256, rsa-pkcs1v15-sha1, "
        "rsa-pkcs1v15-sha512, rsa-pss-sha256, got 'rsa'",
        id="bad-algorithm",
    ),
    pytest.param(
        "[verify]\nencoding = 'base32'\n",
        "config.toml: verify.encoding: expected one of base64, hex, got 'base32'",
        id="bad-encoding",
    ),
    pytest.param(
        "[verify]\nheader = 'X Sig'\n",
        "config.toml: verify.header: expected an HTTP header name, got 'X Sig'",
        id="bad-header",
    ),
]


@pytest.mark.parametrize(("extra", "expected"), ERRORS)
def test_each_mistake_is_one_clear_problem(confdir: Path, extra: str, expected: str) -> None:
    base = MINIMAL
    # Keep every snippet's own section the only one of its name.
    if extra.startswith("[verify]"):
        base = base.replace("[verify]\n", "[verify]\n" + extra.split("\n", 1)[1], 1)
        extra = ""
    # A bare key after a table header would belong to that table: top-level keys go first.
    text = base + "\n" + extra if extra.startswith("[") else extra + base
    found = problems(confdir, text)
    assert found == [expected.format(dir=confdir)]


def test_encrypted_tls_key_is_refused_without_prompting(confdir: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    (confdir / "tls" / "enc.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    found = problems(
        confdir, "[server]\ncertfile = 'tls/cert.pem'\nkeyfile = 'tls/enc.pem'\n" + MINIMAL
    )
    assert found == [
        "config.toml: server.keyfile: the private key is encrypted with a passphrase; expected "
        "an unencrypted PEM private key ('-----BEGIN PRIVATE KEY-----') "
        f"(file {confdir}/tls/enc.pem)"
    ]


def test_missing_public_keys(confdir: Path) -> None:
    found = problems(confdir, "[sinks.archive]\ntype = 'file'\n")
    assert found == [
        "config.toml: verify.public_keys: missing: expected at least one public key file, e.g. "
        'public_keys = ["volt_id_rsa.pub"] (Volt publishes it as id_rsa.pub)'
    ]


def test_missing_public_key_file(confdir: Path) -> None:
    found = problems(confdir, '[verify]\npublic_keys = ["volt_id_rsa.pub", "keys/new.pub"]\n')
    assert found == [
        "config.toml: verify.public_keys[1]: cannot read: No such file or directory "
        f"(file {confdir}/keys/new.pub)"
    ]


def test_garbage_public_key_file(confdir: Path) -> None:
    (confdir / "garbage.pub").write_text("this is not a key\n")
    found = problems(confdir, '[verify]\npublic_keys = ["garbage.pub"]\n')
    assert len(found) == 1
    assert found[0].startswith("config.toml: verify.public_keys[0]: not an RSA public key")
    assert found[0].endswith(f"(file {confdir}/garbage.pub)")


def test_toml_syntax_error(confdir: Path) -> None:
    found = problems(confdir, "[server]\nbind = \n")
    assert found == ["config.toml: line 2, column 8: invalid TOML: Invalid value"]


def test_not_utf8(confdir: Path) -> None:
    (confdir / "config.toml").write_bytes(b"# ok\n# \xff\n")
    with pytest.raises(ConfigError) as info:
        load("config.toml")
    assert info.value.problems == ["config.toml: line 2: invalid TOML: the file is not UTF-8 text"]


def test_missing_file(confdir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load("nope.toml")
    assert info.value.problems == ["nope.toml: cannot read: No such file or directory"]


def test_directory_instead_of_file(confdir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(confdir)
    assert info.value.problems == [f"{confdir}: cannot read: Is a directory"]


def test_all_problems_reported_at_once(confdir: Path) -> None:
    found = problems(
        confdir,
        """
colour = "blue"
[verify]
public_keys = ["missing.pub"]
[retry]
initial = "soon"
max_delay = "-1s"
[numbers]
desk = "555"
[[routes]]
match = { numbr = "x", text = "(" }
sinks = ["nowhere"]
[defaults]
unmatched = "nowhere"
""",
    )
    keys = [p.split(": ")[1] for p in found]
    assert keys == [
        "colour",
        "verify.public_keys[0]",
        "retry.initial",
        "retry.max_delay",
        "numbers.desk",
        "routes[0].match.numbr",
        "routes[0].match.text",
        "routes[0].sinks[0]",
        "defaults.unmatched",
    ]
    assert all(p.startswith("config.toml: ") for p in found)


def test_wrong_shapes_are_problems_not_crashes(confdir: Path) -> None:
    found = problems(
        confdir,
        """
server = 5
admin = []
retry = "fast"
routes = "everything"
sinks = 3
numbers = []
plugin_dirs = 7
defaults = { unmatched = 1 }
[verify]
public_keys = [1, {}]
""",
    )
    assert found == [
        "config.toml: server: expected a table, got an integer (5)",
        "config.toml: admin: expected a table, got an array",
        "config.toml: verify.public_keys[0]: expected a string, got an integer (1)",
        "config.toml: verify.public_keys[1]: expected a string, got a table",
        "config.toml: retry: expected a table, got 'fast'",
        'config.toml: numbers: expected a table like { front-desk = "+1 555 555 0123" }, '
        "got an array",
        "config.toml: sinks: expected a table of [sinks.NAME] tables, got an integer (3)",
        "config.toml: routes: expected an array of [[routes]] tables, got 'everything'",
        "config.toml: defaults.unmatched: expected a string, got an integer (1)",
        "config.toml: plugin_dirs: expected a directory path or an array of them, "
        "got an integer (7)",
    ]


def test_duplicate_route_names(confdir: Path) -> None:
    found = problems(
        confdir,
        MINIMAL
        + "[[routes]]\nname = 'a'\nsinks = 'archive'\n[[routes]]\nname = 'a'\nsinks = 'archive'\n",
    )
    assert found == [
        "config.toml: routes[1].name: route name 'a' is already used by routes[0]; "
        "expected unique names"
    ]


def test_quoted_keys_are_shown_quoted(confdir: Path) -> None:
    found = problems(confdir, MINIMAL + '[sinks."a.b"]\nkind = "file"\n')
    assert found == [
        'config.toml: sinks."a.b".type: missing: every sink needs a type, e.g. type = "file"'
    ]


# --------------------------------------------------------------------------------------------
# Secrets


def test_missing_env_secret(confdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SMTP_PASSWORD", raising=False)
    found = problems(
        confdir, MINIMAL + "[sinks.x]\ntype = 'email'\npassword = '${env:SMTP_PASSWORD}'\n"
    )
    assert found == ["config.toml: sinks.x.password: environment variable SMTP_PASSWORD is not set"]


def test_file_secret_relative_to_config(
    confdir: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    (confdir / "secrets").mkdir()
    (confdir / "secrets" / "smtp").write_text("s3cr3t pass\n\n")  # only one newline stripped
    (confdir / "secrets" / "user").write_text("mailer\r\n")
    write(
        confdir,
        MINIMAL
        + "[sinks.mail]\ntype = 'email'\n"
        + "password = '${file:secrets/smtp}'\nuser = 'u-${file:secrets/user}-${env:VT_SUFFIX}'\n"
        + "to = ['ops@example.com', '${env:VT_SUFFIX}@example.com']\n",
    )
    monkeypatch.setenv("VT_SUFFIX", "x1")
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    c = load(confdir / "config.toml")
    assert c.sinks["mail"].options == {
        "password": "s3cr3t pass\n",
        "user": "u-mailer-x1",
        "to": ["ops@example.com", "x1@example.com"],
    }
    assert c.secret_keys == frozenset(
        {"sinks.mail.password", "sinks.mail.user", "sinks.mail.to[1]"}
    )
    assert c.is_secret("sinks", "mail", "to") and c.is_secret("sinks", "mail", "password")
    assert c.is_secret("sinks", "mail") and not c.is_secret("sinks", "archive")
    assert not c.is_secret("sinks", "mail", "t")


def test_unreadable_file_secret_and_unknown_kinds(confdir: Path) -> None:
    found = problems(
        confdir,
        MINIMAL
        + "[sinks.mail]\ntype = 'email'\npassword = '${file:nope.txt}'\n"
        + "token = '${vault:secret/x}'\nother = 'abc${env:'\nempty = '${env:}'\n",
    )
    assert found == [
        f"config.toml: sinks.mail.password: cannot read secret file {confdir}/nope.txt: "
        "No such file or directory",
        "config.toml: sinks.mail.token: unknown kind of secret reference '${vault:…}'; "
        "expected ${env:NAME}, ${file:PATH} or ${cred:NAME} (write $${ for a literal ${)",
        "config.toml: sinks.mail.other: unterminated secret reference '${' without '}'; "
        "expected ${env:NAME}, ${file:PATH} or ${cred:NAME} (write $${ for a literal ${)",
        "config.toml: sinks.mail.empty: empty secret reference '${env:}'; expected ${env:NAME}",
    ]


def test_secret_values_never_appear_in_problems(
    confdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "hunter2-SECRET-value"
    monkeypatch.setenv("VT_SECRET", secret)
    found = problems(
        confdir,
        MINIMAL.replace("[verify]\n", "[verify]\nalgorithm = '${env:VT_SECRET}'\n")
        + "[numbers]\ndesk = '${env:VT_SECRET}'\n"
        + "[retry]\ninitial = '${env:VT_SECRET}'\n"
        + "[[routes]]\nsinks = ['${env:VT_SECRET}']\n"
        + "match = { number = ['${env:VT_SECRET}'], direction = '${env:VT_SECRET}', "
        + "text = '(${env:VT_SECRET}' }\n"
        + "[admin]\nbind = '${env:VT_SECRET} x:80'\n"
        + "[defaults]\nunmatched = 'x${env:VT_SECRET}'\n"
        + "[server]\nbind = '${env:VT_SECRET}'\npath = '${env:VT_SECRET}'\n",
    )
    assert len(found) == 11
    text = "\n".join(found)
    assert secret not in text and "hunter2" not in text
    assert "value hidden" in text


def test_literal_dollar_brace(confdir: Path) -> None:
    c = load(write(confdir, MINIMAL + "[sinks.t]\ntype = 'x'\na = '$${env:HOME}'\nb = '$5 $$'\n"))
    assert c.sinks["t"].options == {"a": "${env:HOME}", "b": "$5 $$"}
    assert c.secret_keys == frozenset()


# --------------------------------------------------------------------------------------------
# parse_duration and normalize_number


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("200ms", 0.2),
        ("2s", 2.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("7d", 604800.0),
        ("1h30m", 5400.0),
        ("1h 30m 15s", 5415.0),
        ("1.5s", 1.5),
        ("0", 0.0),
        ("30", 30.0),
        (" 2.5 ", 2.5),
        (45, 45.0),
        (0.25, 0.25),
        ("0s", 0.0),
    ],
)
def test_parse_duration(text: str | int | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "  ",
        "soon",
        "-1s",
        "-5",
        "5 minutes",
        "5M",
        "1w",
        "s",
        "1h-30m",
        "1e3",
        "nan",
        "inf",
        -1,
        float("nan"),
        float("inf"),
        True,
        None,
        "1.s",
        "1h30",
    ],
)
def test_parse_duration_rejects(text: Any) -> None:
    with pytest.raises(ValueError, match=r"^expected a duration like 200ms, 2s, 5m, 1h or 7d$"):
        parse_duration(text)


@given(st.one_of(st.text(), st.integers(), st.floats(), st.from_regex(r"[0-9.]+(ms|s|m|h|d)?")))
def test_parse_duration_never_crashes(value: str | int | float) -> None:
    try:
        result = parse_duration(value)
    except ValueError:
        return
    assert isinstance(result, float) and result >= 0


@pytest.mark.parametrize(
    ("text", "e164"),
    [
        ("+1 (555) 555-0123", "+15555550123"),
        ("+15555550123", "+15555550123"),
        (" +44 20 7946 0958 ", "+442079460958"),
        ("+49.30.1234567", "+49301234567"),
    ],
)
def test_normalize_number(text: str, e164: str) -> None:
    assert normalize_number(text) == e164


@pytest.mark.parametrize(
    "text",
    [
        "555-0123",
        "15555550123",
        "+1",
        "+1 555",
        "front-desk",
        "",
        "+1 555 555 0123 x12",
        "++15555550123",
        "+1555555012345678901",
        # Found by fuzzing: the phone library would return something else than was written.
        "+624032621859141287",  # "possible", but longer than E.164's 15 digits
        "+261 725 9009",  # rewritten to +261207259009 (digits added)
        "+310000000",  # read back as +31000000, then +3100000
    ],
)
def test_normalize_number_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="international form like"):
        normalize_number(text)


@given(st.one_of(st.text(), st.from_regex(r"\+[0-9 ()\-.]{0,25}")))
def test_normalize_number_never_crashes(text: str) -> None:
    try:
        result = normalize_number(text)
    except ValueError:
        return
    assert result.startswith("+") and result[1:].isdigit()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0.0.0:8443", BindAddress("0.0.0.0", 8443)),
        ("[::1]:0", BindAddress("::1", 0)),
        ("[::]:443", BindAddress("::", 443)),
        ("localhost:80", BindAddress("localhost", 80)),
    ],
)
def test_bind_address(text: str, expected: BindAddress) -> None:
    assert BindAddress.parse(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize(
    "text",
    ["", ":80", "host", "host:", "host:x", "[::1]8443", "[nope]:1", "a b:1", "::1:80", "h:-1"],
)
def test_bind_address_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="expected host:port"):
        BindAddress.parse(text)


# --------------------------------------------------------------------------------------------
# validation_problems (used for sink options)


class _Inner(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    level: int = pydantic.Field(ge=1)


class _Options(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    url: str
    to: list[str] | str
    retries: int = pydantic.Field(default=3, gt=0)
    mode: str = "a"
    inner: _Inner | None = None
    items: list[_Inner] = []

    @pydantic.field_validator("mode")
    @classmethod
    def _mode(cls, v: str) -> str:
        if v not in ("a", "b"):
            raise ValueError("expected 'a' or 'b'")
        return v


def _errors(data: dict[str, Any]) -> pydantic.ValidationError:
    with pytest.raises(pydantic.ValidationError) as info:
        _Options.model_validate(data)
    return info.value


def test_validation_problems_plain_words_and_paths() -> None:
    err = _errors(
        {
            "to": 5,
            "retries": 0,
            "mode": "zzz-SECRET",
            "inner": {"level": 0, "lvl": 1},
            "items": [{"level": 1}, {"level": "SECRET"}],
            "extra": "SECRET",
        }
    )
    found = config.validation_problems("c.toml", "sinks.mail", err, model=_Options)
    assert found == [
        "c.toml: sinks.mail.url: missing; this key is required",
        "c.toml: sinks.mail.to: expected an array or a string",
        "c.toml: sinks.mail.retries: expected a value greater than 0",
        "c.toml: sinks.mail.mode: expected 'a' or 'b'",
        "c.toml: sinks.mail.inner.level: expected a value of at least 1",
        "c.toml: sinks.mail.inner.lvl: unknown key (expected one of: level)",
        "c.toml: sinks.mail.items[1].level: expected an integer",
        "c.toml: sinks.mail.extra: unknown key (expected one of: url, to, retries, mode, inner, "
        "items)",
    ]
    assert "SECRET" not in "\n".join(found)


def test_validation_problems_without_model() -> None:
    found = config.validation_problems("c.toml", "sinks.x", _errors({"url": "u", "to": [], "y": 1}))
    assert found == ["c.toml: sinks.x.y: unknown key"]


# --------------------------------------------------------------------------------------------
# The example configuration


def test_example_config_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    shutil.copy(REPO / "config.example.toml", tmp_path / "config.toml")
    generate_signing_pair(tmp_path)
    cert, key = make_self_signed_cert(tmp_path_factory.mktemp("certs"))
    (tmp_path / "tls").mkdir()
    shutil.copy(cert, tmp_path / "tls" / "fullchain.pem")
    shutil.copy(key, tmp_path / "tls" / "privkey.pem")
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    c = load(tmp_path / "config.toml")
    assert c.server.https
    assert {s.type for s in c.sinks.values()} == {"file"}
    assert all(r.sinks for r in c.routes)
    assert c.defaults.unmatched == "archive"
    # Every key the loader knows appears in the example, active or commented out.
    text = (REPO / "config.example.toml").read_text()
    for section, keys in [
        ("", config._TOP_KEYS),
        ("server", config._SERVER_KEYS),
        ("admin", config._ADMIN_KEYS),
        ("verify", config._VERIFY_KEYS),
        ("spool", config._SPOOL_KEYS),
        ("retry", config._RETRY_KEYS),
        ("routes", config._ROUTE_KEYS),
        ("defaults", config._DEFAULTS_KEYS),
        ("match", config.MATCH_KEYS),
    ]:
        for key in keys:
            assert key in text, (section, key)


# --------------------------------------------------------------------------------------------
# Whatever the file says, the answer is a Config or a ConfigError


_KEYS = st.sampled_from(
    [
        *config._TOP_KEYS,
        *config._SERVER_KEYS,
        *config._VERIFY_KEYS,
        *config._ROUTE_KEYS,
        *config.MATCH_KEYS,
        "type",
        "archive",
        "front-desk",
        "unmatched",
        "retention",
        "initial",
    ]
)
_SCALARS = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(
        [
            "",
            "0",
            "2s",
            "soon",
            "+15555550123",
            "front-desk",
            "archive",
            "*",
            "0.0.0.0:8443",
            "[::1]:1",
            "(",
            "${env:VT_NOPE}",
            "${file:x}",
            "$${",
            "volt_id_rsa.pub",
            "tls/cert.pem",
            "inbound",
            "file",
        ]
    ),
    st.text(max_size=8),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(_KEYS, children, max_size=4)
    ),
    max_leaves=12,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.dictionaries(st.sampled_from(config._TOP_KEYS), _VALUES, max_size=6))
def test_arbitrary_structures_never_crash(confdir: Path, data: dict[str, Any]) -> None:
    text = "\n".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in data.items())
    write(confdir, text)
    try:
        c = load("config.toml")
    except ConfigError as e:
        assert e.problems and all(p.startswith("config.toml: ") for p in e.problems)
    else:
        assert isinstance(c, config.Config)
