"""Command line: `voltd serve|check|route|send|keygen|demo|spool|plugins|plugin|register`.

Exit codes: 0 success, 1 runtime failure (cannot listen, spool locked, request refused),
2 bad configuration or bad input (the message names the file, the key and the expectation).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import ssl
import sys
from pathlib import Path
from typing import Any, NoReturn

from voltd import __version__, defaults

log = logging.getLogger("voltd")


def _setup_logging(level: str, fmt: str = "logfmt") -> None:
    """Every logger (voltd's and the libraries') to stderr as logfmt or JSON lines, one
    record per line; under journald with `<N>` priorities and no time stamp (voltd.logs)."""
    from voltd import logs

    logs.setup(level, fmt, sys.stderr)


def _log_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """`--log-level` and `--log-format`, before the command (`voltd --log-format json serve`)
    or after it (`voltd serve --log-format json`); after it wins."""
    from voltd.logs import FORMATS, LEVELS

    level: dict[str, Any] = {"default": "info"} if top else {"default": argparse.SUPPRESS}
    fmt: dict[str, Any] = {"default": FORMATS[0]} if top else {"default": argparse.SUPPRESS}
    parser.add_argument("--log-level", choices=LEVELS, help="default: info", **level)
    parser.add_argument(
        "--log-format",
        choices=FORMATS,
        help="logfmt (default) or json: one line per record, tracebacks included",
        **fmt,
    )


#: `voltd plugins` shows a longer default (a template) by its size; `--json` has it whole.
_LONG_DEFAULT = 120


def _fail(message: str, code: int = 2) -> NoReturn:
    print(f"voltd: {message}", file=sys.stderr)
    raise SystemExit(code)


def _load(path: str) -> Any:
    from voltd.config import ConfigError, load

    try:
        return load(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(2) from None


def _configure(path: str, *, write_key_cache: bool = False) -> Any:
    """`serve` keeps the fetched key's cache; `check` looks without writing anything."""
    from voltd.config import ConfigError
    from voltd.daemon import configure

    try:
        return configure(path, write_key_cache=write_key_cache)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(2) from None


def _find_os_error(exc: BaseException) -> OSError | None:
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            found = _find_os_error(sub)
            if found is not None:
                return found
    return None


# -- serve ---------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    import trio

    from voltd.daemon import Daemon
    from voltd.spool import SpoolError

    plan = _configure(args.config, write_key_cache=True)
    for problem in plan.registry.problems:
        log.warning("%s", problem)
    daemon = Daemon(plan, migrate=args.migrate)
    try:
        trio.run(daemon.run)
    except SpoolError as exc:
        _fail(str(exc), 1)
    except BaseException as exc:
        os_error = _find_os_error(exc)
        if os_error is None or isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        _fail(f"cannot start: {os_error.strerror or os_error}", 1)
    return 0


# -- check / route / plugins -----------------------------------------------------------------


def _spool_line(config: Any) -> str:
    """The spool for `voltd check`: the file, or the database (without its password), whose
    schema is read now: a spool the daemon would refuse is said here first."""
    if config.spool.conninfo is None:
        return str(config.spool.path)
    import psycopg

    from voltd.spool import SpoolError
    from voltd.spool_pg import PG_SCHEMA_VERSION, check_version
    from voltd.spool_pg.sql import error_text

    where = config.spool.where
    try:
        with psycopg.connect(config.spool.conninfo, connect_timeout=10) as conn:
            check_version(conn, where)
    except psycopg.Error as exc:
        _fail(f"spool.url: cannot connect to {where}: {error_text(exc, config.spool.conninfo)}", 1)
    except SpoolError as exc:
        _fail(f"spool.url: {exc}", 1)
    return f"{where} (PostgreSQL, schema version {PG_SCHEMA_VERSION})"


def _fmt_duration(seconds: float) -> str:
    if seconds == 0:
        return "0 (disabled)"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds:g}s"


def _fmt_match(spec: Any) -> str:
    if spec is None:
        return "everything"
    parts = []
    for key, values in spec.items():
        if values:
            parts.append(f"{key}={', '.join(values)}")
    return "; ".join(parts) or "everything"


def _redacted(config: Any, sink: str, options: dict[str, Any], model: Any = None) -> dict[str, Any]:
    """Options as `voltd check` shows them: what came from a secret reference, or what the
    sink type marks `voltd.Secret`, is `***`."""
    from voltd.sink import is_secret_option

    def hidden(key: str) -> bool:
        marked = model is not None and is_secret_option(model, key)
        return marked or config.is_secret("sinks", sink, key)

    return {k: ("***" if hidden(k) else v) for k, v in options.items()}


def cmd_check(args: argparse.Namespace) -> int:
    from voltd.config import one_line

    plan = _configure(args.config)
    config, registry = plan.config, plan.registry
    s = config.server
    scheme = "https" if s.certfile else "http"
    out = [f"{config.source_name}: OK"]
    for b in s.bind:
        out.append(f"listen:   {scheme}://{b}{s.path} (max body {s.max_body_bytes} bytes)")
    admin = f"http://{config.admin.bind}/healthz" if config.admin.bind else "off"
    out.append(f"admin:    {admin}")
    v = config.verify
    sources = [p.name for p in v.public_keys]
    if v.public_key_url is not None:
        from voltd.http import safe_url
        from voltd.keyfetch import fingerprint

        fetched = ", ".join(fingerprint(k) for k in v.url_keys) or "no key"
        sources.append(f"{safe_url(v.public_key_url)} ({fetched})")
    out.append(
        f"verify:   {len(v.keys)} key(s) ({', '.join(sources)}), "
        f"{v.algorithm}, {v.encoding} in header {v.header}, max_age {_fmt_duration(v.max_age)}"
    )
    r = config.retry
    out.append(
        f"spool:    {_spool_line(config)}, retention {_fmt_duration(config.spool.retention)}; "
        f"retry {_fmt_duration(r.initial)} doubling to {_fmt_duration(r.max_delay)}, "
        f"dead letter after {_fmt_duration(r.give_up_after)}"
    )
    if config.numbers:
        out.append("numbers:")
        out.extend(f"  {name} = {num}" for name, num in config.numbers.items())
    out.append("routes:")
    for i, route in enumerate(config.routes, 1):
        line = f"  {i}. {one_line(route.name)}{' (final)' if route.final else ''}: "
        line += f"match {_fmt_match(_spec_items(route.match))}"
        if route.exclude is not None:
            line += f"; exclude {_fmt_match(_spec_items(route.exclude))}"
        line += f" -> {', '.join(route.sinks)}"
        out.append(line)
    out.append(f"  unmatched -> {config.defaults.unmatched or '(stored, not delivered)'}")
    out.append("sinks:")
    from voltd.daemon import retry_policy, sink_rate

    for name, sc in config.sinks.items():
        origin = registry.sink_types[sc.type].origin
        try:
            model = registry.sink_types[sc.type].cls.Options
            opts = json.dumps(_redacted(config, name, sc.options, model), default=str)
        except ValueError:  # an integer too long to write out (over 4300 digits)
            opts = "(options too large to show)"
        out.append(f"  {one_line(name)}: {sc.type} ({origin}) {opts}")
        rate = sink_rate(config, name, plan.sinks[name])
        p = retry_policy(config, name)
        out.append(
            f"    delivery: concurrency {sc.delivery.concurrency}, "
            f"rate {f'{rate:g}/s' if rate else 'unlimited'}; retry {_fmt_duration(p.initial)} "
            f"doubling to {_fmt_duration(p.max_delay)}, dead letter after "
            f"{_fmt_duration(p.give_up_after)}"
        )
    print("\n".join(out))
    if registry.problems:
        # DESIGN §6: a broken plugin fails `check` even when no configured sink uses it yet.
        for problem in registry.problems:
            print(f"{config.source_name}: plugin problem: {problem}", file=sys.stderr)
        return 1
    return 0


def _spec_items(spec: Any) -> dict[str, list[str]] | None:
    if spec is None:
        return None
    return {k: list(v) for k, v in spec.written.items() if v}


def _read_event(path: str) -> tuple[bytes, Any]:
    from voltd.events import EnvelopeError, parse

    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        _fail(f"{path}: cannot read: {exc.strerror}")
    try:
        return raw, parse(raw)
    except EnvelopeError as exc:
        _fail(f"{path}: not a Volt envelope: {exc}")


def cmd_route(args: argparse.Namespace) -> int:
    from voltd.events import Probe
    from voltd.routing import Router

    config = _load(args.config)
    _, event = _read_event(args.event)
    if isinstance(event, Probe):
        print(
            f"{args.event}: envelope type {event.type!r} is not 'messaging': answered as a "
            "probe, never routed"
        )
        return 0
    print(Router.from_config(config).explain(event).render())
    return 0


def _type_name(annotation: Any) -> str:
    """A readable type for `voltd plugins`: `str`, `list[str]`, `bool | None`, `"POST" |
    "PUT"`, `Template` (validators and markers left out)."""
    import types
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_type_name(a) for a in args)}]"
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def option_rows(model: Any) -> list[dict[str, Any]]:
    """Each option of a sink's Options model: name, type, default, description."""
    import pydantic_core

    rows = []
    for name, info in model.model_fields.items():
        required = info.is_required()
        default: Any = None
        if not required:
            default = info.get_default(call_default_factory=True)
            if isinstance(default, pydantic_core.PydanticUndefinedType):  # pragma: no cover
                default = None
        rows.append(
            {
                "name": info.alias or name,
                "type": _type_name(info.annotation),
                "required": required,
                "default": default,
                "description": info.description or "",
            }
        )
    return rows


def _source_file(cls: type) -> str | None:
    import inspect

    try:
        return inspect.getsourcefile(cls)
    except TypeError:
        return None


def cmd_plugins(args: argparse.Namespace) -> int:
    from voltd.plugins import discover

    dirs = _load(args.config).plugin_dirs if args.config else []
    registry = discover(dirs)
    types: list[dict[str, Any]] = []
    for name, info in sorted(registry.sink_types.items()):
        o = info.origin
        types.append(
            {
                "type": name,
                "plugin": o.plugin,
                "distribution": o.distribution,
                "version": o.version,
                "path": o.path,
                "class": f"{info.cls.__module__}.{info.cls.__qualname__}",
                "source": _source_file(info.cls),
                "options": option_rows(info.cls.Options),
            }
        )
    if args.json:
        out = {
            "sink_types": types,
            "disabled": [str(o) for o in registry.blocked],
            "problems": [str(p) for p in registry.problems],
        }
        print(json.dumps(out, indent=2, default=str))
        return 1 if registry.problems else 0
    print("sink types:")
    for name, t in zip(sorted(registry.sink_types), types, strict=True):
        print(f"  {name}: {t['class']} ({registry.sink_types[name].origin})")
        if t["source"]:
            print(f"    source: {t['source']}")
        print("    options:" if t["options"] else "    options: none")
        for row in t["options"]:
            if row["required"]:
                default = "required"
            else:
                shown = json.dumps(row["default"], default=str)
                if len(shown) > _LONG_DEFAULT:  # a default template: its size, not its text
                    lines = str(row["default"]).count("\n") + 1
                    shown = f"{len(str(row['default']))} characters, {lines} lines; --json shows it"
                default = "default " + shown
            line = f"      {row['name']} ({row['type']}, {default})"
            if row["description"]:
                line += f": {row['description']}"
            print(line)
    if not types:
        print("  (none)")
    if registry.blocked:
        print("disabled by VOLTD_DISABLE_PLUGINS:")
        for origin in registry.blocked:
            print(f"  {origin}")
    if registry.problems:
        print("problems:")
        for problem in registry.problems:
            print(f"  {problem}")
        return 1
    return 0


def cmd_plugin_new(args: argparse.Namespace) -> int:
    from voltd.scaffold import ScaffoldError, scaffold

    try:
        root = scaffold(args.name, Path(args.dir))
    except ScaffoldError as exc:
        _fail(str(exc))
    from voltd.scaffold import voltd_source

    print(f"made {root}: a voltd plugin distribution with one sink type, {args.name!r}")
    print("next, to run its tests:")
    print(f"  cd {root}")
    print(f"  uv venv && uv pip install {voltd_source()} -e . pytest pytest-trio")
    print("  .venv/bin/python -m pytest")
    print(f"to use it: install {root} into voltd's environment; `voltd plugins` lists it")
    return 0


# -- keys and sending ---------------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> int:
    from voltd.keys import generate_signing_pair

    try:
        private, public = generate_signing_pair(Path(args.dir))
    except (FileExistsError, OSError) as exc:
        _fail(str(exc), 1)
    print(f"private signing key (keep it secret; for `voltd send --key`): {private}")
    print(f"public key (list it in [verify] public_keys):            {public}")
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    import httpx

    from voltd.verify import KeyLoadError, Signer, load_private_key_file

    raw, _ = _read_event(args.event)
    try:
        key = load_private_key_file(Path(args.key))
    except KeyLoadError as exc:
        _fail(f"{args.key}: {exc}")
    signature = Signer(key, args.algorithm, args.encoding).sign(raw)
    verify: bool | ssl.SSLContext = True
    if args.insecure:
        verify = False
    elif args.cacert:
        verify = ssl.create_default_context(cafile=args.cacert)
    headers = {args.header: signature, "Content-Type": "application/json"}
    try:
        with httpx.Client(verify=verify, timeout=args.timeout) as client:
            resp = client.post(args.url, content=raw, headers=headers)
    except httpx.HTTPError as exc:
        _fail(f"{args.url}: {exc}", 1)
    print(f"{resp.status_code} {resp.reason_phrase}")
    print(resp.text)
    return 0 if resp.is_success else 1


def cmd_register(args: argparse.Namespace) -> int:
    import httpx

    try:
        token = Path(args.token_file).read_text().strip()
    except OSError as exc:
        _fail(f"{args.token_file}: cannot read: {exc.strerror}")
    query = (
        "mutation registerWebhook ($url: String!) { registerWebhook (url: $url) "
        "{ id url createdAt lastUpdatedAt } }"
    )
    try:
        resp = httpx.post(
            args.api,
            json={"query": query, "variables": {"url": args.url}},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
    except httpx.HTTPError as exc:
        _fail(f"{args.api}: {exc}", 1)
    try:
        body = resp.json()
    except ValueError:
        _fail(f"{args.api}: answered {resp.status_code} with a body that is not JSON", 1)
    if resp.is_success and not body.get("errors"):
        print(json.dumps(body.get("data"), indent=2))
        return 0
    _fail(f"registration refused ({resp.status_code}): {json.dumps(body.get('errors', body))}", 1)


# -- spool --------------------------------------------------------------------------------


def _spool_db(config: Any, readonly: bool) -> Any:
    """The spool for the `voltd spool` commands: the SQLite file, or the PostgreSQL database
    (which any instance's host can reach: the commands work from each)."""
    from voltd.spool import SpoolDB, SpoolError

    conninfo = config.spool.conninfo
    if conninfo is not None:
        from voltd.spool_pg import PgSpoolDB

        try:
            return PgSpoolDB(conninfo)
        except SpoolError as exc:
            _fail(str(exc), 1)
    path = config.spool.path
    if not path.exists():
        _fail(f"{path}: no spool yet (the daemon creates it on first start)", 1)
    try:
        return SpoolDB(path, readonly=readonly)
    except SpoolError as exc:
        _fail(str(exc), 1)


def _ago(seconds: float | None) -> str:
    """An age or a delay as `45s`, `3m 20s`, `2h 5m`, `1d 4h`; `-` for none."""
    if seconds is None:
        return "-"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def _instances(db: Any, config: Any) -> list[str]:
    """The `voltd serve` processes using this spool: for PostgreSQL, each instance with a
    session open on the database (`host:pid:…`); for SQLite, the one holding the file."""
    if config.spool.conninfo is not None:
        return list(db.running())
    return ["this host"] if _daemon_running(config.spool.path) else []


def _daemon_running(spool_path: Path) -> bool:
    """Whether a `voltd serve` holds this spool (its lock file is locked)."""
    import fcntl

    lock = spool_path.with_name(spool_path.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


#: The columns of `voltd spool status`'s table, in order (scripts and tests read them).
STATUS_COLUMNS = (
    "sink",
    "state",
    "pending",
    "in flight",
    "retrying",
    "next retry",
    "dead",
    "done 1h",
    "oldest",
)


def _spool_status(db: Any, config: Any, as_json: bool) -> None:
    import time

    from voltd.spool import empty_report

    now = time.time()
    report = db.report(now)
    instances = _instances(db, config)
    running = bool(instances)
    shared = config.spool.conninfo is not None
    for sink in config.sinks:
        report.setdefault(sink, empty_report())
    for sink, row in report.items():
        worker = row.get("worker")
        if not running:
            row["state"], row["reason"], row["in_flight"] = "stopped", None, 0
        elif worker is None:
            row["state"], row["reason"], row["in_flight"] = "ok", None, 0
        else:
            row["state"], row["reason"] = worker["state"], worker["reason"]
            row["in_flight"] = worker["in_flight"]
            row["last_error"] = worker["last_error"] or row["last_error"]
            if worker["state"] == "paused":
                row["next_retry"] = worker["next_attempt"]
        if sink not in config.sinks:
            row["state"] = "not configured"
    if as_json:
        print(
            json.dumps(
                {
                    "events": db.event_count(),
                    "daemon_running": running,
                    **({"instances": instances} if shared else {}),
                    "sinks": report,
                },
                indent=2,
                default=str,
            )
        )
        return
    if shared:
        print(f"spool: {config.spool.where}; events stored: {db.event_count()}")
        names = f": {', '.join(instances)}" if instances else ""
        print(f"instances running: {len(instances)}{names}")
    else:
        state = "running" if running else "not running"
        print(f"events stored: {db.event_count()}; daemon {state}")
    head = STATUS_COLUMNS
    rows = [head]
    for sink, r in sorted(report.items()):
        nxt = _ago(r["next_retry"] - now) if r["next_retry"] else "-"
        rows.append(
            (
                sink,
                r["state"],
                str(r["pending"]),
                str(r["in_flight"]),
                str(r["retrying"]),
                nxt,
                str(r["dead"]),
                str(r["delivered_last_hour"]),
                _ago(r["oldest_pending_age"]),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    for row in rows:
        print(
            "  ".join(
                c.ljust(w) if i < 2 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
    for sink, r in sorted(report.items()):
        if r["state"] == "disabled":
            print(
                f"{sink}: disabled: {r['reason']}; `voltd spool retry --sink {sink}` or a "
                "reload enables it"
            )
        elif r["last_error"] and (r["pending"] or r["state"] == "paused"):
            print(f"{sink}: last error: {r['last_error']}")


def _spool_migrate(config: Any) -> int:
    """`voltd spool migrate`: create or upgrade a PostgreSQL spool's schema. (A SQLite spool
    is created and upgraded by the daemon as it opens the file.)"""
    from voltd.spool import SpoolError

    conninfo = config.spool.conninfo
    if conninfo is None:
        print(
            f"{config.spool.path}: a SQLite spool is created and upgraded by `voltd serve` as "
            "it opens it; nothing to do"
        )
        return 0
    from voltd.spool_pg import PG_SCHEMA_VERSION, migrate

    try:
        was = migrate(conninfo)
    except SpoolError as exc:
        _fail(str(exc), 1)
    where = config.spool.where
    if was == PG_SCHEMA_VERSION:
        print(f"{where}: spool schema is up to date (version {was})")
    elif was == 0:
        print(f"{where}: spool schema created (version {PG_SCHEMA_VERSION})")
    else:
        print(f"{where}: spool schema upgraded from version {was} to {PG_SCHEMA_VERSION}")
    return 0


def cmd_spool(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if args.action == "migrate":
        return _spool_migrate(config)
    db = _spool_db(config, readonly=args.action not in ("replay", "retry"))
    try:
        if args.action == "status":
            _spool_status(db, config, args.json)
        elif args.action == "retry":
            if not args.sink:
                _fail("spool retry needs --sink NAME (the sink to enable again)")
            n = db.request_retry(args.sink)
            print(
                f"sink {args.sink}: {n} waiting deliveries due now; a running daemon enables "
                "the sink within seconds"
            )
        elif args.action == "dead":
            rows = db.dead(args.sink)
            if args.json:
                print(json.dumps(rows, indent=2))
            for row in rows if not args.json else []:
                print(
                    f"{row['sink']}  seq {row['seq']}  {row['id']}  attempts {row['attempts']}"
                    f"  {row['error']}"
                )
            if not rows and not args.json:
                print("no dead letters")
        else:
            n = db.replay(args.sink, args.seq or None)
            print(f"{n} dead letter(s) queued again; a running daemon picks them up within seconds")
    finally:
        db.close()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from voltd.demo import run_demo

    return run_demo(Path(args.dir) if args.dir else None)


# -- parser -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="voltd", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"voltd {__version__}")
    _log_options(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sp: argparse.ArgumentParser, required: bool = True) -> None:
        sp.add_argument("-c", "--config", required=required, help="path to config.toml")

    sp = sub.add_parser("serve", help="run the daemon in the foreground")
    with_config(sp)
    sp.add_argument(
        "--migrate",
        action="store_true",
        help="create or upgrade a PostgreSQL spool's schema first (as `voltd spool migrate`)",
    )
    sp.set_defaults(func=cmd_serve)

    sp = sub.add_parser("check", help="validate the configuration and print a summary")
    with_config(sp)
    sp.set_defaults(func=cmd_check)

    sp = sub.add_parser("route", help="dry run: which routes match an event and why")
    with_config(sp)
    sp.add_argument("event", help="a Volt envelope as JSON")
    sp.set_defaults(func=cmd_route)

    sp = sub.add_parser("send", help="sign an event as Volt would and POST it")
    sp.add_argument("--url", required=True)
    sp.add_argument("--key", required=True, help="PEM private key (from `voltd keygen`)")
    sp.add_argument("--insecure", action="store_true", help="do not verify the TLS certificate")
    sp.add_argument("--cacert", help="trust this CA / self-signed certificate file")
    sp.add_argument("--header", default=defaults.SIGNATURE_HEADER)
    sp.add_argument("--algorithm", default=defaults.SIGNATURE_ALGORITHM)
    sp.add_argument("--encoding", default=defaults.SIGNATURE_ENCODING, choices=["base64", "hex"])
    sp.add_argument("--timeout", type=float, default=30.0)
    sp.add_argument("event", help="a Volt envelope as JSON, sent byte for byte")
    sp.set_defaults(func=cmd_send)

    sp = sub.add_parser("keygen", help="make a local signing key pair for testing")
    sp.add_argument("dir")
    sp.set_defaults(func=cmd_keygen)

    sp = sub.add_parser("demo", help="the whole pipeline locally, no setup")
    sp.add_argument("--dir", help="work here instead of a new temporary directory")
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser(
        "spool",
        help="sinks' state and queues; dead letters; replay; enable a disabled sink; "
        "create or upgrade a PostgreSQL spool (migrate)",
    )
    sp.add_argument("action", choices=["status", "dead", "replay", "retry", "migrate"])
    with_config(sp)
    sp.add_argument("--sink", help="only this sink")
    sp.add_argument("--seq", type=int, nargs="*", help="replay: only these event numbers")
    sp.add_argument("--json", action="store_true", help="status, dead: print JSON")
    sp.set_defaults(func=cmd_spool)

    sp = sub.add_parser("register", help="register the webhook URL with Volt's GraphQL API")
    sp.add_argument("--url", required=True, help="the public URL Volt should POST to")
    sp.add_argument("--token-file", required=True, help="file holding the API token")
    sp.add_argument("--api", default="https://api.respondflow.com/graphql")
    sp.set_defaults(func=cmd_register)

    sp = sub.add_parser("plugins", help="list sink types, where they came from, their options")
    with_config(sp, required=False)
    sp.add_argument("--json", action="store_true", help="print JSON")
    sp.set_defaults(func=cmd_plugins)

    sp = sub.add_parser("plugin", help="plugin authoring: `voltd plugin new NAME`")
    plugin_sub = sp.add_subparsers(dest="plugin_command", required=True, metavar="ACTION")
    new = plugin_sub.add_parser(
        "new", help="scaffold a plugin distribution (pyproject, sink, test)"
    )
    new.add_argument("name", help="the sink type name, e.g. teams")
    new.add_argument("--dir", default=".", help="where to create voltd-NAME/ (default: here)")
    new.set_defaults(func=cmd_plugin_new)
    for command in sub.choices.values():
        _log_options(command, top=False)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level, args.log_format)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
