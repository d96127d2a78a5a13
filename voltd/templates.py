"""Message templates for sinks: jinja2, sandboxed, over plain data, checked at config load.

Part of the plugin API. A sink declares its template options so that `voltd check` finds
every mistake before the daemon starts (a typo like ``{{ staus }}``, an unclosed tag, an
unknown filter), naming the line::

    class Options(voltd.SinkOptions):
        template: MrkdwnTemplate = pydantic.Field(DEFAULT, validate_default=True, ...)
        timezone: TimeZone = pydantic.Field("UTC", validate_default=True, ...)

    # in __init__: the `localtime` filter shows times in the sink's zone
    self.template = options.template.with_zone(options.timezone)

and turns each event into text with two calls (the data once per event, for all templates)::

    data = template_data(event, timezone=self.options.timezone, numbers=self.context.numbers)
    text = self.template.render(data)

Why it is built this way:

- Templates see plain data only (dicts, lists, strings, numbers, booleans, None), never Python
  objects, in jinja2's immutable sandbox: an SMS arrives from anyone, and neither its text nor
  the template can reach an object's internals or change the data another template renders.
- Undefined names are errors (`StrictUndefined`): a misspelt payload key fails loudly with its
  line instead of sending an empty message. Names the template reads are checked against the
  known ones already when the template is parsed. `None` (a JSON null) renders as nothing.
- The output decides the escaping, and every ``{{ … }}`` output is escaped whatever the template
  does (``{% autoescape false %}`` does not turn it off; the ``safe`` filter is not there):
  `"html"` escapes HTML; `"mrkdwn"` (Slack) escapes ``& < >`` only, so an SMS saying
  ``<!channel>`` or ``<https://evil|click>`` can neither ping nor link; `"text"` escapes
  nothing. Literal template text is never touched, so the template itself can use markup.
- Output is capped at `max_length` characters, ending in "…"; a long loop stops there too.
- Errors are `TemplateError` (a ValueError) saying ``line N: what``, never a traceback and
  never the rendered text.

Variables (`NAMES`): ``event`` (the envelope as Volt sent it), ``payload`` (its payload),
``our_number``, ``our_name`` (the `[numbers]` name of our number, or None), ``their_number``,
``direction``, ``status``, ``event_type``, ``text``, ``received`` (the envelope's ``time`` as an
ISO 8601 string in the sink's time zone, or None). Payload fields: ``payload.carrier_name``.

Filters, besides jinja2's built-in ones (``default``, ``upper``, ``replace``, ``join``, …):

- ``localtime(format=None)``: an ISO 8601 string (naive means UTC) or Unix seconds, shown in
  the template's time zone, by default as ``2022-04-07 18:19:46 EDT``, else with a strftime
  format: ``{{ received | localtime("%H:%M %Z") }}``, ``{{ payload.sent_at | localtime }}``.
  None stays None; a value that is not a time is shown unchanged.
- ``shorten(length, end="…")``: at most `length` characters, ending in "…" when cut:
  ``{{ text | shorten(200) }}``.

Not available: the ``safe`` filter; ``urlize`` and ``xmlattr`` (they make HTML) outside html;
``lipsum``; ``{% include %}``, ``{% extends %}`` and ``{% import %}`` (a template is one
string); attributes starting with ``_``; ``*`` building more than a million items and ``**``
with exponents over 1000. A payload key named like a dict method is read as
``payload["items"]``.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import re
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
from jinja2 import meta, nodes
from jinja2.exceptions import FilterArgumentError, SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup
from markupsafe import escape as html_escape
from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

if TYPE_CHECKING:
    from jinja2.runtime import Context

    from voltd.events import Event

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "NAMES",
    "ZONE_EXPECTED",
    "Escape",
    "HtmlTemplate",
    "MrkdwnTemplate",
    "Template",
    "TemplateError",
    "TemplateSpec",
    "TextTemplate",
    "TimeZone",
    "escape_mrkdwn",
    "get_zone",
    "template_data",
]

#: How output is escaped: see the module docstring.
Escape = Literal["text", "html", "mrkdwn"]

#: The variables every template may use; `template_data` gives exactly these.
NAMES: Final = frozenset(
    {
        "event",
        "payload",
        "our_number",
        "our_name",
        "their_number",
        "direction",
        "status",
        "event_type",
        "text",
        "received",
    }
)

#: The longest output when a sink does not say (characters, "…" included).
DEFAULT_MAX_LENGTH: Final = 100_000

#: What a wrong time zone option is told (from `get_zone` and `TimeZone`).
ZONE_EXPECTED: Final = "expected an IANA time zone like Europe/Berlin or UTC"

_ELLIPSIS: Final = "…"
_DEFAULT_TIME_FORMAT: Final = "%Y-%m-%d %H:%M:%S %Z"
#: The largest string or list that `*` may build in a template: repetition is the one cheap
#: way a short template makes a huge value before the length cap can see it.
_MAX_REPEAT: Final = 1_000_000
_MAX_EXPONENT: Final = 1_000
_MAX_MESSAGE: Final = 200
_MAX_SCRUB: Final = 10_000
_ESCAPES: Final = ("text", "html", "mrkdwn")


class TemplateError(ValueError):
    """A template that cannot be parsed or rendered; the message names the line.

    A ValueError, so that raised in a pydantic validator it becomes an option's error.
    """


def escape_mrkdwn(text: str) -> str:
    """Escape `& < >` as Slack asks: then text can never be a mention, link or channel ping."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def get_zone(zone: str | ZoneInfo) -> ZoneInfo:
    """A ZoneInfo from its IANA name, or ValueError saying what was expected."""
    if isinstance(zone, ZoneInfo):
        return zone
    if not isinstance(zone, str) or not zone.strip():
        raise ValueError(ZONE_EXPECTED)
    try:
        return ZoneInfo(zone.strip())
    except (ZoneInfoNotFoundError, ValueError, OSError, TypeError):
        raise ValueError(ZONE_EXPECTED) from None


# --------------------------------------------------------------------------------------------
# The data templates see


def template_data(
    event: Event,
    *,
    timezone: str | ZoneInfo = "UTC",
    numbers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The variables for one event (`NAMES`), plain data only: compute once, render many.

    `timezone` is where `received` is given; `numbers` (E.164 -> name, as in
    `SinkContext.numbers`) names our number when the event does not carry the names itself.
    """
    zone = get_zone(timezone)
    envelope = event.to_dict()
    payload = envelope.get("payload")
    our_number = event.our_number
    our_name = event.our_name
    if our_name is None and numbers is not None and our_number is not None:
        our_name = numbers.get(our_number)
    when = event.when
    return {
        "event": envelope,
        "payload": payload if isinstance(payload, dict) else {},
        "our_number": our_number,
        "our_name": our_name,
        "their_number": event.their_number,
        "direction": event.direction,
        "status": event.status,
        "event_type": event.event_type,
        "text": event.text,
        "received": when.astimezone(zone).isoformat() if when is not None else None,
    }


# --------------------------------------------------------------------------------------------
# Filters


def _defined(value: Any) -> Any:
    """Raise the StrictUndefined error for an undefined value handed to a filter."""
    if isinstance(value, jinja2.Undefined):
        str(value)  # raises UndefinedError with jinja2's message
    return value


def _parse_time(value: Any) -> _dt.datetime | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text)
        except ValueError:
            try:
                when = _dt.datetime.fromisoformat(text)
            except ValueError:
                return None
            return when if when.tzinfo is not None else when.replace(tzinfo=_dt.UTC)
    if isinstance(value, int | float):
        try:
            return _dt.datetime.fromtimestamp(value, _dt.UTC)
        except (OverflowError, OSError, ValueError):
            return None
    return None


def _localtime_filter(zone: ZoneInfo) -> Callable[..., Any]:
    def localtime(value: Any, format: str | None = None) -> Any:
        value = _defined(value)
        if value is None:
            return None
        when = _parse_time(value)
        if when is None:
            return value
        try:
            local = when.astimezone(zone)
        except (OverflowError, ValueError):
            return value
        return local.strftime(format if format is not None else _DEFAULT_TIME_FORMAT)

    return localtime


def _shorten(value: Any, length: int = 100, end: str = _ELLIPSIS) -> Any:
    value = _defined(value)
    if value is None:
        return None
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise FilterArgumentError("shorten needs a length of at least 1")
    # Markup (a macro's output) is shortened as the text it shows, never inside an entity.
    text = value.unescape() if isinstance(value, Markup) else str(value)
    if len(text) <= length:
        return text
    end = str(end)[:length]
    return text[: length - len(end)] + end


# --------------------------------------------------------------------------------------------
# The environment


def _finalize_for(escape: Escape) -> Callable[[Any], Any]:
    """Every `{{ … }}` output passes here: None shows as nothing, and escaping happens here,
    not by autoescape alone, so `{% autoescape false %}` cannot turn it off."""
    if escape == "html":

        def finalize_html(value: Any) -> Any:
            return Markup("") if value is None else html_escape(value)

        return finalize_html
    if escape == "mrkdwn":

        def finalize_mrkdwn(value: Any) -> Any:
            if value is None:
                return Markup("")
            if isinstance(value, Markup):  # already escaped: a macro's or a block's output
                return value
            return Markup(escape_mrkdwn(str(value)))

        return finalize_mrkdwn

    def finalize_text(value: Any) -> Any:
        return "" if value is None else value

    return finalize_text


class _Environment(ImmutableSandboxedEnvironment):
    """The immutable sandbox, also bounding `*` and `**`, which make huge values cheaply."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(times, int)
                    and len(seq) * times > _MAX_REPEAT
                ):
                    raise SecurityError(f"'*' would build more than {_MAX_REPEAT} items")
            return left * right
        if operator == "**":
            if isinstance(right, int | float) and abs(right) > _MAX_EXPONENT:
                raise SecurityError(f"'**' allows exponents up to {_MAX_EXPONENT}")
            return left**right
        return super().call_binop(context, operator, left, right)


#: Filters that make HTML or bypass escaping; `safe` is gone everywhere since all data is
#: untrusted, the HTML makers outside html mode.
_REMOVED_FILTERS: Final = {
    "text": ("safe", "urlize", "xmlattr"),
    "html": ("safe",),
    "mrkdwn": ("safe", "urlize", "xmlattr"),
}


def _environment(escape: Escape, zone: ZoneInfo) -> _Environment:
    env = _Environment(
        undefined=jinja2.StrictUndefined,
        autoescape=escape != "text",
        finalize=_finalize_for(escape),
        keep_trailing_newline=True,
        auto_reload=False,
        cache_size=0,
    )
    for name in _REMOVED_FILTERS[escape]:
        env.filters.pop(name, None)
    env.globals.pop("lipsum", None)  # placeholder HTML: no use in a message
    env.filters["localtime"] = _localtime_filter(zone)
    env.filters["shorten"] = _shorten
    return env


# --------------------------------------------------------------------------------------------
# Errors


def _one_line(text: str, limit: int = _MAX_MESSAGE) -> str:
    """A message as one short line (they end up in logs and in `voltd check` output)."""
    flat = " ".join(text.split())
    flat = "".join(c if c.isprintable() else "?" for c in flat)
    return flat if len(flat) <= limit else flat[: limit - 1] + _ELLIPSIS


def _at(line: int | None, message: str) -> str:
    return f"line {line}: {message}" if line else message


def _template_line(exc: BaseException) -> int | None:
    """The template line where a render error happened: jinja2 rewrites the traceback so
    that the template's frames carry the template's file name and line numbers."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _data_strings(data: Any, source: str) -> list[str]:
    """The strings in `data` an error message must not repeat (the template's own aside),
    longest first: messages are logged, and event data (an SMS, a number) is personal."""
    found: set[str] = set()
    stack = [data]
    while stack and len(found) < _MAX_SCRUB:
        value = stack.pop()
        if isinstance(value, str):
            if len(value) >= 4 and value not in source:
                found.add(value)
        elif isinstance(value, Mapping):
            stack.extend(value.values())
        elif isinstance(value, list | tuple):
            stack.extend(value)
    return sorted(found, key=len, reverse=True)


def _render_message(exc: BaseException, data: Mapping[str, Any], source: str) -> str:
    if isinstance(exc, jinja2.TemplateError):
        text = exc.message or type(exc).__name__
    elif isinstance(exc, RecursionError):
        text = "too deeply nested (recursion)"
    else:
        detail = str(exc)
        text = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    for value in _data_strings(data, source):
        if value in text:
            text = text.replace(value, "[data]")
    return _one_line(text)


def _static_checks(ast: nodes.Template, env: jinja2.Environment, allowed: frozenset[str]) -> None:
    """What jinja2 itself would only find while rendering: unknown variables, private
    attributes (which the sandbox refuses), unknown filters and tests inside `{% if %}`."""
    for stmt in ast.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
        tag = type(stmt).__name__.lower().replace("fromimport", "from … import")
        raise TemplateError(
            _at(stmt.lineno, f"{{% {tag} %}} is not available: a template is one string")
        )
    for node in ast.find_all((nodes.Getattr, nodes.Filter, nodes.Test)):
        if isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
            raise TemplateError(_at(node.lineno, f"attribute {node.attr!r} is not allowed"))
        if isinstance(node, nodes.Filter) and node.name not in env.filters:
            raise TemplateError(_at(node.lineno, f"No filter named {node.name!r}."))
        if isinstance(node, nodes.Test) and node.name not in env.tests:
            raise TemplateError(_at(node.lineno, f"No test named {node.name!r}."))
    unknown = meta.find_undeclared_variables(ast) - allowed
    if not unknown:
        return
    first: tuple[int, str] | None = None
    for name_node in ast.find_all(nodes.Name):
        if name_node.name in unknown and name_node.ctx == "load":
            here = (name_node.lineno, name_node.name)
            first = here if first is None or here < first else first
    line, name = first if first is not None else (0, min(unknown))
    close = difflib.get_close_matches(name, sorted(allowed), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise TemplateError(
        _at(
            line,
            f"unknown variable {name!r} ({hint}known: {', '.join(sorted(allowed))})",
        )
    )


# --------------------------------------------------------------------------------------------
# Templates


_OPEN_ENTITY = re.compile(r"&[#0-9A-Za-z]{0,10}\Z")


def _cut(text: str, limit: int, escape: Escape) -> str:
    """`text` cut to `limit` characters, "…" included; in html/mrkdwn never inside an entity
    or a tag (data never leaves a bare `<` there, so one is always the template's markup)."""
    keep = text[: limit - len(_ELLIPSIS)]
    if escape != "text":
        m = _OPEN_ENTITY.search(keep)
        if m:
            keep = keep[: m.start()]
        lt = keep.rfind("<")
        if lt > keep.rfind(">"):
            keep = keep[:lt]
    return keep + _ELLIPSIS


class Template:
    """A parsed, checked template: construct at config load, `render` per event.

    Raises `TemplateError` (naming the line) for a syntax error, an unknown filter or
    test, or a variable not in `NAMES` (plus `names`, the extra variables a sink provides,
    e.g. `events` for a digest). `zone` is the time zone of the `localtime` filter.
    """

    __slots__ = ("_template", "escape", "max_length", "names", "source", "zone")

    def __init__(
        self,
        source: str,
        *,
        escape: Escape = "text",
        max_length: int = DEFAULT_MAX_LENGTH,
        zone: str | ZoneInfo = "UTC",
        names: Iterable[str] = (),
    ) -> None:
        if not isinstance(source, str):
            raise TemplateError("expected a template string")
        if escape not in _ESCAPES:
            raise ValueError(f"escape must be one of {', '.join(_ESCAPES)}, not {escape!r}")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError("max_length must be a positive number of characters")
        self.source: str = source
        self.escape: Escape = escape
        self.max_length: int = max_length
        self.zone: ZoneInfo = get_zone(zone)
        self.names: frozenset[str] = NAMES | frozenset(names)
        env = _environment(escape, self.zone)
        try:
            ast = env.parse(source)
            _static_checks(ast, env, self.names)
            self._template = env.from_string(ast)
        except jinja2.TemplateSyntaxError as e:
            # Also unknown filters and tests (TemplateAssertionError).
            raise TemplateError(_at(e.lineno, _one_line(e.message or "syntax error"))) from None
        except RecursionError:
            raise TemplateError("the template is too deeply nested") from None

    def with_zone(self, zone: str | ZoneInfo) -> Template:
        """The same template with `localtime` in another zone (a sink's `timezone` option)."""
        return Template(
            self.source,
            escape=self.escape,
            max_length=self.max_length,
            zone=zone,
            names=self.names - NAMES,
        )

    def render(self, data: Mapping[str, Any]) -> str:
        """The text for `data` (from `template_data`), at most `max_length` characters.

        Raises TemplateError naming the line (an undefined payload key, a sandbox refusal),
        never with the rendered text in it.
        """
        limit = self.max_length
        parts: list[str] = []
        size = 0
        try:
            # jinja2 types it as an Iterator; it is a generator, closed to end a long loop.
            stream = cast("Generator[str, None, None]", self._template.generate(dict(data)))
            try:
                for chunk in stream:
                    parts.append(chunk)
                    size += len(chunk)
                    if size > limit:
                        break  # enough to know it must be cut: a long loop stops here
            finally:
                stream.close()
        except Exception as e:  # noqa: BLE001 - any error in a template is the template's
            message = _render_message(e, data, self.source)
            raise TemplateError(_at(_template_line(e), message)) from None
        out = str("".join(parts))
        return out if len(out) <= limit else _cut(out, limit, self.escape)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Template):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple[str, str, int, str, frozenset[str]]:
        return (self.source, self.escape, self.max_length, self.zone.key, self.names)

    def __repr__(self) -> str:
        return (
            f"Template({_one_line(self.source, 60)!r}, escape={self.escape!r}, "
            f"max_length={self.max_length}, zone={self.zone.key!r})"
        )


# --------------------------------------------------------------------------------------------
# pydantic helpers for a sink's Options


@dataclass(frozen=True, slots=True)
class TemplateSpec:
    """`Annotated[Template, TemplateSpec(escape=..., max_length=...)]`: an option given as a
    string and checked as a template when the config loads; its error names the line.

    A string default is checked too only with `pydantic.Field(default, validate_default=True)`.
    The template's zone is UTC; apply a `timezone` option with `Template.with_zone`.
    """

    escape: Escape = "text"
    max_length: int = DEFAULT_MAX_LENGTH
    names: tuple[str, ...] = ()

    def validate(self, value: Any) -> Template:
        if isinstance(value, Template):
            if (value.escape, value.max_length, value.names) == (
                self.escape,
                self.max_length,
                NAMES | frozenset(self.names),
            ):
                return value
            value = value.source
        if not isinstance(value, str):
            raise ValueError("expected a template string")
        return Template(value, escape=self.escape, max_length=self.max_length, names=self.names)

    def __get_pydantic_core_schema__(
        self, source_type: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return _string_option(self.validate, _template_source)


def _string_option(
    validate: Callable[[Any], Any], serialize: Callable[[Any], Any]
) -> core_schema.CoreSchema:
    """An option written as a string and held as an object (a Template, a ZoneInfo): read
    with `validate`, written back as the string by `serialize`."""
    return core_schema.no_info_plain_validator_function(
        validate,
        json_schema_input_schema=core_schema.str_schema(),
        serialization=core_schema.plain_serializer_function_ser_schema(
            serialize, when_used="always"
        ),
    )


def _template_source(value: Any) -> Any:
    return value.source if isinstance(value, Template) else value


@dataclass(frozen=True, slots=True)
class _ZoneSpec:
    def validate(self, value: Any) -> ZoneInfo:
        return get_zone(value)

    def __get_pydantic_core_schema__(
        self, source_type: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return _string_option(self.validate, _zone_key)


def _zone_key(value: Any) -> Any:
    return value.key if isinstance(value, ZoneInfo) else value


#: A plain-text template option (e-mail text, file contents).
TextTemplate = Annotated[Template, TemplateSpec("text")]
#: An HTML template option (e-mail html).
HtmlTemplate = Annotated[Template, TemplateSpec("html")]
#: A Slack mrkdwn template option.
MrkdwnTemplate = Annotated[Template, TemplateSpec("mrkdwn")]
#: A time zone option: "Europe/Berlin" becomes a ZoneInfo, else ZONE_EXPECTED.
TimeZone = Annotated[ZoneInfo, _ZoneSpec()]
