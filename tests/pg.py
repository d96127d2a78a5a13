"""A throwaway PostgreSQL server for the tests: its own data directory in a temporary folder, a
free TCP port on 127.0.0.1, trust authentication for the superuser `voltd`.

    server = PostgresServer()          # initdb + start; raises PostgresUnavailable
    url = server.create_database("x")  # postgresql://voltd@127.0.0.1:PORT/x, from template0
    server.stop(); server.start()      # the same data directory on the same port: same URLs
    server.kill(); server.start()      # SIGKILL, then crash recovery from the WAL
    server.cleanup()                   # stop and remove it all (also at exit, see below)

PostgreSQL refuses to run as root: as root (tests and CI) every binary runs as the `postgres`
system user through `runuser`, and the temporary folder belongs to that user; as anyone else
the binaries run as the current user.

Durability is off (`fsync=off`, `full_page_writes=off`, initdb `--no-sync`): the data of a
stopped or SIGKILLed server survives, since the operating system keeps it, but not a crash of
the machine. That is all the tests need, and it makes a start and a database cheap.
`PostgresServer(durable=True)` (the benchmark) keeps PostgreSQL's durable defaults instead:
`fsync=on`, `full_page_writes=on`, and initdb syncs its files.

Nothing is left running by a test run that dies: `cleanup` runs at exit, and a watchdog process
(which outlives a SIGKILL or `os._exit` of the test run) stops the server and removes its folder
as soon as the process that started it is gone.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

from psycopg import connect, sql

USER = "voltd"  # the superuser that initdb creates; local connections need no password
SYSTEM_USER = "postgres"  # who runs the server when we are root


class PostgresUnavailable(RuntimeError):
    """PostgreSQL is not installed here, or its server cannot be started."""


def find_bindir() -> Path | None:
    """The folder with initdb, pg_ctl and postgres: Debian's /usr/lib/postgresql/N/bin (the
    highest N), else `pg_config --bindir`, else wherever PATH finds initdb."""

    def version(d: str) -> tuple[int, ...]:
        m = re.search(r"/postgresql/([0-9.]+)/bin$", d)
        return tuple(int(p) for p in m.group(1).split(".") if p) if m else ()

    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if os.access(os.path.join(d, "initdb"), os.X_OK):
            return Path(d)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out and os.access(os.path.join(out, "initdb"), os.X_OK):
                return Path(out)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc; none where there is no /proc)."""
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(Path(stat).read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.split("/")[2]))
    return found


# Run by the watchdog process: wait for EOF on stdin (the test run is gone: its end of the pipe
# is closed, however it ended), then stop the server and remove its folder.
_WATCHDOG = """
import json, os, shutil, subprocess, sys
sys.stdin.buffer.read()
stop, data, root = json.loads(sys.argv[1])
if os.path.exists(os.path.join(data, "postmaster.pid")):
    subprocess.run(stop, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
shutil.rmtree(root, ignore_errors=True)
"""


class PostgresServer:
    """One PostgreSQL server in a temporary folder, started by the constructor."""

    def __init__(
        self, *, bindir: Path | None = None, start_timeout: int = 60, durable: bool = False
    ) -> None:
        found = bindir or find_bindir()
        if found is None:
            raise PostgresUnavailable(
                "PostgreSQL is not installed: no /usr/lib/postgresql/*/bin/initdb, no pg_config "
                "and no initdb on PATH (Debian: apt-get install postgresql)"
            )
        self.bindir: Path = found
        self.start_timeout = start_timeout
        self.durable = durable
        self._as: list[str] = []
        owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam(SYSTEM_USER)
            except KeyError:
                raise PostgresUnavailable(
                    f"running as root, and PostgreSQL refuses root: it needs the "
                    f"{SYSTEM_USER!r} system user (Debian's postgresql package creates it)"
                ) from None
            runuser = shutil.which("runuser") or "/usr/sbin/runuser"
            if not os.access(runuser, os.X_OK):
                raise PostgresUnavailable("running as root, and runuser (util-linux) is missing")
            self._as = [runuser, "-u", SYSTEM_USER, "--"]

        self.root = Path(tempfile.mkdtemp(prefix="voltd-pg-"))
        self.datadir = self.root / "data"
        self.sockdir = self.root / "sock"
        self.logfile = self.root / "postgres.log"
        self.sockdir.mkdir()
        if owner is not None:
            for p in (self.root, self.sockdir):
                os.chown(p, owner.pw_uid, owner.pw_gid)
        self.host = "127.0.0.1"
        self.port = 0
        self.user = USER
        self._pid: int | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        atexit.register(self.cleanup)
        try:
            self._start_watchdog()
            t = time.monotonic()
            self._run(
                "initdb",
                "-D", str(self.datadir),
                "-U", USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                *([] if durable else ["--no-sync"]),
                "--no-instructions",
            )  # fmt: skip
            self.initdb_seconds = time.monotonic() - t
            t = time.monotonic()
            for attempt in range(3):  # another process may take the free port before we do
                self.port = free_port()
                try:
                    self.start()
                    break
                except PostgresUnavailable:
                    if attempt == 2 or "could not bind" not in self.log():
                        raise
            self.start_seconds = time.monotonic() - t
        except BaseException:
            self.cleanup()
            raise

    # -- URLs and databases -------------------------------------------------------------------

    def url_for(self, dbname: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    @property
    def url(self) -> str:
        """The URL of the `postgres` database (the maintenance one)."""
        return self.url_for("postgres")

    def create_database(self, name: str) -> str:
        """A new, empty database `name` (a copy of template0); returns its URL."""
        with connect(self.url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
            )
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop `name` if it exists, closing whatever connections it still has."""
        with connect(self.url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    # -- the server's life ----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._pid is not None and _alive(self._pid)

    def start(self) -> None:
        """Start the server (again): the same data directory, the same port, so the same URLs.
        After `kill` this runs crash recovery first."""
        if self.running:
            return
        self._forget_dead_postmaster()
        opts = [
            "-p", str(self.port),
            "-k", str(self.sockdir),
            "-c", f"listen_addresses={self.host}",
            # Tests only: no fsync (see the module's docstring); commits still wait for the WAL
            # write, so what a test saw committed survives a stop or a SIGKILL of the server.
            # With `durable` (the benchmark), every commit is fsync'd as in production.
            "-c", f"fsync={'on' if self.durable else 'off'}",
            "-c", "synchronous_commit=on",
            "-c", f"full_page_writes={'on' if self.durable else 'off'}",
            "-c", "max_connections=200",
        ]  # fmt: skip
        self._run(
            "pg_ctl", "start",
            "-D", str(self.datadir),
            "-w", "-t", str(self.start_timeout),
            "-l", str(self.logfile),
            "-o", shlex.join(opts),
            timeout=self.start_timeout + 30,
        )  # fmt: skip
        pid = self._read_pid()
        if pid is None:
            raise PostgresUnavailable(f"pg_ctl started no postmaster\n{self.log()}")
        self._pid = pid

    def stop(self, mode: Literal["smart", "fast", "immediate"] = "fast") -> None:
        """Stop the server: "fast" closes the connections and checkpoints; "immediate" ends
        every process at once (the next start recovers from the WAL)."""
        if not self.running:
            return
        self._run("pg_ctl", "stop", "-D", str(self.datadir), "-m", mode, "-w", "-t", "60")
        self._pid = None

    def kill(self) -> None:
        """SIGKILL the postmaster and the server's other processes, as a crash would, and wait
        until they are gone; `start` then recovers from the WAL. (A postmaster killed alone
        leaves its backends running a while, and a new one refuses to start while they hold
        the old shared memory.)"""
        pid = self._pid
        if pid is None or not _alive(pid):
            self._pid = None
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)  # so that it starts no backend while we look
        victims = [pid, *_children(pid)]
        for p in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in victims):
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL processes {victims} outlived SIGKILL")
            time.sleep(0.01)
        self._pid = None

    def cleanup(self) -> None:
        """Stop the server (if it runs) and remove its folder. Idempotent; runs at exit."""
        with contextlib.suppress(Exception):
            if self.running:
                try:
                    self.stop("immediate")
                except Exception:  # noqa: BLE001 - a wedged server: kill it
                    self.kill()
        shutil.rmtree(self.root, ignore_errors=True)
        if self._watchdog is not None:
            with contextlib.suppress(Exception):
                assert self._watchdog.stdin is not None
                self._watchdog.stdin.close()
                self._watchdog.wait(timeout=10)
            self._watchdog = None
        atexit.unregister(self.cleanup)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def log(self) -> str:
        """The server's log so far (for failure messages)."""
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    # -- internals ----------------------------------------------------------------------------

    def _run(self, binary: str, *args: str, timeout: float = 120) -> str:
        cmd = [*self._as, str(self.bindir / binary), *args]
        try:
            proc = subprocess.run(
                cmd,
                cwd=self.root,  # the postgres user may not read the current directory
                env={**os.environ, "LC_ALL": "C", "PGTZ": "UTC"},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise PostgresUnavailable(f"{shlex.join(cmd)}: {e}\n{self.log()}") from e
        if proc.returncode != 0:
            raise PostgresUnavailable(
                f"{shlex.join(cmd)} exited with {proc.returncode}:\n"
                f"{proc.stdout}{proc.stderr}\n{self.log()}"
            )
        return proc.stdout

    def _read_pid(self) -> int | None:
        try:
            return int((self.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def _forget_dead_postmaster(self) -> None:
        # A killed postmaster that its new parent has not reaped yet (that takes seconds here)
        # is a zombie: kill(pid, 0) still succeeds, and PostgreSQL would take it for a server
        # that holds the data directory's lock file and the one beside the Unix socket. A
        # zombie never runs again: remove both files, and the shared memory segment that the
        # lock file names (a new postmaster would have removed it on seeing the stale file).
        pid = self._read_pid()
        if pid is None or _alive(pid):
            return
        try:
            os.kill(pid, 0)
        except OSError:
            return  # reaped (or someone else's now): PostgreSQL handles the stale lock file
        pidfile = self.datadir / "postmaster.pid"
        with contextlib.suppress(OSError, IndexError, ValueError):
            shmid = int(pidfile.read_text().splitlines()[6].split()[1])
            ipcrm = shutil.which("ipcrm")
            if ipcrm:
                subprocess.run([ipcrm, "-m", str(shmid)], capture_output=True, timeout=10)
        pidfile.unlink(missing_ok=True)
        for lock in self.sockdir.glob(".s.PGSQL.*.lock"):
            lock.unlink(missing_ok=True)

    def _start_watchdog(self) -> None:
        stop = [*self._as, str(self.bindir / "pg_ctl"), "stop", "-D", str(self.datadir)]
        stop += ["-m", "immediate", "-w", "-t", "30"]
        self._watchdog = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WATCHDOG,
                json.dumps([stop, str(self.datadir), str(self.root)]),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
            start_new_session=True,  # Ctrl-C of the test run must not stop it before it cleans
        )
