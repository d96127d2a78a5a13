"""The hooks a voltd plugin can implement. They run once, at start-up, never per event."""

from __future__ import annotations

from collections.abc import Callable

import pluggy

PROJECT = "voltd"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: register(name, cls): make sink type `name` (the `type = "..."` of a `[sinks.X]` table)
#: available, built by `cls` (see `voltd.sink.SinkType`).
RegisterSinkType = Callable[[str, type], None]


@hookspec
def register_sink_types(register: RegisterSinkType) -> None:
    """Register the sink types this plugin provides by calling `register(name, cls)`."""
