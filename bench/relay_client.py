"""voltd's HTTP client stack alone, for reading the relay phase's ratio.

    python bench/relay_client.py URL BODY_FILE CONCURRENCY SECONDS

`CONCURRENCY` trio tasks POST the body in a loop through one `voltd.http.HttpClient` (httpx on
trio, as the `http` sink uses it) for `SECONDS`, each waiting for its answer. No spool, no
delivery worker, no event objects: the difference between this and voltd's deliveries/s at
the same concurrency is what voltd adds around the client. Prints one line
`RELAY_CLIENT {"per_s": ..., "requests": ..., "seconds": ..., "cpu_busy": ...}`.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import trio

from voltd.http import HttpClient, HttpOptions
from voltd.sink import SinkContext


async def main(url: str, body: bytes, concurrency: int, seconds: float) -> dict[str, float]:
    client = HttpClient(HttpOptions(), SinkContext(name="bench", config_dir=Path.cwd()))
    headers = {"Content-Type": "application/json"}
    count = 0
    # A short warm-up opens the connections before the clock starts.
    for _ in range(concurrency):
        await client.request("POST", url, content=body, headers=headers)

    async def worker(deadline: float) -> None:
        nonlocal count
        while trio.current_time() < deadline:
            await client.request("POST", url, content=body, headers=headers)
            count += 1

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.monotonic()
    deadline = trio.current_time() + seconds
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker, deadline)
    elapsed = time.monotonic() - start
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    await client.aclose()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {
        "per_s": count / elapsed,
        "requests": count,
        "seconds": elapsed,
        "cpu_busy": cpu / elapsed,
        "cpu_ms_per_request": cpu * 1000 / count if count else 0.0,
    }


if __name__ == "__main__":
    url, body_file, conc, secs = sys.argv[1:5]
    result = trio.run(main, url, Path(body_file).read_bytes(), int(conc), float(secs))
    print("RELAY_CLIENT " + json.dumps(result), flush=True)
