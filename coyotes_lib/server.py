"""The HTTP server in front of the API: the guard, and the bounds that keep slow or
hostile clients from exhausting the daemon.

``Guard`` refuses bodies over the limit (413), and, because this API runs
commands, requests a web page could make through the operator's browser (403):
a cross-site ``Origin`` or ``Sec-Fetch-Site``, and on a loopback listener a
``Host`` that is not a loopback name (DNS rebinding). With API tokens, it asks
every request but ``GET /health`` for one (401), and a read-only one may only
read (403). It reads the body itself, within ``-http-timeout`` (else 408).

``Handler`` bounds the rest of a connection's life in time: ``-http-timeout`` for
the first byte of a new connection, then for the request line and headers (a
deadline, not a per-read timeout, so trickling bytes does not extend it) and
for each write of the reply; ``-http-idle-timeout`` between keep-alive requests.
``Server`` serves at most ``connection_cap(...)`` connections at once; the others
wait, unaccepted, in the kernel's listen backlog. Each connection starts in the
express lane (``express.py``), which answers pushes itself, and goes on in
``Handler`` from the first request that is anything else.
"""

from __future__ import annotations

import email.parser
import errno
import functools
import grp
import hmac
import io
import logging
import os
import re
import socket
import stat
import time
from http import HTTPStatus, client
from urllib.parse import urlsplit

import bottle
import gevent
import gevent.pool
from gevent import pywsgi

from .config import Config, is_ip, is_loopback, token_digest
from .express import CHALLENGE, Express, environ_key, send_all
from .replies import BODY_READ, envelope, is_page

log = logging.getLogger("coyotes.http")

BACKLOG = 1024          # the listen backlog at least (the kernel caps it at somaxconn)
ACCEPT_BACKOFF = 0.5    # seconds without accept() once it failed for want of descriptors
LINGER = 2.0            # seconds, at most, that a closing connection's unread body is drained
HOST_VERDICTS = 256     # Host headers whose verdict a Guard keeps (then it starts over)
READING = frozenset({"GET", "HEAD", "OPTIONS"})   # what a read-only token may do
OPEN_PATHS = frozenset({"/health"})   # answered without a token (load balancers, probes)
PUSH_PATH = re.compile(r"^/channels/[A-Za-z0-9_.\-]{1,64}(/tasks)?$")   # a push token's
# accept() errors that say "not now" rather than "this listener is broken"
OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


# a header line the email parser would read as (name, value) and nothing more: a name
# of the characters it allows, no continuation, no line break but the last
PLAIN_HEADER = re.compile(rb"([!-9;-~]+):[ \t]*([^\r\n]*)\r?\n")


def read_headers(rfile) -> pywsgi.OldMessage:
    """A request's headers as gevent reads them (``http.client.parse_headers`` into its
    OldMessage, with the same limits and errors) but without the email parser when
    every line is a plain ``Name: value``; any other line goes to that parser."""
    try:
        lines = client._read_headers(rfile)
    except client.LineTooLong:
        message = pywsgi.OldMessage()
        message.status = "Line too long"
        return message
    fields = []
    for line in lines[:-1]:
        match = PLAIN_HEADER.fullmatch(line)
        if match is None:
            text = b"".join(lines).decode("iso-8859-1")
            return email.parser.Parser(_class=pywsgi.OldMessage).parsestr(text)
        fields.append((match[1].decode("iso-8859-1"), match[2].decode("iso-8859-1")))
    return PlainHeaders(fields)


class PlainHeaders(pywsgi.OldMessage):
    """gevent's OldMessage of plain header lines, whose ``get`` (eight calls a request)
    looks the name up in an index instead of lowering every header's name. The index
    follows the list: it is rebuilt when the list is replaced (``del``) or grows."""

    def __init__(self, fields: list[tuple[str, str]]):
        super().__init__()
        self._headers = fields
        self._index_of(fields)

    def _index_of(self, headers: list) -> None:
        index: dict[str, str] = {}
        for key, value in headers:   # the first of a repeated name, as Message.get
            index.setdefault(key.lower(), value)
        self._index, self._indexed, self._indexed_count = index, headers, len(headers)

    def get(self, name, failobj=None):
        headers = self._headers
        if headers is not self._indexed or len(headers) != self._indexed_count:
            self._index_of(headers)
        return self._index.get(name.lower(), failobj)

    def replace_header(self, _name, _value):
        self._indexed = None   # changes a value in place
        super().replace_header(_name, _value)

    def environ_items(self):
        """gevent's WSGIHandler._headers for these lines (none is folded): the
        HTTP_* keys and values, names with '_' left out."""
        for name, value in self._headers:
            key = environ_key(name)
            if key.startswith("HTTP_"):
                yield key, value.strip()


def connection_cap(max_connections: int, fd_limit: int) -> int:
    """Connections served at once: the flag, but at most a third of the descriptor
    limit, since a request may hold a Redis connection besides its socket and the
    last third stays for commands' pipes, the channels' Redis connections and logs."""
    if fd_limit <= 0:   # unlimited
        return max_connections
    return max(1, min(max_connections, fd_limit // 3))


class Guard:
    """WSGI middleware: browser (cross-site, rebinding) refusal, API tokens, body limit."""

    def __init__(self, app, config: Config):
        self.app, self.config = app, config
        # Host header -> allowed: a client sends the same one on every request, and
        # parsing it (an IP address, a name) costs more than the rest of the checks
        self.hosts: dict[str, bool] = {}

    def __call__(self, environ, start_response):
        refusal = self.refuse(environ)
        if refusal is not None:
            status, message = refusal
            body = envelope(status, message).encode()
            # close: do not read (and wait for) the rest of a refused body
            start_response(f"{status} {HTTPStatus(status).phrase}",
                           [("Content-Type", "application/json; charset=utf-8"),
                            ("Content-Length", str(len(body))), ("Connection", "close"),
                            *([CHALLENGE] if status == 401 else [])])
            return [body]
        return self.app(environ, start_response)

    def refuse(self, environ) -> tuple[int, str] | None:
        return self.refuse_request(environ) or self.limit_body(environ)

    def refuse_request(self, environ) -> tuple[int, str] | None:
        """(status, why) if the request's headers say a browser page sent it."""
        host = environ.get("HTTP_HOST", "")
        if host and not self.host_known_allowed(host):
            return 403, f"host {host!r} is not allowed (DNS rebinding protection)"
        if is_page(environ):   # the dashboard's files hold no data; a link may lead there
            return None
        origin = environ.get("HTTP_ORIGIN")
        if origin is not None and urlsplit(origin).netloc.lower() != host.lower():
            return 403, "cross-origin request refused"
        if environ.get("HTTP_SEC_FETCH_SITE") == "cross-site":
            return 403, "cross-site request refused"
        if self.config.api_tokens and environ.get("PATH_INFO") not in OPEN_PATHS:
            return self.refuse_token(environ)
        return None

    def refuse_token(self, environ) -> tuple[int, str] | None:
        """(401 or 403, why) unless the request carries a token that may do this."""
        scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return 401, "this API needs a token: send Authorization: Bearer <token>"
        digest = token_digest(token.strip())
        scope = None
        for known, its_scope in self.config.api_tokens:   # every one: no early exit
            if hmac.compare_digest(digest, known):
                scope = its_scope
        if scope is None:
            return 401, "the API token is not valid"
        method, path = environ.get("REQUEST_METHOD"), environ.get("PATH_INFO", "")
        if scope == "read-only" and method not in READING:
            return 403, "this API token is read-only"
        if scope == "push" and not (
                (method == "POST" and PUSH_PATH.match(path))
                or (method in READING and path.startswith("/tasks/"))):
            return 403, ("this API token may only push tasks (POST /channels/{name}, "
                         "/channels/{name}/tasks) and read them (GET /tasks/...)")
        return None

    def host_known_allowed(self, host: str) -> bool:
        allowed = self.hosts.get(host)
        if allowed is None:
            allowed = self.host_allowed(urlsplit("//" + host).hostname or "")
            if len(self.hosts) >= HOST_VERDICTS:   # many names: a scan, not clients
                self.hosts.clear()
            self.hosts[host] = allowed
        return allowed

    def host_allowed(self, hostname: str) -> bool:
        hostname = hostname.lower()
        if hostname in self.config.allowed_hosts or "*" in self.config.allowed_hosts:
            return True
        if is_loopback(hostname):
            return True
        if self.config.http_loopback or self.config.allowed_hosts:
            return False
        # elsewhere, by default: an IP address or this machine's own name. Any other
        # name could be a DNS-rebinding one; it must be listed in -allowed-hosts.
        return is_ip(hostname) or hostname in self.own_names

    @functools.cached_property
    def own_names(self) -> set[str]:
        return {socket.gethostname().lower(), socket.getfqdn().lower()}

    def limit_body(self, environ) -> tuple[int, str] | None:
        """Read the whole body (if any) within -http-timeout, and hand the app a copy."""
        limit = self.config.max_body
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if chunked:
            wanted = limit + 1
        else:
            try:
                wanted = int(environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                return 400, "bad Content-Length"
            if wanted > limit:
                return self.refuse_length(wanted)   # refused before it is sent: never waited for
            if wanted <= 0:
                return None
        data = None
        try:
            with gevent.Timeout(self.config.http_timeout, False):
                data = environ["wsgi.input"].read(wanted)
        except OSError:   # the client closed (or broke the chunking) mid-body
            return 400, "request body incomplete"
        if data is None:
            return 408, f"request body not received within {self.config.http_timeout:g} s"
        if len(data) > limit:
            return self.refuse_length(len(data))
        environ["wsgi.input"] = io.BytesIO(data)
        environ[BODY_READ] = data   # for replies.Body, which needs no file
        environ["CONTENT_LENGTH"] = str(len(data))
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        return None

    def refuse_length(self, length: int) -> tuple[int, str] | None:
        """(413, why) for a body of ``length`` bytes over the limit."""
        if length > self.config.max_body:
            return 413, f"request body larger than {self.config.max_body} bytes"
        return None


class _LingeringInput:
    """Stands in for a request's input after its reply: gevent then reads what is
    left of the body, so that the next request starts in step and a close does not
    reset the connection (a reset can destroy the reply before the client reads it).
    A client that never sends that rest must not hold the connection, so the read
    is bounded; if it runs out, the connection is closed."""

    __slots__ = ("handler", "stream")

    def __init__(self, handler: Handler, stream):
        self.handler, self.stream = handler, stream

    def _discard(self) -> None:
        stream = self.stream
        if not stream.chunked_input and stream.position >= (stream.content_length or 0):
            return   # all read (as gevent would find): nothing to wait for
        finished = False
        with gevent.Timeout(min(LINGER, self.handler.server.http_timeout), False):
            self.stream._discard()
            finished = True
        if not finished:
            self.handler.close_connection = True


class Resumed(io.RawIOBase):
    """A connection's reading side for gevent's handler once the express lane let go
    of it: first the bytes the lane read already, then the socket."""

    def __init__(self, first: bytes, sock):
        super().__init__()
        self.first, self.sock = first, sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.first:
            n = min(len(buffer), len(self.first))
            buffer[:n], self.first = self.first[:n], self.first[n:]
            return n
        return self.sock.recv_into(buffer)


class Handler(pywsgi.WSGIHandler):
    """gevent's handler, bounded in time (see the module docstring). A connection cut
    for slowness is closed without a reply and logged at debug level only: under a
    slowloris attack there are thousands of them."""

    # a reply not taken in time is the client's doing, like a reset: no traceback
    ignored_socket_errors = (*pywsgi.WSGIHandler.ignored_socket_errors, errno.ETIMEDOUT)
    served = 0                                  # requests read on this connection
    deadline: gevent.Timeout | None = None      # the request line and headers'

    def read_requestline(self) -> str:
        wait = self.server.idle_timeout if self.served else self.server.http_timeout
        first = None
        with gevent.Timeout(wait, False):
            first = self.rfile.peek(1)   # the first byte only: the deadline starts there
        if not first:
            if first is None:
                log.debug("http: %s: nothing received in %g s; connection closed",
                          self.peer, wait)
            return ""   # gevent closes the connection
        # peek gave what is buffered: with the end of the headers there, reading them
        # cannot wait, and needs no deadline (most requests come in one segment)
        self.deadline = None if b"\r\n\r\n" in first \
            else gevent.Timeout.start_new(self.server.http_timeout)
        return super().read_requestline()

    def MessageClass(self, rfile, *args):   # gevent's name
        return read_headers(rfile)

    def read_request(self, raw_requestline: str) -> bool:
        try:
            return super().read_request(raw_requestline)
        finally:
            self.cancel_deadline()

    def handle_one_request(self):
        try:
            return super().handle_one_request()
        except gevent.Timeout as timeout:
            if timeout is not self.deadline:
                raise
            log.debug("http: %s: request headers not complete in %g s; connection closed",
                      self.peer, self.server.http_timeout)
            return None
        finally:
            self.cancel_deadline()
            self.served += 1

    def log_request(self) -> None:
        if self.server.logs_requests:   # else gevent formats a line for nothing
            super().log_request()

    def cancel_deadline(self) -> None:
        # the reference stays: handle_one_request tells this deadline's Timeout by it
        if self.deadline is not None:
            self.deadline.close()

    def _headers(self):
        if type(self.headers) is PlainHeaders:
            return self.headers.environ_items()
        return super()._headers()

    def get_environ(self):
        env = super().get_environ()
        # no connection upgrades here: the body is always read through gevent's Input
        # (which frames it), never from the raw socket file
        env["wsgi.input"], env["wsgi.input_terminated"] = self.wsgi_input, True
        return env

    def run_application(self) -> None:
        try:
            super().run_application()
        finally:
            self.wsgi_input = _LingeringInput(self, self.wsgi_input)

    def _write_with_headers(self, data) -> None:
        # gevent sends the headers and the body in two writes; one costs half the
        # system calls (and ``data`` is a small JSON reply here)
        self.headers_sent = True
        self.finalize_headers()
        head = [b"HTTP/1.1 ", self.status, b"\r\n"]
        for header, value in self.response_headers:
            head += (header, b": ", value, b"\r\n")
        head.append(b"\r\n")
        if data and not self.response_use_chunked:
            head.append(data)
            data = b""
        self._sendall(b"".join(head))
        self._write(data)

    def _sendall(self, data) -> None:
        # errors as gevent's _sendall
        try:
            send_all(self.socket, data, self.server.http_timeout)
        except OSError as exc:
            self.status = f"socket error: {exc}"
            if self.code > 0:
                self.code = -self.code
            raise
        self.response_length += len(data)

    @property
    def peer(self) -> str:
        address = self.client_address
        return f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)


class Server(pywsgi.WSGIServer):
    """gevent's WSGI server, bounded: at most ``cap`` connections at once, and quiet
    when accept() fails for want of descriptors.

    TCP_NODELAY on every connection: gevent writes a reply's headers and body
    separately, and without it a keep-alive client waits for the delayed ACK on every
    request."""

    handler_class = Handler
    burst_gap = 10.0   # seconds without a failed accept() that end a burst of them

    def __init__(self, address, app, config: Config, cap: int, **kwargs):
        # gevent's BaseServer stops accept() while pool.full(), resumes when a slot frees
        made = isinstance(address, socket.socket)   # listening already: its backlog is set
        super().__init__(address, app, spawn=gevent.pool.Pool(cap),
                         backlog=None if made else max(BACKLOG, cap), **kwargs)
        self.http_timeout, self.idle_timeout = config.http_timeout, config.http_idle_timeout
        self.logs_requests = kwargs.get("log", "default") is not None
        self.failed_accepts, self.last_failed_accept = 0, 0.0
        self.express: Express | None = None   # set by make_server
        self.socket_path, self.socket_inode = "", 0   # a unix socket's, to remove at the end
        if made and address.family == socket.AF_UNIX:
            self.socket_path = address.getsockname()
            self.socket_inode = os.stat(self.socket_path).st_ino

    def handle(self, sock, address):
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.express is None:
            super().handle(sock, address)
            return
        served, rest = self.express.serve(sock, address)
        if rest is not None:   # the rest of the connection is gevent's
            handler = self.handler_class(sock, address, self,
                                         rfile=io.BufferedReader(Resumed(rest, sock)))
            handler.served = served
            handler.handle()

    def do_read(self):
        try:
            return super().do_read()
        except OSError as exc:
            if exc.errno not in OUT_OF_DESCRIPTORS:
                raise
            self.note_failed_accept(exc)
            return None

    def note_failed_accept(self, exc: OSError) -> None:
        """gevent logs a traceback for every failed accept() and retries after 10 ms
        (doubling up to 1 s, back to 10 ms after a success): out of descriptors, a
        stream of tracebacks. Here: one warning per burst (a burst
        ends after burst_gap seconds without a failure, then one line says so), and a
        pause of ACCEPT_BACKOFF between tries."""
        if not self.failed_accepts:
            log.warning("http: cannot accept connections: %s; retrying every %g s "
                        "(waiting clients stay in the listen backlog)",
                        exc.strerror or exc, ACCEPT_BACKOFF)
            gevent.spawn_later(self.burst_gap, self.end_burst)
        self.failed_accepts += 1
        self.last_failed_accept = time.monotonic()
        self.stop_accepting()
        gevent.spawn_later(ACCEPT_BACKOFF, self.resume_accepting)

    def end_burst(self) -> None:
        quiet = time.monotonic() - self.last_failed_accept
        if quiet < self.burst_gap:
            gevent.spawn_later(self.burst_gap - quiet, self.end_burst)
            return
        log.info("http: accepting connections again (%d tries had failed)",
                 self.failed_accepts)
        self.failed_accepts = 0

    def resume_accepting(self) -> None:
        if self.started:
            self.start_accepting()

    def forget(self) -> None:
        """After ``stop``: remove our unix socket's file, unless another took its place."""
        path = self.socket_path
        try:
            if path and os.lstat(path).st_ino == self.socket_inode:
                os.unlink(path)
        except OSError:
            pass


def unix_listener(path: str, mode: int, group: str, backlog: int) -> socket.socket:
    """A unix socket listening at ``path``, of ``mode`` and ``group``: a stale socket
    file there (nobody listens) is replaced; a live one or another kind of file is
    an OSError. Made private, then given its mode: never more open than asked."""
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)
        else:
            raise OSError(errno.EADDRINUSE, f"another process listens on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    umask = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(umask)
    try:
        if group:
            os.chown(path, -1, int(group) if group.isdigit() else grp.getgrnam(group).gr_gid)
        os.chmod(path, mode)
        sock.listen(backlog)
    except OSError:
        sock.close()
        os.unlink(path)
        raise
    return sock


def make_server(app: bottle.Bottle, config: Config, cap: int, push=None) -> Server:
    """The server of ``app``, with an express lane to the push route ``push`` if given
    (but not with -debug: gevent's handler writes the access log)."""
    guard = Guard(app, config)
    where = (config.http_host, config.http_port)
    if config.http_socket:
        where = unix_listener(config.http_socket, config.http_socket_mode,
                              config.http_socket_group, max(BACKLOG, cap))
    server = Server(where, guard, config, cap,
                    log=logging.getLogger("coyotes.access") if config.debug else None,
                    error_log=logging.getLogger("coyotes.api"))
    if push is not None and not config.debug:
        server.express = Express(push, guard, server.environ, config.http_timeout,
                                 config.http_idle_timeout)
    return server
