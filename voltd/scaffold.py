"""`voltd plugin new NAME`: a plugin distribution to start from, like the llm-plugin and
datasette-plugin templates: a `pyproject.toml` with the entry point, a sink built on the public
plugin API only, a test using `voltd.testing` against a real local HTTP server, and a README.

The sink it makes POSTs each event to a URL as a small JSON message rendered from a template,
which is the shape of most chat and incident tools (Teams, Mattermost, PagerDuty, ...): change
`send` and the options, keep the rest.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path

from voltd import __version__
from voltd.sink import PLUGIN_API_VERSION

_NAME = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")


class ScaffoldError(Exception):
    """The name or the target directory cannot be used; the message says why."""


def names(name: str) -> dict[str, str]:
    """The spellings of a sink type name: `type`, `module`, `cls`, `dist`, `env`."""
    if not _NAME.fullmatch(name or ""):
        raise ScaffoldError(
            f"{name!r} is not a usable sink type name: expected lower-case letters, digits and "
            "single - or _ inside, starting with a letter (e.g. teams, pager-duty)"
        )
    module = "voltd_" + name.replace("-", "_")
    if keyword.iskeyword(module):  # pragma: no cover - every module starts with voltd_
        raise ScaffoldError(f"{name!r} makes a Python keyword")
    cls = "".join(part.capitalize() for part in re.split("[-_]", name)) + "Sink"
    env = name.upper().replace("-", "_") + "_URL"
    return {"type": name, "module": module, "cls": cls, "dist": "voltd-" + name, "env": env}


def voltd_source() -> str:
    """What to install voltd from: the directory this voltd was installed from when it was a
    local one (a checkout), else its name for the package index."""
    import importlib.metadata
    import json
    from urllib.parse import unquote, urlparse

    try:
        text = importlib.metadata.distribution("voltd").read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from source
        text = None
    if text:
        url = urlparse(json.loads(text).get("url", ""))
        if url.scheme == "file" and Path(unquote(url.path)).is_dir():
            return unquote(url.path)
    return "voltd"


def scaffold(name: str, parent: Path) -> Path:
    """Write the distribution `voltd-NAME/` under `parent`; returns its directory."""
    n = names(name)
    root = parent / n["dist"]
    if root.exists():
        raise ScaffoldError(f"{root} already exists; choose another --dir or remove it")
    files = {
        "pyproject.toml": PYPROJECT,
        f"{n['module']}/__init__.py": MODULE,
        f"{n['module']}/py.typed": "",
        "tests/test_sink.py": TEST,
        "README.md": README,
    }
    values = {
        **n,
        "voltd_source": voltd_source(),
        "voltd_version": __version__,
        "api_major": str(PLUGIN_API_VERSION[0]),
        "api_minor": str(PLUGIN_API_VERSION[1]),
    }
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        for key, value in values.items():
            text = text.replace("{{" + key + "}}", value)
        path.write_text(text, encoding="utf-8")
    return root


PYPROJECT = """\
[build-system]
requires = ["hatchling>=1.25"]
build-backend = "hatchling.build"

[project]
name = "{{dist}}"
version = "0.1.0"
description = "A voltd sink that posts Volt SMS events to {{type}}."
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["voltd>={{voltd_version}}"]

# voltd finds sink plugins through this entry-point group: the name is the plugin's name
# (for VOLTD_DISABLE_PLUGINS), the value the module with the @voltd.hookimpl functions.
[project.entry-points.voltd]
{{type}} = "{{module}}"

[dependency-groups]
dev = ["pytest>=8", "pytest-trio>=0.8"]

[tool.hatch.build.targets.wheel]
packages = ["{{module}}"]

[tool.pytest.ini_options]
trio_mode = true
"""

MODULE = '''\
"""A voltd sink: each Volt event becomes a short message POSTed to `url` as JSON.

    [sinks.alerts]
    type = "{{type}}"
    url = "${env:{{env}}}"          # secrets from the environment or a file, never inline
    template = "{{ our_name or our_number }}: {{ status }} {{ text | shorten(200) }}"
    timezone = "Europe/Berlin"
"""

from __future__ import annotations

import pydantic
import voltd
from voltd.http import HttpClient, HttpOptions
from voltd.templates import TextTemplate, TimeZone, template_data

# Fails this plugin's import, with a clear message, on a voltd whose plugin API differs.
voltd.require_api({{api_major}}, {{api_minor}})

DEFAULT_TEMPLATE = (
    "{{ direction or 'message' }} {{ status or '' }}: {{ their_number or '?' }} and "
    "{{ our_name or our_number or '?' }}{% if text %}: {{ text | shorten(200) }}{% endif %}"
)


class {{cls}}(voltd.Sink):
    """POSTs `{"text": ...}` to `url`; HTTP answers become retry, dead letter or disabled."""

    class Options(HttpOptions):
        url: str = pydantic.Field(description="where to POST (a secret: use ${env:NAME})")
        template: TextTemplate = pydantic.Field(
            DEFAULT_TEMPLATE, validate_default=True, description="the message text"
        )
        timezone: TimeZone = pydantic.Field(
            "UTC", validate_default=True, description="time zone for times in the message"
        )

    options: Options

    def __init__(self, options: Options, context: voltd.SinkContext) -> None:
        super().__init__(options, context)
        self.http = HttpClient(options, context)  # one connection pool for the sink's life
        self.template = options.template.with_zone(options.timezone)

    async def send(self, event: voltd.Event) -> None:
        data = template_data(event, timezone=self.options.timezone)
        await self.http.request("POST", self.options.url, json={"text": self.template.render(data)})

    async def aclose(self) -> None:
        await self.http.aclose()


@voltd.hookimpl
def register_sink_types(register: voltd.Register) -> None:
    register("{{type}}", {{cls}})
'''

TEST = '''\
"""{{cls}} against a real local HTTP server, through voltd's own loading and delivery."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import voltd.testing as vt

from {{module}} import {{cls}}


class Receiver(ThreadingHTTPServer):
    """Records each POST; answers with `self.status`."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, str]] = []
        self.status = 200
        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self.server.bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(self.server.status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


async def test_volt_examples_arrive(receiver: Receiver) -> None:
    sink = vt.build_sink({{cls}}, {"url": receiver.url})
    report = await vt.deliver(sink, vt.volt_examples())
    assert len(report.delivered) == 2
    assert "failed" in receiver.bodies[1]["text"]
    await sink.aclose()


async def test_follows_the_plugin_contract(receiver: Receiver) -> None:
    await vt.check_sink(vt.build_sink({{cls}}, {"url": receiver.url}))


async def test_a_rejected_event_is_a_dead_letter(receiver: Receiver) -> None:
    receiver.status = 400
    sink = vt.build_sink({{cls}}, {"url": receiver.url})
    report = await vt.deliver(sink, vt.volt_examples()[:1])
    assert [error.split(":")[0] for _, error in report.dead] == ["PermanentError"]
    await sink.aclose()


def test_a_template_mistake_names_the_option_and_line() -> None:
    with pytest.raises(vt.ConfigError) as error:
        vt.build_sink({{cls}}, {"url": "http://127.0.0.1:9/", "template": "{{ staus }}"})
    assert "template" in str(error.value) and "line 1" in str(error.value)
'''

README = """\
# {{dist}}

A voltd sink plugin: each Volt SMS event becomes a short message POSTed
to a URL as JSON (`{"text": "..."}`).

## Install

    pip install {{dist}}      # into the same environment as voltd
    voltd plugins             # lists the "{{type}}" sink type and its options

## Configure

    [sinks.alerts]
    type = "{{type}}"
    url = "${env:{{env}}}"

    [[routes]]
    match = { status = ["failed"] }
    sinks = ["alerts"]

`voltd check -c config.toml` validates the options (and the template) before you start.

## Develop

In a virtual environment with voltd (from PyPI, a wheel, or a checkout's path) and this
plugin installed in editable mode:

    uv venv
    uv pip install {{voltd_source}} -e . pytest pytest-trio
    .venv/bin/python -m pytest

See voltd's docs/writing-plugins.md for the plugin API.
"""
