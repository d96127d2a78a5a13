"""voltd's `file` sink: one JSON line per event, exactly as Volt sent it.

It is registered through the same `voltd` entry-point group as any third-party plugin, so it
is also the example to copy when writing one:

    [sinks.archive]
    type = "file"
    path = "archive/{our_number}/{date}.jsonl"   # relative to the config file
    fsync = true                                   # fsync each file once per batch

Template fields: {our_number}, {their_number}, {from_number}, {to_number}, {direction},
{event}, {status}, {type}, {id}, {message_id}, {date}, {month}, {hour} (dates from the
envelope's `time`, UTC). Values are reduced to file-name-safe characters, so event data can
never step outside the directory; a template with {date} rotates daily.

Each line is the request body byte for byte, except that line breaks (which JSON allows only
between tokens) become spaces, so a pretty-printed body still fits on one line.
"""

from __future__ import annotations

import hashlib
import os
import string
from collections.abc import Sequence
from pathlib import Path

import pydantic
import trio

from voltd import (
    PATH_FIELDS,
    Event,
    Register,
    RetryableError,
    Sink,
    SinkContext,
    SinkOptions,
    hookimpl,
)


class FileSink(Sink):
    """Appends events as JSON lines to files named by a template."""

    class Options(SinkOptions):
        path: str = pydantic.Field(
            description="file path template, relative to the config file, e.g. "
            '"archive/{our_number}/{date}.jsonl"'
        )
        fsync: bool = pydantic.Field(True, description="fsync each file once per batch")

        @pydantic.field_validator("path")
        @classmethod
        def _template(cls, value: str) -> str:
            if not value.strip():
                raise ValueError("expected a file path template, got an empty string")
            if "\x00" in value:
                raise ValueError("expected a file path template without NUL characters")
            try:
                parsed = list(string.Formatter().parse(value))
            except ValueError as exc:
                raise ValueError(
                    f"not a valid path template: {exc}; expected {{field}} placeholders "
                    "(write {{ or }} for a literal brace)"
                ) from None
            for _, name, spec, conv in parsed:
                if name is None:
                    continue
                if name not in PATH_FIELDS or spec or conv:
                    field = "{" + name + "}"
                    shown = field if field.isprintable() else repr(field)  # one line per problem
                    raise ValueError(
                        f"unknown template field {shown} (expected one of: "
                        + ", ".join("{" + f + "}" for f in PATH_FIELDS)
                        + ")"
                    )
            return value

    # One write and one fsync per file per batch: a backlog drains in big batches.
    max_batch = 2048

    def __init__(self, options: Options, context: SinkContext) -> None:
        super().__init__(options, context)
        self.template = options.path
        self.base = context.config_dir
        self.fsync = options.fsync
        self.fields = tuple(
            {n: None for _, n, _, _ in string.Formatter().parse(self.template) if n}
        )
        self._static = str(self.base / self.template)
        self._paths: dict[tuple[str, ...], str] = {}  # rendered paths, by field values
        self._limiter = trio.CapacityLimiter(1)
        #: Files written since this sink started; see `_already_written`.
        self._seen: set[str] = set()

    def path_for(self, event: Event) -> str:
        if not self.fields:
            return self._static
        values = event.path_values(self.fields)
        key = tuple(values.values())
        path = self._paths.get(key)
        if path is None:
            if len(self._paths) > 4096:  # bounded: dates and numbers keep changing
                self._paths.clear()
            rendered = _fit_names(self.template.format_map(values))
            path = self._paths[key] = str(self.base / rendered)
        return path

    async def send(self, event: Event) -> None:
        await self.send_batch([event])

    async def send_batch(self, events: Sequence[Event]) -> None:
        groups: dict[str, list[bytes]] = {}
        for event in events:
            groups.setdefault(self.path_for(event), []).append(event.json_line() + b"\n")
        try:
            await trio.to_thread.run_sync(self._write, groups, limiter=self._limiter)
        except OSError as exc:
            raise RetryableError(f"cannot write: {exc}") from exc

    def _write(self, groups: dict[str, list[bytes]]) -> None:
        for name, lines in groups.items():
            path = Path(name)
            created_dirs = _makedirs(path.parent)
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            try:
                size = os.fstat(fd).st_size
                new = size == 0
                if name not in self._seen:
                    self._seen.add(name)
                    lines = _already_written(fd, size, lines)
                data = b"".join(lines)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if self.fsync and (new or created_dirs):
                for d in [path.parent, *created_dirs]:
                    _fsync_dir(d)


#: How far back the first write to a file after a start looks for lines already there: the
#: most one batch can hold (2048 events of a few KB).
TAIL_CHECK = 16 * 1024 * 1024


def _already_written(fd: int, size: int, lines: list[bytes]) -> list[bytes]:
    """`lines` less those already at the end of the file.

    A crash between writing a batch and the spool recording it sends that batch again after
    the restart; at-least-once allows that, but a file can do better cheaply: the first write
    to each file after a start skips lines its tail already holds. A line is the event's body
    byte for byte, and the spool stores no two events with the same body, so an equal line is
    the same event written before."""
    if size == 0:
        return lines
    start = max(0, size - TAIL_CHECK)
    tail = os.pread(fd, size - start, start)
    if start:
        tail = tail[tail.find(b"\n") + 1 :]  # a whole line at the most
    present = set(tail.splitlines(keepends=True))
    return [line for line in lines if line not in present]


NAME_MAX = 255  # bytes in one file name on Linux file systems


def _fit_names(path: str) -> str:
    """Shorten any file or directory name that several long fields pushed past NAME_MAX,
    keeping it distinct with a hash of the full name (else every write fails, for good)."""
    parts = path.split("/")
    for i, part in enumerate(parts):
        raw = part.encode()
        if len(raw) > NAME_MAX:
            digest = hashlib.sha256(raw).hexdigest()[:16]
            parts[i] = raw[: NAME_MAX - 17].decode(errors="ignore") + "~" + digest
    return "/".join(parts)


def _makedirs(directory: Path) -> list[Path]:
    """Create missing directories; return the parents whose entries changed (to fsync)."""
    missing = []
    d = directory
    while not d.exists():
        missing.append(d)
        d = d.parent
    directory.mkdir(parents=True, exist_ok=True)
    return [m.parent for m in missing]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@hookimpl
def register_sink_types(register: Register) -> None:
    register("file", FileSink)
