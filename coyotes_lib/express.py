"""The express lane: pushes answered straight from the socket.

Producers mostly push one small request at a time on a keep-alive connection:
``POST /channels/<name>`` or ``/channels/<name>/tasks``, plain headers, a
Content-Length body, all of it in one read. ``Express.serve`` answers those
itself, through the same guard and the same push route as the API, with the
reply the full path would send, in one write. At the first request that is
anything else (another route, a body still on its way, chunks, a 100-continue),
it hands the connection, with what it read of that request, to gevent's WSGI
handler and bottle. gevent's handler costs several times the push route itself;
this is what lets one process take pushes as fast as the Go daemon.
"""

from __future__ import annotations

import errno
import io
import logging
import re
import time
from http import HTTPStatus

import gevent
from gevent.pywsgi import format_date_time  # the Date gevent's handler sends (bytes)

from .replies import BODY_READ, envelope

log = logging.getLogger("coyotes.http")

RECV_SIZE = 65536   # bytes read at once
# a push whose request line and headers are all in the buffer: its path and headers
HEAD = re.compile(rb"POST (/channels/[A-Za-z0-9_.-]{1,64}(/tasks)?) HTTP/1\.1\r\n"
                  rb"((?:[!-9;-~]+:[ \t]*[^\r\n]*\r\n)*)\r\n")
FIELD = re.compile(r"([!-9;-~]+):[ \t]*([^\r\n]*)\r\n")   # in the block decoded
KEYS_KEPT = 256   # header names whose environ key an Express keeps
PHRASES = {status.value: status.phrase.encode("latin-1") for status in HTTPStatus}
# headers that ask for more than this lane does: gevent's handler answers them
NOT_HERE = frozenset({"HTTP_TRANSFER_ENCODING", "HTTP_EXPECT", "HTTP_UPGRADE"})
CHALLENGE = ("WWW-Authenticate", 'Bearer realm="coyotes"')   # with a 401 (RFC 6750)
CHALLENGE_LINE = f"{CHALLENGE[0]}: {CHALLENGE[1]}\r\n".encode()
REPLY = (b"HTTP/1.1 %d %s\r\nContent-Type: application/json; charset=utf-8\r\n"
         b"Content-Length: %d\r\n%sDate: %s\r\n\r\n%s")


def send_all(sock, data: bytes, timeout: float) -> None:
    """``sock.sendall(data)`` within ``timeout`` (else ETIMEDOUT). What the kernel takes
    at once (a small reply: all of it) goes without a timer and without gevent's
    sendall, which asks for the socket's buffer size each time."""
    raw = getattr(sock, "_sock", None)   # gevent's non-blocking socket
    try:
        sent = raw.send(data) if raw is not None else 0
    except BlockingIOError:
        sent = 0
    if sent < len(data):
        with gevent.Timeout(timeout, OSError(errno.ETIMEDOUT, "reply not taken in time")):
            sock.sendall(memoryview(data)[sent:])


class Request:
    """A push the lane can answer: its channel, route, environ headers and body."""

    __slots__ = ("body", "fields", "length", "name", "path", "with_command")

    def __init__(self, path: str, name: str, with_command: bool, fields: dict,
                 body: bytes, length: int):
        self.path, self.name, self.with_command = path, name, with_command
        self.fields, self.body, self.length = fields, body, length


def environ_key(name: str) -> str:
    """The environ key of a header name, as gevent makes it; '' for a name with '_'
    (gevent drops those)."""
    if "_" in name:
        return ""
    key = name.upper().replace("-", "_")
    return key if key == "CONTENT_TYPE" or key == "CONTENT_LENGTH" else "HTTP_" + key


class Express:
    """Serves connections' pushes (see the module docstring) for ``server.Server``.
    ``push(environ, name, with_command) -> (status, JSON text)`` is the API's push
    route; ``guard`` the server's ``Guard``, whose checks every request passes."""

    def __init__(self, push, guard, environ: dict, http_timeout: float, idle_timeout: float):
        self.push, self.guard, self.environ = push, guard, environ
        self.http_timeout, self.idle_timeout = http_timeout, idle_timeout
        self.date = (0, b"")
        # header name -> environ key: clients send the same few names on every request
        self.keys: dict[str, str] = {}

    def serve(self, sock, address) -> tuple[int, bytes | None]:
        """Answer the pushes of a connection while each comes whole in one read, each
        within the server's time bounds (its first byte within -http-timeout, the next
        request within -http-idle-timeout, each reply taken within -http-timeout)
        -> (requests answered, what was read of the next request, for gevent's
        handler; None when the connection is done)."""
        buffered, served = b"", 0
        while True:
            if not buffered:
                wait = self.idle_timeout if served else self.http_timeout
                buffered = None
                try:
                    with gevent.Timeout(wait, False):
                        buffered = sock.recv(RECV_SIZE)
                except OSError:
                    return served, None
                if not buffered:
                    if buffered is None:
                        log.debug("http: %s:%s: nothing received in %g s; connection "
                                  "closed", address[0], address[1], wait)
                    return served, None
            request = self.parse(buffered)
            if request is None:
                return served, buffered
            reply, close = self.answer(request, address)
            served += 1
            buffered = buffered[request.length:]
            try:
                send_all(sock, reply, self.http_timeout)
            except OSError:
                return served, None
            if close:
                return served, None

    def parse(self, buffered: bytes) -> Request | None:
        """The push at the start of ``buffered`` if this lane can answer it: HTTP/1.1,
        plain headers (none repeated, no '_' in a name, none of ``NOT_HERE``), a
        Content-Length whose body is all there, and a keep-alive or close connection.
        Else None."""
        head = HEAD.match(buffered)
        if head is None:
            return None
        fields, keys = {}, self.keys
        for name, value in FIELD.findall(head[3].decode("latin-1")):
            key = keys.get(name)
            if key is None:
                key = environ_key(name)
                key = "" if key in NOT_HERE else key   # gevent answers those
                if len(keys) < KEYS_KEPT:
                    keys[name] = key
            if not key or key in fields:
                return None
            fields[key] = value.strip()
        length = fields.get("CONTENT_LENGTH", "")
        start = head.end()
        end = start + int(length) if length.isascii() and length.isdigit() \
            and len(length) < 10 else -1
        connection = fields.get("HTTP_CONNECTION")
        if not start <= end <= len(buffered) or (
                connection is not None and connection.lower() not in ("keep-alive", "close")):
            return None
        path = head[1].decode("ascii")
        return Request(path, path[len("/channels/"):].partition("/")[0], head[2] is not None,
                       fields, buffered[start:end], end)

    def answer(self, request: Request, address) -> tuple[bytes, bool]:
        """The reply to ``request`` as the full path words it, and whether the
        connection closes after it (the client asked, or the guard refused)."""
        environ = self.environ.copy()
        environ.update(request.fields)
        peer = address if isinstance(address, tuple) else ("", "")   # a unix socket's is ''
        environ.update(REQUEST_METHOD="POST", PATH_INFO=request.path, QUERY_STRING="",
                       SERVER_PROTOCOL="HTTP/1.1", REMOTE_ADDR=str(peer[0]),
                       REMOTE_PORT=str(peer[1]))
        environ["wsgi.input"] = io.BytesIO(request.body)
        environ[BODY_READ] = request.body
        close = request.fields.get("HTTP_CONNECTION", "").lower() == "close"
        refusal = self.guard.refuse_request(environ) \
            or self.guard.refuse_length(len(request.body))
        extra = b""
        if refusal is not None:
            status, text = refusal[0], envelope(*refusal)
            extra = b"Connection: close\r\n" + (CHALLENGE_LINE if status == 401 else b"")
        else:
            status, text = self.push(environ, request.name, request.with_command)
        body = text.encode("utf-8")
        return REPLY % (status, PHRASES[status], len(body), extra, self.http_date(),
                        body), close or refusal is not None

    def http_date(self) -> bytes:
        """The Date header's value, made once a second."""
        now = int(time.time())
        if now != self.date[0]:
            self.date = (now, format_date_time(now))
        return self.date[1]
