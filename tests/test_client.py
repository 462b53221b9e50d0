"""The command-line client, as the real executable (coyotes.py) run against real
daemons: push --wait behaves like running the command, the tables, the task
and channel commands, the address and token from the daemon's own settings,
and the exit statuses of an unreachable daemon (3), a refused token (4) and an
unknown task (5).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import SCRIPT, free_port, ok_data, wait_until

TOKEN = "client-token-0123456789abcdef"


def cli(*args, addr: str, token: str = TOKEN, timeout: float = 60, **env):
    environ = {**os.environ, "COYOTES_HTTP_ADDR": addr, "COYOTES_API_TOKEN": token, **env}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, env=environ, stdin=subprocess.DEVNULL)


@pytest.fixture
def daemon(coyotes_factory):
    proc = coyotes_factory(start=False)
    proc.start(env={**os.environ, "COYOTES_API_TOKEN": TOKEN})
    return proc


def addr_of(daemon) -> str:
    return f"127.0.0.1:{daemon.http_port}"


def test_push_wait_behaves_like_running_the_command(daemon):
    script = "import sys; print('to stdout'); print('to stderr', file=sys.stderr); sys.exit(7)"
    out = cli("push", "--wait", "--", sys.executable, "-c", script, addr=addr_of(daemon))
    assert (out.returncode, out.stdout) == (7, "to stdout\n"), out
    assert "to stderr" in out.stderr
    ok = cli("push", "--wait", "--channel", "biz", "--", "true", addr=addr_of(daemon))
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "", "")


def test_task_commands(daemon):
    addr = addr_of(daemon)
    pushed = cli("push", "--id", "job-1", "--", sys.executable, "-c", "print('hello')",
                 addr=addr)
    assert (pushed.returncode, pushed.stdout.strip()) == (0, "job-1"), pushed
    wait_until(lambda: "status: succeeded" in cli("show", "job-1", addr=addr).stdout,
               what="job-1 done")
    shown = cli("show", "job-1", addr=addr).stdout
    assert "channel: default" in shown and "exit_code: 0" in shown
    assert cli("logs", "job-1", addr=addr).stdout == "hello\n"
    assert cli("logs", "-f", "job-1", addr=addr).stdout == "hello\n"   # done: prints, ends

    # a failure, seen in the failed tasks, retried
    assert cli("push", "--wait", "--id", "bad-1", "--", "false", addr=addr).returncode == 1
    failed = cli("failed", addr=addr).stdout
    assert "bad-1" in failed.splitlines()[1] and failed.splitlines()[0].startswith("CHANNEL")
    assert cli("retry", "bad-1", addr=addr).stdout.strip() == "bad-1: queued again"

    # cancel a delayed one; kill a running one
    cli("push", "--id", "later", "--delay", "3600", "--", "true", addr=addr)
    assert cli("cancel", "later", addr=addr).stdout.strip() == "later: canceled"
    cli("push", "--id", "nap", "--", "sleep", "30", addr=addr)
    wait_until(lambda: "status: running" in cli("show", "nap", addr=addr).stdout)
    assert cli("kill", "nap", addr=addr).stdout.strip() == "nap: killing"
    wait_until(lambda: "status: killed" in cli("show", "nap", addr=addr).stdout)


def test_channels_nodes_and_schedules(daemon):
    addr = addr_of(daemon)
    status = cli("status", addr=addr)
    lines = status.stdout.splitlines()
    assert status.returncode == 0 and lines[0].split() == [
        "CHANNEL", "RUNNING", "QUEUED", "DELAYED", "FAILED", "WORKERS", "STATE", "NODES"]
    assert {line.split()[0] for line in lines[1:]} == {"biz", "cron", "default"}
    # a delayed task counts in its channel's row, and the nodes that consume it show
    assert cli("push", "--delay", "600", "--", "true", addr=addr).returncode == 0
    default = next(line.split() for line in cli("status", addr=addr).stdout.splitlines()
                   if line.startswith("default"))
    node = ok_data(daemon.request("GET", "/health", headers={}))["node"]
    assert default[1:4] == ["0", "0", "1"] and default[-1] == node, default
    assert cli("pause", "cron", addr=addr).stdout.strip() == "cron: 5 worker(s), paused"
    assert "paused" in next(line for line in cli("status", addr=addr).stdout.splitlines()
                            if line.startswith("cron"))
    assert cli("resume", "cron", addr=addr).stdout.strip() == "cron: 5 worker(s)"
    assert cli("resize", "cron", "2", addr=addr).stdout.strip() == "cron: 2 worker(s)"
    nodes = cli("nodes", addr=addr).stdout.splitlines()
    assert nodes[0].split()[:2] == ["NODE", "STATE"] and " up " in nodes[1]
    ok_data(daemon.request("POST", "/schedules", {"name": "nightly", "cron": "0 3 * * *",
                                                  "command": "true"},
                           headers={"Authorization": f"Bearer {TOKEN}"}))
    schedules = cli("schedules", addr=addr).stdout.splitlines()
    assert schedules[1].split()[:2] == ["nightly", "0"]


def test_exit_statuses_say_what_went_wrong(daemon, tmp_path):
    addr = addr_of(daemon)
    gone = cli("status", addr=f"127.0.0.1:{free_port()}")
    assert gone.returncode == 3 and gone.stderr.startswith("coyotes: cannot reach the coyotes API")
    assert len(gone.stderr.splitlines()) == 1
    refused = cli("status", addr=addr, token="not-the-token-at-all")
    assert refused.returncode == 4 and "refused the token" in refused.stderr
    missing = cli("status", addr=addr, token="")
    assert missing.returncode == 4
    unknown = cli("show", "no-such-task", addr=addr)
    assert unknown.returncode == 5 and "unknown" in unknown.stderr
    assert cli("pause", "no-such-channel", addr=addr).returncode == 5
    assert cli("resize", "default", "many", addr=addr).returncode == 2
    no_port = cli("status", addr="localhost")
    assert no_port.returncode == 2 and "expected host:port" in no_port.stderr
    assert cli("frobnicate", addr=addr).returncode == 2   # a daemon flag error, as before


def test_the_address_and_token_from_the_daemons_settings(coyotes_factory, tmp_path):
    sock = tmp_path / "api.sock"
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{'r' * 20} read-only\n{TOKEN}\n")
    tokens.chmod(0o600)
    conf = tmp_path / "coyotes.toml"
    conf.write_text(f'http-addr = "unix:{sock}"\napi-token-file = "{tokens}"\n')
    # the harness gives -http-addr on the command line; the same again, to win over it
    daemon = coyotes_factory("-config", str(conf), "-http-addr", f"unix:{sock}", start=False)
    daemon.start(wait=False)
    environ = {**os.environ}
    environ.pop("COYOTES_HTTP_ADDR", None)
    environ.pop("COYOTES_API_TOKEN", None)

    def status():
        return subprocess.run([sys.executable, str(SCRIPT), "status", "--config", str(conf)],
                              capture_output=True, text=True, timeout=60, env=environ)
    wait_until(lambda: status().returncode == 0, what="the client through the unix socket")
    assert "default" in status().stdout


def test_push_wait_streams_the_output_while_the_task_runs(daemon):
    script = "import time; print('first', flush=True); time.sleep(2); print('last')"
    environ = {**os.environ, "COYOTES_HTTP_ADDR": addr_of(daemon), "COYOTES_API_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "push", "--wait", "--id", "streamed",
                             "--", sys.executable, "-c", script], stdout=subprocess.PIPE,
                            text=True, env=environ)
    try:
        assert proc.stdout.readline() == "first\n"
        record = ok_data(daemon.request("GET", "/tasks/streamed",
                                        headers={"Authorization": f"Bearer {TOKEN}"}))
        assert record["status"] == "running"   # the line came before the task ended
        assert proc.stdout.read() == "last\n"
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_tables_are_aligned_and_coloured_only_on_a_terminal():
    from coyotes_lib.client import RED, table
    rows = [["default", 0, 3, 1], ["a-longer-name", 12, 0, 0]]
    plain = table(rows, ["CHANNEL", "RUNNING", "QUEUED", "FAILED"], False,
                  lambda row: RED if row[3] else "")
    assert plain.splitlines() == ["CHANNEL        RUNNING  QUEUED  FAILED",
                                  "default        0        3       1",
                                  "a-longer-name  12       0       0"]
    coloured = table(rows, ["CHANNEL", "RUNNING", "QUEUED", "FAILED"], True,
                     lambda row: RED if row[3] else "").splitlines()
    assert coloured[0].startswith("\033[1m") and coloured[1].startswith(RED)
    assert coloured[2] == "a-longer-name  12       0       0"
