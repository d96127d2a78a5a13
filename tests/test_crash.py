"""Crash rounds: `kill -9` at random moments under concurrent load, with an HTTP relay and a
file sink. Every acknowledged event must reach both; duplicates (at-least-once allows them)
are counted and reported per 10,000 acknowledged events. Each round is killed at a random
moment after 1,000-3,000 acknowledgements, as the first kill test did (its file sinks had
~66 duplicates per 10,000).

What keeps them few: each event an HTTP `send` confirms is queued for the spool's next commit
at once, and the file sink's first write to a file after a start skips lines already there
(none at all). A relay always re-sends what was in flight at the kill, and what was confirmed
in the milliseconds before its commit.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import trio

from tests.helpers import Daemon, RecordingReceiver, make_event

ROUNDS = 20
#: A relay's duplicates per kill, on average: the request in flight, and the few confirmed in
#: the milliseconds before their outcome's commit (measured: about 1.5 at concurrency 1 under
#: this load). A receiver drops them by `webhook-id`, which is the same on every retry.
RELAY_DUPLICATES_PER_KILL = 5
#: The path the relay posts to.
RELAY = "/relay"


@pytest.fixture
def receiver() -> Iterator[RecordingReceiver]:
    """The relay's receiver: answers 200 at once; the relay posts to its `RELAY` path."""
    with RecordingReceiver() as server:
        yield server


def routes(url: str) -> str:
    return f"""\
[[routes]]
name = "all"
sinks = ["archive", "relay"]

[sinks.archive]
type = "file"
path = "out/all.jsonl"

[sinks.relay]
type = "http"
url = "{url}"
"""


async def load_until_killed(
    daemon: Daemon, kill_after: int, jitter: float, acked: list[str]
) -> None:
    """16 concurrent senders; the daemon is killed `jitter` seconds after this round's
    `kill_after`-th acknowledgement."""
    start = len(acked)
    async with httpx.AsyncClient(verify=daemon.tls(), timeout=10) as client:

        async def sender() -> None:
            while True:
                body = make_event()
                headers = {"X-Respond-Flow-Signature": daemon.signer.sign(body)}
                try:
                    r = await client.post(daemon.url, content=body, headers=headers)
                except httpx.HTTPError:
                    return  # killed under us: expected
                if r.status_code == 200:
                    acked.append(json.loads(body)["id"])

        async def killer() -> None:
            while len(acked) - start < kill_after:  # noqa: ASYNC110 - a plain counter
                await trio.sleep(0.005)
            await trio.sleep(jitter)
            assert daemon.proc is not None
            daemon.proc.kill()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(killer)
            for _ in range(16):
                nursery.start_soon(sender)


@pytest.mark.slow
def test_kill_9_rounds_lose_nothing_and_duplicate_little(
    daemon: Daemon, receiver: RecordingReceiver
) -> None:
    daemon.configure(body=routes(receiver.url(RELAY)))
    rng = random.Random(20261201)
    acked: list[str] = []
    for _ in range(ROUNDS):
        daemon.start()
        trio.run(load_until_killed, daemon, rng.randint(1000, 2000), rng.uniform(0, 0.3), acked)
        assert daemon.proc is not None
        daemon.proc.wait(10)
    daemon.start()

    def archived() -> Counter[str]:
        return Counter(json.loads(line)["id"] for line in daemon.lines("out/all.jsonl"))

    want = set(acked)
    daemon.wait_for(
        lambda: want <= set(archived()) and want <= set(receiver.ids(RELAY)), timeout=180
    )
    assert daemon.stop() == 0
    file_dups = sum(n - 1 for n in archived().values())
    relay_dups = sum(n - 1 for n in receiver.counts(RELAY).values())
    deliveries = 2 * len(acked)
    report = (
        f"{ROUNDS} kill -9 rounds, {len(acked)} acknowledged events ({deliveries} deliveries): "
        f"{file_dups} duplicate lines in the file sink, {relay_dups} duplicate relays; "
        f"{10_000 * (file_dups + relay_dups) / deliveries:.1f} duplicate deliveries per 10,000 "
        f"({10_000 * relay_dups / len(acked):.1f} relays per 10,000 events)"
    )
    print(report)  # the figure the issue asks for (`pytest -s` or -rP shows it)
    assert len(acked) >= 20_000, report  # 20 rounds of 1,000-2,000
    assert file_dups == 0, report  # the first write after a start skips what is there
    assert relay_dups <= ROUNDS * RELAY_DUPLICATES_PER_KILL, report
