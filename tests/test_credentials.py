"""`${cred:NAME}`: systemd credentials (`LoadCredential=`) read from $CREDENTIALS_DIRECTORY.

Real files in a temporary directory stand in for the one systemd makes; the config is written
to disk and loaded as `voltd serve` and `voltd check` load it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import session_material
from voltd.config import ConfigError, load

MINIMAL = """\
[verify]
public_keys = ["volt_id_rsa.pub"]

[sinks.archive]
type = "file"
path = "archive/{date}.jsonl"
"""

SLACK_SECRET = "T000-cred-s3cr3t-B111"
SMTP_SECRET = "smtp-cred-pa55-w0rd"
RELAY_SECRET = "relay-cred-7e57a1"

HIDDEN = "value hidden: it comes from a secret"


@pytest.fixture
def confdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config directory with the public key, as the cwd, so FILE is just `config.toml`."""
    d = tmp_path / "etc"
    d.mkdir()
    shutil.copy(session_material() / "keys" / "volt_id_rsa.pub", d / "volt_id_rsa.pub")
    monkeypatch.chdir(d)
    return d


@pytest.fixture
def creds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$CREDENTIALS_DIRECTORY as systemd makes it: one file per credential."""
    d = tmp_path / "credentials"
    d.mkdir()
    (d / "slack_url").write_text(f"https://hooks.slack.example/services/{SLACK_SECRET}\n")
    (d / "smtp_password").write_text(SMTP_SECRET + "\r\n")
    (d / "relay_secret").write_text(RELAY_SECRET)  # no newline at all
    (d / "two_newlines").write_text("abc\n\n")  # only one is stripped, as ${file:} does
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(d))
    return d


def write(directory: Path, text: str) -> Path:
    path = directory / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def problems(directory: Path, text: str) -> list[str]:
    write(directory, text)
    with pytest.raises(ConfigError) as info:
        load("config.toml")
    return info.value.problems


# --------------------------------------------------------------------------------------------
# Resolved


def test_cred_values_are_read_and_marked_secret(confdir: Path, creds: Path) -> None:
    c = load(
        write(
            confdir,
            MINIMAL
            + "[sinks.t]\ntype = 'x'\n"
            + "a = '${cred:slack_url}'\n"
            + "b = '${cred:smtp_password}'\n"
            + "c = 'Bearer ${cred: relay_secret }'\n"
            + "d = '${cred:two_newlines}'\n"
            + "e = ['plain', '${cred:relay_secret}']\n"
            + "f = '$${cred:slack_url}'\n",
        )
    )
    assert c.sinks["t"].options == {
        "a": f"https://hooks.slack.example/services/{SLACK_SECRET}",
        "b": SMTP_SECRET,
        "c": f"Bearer {RELAY_SECRET}",
        "d": "abc\n",
        "e": ["plain", RELAY_SECRET],
        "f": "${cred:slack_url}",  # the escape, not a reference
    }
    assert c.secret_keys == frozenset(
        {"sinks.t.a", "sinks.t.b", "sinks.t.c", "sinks.t.d", "sinks.t.e[1]"}
    )
    assert c.is_secret("sinks", "t", "a") and not c.is_secret("sinks", "t", "f")


def test_cred_mixed_with_env_and_file(
    confdir: Path, creds: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (confdir / "user.txt").write_text("mailer\n")
    monkeypatch.setenv("VT_HOST", "smtp.example.com")
    c = load(
        write(
            confdir,
            MINIMAL
            + "[sinks.t]\ntype = 'x'\n"
            + "v = '${env:VT_HOST}:${file:user.txt}:${cred:smtp_password}'\n",
        )
    )
    assert c.sinks["t"].options["v"] == f"smtp.example.com:mailer:{SMTP_SECRET}"
    assert c.secret_keys == frozenset({"sinks.t.v"})


def test_a_cred_value_never_appears_in_problems(confdir: Path, creds: Path) -> None:
    found = problems(
        confdir,
        MINIMAL.replace("[verify]\n", "[verify]\nalgorithm = '${cred:relay_secret}'\n")
        + "[retry]\ninitial = '${cred:relay_secret}'\n"
        + "[numbers]\ndesk = '${cred:relay_secret}'\n"
        + "[server]\npath = '${cred:relay_secret}'\n",
    )
    assert len(found) == 4, found
    text = "\n".join(found)
    assert RELAY_SECRET not in text and "relay-cred" not in text
    assert all(HIDDEN in line for line in found), found


# --------------------------------------------------------------------------------------------
# Errors: file and key named, what was expected said, the value never shown


def test_credentials_directory_not_set(confdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    found = problems(confdir, MINIMAL + "[sinks.t]\ntype = 'x'\npassword = '${cred:smtp}'\n")
    assert found == [
        "config.toml: sinks.t.password: cannot read credential 'smtp': $CREDENTIALS_DIRECTORY "
        "is not set: not running under systemd with LoadCredential=; expected the unit to "
        "have LoadCredential=smtp:/path/to/file (or set CREDENTIALS_DIRECTORY to a directory "
        "holding a file 'smtp', e.g. to run `voltd check` by hand)"
    ]


def test_credentials_directory_empty_counts_as_not_set(
    confdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "")
    [found] = problems(confdir, MINIMAL + "[sinks.t]\ntype = 'x'\npassword = '${cred:smtp}'\n")
    assert "$CREDENTIALS_DIRECTORY is not set: not running under systemd" in found


@pytest.mark.parametrize(
    ("name", "shown"),
    [("a/b", "'a/b'"), ("/etc/shadow", "'/etc/shadow'"), (".", "'.'"), ("..", "'..'")],
)
def test_credential_name_must_be_a_plain_file_name(
    confdir: Path, creds: Path, name: str, shown: str
) -> None:
    found = problems(confdir, MINIMAL + f"[sinks.t]\ntype = 'x'\npassword = '${{cred:{name}}}'\n")
    assert found == [
        f"config.toml: sinks.t.password: credential name {shown} in '${{cred:…}}' is not a "
        "plain file name; expected ${cred:NAME} with the NAME of a LoadCredential=NAME:/path "
        "line (no '/', not '.' or '..')"
    ]


def test_credential_name_with_a_nul_or_a_line_break_is_escaped(confdir: Path, creds: Path) -> None:
    found = problems(
        confdir,
        MINIMAL + '[sinks.t]\ntype = "x"\na = "${cred:x\\u0000y}"\nb = "${cred:x\\ny}"\n',
    )
    assert found[0].startswith(
        "config.toml: sinks.t.a: credential name 'x\\x00y' in '${cred:…}' is not a plain"
    )
    assert found[1].startswith("config.toml: sinks.t.b: credential 'x\\ny' not found: no file '")
    assert all("\n" not in line for line in found)


def test_empty_credential_name(confdir: Path, creds: Path) -> None:
    found = problems(confdir, MINIMAL + "[sinks.t]\ntype = 'x'\npassword = '${cred:}'\n")
    assert found == [
        "config.toml: sinks.t.password: empty secret reference '${cred:}'; expected ${cred:NAME}"
    ]


def test_credential_missing(confdir: Path, creds: Path) -> None:
    found = problems(confdir, MINIMAL + "[sinks.t]\ntype = 'x'\npassword = '${cred:nope}'\n")
    assert found == [
        f"config.toml: sinks.t.password: credential 'nope' not found: no file {creds}/nope; "
        "expected LoadCredential=nope:/path/to/file in the unit "
        "(or LoadCredentialEncrypted=/SetCredential=)"
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_credential_unreadable(confdir: Path, creds: Path) -> None:
    (creds / "smtp_password").chmod(0)
    found = problems(
        confdir, MINIMAL + "[sinks.t]\ntype = 'x'\npassword = '${cred:smtp_password}'\n"
    )
    assert found == [
        f"config.toml: sinks.t.password: cannot read credential file {creds}/smtp_password: "
        "Permission denied"
    ]


def test_credential_is_a_directory_or_not_utf8(confdir: Path, creds: Path) -> None:
    (creds / "adir").mkdir()
    (creds / "binary").write_bytes(b"\xff\xfe" + SMTP_SECRET.encode())
    found = problems(
        confdir, MINIMAL + "[sinks.t]\ntype = 'x'\na = '${cred:adir}'\nb = '${cred:binary}'\n"
    )
    assert found == [
        f"config.toml: sinks.t.a: cannot read credential file {creds}/adir: Is a directory",
        f"config.toml: sinks.t.b: credential file {creds}/binary is not UTF-8 text; "
        "expected UTF-8 text",
    ]
    assert SMTP_SECRET not in "\n".join(found)


def test_unknown_kind_lists_all_three(confdir: Path) -> None:
    found = problems(
        confdir,
        MINIMAL + "[sinks.t]\ntype = 'x'\na = '${creds:x}'\nc = 'x${cred:'\n",
    )
    help_ = "expected ${env:NAME}, ${file:PATH} or ${cred:NAME} (write $${ for a literal ${)"
    assert found == [
        f"config.toml: sinks.t.a: unknown kind of secret reference '${{creds:…}}'; {help_}",
        f"config.toml: sinks.t.c: unterminated secret reference '${{' without '}}'; {help_}",
    ]


# --------------------------------------------------------------------------------------------
# voltd check, as an operator (or ExecStartPre=) runs it


def voltd(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voltd", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
        check=False,
    )


CHECKED = (
    MINIMAL
    + """
[[routes]]
sinks = ["relay", "mail"]

[sinks.relay]
type = "http"
url = "https://crm.example.com/hooks/${cred:relay_secret}"
headers = { Authorization = "Bearer ${cred:relay_secret}", X-Plain = "shown" }

[sinks.mail]
type = "email"
host = "smtp.example.com"
username = "${cred:smtp_password}"
password = "${cred:smtp_password}"
from = "voltd@example.com"
to = ["ops@example.com"]
"""
)


def test_check_hides_cred_values(confdir: Path, creds: Path) -> None:
    write(confdir, CHECKED)
    env = dict(os.environ, CREDENTIALS_DIRECTORY=str(creds))
    result = voltd("check", "-c", "config.toml", cwd=confdir, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("config.toml: OK")
    assert "crm.example.com" not in result.stdout  # the url holds a secret: all of it hidden
    assert "***" in result.stdout
    for secret in (SMTP_SECRET, RELAY_SECRET):
        assert secret not in result.stdout and secret not in result.stderr


def test_check_without_credentials_directory_fails_clearly(confdir: Path) -> None:
    write(confdir, CHECKED)
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    result = voltd("check", "-c", "config.toml", cwd=confdir, env=env)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "config.toml: sinks.relay.url: cannot read credential 'relay_secret': " in result.stderr
    assert "not running under systemd with LoadCredential=" in result.stderr
    assert "config.toml: sinks.mail.password: cannot read credential 'smtp_password'" in (
        result.stderr
    )


def test_check_does_not_echo_a_cred_that_fails_validation(confdir: Path, creds: Path) -> None:
    (creds / "relay_url").write_text(f"ftp://{RELAY_SECRET}\n")
    write(
        confdir,
        CHECKED.replace("https://crm.example.com/hooks/${cred:relay_secret}", "${cred:relay_url}"),
    )
    env = dict(os.environ, CREDENTIALS_DIRECTORY=str(creds))
    result = voltd("check", "-c", "config.toml", cwd=confdir, env=env)
    assert result.returncode != 0
    assert "config.toml: sinks.relay.url: " in result.stderr
    assert RELAY_SECRET not in result.stderr and RELAY_SECRET not in result.stdout
