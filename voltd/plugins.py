"""Plugin discovery: which sink types exist, where each came from, and what failed to load.

pluggy's own `load_setuptools_entrypoints` stops at the first broken plugin and lets two
distributions register the same name silently. We load each entry point ourselves, one at a
time, and keep a record of every failure and every collision, named by plugin and
distribution, so `voltd plugins` and `voltd check` can show them and `serve` can refuse to
start when a configured sink depends on a broken one.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import sys
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy
import pydantic

from voltd import hookspecs
from voltd.sink import Sink, SinkContext

log = logging.getLogger("voltd.plugins")

ENTRY_POINT_GROUP = "voltd"
OUR_DISTRIBUTION = "voltd"


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
    cls: type
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

    def problems_for(self, type_name: str) -> list[Problem]:
        return [p for p in self.problems if type_name in p.sink_types]


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


def discover(plugin_dirs: Iterable[Path] = ()) -> Registry:
    """Load every entry point of group `voltd` and every `*.py` in `plugin_dirs`."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    reg = Registry(pm)

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
        reg.origins[origin.plugin] = origin

    # In load order (ours first) whatever tryfirst/trylast a plugin declares: pluggy sorts its
    # hook implementations by those markers, which would let a third party claim a name first.
    order = {name: i for i, name in enumerate(reg.origins)}
    impls = pm.hook.register_sink_types.get_hookimpls()
    for impl in sorted(impls, key=lambda i: order[i.plugin_name]):
        origin = reg.origins[impl.plugin_name]
        registered: list[str] = []

        def register(name: str, cls: type, _origin: Origin = origin, _r=registered) -> None:
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


def _register_sink_type(reg: Registry, name: str, cls: type, origin: Origin) -> None:
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
    options = getattr(cls, "Options", None)
    if not (isinstance(options, type) and issubclass(options, pydantic.BaseModel)):
        reg.problems.append(
            Problem(origin, f"sink type {name!r}: class needs an `Options` pydantic model", (name,))
        )
        return
    if not callable(getattr(cls, "send", None)):
        reg.problems.append(
            Problem(origin, f"sink type {name!r}: class needs an async `send(event)`", (name,))
        )
        return
    reg.sink_types[name] = SinkTypeInfo(name, cls, origin)


def configure(path: str | Path) -> tuple[Any, Registry, dict[str, Sink]]:
    """The configuration file, the plugins it can use and its sinks built: where `serve`,
    `check`, a SIGHUP reload and the demo all start. Raises ConfigError with every problem."""
    from voltd.config import load

    config = load(path)
    registry = discover(config.plugin_dirs)
    return config, registry, build_sinks(config, registry)


def build_sinks(config: Any, registry: Registry) -> dict[str, Sink]:
    """Validate every configured sink's options and build it; all problems at once.

    Raises config.ConfigError naming the file, the key and what was expected.
    """
    from voltd.config import ConfigError, format_key_path, validation_problems

    problems: list[str] = []
    sinks: dict[str, Sink] = {}
    src = config.source_name
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
        try:
            sinks[name] = info.cls(options, SinkContext(name, config.source.parent))
        except (ValueError, OSError) as exc:
            problems.append(f"{src}: {key}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a plugin bug is a config problem, not a traceback
            problems.append(f"{src}: {key}: sink {sc.type!r} failed to start: {_short_error(exc)}")
    if problems:
        raise ConfigError(problems)
    return sinks
