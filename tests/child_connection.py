"""The bodies of tests/test_broker.py: each takes a redis-server's port, runs under
gevent in a child Python (``gevent_child.call``) and returns what its test checks.
"""

from __future__ import annotations

import json
import os
import select
import time

import gevent
import redis
from gevent.monkey import get_original
from harness import wait_until
from redis.connection import Encoder, HiredisRespSerializer, PythonRespSerializer

from coyotes_lib.broker import Broker
from coyotes_lib.connection import RAW_POLL, Lean, Packer, connect
from coyotes_lib.keys import Keys
from coyotes_lib.model import ChannelSpec
from coyotes_lib.task import from_producer


def readable(conn, deadline: float = 10.0):
    """``conn.can_read()`` once it says yes or the deadline passed (or "error")."""
    end = time.monotonic() + deadline
    while True:
        try:
            if conn.can_read() or time.monotonic() > end:
                return conn.can_read()
        except redis.ConnectionError:
            return "error"
        gevent.sleep(0.01)


def pooled_connection_check(port: int) -> dict:
    client = connect("127.0.0.1", port)
    conn = client.connection_pool.get_connection()
    conn.send_command("PING")
    conn.read_response()
    other = []
    gevent.spawn(other.append, 1)   # runs only if the check yields to the hub
    idle = conn.can_read()
    yielded = bool(other)
    conn.send_command("PING")
    pending = readable(conn)        # the reply arrives, unread
    reply = conn.read_response()
    after = conn.can_read()
    conn.send_command("CLIENT", "ID")
    client.execute_command("CLIENT", "KILL", "ID", conn.read_response())
    closed = readable(conn)
    return {"idle": idle, "yielded": yielded, "pending": pending, "reply": reply,
            "after": after, "closed": closed, "ping": client.ping()}


def round_trip_errors_and_kills(port: int) -> dict:
    client = connect("127.0.0.1", port)
    lean = Lean(client)
    replies = lean.round_trip([("SET", "k", "1"), ("LPUSH", "k", "x"), ("GET", "k")])
    try:
        lean.round_trip([("EVAL", "return redis.error_reply('LOADING x')", 0), ("PING",)])
        loading = "no error"
    except redis.ConnectionError as exc:
        loading = type(exc).__name__
    after_loading = lean.round_trip([("ECHO", "mine")])
    waiting = gevent.spawn(lean.round_trip, [("BLPOP", "later", 5)])
    wait_until(lambda: client.info("clients")["blocked_clients"], 10, 0.01,
               "the BLPOP to wait in redis")
    waiting.kill()
    client.lpush("later", "v")
    next_replies = lean.round_trip([("PING",), ("LRANGE", "later", 0, -1)])
    # more than the socket takes at once: one send, then the rest
    big = lean.round_trip([("SET", "big", "x" * (32 << 20)), ("STRLEN", "big")])
    # the server closes the connection while a call waits on it
    waiting = gevent.spawn(lean.round_trip, [("CLIENT", "ID"), ("BLPOP", "never", 5)])
    wait_until(lambda: client.info("clients")["blocked_clients"], 10, 0.01,
               "the BLPOP to wait in redis")
    [victim] = [c["id"] for c in client.client_list() if c["cmd"] == "blpop"]
    client.execute_command("CLIENT", "KILL", "ID", victim)
    waiting.join(10)
    return {"replies": [r if isinstance(r, str) else type(r).__name__ for r in replies],
            "loading": loading, "after_loading": after_loading, "next": next_replies,
            "blocked": client.info("clients")["blocked_clients"], "big": big,
            "closed": type(waiting.exception).__name__, "after_close": lean.round_trip(
                [("ECHO", "again")])}


def close_spare(client, lean):
    """The server closes the newest spare connection: (it, its id) once our socket saw it."""
    conn = lean.spare[-1]
    conn_id = lean.round_trip([("CLIENT", "ID")])[0]
    client.execute_command("CLIENT", "KILL", "ID", conn_id)
    poller = RAW_POLL()
    poller.register(conn._sock, select.POLLIN)
    wait_until(lambda: poller.poll(0), 10, 0.01, "our socket to see the close")
    return conn, conn_id


def round_trip_connection_reuse(port: int) -> dict:
    client = connect("127.0.0.1", port)
    lean = Lean(client)
    waits = [gevent.spawn(lean.round_trip, [("BLPOP", f"q{i}", 0.2)]) for i in range(4)]
    gevent.joinall(waits, raise_error=True)
    after_concurrent = len(lean.spare)
    ids = {lean.round_trip([("CLIENT", "ID")])[0] for _ in range(20)}
    conn, killed = close_spare(client, lean)
    echo = lean.round_trip([("ECHO", "after")])
    new_id = lean.round_trip([("CLIENT", "ID")])[0]
    # killed while it checks a connection the server closed (that check yields):
    # the connection still goes back to the list
    conn, _ = close_spare(client, lean)
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
    return {"after_concurrent": after_concurrent, "ids": len(ids), "echo": echo,
            "new_id": new_id, "killed": killed, "spare": len(lean.spare), "kept": kept,
            "child": child, "ping": lean.round_trip([("PING",)])}


def broker(port: int):
    """A client and a broker (node n1) with its scripts loaded, and channel default."""
    client = connect("127.0.0.1", port)
    ours = Broker(client, Keys(), "n1")
    ours.load_scripts()
    ours.add_channel(ChannelSpec("default", False, 5))
    return client, ours


def pushes_around_a_script_flush(port: int) -> dict:
    client, ours = broker(port)
    first = ours.push_many([(from_producer('{"task": "true 1"}', "default"), False, "")])
    client.script_flush()
    again = ours.push_many([(from_producer('{"task": "true 2"}', "default"), False, ""),
                            (from_producer('{"task": "true 3"}', "default"), False, "")])
    return {"first": first, "again": again,
            "queued": client.lrange("default:tasks:queue", 0, -1)}


def wake_ups(port: int) -> dict:
    """A wake-up subscription: what a push, a claim and a kill of its connection do."""
    client, ours = broker(port)
    sub = ours.wakeups()
    quiet = sub.messages(0.2)                      # nothing pushed yet
    task = from_producer('{"task": "true 1"}', "default")
    later = gevent.spawn_later(0.2, ours.push_many, [(task, False, "")])
    t0 = time.monotonic()
    heard = sub.messages(5)
    waited = time.monotonic() - t0
    later.join()
    claims = ours.claim("default", most=5)
    after_claim = sub.messages(0.2)               # a claim takes entries: no message
    waiting = ours.waiting([ours.keys.queue("biz"), ours.keys.queue("default")])   # none left
    client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    try:
        for _ in range(50):
            sub.messages(0.1)
        killed = "no error"
    except redis.ConnectionError:
        killed = "error"
    return {"quiet": quiet, "heard": heard, "waited": waited, "after_claim": after_claim,
            "claimed": [c.task_id for c in claims], "id": task.id, "waiting": waiting,
            "killed": killed}


def loan_wake_ups(port: int) -> dict:
    """Pushes that claim for their channel in the same round trip (the routing loop's
    loan): what the wake-up subscription hears when the claim takes them all, and
    when it leaves some behind."""
    client, ours = broker(port)
    sub = ours.wakeups()

    def heard() -> list[str]:
        """What the subscription got so far: every message published before a marker
        of our own has arrived by the time the marker does (one Redis, in order)."""
        client.publish(ours.keys.wake, "marker")
        got, deadline = [], time.monotonic() + 10
        while "marker" not in got and time.monotonic() < deadline:
            got += sub.messages(0.5)
        return got[:got.index("marker")] if "marker" in got else got

    def push(count: int, most: int) -> tuple[list, list]:
        pushes = [(from_producer(f'{{"task": "true {i}"}}', "default"), False, "")
                  for i in range(count)]
        outcomes, claimed = ours.push_claiming(pushes, {"default": (most, 0)})
        return [int(o) for o in outcomes], [c.task_id for c in claimed["default"]]

    alone = push(1, most=3)   # all the channel holds: started straight away
    heard_alone = heard()
    alone_status = client.hget(ours.keys.record(alone[1][0]), "status")
    processing = client.lrange(ours.keys.processing("n1", "default"), 0, -1)
    taken = push(2, most=3)
    heard_taken = heard()
    left = push(3, most=2)
    heard_left = heard()
    queued = client.llen(ours.keys.queue("default"))
    # a claim key of another type: the push is made all the same, the claim says why not
    client.delete(ours.keys.processing("n1", "default"))
    client.set(ours.keys.processing("n1", "default"), "x")
    outcomes, claimed = ours.push_claiming(
        [(from_producer('{"task": "true 9"}', "default"), False, "")], {"default": (1, 0)})
    return {"alone": alone, "heard_alone": heard_alone, "alone_status": alone_status,
            "processing": [json.loads(raw)["id"] for raw in processing],
            "taken": taken, "heard_taken": heard_taken, "left": left,
            "heard_left": heard_left, "queued": queued,
            "broken": ([int(o) for o in outcomes], str(claimed["default"])),
            "queued_after": client.llen(ours.keys.queue("default"))}


def claim_after_a_script_flush(port: int) -> dict:
    client, ours = broker(port)
    task = from_producer('{"task": "true 1"}', "default")
    ours.push_many([(task, False, "")])
    client.script_flush()
    claims = ours.claim("default", most=5)
    return {"id": task.id, "claims": [[c.raw, c.task_id, c.started] for c in claims],
            "attempt": client.hget(ours.keys.record(task.id), "attempt"),
            "processing": client.lrange(ours.keys.processing("n1", "default"), 0, -1)}


def packed_like_redis_py(port: int) -> dict:
    packer = Packer()
    cases = [("EVALSHA", "a" * 40, 2, "k1", "k2", 1.5, -3, b"raw", "\u4e2d\u6587"),
             ("CLIENT SETNAME", "x"), (b"GET", "k"), ("SET", "k", bytearray(b"ab")),
             ("SET", "k", memoryview(b"cd")), ("SET", "k\udcff", "v")]
    python = PythonRespSerializer(6000, Encoder("utf-8", "surrogateescape", True).encode)
    same = []
    for args in cases:
        ours = b"".join(packer.pack(*args))
        # redis-py before 8 refuses a bytearray or memoryview: we send their bytes
        plain = tuple(bytes(arg) if isinstance(arg, (bytearray, memoryview)) else arg
                      for arg in args)
        try:
            theirs = b"".join(HiredisRespSerializer().pack(*plain))
        except UnicodeEncodeError:
            theirs = b"".join(python.pack(*plain))
        same.append(ours == theirs)
    client = connect("127.0.0.1", port)
    client.set("bin", "caf\udce9")
    raw = client.connection_pool.get_connection()
    raw.send_command("GET", "bin")
    return {"same": same, "value": list(raw.read_response(disable_decoding=True))}
