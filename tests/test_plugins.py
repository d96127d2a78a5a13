"""Plugin discovery, sink building and the first-party `file` sink.

Everything here is real: plugin files written to disk and imported, configs loaded with
`voltd.config.load`, and the file sink writing to real directories.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import voltd
from tests.helpers import make_event, session_material
from voltd.config import Config, ConfigError, load
from voltd.events import Event, as_json_line, parse
from voltd.plugins import Origin, Registry, build_sinks, discover

# --------------------------------------------------------------------------------------------
# Helpers


def plugin_source(
    type_name: str,
    *,
    cls: str = "AcmeSink",
    marker: str = "",
    after_register: str = "pass",
) -> str:
    """A complete single-file plugin providing one sink type."""
    return "\n".join(
        [
            "import voltd",
            "",
            f"class {cls}(voltd.Sink):",
            "    class Options(voltd.SinkOptions):",
            "        url: str",
            "        retries: int = 3",
            "",
            "    def __init__(self, options, context):",
            "        self.options = options",
            "        self.context = context",
            "",
            "    async def send(self, event):",
            "        pass",
            "",
            f"@voltd.hookimpl{marker}",
            "def register_sink_types(register):",
            f"    register({type_name!r}, {cls})",
            f"    {after_register}",
            "",
        ]
    )


def write_plugin(directory: Path, stem: str, source: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}.py"
    path.write_text(source, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def public_key() -> Path:
    """The session's public key (RSA key generation is slow); every config gets a copy."""
    return session_material() / "keys" / "volt_id_rsa.pub"


def write_config(directory: Path, public_key: Path, body: str, *, plugins: bool = False) -> Path:
    """A loadable config in `directory` whose `[sinks.*]` and `[[routes]]` are `body`."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(public_key, directory / "volt_id_rsa.pub")
    head = 'plugin_dirs = ["plugins"]\n' if plugins else ""
    head += '[verify]\npublic_keys = ["volt_id_rsa.pub"]\n\n'
    path = directory / "config.toml"
    path.write_text(head + textwrap.dedent(body), encoding="utf-8")
    return path


def load_with_plugins(path: Path) -> tuple[Config, Registry]:
    config = load(path)
    return config, discover(config.plugin_dirs)


def build_errors(config: Config, registry: Registry) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_sinks(config, registry)
    return info.value.problems


def files_under(root: Path) -> list[Path]:
    """Every regular file below `root`, sorted (a plain function: async tests call it)."""
    return sorted(p for p in root.rglob("*") if p.is_file())


def event(**kwargs: Any) -> Event:
    parsed = parse(make_event(**kwargs))
    assert isinstance(parsed, Event)
    return parsed


# --------------------------------------------------------------------------------------------
# Discovery: entry points


def test_first_party_file_sink_comes_from_the_entry_point_group() -> None:
    eps = importlib.metadata.entry_points(group="voltd")
    ours = [ep for ep in eps if ep.name == "file"]
    assert len(ours) == 1
    assert ours[0].value == "voltd_file"
    assert ours[0].dist is not None and ours[0].dist.name == "voltd"

    registry = discover()
    info = registry.sink_types["file"]
    assert info.origin == Origin("file", "voltd", importlib.metadata.version("voltd"))
    assert info.origin.path is None
    assert info.cls.__module__ == "voltd_file"
    assert info.cls.__name__ == "FileSink"
    assert registry.origins["file"] == info.origin
    assert registry.problems == []
    assert str(info.origin).startswith("plugin 'file' from voltd")


# --------------------------------------------------------------------------------------------
# Discovery: plugin_dirs


def test_third_party_sink_type_loads_and_builds(tmp_path: Path, public_key: Path) -> None:
    plugin = write_plugin(tmp_path / "plugins", "acme", plugin_source("acme"))
    path = write_config(
        tmp_path,
        public_key,
        """
        [sinks.alerts]
        type = "acme"
        url = "https://alerts.example/hook"
        """,
        plugins=True,
    )
    config, registry = load_with_plugins(path)
    assert registry.problems == []
    info = registry.sink_types["acme"]
    assert info.origin == Origin("acme", path=str(plugin))
    assert str(info.origin) == f"plugin 'acme' from {plugin}"
    assert set(registry.sink_types) == {
        "acme",
        "email",
        "file",
        "http",
        "slack",
    }  # the first-party ones are still there

    sinks = build_sinks(config, registry)
    sink: Any = sinks["alerts"]
    assert type(sink) is info.cls
    assert sink.options.url == "https://alerts.example/hook"
    assert sink.options.retries == 3
    assert sink.context.name == "alerts"
    assert sink.context.config_dir == tmp_path


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("raise RuntimeError('boom at import time')\n", "RuntimeError: boom at import time"),
        ("import voltd_no_such_module_anywhere\n", "ModuleNotFoundError"),
        ("def broken(:\n    pass\n", "SyntaxError"),
    ],
    ids=["raises", "missing-import", "syntax-error"],
)
def test_plugin_failing_to_import_is_reported_and_others_still_load(
    tmp_path: Path, source: str, error: str
) -> None:
    plugins = tmp_path / "plugins"
    bad = write_plugin(plugins, "a_broken", source)  # sorts first: loaded before the good one
    write_plugin(plugins, "b_good", plugin_source("acme"))
    registry = discover([plugins])

    assert set(registry.sink_types) == {"acme", "email", "file", "http", "slack"}
    assert len(registry.problems) == 1
    problem = registry.problems[0]
    assert problem.origin == Origin("a_broken", path=str(bad))
    assert "failed to import" in problem.message
    assert error in problem.message
    text = str(problem)
    assert "'a_broken'" in text and str(bad) in text
    assert "a_broken" not in registry.origins
    assert "voltd_plugin_a_broken" not in sys.modules  # no half-imported module left behind


def test_register_hook_that_raises_is_reported_and_does_not_stop_others(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    bad = write_plugin(
        plugins,
        "a_raises",
        plugin_source("half", after_register="raise ValueError('no settings found')"),
    )
    write_plugin(plugins, "b_good", plugin_source("acme"))
    registry = discover([plugins])

    assert "acme" in registry.sink_types
    assert len(registry.problems) == 1
    problem = registry.problems[0]
    assert problem.origin == Origin("a_raises", path=str(bad))
    assert "register_sink_types failed: ValueError: no settings found" in problem.message
    # The type it managed to register before failing is tied to the failure.
    assert problem.sink_types == ("half",)
    assert registry.problems_for("half") == [problem]
    assert registry.problems_for("acme") == []


def test_two_plugins_with_the_same_sink_type_first_is_kept(
    tmp_path: Path, public_key: Path
) -> None:
    plugins = tmp_path / "plugins"
    first = write_plugin(plugins, "a_first", plugin_source("dup", cls="First"))
    second = write_plugin(plugins, "b_second", plugin_source("dup", cls="Second"))
    path = write_config(
        tmp_path,
        public_key,
        """
        [sinks.d]
        type = "dup"
        url = "https://d.example/"
        """,
        plugins=True,
    )
    config, registry = load_with_plugins(path)

    info = registry.sink_types["dup"]
    assert info.origin.plugin == "a_first"
    assert info.cls.__name__ == "First"
    assert len(registry.problems) == 1
    problem = registry.problems[0]
    assert problem.origin.plugin == "b_second"  # reported against the one that is ignored
    text = str(problem)
    assert str(first) in text and str(second) in text
    assert "already provided" in text and "ignored" in text
    # The kept provider is healthy, so sinks of that type still build, with its class.
    sinks = build_sinks(config, registry)
    assert type(sinks["d"]).__name__ == "First"


@pytest.mark.parametrize("marker", ["", "(trylast=True)", "(tryfirst=True)"])
def test_third_party_plugin_cannot_take_over_the_file_sink(
    tmp_path: Path, public_key: Path, marker: str
) -> None:
    plugins = tmp_path / "plugins"
    evil = write_plugin(plugins, "evil", plugin_source("file", cls="Evil", marker=marker))
    path = write_config(
        tmp_path,
        public_key,
        """
        [sinks.archive]
        type = "file"
        path = "archive.jsonl"
        """,
        plugins=True,
    )
    config, registry = load_with_plugins(path)

    info = registry.sink_types["file"]
    assert info.origin.distribution == "voltd"
    assert info.cls.__module__ == "voltd_file"
    assert [p.origin for p in registry.problems] == [Origin("evil", path=str(evil))]
    message = registry.problems[0].message
    assert "'file'" in message and "already provided by plugin 'file' from voltd" in message
    # The first-party file sink is still usable.
    sinks = build_sinks(config, registry)
    assert type(sinks["archive"]).__module__ == "voltd_file"


@pytest.mark.parametrize(
    "body",
    [
        "class Bare:\n    async def send(self, event):\n        pass\n",
        "class Bare:\n    Options = dict\n    async def send(self, event):\n        pass\n",
        (
            "import pydantic\nclass Model(pydantic.BaseModel):\n    x: int = 1\n"
            "class Bare:\n    Options = Model()\n"
            "    async def send(self, event):\n        pass\n"
        ),
    ],
    ids=["no-options", "options-not-pydantic", "options-an-instance"],
)
def test_sink_class_without_an_options_model_is_rejected(tmp_path: Path, body: str) -> None:
    plugins = tmp_path / "plugins"
    source = (
        "import voltd\n"
        + body
        + "\n@voltd.hookimpl\ndef register_sink_types(register):\n    register('bare', Bare)\n"
    )
    path = write_plugin(plugins, "bare", source)
    write_plugin(plugins, "good", plugin_source("acme"))
    registry = discover([plugins])

    assert "bare" not in registry.sink_types
    assert "acme" in registry.sink_types
    assert len(registry.problems) == 1
    problem = registry.problems[0]
    assert problem.origin == Origin("bare", path=str(path))
    assert problem.message == (
        "sink type 'bare': class needs an `Options` pydantic model (subclass voltd.SinkOptions)"
    )
    assert problem.sink_types == ("bare",)


def test_sink_class_without_send_is_rejected(tmp_path: Path) -> None:
    source = plugin_source("nosend").replace("async def send(self, event)", "async def deliver(x)")
    write_plugin(tmp_path, "nosend", source)
    registry = discover([tmp_path])
    assert "nosend" not in registry.sink_types
    assert [p.message for p in registry.problems] == [
        "sink type 'nosend': class does not implement send"
    ]


def test_hook_with_a_wrong_signature_is_not_a_valid_plugin(tmp_path: Path) -> None:
    source = plugin_source("acme").replace(
        "def register_sink_types(register):", "def register_sink_types(register, extra):"
    )
    write_plugin(tmp_path, "wrongsig", source)
    registry = discover([tmp_path])
    assert "acme" not in registry.sink_types
    assert len(registry.problems) == 1
    assert registry.problems[0].origin.plugin == "wrongsig"
    assert "is not a valid voltd plugin" in registry.problems[0].message


def test_same_plugin_name_in_two_dirs_keeps_the_first(tmp_path: Path) -> None:
    first = write_plugin(tmp_path / "one", "acme", plugin_source("acme", cls="One"))
    second = write_plugin(tmp_path / "two", "acme", plugin_source("acme2", cls="Two"))
    registry = discover([tmp_path / "one", tmp_path / "two"])
    assert registry.sink_types["acme"].origin.path == str(first)
    assert "acme2" not in registry.sink_types
    assert len(registry.problems) == 1
    assert registry.problems[0].origin.path == str(second)
    assert "already taken" in registry.problems[0].message


# --------------------------------------------------------------------------------------------
# build_sinks: configuration errors


def test_unknown_sink_type_names_file_key_and_available_types(
    tmp_path: Path, public_key: Path
) -> None:
    write_plugin(tmp_path / "plugins", "acme", plugin_source("acme"))
    path = write_config(
        tmp_path,
        public_key,
        """
        [sinks.chat]
        type = "slackk"
        webhook_url = "https://hooks.example/"
        """,
        plugins=True,
    )
    config, registry = load_with_plugins(path)
    assert build_errors(config, registry) == [
        f"{path}: sinks.chat.type: unknown sink type 'slackk' "
        "(available: acme, email, file, http, slack)"
    ]


def test_sink_whose_plugin_failed_while_registering_names_the_problem(
    tmp_path: Path, public_key: Path
) -> None:
    plugin = write_plugin(
        tmp_path / "plugins",
        "half",
        plugin_source("half", after_register="raise KeyError('api_base')"),
    )
    path = write_config(
        tmp_path,
        public_key,
        """
        [sinks.h]
        type = "half"
        url = "https://h.example/"
        """,
        plugins=True,
    )
    config, registry = load_with_plugins(path)
    [line] = build_errors(config, registry)
    assert line.startswith(f"{path}: sinks.h.type: ")
    assert f"plugin 'half' from {plugin}" in line
    assert "register_sink_types failed: KeyError" in line


def test_sink_whose_type_was_rejected_names_the_problem(tmp_path: Path, public_key: Path) -> None:
    source = (
        "import voltd\nclass Bare:\n    async def send(self, event):\n        pass\n"
        "@voltd.hookimpl\ndef register_sink_types(register):\n    register('bare', Bare)\n"
    )
    write_plugin(tmp_path / "plugins", "bare", source)
    path = write_config(tmp_path, public_key, '[sinks.b]\ntype = "bare"\n', plugins=True)
    config, registry = load_with_plugins(path)
    [line] = build_errors(config, registry)
    assert line.startswith(f"{path}: sinks.b.type: unknown sink type 'bare'")
    assert "class needs an `Options` pydantic model" in line
    assert "available: email, file, http, slack" in line


def test_sink_whose_plugin_failed_to_import_names_the_problem(
    tmp_path: Path, public_key: Path
) -> None:
    plugin = write_plugin(tmp_path / "plugins", "pager", "import voltd_pager_sdk_not_installed\n")
    path = write_config(tmp_path, public_key, '[sinks.p]\ntype = "pager"\n', plugins=True)
    config, registry = load_with_plugins(path)
    [line] = build_errors(config, registry)
    assert line.startswith(f"{path}: sinks.p.type: unknown sink type 'pager'")
    # Which types a plugin that never imported would provide is unknowable, so the failure is
    # shown: it is the likely reason the type is missing.
    assert f"plugin 'pager' from {plugin}" in line
    assert "failed to import: ModuleNotFoundError" in line
    assert "available: email, file, http, slack" in line


def test_bad_file_sink_options_are_reported_per_key(tmp_path: Path, public_key: Path) -> None:
    path = write_config(
        tmp_path,
        public_key,
        """
        [sinks.typo]
        type = "file"
        path = "out.jsonl"
        fsnyc = false

        [sinks.nopath]
        type = "file"

        [sinks.field]
        type = "file"
        path = "out/{our_number}/{nope}.jsonl"

        [sinks.flag]
        type = "file"
        path = "flag.jsonl"
        fsync = "sometimes"
        """,
    )
    config = load(path)
    problems = build_errors(config, discover())
    src = re.escape(str(path))
    for line in problems:
        assert re.fullmatch(rf"{src}: sinks\.[a-z]+\.[a-z_]+: .+", line), line
    by_key = {line.split(": ")[1]: line.split(": ", 2)[2] for line in problems}
    assert set(by_key) == {
        "sinks.typo.fsnyc",
        "sinks.nopath.path",
        "sinks.field.path",
        "sinks.flag.fsync",
    }
    assert by_key["sinks.typo.fsnyc"] == "unknown key (expected one of: path, fsync)"
    assert "missing" in by_key["sinks.nopath.path"]
    assert by_key["sinks.field.path"].startswith("unknown template field {nope} (expected one of:")
    assert "{our_number}" in by_key["sinks.field.path"]
    assert "{date}" in by_key["sinks.field.path"]
    assert "expected true or false" in by_key["sinks.flag.fsync"]


def test_several_problems_are_reported_together(tmp_path: Path, public_key: Path) -> None:
    path = write_config(
        tmp_path,
        public_key,
        """
        [sinks.good]
        type = "file"
        path = "good.jsonl"

        [sinks.unknown]
        type = "carrier-pigeon"

        [sinks.bad]
        type = "file"
        path = "{when}.jsonl"
        extra = 1
        """,
    )
    config = load(path)
    problems = build_errors(config, discover())
    assert len(problems) == 3
    joined = "\n".join(problems)
    assert f"{path}: sinks.unknown.type: unknown sink type 'carrier-pigeon'" in joined
    assert f"{path}: sinks.bad.path: unknown template field {{when}}" in joined
    assert f"{path}: sinks.bad.extra: unknown key" in joined
    assert "sinks.good" not in joined


def test_secret_option_values_never_appear_in_errors(
    tmp_path: Path, public_key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "s3cr3t-option-value-0b9d"
    monkeypatch.setenv("VOLTD_TEST_SECRET_RETRIES", secret)
    write_plugin(tmp_path / "plugins", "acme", plugin_source("acme"))
    path = write_config(
        tmp_path,
        public_key,
        """
        [sinks.a]
        type = "acme"
        url = "https://a.example/"
        retries = "${env:VOLTD_TEST_SECRET_RETRIES}"
        """,
        plugins=True,
    )
    config, registry = load_with_plugins(path)
    [line] = build_errors(config, registry)
    assert line.startswith(f"{path}: sinks.a.retries: ")
    assert secret not in line


# --------------------------------------------------------------------------------------------
# The file sink itself

WHEN = 1_700_000_000  # 2023-11-14 22:13:20 UTC


def file_sink(tmp_path: Path, public_key: Path, template: str) -> Any:
    """A real file sink built from a real config in `tmp_path / "conf"`."""
    body = f'[sinks.out]\ntype = "file"\npath = {json.dumps(template)}\n'
    config = load(write_config(tmp_path / "conf", public_key, body))
    return build_sinks(config, discover())["out"]


async def test_path_templates_resolve_and_directories_are_created(
    tmp_path: Path, public_key: Path
) -> None:
    sink = file_sink(
        tmp_path, public_key, "out/{our_number}/{date}/{event}-{status}-{direction}.jsonl"
    )
    inbound = event(when=WHEN, our="+15555550123", status="received")
    outbound = event(
        when=WHEN,
        direction="outbound",
        our="+15555550145",
        status="delivered",
        event_type="message.finalized",
    )
    await sink.send(inbound)
    await sink.send(outbound)
    await sink.send(inbound)  # appends, does not truncate

    out = tmp_path / "conf" / "out"
    inbound_file = out / "+15555550123" / "2023-11-14" / "message.received-received-inbound.jsonl"
    outbound_file = (
        out / "+15555550145" / "2023-11-14" / "message.finalized-delivered-outbound.jsonl"
    )
    assert files_under(out) == sorted([inbound_file, outbound_file])
    assert inbound_file.read_bytes() == (as_json_line(inbound.raw) + b"\n") * 2
    assert outbound_file.read_bytes() == as_json_line(outbound.raw) + b"\n"


async def test_lines_are_the_body_as_one_json_line(tmp_path: Path, public_key: Path) -> None:
    sink = file_sink(tmp_path, public_key, "all.jsonl")
    compact = make_event(text="compact", unknown_field={"kept": [1, 2]})
    pretty_doc = json.loads(make_event(text="line one\nline two"))
    pretty = json.dumps(pretty_doc, indent=4, ensure_ascii=False).replace("\n", "\r\n").encode()
    events = [parse(compact), parse(pretty)]
    assert all(isinstance(e, Event) for e in events)
    await sink.send_batch(events)

    lines = (tmp_path / "conf" / "all.jsonl").read_bytes().split(b"\n")
    assert lines == [as_json_line(compact), as_json_line(pretty), b""]
    assert lines[0] == compact  # a compact body is kept byte for byte
    assert b"\r" not in lines[1]
    assert json.loads(lines[1]) == pretty_doc  # the escaped \n inside the text is untouched


async def test_names_that_long_fields_push_past_the_limit_are_shortened(
    tmp_path: Path, public_key: Path
) -> None:
    """Each field is at most 100 characters, but three in one name exceed 255 bytes: the
    name is shortened with a hash (stable, distinct), instead of every write failing."""
    sink = file_sink(tmp_path, public_key, "out/{message_id}-{id}-{status}.jsonl")
    events = [
        parse(make_event(eid="rfw_" + c * 150, status=c * 150, id="rf_" + c * 150)) for c in "ab"
    ]
    for e in [*events, events[0]]:
        assert isinstance(e, Event)
        await sink.send(e)
    files = files_under(tmp_path / "conf" / "out")
    assert len(files) == 2 and all(len(f.name.encode()) <= 255 for f in files)
    assert sorted(len(f.read_bytes().splitlines()) for f in files) == [1, 2]


HOSTILE = [
    "../../etc/passwd",
    "",
    "..",
    ".",
    "...",
    "/etc/cron.d/x",
    "a/../../../b",
    "..\\..\\windows",
    "~root",
    "nul\x00byte",
    "$(touch pwned)",
    "x" * 5000,
]


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
async def test_hostile_payload_values_never_escape_the_base_directory(
    tmp_path: Path, public_key: Path, value: str
) -> None:
    sink = file_sink(tmp_path, public_key, "out/{our_number}/{status}-{event}.jsonl")
    ev = event(our=value, status=value, event_type=value, when=WHEN)
    await sink.send(ev)

    base = (tmp_path / "conf" / "out").resolve()
    written = [p for p in files_under(tmp_path) if p.suffix == ".jsonl"]
    assert len(written) == 1
    target = written[0].resolve()
    assert target.is_relative_to(base)
    assert len(target.relative_to(base).parts) == 2  # exactly {our_number}/{...}.jsonl
    assert target.read_bytes() == as_json_line(ev.raw) + b"\n"
    assert not (tmp_path / "pwned").exists()


async def test_non_string_and_missing_values_become_a_safe_name(
    tmp_path: Path, public_key: Path
) -> None:
    sink = file_sink(tmp_path, public_key, "out/{our_number}/{date}/{status}.jsonl")
    doc = json.loads(make_event())
    doc["payload"]["direction"] = {"not": "a string"}
    doc["payload"]["status"] = ["a", "list"]
    doc["time"] = 10**15  # far outside any calendar
    raw = json.dumps(doc).encode()
    ev = parse(raw)
    assert isinstance(ev, Event)
    await sink.send(ev)
    expected = tmp_path / "conf" / "out" / "unknown" / "unknown" / "unknown.jsonl"
    assert expected.read_bytes() == raw + b"\n"


@pytest.mark.parametrize("template", ["blocked/x.jsonl", "blocked/deeper/{our_number}.jsonl"])
async def test_write_failure_is_retryable(tmp_path: Path, public_key: Path, template: str) -> None:
    sink = file_sink(tmp_path, public_key, template)
    blocker = tmp_path / "conf" / "blocked"
    blocker.write_bytes(b"a regular file where a directory should be\n")
    with pytest.raises(voltd.RetryableError, match="cannot write"):
        await sink.send(event())
    assert blocker.read_bytes() == b"a regular file where a directory should be\n"
    # Once the obstacle is gone, the same sink delivers.
    blocker.unlink()
    ev = event()
    await sink.send(ev)
    [written] = files_under(blocker)
    assert written.read_bytes() == as_json_line(ev.raw) + b"\n"


async def test_after_a_restart_a_batch_already_in_the_file_is_not_written_twice(
    tmp_path: Path, public_key: Path
) -> None:
    """A crash between the write and the spool's record re-sends the batch after a restart:
    the first write to each file skips the lines its tail already holds."""
    first = [event(text=f"first {i}") for i in range(5)]
    sink = file_sink(tmp_path, public_key, "out/{our_number}.jsonl")
    await sink.send_batch(first)
    again = file_sink(tmp_path, public_key, "out/{our_number}.jsonl")  # a new process
    later = [event(text=f"later {i}") for i in range(3)]
    await again.send_batch([*first[2:], *later])  # the unrecorded part, and new ones
    await again.send_batch(first[:1])  # after the first write: written (a replay, say)
    [path] = files_under(tmp_path / "conf" / "out")
    lines = path.read_bytes().splitlines()
    assert lines == [as_json_line(e.raw) for e in [*first, *later, first[0]]]
