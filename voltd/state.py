"""A small durable key-value store per sink, kept in the spool.

Some sinks need to remember things across events and restarts: the Slack thread of a
conversation, the last status seen for a message, the Message-ID a mail thread replies to.
`SinkContext.state` gives each sink its own namespace. Writes are committed with the spool's
next group commit, before any delivery outcome recorded after them, so after a crash the state
is never newer than the deliveries it describes.

Values are strings (store JSON for more); keys at most 200 characters, values at most 64 KiB.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["MAX_KEY", "MAX_VALUE", "SinkState", "StateUnavailable"]

#: The longest key, in characters.
MAX_KEY = 200
#: The longest value, in characters.
MAX_VALUE = 64 * 1024


class StateUnavailable(RuntimeError):
    """The state was used outside a running daemon (e.g. in a sink's `__init__`, which also
    runs for `voltd check`): use it from `send`."""


class StateBackend(Protocol):
    """Where values live: the daemon's spool, or memory in `voltd.testing`."""

    async def state_get(self, sink: str, key: str) -> str | None: ...

    async def state_put(self, sink: str, key: str, value: str | None) -> None: ...


class SinkState:
    """One sink's durable key-value store (`context.state`)."""

    def __init__(self, sink: str, backend: StateBackend | None = None) -> None:
        self.sink = sink
        self._backend = backend

    def _attach(self, backend: StateBackend) -> None:
        """The daemon connects the store to its spool once that is open."""
        self._backend = backend

    def _use(self, key: str) -> StateBackend:
        if not isinstance(key, str) or not key or len(key) > MAX_KEY:
            raise ValueError(f"state keys are strings of 1 to {MAX_KEY} characters")
        if self._backend is None:
            raise StateUnavailable(
                f"sink {self.sink!r}: its state is only available while the daemon runs"
            )
        return self._backend

    async def get(self, key: str) -> str | None:
        """The value stored under `key`, or None."""
        return await self._use(key).state_get(self.sink, key)

    async def set(self, key: str, value: str) -> None:
        """Store `value` under `key` (durable once this returns)."""
        if not isinstance(value, str) or len(value) > MAX_VALUE:
            raise ValueError(f"state values are strings of at most {MAX_VALUE} characters")
        await self._use(key).state_put(self.sink, key, value)

    async def delete(self, key: str) -> None:
        """Forget `key` (no error when it was not set)."""
        await self._use(key).state_put(self.sink, key, None)
