"""What a sink is: the contract between voltd's delivery stage and every sink plugin.

A sink type is a `Sink` subclass registered under a name (see `hookspecs.register_sink_types`).
voltd validates the `[sinks.NAME]` table against the class's `Options` (a pydantic model) before
the daemon starts, then builds one instance per configured sink. Per event, delivery only ever
calls plain async methods on that instance: `send`, or `send_batch` where the sink has one.

Everything here is part of the stable plugin API (see `PLUGIN_API_VERSION`).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Protocol

import pydantic

from voltd.state import SinkState

if TYPE_CHECKING:
    from voltd.events import Event

#: The plugin API's version, (major, minor). A new minor adds names and optional parts; only a
#: new major removes or changes what a plugin may rely on. Check it with `require_api`.
PLUGIN_API_VERSION: tuple[int, int] = (1, 1)


class SinkError(Exception):
    """Base of the errors a sink raises; the message is logged and kept with the delivery,
    so it must never hold a secret (a URL with a token, a password)."""


class RetryableError(SinkError):
    """Delivery failed for now (network, 5xx, 429, disk busy): try again after a backoff.

    `retry_after` (seconds) is what the other side asked for (HTTP `Retry-After`): the whole
    sink waits at least that long, capped by the retry policy's `max_delay`.
    """

    def __init__(self, message: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(SinkError):
    """This event can never be delivered (rejected as invalid): dead-letter it at once."""


class EndpointGone(SinkError):
    """The endpoint itself is gone (HTTP 410, a Slack webhook revoked, SMTP auth refused).

    The sink is disabled: nothing more is attempted until a reload, and its events wait in
    the spool; they are never dead-lettered while it is disabled.
    """


def _seconds(value: Any) -> float:
    from voltd.config.values import parse_duration  # the config's own reading of durations

    return parse_duration(value)


#: An option holding a duration, written like the config's others ("200ms", "15s", "10m",
#: "1h30m", or a number of seconds); the sink gets seconds as a float.
Duration = Annotated[float, pydantic.BeforeValidator(_seconds)]


class Secret:
    """Marks an option whose value is a secret even when written into the config as it is
    (a webhook URL with its token, a password, a signing secret): `voltd check` shows it as
    `***`. Values from `${env:}`/`${file:}` are hidden anyway. Use it as metadata::

        webhook_url: Annotated[str, voltd.Secret()] = pydantic.Field(description=...)
    """

    def __repr__(self) -> str:
        return "Secret()"


def is_secret_option(model: type[pydantic.BaseModel], name: str) -> bool:
    """Whether option `name` of an Options model is marked `Secret`."""
    info = model.model_fields.get(name)
    if info is None:
        for candidate in model.model_fields.values():
            if candidate.alias == name:
                info = candidate
    return info is not None and any(isinstance(m, Secret) for m in info.metadata)


class SinkOptions(pydantic.BaseModel):
    """Base for a sink's options: unknown keys are errors, so typos never pass silently.

    Describe each option with `pydantic.Field(description=...)`: `voltd plugins` shows it.
    Defaults are validated like given values, so a default template is checked too.
    """

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, validate_default=True)


@dataclass(frozen=True, slots=True)
class SinkContext:
    """What a sink may know about its surroundings."""

    name: str  #: the configured sink name, e.g. "archive"
    config_dir: Path  #: relative paths in options are relative to this
    #: our numbers' names from `[numbers]`, E.164 number -> name
    numbers: Mapping[str, str] = field(default_factory=dict)
    #: a small durable key-value store of this sink's own (see `voltd.state.SinkState`)
    state: SinkState = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.state is None:  # a context made by hand (tests): its own, unattached store
            object.__setattr__(self, "state", SinkState(self.name))

    def path(self, text: str | Path) -> Path:
        """An option's path, relative to the configuration file's directory."""
        return self.config_dir / Path(text).expanduser()


class Sink(abc.ABC):
    """Base class of every sink. Subclass it, set `Options`, implement `send`.

    voltd calls, per event, only these; everything optional has a default here:

    - `async send(event)`: deliver one event. Return normally on success; raise
      `RetryableError` (try again later), `PermanentError` (dead letter now) or
      `EndpointGone` (disable the sink). Any other exception counts as retryable and is logged
      as a plugin bug.
    - `async send_batch(events)`: optional. Deliver several events at once, all or nothing.
      When it raises `PermanentError`, voltd retries those events one by one with `send`, so
      one bad event cannot dead-letter its neighbours.
    - `max_batch`: the most events one `send_batch` call gets.
    - `allows_concurrency`, `default_rate`: what the `concurrency` and `rate` delivery
      settings may be, and the rate without one.
    - `batch_window` (API 1.1): collect events for this long before one `send_batch` (a
      digest), durably: they wait in the spool, not in the sink.
    - `async aclose()`: release what `__init__` opened. It runs at shutdown and when a reload
      replaces the sink; it is given a few seconds, and a failure is logged, never fatal.

    `send` must not block the event loop: run blocking calls with
    `await trio.to_thread.run_sync(fn, limiter=...)`. A sink that stalls the loop is logged.
    """

    #: The options model: the `[sinks.NAME]` table, less `type`.
    Options: ClassVar[type[SinkOptions]] = SinkOptions
    #: The most events one `send_batch` gets (a sink whose cost is per call wants more);
    #: None: voltd's default (256).
    max_batch: int | None = None
    #: Whether several `send` calls may run at once (the `concurrency` delivery setting).
    #: Leave False when the sink keeps order or state between calls (a file, a digest).
    allows_concurrency: ClassVar[bool] = False
    #: The `rate` used when the config sets none, e.g. "1/s" for a chat webhook.
    default_rate: ClassVar[str | None] = None
    #: Seconds (API 1.1): when above 0, voltd calls `send_batch` (or `send` for a single
    #: event) only once the oldest waiting event has waited this long since it arrived, with
    #: everything waiting then (up to `max_batch`; a full batch goes at once). The events wait
    #: in the spool meanwhile, so a restart neither loses nor re-collects them: the window
    #: runs from their arrival. An instance attribute, so an option can set it (a digest).
    batch_window: float = 0.0

    def __init__(self, options: Any, context: SinkContext) -> None:
        self.options = options
        self.context = context

    @abc.abstractmethod
    async def send(self, event: Event) -> None:
        """Deliver one event, or raise a `SinkError` saying why not."""

    async def send_batch(self, events: Sequence[Event]) -> None:
        """Deliver all of `events` or none (optional; see the class docstring)."""
        raise NotImplementedError

    async def aclose(self) -> None:  # noqa: B027 - optional, nothing to close by default
        """Release resources (optional)."""

    @property
    def takes_batches(self) -> bool:
        """Whether this sink implements `send_batch`."""
        return type(self).send_batch is not Sink.send_batch


class Register(Protocol):
    """The `register` a `register_sink_types` hook is called with."""

    def __call__(self, name: str, cls: type[Sink]) -> None: ...


def require_api(major: int, minor: int = 0) -> None:
    """Fail a plugin's import, with a clear message, on a voltd whose plugin API is too old or
    of another major version: `voltd.require_api(1, 0)` at the top of a plugin module."""
    have = PLUGIN_API_VERSION
    if have[0] != major or have[1] < minor:
        raise ImportError(
            f"this plugin needs voltd plugin API {major}.{minor} (compatible releases), "
            f"but this voltd has {have[0]}.{have[1]}"
        )
