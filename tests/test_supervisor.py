"""The shipped supervisor.conf, under a real (private) supervisord; and the
shipped systemd unit, checked by systemd-analyze.

The program section is taken from supervisor.conf as shipped; only the
command line (test Redis, free HTTP port, temp pid file) and the log path
change. ``supervisorctl stop`` must be a graceful drain: the running command
finishes, coyotes exits 0 by itself well before stopwaitsecs, and supervisor
never needs SIGKILL.
"""

from __future__ import annotations

import configparser
import json
import re
import subprocess
import sys

import needs
import pytest
from conftest import ROOT, SCRIPT, free_port, ledger_command, read_ledger, wait_until

SHIPPED = ROOT / "supervisor.conf"
SECTION = "program:coyotes"


def shipped_program() -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    assert parser.read(SHIPPED), f"cannot read {SHIPPED}"
    return dict(parser[SECTION])


def test_the_systemd_unit_is_valid_and_runs_coyotes_as_its_own_user(tmp_path):
    analyze = needs.program("systemd-analyze", "systemd")
    unit = (ROOT / "contrib" / "coyotes.service").read_text()
    settings = dict(line.split("=", 1) for line in unit.splitlines()
                    if "=" in line and not line.startswith("#"))
    assert (settings["User"], settings["Group"]) == ("coyotes", "coyotes")
    assert "-redis-password-file" in settings["ExecStart"]
    assert " -password " not in settings["ExecStart"] and "REDIS_PASSWORD" not in unit
    assert settings["NoNewPrivileges"] == "yes" and settings["ProtectSystem"] == "full"
    assert settings["KillSignal"] == "SIGUSR2" and settings["KillMode"] == "mixed"
    # every directive known to this systemd; the program must exist to be checked
    copy = tmp_path / "coyotes.service"
    copy.write_text(unit.replace("/usr/local/bin/coyotes", sys.executable))
    out = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True,
                         timeout=60)
    problems = [line for line in (out.stdout + out.stderr).splitlines()
                if "coyotes.service" in line or "Unknown" in line]
    assert out.returncode == 0 and not problems, out


def test_shipped_conf_stops_gracefully():
    program = shipped_program()
    assert program["command"].split() == [
        "/usr/local/bin/coyotes", "-redis-host", "127.0.0.1:6379", "-redis-password-file",
        "/etc/coyotes/redis-password"]   # no secret on the command line
    assert program["user"] == "coyotes"   # never root
    assert program["stopsignal"] == "USR2"
    assert program["stopwaitsecs"] == "60"
    assert program["autostart"] == program["autorestart"] == "true"
    assert program["redirect_stderr"] == "true" and program["stdout_logfile"]
    # Signals to the whole group would reach the commands behind the drain's back.
    assert "stopasgroup" not in program and "killasgroup" not in program
    # supervisor must wait longer than the daemon's own drain deadline.
    grace = re.search(r"--grace=<seconds>.*?\[default: (\d+)\]", SCRIPT.read_text(), re.S)[1]
    assert int(program["stopwaitsecs"]) > int(grace)


class Supervisor:
    """A private supervisord: its config, socket and logs in ``directory``."""

    def __init__(self, directory, program: dict[str, str], supervisorctl: str):
        self.dir = directory
        self.supervisorctl = supervisorctl
        self.conf = directory / "supervisord.conf"
        self.log = directory / "supervisord.log"
        sock = directory / "supervisor.sock"
        assert len(str(sock)) < 100, "unix socket path too long"
        config = configparser.ConfigParser(interpolation=None)
        config.read_dict({
            "unix_http_server": {"file": str(sock)},
            "supervisord": {"logfile": str(self.log), "pidfile": str(directory / "sd.pid"),
                            "childlogdir": str(directory), "nodaemon": "true",
                            "loglevel": "info"},
            "rpcinterface:supervisor": {
                "supervisor.rpcinterface_factory": "supervisor.rpcinterface:"
                                                   "make_main_rpcinterface"},
            "supervisorctl": {"serverurl": f"unix://{sock}"},
            SECTION: program,
        })
        with self.conf.open("w") as f:
            config.write(f)
        self.proc: subprocess.Popen | None = None

    def start(self, supervisord: str) -> None:
        self.out = (self.dir / "supervisord.out").open("wb")
        self.proc = subprocess.Popen([supervisord, "-c", str(self.conf)], stdout=self.out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=self.dir)

    def ctl(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
        return subprocess.run([self.supervisorctl, "-c", str(self.conf), *args],
                              capture_output=True, text=True, timeout=timeout)

    def status(self) -> str:
        return self.ctl("status", "coyotes", timeout=10).stdout

    def shutdown(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()   # supervisord stops its program the configured way
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.out.close()


@pytest.fixture
def supervisor(tmp_path, redis_server):
    supervisord = needs.program("supervisord", "supervisor")
    supervisorctl = needs.program("supervisorctl", "supervisor")
    pidfile = tmp_path / "coyotes.pid"
    # as the test's user: this machine has no coyotes user
    program = {key: value for key, value in shipped_program().items() if key != "user"} | {
        "command": f"{sys.executable} {SCRIPT} -redis-host 127.0.0.1:{redis_server.port} "
                   f"-http-addr 127.0.0.1:{free_port()} -pidfile {pidfile}",
        "stdout_logfile": str(tmp_path / "coyotes.log"),
    }
    sup = Supervisor(tmp_path, program, supervisorctl)
    sup.start(supervisord)
    yield sup
    sup.shutdown()


def test_supervisorctl_stop_drains_the_running_command(supervisor, r, tmp_path):
    coyotes_log = tmp_path / "coyotes.log"
    wait_until(lambda: "RUNNING" in supervisor.status(), timeout=30,
               what="supervisord to start coyotes")
    wait_until(lambda: "coyotes ready" in coyotes_log.read_text(), timeout=20,
               what="coyotes to be ready under supervisord")
    pidfile = tmp_path / "coyotes.pid"
    assert pidfile.exists()

    ledger = tmp_path / "ledger"
    task = {"task": ledger_command(ledger, "long", sleep=3), "chan": "default", "ts": 1}
    r.lpush("task:prepare:queue", json.dumps(task))
    wait_until(lambda: read_ledger(ledger), timeout=15, what="the long task to start")

    stop = supervisor.ctl("stop", "coyotes")

    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert "coyotes: stopped" in stop.stdout
    # The command ran to its end: the stop waited for it.
    assert [(event, tag) for event, tag, _ in read_ledger(ledger)] == [
        ("start", "long"), ("end", "long")]
    assert "STOPPED" in supervisor.status()
    # coyotes exited 0 by itself; supervisor did not have to kill it.
    log = supervisor.log.read_text()
    assert "stopped: coyotes (exit status 0)" in log, log
    assert "SIGKILL" not in log and "terminated by" not in log, log
    assert not pidfile.exists()
    # The task was acknowledged, not requeued for another run.
    assert r.llen("default:tasks:queue") == 0
    assert not r.smembers("default:tasks:queue:exec")
