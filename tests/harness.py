"""Real processes for the tests and the benchmark suite: a private redis-server
on a free port and the daemon started from its command line.

One copy, used by ``tests/conftest.py`` (its fixtures) and by ``bench/`` (``python
-m bench``), so that both start and stop these processes the same way. Nothing
here imports pytest: the bench runs under its own virtualenv without it.
Nothing here touches the shared Redis on 6379.
"""

from __future__ import annotations

import http.client
import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "coyotes.py"


class WaitTimeout(AssertionError, TimeoutError):
    """A condition never held: an assertion failure in a test, a timeout in the bench."""


def free_port() -> int:
    """A port nobody listens on, below the ephemeral range: a port the kernel hands
    out (bind to 0) may also become the local port of an outgoing connection (a
    daemon's own Redis client) before our server binds it."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


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
    raise WaitTimeout(f"timed out after {timeout}s waiting for {what or predicate}"
                      + (f" (last error: {last_exc!r})" if last_exc else ""))


def stop_process(proc: subprocess.Popen | None, timeout: float = 15) -> int | None:
    """TERM, then KILL if it has not exited after ``timeout`` seconds."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


class RedisServer:
    """A private redis-server. ``aof`` turns the append-only file on (fsync always),
    so that a test can kill and restart it without losing data; ``extra`` flags
    are added to its command line (``--maxclients 10000``, ``--requirepass``...)."""

    def __init__(self, directory: Path, aof: bool = True, extra=()):
        self.dir, self.aof, self.extra = directory, aof, list(extra)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self) -> RedisServer:
        args = [shutil.which("redis-server") or "redis-server", "--port", str(self.port),
                "--bind", "127.0.0.1", "--save", "", "--dir", str(self.dir),
                "--appendonly", "yes" if self.aof else "no",
                "--appendfsync", "always", "--logfile", str(self.dir / "redis.log"),
                *self.extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self.client().ping(), timeout=10, what="redis-server to answer")
        return self

    def client(self, **kw) -> redis.Redis:
        options = {"decode_responses": True, "socket_timeout": 5, **kw}
        return redis.Redis(port=self.port, **options)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        stop_process(self.proc, 5)


class Coyotes:
    """The daemon as a real process; its log goes to ``log_path``.

    ``command`` is the argv prefix (``coyotes.py`` under this Python by default):
    any daemon that takes the same flags can be started, such as the Go original
    (which has no ``-node-id`` and no ``/health``: give it ``ready_path="/channels"``)."""

    def __init__(self, redis_port: int, workdir: Path, args=(), node_id: str = "",
                 command=None, ready_path: str = "/health"):
        self.redis_port = redis_port
        self.http_port = free_port()
        self.dir = workdir
        self.pidfile = workdir / f"coyotes-{self.http_port}.pid"
        self.log_path = workdir / f"coyotes-{self.http_port}.log"
        self.args = list(args)
        self.node_id = node_id
        self.command = list(command or [sys.executable, str(SCRIPT)])
        self.ready_path = ready_path
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def argv(self) -> list[str]:
        return [*self.command, "-redis-host", f"127.0.0.1:{self.redis_port}",
                "-http-addr", f"127.0.0.1:{self.http_port}", "-pidfile", str(self.pidfile),
                *(["-node-id", self.node_id] if self.node_id else []), *self.args]

    def start(self, wait: bool = True, timeout: float = 20, **popen) -> Coyotes:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv(), stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=self.dir, **popen)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20) -> None:
        """Until GET ``ready_path`` answers 200 (/health: the channels exist and the
        node is registered)."""
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.command[-1]} exited {self.proc.returncode}:\n"
                                     f"{self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=5) as resp:
                    return resp.status == 200
            except (urllib.error.URLError, OSError):
                return False
        wait_until(ready, timeout=timeout, what=f"{Path(self.command[-1]).name} to be ready")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int = signal.SIGUSR2) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self._log:
                self._log.close()

    def stop(self, timeout: float = 60) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            if self._log:
                self._log.close()
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

    def call(self, method: str, path: str, form: dict | None = None, timeout: float = 120):
        """(HTTP status, raw body) of one call on a fresh connection, a form
        url-encoded as a PHP client sends it (the Go original reads no JSON)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=timeout)
        try:
            payload = urllib.parse.urlencode(form).encode() if form is not None else None
            headers = {"Content-Type": "application/x-www-form-urlencoded"} if form else {}
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()
