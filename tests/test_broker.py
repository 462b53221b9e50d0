"""The Redis client the daemon builds (``connection.connect``) and its lean round
trips, under gevent.

It runs in a child Python that monkey-patches gevent as the daemon does, so
the test process itself is never patched.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from conftest import ROOT


def run_patched(script: str, port: int) -> dict:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script), str(port)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_pooled_connection_check_is_immediate_and_still_sees_leftovers(redis_server):
    """redis-py checks a pooled connection for unread data before each command;
    ours answers without a turn of the hub, and still sees a pending reply and a
    connection the server closed."""
    result = run_patched("""
        from gevent import monkey; monkey.patch_all()
        import json, sys, time, gevent, redis
        from coyotes_lib.connection import connect
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
    """, redis_server.port)
    assert result["idle"] is False and result["yielded"] is False
    assert result["pending"] is True and result["reply"] == "PONG"
    assert result["after"] is False
    assert result["closed"] in (True, "error")
    assert result["ping"] is True   # the pool replaces what it cannot use


def test_round_trip_keeps_error_replies_in_place_and_never_reuses_a_half_read_connection(
        redis_server):
    """The per-task path sends its commands together on one connection: an error
    reply takes its place among the others. A reply that redis-py reads as a
    connection error (LOADING, say) with more replies behind it, or a caller killed
    while waiting, never leaves that connection, replies unread, to the next caller."""
    result = run_patched("""
        from gevent import monkey; monkey.patch_all()
        import json, sys, gevent, redis
        from coyotes_lib.connection import Lean, connect
        client = connect("127.0.0.1", int(sys.argv[1]))
        lean = Lean(client)
        replies = lean.round_trip([("SET", "k", "1"), ("LPUSH", "k", "x"), ("GET", "k")])
        try:
            lean.round_trip([("EVAL", "return redis.error_reply('LOADING x')", 0),
                                ("PING",)])
            loading = "no error"
        except redis.ConnectionError as exc:
            loading = type(exc).__name__
        after_loading = lean.round_trip([("ECHO", "mine")])
        waiting = gevent.spawn(lean.round_trip, [("BLPOP", "later", 5)])
        while client.info("clients")["blocked_clients"] == 0:   # it waits in redis
            gevent.sleep(0.01)
        waiting.kill()
        client.lpush("later", "v")
        print(json.dumps({
            "replies": [r if isinstance(r, str) else type(r).__name__ for r in replies],
            "loading": loading, "after_loading": after_loading,
            "next": lean.round_trip([("PING",), ("LRANGE", "later", 0, -1)]),
            "blocked": client.info("clients")["blocked_clients"]}))
    """, redis_server.port)
    assert result["replies"] == ["OK", "ResponseError", "1"]
    assert result["loading"] == "BusyLoadingError"
    assert result["after_loading"] == ["mine"]   # not the PING left unread
    # the killed BLPOP's connection was closed: its reply is not the next caller's,
    # and the value it waited for is still there
    assert result["next"] == ["PONG", ["v"]]
    assert result["blocked"] == 0


def test_round_trip_connections_are_reused_and_survive_the_server_closing_them(redis_server):
    """The per-task path keeps its connections between calls instead of taking
    them from the pool: as many as ran at once, each reused afterwards; one that
    the server closed in between (Redis restarted, or a CLIENT KILL) is noticed
    when taken again, and the call goes through on a new connection instead of
    failing."""
    result = run_patched("""
        from gevent import monkey; monkey.patch_all()
        import json, os, select, sys, time, gevent, redis
        from gevent.monkey import get_original
        from coyotes_lib.connection import RAW_POLL, Lean, connect
        client = connect("127.0.0.1", int(sys.argv[1]))
        lean = Lean(client)
        waits = [gevent.spawn(lean.round_trip, [("BLPOP", f"q{i}", 0.2)]) for i in range(4)]
        gevent.joinall(waits, raise_error=True)
        after_concurrent = len(lean.spare)
        ids = {lean.round_trip([("CLIENT", "ID")])[0] for _ in range(20)}

        def close_spare():   # the server closes it: (it, its id) once our socket saw it
            conn = lean.spare[-1]
            conn_id = lean.round_trip([("CLIENT", "ID")])[0]
            client.execute_command("CLIENT", "KILL", "ID", conn_id)
            poller = RAW_POLL()
            poller.register(conn._sock, select.POLLIN)
            deadline = time.monotonic() + 10
            while not poller.poll(0) and time.monotonic() < deadline:
                gevent.sleep(0.01)
            return conn, conn_id

        conn, killed = close_spare()
        echo = lean.round_trip([("ECHO", "after")])
        new_id = lean.round_trip([("CLIENT", "ID")])[0]
        # killed while it checks a connection the server closed (that check yields):
        # the connection still goes back to the list
        conn, _ = close_spare()
        caller = gevent.spawn(lean.round_trip, [("PING",)])
        gevent.sleep(0)
        caller.kill()
        kept = conn in lean.spare
        # a forked child starts without them: it must not share the parent's sockets
        # (the plain fork and waitpid: gevent's may miss a child that exits at once)
        pid = get_original("os", "fork")()
        if pid == 0:
            os._exit(len(lean.spare))
        child = os.waitstatus_to_exitcode(get_original("os", "waitpid")(pid, 0)[1])
        print(json.dumps({"after_concurrent": after_concurrent, "ids": len(ids),
                          "echo": echo, "new_id": new_id, "killed": killed,
                          "spare": len(lean.spare), "kept": kept, "child": child,
                          "ping": lean.round_trip([("PING",)])}))
    """, redis_server.port)
    assert result["after_concurrent"] == 4   # one each while they ran together
    assert result["ids"] == 1                # one at a time: the same one, again and again
    assert result["echo"] == ["after"]       # not a ConnectionError
    assert result["new_id"] != result["killed"] and result["spare"] == 4
    assert result["kept"] is True and result["ping"] == ["PONG"]
    assert result["child"] == 0   # the child's list was empty


def test_pipelined_script_calls_survive_a_script_cache_flush(redis_server):
    """After Redis lost its scripts (a restart), a pipelined call that gets NOSCRIPT
    loads its script and runs again, once: the task is queued exactly once."""
    result = run_patched("""
        from gevent import monkey; monkey.patch_all()
        import json, sys
        from coyotes_lib.broker import Broker
        from coyotes_lib.connection import connect
        from coyotes_lib.keys import Keys
        from coyotes_lib.task import from_producer
        client = connect("127.0.0.1", int(sys.argv[1]))
        broker = Broker(client, Keys(), "n1")
        broker.load_scripts()
        first = broker.push_many([(from_producer('{"task": "true 1"}', "default"), False, "")])
        client.script_flush()
        again = broker.push_many([(from_producer('{"task": "true 2"}', "default"), False, ""),
                                  (from_producer('{"task": "true 3"}', "default"), False, "")])
        print(json.dumps({"first": first, "again": again,
                          "queued": client.lrange("default:tasks:queue", 0, -1)}))
    """, redis_server.port)
    assert result["first"] == [1] and result["again"] == [1, 1]
    assert [json.loads(raw)["task"] for raw in result["queued"]] == ["true 3", "true 2",
                                                                     "true 1"]


def test_idle_claim_survives_a_script_cache_flush(redis_server):
    """The idle claim (a blocking BLMOVE with the start script behind it in one round
    trip): after a script-cache flush, the start script's NOSCRIPT reply makes it run
    again by itself, and the task moved is claimed and started once."""
    result = run_patched("""
        from gevent import monkey; monkey.patch_all()
        import json, sys, gevent
        from coyotes_lib.broker import Broker
        from coyotes_lib.connection import connect
        from coyotes_lib.keys import Keys
        from coyotes_lib.task import from_producer
        client = connect("127.0.0.1", int(sys.argv[1]))
        broker = Broker(client, Keys(), "n1")
        broker.load_scripts()
        client.script_flush()
        task = from_producer('{"task": "true 1"}', "default")
        later = gevent.spawn_later(0.3, broker.push_many, [(task, False, "")])
        claims = broker.claim("default", timeout=5)
        later.join()
        print(json.dumps({"pushed": later.value, "id": task.id,
                          "claims": [[c.raw, c.task_id, c.started] for c in claims],
                          "attempt": client.hget(broker.keys.record(task.id), "attempt"),
                          "processing": client.lrange(broker.keys.processing("n1", "default"),
                                                      0, -1)}))
    """, redis_server.port)
    assert result["pushed"] == [1]
    [(raw, task_id, started)] = result["claims"]
    assert task_id == result["id"] and started[0] == 1   # started by START_NEWEST, attempt 1
    assert result["attempt"] == "1"                        # once
    assert result["processing"] == [raw]


def test_packer_matches_redis_py_for_every_kind_of_argument(redis_server):
    """The fast path hands one-word commands to hiredis as they are; what it sends
    must be what redis-py's own packers send, and a value that is not UTF-8 (held
    as surrogate escapes) must still reach Redis byte for byte."""
    result = run_patched("""
        import json, sys
        from redis.connection import Encoder, HiredisRespSerializer, PythonRespSerializer
        from coyotes_lib.connection import Packer, connect
        packer = Packer()
        cases = [("EVALSHA", "a" * 40, 2, "k1", "k2", 1.5, -3, b"raw", "\\u4e2d\\u6587"),
                 ("CLIENT SETNAME", "x"), (b"GET", "k"), ("SET", "k", bytearray(b"ab")),
                 ("SET", "k", memoryview(b"cd")), ("SET", "k\\udcff", "v")]
        python = PythonRespSerializer(6000, Encoder("utf-8", "surrogateescape", True).encode)
        same = []
        for args in cases:
            ours = b"".join(packer.pack(*args))
            try:
                theirs = b"".join(HiredisRespSerializer().pack(*args))
            except UnicodeEncodeError:
                theirs = b"".join(python.pack(*args))
            same.append(ours == theirs)
        client = connect("127.0.0.1", int(sys.argv[1]))
        client.set("bin", "caf\\udce9")
        raw = client.connection_pool.get_connection()
        raw.send_command("GET", "bin")
        print(json.dumps({"same": same, "value": list(raw.read_response(disable_decoding=True))}))
    """, redis_server.port)
    assert result["same"] == [True] * 6
    assert bytes(result["value"]) == b"caf\xe9"
