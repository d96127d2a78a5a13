"""What a sink is: the small contract between voltd's delivery stage and every sink plugin.

A sink type is a class registered under a name (see `hookspecs.register_sink_types`). voltd
validates the `[sinks.NAME]` table against the class's `Options` (a pydantic model) before the
daemon starts, then builds one instance per configured sink. Per event, delivery only ever
calls plain async methods on that instance.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import pydantic

if TYPE_CHECKING:
    from voltd.events import Event


class SinkError(Exception):
    """Base of the errors a sink raises; the message is logged and kept with the delivery."""


class RetryableError(SinkError):
    """Delivery failed for now (network, 5xx, disk busy): try again after a backoff."""


class PermanentError(SinkError):
    """Delivery can never succeed (rejected as invalid): dead-letter it at once."""


class SinkOptions(pydantic.BaseModel):
    """Base for a sink's options: unknown keys are errors, so typos never pass silently."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, slots=True)
class SinkContext:
    """What a sink may know about its surroundings."""

    name: str  # the configured sink name, e.g. "archive"
    config_dir: Path  # relative paths in options are relative to this


@runtime_checkable
class Sink(Protocol):
    """A built sink. `send_batch`, `max_batch` and `aclose` are optional extras.

    - `async send(event)`: deliver one event; return normally on success, raise
      RetryableError or PermanentError otherwise (any other exception counts as retryable).
    - `async send_batch(events)`: deliver several at once, all or nothing. When it raises
      PermanentError voltd retries the events one by one with `send`, so one bad event cannot
      dead-letter its neighbours.
    - `max_batch` (int attribute): the most events one `send_batch` call should get (default
      256); a sink whose cost is per call (one write and fsync) drains a backlog faster with more.
    - `async aclose()`: release resources at shutdown.
    """

    async def send(self, event: Event) -> None: ...


class SinkType(Protocol):
    """The class a plugin registers: `Options` validates config; the constructor builds."""

    Options: ClassVar[type[pydantic.BaseModel]]

    def __call__(self, options: Any, context: SinkContext) -> Sink: ...
