"""The Redis client the daemon builds (``connection.connect``) and its lean round
trips, under gevent.

Each test's body is a function in child_connection.py, run in a child Python that
monkey-patches gevent as the daemon does, so the test process itself is never
patched.
"""

from __future__ import annotations

import json

import child_connection as child
import pytest
import redis
from gevent_child import call

from coyotes_lib.broker import Broker, flat
from coyotes_lib.connection import connect
from coyotes_lib.keys import Keys
from coyotes_lib.task import build


def test_pooled_connection_check_is_immediate_and_still_sees_leftovers(redis_server):
    """redis-py checks a pooled connection for unread data before each command;
    ours answers without a turn of the hub, and still sees a pending reply and a
    connection the server closed."""
    result = call(child.pooled_connection_check, redis_server.port)
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
    result = call(child.round_trip_errors_and_kills, redis_server.port)
    assert result["replies"] == ["OK", "ResponseError", "1"]
    assert result["loading"] == "BusyLoadingError"
    assert result["after_loading"] == ["mine"]   # not the PING left unread
    # the killed BLPOP's connection was closed: its reply is not the next caller's,
    # and the value it waited for is still there
    assert result["next"] == ["PONG", ["v"]]
    assert result["blocked"] == 0
    assert result["big"] == ["OK", 32 << 20]   # sent whole, though not in one send()
    # a connection the server closed mid-call is redis-py's ConnectionError, and is
    # not used again
    assert result["closed"] == "ConnectionError" and result["after_close"] == ["again"]


def test_round_trip_connections_are_reused_and_survive_the_server_closing_them(redis_server):
    """The per-task path keeps its connections between calls instead of taking
    them from the pool: as many as ran at once, each reused afterwards; one that
    the server closed in between (Redis restarted, or a CLIENT KILL) is noticed
    when taken again, and the call goes through on a new connection instead of
    failing."""
    result = call(child.round_trip_connection_reuse, redis_server.port)
    assert result["after_concurrent"] == 4   # one each while they ran together
    assert result["ids"] == 1                # one at a time: the same one, again and again
    assert result["echo"] == ["after"]       # not a ConnectionError
    assert result["new_id"] != result["killed"] and result["spare"] == 4
    assert result["kept"] is True and result["ping"] == ["PONG"]
    assert result["child"] == 0   # the child's list was empty


def test_pipelined_script_calls_survive_a_script_cache_flush(redis_server):
    """After Redis lost its scripts (a restart), a pipelined call that gets NOSCRIPT
    loads its script and runs again, once: the task is queued exactly once."""
    result = call(child.pushes_around_a_script_flush, redis_server.port)
    assert result["first"] == [1] and result["again"] == [1, 1]
    assert [json.loads(raw)["task"] for raw in result["queued"]] == ["true 3", "true 2",
                                                                     "true 1"]


def test_a_claim_survives_a_script_cache_flush(redis_server):
    """After Redis lost its scripts, a claim's NOSCRIPT reply makes it run again by
    itself: the task is claimed and started once."""
    result = call(child.claim_after_a_script_flush, redis_server.port)
    [(raw, task_id, started)] = result["claims"]
    assert task_id == result["id"] and started[0] == 1   # started by CLAIM, attempt 1
    assert result["attempt"] == "1"                        # once
    assert result["processing"] == [raw]


def test_wake_up_messages_name_the_queue_that_got_a_task(redis_server):
    """Channels hold no connection while idle: one subscription per node hears which
    queue got a task, as soon as it is pushed; a claim publishes nothing; a
    subscription whose connection dies says so (the node then subscribes again and
    scans the queues)."""
    result = call(child.wake_ups, redis_server.port)
    assert result["quiet"] == [] and result["after_claim"] == []
    assert result["heard"] == ["default:tasks:queue\nn1"]   # the queue, and who queued
    assert result["waited"] < 4   # the message came with the push, not after the timeout
    assert result["claimed"] == [result["id"]] and result["waiting"] == []
    assert result["killed"] == "error"


def test_a_push_that_claims_for_its_channel_wakes_nobody_unless_it_leaves_entries(
        redis_server):
    """The routing loop's pushes for an idle channel claim in the same round trip: no
    node is woken for entries that claim takes (this one was about to run them), and
    the other nodes hear of the queue as soon as the claim leaves some behind."""
    result = call(child.loan_wake_ups, redis_server.port)
    # one task, all its channel holds: ROUTE starts it straight away, waking nobody
    assert result["alone"][0] == [1] and len(result["alone"][1]) == 1
    assert result["heard_alone"] == [] and result["alone_status"] == "running"
    assert result["processing"] == result["alone"][1]
    assert result["taken"][0] == [1, 1] and len(result["taken"][1]) == 2
    assert result["heard_taken"] == []
    assert result["left"][0] == [1, 1, 1] and len(result["left"][1]) == 2
    assert result["heard_left"] == ["default:tasks:queue\nn1"]   # once, from the claim
    assert result["queued"] == 1
    # a claim key of another type: the push is made all the same, the claim says why not
    refused = "WRONGTYPE task:node:n1:processing:default holds a string, not a list"
    assert result["broken"] == [[1], refused]
    assert result["queued_after"] == 2


def test_packer_matches_redis_py_for_every_kind_of_argument(redis_server):
    """The fast path hands one-word commands to hiredis as they are; what it sends
    must be what redis-py's own packers send, and a value that is not UTF-8 (held
    as surrogate escapes) must still reach Redis byte for byte."""
    result = call(child.packed_like_redis_py, redis_server.port)
    assert result["same"] == [True] * 6
    assert bytes(result["value"]) == b"caf\xe9"


@pytest.mark.parametrize("extra, execute_at", [
    ({}, None), ({"timeout": 5, "retries": 2}, None), ({"retries": 0}, 1_900_000_000.5)])
def test_a_push_records_the_fields_flat_would_give(extra, execute_at):
    """The push path builds ENQUEUE's record fields itself; they are flat()'s."""
    broker = Broker(connect("127.0.0.1", 1), Keys(), "n1")   # nothing is sent
    task = build("c", "php artisan 'a b'", extra=extra, execute_at=execute_at)
    record = {"id": task.id, "channel": task.channel, "task_name": task.name,
              "argv": list(task.argv), "raw": task.raw, "attempt": 0, "retry_count": 0,
              "execute_at": execute_at, "timeout": extra.get("timeout"),
              "retries": extra.get("retries")}
    assert broker._enqueue_args(task, True, "")[1][7:] == flat(record)


@pytest.mark.parametrize("most", [1, 100])
def test_taking_from_a_prepare_queue_of_another_type_raises(redis_server, most):
    """With or without the TAKE behind the blocking move, Redis's refusal is raised."""
    broker = Broker(connect("127.0.0.1", redis_server.port), Keys(), "n1")
    broker.redis.set(broker.keys.prepare, "not a list")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        broker.take_prepared(most, timeout=0.1)
    broker.redis.delete(broker.keys.prepare)
    broker.redis.lpush(broker.keys.prepare, "a", "b")
    assert broker.take_prepared(most, timeout=0.1) == (["a"] if most == 1 else ["a", "b"])
