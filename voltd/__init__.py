"""voltd: verify, route, spool and deliver Volt SMS webhooks.

This module is the plugin API: what a sink plugin imports comes from here and from the
documented modules `voltd.templates`, `voltd.http`, `voltd.state` and `voltd.testing`
(docs/writing-plugins.md). Every other module is internal and may change in any release.
"""

from voltd.events import PATH_FIELDS, Event
from voltd.hookspecs import hookimpl
from voltd.sink import (
    PLUGIN_API_VERSION,
    Duration,
    EndpointGone,
    PermanentError,
    Register,
    RetryableError,
    Secret,
    Sink,
    SinkContext,
    SinkError,
    SinkOptions,
    require_api,
)

#: voltd's release; plugins check the plugin API with `require_api`, not this.
__version__ = "0.1.0"
__all__ = [
    "PATH_FIELDS",
    "PLUGIN_API_VERSION",
    "Duration",
    "EndpointGone",
    "Event",
    "PermanentError",
    "Register",
    "RetryableError",
    "Secret",
    "Sink",
    "SinkContext",
    "SinkError",
    "SinkOptions",
    "__version__",
    "hookimpl",
    "require_api",
]
