"""Baseline for the HTTP and memory figures: a trivial gevent.pywsgi app.

It imports what the daemon imports (gevent, redis, bottle) so that its idle
RSS is the floor any gevent + redis-py + bottle process starts from, but it
answers every request with a fixed envelope and touches nothing else.

    python bench/hello.py PORT [--nodelay]

``--nodelay`` sets TCP_NODELAY on the listening socket (accepted sockets inherit
it on Linux). pywsgi sends a reply's headers and body in two writes, so on a
keep-alive connection without it the body waits for the client's delayed ACK
(about 40 ms): the stock app shows what any pywsgi server gets, the other what
the machine allows.
"""

from gevent import monkey

monkey.patch_all()

import socket
import sys

import bottle  # noqa: F401  (imported for a like-for-like idle RSS)
import redis  # noqa: F401
from gevent import pywsgi

BODY = b'{"status_code": 200, "message": "ok", "data": {"task_id": "x", "result": true}}'


def app(environ, start_response):
    environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "application/json; charset=utf-8"),
                              ("Content-Length", str(len(BODY)))])
    return [BODY]


if __name__ == "__main__":
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if "--nodelay" in sys.argv[2:]:
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.bind(("127.0.0.1", int(sys.argv[1])))
    listener.listen(1024)
    pywsgi.WSGIServer(listener, app, log=None).serve_forever()
