"""Fixtures: real redis-server processes on free ports, and the daemon as a real process.

Nothing here touches the shared Redis on 6379. ``redis_server`` starts a
private server (append-only file on, so a test can kill and restart it
without losing data); ``coyotes`` starts ``coyotes.py`` against it and
waits until its API answers. The processes themselves are in ``harness.py``,
shared with the benchmark suite (``bench/``).
"""

from __future__ import annotations

import shlex
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

# gated task: GATE LEDGER GATEFILE TAG
GATE = ("import os, sys, time\n"
        "def note(event):\n"
        "    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)\n"
        "    os.write(fd, f'{event} {sys.argv[3]} {time.time()}\\n'.encode())\n"
        "    os.close(fd)\n"
        "note('start')\n"
        "end = time.time() + 60\n"
        "while not os.path.exists(sys.argv[2]) and time.time() < end:\n"
        "    time.sleep(0.02)\n"
        "note('end')\n")


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


@pytest.fixture
def gate(tmp_path):
    """A gate file path; opened (created) at teardown so no gated task lingers."""
    path = tmp_path / "gate"
    yield path
    path.touch()


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


def gate_command(ledger: Path, gate: Path, tag: str) -> str:
    return shlex.join([sys.executable, "-c", GATE, str(ledger), str(gate), tag])


def events(ledger: Path) -> list[tuple[str, str]]:
    return [(event, tag) for event, tag, _ in read_ledger(ledger)]


def started(ledger: Path, tag: str) -> bool:
    return ("start", tag) in events(ledger)


def ended(ledger: Path, tag: str) -> bool:
    return ("end", tag) in events(ledger)


def idle(r, channel: str) -> bool:
    return r.llen(f"{channel}:tasks:queue") == 0 and not r.smembers(f"{channel}:tasks:queue:exec")


def ok_data(reply, status=200):
    """The data of a success envelope, after checking the envelope itself."""
    code, env = reply
    assert code == status, env
    assert set(env) == {"status_code", "message", "data"}, env
    assert env["status_code"] == status, env
    return env["data"]


def assert_error(reply, status, what=""):
    code, env = reply
    assert code == status, f"{what}: {code} {env}"
    assert isinstance(env, dict) and set(env) == {"status_code", "message", "data"}, env
    assert env["status_code"] == status, f"{what}: {env}"
    assert isinstance(env["message"], str) and env["message"] and env["message"] != "ok", env
    assert env["data"] is None, env
    return env["message"]
