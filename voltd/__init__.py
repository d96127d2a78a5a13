"""voltd: verify, route, spool and deliver Volt SMS webhooks.

What a plugin author needs is importable from here.
"""

from voltd.hookspecs import hookimpl
from voltd.sink import (
    PermanentError,
    RetryableError,
    SinkContext,
    SinkError,
    SinkOptions,
)

__version__ = "0.1.0"
__all__ = [
    "PermanentError",
    "RetryableError",
    "SinkContext",
    "SinkError",
    "SinkOptions",
    "__version__",
    "hookimpl",
]
