"""What a plugin author needs to test a sink in a few lines, with voltd's real parts.

    import voltd.testing as vt

    sink = vt.build_sink(TeamsSink, {"webhook_url": "https://..."})   # real option validation
    await vt.check_sink(sink)                 # the contract: errors, no blocking, aclose
    report = await vt.deliver(sink, vt.volt_examples())   # voltd's real delivery worker
    assert len(report.delivered) == 2 and not report.dead

- `build_sink` goes through the same loading as `voltd check` and `voltd serve`: a config file
  is written and loaded, so option errors come back as `ConfigError` naming the file, the sink
  and the key, exactly as an operator would see them.
- `volt_examples()` are Volt's two documented payloads; `make_event` makes realistic others.
- `check_sink` holds a sink to the contract: only `SinkError`s escape, the event loop is never
  blocked, `aclose` is safe to call twice.
- `deliver` runs voltd's delivery worker on a real, temporary SQLite spool and reports what it
  recorded: delivered, dead letters (PermanentError), still pending (RetryableError) or the
  sink disabled (EndpointGone).

The first-party sinks are tested with these.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import trio

from voltd.config import ConfigError
from voltd.events import Event, parse, with_names
from voltd.sink import EndpointGone, Sink, SinkError

__all__ = [
    "ConfigError",
    "DeliveryReport",
    "MemoryState",
    "build_sink",
    "check_sink",
    "deliver",
    "make_body",
    "make_event",
    "volt_examples",
]

#: The numbers the examples and `make_event` use, named as in voltd's demo.
NUMBERS: Mapping[str, str] = {"front-desk": "+15555550123", "sales": "+15555550145"}


def volt_examples() -> list[Event]:
    """Volt's two documented example events (a delivered and a failed outbound SMS), byte for
    byte as the vendor shows them, with the example `[numbers]` names."""
    out = []
    for name in ("finalized-delivered.json", "finalized-failed.json"):
        raw = resources.files("voltd").joinpath("examples", name).read_bytes()
        out.append(_event(raw))
    return out


def make_body(
    *,
    direction: str = "inbound",
    our: str = "+15555550123",
    their: str = "+15555550199",
    status: str = "received",
    event_type: str = "message.received",
    text: str = "hello",
    eid: str | None = None,
    when: float | None = None,
    **payload: Any,
) -> bytes:
    """The request body of a realistic messaging event, as Volt sends it (compact JSON);
    extra keyword arguments become payload fields. For tests that POST or store raw bodies."""
    frm, to = (their, our) if direction == "inbound" else (our, their)
    body = {
        "message_app_id": "40318006-1cae-4997-acbc-fe9a4aadb7dd",
        "id": "rf_" + uuid.uuid4().hex[:20],
        "to_number": to,
        "from_number": frm,
        "type": "SMS",
        "text": text,
        "status": status,
        "event_type": event_type,
        "direction": direction,
        "carrier_name": "T-MOBILE USA, INC.",
        "error_code": None,
        "media": [],
        "parts": 1,
        **payload,
    }
    envelope = {
        "type": "messaging",
        "id": eid or "rfw_" + uuid.uuid4().hex,
        "payload": body,
        "time": int(time.time()) if when is None else when,
    }
    return json.dumps(envelope, separators=(",", ":")).encode()


def make_event(**fields: Any) -> Event:
    """A realistic messaging event (see `make_body` for the fields you may set)."""
    return _event(make_body(**fields))


def _event(raw: bytes) -> Event:
    event = parse(raw)
    if not isinstance(event, Event):
        raise ValueError("not a messaging envelope")
    return with_names(event, {number: name for name, number in NUMBERS.items()})


class MemoryState:
    """A `voltd.state` backend in memory, for sinks built by `build_sink`."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], str] = {}

    async def state_get(self, sink: str, key: str) -> str | None:
        return self.values.get((sink, key))

    async def state_put(self, sink: str, key: str, value: str | None) -> None:
        if value is None:
            self.values.pop((sink, key), None)
        else:
            self.values[(sink, key)] = value


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, Sequence):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }"
    raise TypeError(f"cannot write {type(value).__name__} as a TOML value")


def build_sink(
    sink_type: str | type[Sink],
    options: Mapping[str, Any] | None = None,
    *,
    name: str = "test",
    config_dir: str | Path | None = None,
    numbers: Mapping[str, str] | None = None,
) -> Sink:
    """Build a sink as voltd would: options written into a config file's `[sinks.NAME]`
    table and loaded with the real loader (secrets like `${env:X}` resolve). `sink_type` is
    an installed type's name or a `Sink` subclass (registered for this call only).

    Raises `ConfigError` with the operator-facing problems when the options are wrong.
    """
    from voltd.daemon import configure
    from voltd.keys import generate_signing_pair
    from voltd.plugins import Origin, SinkTypeInfo, _sink_class_problem, build_sinks

    directory = Path(config_dir or tempfile.mkdtemp(prefix="voltd-test-"))
    keys = directory / "keys"
    if not (keys / "volt_id_rsa.pub").exists():
        keys.mkdir(parents=True, exist_ok=True)
        generate_signing_pair(keys)
    type_name = sink_type if isinstance(sink_type, str) else f"test-{sink_type.__name__}"
    lines = ["[verify]", 'public_keys = ["keys/volt_id_rsa.pub"]', "", "[numbers]"]
    for number_name, number in (NUMBERS if numbers is None else numbers).items():
        lines.append(f"{json.dumps(number_name)} = {json.dumps(number)}")
    lines += ["", f"[sinks.{json.dumps(name)}]", f"type = {json.dumps(type_name)}"]
    lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in (options or {}).items()]
    path = directory / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if isinstance(sink_type, str):
        sink = configure(path).sinks[name]
    else:
        from voltd.config import load
        from voltd.plugins import discover

        config = load(path)
        registry = discover(config.plugin_dirs)
        why = _sink_class_problem(sink_type)
        if why is not None:
            raise ConfigError([f"{sink_type.__qualname__}: {why}"])
        registry.sink_types[type_name] = SinkTypeInfo(
            type_name, sink_type, Origin(type_name, path="voltd.testing")
        )
        sink = build_sinks(config, registry)[name]
    sink.context.state._attach(MemoryState())
    return sink


@dataclass
class DeliveryReport:
    """What voltd's delivery worker recorded for each event (the events given, in order)."""

    delivered: list[Event] = field(default_factory=list)
    dead: list[tuple[Event, str]] = field(default_factory=list)  # with the error recorded
    pending: list[tuple[Event, str]] = field(default_factory=list)  # will retry; last error
    disabled: str | None = None  # why, when the sink said its endpoint is gone


async def deliver(
    sink: Sink,
    events: Sequence[Event],
    *,
    name: str = "test",
    wait: float = 10.0,
) -> DeliveryReport:
    """Store `events` in a temporary real spool and let voltd's delivery worker send them to
    `sink` until each is delivered or dead, the sink pauses after a retryable failure or is
    disabled, or `wait` seconds pass. The sink is not closed."""
    from voltd.delivery import DeliveryOptions, RetryPolicy, SinkWorker
    from voltd.spool import Spool, SpoolDB, State

    options = DeliveryOptions(linger=0.0, idle_poll=0.05, attempt_timeout=wait)
    policy = RetryPolicy(initial=3600.0, max_delay=3600.0, give_up_after=86400.0)
    with tempfile.TemporaryDirectory(prefix="voltd-deliver-") as tmp:
        path = Path(tmp) / "spool.db"
        db = SpoolDB(path)
        stored = db.insert([(e, [name]) for e in events])
        db.close()
        seqs = {s.seq: e for s, e in zip(stored, events, strict=True) if s.seq is not None}
        spool = Spool(path)
        worker = SinkWorker(name, sink, spool, policy, options, names=sink.context.numbers)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(spool.writer)
                await nursery.start(worker.run)
                with trio.move_on_after(wait):
                    while True:
                        await trio.sleep(0.02)
                        counts = (await spool.status()).get(name, {})
                        settled = not counts.get("pending")
                        if settled or worker.failures or worker.disabled:
                            break
                worker.stopping = True
                await spool.flush()  # what the worker queued, committed
                nursery.cancel_scope.cancel()
            rows = spool._rdb.conn.execute(
                "SELECT event_seq, state, last_error FROM deliveries WHERE sink = ?"
                " ORDER BY event_seq",
                (name,),
            ).fetchall()
        finally:
            spool.close()
    report = DeliveryReport(disabled=worker.disabled)
    for seq, state, error in rows:
        event = seqs[seq]
        if state == State.DELIVERED:
            report.delivered.append(event)
        elif state == State.DEAD:
            report.dead.append((event, error or ""))
        else:
            report.pending.append((event, error or ""))
    return report


async def check_sink(sink: Sink, events: Sequence[Event] | None = None) -> None:
    """Hold a built sink to the plugin contract; AssertionError says what is wrong.

    - its `Options` refuse unknown keys (a typo in a config must not pass silently);
    - `send` (and `send_batch`, if it has one) return or raise a `SinkError` for each of
      `events` (default: Volt's examples), never another exception;
    - no call blocks the event loop for 100 ms or more (blocking work belongs in
      `trio.to_thread.run_sync`);
    - `aclose()` finishes within 5 s and may be called twice.
    """
    events = list(events) if events is not None else volt_examples()
    options_model = getattr(sink, "Options", None)
    if options_model is not None:
        extra = options_model.model_config.get("extra")
        assert extra == "forbid", (
            f"{type(sink).__name__}.Options must refuse unknown keys: subclass voltd.SinkOptions"
        )
    calls: list[tuple[str, Any]] = [("send", e) for e in events]
    if sink.takes_batches:
        calls.append(("send_batch", events))
    for method, arg in calls:
        what = f"{type(sink).__name__}.{method}"
        try:
            await _not_blocking(what, getattr(sink, method)(arg))
        except EndpointGone:
            break  # disabled: nothing more would be attempted
        except SinkError:
            pass
        except AssertionError:
            raise
        except Exception as exc:
            raise AssertionError(
                f"{what} raised {type(exc).__name__}: {exc}; a sink must raise "
                "voltd.RetryableError, voltd.PermanentError or voltd.EndpointGone"
            ) from exc
    for _ in range(2):
        with trio.move_on_after(5) as scope:
            await _not_blocking(f"{type(sink).__name__}.aclose", sink.aclose())
        assert not scope.cancelled_caught, f"{type(sink).__name__}.aclose took longer than 5 s"


async def _not_blocking(what: str, call: Any, limit: float = 0.1) -> Any:
    """Await `call` while a heartbeat task measures the longest stretch the loop was held."""
    longest = 0.0
    result: Any = None
    error: BaseException | None = None

    async def beat(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal longest
        last = time.monotonic()
        task_status.started()
        while True:
            await trio.sleep(0.01)
            now = time.monotonic()
            longest = max(longest, now - last - 0.01)
            last = now

    async with trio.open_nursery() as nursery:
        await nursery.start(beat)  # beating before the call starts
        try:
            result = await call
        except Exception as exc:  # noqa: BLE001 - re-raised below, outside the nursery
            error = exc
        await trio.sleep(0.02)  # let the heartbeat see the end of a blocking stretch
        nursery.cancel_scope.cancel()
    assert longest < limit, (
        f"{what} blocked the event loop for {longest * 1000:.0f} ms: run blocking calls with "
        "trio.to_thread.run_sync"
    )
    if error is not None:
        raise error
    return result
