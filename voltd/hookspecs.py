"""The hooks a voltd plugin can implement. They run at start-up and on reload, never per event.

A plugin is a module (from the `voltd` entry-point group, or a `*.py` file in `plugin_dirs`)
with functions marked `@voltd.hookimpl` and named after a hook below. A misspelt hook name is
an error at load time, not silence.
"""

from __future__ import annotations

import pluggy

from voltd.sink import Register

PROJECT = "voltd"
hookspec = pluggy.HookspecMarker(PROJECT)
#: Mark a plugin's hook implementations: `@voltd.hookimpl`.
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_sink_types(register: Register) -> None:
    """Register the sink types this plugin provides: `register("teams", TeamsSink)`, where
    `TeamsSink` subclasses `voltd.Sink`. The name is the `type = "..."` of a `[sinks.X]`
    table; a name another plugin already took is refused and reported."""
