"""The command-line client: ``coyotes push|status|show|...`` talks to a daemon's
HTTP API, where the daemon's own settings say it listens (-http-addr or
COYOTES_HTTP_ADDR, a unix socket included; COYOTES_API_TOKEN or the first
read-write token of -api-token-file; the -config file). ``coyotes`` with no
subcommand, or with flags only, is the daemon as before.

Usage:
  coyotes push [options] [--channel=<c>] [--delay=<s>] [--timeout=<s>] [--retries=<n>]
               [--priority=<p>] [--id=<id>] [--wait] [--] <command>...
  coyotes status [options]
  coyotes show [options] <id>
  coyotes logs [options] [-f] <id>
  coyotes cancel [options] <id>
  coyotes kill [options] <id>
  coyotes retry [options] <id>
  coyotes failed [options] [<channel>]
  coyotes pause [options] <channel>
  coyotes resume [options] <channel>
  coyotes resize [options] <channel> <workers>
  coyotes nodes [options]
  coyotes schedules [options]

Options:
  --addr=<addr>       The daemon's API: host:port or unix:/path (default: the
                      daemon's -http-addr from COYOTES_HTTP_ADDR or the config
                      file, else 127.0.0.1:60001)
  --config=<path>     The daemon's TOML settings, to find its address and token
  --channel=<c>       The channel [default: default]
  --delay=<s>         Run it this many seconds from now
  --timeout=<s>       Seconds it may run
  --retries=<n>       Further attempts after a failure
  --priority=<p>      normal or high
  --id=<id>           The task's id (else one is made)
  --wait              Print the task's output as it comes and exit with its
                      exit status, as if it ran here
  -f                  Follow: print its output as it comes, until it ends

Exit status: 0 done, 1 refused or failed, 2 bad usage, 3 the daemon cannot be
reached, 4 the token is missing or refused, 5 no such task (or channel).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import time
import urllib.parse


class Failure(Exception):
    """Said in one line on stderr; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class Api:
    """One daemon's API: JSON in, the envelope's data out, or Failure."""

    def __init__(self, addr: str, token: str = "", timeout: float = 30):
        self.addr, self.token, self.timeout = addr, token, timeout

    def connection(self, timeout: float | None) -> http.client.HTTPConnection:
        if self.addr.startswith("unix:"):
            return UnixHTTPConnection(self.addr[5:], timeout)
        host, _, port = self.addr.rpartition(":")
        if not port.isdigit():
            raise Failure(f"bad API address {self.addr!r}: expected host:port or "
                          "unix:/path", 2)
        return http.client.HTTPConnection(host.strip("[]") or "127.0.0.1", int(port),
                                          timeout=timeout)

    def events(self, path: str):
        """The server-sent events of ``path``, as (kind, data), while they come."""
        conn = self.connection(None)   # a task may print nothing for a long time
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {self.token}"}
                         if self.token else {})
            reply = conn.getresponse()
            if reply.status != 200:
                self.judge(reply.status, reply.read())
            kind = "message"
            for raw in reply:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                if line.startswith("event: "):
                    kind = line[len("event: "):]
                elif line.startswith("data: "):
                    yield kind, json.loads(line[len("data: "):])
        except (OSError, http.client.HTTPException) as exc:
            raise Failure(f"cannot reach the coyotes API at {self.addr}: "
                          f"{getattr(exc, 'strerror', None) or exc}", 3) from None
        finally:
            conn.close()

    def call(self, method: str, path: str, data=None):
        conn = self.connection(self.timeout)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        body = None
        if data is not None:
            body = json.dumps(data)
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body, headers)
            reply = conn.getresponse()
            status, text = reply.status, reply.read()
        except (OSError, http.client.HTTPException) as exc:
            raise Failure(f"cannot reach the coyotes API at {self.addr}: "
                          f"{getattr(exc, 'strerror', None) or exc}", 3) from None
        finally:
            conn.close()
        return self.judge(status, text)

    def judge(self, status: int, text: bytes):
        """The envelope's data, or Failure with the exit status its error calls for."""
        try:
            envelope = json.loads(text)
            message = envelope.get("message", "")
        except (ValueError, AttributeError):
            raise Failure(f"{self.addr} did not answer as the coyotes API "
                          f"(HTTP {status})") from None
        if status in (401, 403) and ("token" in message or "Bearer" in message):
            raise Failure(f"the API refused the token: {message}", 4)
        if status == 404:
            raise Failure(message, 5)
        if status >= 400:
            raise Failure(message)
        return envelope.get("data")


def settings(opts: dict, environ) -> tuple[str, str]:
    """(address, token) from the options, the environment and the config file, read
    as the daemon reads them."""
    from .config import TOKEN_ENV, UsageError, env_name, read_file, read_tokens
    conf = opts.get("--config") or environ.get(env_name("config"), "")
    try:
        from_file = read_file(conf)[0] if conf else {}
    except UsageError as exc:
        raise Failure(str(exc), 2) from None
    addr = (opts.get("--addr") or environ.get(env_name("http-addr"))
            or from_file.get("http-addr") or "127.0.0.1:60001")
    token = environ.get(TOKEN_ENV, "")
    token_file = environ.get(env_name("api-token-file")) or from_file.get("api-token-file")
    if not token and token_file:
        try:
            tokens = read_tokens(token_file)[0]
        except UsageError as exc:
            raise Failure(str(exc), 4) from None
        token = next((token for token, scope in tokens if scope != "read-only"), "")
    return addr, token


RED, YELLOW = "\033[31m", "\033[33m"


def table(rows: list[list], header: list[str], tty: bool, tint=None) -> str:
    """Aligned columns; on a terminal, a bold header and each row in the colour
    ``tint(row)`` gives ('' for none)."""
    cells = [[str(c) for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    if tty:
        lines[0] = f"\033[1m{lines[0]}\033[0m"
        for i, row in enumerate(rows, 1):
            colour = tint(row) if tint else ""
            if colour:
                lines[i] = f"{colour}{lines[i]}\033[0m"
    return "\n".join(lines)


def exit_code(record: dict) -> int:
    """A finished task's status as a shell would give it."""
    if record.get("exit_code") not in (None, ""):
        return int(record["exit_code"])
    if record.get("signal") not in (None, ""):
        return 128 + int(record["signal"])
    return 0 if record.get("status") == "succeeded" else 1


def stream(api: Api, task_id: str, out, err) -> int:
    """Print a task's output as it comes (stdout here, stderr there) -> the exit status
    it ended with, as a shell gives it."""
    for kind, data in api.events(f"/tasks/{quote(task_id)}/output"):
        if kind in ("stdout", "stderr"):
            where = out if kind == "stdout" else err
            print(data, file=where, flush=True)
        elif kind == "dropped":
            print(f"coyotes: [{data['lines']} earlier line(s) not kept]", file=err)
        elif kind == "end":
            if data.get("error"):
                print(f"coyotes: {data['error']}", file=err)
            return exit_code(data)
    raise Failure(f"the output of task {task_id} ended without its result", 1)


def quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")


def run(argv: list[str], environ=None, out=None, err=None) -> int:
    """The client; -> the exit status."""
    import docopt
    environ = os.environ if environ is None else environ
    out, err = out or sys.stdout, err or sys.stderr
    tty = out.isatty()
    try:
        opts = docopt.docopt(__doc__, argv=argv, help=True)
    except docopt.DocoptExit as exc:
        print(exc, file=err)
        return 2
    try:
        api = Api(*settings(opts, environ))
        return command(api, opts, out, err, tty)
    except Failure as exc:
        print(f"coyotes: {exc}", file=err)
        return exc.code


def command(api: Api, opts: dict, out, err, tty: bool) -> int:
    """One subcommand, as docopt parsed it."""
    def say(text: str) -> None:
        print(text, file=out)
    task_id = opts["<id>"]
    if opts["push"]:
        argv = opts["<command>"]
        body: dict = {"command": {"name": argv[0], "args": argv[1:]}}
        for option, field, kind in (("--delay", "delay", float), ("--timeout", "timeout", float),
                                    ("--retries", "retries", int), ("--priority", "priority", str),
                                    ("--id", "id", str)):
            if opts[option] is not None:
                try:
                    body[field] = kind(opts[option])
                except ValueError:
                    raise Failure(f"{option} must be a number", 2) from None
        data = api.call("POST", f"/channels/{quote(opts['--channel'])}/tasks", body)
        if not data["result"]:
            raise Failure(f"refused: the same command is queued or running in channel "
                          f"{opts['--channel']} (distinct)")
        if not opts["--wait"]:
            say(data["task_id"])
            return 0
        return stream(api, data["task_id"], out, err)
    if opts["status"]:   # two requests, whatever the number of channels
        view, listing = api.call("GET", "/overview"), api.call("GET", "/channels?limit=0")
        rows = [[chan["name"], chan["running"], chan["queued"], chan["delayed"], chan["failed"],
                 chan["worker"], "paused" if chan["paused"] else "",
                 ",".join(listing.get(chan["name"], {}).get("nodes", []))]
                for chan in view["channels"]]
        say(table(rows, ["CHANNEL", "RUNNING", "QUEUED", "DELAYED", "FAILED", "WORKERS",
                         "STATE", "NODES"], tty,
                  lambda row: RED if row[4] else YELLOW if row[6] else ""))
        return 0
    if opts["show"]:
        record = api.call("GET", f"/tasks/{quote(task_id)}")
        for key in sorted(record):
            if key not in ("stdout", "stderr"):
                value = record[key]
                say(f"{key}: {json.dumps(value) if isinstance(value, list) else value}")
        return 0
    if opts["logs"]:
        if opts["-f"]:
            stream(api, task_id, out, err)
        else:   # the tails its record keeps (none yet while it runs)
            record = api.call("GET", f"/tasks/{quote(task_id)}")
            out.write(record.get("stdout") or "")
            err.write(record.get("stderr") or "")
        return 0
    if opts["cancel"] or opts["kill"]:
        data = api.call("DELETE", f"/tasks/{quote(task_id)}")
        say(f"{data['task_id']}: {data['status']}")
        return 0
    if opts["retry"]:
        record = api.call("GET", f"/tasks/{quote(task_id)}")
        api.call("POST", f"/channels/{quote(record['channel'])}/failed-tasks/{quote(task_id)}")
        say(f"{task_id}: queued again")
        return 0
    if opts["failed"]:
        names = [opts["<channel>"]] if opts["<channel>"] else [   # only those with some
            chan["name"] for chan in api.call("GET", "/overview")["channels"] if chan["failed"]]
        rows = []
        for name in names:
            for task in api.call("GET", f"/channels/{quote(name)}/failed-tasks")["tasks"]:
                rows.append([name, task.get("task_id", ""), task.get("status", ""),
                             task.get("exit_code", ""), task.get("task_name", "")[:60]])
        say(table(rows, ["CHANNEL", "ID", "STATUS", "EXIT", "COMMAND"], tty, lambda row: RED))
        return 0
    if opts["pause"] or opts["resume"] or opts["resize"]:
        name = quote(opts["<channel>"])
        if opts["resize"]:
            try:
                data = api.call("PATCH", f"/channels/{name}", {"worker": int(opts["<workers>"])})
            except ValueError:
                raise Failure("workers must be a whole number", 2) from None
        else:
            data = api.call("POST", f"/channels/{name}/{'pause' if opts['pause'] else 'resume'}")
        say(f"{opts['<channel>']}: {data['worker']} worker(s)"
            f"{', paused' if data['paused'] else ''}")
        return 0
    if opts["nodes"]:
        rows = [[n["id"], "up" if n["alive"] else "down", n.get("host") or "", n.get("pid") or "",
                 n.get("version") or "", n["running"],
                 "" if n.get("heartbeat_age") is None else f"{n['heartbeat_age']:.1f}s",
                 "draining" if n["draining"] else ""]
                for n in api.call("GET", "/nodes")["nodes"]]
        say(table(rows, ["NODE", "STATE", "HOST", "PID", "VERSION", "RUNNING", "HEARTBEAT",
                         ""], tty, lambda row: RED if row[1] == "down" else
                  YELLOW if row[7] else ""))
        return 0
    if opts["schedules"]:
        rows = [[s["name"], s["cron"], s["timezone"], s["channel"],
                 "on" if s["enabled"] else "off",
                 time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["next_runs"][0]))
                 if s["next_runs"] else "", s["command"][:50]]
                for s in api.call("GET", "/schedules")["schedules"]]
        say(table(rows, ["NAME", "CRON", "TIMEZONE", "CHANNEL", "ENABLED", "NEXT", "COMMAND"],
                  tty))
        return 0
    raise Failure("no such command", 2)
