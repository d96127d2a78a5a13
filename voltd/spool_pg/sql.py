"""The PostgreSQL spool's schema (versioned, `migrate`) and every database operation, as
functions of a connection inside a transaction: the trio face (`PgSpool`) runs them on pooled
connections in worker threads, the sync face (`PgSpoolDB`) on its own connection."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import psycopg

from voltd.events import from_spool
from voltd.spool import (
    DEAD_COUNT_SQL,
    STATUS_SQL,
    Due,
    Outcome,
    SinkChange,
    SpoolError,
    Stored,
    _Ingest,
    _Record,
    dead_query,
    dead_rows,
    empty_report,
    gauge_counts,
    sink_report,
    status_counts,
)

log = logging.getLogger("voltd.spool")

Conn = psycopg.Connection[Any]


#: The PostgreSQL spool's schema version (its own numbering, kept in `voltd_schema`).
PG_SCHEMA_VERSION = 2

#: The NOTIFY channel; the payload is "<instance> <sink>" ("-" for the CLI).
CHANNEL = "voltd_spool"

#: Serializes concurrent `migrate` runs (a transaction-level advisory lock).
_MIGRATE_LOCK = 0x766F6C74  # "volt"

#: version -> the statements that turn the previous version into it (1: from nothing).
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE voltd_schema (
            version integer NOT NULL,
            migrated_at double precision NOT NULL
        )""",
        """CREATE TABLE events (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            envelope_id text NOT NULL,
            digest bytea NOT NULL,
            received_at double precision NOT NULL,
            body bytea NOT NULL,
            signature text,
            UNIQUE (envelope_id, digest)
        )""",
        "CREATE INDEX events_received ON events (received_at)",
        """CREATE TABLE deliveries (
            event_seq bigint NOT NULL,
            sink text NOT NULL,
            state smallint NOT NULL,
            attempts integer NOT NULL DEFAULT 0,
            next_at double precision NOT NULL,
            updated_at double precision NOT NULL,
            last_error text,
            lease_owner text,
            lease_until double precision,
            PRIMARY KEY (event_seq, sink)
        )""",
        # Claiming: a sink's pending rows in due order (the partial index holds pending only).
        "CREATE INDEX deliveries_due ON deliveries (sink, next_at, event_seq) WHERE state = 0",
        "CREATE INDEX deliveries_dead ON deliveries (sink, updated_at) WHERE state = 2",
        """CREATE TABLE sink_state (
            sink text NOT NULL,
            key text NOT NULL,
            value text NOT NULL,
            updated_at double precision NOT NULL,
            PRIMARY KEY (sink, key)
        )""",
        # One row per sink and instance: each instance's worker says what it is doing.
        """CREATE TABLE sink_status (
            sink text NOT NULL,
            instance text NOT NULL,
            state text NOT NULL,
            reason text,
            since double precision NOT NULL,
            next_attempt double precision,
            last_error text,
            in_flight integer NOT NULL DEFAULT 0,
            updated_at double precision NOT NULL,
            PRIMARY KEY (sink, instance)
        )""",
        # `voltd spool retry --sink`: every instance's worker notices a request newer than
        # its own state and enables the sink again.
        """CREATE TABLE retry_requests (
            sink text PRIMARY KEY,
            requested_at double precision NOT NULL
        )""",
        # Instances that opened the spool (`check_writable` writes here, /healthz).
        """CREATE TABLE instances (
            instance text PRIMARY KEY,
            host text NOT NULL,
            pid integer NOT NULL,
            started_at double precision NOT NULL,
            seen_at double precision NOT NULL
        )""",
    ),
    # 2: an instance's claims found without a scan (lease renewal, release on stop).
    2: (
        "CREATE INDEX deliveries_claims ON deliveries (lease_owner)"
        " WHERE state = 0 AND lease_owner IS NOT NULL",
    ),
}

_STATUS_KEYS = ("state", "reason", "since", "next_attempt", "last_error", "in_flight", "updated_at")
_SEVERITY = {"disabled": 3, "paused": 2, "ok": 1}


def _instance_id() -> str:
    host = socket.gethostname().replace(" ", "_") or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _app_name(instance: str) -> str:
    # pg_stat_activity.application_name: how `voltd spool status` sees which instances run.
    return f"voltd {instance}"[:63]


def _lock_key(sink: str) -> int:
    """The advisory lock of an ordered sink: a stable 64-bit number from its name."""
    digest = hashlib.sha256(b"voltd.sink:" + sink.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


# -- schema -----------------------------------------------------------------------------


def schema_version(conn: Conn) -> int | None:
    """The version the database says it has; None when voltd never migrated it."""
    row = conn.execute("SELECT to_regclass('voltd_schema') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return None
    row = conn.execute("SELECT max(version) FROM voltd_schema").fetchone()
    return int(row[0]) if row and row[0] is not None else None


def check_version(conn: Conn, where: str) -> None:
    """Refuse (SpoolError, saying what to do) a spool not at PG_SCHEMA_VERSION."""
    version = schema_version(conn)
    if version is None:
        raise SpoolError(
            f"{where}: no voltd spool in this database yet: run `voltd spool migrate` first"
        )
    if version > PG_SCHEMA_VERSION:
        raise SpoolError(
            f"{where}: the spool has schema version {version}, written by a newer voltd; this "
            f"one understands up to {PG_SCHEMA_VERSION}: upgrade voltd to use it"
        )
    if version < PG_SCHEMA_VERSION:
        raise SpoolError(
            f"{where}: the spool has schema version {version}, this voltd needs "
            f"{PG_SCHEMA_VERSION}: run `voltd spool migrate`"
        )


def safe_url(conninfo: str) -> str:
    """`postgresql://user@host:port/dbname`, without a password or other parameters: what
    messages, logs and `voltd check` may show of `[spool] url`."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.Error:
        return "the PostgreSQL spool"
    user = f"{info['user']}@" if info.get("user") else ""
    host = str(info.get("host") or "localhost")
    if "," in host or "/" in host:  # several hosts, or a Unix socket directory
        host = f"[{host}]"
    port = f":{info['port']}" if info.get("port") else ""
    return f"postgresql://{user}{host}{port}/{info.get('dbname') or ''}"


def error_text(exc: BaseException, conninfo: str) -> str:
    """psycopg's message on one line, and without the password should libpq quote it."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    try:
        password = psycopg.conninfo.conninfo_to_dict(conninfo).get("password")
    except psycopg.Error:
        password = None
    if password:
        text = text.replace(str(password), "***")
    return text


def migrate(url: str) -> int:
    """Create the spool's tables or bring them to PG_SCHEMA_VERSION, in one transaction (all
    steps or none; concurrent runs wait for each other). Returns the version it started at
    (0 for a new spool). A spool of a newer version is refused, untouched."""
    where = safe_url(url)
    try:
        with psycopg.connect(url, autocommit=False) as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
            version = schema_version(conn) or 0
            if version > PG_SCHEMA_VERSION:
                check_version(conn, where)
            for step in range(version + 1, PG_SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[step]:
                    conn.execute(statement)
                log.info("%s: spool schema migrated to version %d", where, step)
            if version < PG_SCHEMA_VERSION:
                conn.execute("DELETE FROM voltd_schema")
                conn.execute(
                    "INSERT INTO voltd_schema (version, migrated_at) VALUES (%s, %s)",
                    (PG_SCHEMA_VERSION, time.time()),
                )
            return version
    except psycopg.Error as exc:
        raise SpoolError(f"{where}: spool migration failed: {error_text(exc, url)}") from exc


# -- the operations, on a connection inside a transaction -----------------------------------


def _apply(
    conn: Conn, me: str, ingests: Sequence[_Ingest], records: Sequence[_Record]
) -> tuple[list[Stored], set[str]]:
    """One transaction's work for a batch: new events with their deliveries (one statement
    each, however many events), NOTIFY for their sinks, then outcomes, changes and writes.
    Returns the answers and the sinks that got new deliveries."""
    now = time.time()
    results: list[Stored | None] = [None] * len(ingests)
    first: dict[tuple[str, bytes], int] = {}
    for i, item in enumerate(ingests):
        key = (item.event.id, item.event.digest)
        if key in first:
            results[i] = Stored(seq=None, duplicate=True)  # twice in one batch
        else:
            first[key] = i
    woken: set[str] = set()
    if first:
        # A fixed order, so that two instances inserting the same events take their unique
        # index entries in the same order (no deadlock, the later one waits and skips).
        keys = sorted(first)
        rows = conn.execute(
            "INSERT INTO events (envelope_id, digest, received_at, body, signature)"
            " SELECT i, d, %s, b, s FROM unnest(%s::text[], %s::bytea[], %s::bytea[], %s::text[])"
            " AS t(i, d, b, s) ON CONFLICT (envelope_id, digest) DO NOTHING"
            " RETURNING seq, envelope_id, digest",
            (
                now,
                [k[0] for k in keys],
                [k[1] for k in keys],
                [ingests[first[k]].event.raw for k in keys],
                [ingests[first[k]].event.volt_signature for k in keys],
            ),
        ).fetchall()
        seqs = {(eid, bytes(digest)): seq for seq, eid, digest in rows}
        d_seq: list[int] = []
        d_sink: list[str] = []
        for key, i in first.items():
            seq = seqs.get(key)
            if seq is None:
                results[i] = Stored(seq=None, duplicate=True)
                continue
            results[i] = Stored(seq=seq, duplicate=False)
            for sink in dict.fromkeys(ingests[i].sinks):
                d_seq.append(seq)
                d_sink.append(sink)
                woken.add(sink)
        if d_seq:
            conn.execute(
                "INSERT INTO deliveries (event_seq, sink, state, attempts, next_at, updated_at)"
                " SELECT s, k, 0, 0, %s, %s FROM unnest(%s::bigint[], %s::text[]) AS t(s, k)",
                (now, now, d_seq, d_sink),
            )
            _notify(conn, me, woken)
    for rec in records:
        if rec.state:
            _put_state(conn, rec.state, now)
        if rec.status is not None:
            _put_status(conn, me, rec.status[0], rec.status[1], now)
        if rec.outcomes:
            _record(conn, me, rec.outcomes, now)
        if rec.change is not None:
            rec.expired = _change(conn, me, rec.change, now)
    out = [r for r in results if r is not None]
    assert len(out) == len(ingests)
    return out, woken


def _notify(conn: Conn, me: str, sinks: Iterable[str]) -> None:
    """Tell the other instances (delivered at COMMIT, not at all on rollback)."""
    names = sorted(set(sinks))
    if names:
        conn.execute(
            "SELECT pg_notify(%s, %s || ' ' || s) FROM unnest(%s::text[]) AS s",
            (CHANNEL, me, names),
        )


def _record(conn: Conn, me: str, outcomes: Sequence[Outcome], now: float) -> None:
    """Outcomes end the claim. A row another instance took over meanwhile (our lease had
    expired) keeps its new owner's claim: that instance's outcome will count."""
    conn.execute(
        "UPDATE deliveries d SET state = u.state, attempts = u.attempts, next_at = u.next_at,"
        " last_error = u.err, updated_at = %s, lease_owner = NULL, lease_until = NULL"
        " FROM unnest(%s::text[], %s::bigint[], %s::smallint[], %s::integer[],"
        " %s::float8[], %s::text[]) AS u(sink, seq, state, attempts, next_at, err)"
        " WHERE d.sink = u.sink AND d.event_seq = u.seq"
        " AND (d.lease_owner IS NULL OR d.lease_owner = %s)",
        (
            now,
            [o.sink for o in outcomes],
            [o.seq for o in outcomes],
            [int(o.state) for o in outcomes],
            [o.attempts for o in outcomes],
            [o.next_at for o in outcomes],
            [o.error for o in outcomes],
            me,
        ),
    )


def _change(conn: Conn, me: str, change: SinkChange, now: float) -> int:
    """A SinkChange; deliveries claimed by another instance (in flight there) are left be."""
    expired = 0
    if change.expire_before is not None:
        cur = conn.execute(
            "UPDATE deliveries SET state = 2, updated_at = %s, last_error = %s,"
            " lease_owner = NULL, lease_until = NULL"
            " WHERE sink = %s AND state = 0"
            " AND (lease_until IS NULL OR lease_until < %s OR lease_owner = %s)"
            " AND event_seq IN (SELECT seq FROM events WHERE received_at < %s)",
            (now, change.error, change.sink, now, me, change.expire_before),
        )
        expired = cur.rowcount
    if change.release:
        cur = conn.execute(
            "UPDATE deliveries SET next_at = %s WHERE sink = %s AND state = 0 AND next_at > %s",
            (now, change.sink, now),
        )
        if cur.rowcount:
            _notify(conn, me, [change.sink])
    return expired


def _put_state(conn: Conn, writes: Iterable[tuple[str, str, str | None]], now: float) -> None:
    for sink, key, value in writes:
        if value is None:
            conn.execute("DELETE FROM sink_state WHERE sink = %s AND key = %s", (sink, key))
        else:
            conn.execute(
                "INSERT INTO sink_state (sink, key, value, updated_at) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (sink, key) DO UPDATE SET value = excluded.value,"
                " updated_at = excluded.updated_at",
                (sink, key, value, now),
            )


def _put_status(conn: Conn, me: str, sink: str, s: Mapping[str, Any], now: float) -> None:
    conn.execute(
        "INSERT INTO sink_status (sink, instance, state, reason, since, next_attempt,"
        " last_error, in_flight, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (sink, instance) DO UPDATE SET state = excluded.state,"
        " reason = excluded.reason, since = excluded.since,"
        " next_attempt = excluded.next_attempt, last_error = excluded.last_error,"
        " in_flight = excluded.in_flight, updated_at = excluded.updated_at",
        (
            sink,
            me,
            s["state"],
            s["reason"],
            s["since"],
            s["next_attempt"],
            s["last_error"],
            s["in_flight"],
            now,
        ),
    )


def _due(
    conn: Conn, me: str, lease: float, sink: str, now: float, limit: int, held: bool
) -> list[Due]:
    """Claim up to `limit` due deliveries: unclaimed, claimed by us, whose claim expired, or
    claimed by an instance that died. When we hold the sink's advisory lock (`held`), every
    due row is ours without a claim: see `_due_held`.

    An instance that died has no session left on the database (`_app_name` names every
    session it opens): its claims are taken over at once, not a lease later, which after a
    `kill -9` would leave the events it had claimed waiting for minutes while another
    instance idles. One that still has a session (it hangs, say) keeps them until the lease
    ends.
    """
    if held:
        return _due_held(conn, sink, now, limit)
    t = time.time()
    rows = conn.execute(
        "WITH c AS ("
        " SELECT event_seq FROM deliveries"
        " WHERE sink = %(sink)s AND state = 0 AND next_at <= %(now)s"
        " AND (lease_until IS NULL OR lease_until < %(t)s OR lease_owner = %(me)s"
        # An owner with no session here died. (`left` as the server cuts application_name.)
        "  OR left('voltd ' || lease_owner, 63) NOT IN (SELECT application_name"
        "   FROM pg_stat_activity WHERE datname = current_database()"
        "   AND application_name IS NOT NULL))"
        " ORDER BY next_at, event_seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED"
        "), u AS ("
        " UPDATE deliveries d SET lease_owner = %(me)s, lease_until = %(until)s FROM c"
        " WHERE d.sink = %(sink)s AND d.event_seq = c.event_seq"
        " RETURNING d.event_seq, d.attempts, d.next_at"
        ")"
        " SELECT u.event_seq, u.attempts, e.envelope_id, e.body, e.received_at, e.signature"
        " FROM u JOIN events e ON e.seq = u.event_seq ORDER BY u.next_at, u.event_seq",
        {
            "sink": sink,
            "now": now,
            "t": t,
            "me": me,
            "limit": limit,
            "until": t + lease,
        },
    ).fetchall()
    return [
        Due(from_spool(seq, eid, bytes(body), signature), attempts, received_at)
        for seq, attempts, eid, body, received_at, signature in rows
    ]


def _due_held(conn: Conn, sink: str, now: float, limit: int) -> list[Due]:
    """`_due` for the holder of the sink's advisory lock: no other instance delivers to the
    sink while it holds it, so its rows need no claim (one row update less per delivery).
    Claims left by an earlier holder are cleared, so that this one's outcomes count. A row
    locked for a moment (a late outcome, a replay) is waited for, not skipped: skipping it
    would send the next one first."""
    rows = conn.execute(
        "WITH c AS ("
        " SELECT event_seq, attempts, next_at, lease_owner FROM deliveries"
        " WHERE sink = %(sink)s AND state = 0 AND next_at <= %(now)s"
        " ORDER BY next_at, event_seq LIMIT %(limit)s FOR UPDATE"
        "), u AS ("
        " UPDATE deliveries d SET lease_owner = NULL, lease_until = NULL FROM c"
        " WHERE d.sink = %(sink)s AND d.event_seq = c.event_seq AND c.lease_owner IS NOT NULL"
        ")"
        " SELECT c.event_seq, c.attempts, e.envelope_id, e.body, e.received_at, e.signature"
        " FROM c JOIN events e ON e.seq = c.event_seq ORDER BY c.next_at, c.event_seq",
        {"sink": sink, "now": now, "limit": limit},
    ).fetchall()
    return [
        Due(from_spool(seq, eid, bytes(body), signature), attempts, received_at)
        for seq, attempts, eid, body, received_at, signature in rows
    ]


def _release_claims(conn: Conn, me: str, sink: str | None = None) -> None:
    """Give up `me`'s claims (on `sink`, or all): its worker stopped, or it closes."""
    sql = "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL"
    sql += " WHERE lease_owner = %s AND state = 0"
    args: list[Any] = [me]
    if sink is not None:
        sql += " AND sink = %s"
        args.append(sink)
    conn.execute(sql, args)


def _renew(conn: Conn, me: str, lease: float) -> int:
    """Extend every claim `me` holds by `lease` from now; returns how many."""
    cur = conn.execute(
        "UPDATE deliveries SET lease_until = %s WHERE lease_owner = %s AND state = 0",
        (time.time() + lease, me),
    )
    return cur.rowcount


def _next_due_at(conn: Conn, me: str, sink: str) -> float | None:
    """When the sink's next delivery is due here: a row claimed by another instance not
    before its claim expires (so a worker wakes for the takeover, and not before)."""
    row = conn.execute(
        "SELECT MIN(CASE WHEN lease_until > %s AND lease_owner <> %s"
        " THEN GREATEST(next_at, lease_until) ELSE next_at END)"
        " FROM deliveries WHERE sink = %s AND state = 0",
        (time.time(), me, sink),
    ).fetchone()
    return row[0] if row else None


def _status(conn: Conn) -> dict[str, dict[str, int]]:
    return status_counts(conn.execute(STATUS_SQL))


def _gauges(conn: Conn) -> dict[str, tuple[int, int, float | None]]:
    pending = conn.execute(
        "SELECT p.sink, p.n, (SELECT received_at FROM events WHERE seq = p.first)"
        " FROM (SELECT sink, COUNT(*) AS n, MIN(event_seq) AS first FROM deliveries"
        " WHERE state = 0 GROUP BY sink) p"
    ).fetchall()
    return gauge_counts(pending, conn.execute(DEAD_COUNT_SQL).fetchall())


def _purge(conn: Conn, older_than: float, limit: int) -> int:
    """Events past retention whose every delivery succeeded go (dead letters stay); rows
    another instance is purging at the same moment are skipped, not waited for."""
    row = conn.execute(
        "WITH s AS ("
        " SELECT seq FROM events e WHERE received_at < %s AND NOT EXISTS ("
        "  SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq AND d.state <> 1)"
        " LIMIT %s FOR UPDATE SKIP LOCKED"
        "), d AS (DELETE FROM deliveries WHERE event_seq IN (SELECT seq FROM s))"
        ", e AS (DELETE FROM events WHERE seq IN (SELECT seq FROM s) RETURNING 1)"
        " SELECT COUNT(*) FROM e",
        (older_than, limit),
    ).fetchone()
    return int(row[0]) if row else 0


def _get_state(conn: Conn, sink: str, key: str) -> str | None:
    row = conn.execute(
        "SELECT value FROM sink_state WHERE sink = %s AND key = %s", (sink, key)
    ).fetchone()
    return row[0] if row else None


def _retry_requested(conn: Conn, sink: str) -> float | None:
    row = conn.execute(
        "SELECT requested_at FROM retry_requests WHERE sink = %s", (sink,)
    ).fetchone()
    return row[0] if row else None


def _live_instances(conn: Conn) -> set[str]:
    """Instances with a session open on this database right now (crashed ones have none)."""
    rows = conn.execute(
        "SELECT DISTINCT substr(application_name, 7) FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name LIKE 'voltd %%'"
    ).fetchall()
    return {r[0] for r in rows}


def _sink_status(conn: Conn, live: set[str] | None = None) -> dict[str, dict[str, Any]]:
    """What each sink's workers say, merged over the running instances: the most serious
    state (disabled, paused, ok) with its reason, in-flight summed. Each merged dict also
    lists every instance's own under `instances`."""
    live = _live_instances(conn) if live is None else live
    rows = conn.execute(f"SELECT sink, instance, {', '.join(_STATUS_KEYS)} FROM sink_status")
    per: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        if row[1] in live:
            per.setdefault(row[0], {})[row[1]] = dict(zip(_STATUS_KEYS, row[2:], strict=True))
    out: dict[str, dict[str, Any]] = {}
    for sink, by_instance in per.items():
        worst = max(
            by_instance.values(),
            key=lambda s: (_SEVERITY.get(s["state"], 0), s["updated_at"]),
        )
        merged = dict(worst)
        merged["in_flight"] = sum(s["in_flight"] for s in by_instance.values())
        merged["instances"] = by_instance
        out[sink] = merged
    return out


def _report(conn: Conn, now: float) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    rows = conn.execute(
        "SELECT d.sink, COUNT(*) FILTER (WHERE d.state = 0),"
        " COUNT(*) FILTER (WHERE d.state = 0 AND d.attempts > 0),"
        " MIN(d.next_at) FILTER (WHERE d.state = 0 AND d.attempts > 0),"
        " COUNT(*) FILTER (WHERE d.state = 2),"
        " COUNT(*) FILTER (WHERE d.state = 1 AND d.updated_at >= %s),"
        " MIN(e.received_at) FILTER (WHERE d.state = 0),"
        " COUNT(*) FILTER (WHERE d.state = 0 AND d.lease_until > %s)"
        " FROM deliveries d JOIN events e ON e.seq = d.event_seq GROUP BY d.sink",
        (now - 3600, now),
    ).fetchall()
    for sink, pending, retrying, next_retry, dead, recent, oldest, claimed in rows:
        last = conn.execute(
            "SELECT last_error FROM deliveries WHERE sink = %s AND last_error IS NOT NULL"
            " ORDER BY updated_at DESC LIMIT 1",
            (sink,),
        ).fetchone()
        out[sink] = sink_report(
            now,
            pending,
            retrying,
            next_retry,
            dead,
            recent,
            oldest,
            last_error=last[0] if last else None,
        )
        out[sink]["claimed"] = claimed
    for sink, worker in _sink_status(conn).items():
        out.setdefault(sink, empty_report())["worker"] = worker
    return out


def _dead(conn: Conn, sink: str | None, limit: int) -> list[dict[str, Any]]:
    sql, args = dead_query(sink, limit, "%s")
    return dead_rows(conn.execute(sql, args))


def _replay(conn: Conn, me: str, sink: str | None, seqs: Sequence[int] | None) -> int:
    now = time.time()
    sql = (
        "UPDATE deliveries SET state = 0, attempts = 0, next_at = %s, updated_at = %s,"
        " lease_owner = NULL, lease_until = NULL WHERE state = 2"
    )
    args: list[Any] = [now, now]
    if sink is not None:
        sql += " AND sink = %s"
        args.append(sink)
    if seqs:
        sql += " AND event_seq = ANY(%s::bigint[])"
        args.append(list(seqs))
    sql += " RETURNING sink"
    sinks = [r[0] for r in conn.execute(sql, args)]
    _notify(conn, me, sinks)
    return len(sinks)


def _request_retry(conn: Conn, me: str, sink: str) -> int:
    now = time.time()
    conn.execute(
        "INSERT INTO retry_requests (sink, requested_at) VALUES (%s, %s)"
        " ON CONFLICT (sink) DO UPDATE SET requested_at = excluded.requested_at",
        (sink, now),
    )
    n = conn.execute(
        "UPDATE deliveries SET next_at = %s WHERE sink = %s AND state = 0", (now, sink)
    ).rowcount
    _notify(conn, me, [sink])
    return n


def _event_count(conn: Conn) -> int:
    row = conn.execute("SELECT COUNT(*) FROM events").fetchone()
    return int(row[0]) if row else 0


def _touch_instance(conn: Conn, me: str, started_at: float) -> None:
    now = time.time()
    conn.execute(
        "INSERT INTO instances (instance, host, pid, started_at, seen_at)"
        " VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (instance) DO UPDATE SET seen_at = excluded.seen_at",
        (me, socket.gethostname(), os.getpid(), started_at, now),
    )
