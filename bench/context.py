"""What every section is given: the options, the run's private Redis, the
processes it started (all ended at the end, whatever happened), the report.

The processes come from ``tests/harness.py``, the module the tests start them
with, so that the bench and the tests run the daemon the same way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# harness.py lives with the tests (tests/ is not a package): import it by path
sys.path.insert(0, str(ROOT / "tests"))
from harness import (  # noqa: F401  (the sections import them from here)
    Coyotes,
    RedisServer,
    free_port,
    stop_process,
    wait_until,
)

HELLO = Path(__file__).resolve().parent / "hello.py"
NODE = "bench"
PREPARE = "task:prepare:queue"
T_START = time.monotonic()


def progress(message: str) -> None:
    print(f"[bench {time.monotonic() - T_START:6.1f}s] {message}", file=sys.stderr, flush=True)


class Processes:
    """Every process the run starts (Popen or daemon), ended in ``close``."""

    def __init__(self):
        self.items: list = []   # Popen, Coyotes or RedisServer

    def start(self, argv, **popen) -> subprocess.Popen:
        proc = subprocess.Popen(argv, **popen)
        self.items.append(proc)
        return proc

    def add(self, daemon: Coyotes) -> Coyotes:
        self.items.append(daemon)
        return daemon

    def close(self) -> None:
        for item in reversed(self.items):
            with contextlib.suppress(Exception):
                if isinstance(item, subprocess.Popen):
                    stop_process(item, 10)
                elif isinstance(item, Coyotes):
                    item.stop(10)
                else:
                    item.stop()


class BenchRedis(RedisServer):
    """A redis-server of the run: no persistence, room for 20,000 clients (a daemon
    with 10,000 channels may hold one each), and the bench's own client ``r``
    (named ``bench``, so that MONITOR and CLIENT LIST can leave it out)."""

    def __init__(self, directory: Path):
        super().__init__(directory, aof=False, extra=["--maxclients", "20000"])
        self.r = None

    def start(self) -> BenchRedis:
        super().start()
        self.r = self.client(socket_timeout=60, client_name="bench")
        return self

    def flush(self) -> None:
        self.r.flushall()


class Context:
    """The options (``args``), the Redis, the processes, the report and the
    folders of one run."""

    def __init__(self, args, report):
        self.args = args
        self.report = report
        self.levels = [int(x) for x in args.levels.split(",") if x.strip()]
        self.daemon_args = args.daemon_args.split()
        self.out = Path(args.out) if args.out else (
            ROOT / ".bench" if args.quick or args.only else ROOT / "docs")
        self.procs = Processes()
        self.tmp = Path(tempfile.mkdtemp(prefix="coyotes-bench-"))
        self.redis: BenchRedis | None = None
        # the peer (--peer): its own redis-server, so that both daemons may run
        # at once and each server's CPU is its daemon's
        self.peer = os.path.abspath(args.peer) if args.peer else ""
        self.peer_redis: BenchRedis | None = None
        self.sides: list[Side] = []   # Coyotes, then the peer if there is one

    def start_redis(self) -> BenchRedis:
        self.redis = self._redis(self.tmp)
        self.sides = [Side("coyotes", self.redis, self.daemon)]
        if self.peer:
            self.peer_redis = self._redis(self.workdir("peer-redis-"))
            self.sides.append(Side("peer", self.peer_redis, self.peer_daemon))
        return self.redis

    def _redis(self, directory: Path) -> BenchRedis:
        server = BenchRedis(directory)
        self.procs.items.append(server)
        return server.start()

    def workdir(self, prefix: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.tmp))

    def daemon(self, workdir: Path, args=()) -> Coyotes:
        """coyotes.py as a real process against the run's Redis (with
        ``--daemon-args``), once its GET /health answers."""
        daemon = Coyotes(self.redis.port, workdir, [*args, *self.daemon_args], node_id=NODE)
        self.procs.add(daemon)
        return daemon.start(timeout=30)

    def peer_daemon(self, workdir: Path, args=()) -> Coyotes:
        """The peer (``--peer``, a daemon that takes the Go original's flags) against
        its own Redis, once GET /channels answers: it has no /health, no
        -node-id, and none of Coyotes' own flags (``--daemon-args``)."""
        daemon = Coyotes(self.peer_redis.port, workdir, args, command=[self.peer],
                         ready_path="/channels")
        self.procs.add(daemon)
        return daemon.start(timeout=30)

    def redact(self, text: str) -> str:
        """``text`` without this machine's paths (the report names no machine path)."""
        for path, name in ((self.peer, Path(self.peer).name), (str(self.tmp), "$TMP"),
                           (str(self.out), "$OUT"), (str(ROOT), ".")):
            if path:
                text = text.replace(path, name)
        return text

    def close(self) -> None:
        self.procs.close()
        if self.args.keep:
            progress(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


class Side:
    """Coyotes or the peer: its name, its Redis, and how to start it
    (``start(workdir, args)``)."""

    def __init__(self, name: str, redis: BenchRedis, start):
        self.name, self.redis, self.start = name, redis, start

    @property
    def is_peer(self) -> bool:
        return self.name == "peer"


def tear_down(daemon, workdir) -> None:
    """End a section: stop its daemon (if any), remove its files."""
    if daemon:
        daemon.stop(30)
    shutil.rmtree(workdir, ignore_errors=True)


def is_refusal(status: int, body: bytes) -> bool:
    """Whether a reply refused: another status than 200, or the Go original's 500
    envelope inside a 200."""
    return status != 200 or b'"status_code":500' in body.replace(b" ", b"")
