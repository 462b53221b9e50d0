"""Fixtures: real redis-server processes on free ports, and the daemon as a real process.

Nothing here touches the shared Redis on 6379. ``redis_server`` starts a
private server (append-only file on, so a test can kill and restart it
without losing data); ``coyotes`` starts ``coyotes.py`` against it and
waits until its API answers.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "coyotes.py"
LEDGER = Path(__file__).resolve().parent / "ledger.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = ""):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:   # the condition may raise while not ready
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}"
                         + (f" (last error: {last_exc!r})" if last_exc else ""))


class RedisServer:
    def __init__(self, directory: Path, aof: bool = True, extra=()):
        self.dir, self.aof, self.extra = directory, aof, list(extra)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        args = [shutil.which("redis-server") or "redis-server", "--port", str(self.port),
                "--bind", "127.0.0.1", "--save", "", "--dir", str(self.dir),
                "--appendonly", "yes" if self.aof else "no",
                "--appendfsync", "always", "--logfile", str(self.dir / "redis.log"),
                *self.extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self.client().ping(), timeout=10, what="redis-server to answer")

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=5)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


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


class Coyotes:
    """The daemon as a real process; its log goes to ``log_path``."""

    def __init__(self, redis_port: int, workdir: Path, args=(), node_id: str = "",
                 command=None):
        self.redis_port = redis_port
        self.http_port = free_port()
        self.dir = workdir
        self.pidfile = workdir / f"coyotes-{self.http_port}.pid"
        self.log_path = workdir / f"coyotes-{self.http_port}.log"
        self.args = list(args)
        self.node_id = node_id
        self.command = command or [sys.executable, str(SCRIPT)]
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def argv(self) -> list[str]:
        return [*self.command, "-redis-host", f"127.0.0.1:{self.redis_port}",
                "-http-addr", f"127.0.0.1:{self.http_port}", "-pidfile", str(self.pidfile),
                *(["-node-id", self.node_id] if self.node_id else []), *self.args]

    def start(self, wait: bool = True, **popen) -> Coyotes:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv(), stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=self.dir, **popen)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20) -> None:
        """Until GET /health answers 200: the channels exist and the node is registered."""
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"coyotes exited {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as resp:
                    return resp.status == 200
            except (urllib.error.URLError, OSError):
                return False
        wait_until(ready, timeout=timeout, what="coyotes to be ready")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int = signal.SIGUSR2) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def stop(self, timeout: float = 60) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.wait(5)

    def reap(self) -> None:
        """End of a test: stop the daemon if it still runs. Two signals (a forced
        stop) make it kill its commands' groups, so that no command outlives the
        test; KILL only if it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def kill9(self) -> None:
        self.proc.kill()
        self.wait(5)

    # -- HTTP -------------------------------------------------------------
    def request(self, method: str, path: str, data=None, headers=None, body: bytes | None = None):
        """(HTTP status, decoded JSON envelope) for one call."""
        headers = dict(headers or {})
        if data is not None:
            body = json.dumps(data).encode()
            headers.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")


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
