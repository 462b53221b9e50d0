"""The command line of the real process: help, version, bad flags, and the flags
that change what the daemon does (-password, -host, -biz-name, -task-mode,
-channel-default, -log-file, -colorful-tty), and a Redis that is down at start.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse

import pytest
from conftest import (
    SCRIPT,
    Coyotes,
    RedisServer,
    free_port,
    ledger_command,
    read_ledger,
    wait_until,
)

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def run_cli(*argv: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True,
                          text=True, timeout=30, cwd=cwd)


def task_json(command: str, chan: str = "default") -> str:
    return json.dumps({"task": command, "chan": chan, "ts": int(time.time())})


def ran(ledger, tag: str) -> bool:
    return ("end", tag) in {(event, t) for event, t, _ in read_ledger(ledger)}


class RawCoyotes(Coyotes):
    """The daemon started with exactly ``args`` (plus its own -http-addr and
    -pidfile), so that no -redis-host is added: for -host and the README line."""

    def argv(self) -> list[str]:
        return [*self.command, *self.args, "-http-addr", f"127.0.0.1:{self.http_port}",
                "-pidfile", str(self.pidfile)]


class PasswordRedis(RedisServer):
    """A private redis-server started with --requirepass."""

    def __init__(self, directory, password: str):
        super().__init__(directory, aof=False, extra=["--requirepass", password])
        self.password = password

    def client(self):
        import redis
        return redis.Redis(port=self.port, password=self.password, decode_responses=True,
                           socket_timeout=5)


@pytest.fixture
def daemons():
    """Daemons started by hand; killed at the end if still running."""
    started: list[Coyotes] = []
    yield started
    for daemon in started:
        daemon.reap()


@pytest.fixture
def secret_redis(tmp_path):
    directory = tmp_path / "secret-redis"
    directory.mkdir()
    server = PasswordRedis(directory, "SECRET")
    server.start()
    yield server
    server.stop()


# -- help, version, bad flags -------------------------------------------------

@pytest.mark.parametrize("flag", ["-h", "-help", "--help"])
def test_help_prints_usage_with_defaults(flag):
    result = run_cli(flag)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Usage:" in out
    for text in ("127.0.0.1:60001", "/tmp/coyotes.pid", "127.0.0.1:6379", "[default: 5]",
                 "--redis-host", "--task-mode", "--channel-default"):
        assert text in out, text


@pytest.mark.parametrize("flag", ["--version", "-version"])
def test_version(flag):
    from coyotes_lib import __version__
    result = run_cli(flag)
    assert result.returncode == 0
    assert result.stdout.strip() == f"coyotes {__version__}"


@pytest.mark.parametrize(("argv", "expected"), [
    (["-concurrent", "abc"], 'invalid value "abc" for flag -concurrent'),
    (["-redis-host", "nohostport"], 'invalid value "nohostport" for flag -redis-host'),
    (["-unknown-flag"], "flag provided but not defined: -unknown-flag"),
    (["-redis-db", "16"], 'invalid value "16" for flag -redis-db'),
    (["-task-mode=maybe"], 'invalid value "maybe" for flag -task-mode'),
    (["-pidfile"], "flag needs an argument: -pidfile"),
    (["start"], "unexpected argument 'start'"),
    # Go: a repeated flag is legal, the last one wins (and then 0 is refused)
    (["-concurrent", "3", "-concurrent", "0"], 'invalid value "0" for flag -concurrent'),
])
def test_bad_flag_is_one_line_and_exit_2(argv, expected, tmp_path):
    result = run_cli(*argv, cwd=tmp_path)
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert lines[0].startswith("coyotes: ")
    assert result.stdout == ""


# -- Redis address and password ------------------------------------------------

@pytest.mark.parametrize("host_flag", ["-redis-host", "-host"])
def test_seed_readme_command_line(secret_redis, tmp_path, daemons, host_flag):
    """`coyotes -redis-host 127.0.0.1:PORT -password SECRET` (how users of the
    Go daemon start it, and its deprecated -host form) against a redis that requires
    that password."""
    r = secret_redis.client()
    daemon = RawCoyotes(secret_redis.port, tmp_path,
                        [host_flag, f"127.0.0.1:{secret_redis.port}", "-password", "SECRET"])
    daemons.append(daemon)
    daemon.start()
    ledger = tmp_path / "ledger"
    r.lpush("task:prepare:queue", task_json(ledger_command(ledger, "readme")))
    wait_until(lambda: ran(ledger, "readme"), what="the task to run")
    assert r.hexists("task:channels", "default")
    assert daemon.stop() == 0


def test_wrong_password_is_not_a_crash(secret_redis, tmp_path, daemons):
    daemon = RawCoyotes(secret_redis.port, tmp_path,
                        ["-redis-host", f"127.0.0.1:{secret_redis.port}", "-password", "WRONG"])
    daemons.append(daemon)
    daemon.start(wait=False)
    wait_until(lambda: "refused this node's credentials" in daemon.log(),
               what="a retry line in the log")
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0


def test_deprecated_host_alone(redis_server, r, tmp_path, daemons):
    daemon = RawCoyotes(redis_server.port, tmp_path,
                        ["-host", f"127.0.0.1:{redis_server.port}"])
    daemons.append(daemon)
    daemon.start()
    assert f"redis redis://127.0.0.1:{redis_server.port} db 0" in daemon.log()
    ledger = tmp_path / "ledger"
    r.lpush("task:prepare:queue", task_json(ledger_command(ledger, "host")))
    wait_until(lambda: ran(ledger, "host"), what="the task to run")
    assert daemon.stop() == 0


def test_biz_name_prefixes_every_key(coyotes_factory, r, tmp_path):
    daemon = coyotes_factory("-biz-name", "acme")
    ledger = tmp_path / "ledger"
    r.lpush("acme:task:prepare:queue", task_json(ledger_command(ledger, "biz")))
    wait_until(lambda: ran(ledger, "biz"), what="the prefixed task to run")
    wait_until(lambda: r.llen("acme:default:tasks:queue") == 0
               and not r.smembers("acme:default:tasks:queue:exec"))
    assert r.exists("acme:task:channels")
    assert set(r.hkeys("acme:task:channels")) == {"default", "biz", "cron"}
    for key in ("task:channels", "task:prepare:queue", "default:tasks:queue",
                "default:tasks:queue:exec"):
        assert not r.exists(key), key
    keys = r.keys("*")
    assert keys and all(key.startswith("acme:") for key in keys), keys
    assert daemon.stop() == 0


def test_biz_name_ignores_the_unprefixed_queue(coyotes_factory, r, tmp_path):
    """A second deployment on the same Redis: unprefixed entries are not ours."""
    coyotes_factory("-biz-name", "acme")
    ledger = tmp_path / "ledger"
    r.lpush("task:prepare:queue", task_json(ledger_command(ledger, "other")))
    time.sleep(1.5)   # asserting that nothing happens: a short bounded wait
    assert r.llen("task:prepare:queue") == 1
    assert read_ledger(ledger) == []


# -- -task-mode=false --------------------------------------------------------

def test_task_mode_false_serves_api_and_consumes_nothing(coyotes_factory, r, tmp_path):
    # an API-only node in front of workers: the channel exists already
    r.hset("task:channels", "default",
           json.dumps({"name": "default", "distinct": True, "worker_count": 5}))
    daemon = coyotes_factory("-task-mode=false")
    assert "task mode off" in daemon.log()
    status, reply = daemon.request("GET", "/channels")
    assert status == 200 and reply["status_code"] == 200
    assert "default" in reply["data"]

    ledger = tmp_path / "ledger"
    r.lpush("task:prepare:queue", task_json(ledger_command(ledger, "prepared")))
    body = urllib.parse.urlencode({"task": ledger_command(ledger, "posted")}).encode()
    status, reply = daemon.request("POST", "/channels/default", body=body, headers=FORM)
    assert status == 200, reply
    assert reply["data"]["result"] is True

    time.sleep(2)   # asserting that nothing happens: a short bounded wait
    assert r.llen("task:prepare:queue") == 1
    assert r.llen("default:tasks:queue") == 1
    assert not r.smembers("default:tasks:queue:exec")
    assert read_ledger(ledger) == []
    status, reply = daemon.request("GET", "/channels/default")
    assert status == 200 and reply["data"]["count"] == 1
    assert [t["status"] for t in reply["data"]["tasks"]] == ["queued"]
    assert daemon.stop() == 0
    assert r.llen("task:prepare:queue") == 1 and r.llen("default:tasks:queue") == 1


def test_task_mode_false_creates_default_channels(coyotes_factory, r):
    """As the Go daemon does, on start the default channel, biz and cron are created
    if missing: the API-only mode accepts POST /channels/default on a fresh Redis
    (the README's first API example)."""
    daemon = coyotes_factory("-task-mode=false", "-concurrent", "4")
    wait_until(lambda: set(r.hkeys("task:channels")) == {"default", "biz", "cron"},
               timeout=5, what="the default channels")
    status, reply = daemon.request("POST", "/channels/default", body=b"task=date",
                                   headers=FORM)
    assert status == 200, reply
    assert r.llen("default:tasks:queue") == 1


# -- -channel-default ---------------------------------------------------------

def test_channel_default_creates_its_channels(coyotes_factory, r, tmp_path):
    daemon = coyotes_factory("-channel-default", "jobs", "-concurrent", "3")
    specs = {name: json.loads(raw) for name, raw in r.hgetall("task:channels").items()}
    assert set(specs) == {"jobs", "biz", "cron"}
    for name, spec in specs.items():
        assert spec["distinct"] is True, name
        assert spec["worker_count"] == 3, name
        assert spec.get("name", name) == name
    # a producer entry without "chan" goes to the default channel
    ledger = tmp_path / "ledger"
    r.lpush("task:prepare:queue", json.dumps({"task": ledger_command(ledger, "nochan")}))
    wait_until(lambda: ran(ledger, "nochan"), what="the task to run in jobs")
    status, reply = daemon.request("GET", "/channels")
    assert status == 200 and set(reply["data"]) == {"jobs", "biz", "cron"}


def test_default_channels_keep_existing_settings(coyotes_factory, r):
    r.hset("task:channels", "biz",
           json.dumps({"name": "biz", "distinct": False, "worker_count": 9}))
    coyotes_factory("-concurrent", "2")
    specs = {name: json.loads(raw) for name, raw in r.hgetall("task:channels").items()}
    assert specs["biz"]["worker_count"] == 9 and specs["biz"]["distinct"] is False
    assert specs["default"]["worker_count"] == 2 and specs["cron"]["worker_count"] == 2


# -- Redis down at start -------------------------------------------------------

def test_redis_down_at_start_then_up(tmp_path, daemons):
    directory = tmp_path / "late-redis"
    directory.mkdir()
    server = RedisServer(directory)   # picks a free port; nothing listens there yet
    daemon = Coyotes(server.port, tmp_path)
    daemons.append(daemon)
    daemon.start(wait=False)
    try:
        wait_until(lambda: "redis unavailable" in daemon.log(), timeout=15,
                   what="the daemon to log that it retries")
        assert "retrying" in daemon.log()
        assert daemon.proc.poll() is None
        server.start()
        daemon.wait_ready(timeout=20)
        assert daemon.proc.poll() is None
        r = server.client()
        ledger = tmp_path / "ledger"
        r.lpush("task:prepare:queue", task_json(ledger_command(ledger, "late")))
        wait_until(lambda: ran(ledger, "late"), what="the task to run")
        assert daemon.stop() == 0
    finally:
        server.stop()


def test_redis_down_daemon_stops_cleanly_on_signal(tmp_path, daemons):
    daemon = Coyotes(free_port(), tmp_path)
    daemons.append(daemon)
    daemon.start(wait=False)
    wait_until(lambda: "redis unavailable" in daemon.log(), timeout=15,
               what="the daemon to log that it retries")
    assert daemon.stop(timeout=20) == 0
    assert not daemon.pidfile.exists()


# -- logging ----------------------------------------------------------------

def test_log_file(coyotes_factory, r, tmp_path):
    log_file = tmp_path / "coyotes-file.log"
    daemon = coyotes_factory("-log-file", str(log_file), start=False)
    daemon.start(wait=False)
    wait_until(lambda: log_file.exists() and "coyotes ready" in log_file.read_text(),
               timeout=20, what="coyotes ready in the log file")
    ledger = tmp_path / "ledger"
    r.lpush("task:prepare:queue", task_json(ledger_command(ledger, "logged")))
    wait_until(lambda: ran(ledger, "logged"), what="the task to run")
    assert daemon.stop() == 0
    text = log_file.read_text()
    assert "coyotes starting" in text and "coyotes stopped" in text
    assert "\033[" not in text
    assert "coyotes ready" not in daemon.log()   # nothing went to stderr


def test_colorful_tty_prints_banner_and_colours(coyotes_factory):
    daemon = coyotes_factory("-colorful-tty")
    text = daemon.log()
    assert "you give me the command, I run it." in text
    assert "/____/" in text
    assert "\033[32m" in text   # INFO lines in green
    assert "\033[0m" in text
    assert daemon.stop() == 0


def test_plain_output_has_no_colours(coyotes_factory):
    daemon = coyotes_factory()
    assert "\033[" not in daemon.log()
    assert "/____/" not in daemon.log()
    assert daemon.stop() == 0


def test_daemonize_detaches_and_still_stops_gracefully(coyotes_factory, r, tmp_path):
    log_file = tmp_path / "detached.log"
    daemon = coyotes_factory("-daemonize", "-log-file", str(log_file), start=False)
    daemon.start(wait=False)
    assert daemon.wait(10) == 0   # the launcher returns at once
    wait_until(lambda: log_file.exists() and "coyotes ready" in log_file.read_text(),
               timeout=20, what="the detached daemon to be ready")
    pid = int(daemon.pidfile.read_text())
    try:
        assert pid != daemon.proc.pid and os.getsid(pid) != os.getsid(0)   # its own session
        ledger = tmp_path / "ledger"
        r.lpush("task:prepare:queue", task_json(ledger_command(ledger, "detached")))
        wait_until(lambda: ran(ledger, "detached"), what="the task to run")
        os.kill(pid, signal.SIGUSR2)
        wait_until(lambda: not daemon.pidfile.exists(), what="the pid file to go")
        assert "coyotes stopped" in log_file.read_text()
    finally:
        if daemon.pidfile.exists():   # a failed check must not leave it running
            os.kill(pid, signal.SIGKILL)
