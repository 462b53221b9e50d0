"""The HTTP server's bounds, against the daemon as a real process: header and body
deadlines, idle keep-alive connections, the connection cap, the reply deadline,
and 1,100 slowloris clients under `ulimit -n 1024`.

Timings use -http-timeout 2 and check order and generous bounds, not exact
times: the machine is shared and has two cores.
"""

from __future__ import annotations

import json
import os
import resource
import selectors
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
import urllib.request

import pytest
from conftest import ROOT, free_port, ledger_command, read_ledger, wait_until

SLACK = 4.0   # seconds of scheduling noise allowed on top of a deadline


def connect(daemon, rcvbuf: int = 0) -> socket.socket:
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", daemon.http_port))
    return sock


def closed(sock: socket.socket) -> bool:
    """True when the peer closed (FIN or reset), False if it is only quiet."""
    sock.setblocking(False)
    try:
        return sock.recv(4096) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.settimeout(10)


def wait_closed(sock: socket.socket, timeout: float) -> float:
    """Seconds until the peer closes ``sock`` (AssertionError after ``timeout``)."""
    t0 = time.monotonic()
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"connection still open after {timeout}s") from None
    return time.monotonic() - t0


def read_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one response with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in
               (line.split(":", 1) for line in lines[1:])}
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(4096)
        assert chunk, "closed in the body"
        body += chunk
    return int(lines[0].split()[1]), headers, body[:length]


def get(daemon, path: str = "/channels", timeout: float = 30) -> tuple[int, float]:
    """(status, seconds) of a plain urllib GET."""
    t0 = time.monotonic()
    with urllib.request.urlopen(daemon.url + path, timeout=timeout) as resp:
        resp.read()
        return resp.status, time.monotonic() - t0


def no_traceback(daemon) -> None:
    assert "Traceback" not in daemon.log(), daemon.log()[-5000:]


# -- deadlines ------------------------------------------------------------------

def test_slowloris_headers_are_cut_at_the_deadline(coyotes_factory):
    """One header byte a second keeps every read under a per-recv timeout, but the
    headers' deadline runs from the first byte: the connection is closed at about
    -http-timeout, without a reply."""
    daemon = coyotes_factory("-http-timeout", "2", "-http-idle-timeout", "60")
    sock = connect(daemon)
    t0 = time.monotonic()
    sock.sendall(b"GET /channels HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    sent, cut = 0, None
    while cut is None and time.monotonic() - t0 < 2 + SLACK + 2:
        time.sleep(1)
        if closed(sock):
            cut = time.monotonic() - t0
            break
        try:
            sock.send(b"a")
            sent += 1
        except OSError:
            cut = time.monotonic() - t0
    assert cut is not None, "slowloris connection never cut"
    assert sent >= 1 and 1.5 <= cut <= 2 + SLACK, (sent, cut)
    assert get(daemon)[0] == 200
    no_traceback(daemon)


def test_silent_new_connection_waits_http_timeout_not_idle_timeout(coyotes_factory):
    daemon = coyotes_factory("-http-timeout", "2", "-http-idle-timeout", "60")
    sock = connect(daemon)
    assert 1.5 <= wait_closed(sock, 2 + SLACK + 5) <= 2 + SLACK
    no_traceback(daemon)


def test_a_push_then_silence_waits_idle_timeout_not_http_timeout(coyotes_factory):
    """After a push the express lane answered, the next request may take the idle
    timeout (here longer than -http-timeout) to come."""
    daemon = coyotes_factory("-http-timeout", "1", "-http-idle-timeout", "3")
    sock = connect(daemon)
    sock.sendall(b"POST /channels/default HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Length: 9\r\n\r\ntask=true")
    assert read_response(sock)[0] == 200
    assert 2.5 <= wait_closed(sock, 3 + SLACK + 5) <= 3 + SLACK
    no_traceback(daemon)


@pytest.mark.parametrize("sent", [0, 10])
def test_slow_body_gets_408_envelope(coyotes_factory, r, sent):
    """Headers complete, Content-Length 100, the body (or its rest) never sent."""
    daemon = coyotes_factory("-http-timeout", "2")
    sock = connect(daemon)
    t0 = time.monotonic()
    sock.sendall(b"POST /channels/default HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/x-www-form-urlencoded\r\n"
                 b"Content-Length: 100\r\n\r\n" + b"task=echo+"[:sent])
    status, headers, body = read_response(sock)
    elapsed = time.monotonic() - t0
    assert status == 408 and 1.5 <= elapsed <= 2 + SLACK, (status, elapsed)
    envelope = json.loads(body)
    assert envelope["status_code"] == 408 and envelope["data"] is None, envelope
    assert "2 s" in envelope["message"], envelope
    assert headers["connection"] == "close"
    wait_closed(sock, 2 + SLACK)   # no waiting for the rest of the body
    assert r.llen("default:tasks:queue") == 0
    no_traceback(daemon)


def test_slow_chunked_body_gets_408(coyotes_factory):
    daemon = coyotes_factory("-http-timeout", "2")
    sock = connect(daemon)
    sock.sendall(b"POST /channels/default HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/x-www-form-urlencoded\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n5\r\ntask=\r\n")
    assert read_response(sock)[0] == 408
    no_traceback(daemon)


def test_body_in_time_is_accepted_even_when_it_trickles(coyotes_factory, tmp_path):
    """The body deadline is for the whole body; one that arrives in pieces within it
    is fine, on a keep-alive connection that goes on serving."""
    daemon = coyotes_factory("-http-timeout", "3")
    ledger = tmp_path / "ledger"
    body = urllib.parse.urlencode({"task": ledger_command(ledger, "trickled")}).encode()
    sock = connect(daemon)
    sock.sendall(b"POST /channels/default HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/x-www-form-urlencoded\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body))
    for piece in (body[:5], body[5:20], body[20:]):
        time.sleep(0.4)
        sock.sendall(piece)
    status, _, reply = read_response(sock)
    assert status == 200, reply
    sock.sendall(b"GET /channels HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert read_response(sock)[0] == 200
    wait_until(lambda: any(tag == "trickled" and event == "end"
                           for event, tag, _ in read_ledger(ledger)), what="task ran")


@pytest.mark.parametrize("request_", [
    b"GET /channels HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",   # gevent's handler
    (b"POST /channels/default HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 9\r\n\r\n"
     b"task=true")], ids=["get", "push"])                   # the express lane
def test_idle_keep_alive_connection_is_closed(coyotes_factory, request_):
    """Between requests the idle timeout applies (here shorter than -http-timeout)."""
    daemon = coyotes_factory("-http-timeout", "10", "-http-idle-timeout", "2")
    sock = connect(daemon)
    request = request_
    sock.sendall(request)
    assert read_response(sock)[0] == 200
    time.sleep(1)   # idle, but less than the idle timeout: still served
    sock.sendall(request)
    assert read_response(sock)[0] == 200
    assert 1.5 <= wait_closed(sock, 2 + SLACK + 5) <= 2 + SLACK
    no_traceback(daemon)


# -- the connection cap -----------------------------------------------------------

def test_connections_beyond_the_cap_wait_and_are_served_when_a_slot_frees(coyotes_factory):
    daemon = coyotes_factory("-http-timeout", "2", "-http-max-connections", "2")
    holders = [connect(daemon) for _ in range(2)]
    time.sleep(0.3)   # both accepted, both silent
    status, elapsed = get(daemon)
    assert status == 200
    assert 1.0 <= elapsed <= 2 + SLACK, elapsed   # it waited for a holder to be cut
    assert get(daemon)[1] < 1.5   # the holders are gone: at once
    for sock in holders:
        sock.close()
    no_traceback(daemon)


def test_a_client_that_does_not_read_its_reply_is_cut(api_only_daemon, r):
    """A reply larger than the socket buffers, never read: the write deadline frees
    the only slot, and the next client is served."""
    daemon = api_only_daemon("-http-timeout", "2", "-http-max-connections", "1")
    pad = "x" * 10_000
    r.lpush("default:tasks:queue", *(json.dumps({"id": f"t{i}", "task": f"echo {pad}",
                                                 "chan": "default"}) for i in range(1000)))
    wait_until(lambda: get(daemon, "/channels/default?limit=0")[0] == 200,
               what="default channel")
    sock = connect(daemon, rcvbuf=4096)
    sock.sendall(b"GET /channels/default?limit=1000 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    time.sleep(0.5)   # the reply is being written, and stalls
    status, elapsed = get(daemon)
    assert status == 200 and 1.0 <= elapsed <= 2 + SLACK, elapsed
    sock.close()
    no_traceback(daemon)


@pytest.fixture
def api_only_daemon(coyotes_factory):
    def make(*args):
        return coyotes_factory("-task-mode=false", *args)
    return make


# -- running out of descriptors in accept() ------------------------------------------

SERVER_SCRIPT = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    import logging, resource, sys
    from coyotes_lib.config import Config
    from coyotes_lib.server import Server
    Server.burst_gap = 1.0
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    server = Server(("127.0.0.1", int(sys.argv[1])), app, Config(http_timeout=60), cap=1000)
    server.start()
    import os
    used = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (used + 10, resource.getrlimit(
        resource.RLIMIT_NOFILE)[1]))
    print("serving", flush=True)
    server.serve_forever()
""")


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_accept_out_of_descriptors_warns_once_backs_off_and_recovers(tmp_path):
    """The real Server class in a process of its own whose open-file limit leaves ten
    descriptors free, and a cap that does not protect it: accept() fails with EMFILE.
    One warning (no traceback per try), no spinning, and service once fds free up."""
    port = free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, str(port)], cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT)
    clients: list[socket.socket] = []
    try:
        wait_until(lambda: "serving" in log_path.read_text(), what="server")
        for _ in range(30):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        wait_until(lambda: "cannot accept" in log_path.read_text(), what="EMFILE warning")
        cpu0 = cpu_seconds(proc.pid)
        time.sleep(2)
        assert cpu_seconds(proc.pid) - cpu0 < 0.5, "accept loop spins"
        for sock in clients:
            sock.close()
        clients.clear()
        t0 = time.monotonic()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as resp:
            assert resp.read() == b"ok"
        assert time.monotonic() - t0 < 10
        wait_until(lambda: "accepting connections again" in log_path.read_text(),
                   what="the end of the burst")
        text = log_path.read_text()
        assert text.count("cannot accept") == 1, text
        assert "Traceback" not in text, text
    finally:
        for sock in clients:
            sock.close()
        proc.terminate()
        proc.wait(10)


# -- ulimit -n 1024 and 1,100 slow clients ----------------------------------------------

class Slowloris(threading.Thread):
    """``count`` connections to ``port``: half silent, half trickling one header byte
    a second. A connection the server closes is opened again at once, so the
    pressure never lets up."""

    def __init__(self, port: int, count: int):
        super().__init__(daemon=True)
        self.port, self.count = port, count
        self.stop = threading.Event()
        self.selector = selectors.DefaultSelector()
        self.open = 0
        self.cut = 0
        self.failed = 0

    def dial(self, trickle: bool) -> None:
        sock = socket.socket()
        sock.settimeout(5)
        try:
            sock.connect(("127.0.0.1", self.port))
        except OSError:
            self.failed += 1
            sock.close()
            return
        sock.setblocking(False)
        if trickle:
            sock.send(b"GET /channels HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        self.selector.register(sock, selectors.EVENT_READ, trickle)
        self.open += 1

    def run(self) -> None:
        for i in range(self.count):
            self.dial(trickle=bool(i % 2))
        next_byte = time.monotonic() + 1
        while not self.stop.is_set():
            for key, _ in self.selector.select(timeout=0.2):
                self.hang_up(key)
                self.cut += 1
                self.dial(key.data)
            while self.open < self.count and not self.stop.is_set():
                self.dial(trickle=False)
            if time.monotonic() >= next_byte:
                next_byte += 1
                for key in list(self.selector.get_map().values()):
                    if key.data:
                        try:
                            key.fileobj.send(b"a")
                        except OSError:
                            pass   # closed: the selector reports it
        for key in list(self.selector.get_map().values()):
            self.hang_up(key)
        self.selector.close()

    def hang_up(self, key) -> None:
        self.selector.unregister(key.fileobj)
        key.fileobj.close()
        self.open -= 1


@pytest.fixture
def enough_descriptors():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1500:
        pytest.skip(f"the test needs 1,500 descriptors; the hard limit is {hard}")
    if soft != resource.RLIM_INFINITY and soft < 1500:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def limit_1024() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


def test_ulimit_1024_and_1100_slow_clients(coyotes_factory, r, tmp_path, enough_descriptors):
    """systemd's default limit of 1024 descriptors and 1,100 half-open connections.
    Tasks keep running, a normal client is answered, the daemon never
    runs out of descriptors, logs no traceback, and serves on once they are gone."""
    daemon = coyotes_factory("-http-timeout", "2", start=False)
    daemon.start(preexec_fn=limit_1024)
    log = daemon.log()
    assert "file descriptors: limit 1024" in log, log
    assert "http: at most 341 connections at once" in log, log

    attack = Slowloris(daemon.http_port, 1100)
    attack.start()
    try:
        wait_until(lambda: attack.open >= 1100, timeout=20, what="1,100 slow clients")
        wait_until(lambda: descriptors(daemon.proc.pid) > 300, what="the pool to fill")
        ledger = tmp_path / "ledger"
        tags = [f"t{i}" for i in range(20)]
        for tag in tags:
            r.lpush("task:prepare:queue", json.dumps(
                {"task": ledger_command(ledger, tag), "chan": "default", "id": tag}))
        peak = 0

        def all_ran() -> bool:
            nonlocal peak
            peak = max(peak, descriptors(daemon.proc.pid))
            return {tag for event, tag, _ in read_ledger(ledger) if event == "end"} == set(tags)

        status, waited = get(daemon)   # a normal client, queued behind the slow ones
        assert status == 200
        wait_until(all_ran, timeout=40, interval=0.2, what="20 tasks under attack")
        assert attack.is_alive() and attack.open >= 1000
        assert attack.cut >= 341, attack.cut   # the server cut them and took the next ones
        assert peak < 1024 - 200, peak
        # the slow clients ahead of it are cut every -http-timeout, 341 at a time
        assert waited <= 25, waited
    finally:
        attack.stop.set()
        attack.join(20)
    status, elapsed = get(daemon)
    assert status == 200 and elapsed < 10, elapsed
    log = daemon.log()
    assert "Traceback" not in log, log[-5000:]
    assert "cannot accept" not in log and "Too many open files" not in log, log[-5000:]
    print(f"normal client answered in {waited:.1f}s under attack, {elapsed:.1f}s after; "
          f"{attack.cut} slow connections cut; peak {peak} descriptors")
