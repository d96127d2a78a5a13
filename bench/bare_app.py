"""The baseline for the benchmark: the same web stack as voltd, doing nothing.

One process, hypercorn's trio worker serving a quart-trio app over HTTPS, one route that reads
the whole body and answers `{"ok": true}`. Whatever throughput and latency this reaches is the
ceiling that the stack itself sets; voltd is measured against it so that its own cost (signature
check, parsing, routing, spool commit) can be read off as a ratio.

    python bench/bare_app.py --bind 127.0.0.1:8443 --certfile cert.pem --keyfile key.pem

SIGTERM or SIGINT shuts it down gracefully (exit 0), like voltd.
"""

from __future__ import annotations

import argparse
import signal
import sys

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import request
from quart_trio import QuartTrio

app = QuartTrio(__name__)


@app.post("/webhooks")
async def webhooks() -> tuple[dict[str, bool], int]:
    """Read the full body, as voltd must before it can check the signature, then say yes."""
    await request.get_data()
    return {"ok": True}, 200


async def _until_signal() -> None:
    """Hypercorn's shutdown trigger: return on the first SIGTERM/SIGINT."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return


def main(argv: list[str] | None = None) -> int:
    """Serve until signalled, with hypercorn's defaults except for what the bench must set."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", required=True, help="host:port")
    parser.add_argument("--certfile", required=True)
    parser.add_argument("--keyfile", required=True)
    args = parser.parse_args(argv)

    config = Config()
    config.bind = [args.bind]
    config.certfile = args.certfile
    config.keyfile = args.keyfile
    config.accesslog = None
    config.errorlog = "-"
    config.loglevel = "WARNING"
    trio.run(_serve, config)
    return 0


async def _serve(config: Config) -> None:
    """Run hypercorn's trio server in this process (one worker, no supervisor process)."""
    await serve(app, config, shutdown_trigger=_until_signal)  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
