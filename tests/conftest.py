"""Fixtures: real redis-server processes on free ports, and the daemon as a real process.

Nothing here touches the shared Redis on 6379. ``redis_server`` starts a
private server (append-only file on, so a test can kill and restart it
without losing data); ``coyotes`` starts ``coyotes.py`` against it and
waits until its API answers. The processes themselves are in ``harness.py``,
shared with the benchmark suite (``bench/``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import redis

# the test modules import these from here (``from conftest import wait_until``)
from harness import (  # noqa: F401
    ROOT,
    SCRIPT,
    Coyotes,
    RedisServer,
    free_port,
    stop_process,
    wait_until,
)

LEDGER = Path(__file__).resolve().parent / "ledger.py"


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory):
    """One private redis-server (no persistence) for a module whose tests flush it."""
    server = RedisServer(tmp_path_factory.mktemp("module-redis"), aof=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def r(redis_server) -> redis.Redis:
    return redis_server.client()


@pytest.fixture
def coyotes_factory(redis_server, tmp_path):
    started: list[Coyotes] = []

    def make(*args, start: bool = True, node_id: str = "", **kw) -> Coyotes:
        daemon = Coyotes(redis_server.port, tmp_path, args, node_id=node_id, **kw)
        started.append(daemon)
        return daemon.start() if start else daemon

    yield make
    for daemon in started:
        daemon.reap()


@pytest.fixture
def coyotes(coyotes_factory) -> Coyotes:
    return coyotes_factory()


def ledger_command(path: Path, tag: str, sleep: float = 0.0) -> str:
    """A command line that appends 'start TAG t' / 'end TAG t' lines to ``path``."""
    return f"{sys.executable} {LEDGER} {path} {tag} {sleep}"


def read_ledger(path: Path) -> list[tuple[str, str, float]]:
    if not path.exists():
        return []
    rows = []
    # every line ends with a newline: what follows the last one is still being written
    for line in path.read_text().split("\n")[:-1]:
        event, tag, when = line.split()
        rows.append((event, tag, float(when)))
    return rows


def max_overlap(rows) -> int:
    """Most tasks running at once, from a ledger's start/end lines."""
    current = peak = 0
    for event, _tag, _when in sorted(rows, key=lambda r: (r[2], r[0] == "start")):
        current += 1 if event == "start" else -1
        peak = max(peak, current)
    return peak
