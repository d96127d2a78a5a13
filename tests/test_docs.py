"""docs/writing-plugins.md tells the truth, and the plugin API is documented and kept.

- every public name (the `__all__` of `voltd` and of its public modules) has a docstring,
  or, for a constant, a `#:` comment at its definition or a mention in its module's
  docstring, and is named in the guide;
- every hook in `voltd.hookspecs` is documented there with its signature;
- the guide's example plugin (its code blocks marked `<!-- file: PATH -->`) is extracted,
  loads through `plugin_dirs`, delivers Volt's examples to a local HTTP server standing in
  for Teams, and its own test file passes under pytest;
- every `toml` block parses, and every `python` block compiles;
- the first-party sinks in `plugins/` (and the guide's example) import only public names.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import tokenize
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import voltd
import voltd.hookspecs
import voltd.testing as vt

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "writing-plugins.md"
PLUGINS = ROOT / "plugins"
PUBLIC_MODULES = ("voltd", "voltd.templates", "voltd.http", "voltd.state", "voltd.testing")


# --------------------------------------------------------------------------------------------
# Reading the guide


@dataclass(frozen=True)
class Block:
    lang: str
    body: str
    line: int  # of the opening fence, 1-based
    path: str | None  # from a `<!-- file: PATH -->` marker right before the fence


_FENCE = re.compile(
    r"^(?:<!-- file: (?P<path>\S+) -->\n)?```(?P<lang>[\w-]*)\n(?P<body>.*?)^```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def code_blocks(text: str | None = None) -> list[Block]:
    text = doc_text() if text is None else text
    blocks = []
    for m in _FENCE.finditer(text):
        start = m.start("lang") if m.group("path") else m.start()
        line = text.count("\n", 0, start) + 1
        blocks.append(Block(m.group("lang"), m.group("body"), line, m.group("path")))
    return blocks


def extract_files(dest: Path, text: str | None = None) -> dict[str, Path]:
    """Write the guide's file blocks under `dest`; returns their paths by marker."""
    out = {}
    for block in code_blocks(text):
        if block.path is None:
            continue
        assert not Path(block.path).is_absolute() and ".." not in Path(block.path).parts
        path = dest / block.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(block.body, encoding="utf-8")
        out[block.path] = path
    return out


def code_text(text: str) -> str:
    """Everything in the guide that is code: fenced blocks and `inline` spans."""
    fenced = [b.body for b in code_blocks(text)]
    prose = _FENCE.sub("", text)
    return "\n".join([*fenced, *re.findall(r"`([^`\n]+)`", prose)])


# --------------------------------------------------------------------------------------------
# (a) every public name is documented in its module and named in the guide


def _public_names() -> list[tuple[str, str]]:
    return [(m, n) for m in PUBLIC_MODULES for n in importlib.import_module(m).__all__]


def _defining_module(module: ModuleType, name: str) -> ModuleType:
    """The module whose source assigns `name`: follows `from X import name` re-exports."""
    source = inspect.getsource(module)
    for node in ast.parse(source).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return _defining_module(importlib.import_module(node.module), alias.name)
    return module


def _has_doc_comment(module: ModuleType, name: str) -> bool:
    """A Sphinx-style `#:` comment above (or beside) the assignment of `name`, or a string
    right after it."""
    source = inspect.getsource(module)
    lines = source.splitlines()
    body = ast.parse(source).body
    for i, node in enumerate(body):
        targets = []
        if isinstance(node, ast.Assign):
            targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            targets = [node.target.id]
        if name not in targets:
            continue
        if "#:" in lines[node.lineno - 1]:
            return True
        above = node.lineno - 2
        while above >= 0 and lines[above].lstrip().startswith("#"):
            if lines[above].lstrip().startswith("#:"):
                return True
            above -= 1
        following = body[i + 1] if i + 1 < len(body) else None
        if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
            return isinstance(following.value.value, str)
    return False


def _mentions(docstring: str | None, name: str) -> bool:
    return bool(docstring) and re.search(rf"(?<![\w.]){re.escape(name)}\b", docstring) is not None


def why_undocumented(module_name: str, name: str) -> str | None:
    module = importlib.import_module(module_name)
    obj = getattr(module, name)
    if inspect.isclass(obj):
        doc = vars(obj).get("__doc__")  # its own, not a base class's
        return None if doc and doc.strip() else f"class {module_name}.{name} has no docstring"
    if inspect.isroutine(obj):
        doc = obj.__doc__
        return None if doc and doc.strip() else f"{module_name}.{name}() has no docstring"
    # A constant, a type alias or an instance: its type's docstring says nothing about it.
    home = _defining_module(module, name)
    if _has_doc_comment(home, name):
        return None
    if _mentions(module.__doc__, name) or _mentions(home.__doc__, name):
        return None
    return (
        f"{module_name}.{name} is not documented: give it a `#:` comment where "
        f"{home.__name__} assigns it, or name it in the module docstring"
    )


@pytest.mark.parametrize(("module", "name"), _public_names())
def test_public_name_is_documented(module: str, name: str) -> None:
    problem = why_undocumented(module, name)
    assert problem is None, problem


@pytest.mark.parametrize(("module", "name"), _public_names())
def test_public_name_is_in_the_guide(module: str, name: str) -> None:
    code = code_text(doc_text())
    assert re.search(rf"(?<!\w){re.escape(name)}(?!\w)", code), (
        f"{module}.{name} is public but docs/writing-plugins.md never names it (in code)"
    )


def test_the_guide_names_every_public_module() -> None:
    text = doc_text()
    for module in PUBLIC_MODULES[1:]:
        assert f"`{module}`" in text, module


# --------------------------------------------------------------------------------------------
# (b) every hook is documented


def _hookspecs() -> list[Any]:
    marker = f"{voltd.hookspecs.PROJECT}_spec"
    return [f for f in vars(voltd.hookspecs).values() if callable(f) and hasattr(f, marker)]


def test_there_are_hookspecs() -> None:
    assert [f.__name__ for f in _hookspecs()] == ["register_sink_types"]


@pytest.mark.parametrize("spec", _hookspecs(), ids=lambda f: f.__name__)
def test_hookspec_is_documented(spec: Any) -> None:
    assert spec.__doc__ and spec.__doc__.strip(), f"hookspec {spec.__name__} has no docstring"
    params = list(inspect.signature(spec).parameters)
    pattern = rf"def {spec.__name__}\(\s*" + r",\s*".join(rf"{p}\b[^,)]*" for p in params)
    code = code_text(doc_text())
    assert re.search(pattern, code), (
        f"docs/writing-plugins.md shows no `def {spec.__name__}({', '.join(params)})`"
    )
    assert "@voltd.hookimpl" in code


# --------------------------------------------------------------------------------------------
# (c) the guide's example plugin works


EXAMPLE_FILES = (
    "voltd-teams/voltd_teams/__init__.py",
    "voltd-teams/pyproject.toml",
    "voltd-teams/tests/test_sink.py",
)


class Receiver(ThreadingHTTPServer):
    """A local HTTP server standing in for Teams or any webhook: records each request."""

    def __init__(self, path: str = "/webhookb2/0123-secret-token") -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.path = path
        self.requests: list[tuple[str, dict[str, str], Any]] = []  # path, headers, JSON
        self.arrived = threading.Event()
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{self.path}"

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()

    def wait(self, n: int, timeout: float = 20.0) -> list[Any]:
        """The JSON bodies, once `n` have arrived (AssertionError after `timeout`)."""
        deadline = timeout
        while len(self.requests) < n and deadline > 0:
            self.arrived.wait(0.05)
            self.arrived.clear()
            deadline -= 0.05
        assert len(self.requests) >= n, f"{len(self.requests)} of {n} requests arrived"
        return [body for _, _, body in self.requests]


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.server.requests.append((self.path, headers, json.loads(body)))
        self.server.arrived.set()
        self.send_response(200)
        self.send_header("Content-Length", "1")
        self.end_headers()
        self.wfile.write(b"1")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The guide's file blocks, extracted; returns the distribution's directory."""
    root = tmp_path_factory.mktemp("docs")
    files = extract_files(root)
    assert sorted(files) == sorted(EXAMPLE_FILES)
    return root / "voltd-teams"


@pytest.fixture
def teams_module(example: Path) -> Iterator[ModuleType]:
    """The example's `voltd_teams`, imported from the extracted files (then forgotten)."""
    sys.path.insert(0, str(example))
    try:
        module = importlib.import_module("voltd_teams")
        assert Path(module.__file__ or "").is_relative_to(example)
        yield module
    finally:
        sys.path.remove(str(example))
        sys.modules.pop("voltd_teams", None)


def test_the_example_loads_as_a_single_file_plugin(example: Path, tmp_path: Path) -> None:
    from voltd.plugins import discover

    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    shutil.copy(example / "voltd_teams" / "__init__.py", plugin_dir / "teams.py")
    try:
        registry = discover([plugin_dir], disabled=())
    finally:
        sys.modules.pop("voltd_plugin_teams", None)
    assert [str(p) for p in registry.problems if p.origin.plugin == "teams"] == []
    info = registry.sink_types["teams"]
    assert info.cls.__name__ == "TeamsSink"
    assert info.origin.path == str(plugin_dir / "teams.py")


async def test_the_example_delivers_volt_examples_to_teams(
    teams_module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Receiver() as teams:
        monkeypatch.setenv("VOLTD_DOCS_TEAMS_URL", teams.url)
        sink = vt.build_sink(
            teams_module.TeamsSink,
            {"webhook_url": "${env:VOLTD_DOCS_TEAMS_URL}", "timezone": "America/New_York"},
        )
        await vt.check_sink(sink)  # sends both examples once, and closes the sink
        teams.requests.clear()
        sink = vt.build_sink(teams_module.TeamsSink, {"webhook_url": teams.url})
        try:
            report = await vt.deliver(sink, vt.volt_examples())
        finally:
            await sink.aclose()
        assert len(report.delivered) == 2, report
        assert not report.dead and not report.pending and report.disabled is None
        cards = teams.wait(2)
    for path, headers, _ in teams.requests:
        assert path == teams.path
        assert headers["content-type"] == "application/json"
    delivered, failed = cards
    for card in cards:
        assert card["@type"] == "MessageCard"
        assert card["@context"] == "https://schema.org/extensions"
        assert card["summary"] == card["title"]
        [section] = card["sections"]
        assert section["markdown"] is False
        assert "Sending a message to myself" in section["text"]
        assert "+15555550123" in section["text"]  # their number
    assert delivered["title"] == "sales: delivered"
    assert delivered["themeColor"] == "107C10"
    assert failed["title"] == "sales: failed"
    assert failed["themeColor"] == "D13438"
    assert "Blocked as spam - temporary." in failed["sections"][0]["text"]
    assert "2022-04-07 22:19 UTC" in failed["sections"][0]["text"]


async def test_the_example_turns_a_render_error_into_a_dead_letter(
    teams_module: ModuleType,
) -> None:
    with Receiver() as teams:
        options = {"webhook_url": teams.url, "text": "{{ payload.no_such_field }}"}
        sink = vt.build_sink(teams_module.TeamsSink, options)
        try:
            report = await vt.deliver(sink, vt.volt_examples()[:1])
        finally:
            await sink.aclose()
        assert teams.requests == []
    [(_, error)] = report.dead
    assert error.startswith("PermanentError: template: line 1:"), error


def test_the_examples_own_tests_pass(example: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(example), env.get("PYTHONPATH")]))
    env.pop("PYTEST_ADDOPTS", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=example,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"\b\d+ passed\b", done.stdout), done.stdout
    assert not re.search(r"\b(failed|error|skipped|xfailed)\b", done.stdout), done.stdout


def test_the_config_in_the_guide_fits_the_example(
    teams_module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    tables = []
    for block in code_blocks():
        if block.lang == "toml" and block.path is None:
            for name, table in tomllib.loads(block.body).get("sinks", {}).items():
                if table.get("type") == "teams":
                    tables.append((name, table))
    assert tables, "the guide shows no [sinks.X] table of type teams"
    for name, table in tables:
        options = {k: v for k, v in table.items() if k != "type"}
        for ref in re.findall(r"\$\{env:(\w+)\}", json.dumps(options)):
            monkeypatch.setenv(ref, "https://example.webhook.office.com/webhookb2/x")
        vt.build_sink(teams_module.TeamsSink, options, name=name)


# --------------------------------------------------------------------------------------------
# (d) code blocks are valid


def test_toml_blocks_parse() -> None:
    blocks = [b for b in code_blocks() if b.lang == "toml"]
    assert len(blocks) >= 3
    for block in blocks:
        try:
            tomllib.loads(block.body)
        except tomllib.TOMLDecodeError as exc:
            pytest.fail(f"docs/writing-plugins.md:{block.line}: toml block: {exc}")


def test_python_blocks_compile() -> None:
    blocks = [b for b in code_blocks() if b.lang == "python"]
    assert len(blocks) >= 4
    for block in blocks:
        try:
            compile(block.body, f"docs/writing-plugins.md:{block.line}", "exec")
        except SyntaxError as exc:
            pytest.fail(f"docs/writing-plugins.md:{block.line}: python block: {exc}")


async def test_python_snippets_run_and_their_sinks_keep_the_contract(tmp_path: Path) -> None:
    from voltd.plugins import discover

    snippets = [b for b in code_blocks() if b.lang == "python" and b.path is None]
    sinks = []
    for i, block in enumerate(snippets):
        namespace: dict[str, Any] = {"__name__": f"voltd_docs_snippet_{i}"}
        exec(compile(block.body, f"docs/writing-plugins.md:{block.line}", "exec"), namespace)
        sinks += [
            v
            for v in namespace.values()
            if isinstance(v, type) and issubclass(v, voltd.Sink) and v is not voltd.Sink
        ]
        if "@voltd.hookimpl" in block.body:  # a plugin file on its own
            plugin_dir = tmp_path / f"snippet{i}"
            plugin_dir.mkdir()
            (plugin_dir / f"snippet{i}.py").write_text(block.body, encoding="utf-8")
            try:
                registry = discover([plugin_dir], disabled=())
            finally:
                sys.modules.pop(f"voltd_plugin_snippet{i}", None)
            assert [str(p) for p in registry.problems] == [], block.line
            assert f"snippet{i}" in {i.origin.plugin for i in registry.sink_types.values()}
    assert {cls.__name__ for cls in sinks} >= {"EchoSink", "SlowSink"}
    for cls in sinks:
        await vt.check_sink(vt.build_sink(cls, {}))


def test_fences_are_closed() -> None:
    # An unclosed fence would swallow the rest of the guide and hide blocks from the tests.
    assert doc_text().count("\n```") % 2 == 0


# --------------------------------------------------------------------------------------------
# (e) first-party plugins import only the public API


def _public_all(module: str) -> frozenset[str]:
    return frozenset(importlib.import_module(module).__all__)


def _is_voltd(module: str) -> bool:
    return module == "voltd" or module.startswith("voltd.")


def private_imports(source: str, filename: str) -> list[str]:
    """Every use of a non-public voltd name in `source`, as `file:line: what`."""
    tree = ast.parse(source, filename=filename)
    problems: list[str] = []
    modules: dict[str, str] = {}  # local name -> the public voltd module it is bound to

    def bad(node: ast.AST, what: str) -> None:
        problems.append(f"{filename}:{getattr(node, 'lineno', '?')}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not _is_voltd(alias.name):
                    continue
                if alias.name not in PUBLIC_MODULES:
                    bad(node, f"imports {alias.name!r}, an internal module")
                elif alias.asname:
                    modules[alias.asname] = alias.name
                else:
                    modules["voltd"] = "voltd"  # `import voltd.http` binds `voltd`
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if not _is_voltd(node.module):
                continue
            if node.module not in PUBLIC_MODULES:
                names = ", ".join(a.name for a in node.names)
                bad(node, f"imports {names} from {node.module!r}, an internal module")
                continue
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in PUBLIC_MODULES:
                    modules[alias.asname or alias.name] = full
                elif alias.name == "*" or alias.name not in _public_all(node.module):
                    bad(node, f"imports {alias.name!r} from {node.module}, not in its __all__")

    def resolve(expr: ast.expr) -> str | None:
        if isinstance(expr, ast.Name):
            return modules.get(expr.id)
        if isinstance(expr, ast.Attribute):
            base = resolve(expr.value)
            if base is not None and f"{base}.{expr.attr}" in PUBLIC_MODULES:
                return f"{base}.{expr.attr}"
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            base = resolve(node.value)
            if base is None or f"{base}.{node.attr}" in PUBLIC_MODULES:
                continue
            if node.attr not in _public_all(base):
                bad(node, f"uses {base}.{node.attr}, not in {base}.__all__")
    return sorted(set(problems), key=lambda p: (p.split(":")[0], int(p.split(":")[1])))


def test_the_import_check_finds_private_names() -> None:
    source = "\n".join(
        [
            "from voltd.sink import Sink",  # 1: internal module
            "import voltd.delivery",  # 2: internal module
            "from voltd import Event, _adapt",  # 3: _adapt is not public
            "import voltd",
            "voltd.config.load",  # 5: internal module through an attribute
            "from voltd.http import HttpClient, _secrets",  # 6
            "import voltd.templates as t",
            "t._cut, t.Template, voltd.http.safe_url, voltd.Sink",  # 8: t._cut
            "from voltd import testing",
            "testing.build_sink, testing.NUMBERS",  # 10: NUMBERS is not in __all__
            "from . import helpers; import voltd_file; from voltd import *",  # 11: *
        ]
    )
    found = private_imports(source, "p.py")
    assert [p.split(":")[1] for p in found] == ["1", "2", "3", "5", "6", "8", "10", "11"], found
    assert "p.py:3: imports '_adapt' from voltd, not in its __all__" in found
    assert "p.py:1: imports Sink from 'voltd.sink', an internal module" in found
    assert "p.py:10: uses voltd.testing.NUMBERS, not in voltd.testing.__all__" in found


def _plugin_files() -> list[Path]:
    return sorted(PLUGINS.rglob("*.py"))


def test_there_are_first_party_plugins() -> None:
    assert PLUGINS / "voltd_file" / "__init__.py" in _plugin_files()


@pytest.mark.parametrize("path", _plugin_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_first_party_plugin_imports_only_public_names(path: Path) -> None:
    with tokenize.open(path) as f:  # honours an encoding declaration
        source = f.read()
    problems = private_imports(source, str(path.relative_to(ROOT)))
    assert not problems, "plugins must use only voltd's public API:\n" + "\n".join(problems)


def test_the_guides_example_imports_only_public_names(example: Path) -> None:
    problems = []
    for relative in EXAMPLE_FILES:
        if relative.endswith(".py"):
            source = (example.parent / relative).read_text(encoding="utf-8")
            problems += private_imports(source, relative)
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------------------------
# The README's "Slack and e-mail" section shows what the sinks build today


def _render_examples() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "render_examples", ROOT / "docs" / "render_examples.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _readme_block(after: str, lang: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(after)
    fence = text.index(f"```{lang}\n", start) + len(f"```{lang}\n")
    return text[fence : text.index("```\n", fence)]


def test_the_readme_shows_the_slack_message_the_sink_builds() -> None:
    render = _render_examples()
    message = render.slack_message()
    assert json.loads(_readme_block("the JSON Slack receives", "json")) == message
    assert json.loads((ROOT / "docs/examples/slack-failed.json").read_text()) == message
    # The Block Kit Builder link carries exactly these blocks.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"]({render.builder_link(message)})" in readme


def test_the_readme_shows_the_mail_the_sink_builds() -> None:
    render = _render_examples()
    text, html = render.parts(render.email_message())
    assert _readme_block("whose text part reads", "text") == text
    assert (ROOT / "docs/examples/email-failed.txt").read_text(encoding="utf-8") == text
    assert (ROOT / "docs/examples/email-failed.html").read_text(encoding="utf-8") == html
    png = ROOT / "docs/examples/email-failed.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "failed to deliver" in text and "Blocked as spam - temporary" in html


def test_the_readmes_shared_spool_table_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The `[spool]` of "Running several instances" is a config voltd takes as written, and
    what `voltd check` would show of it holds neither the password nor its reference."""
    from voltd.config import load

    spool = _readme_block("with `url` in\nplace of `path`", "toml")
    assert spool.startswith("[spool]\nurl = ")
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "pg_password").write_text("s3cret-Pa55\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    from tests.helpers import copy_material

    copy_material("keys", tmp_path / "keys")
    (tmp_path / "config.toml").write_text(
        '[verify]\npublic_keys = ["keys/volt_id_rsa.pub"]\n\n' + spool
    )
    config = load(tmp_path / "config.toml")
    assert config.spool.password == "s3cret-Pa55"
    assert config.is_secret("spool", "password")
    assert config.spool.where == "postgresql://voltd@db.internal:5432/voltd"
    assert config.spool.conninfo is not None and "s3cret-Pa55" in config.spool.conninfo
