"""Property tests for the config loader: whatever the file holds, a Config or a clear ConfigError.

DESIGN §4 promises that every mistake is reported before the daemon starts, naming the file,
the key and what was expected. These properties throw random bytes, TOML-looking soup and
structurally generated documents (real key names at every level, with wrong types, unknown keys,
missing keys, huge integers, NaN, dates and mixed arrays) at `config.load` and
`daemon.configure`, and check every problem line. They are plain sync functions taking only
`@given` arguments so that `fuzz/run.py` can drive them with `fuzz_one_input`.

Bugs found this way are pinned by minimal regression tests at the end; the properties cover
their inputs too (NUL and line breaks in every string, secrets in any key, any sink name).
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import itertools
import json
import math
import re
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tests.helpers import examples
from tests.tomlw import toml_dumps, toml_value
from voltd import config, daemon
from voltd.config import (
    DURATION_EXPECTED,
    NUMBER_EXPECTED,
    Config,
    ConfigError,
    normalize_number,
    parse_duration,
)
from voltd.keys import generate_signing_pair, make_self_signed_cert
from voltd.verify import KeyLoadError, load_public_key_file

SECRET = "hunter2-fuzz-secret"


# --------------------------------------------------------------------------------------------
# A directory with real key material, made once per process (no pytest fixtures: the runner
# calls the properties directly)

_TMP: list[tempfile.TemporaryDirectory[str]] = []


@functools.cache
def _material() -> Path:
    """Keys, a TLS pair, a secret file and a plugin dir next to where configs are written."""
    tmp = tempfile.TemporaryDirectory(prefix="voltd-fuzz-config-")
    _TMP.append(tmp)  # kept alive for the process; removed at exit
    d = Path(tmp.name)
    generate_signing_pair(d)
    make_self_signed_cert(d / "tls")
    (d / "plugins").mkdir()
    (d / "secret.txt").write_text(SECRET + "\n", encoding="utf-8")
    return d


def _write(content: str | bytes) -> str:
    path = _material() / "config.toml"
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return str(path)


def _load(content: str | bytes) -> tuple[str, Config | None, ConfigError | None]:
    """Load `content` from a file; any exception other than ConfigError fails the property."""
    source = _write(content)
    try:
        return source, config.load(source), None
    except ConfigError as e:
        return source, None, e


# --------------------------------------------------------------------------------------------
# Problem lines: `FILE: key.path: message`, one line each, the path pointing into the file

_KNOWN_KEYS = frozenset(
    [
        *config._TOP_KEYS,
        *config._SERVER_KEYS,
        *config._ADMIN_KEYS,
        *config._VERIFY_KEYS,
        *config._SPOOL_KEYS,
        *config._RETRY_KEYS,
        *config._ROUTE_KEYS,
        *config._DEFAULTS_KEYS,
        *config.MATCH_KEYS,
        "type",
    ]
)
_PATH_PART = re.compile(r'\[(\d+)\]|(\.?)(?:([A-Za-z0-9_-]+)|("(?:[^"\\]|\\.)*"))')
_SYNTAX = re.compile(
    r"(?:line (?P<line>\d+)(?:, column (?P<col>\d+))?|end of file)"
    r": invalid TOML: \S.*|invalid TOML: nested too deeply"
)
# Messages that say what is wrong without the word "expected": each names the thing that is
# missing or unreadable, which is the expectation. A new form must be reviewed, not waved by.
_SELF_EXPLAINING = re.compile(
    r"missing[:;] |cannot read(?: secret file)?[: ]|directory does not exist \(path "
    r"|not a directory \(path |environment variable \S+ is not set$"
    r"|secret file .* is not UTF-8 text$"
    r"|not a valid regular expression|no (?:sink named|such sink|number named|such name) "
    r"|unknown sink type "
)


def _parse_path(text: str) -> tuple[list[str | int], str]:
    """Split `routes[0].match."a b": message` into its key path and the message."""
    parts: list[str | int] = []
    pos = 0
    while True:
        m = _PATH_PART.match(text, pos)
        assert m is not None, text
        if m.group(1) is not None:
            parts.append(int(m.group(1)))
        else:
            assert (m.group(2) == ".") == (pos > 0), text  # a dot between keys, none before
            parts.append(m.group(3) if m.group(3) is not None else json.loads(m.group(4)))
        pos = m.end()
        if text.startswith(": ", pos):
            return parts, text[pos + 2 :]


def _walk(data: Any, parts: list[str | int]) -> int:
    """How many leading parts of a key path exist in the parsed document."""
    for n, part in enumerate(parts):
        if isinstance(data, dict) and isinstance(part, str) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return n
    return len(parts)


def check_problems(
    err: ConfigError, source: str, data: dict[str, Any] | None, text: str | None = None
) -> list[tuple[list[str | int], str]]:
    """Every problem: one line, `source: `, then a syntax position or a key path into `data`
    (or a known key left to its default), then a message saying what was expected."""
    assert err.problems and str(err) == "\n".join(err.problems)
    located: list[tuple[list[str | int], str]] = []
    for problem in err.problems:
        assert "\n" not in problem and "\r" not in problem, problem
        assert problem.startswith(source + ": "), problem
        rest = problem[len(source) + 2 :]
        syntax = _SYNTAX.fullmatch(rest)
        if syntax is not None:
            assert data is None, problem  # a parsed document has no syntax errors
            if text is not None and syntax.group("line"):
                assert 1 <= int(syntax.group("line")) <= text.count("\n") + 1, problem
            continue
        assert data is not None, problem
        if rest.startswith("(top level): "):
            parts, message = [], rest[len("(top level): ") :]
        else:
            parts, message = _parse_path(rest)
        found = _walk(data, parts)
        if message.startswith("unknown key"):
            assert found == len(parts), problem
            assert parts[-1] not in _allowed_from(message), problem
        elif message.startswith("missing"):
            assert found < len(parts), problem  # really missing
        else:
            # A key not in the file is one left to its default, named by its real name.
            assert all(p in _KNOWN_KEYS for p in parts[found:]), problem
        assert "expected" in message or _SELF_EXPLAINING.match(message), problem
        located.append((parts, message))
    return located


def _allowed_from(message: str) -> list[str]:
    m = re.search(r"\(expected one of: (.*)\)$", message)
    return m.group(1).split(", ") if m else []


# --------------------------------------------------------------------------------------------
# Values: junk of every TOML type, and good values per key

_CHARS = st.characters(blacklist_categories=("Cs",))
_TEXT = st.text(_CHARS, max_size=12)
_SPECIAL = st.sampled_from(
    [
        "",
        " ",
        "0",
        "-1s",
        "2s",
        "1h30m",
        "5M",
        "soon",
        "nan",
        "inf",
        "+15555550123",
        "+1 (555) 555-0123",
        "555",
        "front-desk",
        "archive",
        "route 1",
        "route 2",
        "*",
        "+1555*",
        "[",
        "(",
        "0.0.0.0:8443",
        "[::1]:0",
        "127.0.0.1:9310",
        "host:99999",
        "volt_id_rsa.pub",
        "tls/cert.pem",
        "tls/key.pem",
        "missing.pub",
        "plugins",
        "/",
        "inbound",
        "OUTBOUND",
        "file",
        "rsa-pss-sha256",
        "hex",
        "${env:VOLTD_FUZZ_UNSET}",
        "${file:secret.txt}",
        "x${file:secret.txt}",
        "${file:no-such-secret}",
        "${vault:x}",
        "${env:}",
        "abc${",
        "$${literal}",
        "{date}",
        "{nope}",
        "é✓ü",
        "\t\n",
    ]
)
_TZ = st.sampled_from(
    [
        None,
        dt.UTC,
        dt.timezone(dt.timedelta(hours=5, minutes=30)),
        dt.timezone(-dt.timedelta(hours=7)),
    ]
)
_SCALAR_JUNK = st.one_of(
    st.booleans(),
    st.integers(),
    st.sampled_from([2**63, -(2**63) - 1, 10**100, -(10**300), 0, -1, 65536]),
    st.floats(),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308]),
    st.dates(),
    st.times(),
    st.datetimes(timezones=_TZ),
    _SPECIAL,
    _TEXT,
)
_JUNK_KEYS = st.one_of(
    st.sampled_from(sorted(_KNOWN_KEYS)),
    st.sampled_from(["numbr", "Type", "sink", "a.b", "", " ", "routes[0]", "list[str]", "str"]),
    _TEXT,
)
JUNK = st.recursive(
    _SCALAR_JUNK,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(_JUNK_KEYS, inner, max_size=3)
    ),
    max_leaves=8,
)

# Numbers as written -> E.164, the expectation written down here rather than computed.
NUMBERS = {
    "+1 (555) 555-0123": "+15555550123",
    "+1.555.555.0145": "+15555550145",
    "+15555550199": "+15555550199",
    "+44 20 7946 0958": "+442079460958",
    "+49 30 1234567": "+49301234567",
}
NUMBER_GLOBS = {"+1555*": "+1555*", "+1 555-555-01[0-4]*": "+155555501[0-4]*", "+44*": "+44*"}
UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


_DURATION_PARTS = {
    positive: st.lists(
        st.tuples(st.integers(int(positive), 10_000), st.sampled_from(list(UNITS))),
        min_size=1,
        max_size=3,
    )
    for positive in (False, True)
}
_DURATION_STYLE = st.sampled_from(["text", "text", "int", "float"])
_SEP = st.sampled_from(["", " "])


@st.composite
def durations(draw: st.DrawFn, positive: bool = True) -> tuple[str | int | float, float]:
    """A duration as the file writes it, and its seconds computed here."""
    parts = draw(_DURATION_PARTS[positive])
    style = draw(_DURATION_STYLE)
    if style == "int":
        n = parts[0][0]
        return n, float(n)
    if style == "float":
        x = parts[0][0] / 4
        return x, x
    return draw(_SEP).join(f"{n}{u}" for n, u in parts), sum(n * UNITS[u] for n, u in parts)


_PORTS = st.integers(10_000, 30_000)  # never the default admin port 9310
_BIND = st.one_of(
    st.builds("127.0.0.1:{}".format, _PORTS),
    st.builds("[::1]:{}".format, _PORTS),
    st.builds("localhost:{}".format, _PORTS),
    st.just("0.0.0.0:0"),
)
_SINK_NAMES = ("archive", "ops-mail", "a.b", "slack front", "ünï", "x", "mail_2")
_NUMBER_NAMES = ("front-desk", "sales", "a b", "ünï")
_RE_POOL = ["(?i)stop", "^URGENT", "x+", "", "a|b", "[0-9]{3}"]


def _one_or_many(value: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(value, st.lists(value, min_size=1, max_size=3))


# Plain values: "${" starts a secret reference and "$${" is its escape, checked elsewhere.
_PLAIN = _TEXT.filter(lambda t: "${" not in t)
_MATCH_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "direction": _one_or_many(st.sampled_from(["inbound", "outbound", "Inbound", "OUTBOUND"])),
    "error_code": _one_or_many(st.one_of(st.integers(-(10**6), 10**6), _PLAIN)),
    "text": _one_or_many(st.one_of(st.sampled_from(_RE_POOL), _TEXT.map(re.escape))),
    "other": _one_or_many(
        st.one_of(_PLAIN, st.sampled_from(["failed", "Message.*", "SMS", "T-Mobile*"]))
    ),
}
_NUMBER_VALUES = {
    names: _one_or_many(st.sampled_from([*NUMBERS, *NUMBER_GLOBS, *names]))
    for size in range(len(_NUMBER_NAMES) + 1)
    for names in itertools.combinations(sorted(_NUMBER_NAMES), size)
}
_MATCH_KEY_LISTS = {
    n: st.lists(st.sampled_from(config.MATCH_KEYS), min_size=n, max_size=4) for n in (0, 1)
}


@st.composite
def match_tables(draw: st.DrawFn, names: tuple[str, ...], min_size: int = 0) -> dict[str, Any]:
    """A valid match/exclude table over real keys (values valid for their key)."""
    table: dict[str, Any] = {}
    for key in dict.fromkeys(draw(_MATCH_KEY_LISTS[min_size])):
        if key in config.NUMBER_KEYS:
            table[key] = draw(_NUMBER_VALUES[names])
        else:
            table[key] = draw(_MATCH_VALUES.get(key, _MATCH_VALUES["other"]))
    return table


_SAFE_OPTION = st.recursive(
    st.one_of(
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False),
        _TEXT.filter(lambda t: "${" not in t),
        st.sampled_from(["$${literal}", "${file:secret.txt}", "{date}"]),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=2), st.dictionaries(_TEXT, inner, max_size=2)),
    max_leaves=3,
)
_FLAGS = st.lists(st.booleans(), min_size=16, max_size=16)
_PLUGIN_DIRS = st.sampled_from(["plugins", ["plugins"], []])
_SERVER_BIND = _one_or_many(_BIND)
_SERVER_PATH = st.sampled_from(["/webhooks", "/hooks/volt", "/a-b_c/é"])
_BODY_BYTES = st.integers(1, 2**62)
_ADMIN_BIND = st.one_of(st.just(""), st.builds("127.0.0.1:{}".format, st.integers(30_001, 65_535)))
_PUBLIC_KEYS = st.sampled_from(["volt_id_rsa.pub", ["volt_id_rsa.pub"]])
_HEADER = st.from_regex(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,20}", fullmatch=True)
_ALGORITHM = st.sampled_from(list(config.ALGORITHMS))
_ENCODING = st.sampled_from(list(config.ENCODINGS))
_INITIAL = st.sampled_from(["100ms", "2s", 1, 0.5])
_MAX_DELAY = st.sampled_from(["1h", "10m", 3600, "1d 2h"])
_NAMES = st.lists(st.sampled_from(_NUMBER_NAMES), unique=True).map(lambda n: tuple(sorted(n)))
_NUMBER = st.sampled_from(list(NUMBERS))
_SINK_TYPE = st.sampled_from(["file", "slack", "email", "custom"])
_SINK_OPTIONS = st.dictionaries(
    st.sampled_from(["path", "to", "fsync", "opt"]), _SAFE_OPTION, max_size=2
)
_ROUTE_COUNT = st.integers(0, 4)
_SINK_PICKS = st.lists(st.integers(0, 3), min_size=1, max_size=4)
_SINK_POOL = st.lists(st.sampled_from(_SINK_NAMES), min_size=1, max_size=4, unique=True)


@st.composite
def valid_docs(draw: st.DrawFn) -> dict[str, Any]:
    """A document that must load: every cross-key rule (TLS pair, ports, retry order, names,
    references to sinks and numbers) holds by construction."""
    flag = iter(draw(_FLAGS)).__next__
    doc: dict[str, Any] = {}
    if flag():
        doc["plugin_dirs"] = draw(_PLUGIN_DIRS)
    server: dict[str, Any] = {}
    if flag():
        server["bind"] = draw(_SERVER_BIND)
    if flag():
        server["path"] = draw(_SERVER_PATH)
    if flag():
        server["certfile"], server["keyfile"] = "tls/cert.pem", "tls/key.pem"
    if flag():
        server["max_body_bytes"] = draw(_BODY_BYTES)
    if flag():
        server["answer_probes"] = flag()
    if server or flag():
        doc["server"] = server
    if flag():
        doc["admin"] = {"bind": draw(_ADMIN_BIND)}
    verify: dict[str, Any] = {"public_keys": draw(_PUBLIC_KEYS)}
    if flag():
        verify["header"] = draw(_HEADER)
    if flag():
        verify["algorithm"] = draw(_ALGORITHM)
    if flag():
        verify["encoding"] = draw(_ENCODING)
    if flag():
        verify["max_age"] = draw(durations(positive=False))[0]
    doc["verify"] = verify
    if flag():
        doc["spool"] = {"path": "state/spool.db", "retention": draw(durations())[0]}
    if flag():
        doc["retry"] = {
            "initial": draw(_INITIAL),
            "max_delay": draw(_MAX_DELAY),
            "give_up_after": draw(durations())[0],
        }
    names = draw(_NAMES)
    if names:
        doc["numbers"] = {n: draw(_NUMBER) for n in names}
    sink_names = draw(_SINK_POOL)
    doc["sinks"] = {name: {"type": draw(_SINK_TYPE), **draw(_SINK_OPTIONS)} for name in sink_names}
    routes = []
    for i in range(draw(_ROUTE_COUNT)):
        flag = iter(draw(_FLAGS)).__next__
        route: dict[str, Any] = {}
        if flag():
            route["name"] = f"r{i}-" + draw(_PLAIN)
        if flag():
            route["match"] = draw(match_tables(names))
        if flag():
            route["exclude"] = draw(match_tables(names, min_size=1))
        chosen = [sink_names[k % len(sink_names)] for k in draw(_SINK_PICKS)]
        route["sinks"] = chosen[0] if len(chosen) == 1 and flag() else chosen
        if flag():
            route["final"] = flag()
        routes.append(route)
    if routes:
        doc["routes"] = routes
    if flag():
        doc["defaults"] = {"unmatched": sink_names[draw(_SINK_PICKS)[0] % len(sink_names)]}
    order = draw(st.permutations(list(doc)))
    return {k: doc[k] for k in order}


def _locations(value: Any, loc: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path in a document, containers included."""
    out = [loc]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _locations(v, (*loc, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _locations(v, (*loc, i))
    return out


@st.composite
def broken_docs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid document with a few mutations at any level: junk of another type, a key
    removed, an unknown key added, a value wrapped in a table or array, an item repeated."""
    doc = copy.deepcopy(draw(valid_docs()))
    for _ in range(draw(st.integers(1, 4))):
        loc = draw(st.sampled_from(_locations(doc)))
        parent: Any = doc
        for part in loc[:-1]:
            parent = parent[part]
        target = parent[loc[-1]] if loc else doc
        op = draw(st.sampled_from(["junk", "delete", "unknown", "wrap", "repeat"]))
        if op == "unknown" and isinstance(target, dict):
            target[draw(_JUNK_KEYS)] = draw(JUNK)
        elif op == "repeat" and isinstance(target, list) and target:
            target.append(copy.deepcopy(draw(st.sampled_from(target))))
        elif not loc:
            doc[draw(_JUNK_KEYS)] = draw(JUNK)
        elif op == "delete":
            del parent[loc[-1]]
        elif op == "wrap":
            parent[loc[-1]] = draw(st.sampled_from([[target], {"x": target}, [target, 1]]))
        else:
            parent[loc[-1]] = draw(JUNK)
    return doc


# --------------------------------------------------------------------------------------------
# Properties: files that are not TOML


@examples(100)
@given(st.binary(max_size=300))
def test_random_bytes_are_a_config_error(raw: bytes) -> None:
    source, cfg, err = _load(raw)
    if err is not None:
        text = raw.decode("utf-8", "replace")
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError):
            data = None
        check_problems(err, source, data, text)
    else:
        assert isinstance(cfg, Config)


_SOUP_LINES = st.one_of(
    st.sampled_from(
        [
            "[server]",
            "[admin]",
            "[verify]",
            "[[routes]]",
            "[sinks.a]",
            '[sinks."a b"]',
            "[routes.match]",
            "[numbers]",
            "[defaults]",
            "[retry]",
            "",
            "# comment",
            "[[sinks]]",
            'public_keys = ["volt_id_rsa.pub"]',
            'type = "file"',
            'sinks = ["a"]',
            'match.number = "+1555*"',
            "match = { status = 'failed' }",
            "final = true",
        ]
    ),
    st.builds(
        "{} = {}".format,
        st.sampled_from(sorted(_KNOWN_KEYS)),
        st.one_of(
            st.sampled_from(
                [
                    "1",
                    "-0",
                    "1_000",
                    "0x1F",
                    "1e400",
                    "nan",
                    "-inf",
                    "true",
                    "1979-05-27",
                    "07:32:00",
                    "1979-05-27T07:32:00Z",
                    "[1, 'a', [2]]",
                    "{a = 1}",
                    "{}",
                    "[]",
                    "'lit'",
                    '"\\u00e9"',
                    '"""multi\nline"""',
                    "'",
                    '"',
                    "[",
                    "{",
                    "1979-02-30",
                ]
            ),
            JUNK.map(toml_value),
        ),
    ),
    _TEXT,
)


@examples(100)
@given(st.lists(_SOUP_LINES, max_size=12), st.sampled_from(["\n", "\r\n"]))
def test_toml_soup_is_a_config_or_a_config_error(lines: list[str], newline: str) -> None:
    text = newline.join(lines) + newline
    source, cfg, err = _load(text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        data = None
    if err is not None:
        check_problems(err, source, data, text)
    else:
        assert data is not None and isinstance(cfg, Config)


@examples(100)
@given(
    st.lists(st.text(_CHARS.filter(lambda c: c not in "\r\n"), max_size=20), max_size=8),
    st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82"]),
    st.data(),
)
def test_not_utf8_names_the_line_of_the_first_bad_byte(
    lines: list[str], bad: bytes, data: st.DataObject
) -> None:
    at = data.draw(st.integers(0, len(lines)), label="line index")
    cut = data.draw(st.integers(0, len(lines[at]) if at < len(lines) else 0), label="column")
    before = "\n".join(lines[:at] + ([lines[at][:cut]] if at < len(lines) else []))
    if at == len(lines) and lines:
        before += "\n"
    after = lines[at][cut:] if at < len(lines) else ""
    raw = before.encode() + bad + after.encode() + b"\n" + "\n".join(lines[at + 1 :]).encode()
    source, _, err = _load(raw)
    assert err is not None
    assert err.problems == [
        f"{source}: line {before.count(chr(10)) + 1}: invalid TOML: the file is not UTF-8 text"
    ]


# Lines that are wrong on their own, whatever comes before or after. An unterminated literal
# string is found only at the end of the file when no ' follows: then the line has no column.
_GARBAGE = ["= 1", "[unclosed", "key =", "x = 1 2", "[[]]", 'a = "\\q"', "a = 0x", "a = 1979-02-30",
            "a = {b = 1", "a.b = 1 = 2", "[a] b", "?", "a = 'x"]  # fmt: skip


@examples(100)
@given(valid_docs(), st.sampled_from(_GARBAGE), st.data())
def test_syntax_error_names_its_line(
    doc: dict[str, Any], garbage: str, data: st.DataObject
) -> None:
    lines = toml_dumps(doc).rstrip("\n").split("\n")  # not splitlines: \x85 is in values
    at = data.draw(st.integers(0, len(lines)), label="insert before line index")
    text = "\n".join([*lines[:at], garbage, *lines[at:]]) + "\n"
    source, _, err = _load(text)
    assert err is not None
    [problem] = err.problems
    m = re.fullmatch(
        re.escape(source) + r": line (\d+)(?:, column (\d+))?: invalid TOML: \S.*", problem
    )
    assert m is not None, problem
    assert int(m.group(1)) == at + 1, problem
    if m.group(2) is None:
        assert garbage == "a = 'x" and problem.endswith("(unfinished at the end of the file)")
    else:
        assert 1 <= int(m.group(2)) <= len(garbage) + 1, problem


# --------------------------------------------------------------------------------------------
# Properties: structurally generated documents


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _expected_condition(key: str, value: Any, numbers: dict[str, str]) -> str:
    """The normalized form DESIGN describes for one match value."""
    if key in config.NUMBER_KEYS:
        if value in numbers:
            return NUMBERS[numbers[value]]
        return NUMBERS.get(value) or NUMBER_GLOBS[value]
    if isinstance(value, int):
        return str(value)
    if key == "text":
        return value
    return value.strip().lower() if key == "direction" else value.lower()


@examples(100)
@given(valid_docs())
def test_valid_documents_load_with_the_values_written(doc: dict[str, Any]) -> None:
    text = toml_dumps(doc)
    source, cfg, err = _load(text)
    assert err is None, "\n".join(err.problems) + "\n---\n" + text
    assert isinstance(cfg, Config)
    numbers = doc.get("numbers", {})
    assert cfg.numbers == {name: NUMBERS[written] for name, written in numbers.items()}
    assert list(cfg.sinks) == list(doc["sinks"])
    for name, table in doc["sinks"].items():
        assert cfg.sinks[name].type == table["type"]
        options = {k: v for k, v in table.items() if k != "type"}
        for key, value in options.items():
            if value == "${file:secret.txt}":
                assert cfg.sinks[name].options[key] == SECRET
                assert cfg.is_secret("sinks", name, key)
            elif value == "$${literal}":
                assert cfg.sinks[name].options[key] == "${literal}"
    routes = doc.get("routes", [])
    assert len(cfg.routes) == len(routes)
    for i, (got, route) in enumerate(zip(cfg.routes, routes, strict=True)):
        assert got.name == route.get("name", f"route {i + 1}")
        assert got.sinks == list(dict.fromkeys(_as_list(route["sinks"])))
        assert got.final is route.get("final", False)
        for key in ("match", "exclude"):
            table = route.get(key)
            spec = getattr(got, key)
            if table is None:
                assert spec is None if key == "exclude" else len(spec) == 0
                continue
            assert spec is not None and list(spec) == list(table)
            for k, values in table.items():
                expected = tuple(_expected_condition(k, v, numbers) for v in _as_list(values))
                assert spec[k] == expected, (k, values)
    assert cfg.defaults.unmatched == doc.get("defaults", {}).get("unmatched")
    retention = cfg.spool.retention
    if "max_age" not in doc["verify"]:
        assert cfg.verify.max_age == retention
    if "max_body_bytes" in doc.get("server", {}):
        assert cfg.server.max_body_bytes == doc["server"]["max_body_bytes"]
    assert cfg.server.https == ("certfile" in doc.get("server", {}))
    assert cfg.source_name == source


@examples(100)
@given(st.data())
def test_durations_in_the_file_are_the_seconds_written(data: st.DataObject) -> None:
    written = {key: data.draw(durations(), label=key) for key in ("initial", "give_up_after")}
    max_delay = data.draw(durations(), label="max_delay")
    assume(written["initial"][1] <= max_delay[1])
    max_age = data.draw(durations(positive=False), label="max_age")
    retention = data.draw(durations(), label="retention")
    doc = {
        "verify": {"public_keys": "volt_id_rsa.pub", "max_age": max_age[0]},
        "spool": {"retention": retention[0]},
        "retry": {"max_delay": max_delay[0], **{k: v[0] for k, v in written.items()}},
    }
    _, cfg, err = _load(toml_dumps(doc))
    assert err is None and cfg is not None, err
    assert math.isclose(cfg.retry.initial, written["initial"][1])
    assert math.isclose(cfg.retry.give_up_after, written["give_up_after"][1])
    assert math.isclose(cfg.retry.max_delay, max_delay[1])
    assert math.isclose(cfg.verify.max_age, max_age[1])
    assert math.isclose(cfg.spool.retention, retention[1])


@examples(100)
@given(broken_docs())
def test_broken_documents_are_config_errors_naming_key_and_expectation(
    doc: dict[str, Any],
) -> None:
    text = toml_dumps(doc)
    source, cfg, err = _load(text)
    if err is None:
        assert isinstance(cfg, Config)  # some mutations leave a valid file
        return
    check_problems(err, source, tomllib.loads(text), text)
    assert SECRET not in str(err)


@examples(100)
@given(
    st.dictionaries(
        st.sampled_from(list(config._TOP_KEYS)),
        st.one_of(
            JUNK,
            st.dictionaries(_JUNK_KEYS, JUNK, max_size=4),
            st.lists(st.dictionaries(_JUNK_KEYS, JUNK, max_size=4), max_size=3),
        ),
        max_size=6,
    )
)
def test_any_structure_over_real_keys_is_a_config_or_a_config_error(doc: dict[str, Any]) -> None:
    text = toml_dumps(doc)
    source, cfg, err = _load(text)
    if err is not None:
        check_problems(err, source, tomllib.loads(text), text)
        assert SECRET not in str(err)
    else:
        assert isinstance(cfg, Config)


# --------------------------------------------------------------------------------------------
# daemon.configure: sink options validated by the sink type, still only ConfigError

_FILE_PATHS = st.one_of(
    st.sampled_from(
        [
            "archive/{our_number}/{date}.jsonl",
            "x.jsonl",
            "",
            " ",
            "{nope}",
            "{",
            "}",
            "{date!r}",
            "{date:>10}",
            "{0}",
            "{}",
            "a/{id}{month}{hour}.log",
            "${file:secret.txt}",
        ]
    ),
    _TEXT,
    JUNK,
)


@examples(100)
@given(
    valid_docs(),
    st.lists(
        st.tuples(
            st.sampled_from(_SINK_NAMES),
            st.fixed_dictionaries(
                {"type": st.one_of(st.sampled_from(["file", "File", "nope", " file"]), _TEXT)},
                optional={
                    "path": _FILE_PATHS,
                    "fsync": st.one_of(st.booleans(), JUNK),
                    "pathh": JUNK,
                    "": JUNK,
                },
            ),
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_plugins_configure_is_sinks_or_a_config_error(
    doc: dict[str, Any], sinks: list[tuple[str, dict[str, Any]]]
) -> None:
    for name, table in sinks:
        doc["sinks"][name] = table
    text = toml_dumps(doc)
    source = _write(text)
    try:
        plan = daemon.configure(source)
        cfg, registry, built = plan.config, plan.registry, plan.sinks
    except ConfigError as err:
        located = check_problems(err, source, tomllib.loads(text), text)
        assert SECRET not in str(err)
        for parts, _ in located:
            assert parts[0] in ("sinks", "routes", "defaults"), err.problems
        return
    assert set(built) == set(cfg.sinks)
    assert all(cfg.sinks[name].type in registry.sink_types for name in built)


# --------------------------------------------------------------------------------------------
# parse_duration

_DURATION_GRAMMAR = re.compile(
    r"\s*(?:(?P<plain>[0-9]+(?:\.[0-9]+)?|\.[0-9]+)|(?:\s*(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)\s*"
    r"(?:ms|s|m|h|d))+)\s*"
)
_DURATION_TERM = re.compile(r"([0-9]+(?:\.[0-9]+)?|\.[0-9]+)\s*(ms|s|m|h|d)")


def _reference_duration(value: Any) -> float | None:
    """What DESIGN §4 says a duration is, written independently: None when it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    if isinstance(value, str):
        m = _DURATION_GRAMMAR.fullmatch(value)
        if m is None or not value.strip():
            return None
        if m.group("plain") is not None:
            seconds = float(m.group("plain"))
        else:
            seconds = sum(float(n) * UNITS[u] for n, u in _DURATION_TERM.findall(value))
    else:
        try:
            seconds = float(value)
        except OverflowError:
            return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


_DURATION_LIKE = st.one_of(
    st.text(max_size=12),
    st.from_regex(r"\s?-?[0-9]{0,4}(\.[0-9]{0,3})?\s?(ms|s|m|h|d|M|w|us|)\s?", fullmatch=True),
    st.lists(
        st.tuples(st.from_regex(r"[0-9]{1,400}(\.[0-9]{1,3})?|\.[0-9]", fullmatch=True),
                  st.sampled_from([*UNITS, "S", "x", ""]), st.sampled_from(["", " ", "\t"])),
        min_size=1, max_size=4,
    ).map(lambda parts: "".join(f"{n}{sp}{u}{sp}" for n, u, sp in parts)),
)  # fmt: skip


@examples(200)
@given(
    st.one_of(
        _DURATION_LIKE,
        st.integers(),
        st.sampled_from([10**400, -(10**400), True, False, None, [], {}, b"2s"]),
        st.floats(),
    )
)
def test_parse_duration_agrees_with_the_documented_grammar(value: Any) -> None:
    expected = _reference_duration(value)
    try:
        seconds = parse_duration(value)
    except ValueError as e:
        assert str(e) == DURATION_EXPECTED
        assert expected is None, (value, expected)
        return
    assert type(seconds) is float and math.isfinite(seconds) and seconds >= 0
    assert expected is not None and math.isclose(seconds, expected, rel_tol=1e-12), value


@examples(200)
@given(
    st.one_of(st.integers(0, 10**9), st.decimals(0, 10**6, places=3).map(str)),
    st.sampled_from(list(UNITS)),
    st.sampled_from(["", " ", "  "]),
    st.sampled_from(["", " ", "\n"]),
)
def test_duration_round_trips_n_units(n: int | str, unit: str, gap: str, pad: str) -> None:
    seconds = parse_duration(f"{pad}{n}{gap}{unit}{pad}")
    assert math.isclose(seconds, float(n) * UNITS[unit], rel_tol=1e-12)


@examples(200)
@given(st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(list(UNITS))), min_size=1,
                max_size=5), st.sampled_from(["", " "]))  # fmt: skip
def test_duration_parts_add_up(parts: list[tuple[int, str]], sep: str) -> None:
    text = sep.join(f"{n}{u}" for n, u in parts)
    assert math.isclose(parse_duration(text), sum(n * UNITS[u] for n, u in parts), rel_tol=1e-12)


@examples(200)
@given(
    st.floats(0, 1e12, allow_nan=False), st.floats(0, 1e12, allow_nan=False),
    st.sampled_from(list(UNITS)),
)  # fmt: skip
def test_duration_is_monotonic_in_the_number(a: float, b: float, unit: str) -> None:
    low, high = sorted((a, b))
    text_low, text_high = f"{low:.6f}{unit}", f"{high:.6f}{unit}"
    assert parse_duration(text_low) <= parse_duration(text_high)
    assert parse_duration(low) <= parse_duration(high)


@examples(200)
@given(
    st.one_of(
        st.builds("-{}{}".format, st.integers(0, 999), st.sampled_from([*UNITS, ""])),
        st.sampled_from(["", " ", "\t", "nan", "inf", "-inf", "NaN", "1e3", "1E3", "0x10", "1_000",
                         "1,5s", "1.s", "1h30", "s", "ms", "5 minutes", "\u0663s", "\uff11s"]),
        st.builds("{}{}".format, st.integers(0, 999),
                  st.text(st.characters(categories=("Lu", "Ll")), min_size=1, max_size=3).filter(
                      lambda u: u not in UNITS)),
        st.sampled_from([math.nan, math.inf, -math.inf, -1, -0.5, -(10**30), True, False]),
    )
)  # fmt: skip
def test_duration_rejects_negatives_nan_inf_empty_and_unknown_units(value: Any) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert str(info.value) == DURATION_EXPECTED


# --------------------------------------------------------------------------------------------
# normalize_number

_E164 = re.compile(r"\+[1-9][0-9]{2,14}")  # at most 15 digits


@examples(200)
@given(
    st.one_of(
        st.text(max_size=30),
        st.from_regex(r"\s?\+?[0-9 ()\-.+]{0,30}\s?", fullmatch=True),
        st.sampled_from([None, 15555550123, b"+15555550123", ["+15555550123"], 1.5]),
    )
)
def test_normalize_number_is_e164_or_the_documented_error(text: Any) -> None:
    try:
        result = normalize_number(text)
    except ValueError as e:
        assert str(e) == NUMBER_EXPECTED
        return
    assert isinstance(text, str) and text.strip().startswith("+")
    assert _E164.fullmatch(result), (text, result)
    assert normalize_number(result) == result  # idempotent
    # Formatting is dropped (and at most a trunk prefix like 0), never a digit made up.
    digits = iter(c for c in text if c.isdigit())
    assert all(d in digits for d in result[1:]), (text, result)


@st.composite
def formatted(draw: st.DrawFn, digits: str) -> str:
    """The same number written with spaces, dots, dashes or one pair of parentheses."""
    out, i = [], 0
    cuts = sorted(draw(st.sets(st.integers(1, len(digits) - 1), max_size=4)))
    groups = [digits[a:b] for a, b in zip([0, *cuts], [*cuts, len(digits)], strict=True)]
    paren = draw(st.one_of(st.none(), st.integers(1, max(1, len(groups) - 1))))
    for i, group in enumerate(groups):
        if i:
            out.append(draw(st.sampled_from([" ", "-", ".", ""])))
        out.append(f"({group})" if paren == i and i < len(groups) - 1 else group)
    pad = draw(st.sampled_from(["", " ", "  "]))
    return f"{pad}+{''.join(out)}{pad}"


@examples(150)
@given(
    st.sampled_from(
        ["15555550123", "442079460958", "49301234567", "33142685300", "61291234567",
         "81312345678", "5511912345678", "12125550100", "4915112345678"]
    ) | st.from_regex(r"1[2-9][0-9]{2}[2-9][0-9]{6}", fullmatch=True),
    st.data(),
)  # fmt: skip
def test_formatting_does_not_change_the_number(digits: str, data: st.DataObject) -> None:
    compact = normalize_number("+" + digits)
    assert compact == "+" + digits
    variant = data.draw(formatted(digits), label="variant")
    assert normalize_number(variant) == compact, variant


@examples(200)
@given(
    st.one_of(
        st.from_regex(r"[0-9 ()\-.]{1,20}", fullmatch=True),  # no +
        st.from_regex(r"\+[0-9 ]{5,15}[A-Za-z#*,;x][0-9]{0,4}", fullmatch=True),  # letters, ext
        st.from_regex(r"\+[0-9]{3,12}\+[0-9]{1,5}", fullmatch=True),  # a second +
        st.from_regex(r"\+1 {35,40}5555550123", fullmatch=True),  # longer than 40
    )
)
def test_normalize_number_rejects_what_is_not_an_international_number(text: str) -> None:
    with pytest.raises(ValueError) as info:
        normalize_number(text)
    assert str(info.value) == NUMBER_EXPECTED


# --------------------------------------------------------------------------------------------
# Bugs the properties found: each a minimal case


def _problems_or_crash(text: str) -> tuple[str, list[str]]:
    source = _write(text)
    try:
        config.load(source)
    except ConfigError as e:
        return source, e.problems
    raise AssertionError("expected a ConfigError")


_MINIMAL = '[verify]\npublic_keys = ["volt_id_rsa.pub"]\n[sinks.a]\ntype = "file"\n'


def test_nul_in_certfile_is_a_config_error() -> None:
    source, found = _problems_or_crash(
        '[server]\ncertfile = "tls/cert\\u0000.pem"\nkeyfile = "tls/key.pem"\n' + _MINIMAL
    )
    assert found and found[0].startswith(f"{source}: server.certfile: ")


def test_nul_in_file_secret_is_a_config_error() -> None:
    source, found = _problems_or_crash(_MINIMAL + 'x = "${file:a\\u0000b}"\n')
    assert found == [f"{source}: sinks.a.x: " + found[0].split(": ", 2)[2]]
    assert "secret" in found[0]


def test_nul_in_public_key_path_says_what_was_expected() -> None:
    source, found = _problems_or_crash(
        '[verify]\npublic_keys = ["volt_id_rsa\\u0000.pub"]\n[sinks.a]\ntype = "file"\n'
    )
    assert len(found) == 1 and found[0].startswith(f"{source}: verify.public_keys[0]: ")
    assert "embedded null byte" not in found[0]
    assert "cannot read" in found[0] or "expected" in found[0]


def test_nul_in_spool_path_is_refused() -> None:
    source, found = _problems_or_crash('[spool]\npath = "state\\u0000.db"\n' + _MINIMAL)
    assert found == [
        f"{source}: spool.path: expected a path without NUL characters, got 'state\\x00.db'"
    ]


def test_nul_in_key_file_path_is_a_key_load_error() -> None:
    with pytest.raises(KeyLoadError) as info:
        load_public_key_file(_material() / "volt_id_rsa\0.pub")
    assert str(info.value) == "cannot read: the path contains a NUL character"


def test_huge_integer_literal_is_a_config_error() -> None:
    source, found = _problems_or_crash("x = 1\ny = " + "9" * 5000 + "\n" + _MINIMAL)
    assert found and found[0].startswith(f"{source}: line 2")


_HUGE_HEX = "0x" + "f" * 4000  # an int tomllib reads, too long for str() (no decimal limit)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"admin = {_HUGE_HEX}\n" + _MINIMAL,
         "admin: expected a table, got an integer (too many digits to show)"),
        (f"[retry]\ninitial = {_HUGE_HEX}\n" + _MINIMAL,
         "retry.initial: expected a duration like 200ms, 2s, 5m, 1h or 7d, got an integer "
         "(too many digits to show)"),
        (_MINIMAL + f'[[routes]]\nmatch = {{ error_code = [{_HUGE_HEX}] }}\nsinks = "a"\n',
         "routes[0].match.error_code: expected an error code like 702 (this integer has too "
         "many digits)"),
    ],
    ids=["got", "duration", "error-code"],
)  # fmt: skip
def test_integer_too_long_to_print_is_a_config_error(text: str, expected: str) -> None:
    source, found = _problems_or_crash(text)
    assert found == [f"{source}: {expected}"]


def test_unterminated_string_names_its_line() -> None:
    source, found = _problems_or_crash("[server]\npath = '/hooks\n" + _MINIMAL)
    assert found and found[0].startswith(f"{source}: line 2"), found


@pytest.mark.parametrize(
    "text",
    [
        _MINIMAL + '[[routes]]\nname = "${file:secret.txt}"\nsinks = "a"\n'
        '[[routes]]\nname = "${file:secret.txt}"\nsinks = "a"\n',
        '[verify]\npublic_keys = ["${file:secret.txt}"]\n[sinks.a]\ntype = "file"\n',
        '[server]\ncertfile = "${file:secret.txt}"\nkeyfile = "tls/key.pem"\n' + _MINIMAL,
    ],
    ids=["route-name", "public-key-path", "certfile"],
)
def test_secret_values_never_appear_in_problems(text: str) -> None:
    _, found = _problems_or_crash(text)
    assert SECRET not in "\n".join(found)


def test_secret_bind_and_delay_are_not_shown_by_cross_checks() -> None:
    (_material() / "bind.txt").write_text("127.0.0.1:19999\n", encoding="utf-8")
    (_material() / "delay.txt").write_text("2h\n", encoding="utf-8")
    source, found = _problems_or_crash(
        '[server]\nbind = "127.0.0.1:19999"\n[admin]\nbind = "${file:bind.txt}"\n'
        '[retry]\ninitial = "${file:delay.txt}"\n' + _MINIMAL
    )
    hidden = "(value hidden: it comes from a secret)"
    assert found == [
        f"{source}: admin.bind: this address {hidden} is also in server.bind; "
        "expected another port",
        f"{source}: retry.initial: the first retry delay {hidden} is longer than "
        "retry.max_delay (3600s); expected initial <= max_delay",
    ]


def test_automatic_route_name_clash_points_at_a_key_in_the_file() -> None:
    text = _MINIMAL + '[[routes]]\nname = "route 2"\nsinks = "a"\n[[routes]]\nsinks = "a"\n'
    source, found = _problems_or_crash(text)
    [problem] = found
    parts, _ = _parse_path(problem[len(source) + 2 :])
    assert _walk(tomllib.loads(text), parts) == len(parts), problem
    assert problem == (
        f"{source}: routes[0].name: route name 'route 2' is also the automatic name of "
        "routes[1], which has no name; expected another name"
    )


def test_sink_option_problem_quotes_a_dotted_sink_name() -> None:
    source = _write('[verify]\npublic_keys = ["volt_id_rsa.pub"]\n[sinks."a.b"]\ntype = "file"\n')
    with pytest.raises(ConfigError) as info:
        daemon.configure(source)
    assert info.value.problems == [f'{source}: sinks."a.b".path: missing; this key is required']


def test_error_code_item_of_wrong_type_says_integers_are_fine_too() -> None:
    source, found = _problems_or_crash(
        _MINIMAL + '[[routes]]\nmatch = { error_code = [702, 1.5] }\nsinks = "a"\n'
    )
    assert found == [
        f"{source}: routes[0].match.error_code[1]: expected a string (or integer), got a float "
        "(1.5)"
    ]


def test_file_sink_template_with_lone_brace_says_what_was_expected() -> None:
    source = _write(_MINIMAL + 'path = "archive/date}.jsonl"\n')
    with pytest.raises(ConfigError) as info:
        daemon.configure(source)
    [problem] = info.value.problems
    assert problem.startswith(f"{source}: sinks.a.path: ") and "expected" in problem, problem


def test_paths_in_problems_stay_on_one_line() -> None:
    _, found = _problems_or_crash('plugin_dirs = ["a\\nb"]\n' + _MINIMAL)
    assert len(found) == 1 and "\n" not in found[0], found
