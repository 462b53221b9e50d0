"""Who may reach the API, with real daemons: tokens (read-write, read-only, from a
file or the environment) on the express lane and on bottle's routes, the
refusal to listen beyond loopback without one, the unix socket with its mode
and group (an unprivileged user cannot push through it), and what the log
says at start.
"""

from __future__ import annotations

import grp
import http.client
import json
import os
import socket
import stat
import subprocess
import sys

import pytest
from conftest import assert_error, ended, free_port, ledger_command, ok_data, wait_until
from needs import missing

RW, RO, ENV = "rw-" + "1" * 29, "ro-" + "2" * 29, "env-" + "3" * 28
PUSH = "push-" + "4" * 27


def token_file(tmp_path) -> str:
    path = tmp_path / "tokens"
    path.write_text(f"# one line a token\n{RW}\n{RO} read-only\n{PUSH} push  # producers\n")
    path.chmod(0o600)
    return str(path)


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_a_token_guards_every_route_but_health(coyotes_factory, tmp_path, r):
    daemon = coyotes_factory("-api-token-file", token_file(tmp_path))
    assert daemon.request("GET", "/health")[0] == 200   # probes need no token
    task = {"task": ledger_command(tmp_path / "ledger", "t")}

    # no token, a wrong one, another scheme: 401, on bottle's routes and on the
    # express lane (POST /channels/{c}), and nothing is queued
    for headers in ({}, bearer("x" * 32), bearer(RW + "x"), {"Authorization": f"Basic {RW}"},
                    {"Authorization": "Bearer"}):
        for method, path, data in (("GET", "/channels", None), ("GET", "/nodes", None),
                                   ("POST", "/channels/default", task),
                                   ("POST", "/channels/default/tasks", task)):
            assert_error(daemon.request(method, path, data, headers=headers), 401,
                         f"{method} {path} {headers}")
    assert r.llen("default:tasks:queue") == 0 and not r.keys("task:record:*")

    # a read-only token reads, and may change nothing
    assert "default" in ok_data(daemon.request("GET", "/channels", headers=bearer(RO)))
    for method, path, data in (("POST", "/channels/default", task),
                               ("POST", "/channels", {"name": "more"}),
                               ("PATCH", "/channels/default", {"worker": 2}),
                               ("DELETE", "/channels/default", None),
                               ("POST", "/nodes/x/drain", None)):
        message = assert_error(daemon.request(method, path, data, headers=bearer(RO)), 403,
                               f"{method} {path}")
        assert "read-only" in message

    # a read-write token does everything
    pushed = ok_data(daemon.request("POST", "/channels/default", task, headers=bearer(RW)))
    wait_until(lambda: ended(tmp_path / "ledger", "t"), what="the pushed task to run")
    wait_until(lambda: ok_data(daemon.request("GET", f"/tasks/{pushed['task_id']}", headers=bearer(
        RO)))["status"] == "succeeded", what="its result, read with the read-only token")
    assert RW not in daemon.log() and RO not in daemon.log()


def test_the_challenge_header_and_a_keep_alive_connection(coyotes_factory, tmp_path):
    daemon = coyotes_factory("-api-token-file", token_file(tmp_path))
    conn = http.client.HTTPConnection("127.0.0.1", daemon.http_port, timeout=10)
    body = "task=true"
    for path in ("/channels/default", "/channels"):   # the express lane, then bottle
        conn.request("POST", path, body, {"Content-Type": "application/x-www-form-urlencoded"})
        reply = conn.getresponse()
        assert reply.status == 401 and json.loads(reply.read())["status_code"] == 401
        assert reply.getheader("WWW-Authenticate") == 'Bearer realm="coyotes"'
        assert reply.getheader("Connection") == "close"
        conn.close()
    conn.request("POST", "/channels/default", body,
                 {"Content-Type": "application/x-www-form-urlencoded", **bearer(RW)})
    reply = conn.getresponse()
    assert reply.status == 200 and json.loads(reply.read())["data"]["result"] is True
    assert not reply.will_close
    sock = conn.sock
    conn.request("GET", "/channels/default", headers=bearer(RW))
    assert conn.getresponse().status == 200
    assert conn.sock is sock   # the same connection (http.client would open another)
    conn.close()


def test_a_token_from_the_environment(coyotes_factory, tmp_path):
    daemon = coyotes_factory(start=False)
    daemon.start(env={**os.environ, "COYOTES_API_TOKEN": ENV})
    assert_error(daemon.request("GET", "/channels"), 401)
    assert ok_data(daemon.request("GET", "/channels", headers=bearer(ENV)))
    assert "has no token" not in daemon.log() and ENV not in daemon.log()


def test_listening_beyond_loopback_needs_a_token_or_insecure(coyotes_factory, tmp_path):
    refused = coyotes_factory("-http-addr", "0.0.0.0:1", start=False)
    out = subprocess.run(refused.argv(), capture_output=True, text=True, timeout=60,
                         cwd=tmp_path)
    assert out.returncode == 2, out
    assert "0.0.0.0:1 can be reached from other machines" in out.stderr
    assert "-http-insecure" in out.stderr
    # allowed when asked, and said at every start (API only: it runs nothing meanwhile)
    port = free_port()   # a later -http-addr wins over the harness's
    daemon = coyotes_factory("-http-addr", f"0.0.0.0:{port}", "-task-mode=false",
                             "-http-insecure", start=False)
    daemon.http_port = port
    daemon.start()
    said = f"the API on 0.0.0.0:{port} has no token (-http-insecure): anyone who can reach"
    assert said in daemon.log()


def test_loopback_without_a_token_starts_as_before_and_says_who_can_push(coyotes):
    log = coyotes.log()
    assert "the API has no token: any local user can run commands as" in log
    assert ok_data(coyotes.request("GET", "/channels"))   # no token needed
    if os.geteuid() == 0:
        assert "running as root" in log
    else:
        assert "running as root" not in log


class UnixHTTP(http.client.HTTPConnection):
    """HTTP over a unix socket."""

    def __init__(self, path: str):
        super().__init__("localhost", timeout=10)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self.path)


def over_unix(path: str, method: str, url: str, data=None) -> tuple[int, dict]:
    conn = UnixHTTP(path)
    try:
        body = json.dumps(data) if data is not None else None
        conn.request(method, url, body, {"Content-Type": "application/json"} if body else {})
        reply = conn.getresponse()
        return reply.status, json.loads(reply.read())
    finally:
        conn.close()


def test_a_unix_socket_with_its_mode_and_group(coyotes_factory, tmp_path):
    sock = tmp_path / "api.sock"
    stale = socket.socket(socket.AF_UNIX)   # a socket file nobody listens on any more
    stale.bind(str(sock))
    stale.close()
    root = os.geteuid() == 0
    group = grp.getgrnam("nogroup").gr_gid if root else os.getgid()
    daemon = coyotes_factory("-http-addr", f"unix:{sock}", "-http-socket-mode", "0660",
                             "-http-socket-group", str(group), start=False)
    daemon.start(wait=False)
    wait_until(lambda: over_unix(str(sock), "GET", "/health")[0] == 200,
               what="the API on its unix socket")
    info = os.stat(sock)
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o660
    assert info.st_gid == group
    assert f"http unix:{sock}" in daemon.log() and "has no token" not in daemon.log()

    # pushes through it, on the express lane and on bottle's routes
    ledger = tmp_path / "ledger"
    for path, tag in (("/channels/default", "a"), ("/channels/default/tasks", "b")):
        status, env = over_unix(str(sock), "POST", path, {"task": ledger_command(ledger, tag)})
        assert status == 200, env
    wait_until(lambda: ended(ledger, "a") and ended(ledger, "b"), what="both tasks")

    # another daemon on the same path refuses to start, and leaves it alone
    twin = coyotes_factory("-http-addr", f"unix:{sock}", "-node-id", "twin", start=False)
    twin.start(wait=False)
    assert twin.wait(30) == 1
    assert f"cannot listen on unix:{sock}: another process listens on" in twin.log()
    assert over_unix(str(sock), "GET", "/health")[0] == 200

    if root:   # a user outside the group cannot even connect: file permissions decide
        probe = ("import socket, sys; s = socket.socket(socket.AF_UNIX); "
                 "s.connect(sys.argv[1])")
        out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65533", "--clear-groups",
                              sys.executable, "-c", probe, str(sock)],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode != 0 and "PermissionError" in out.stderr, out
    elif os.environ.get("CI"):
        missing("CI runs as root: the unprivileged user's refusal is checked there")

    daemon.signal()
    assert daemon.wait(30) == 0
    assert not sock.exists()   # removed at the end


@pytest.mark.parametrize("mode", ["0666"])
def test_a_socket_every_user_may_write_to_is_warned_about(coyotes_factory, tmp_path, mode):
    sock = tmp_path / "open.sock"
    daemon = coyotes_factory("-http-addr", f"unix:{sock}", "-http-socket-mode", mode,
                             start=False)
    daemon.start(wait=False)
    wait_until(lambda: over_unix(str(sock), "GET", "/health")[0] == 200,
               what="the API on its unix socket")
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o666
    assert f"every local user may write to {sock} (mode 666)" in daemon.log()


def test_commands_do_not_inherit_the_daemons_secrets(coyotes_factory, tmp_path):
    daemon = coyotes_factory(start=False)
    daemon.start(env={**os.environ, "COYOTES_API_TOKEN": ENV,
                      "COYOTES_REDIS_URL": f"redis://127.0.0.1:{daemon.redis_port}",
                      "COYOTES_NOT_A_SECRET": "kept"})
    show_env = "import json, os; print(json.dumps(dict(os.environ)))"
    pushed = ok_data(daemon.request("POST", "/channels/default/tasks", {"command": {
        "name": sys.executable, "args": ["-c", show_env]}}, headers=bearer(ENV)))

    def record():
        return ok_data(daemon.request("GET", f"/tasks/{pushed['task_id']}", headers=bearer(ENV)))
    wait_until(lambda: record()["status"] == "succeeded", what="the task")
    seen = json.loads(record()["stdout"])
    assert "COYOTES_API_TOKEN" not in seen and "COYOTES_REDIS_URL" not in seen
    assert seen["COYOTES_NOT_A_SECRET"] == "kept"


def test_a_push_token_pushes_and_reads_its_tasks_and_nothing_else(coyotes_factory, tmp_path):
    daemon = coyotes_factory("-api-token-file", token_file(tmp_path))
    task = {"task": ledger_command(tmp_path / "ledger", "p")}
    pushed = ok_data(daemon.request("POST", "/channels/default/tasks", task,
                                    headers=bearer(PUSH)))
    ok_data(daemon.request("POST", "/channels/default", {"task": "true pushed-too"},
                           headers=bearer(PUSH)))   # the express lane, the Go route
    wait_until(lambda: ok_data(daemon.request("GET", f"/tasks/{pushed['task_id']}", headers=bearer(
        PUSH)))["status"] == "succeeded", what="its own task, read back")
    for method, path, data in (("PATCH", "/channels/default", {"command_policy": None}),
                               ("POST", "/channels", {"name": "mine"}),
                               ("POST", "/schedules", {"name": "s", "cron": "* * * * *",
                                                       "command": "true"}),
                               ("GET", "/channels", None), ("GET", "/nodes", None),
                               ("DELETE", f"/tasks/{pushed['task_id']}", None),
                               ("POST", "/channels/default/pause", None)):
        message = assert_error(daemon.request(method, path, data, headers=bearer(PUSH)), 403,
                               f"{method} {path}")
        assert "may only push tasks" in message
