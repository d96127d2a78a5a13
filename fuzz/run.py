"""Run the hypothesis properties in tests/ as fuzz targets, for as long as you let them.

    uv run python fuzz/run.py --list
    uv run python fuzz/run.py tests/test_fuzz_http.py::fuzz_live_raw --seconds 300
    uv run python fuzz/run.py --all --seconds 60
    uv run python fuzz/run.py TARGET --replay fuzz/crashes/FILE

Each input is a byte string that hypothesis's `fuzz_one_input` turns into one example of the
property. The bytes are random, or chosen by libFuzzer from coverage when atheris is installed.
A failure is saved to fuzz/crashes/ and into hypothesis's example database, which `pytest`
replays (and shrinks) the next time it runs that test. See fuzz/README.md.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib
import importlib.util
import inspect
import os
import random
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CRASHES = ROOT / "fuzz" / "crashes"
# What atheris measures coverage of: our code and the HTTP stack in front of it.
INSTRUMENT = ["voltd", "voltd_file", "quart", "quart_trio", "werkzeug", "hypercorn", "h11"]


def load(target: str) -> Any:
    """The test object named `tests/FILE.py::NAME`; conftest first, for its profiles."""
    path, _, name = target.partition("::")
    module = ".".join(Path(path).resolve().relative_to(ROOT).with_suffix("").parts)
    importlib.import_module("tests.conftest")
    loaded = importlib.import_module(module)
    return getattr(loaded, name) if name else loaded


def discover(files: list[str]) -> dict[str, str]:
    """Every @given function in `files`: target -> "" if fuzzable, else why not."""
    found = {}
    for file in files:
        module = load(file)
        for name, obj in vars(module).items():
            if getattr(obj, "is_hypothesis_test", False) and obj.__module__ == module.__name__:
                # hypothesis leaves only the arguments @given does not provide in the signature.
                needs = list(inspect.signature(obj).parameters)
                why = f"needs {', '.join(needs)} (fixtures or parameters)" if needs else ""
                found[f"{file}::{name}"] = why
    return found


def prepare(test: Any) -> tuple[Callable[[bytes], bytes | None], dict[str, Any]]:
    """`fuzz_one_input` for `test`, running async tests under trio.run as pytest-trio does,
    and the arguments of the latest example (for the report). functools.wraps keeps the
    database key, so pytest replays what fuzzing found."""
    handle = test.hypothesis
    inner = handle.inner_test
    seen: dict[str, Any] = {}

    @functools.wraps(inner)
    def call(*args: Any, **kwargs: Any) -> Any:
        seen.clear()
        seen.update(kwargs)
        if inspect.iscoroutinefunction(inner):
            import trio

            return trio.run(functools.partial(inner, *args, **kwargs))
        return inner(*args, **kwargs)

    handle.inner_test = call
    return handle.fuzz_one_input, seen


def stem(target: str) -> str:
    """`tests/test_x.py::test_y` -> `test_x.test_y`, for crash file names."""
    path, _, name = target.partition("::")
    return f"{Path(path).stem}.{name}"


def report(target: str, data: bytes, exc: BaseException, seen: dict[str, Any]) -> Path:
    CRASHES.mkdir(parents=True, exist_ok=True)
    path = CRASHES / f"{stem(target)}-{hashlib.sha1(data).hexdigest()[:12]}"
    path.write_bytes(data)
    print("".join(traceback.format_exception(exc)), file=sys.stderr)
    print(f"FAILED {target} with arguments:\n  {seen!r:.4000}", file=sys.stderr)
    print(f"input saved: {path}\nreplay: uv run python fuzz/run.py {target} --replay {path}")
    return path


def fuzz_random(target: str, seconds: float, seed: int | None) -> int:
    fuzz, seen = prepare(load(target))
    rng = random.Random(seed)
    start = time.monotonic()
    runs = valid = 0
    next_note = start + 30
    while (now := time.monotonic()) - start < seconds:
        if now > next_note:
            print(f"  ... {runs} inputs, {valid} examples", flush=True)
            next_note = now + 30
        data = rng.randbytes(rng.choice((64, 512, 2048, 8192)))
        runs += 1
        try:
            valid += fuzz(data) is not None
        except Exception as exc:  # noqa: BLE001 - whatever the property raises is the finding
            report(target, data, exc, seen)
            print(f"{target}: failed on input {runs} ({valid} examples passed before)")
            return 1
    took = time.monotonic() - start
    print(f"{target}: {runs} inputs, {valid} examples, no failure in {took:.0f}s")
    return 0


def fuzz_atheris(target: str, seconds: float) -> int:
    import atheris

    with atheris.instrument_imports(include=INSTRUMENT):
        fuzz, seen = prepare(load(target))
    CRASHES.mkdir(parents=True, exist_ok=True)

    def one(data: bytes) -> None:
        try:
            fuzz(data)
        except Exception:
            print(f"FAILED {target} with arguments:\n  {seen!r:.4000}", file=sys.stderr)
            raise

    # Start from random inputs, as the random engine does: from an empty corpus libFuzzer's
    # inputs stay tiny for long, and hypothesis reads tiny inputs as the simplest examples.
    corpus = Path(tempfile.mkdtemp(prefix="corpus-"))
    rng = random.Random(0)
    for i in range(64):
        (corpus / str(i)).write_bytes(rng.randbytes(rng.choice((512, 2048, 8192))))
    # libFuzzer saves the failing input under the prefix and exits; it never returns.
    flags = [f"-max_total_time={int(seconds)}", "-max_len=8192", "-print_final_stats=1"]
    flags += [f"-artifact_prefix={CRASHES}/{stem(target)}-", str(corpus)]
    atheris.Setup([sys.argv[0], *flags], one)
    atheris.Fuzz()
    return 0


def replay(target: str, path: Path) -> int:
    fuzz, seen = prepare(load(target))
    try:
        fuzz(path.read_bytes())
    except Exception as exc:  # noqa: BLE001 - the failure is what we came to see
        report(target, path.read_bytes(), exc, seen)
        return 1
    print(f"{target}: passes with {path} (arguments {seen!r:.2000})")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("targets", nargs="*", help="tests/FILE.py::NAME")
    p.add_argument("--list", action="store_true", help="list the targets")
    p.add_argument("--all", action="store_true", help="every fuzzable target in tests/")
    p.add_argument("--seconds", type=float, default=60, help="per target (default 60)")
    p.add_argument("--engine", choices=["auto", "random", "atheris"], default="auto")
    p.add_argument("--seed", type=int, help="for the random engine")
    p.add_argument("--replay", type=Path, help="run TARGET once on a saved input")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("HYPOTHESIS_PROFILE", "fuzz")
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if importlib.util.find_spec("atheris") else "random"
    if (args.replay or args.child) and len(args.targets) != 1:
        p.error("--replay needs exactly one target")
    if args.replay:
        return replay(args.targets[0], args.replay)
    if args.child:
        if engine == "atheris":
            return fuzz_atheris(args.targets[0], args.seconds)
        return fuzz_random(args.targets[0], args.seconds, args.seed)
    files = sorted({t.partition("::")[0] for t in args.targets})
    if args.list or args.all:
        files = sorted(str(f.relative_to(ROOT)) for f in (ROOT / "tests").glob("test_*.py"))
    found = discover(files)
    if args.list:
        for target, why in found.items():
            print(f"{target}  [{why or 'fuzzable'}]")
        return 0
    targets = [t for t, why in found.items() if not why] if args.all else args.targets
    if not targets:
        p.error("name a target, or use --all or --list")
    for target in targets:
        if found.get(target) != "":
            p.error(f"{target}: {found.get(target) or 'no such @given function'}")
    # One child process per target: libFuzzer exits when done, and a child's temporary
    # files (TMPDIR) and daemons end with it.
    failed = []
    for target in targets:
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        with tempfile.TemporaryDirectory(prefix="voltd-fuzz-", dir=shm) as tmp:
            cmd = [sys.executable, __file__, target, "--child", "--engine", engine]
            cmd += ["--seconds", str(args.seconds)]
            cmd += [] if args.seed is None else ["--seed", str(args.seed)]
            print(f"fuzzing {target} for {args.seconds:g}s ({engine})", flush=True)
            if subprocess.call(cmd, env={**os.environ, "TMPDIR": tmp}) != 0:
                failed.append(target)
    print(f"{len(targets) - len(failed)} of {len(targets)} targets without failure")
    for target in failed:
        print(f"FAILED {target}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
