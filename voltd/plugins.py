"""Plugin discovery and sink building: which sink types exist, where each came from, what
failed to load, and the configured sinks built from them.

pluggy's own `load_setuptools_entrypoints` stops at the first broken plugin and lets two
distributions register the same name silently. We load each entry point ourselves, one at a
time, and keep a record of every failure and every collision, named by plugin and
distribution, so `voltd plugins` and `voltd check` can show them and `serve` can refuse to
start when a configured sink depends on a broken one. Mistakes a plugin author makes are
caught here, at load time, never per event: a misspelt hook, a synchronous `send`, a class
without `Options`, a name another plugin took.

`VOLTD_DISABLE_PLUGINS=name,...` blocks plugins by name (entry-point name or file stem).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
import logging
import os
import sys
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy
import pydantic

from voltd import hookspecs
from voltd.sink import Sink, SinkContext
from voltd.state import SinkState

if TYPE_CHECKING:
    from voltd.config import Config
    from voltd.events import Event

log = logging.getLogger("voltd.plugins")

ENTRY_POINT_GROUP = "voltd"
OUR_DISTRIBUTION = "voltd"
DISABLE_ENV = "VOLTD_DISABLE_PLUGINS"


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a plugin came from: an entry point of a distribution, or a file."""

    plugin: str
    distribution: str | None = None
    version: str | None = None
    path: str | None = None

    def __str__(self) -> str:
        if self.distribution:
            return f"plugin {self.plugin!r} from {self.distribution} {self.version or ''}".strip()
        return f"plugin {self.plugin!r} from {self.path}"


@dataclass(frozen=True, slots=True)
class SinkTypeInfo:
    name: str
    cls: Any  # a voltd.Sink subclass, or a duck-typed one of voltd 0.1 (see _Adapted)
    origin: Origin


@dataclass(frozen=True, slots=True)
class Problem:
    """A plugin that failed to load or register, or a name claimed twice."""

    origin: Origin
    message: str
    sink_types: tuple[str, ...] = ()  # the sink type names this problem concerns, if known

    def __str__(self) -> str:
        return f"{self.origin}: {self.message}"


@dataclass
class Registry:
    """The outcome of discovery. The plugin manager is the one piece of global-ish state."""

    pm: pluggy.PluginManager
    sink_types: dict[str, SinkTypeInfo] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    origins: dict[str, Origin] = field(default_factory=dict)  # plugin name -> origin
    blocked: list[Origin] = field(default_factory=list)  # by VOLTD_DISABLE_PLUGINS

    def problems_for(self, type_name: str) -> list[Problem]:
        return [p for p in self.problems if type_name in p.sink_types]


def disabled_plugins(environ: Mapping[str, str] | None = None) -> set[str]:
    """The plugin names `VOLTD_DISABLE_PLUGINS` blocks (comma or space separated)."""
    text = (os.environ if environ is None else environ).get(DISABLE_ENV, "")
    return {name for name in text.replace(",", " ").split() if name}


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    eps = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))

    # Ours first, so a third-party name collision is reported against the third party.
    def key(ep: importlib.metadata.EntryPoint) -> tuple[int, str]:
        dist = ep.dist.name if ep.dist else ""
        return (0 if dist == OUR_DISTRIBUTION else 1, ep.name)

    return sorted(eps, key=key)


def _short_error(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def discover(
    plugin_dirs: Iterable[Path] = (), *, disabled: Iterable[str] | None = None
) -> Registry:
    """Load every entry point of group `voltd` and every `*.py` in `plugin_dirs`, except the
    plugins named in `disabled` (default: from VOLTD_DISABLE_PLUGINS)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    reg = Registry(pm)
    blocked = disabled_plugins() if disabled is None else set(disabled)

    candidates: list[tuple[Origin, Any]] = []
    for ep in _entry_points():
        dist = ep.dist
        origin = Origin(ep.name, dist.name if dist else "?", dist.version if dist else None)
        candidates.append((origin, ep.load))
    for directory in plugin_dirs:
        for path in sorted(Path(directory).glob("*.py")):
            origin = Origin(path.stem, path=str(path))
            candidates.append((origin, lambda p=path: _load_file(p)))

    for origin, load in candidates:
        if origin.plugin in blocked:
            pm.set_blocked(origin.plugin)
            reg.blocked.append(origin)
            continue
        if origin.plugin in reg.origins:
            reg.problems.append(
                Problem(
                    origin,
                    f"plugin name {origin.plugin!r} is already taken by "
                    f"{reg.origins[origin.plugin]}; this one is ignored",
                )
            )
            continue
        try:
            module = load()
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - reported, not fatal
            reg.problems.append(Problem(origin, f"failed to import: {_short_error(exc)}"))
            continue
        try:
            pm.register(module, name=origin.plugin)
        except Exception as exc:  # noqa: BLE001 - bad hook signatures and the like
            reg.problems.append(Problem(origin, f"is not a valid voltd plugin: {exc}"))
            continue
        try:
            # A hook implementation whose name matches no hook (a typo) is an error, not
            # silence: everything registered before passed, so it is this plugin's.
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            pm.unregister(module)
            reg.problems.append(Problem(origin, f"is not a valid voltd plugin: {exc}"))
            continue
        if not pm.get_hookcallers(module):
            pm.unregister(module)
            reg.problems.append(
                Problem(
                    origin,
                    "implements no voltd hook: expected a function register_sink_types "
                    "decorated with @voltd.hookimpl",
                )
            )
            continue
        reg.origins[origin.plugin] = origin

    # In load order (ours first) whatever tryfirst/trylast a plugin declares: pluggy sorts its
    # hook implementations by those markers, which would let a third party claim a name first.
    order = {name: i for i, name in enumerate(reg.origins)}
    impls = pm.hook.register_sink_types.get_hookimpls()
    for impl in sorted(impls, key=lambda i: order[i.plugin_name]):
        origin = reg.origins[impl.plugin_name]
        registered: list[str] = []

        def register(
            name: str, cls: type[Sink], _origin: Origin = origin, _r: list[str] = registered
        ) -> None:
            _r.append(name)
            _register_sink_type(reg, name, cls, _origin)

        try:
            impl.function(register=register)
        except Exception as exc:  # noqa: BLE001 - one broken hook must not stop the others
            reg.problems.append(
                Problem(
                    origin, f"register_sink_types failed: {_short_error(exc)}", tuple(registered)
                )
            )
    return reg


def _load_file(path: Path) -> ModuleType:
    name = f"voltd_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _register_sink_type(reg: Registry, name: str, cls: Any, origin: Origin) -> None:
    if not isinstance(name, str) or not name:
        reg.problems.append(Problem(origin, f"registered a sink type with a bad name {name!r}"))
        return
    if name in reg.sink_types:
        other = reg.sink_types[name].origin
        reg.problems.append(
            Problem(
                origin,
                f"sink type {name!r} is already provided by {other}; this one is ignored",
                (name,),
            )
        )
        return
    why = _sink_class_problem(cls)
    if why is not None:
        reg.problems.append(Problem(origin, f"sink type {name!r}: {why}", (name,)))
        return
    reg.sink_types[name] = SinkTypeInfo(name, cls, origin)


def _sink_class_problem(cls: Any) -> str | None:
    """Why `cls` cannot be a sink type, or None. A `voltd.Sink` subclass is the contract;
    a class with the same methods that does not subclass it (written for voltd 0.1) is
    accepted too, and adapted when built."""
    if not isinstance(cls, type):
        return f"expected a class, got {type(cls).__name__}"
    options = getattr(cls, "Options", None)
    if not (isinstance(options, type) and issubclass(options, pydantic.BaseModel)):
        return "class needs an `Options` pydantic model (subclass voltd.SinkOptions)"
    send = getattr(cls, "send", None)
    if not callable(send):
        return "class needs an async `send(event)`"
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        return f"class does not implement {missing}"
    for method in ("send", "send_batch", "aclose"):
        fn = getattr(cls, method, None)
        if fn is not None and not inspect.iscoroutinefunction(fn):
            return (
                f"`{method}` must be `async def`: a synchronous one would block every other "
                "sink and ingest (run blocking code with trio.to_thread.run_sync)"
            )
    return None


class _Adapted(Sink):
    """A sink class written against voltd 0.1's duck-typed contract, seen as a `Sink`."""

    def __init__(self, inner: Any, context: SinkContext) -> None:
        super().__init__(getattr(inner, "options", None), context)
        self.inner = inner
        self.max_batch = getattr(inner, "max_batch", None) or None

    async def send(self, event: Event) -> None:
        await self.inner.send(event)

    async def send_batch(self, events: Sequence[Event]) -> None:
        await self.inner.send_batch(events)

    async def aclose(self) -> None:
        close = getattr(self.inner, "aclose", None)
        if close is not None:
            await close()

    @property
    def takes_batches(self) -> bool:
        return hasattr(self.inner, "send_batch")


def build_sinks(config: Config, registry: Registry) -> dict[str, Sink]:
    """Validate every configured sink's options and build it; all problems at once.

    Raises config.ConfigError naming the file, the key and what was expected.
    """
    from voltd.config import ConfigError, format_key_path, validation_problems

    problems: list[str] = []
    sinks: dict[str, Sink] = {}
    src = config.source_name
    names = number_names(config)
    for name, sc in config.sinks.items():
        key = format_key_path(("sinks", name))  # quoted as config.load quotes it: sinks."a.b"
        info = registry.sink_types.get(sc.type)
        broken = registry.problems_for(sc.type)
        if info is None and not broken:
            # A plugin that failed before registering anything may be the one meant here.
            broken = [p for p in registry.problems if not p.sink_types]
        elif info is not None:
            # Only the providing plugin's own failures count, not a rival ignored for the name.
            broken = [p for p in broken if p.origin == info.origin]
        if info is None:
            known = ", ".join(sorted(registry.sink_types)) or "none"
            detail = "; ".join(str(p) for p in broken)
            if registry.blocked:
                off = ", ".join(repr(o.plugin) for o in registry.blocked)
                detail = "; ".join(x for x in (detail, f"disabled by {DISABLE_ENV}: {off}") if x)
            why = f" ({detail})" if detail else ""
            problems.append(
                f"{src}: {key}.type: unknown sink type {sc.type!r}{why} (available: {known})"
            )
            continue
        if broken:
            problems.extend(f"{src}: {key}.type: {p}" for p in broken)
            continue
        try:
            options = info.cls.Options.model_validate(sc.options)
        except pydantic.ValidationError as exc:
            problems.extend(validation_problems(src, key, exc, model=info.cls.Options))
            continue
        if sc.delivery.concurrency > 1 and not getattr(info.cls, "allows_concurrency", False):
            problems.append(
                f"{src}: {key}.concurrency: sink type {sc.type!r} sends one event at a time "
                "(it keeps their order); expected 1"
            )
            continue
        context = SinkContext(name, config.source.parent, names, SinkState(name))
        try:
            built = info.cls(options, context)
            sinks[name] = built if isinstance(built, Sink) else _Adapted(built, context)
        except (ValueError, OSError) as exc:
            problems.append(f"{src}: {key}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a plugin bug is a config problem, not a traceback
            problems.append(f"{src}: {key}: sink {sc.type!r} failed to start: {_short_error(exc)}")
    if problems:
        raise ConfigError(problems)
    return sinks


def number_names(config: Config) -> dict[str, str]:
    """E.164 number -> its `[numbers]` name (the first, if a number has two)."""
    names: dict[str, str] = {}
    for name, number in config.numbers.items():
        names.setdefault(number, name)
    return names


async def close_sink(name: str, sink: Sink, within: float = 5.0) -> None:
    """`sink.aclose()`, bounded and guarded: a plugin that raises or hangs while closing is
    logged, never allowed to take the daemon (or a reload) down with it."""
    import trio

    with trio.move_on_after(within) as scope:
        try:
            await sink.aclose()
        except Exception as exc:  # noqa: BLE001 - closing is best effort
            log.warning("sink %s: aclose failed: %s", name, _short_error(exc))
    if scope.cancelled_caught:
        log.warning("sink %s: aclose did not finish within %gs; abandoned", name, within)
