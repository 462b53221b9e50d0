"""The Redis client the daemon builds (``broker.connect``), under gevent.

It runs in a child Python that monkey-patches gevent as the daemon does, so
the test process itself is never patched.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from conftest import ROOT


def test_pooled_connection_check_is_immediate_and_still_sees_leftovers(redis_server):
    """redis-py checks a pooled connection for unread data before each command;
    ours answers without a turn of the hub, and still sees a pending reply and a
    connection the server closed."""
    script = textwrap.dedent("""
        from gevent import monkey; monkey.patch_all()
        import json, sys, time, gevent, redis
        from coyotes_lib.broker import connect
        client = connect("127.0.0.1", int(sys.argv[1]))
        conn = client.connection_pool.get_connection()
        conn.send_command("PING"); conn.read_response()
        def readable(deadline=10.0):
            # can_read(), once it says yes or the deadline passed (or its error)
            end = time.monotonic() + deadline
            while True:
                try:
                    if conn.can_read() or time.monotonic() > end:
                        return conn.can_read()
                except redis.ConnectionError:
                    return "error"
                gevent.sleep(0.01)
        other = []
        gevent.spawn(other.append, 1)   # runs only if the check yields to the hub
        idle = conn.can_read()
        yielded = bool(other)
        conn.send_command("PING")
        pending = readable()            # the reply arrives, unread
        reply = conn.read_response()
        after = conn.can_read()
        conn.send_command("CLIENT", "ID")
        client.execute_command("CLIENT", "KILL", "ID", conn.read_response())
        closed = readable()
        print(json.dumps({"idle": idle, "yielded": yielded, "pending": pending,
                          "reply": reply, "after": after, "closed": closed,
                          "ping": client.ping()}))
    """)
    out = subprocess.run([sys.executable, "-c", script, str(redis_server.port)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["idle"] is False and result["yielded"] is False
    assert result["pending"] is True and result["reply"] == "PONG"
    assert result["after"] is False
    assert result["closed"] in (True, "error")
    assert result["ping"] is True   # the pool replaces what it cannot use
