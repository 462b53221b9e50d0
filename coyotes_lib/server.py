"""The HTTP server in front of the API: the guard, and the bounds that keep slow or
hostile clients from exhausting the daemon.

``Guard`` refuses bodies over the limit (413), and, because this API runs
commands, requests a web page could make through the operator's browser (403):
a cross-site ``Origin`` or ``Sec-Fetch-Site``, and on a loopback listener a
``Host`` that is not a loopback name (DNS rebinding).
"""

from __future__ import annotations

import functools
import io
import logging
import socket
from http import HTTPStatus
from urllib.parse import urlsplit

import bottle
from gevent import pywsgi

from .api import envelope
from .config import Config, is_ip, is_loopback


class Guard:
    """WSGI middleware: body limit and browser (cross-site, rebinding) refusal."""

    def __init__(self, app, config: Config):
        self.app, self.config = app, config

    def __call__(self, environ, start_response):
        refusal = self.refuse(environ)
        if refusal is not None:
            status, message = refusal
            body = envelope(status, message).encode()
            # close: do not read (and wait for) the rest of a refused body
            start_response(f"{status} {HTTPStatus(status).phrase}",
                           [("Content-Type", "application/json; charset=utf-8"),
                            ("Content-Length", str(len(body))), ("Connection", "close")])
            return [body]
        return self.app(environ, start_response)

    def refuse(self, environ) -> tuple[int, str] | None:
        host = environ.get("HTTP_HOST", "")
        if host and not self.host_allowed(urlsplit("//" + host).hostname or ""):
            return 403, f"host {host!r} is not allowed (DNS rebinding protection)"
        origin = environ.get("HTTP_ORIGIN")
        if origin is not None and urlsplit(origin).netloc.lower() != host.lower():
            return 403, "cross-origin request refused"
        if environ.get("HTTP_SEC_FETCH_SITE") == "cross-site":
            return 403, "cross-site request refused"
        return self.limit_body(environ)

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
        limit = self.config.max_body
        too_big = (413, f"request body larger than {limit} bytes")
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            data = environ["wsgi.input"].read(limit + 1)
            if len(data) > limit:
                return too_big
            environ["wsgi.input"] = io.BytesIO(data)
            environ["CONTENT_LENGTH"] = str(len(data))
            del environ["HTTP_TRANSFER_ENCODING"]
            return None
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return 400, "bad Content-Length"
        return too_big if length > limit else None


class Server(pywsgi.WSGIServer):
    """gevent's WSGI server with TCP_NODELAY on every connection: it writes a reply's
    headers and body separately, and without it a keep-alive client waits for the
    delayed ACK (~40 ms) on every request (about 450 requests/s instead of thousands)."""

    def handle(self, sock, address):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().handle(sock, address)


def make_server(app: bottle.Bottle, config: Config) -> Server:
    return Server((config.http_host, config.http_port), Guard(app, config),
                  log=logging.getLogger("coyotes.access") if config.debug else None,
                  error_log=logging.getLogger("coyotes.api"))

