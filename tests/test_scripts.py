"""Each Lua script of ``coyotes_lib.scripts`` against a real redis-server.

No daemon and no ``Broker``: every script's text is registered on a plain
redis-py client and called with the keys ``broker.py`` gives it (names from
``Keys``) and its arguments. Each test checks a return code and every key the
script leaves (values, scores, TTLs). Each ``test_<script>_refuses_...`` makes
every key the script writes a string in turn and checks that the script answers
with an error reply naming that key and that Redis is exactly as before: Redis
does not roll back a script that fails half-way, so that promise (see the
docstring of ``scripts.py``) is what keeps a broken key from losing a task.

One private redis-server serves the whole module and is flushed before each
test, then holds the declared channels (``CHANNELS`` in ``task:channels``):
ENQUEUE, REQUEUE, REAP, PROMOTE and UNFAIL (retrying) treat a channel missing
there as deleted (``GONE`` is never declared). Times come from Redis's clock
(``TIME``) inside the scripts, so they are compared with Redis's clock too, with
a margin.

Each channel has two lists of waiting entries: its queue and its high queue
(``K.queue_high``: the queue's key followed by ``K.high``), whose entries (JSON
with ``"priority": "high"``, see ``high_entry``) are claimed first. ENQUEUE,
PROMOTE and REQUEUE are given the high queue as their queue for such an entry;
CLAIM, REAP, CANCEL, UNFAIL, WAITING, COUNTS and DELETE_CHANNEL know both.
"""

from __future__ import annotations

import json

import pytest
import redis

from coyotes_lib import scripts
from coyotes_lib.keys import Keys

K = Keys()
CHAN = "c"
GONE = "gone"   # a channel that is not (or no longer) in task:channels
NODE, OTHER = "n1", "n2"
NAME = "echo hi"
FLAG = K.distinct(CHAN, NAME)
FINAL = ["succeeded", "failed", "timed_out", "canceled", "killed"]
MARGIN = 2.0   # seconds of slack around a time a script took from TIME
TTL = 600      # the record TTL the scripts are given
MOST = 10      # the most dead letters kept, unless a test says
CHANNELS = {chan: json.dumps({"name": chan}) for chan in (CHAN, "a", "b", "x", "y", "other")}


def declare(db: redis.Redis) -> None:
    db.hset(K.channels, mapping=CHANNELS)


def reset(db: redis.Redis) -> None:
    """An empty server again, but for the declared channels."""
    db.flushdb()
    declare(db)


@pytest.fixture
def db(module_redis) -> redis.Redis:
    client = module_redis.client()
    reset(client)   # our own server: no other test's keys
    yield client
    client.close()


@pytest.fixture
def heard(module_redis):
    """The wake-up messages published from now on: call it to read them so far."""
    client = module_redis.client()
    sub = client.pubsub(ignore_subscribe_messages=True)
    sub.subscribe(K.wake)
    sub.get_message(timeout=5)   # the subscription's confirmation

    def read() -> list[str]:
        out = []
        while (message := sub.get_message(timeout=0.2)) is not None:
            out.append(message["data"])
        return out

    yield read
    sub.close()
    client.close()


# -- helpers -----------------------------------------------------------------
def entry(task_id: str, chan: str = CHAN, task: str = NAME, **more) -> str:
    """A task entry as the daemon queues it (JSON with its id)."""
    return json.dumps({"id": task_id, "channel": chan, "task": task, **more})


def high_entry(task_id: str, chan: str = CHAN, task: str = NAME, **more) -> str:
    """A task entry of high priority (it waits in its channel's high queue)."""
    return entry(task_id, chan, task, priority="high", **more)


def run(db: redis.Redis, name: str, keys, args=()):
    """Call scripts.<name> as broker.py does, but with plain redis-py."""
    return db.register_script(getattr(scripts, name))(keys=list(keys), args=list(args))


def pairs(fields: dict) -> list:
    return [item for pair in fields.items() for item in pair]


def now(db: redis.Redis) -> float:
    seconds, micros = db.time()
    return seconds + micros / 1e6


def between(value, low: float, high: float) -> None:
    assert low - MARGIN <= float(value) <= high + MARGIN, (value, low, high)


def value(db: redis.Redis, key: str):
    """str, list, set, [(member, score)] or dict, by the key's type."""
    kind = db.type(key)
    if kind == "string":
        return db.get(key)
    if kind == "list":
        return db.lrange(key, 0, -1)
    if kind == "set":
        return db.smembers(key)
    if kind == "zset":
        return [(member, score) for member, score in db.zrange(key, 0, -1, withscores=True)]
    if kind == "hash":
        return db.hgetall(key)
    raise AssertionError(f"{key}: unexpected type {kind}")


def state(db: redis.Redis) -> dict:
    """Every key with its value (see ``value``); ``task:channels`` only when it is
    not the declared ``CHANNELS`` (most scripts only read it)."""
    out = {key: value(db, key) for key in db.keys("*")}
    if out.get(K.channels) == CHANNELS:
        del out[K.channels]
    return out


def channels_but(*names: str) -> dict:
    """The declared channels without ``names`` (deleted)."""
    return {chan: spec for chan, spec in CHANNELS.items() if chan not in names}


def letters(db: redis.Redis, t0: float, t1: float) -> list[dict]:
    """The dead-letter list (newest first), each letter parsed as JSON, its ``ts``
    (whole seconds of Redis's clock) checked and taken out."""
    out = []
    for text in db.lrange(K.dead, 0, -1):
        letter = json.loads(text)
        ts = letter.pop("ts")
        assert isinstance(ts, int), text
        between(ts, t0, t1)
        out.append(letter)
    return out


def closed(record: dict, reason: str, t0: float, t1: float) -> dict:
    """A record as a burial leaves it: its finished_at checked and taken out."""
    between(record.pop("finished_at"), t0, t1)
    assert record["status"] == "canceled" and record["error"] == reason, record
    return record


def gone(chan: str = GONE) -> str:
    return f"channel {chan} was deleted"


def dump(db: redis.Redis) -> dict:
    """Every key with its type, value and TTL in ms (None: no TTL)."""
    out = {}
    for key in db.keys("*"):
        pttl = db.pttl(key)
        out[key] = (db.type(key), value(db, key), None if pttl < 0 else pttl)
    return out


def assert_unchanged(before: dict, after: dict) -> None:
    """Two dumps agree: the same keys, types and values, TTLs within a second."""
    assert {k: v[:2] for k, v in after.items()} == {k: v[:2] for k, v in before.items()}
    for key, (_, _, ttl) in before.items():
        later = after[key][2]
        assert (ttl is None) == (later is None), key
        if ttl is not None:
            assert ttl - 1000 <= later <= ttl, key


def assert_refuses(db: redis.Redis, setup, name: str, keys, args, wanted: dict) -> None:
    """After ``setup`` the script writes; with each key of ``wanted`` (key -> the type
    the script wants there) made a string in turn, it refuses with an error naming
    that key and leaves Redis exactly as it was."""
    setup()
    before = dump(db)
    run(db, name, keys, args)
    assert dump(db) != before, "the setup should have made the script write"
    for key, kind in wanted.items():
        reset(db)
        setup()
        db.set(key, "x")
        before = dump(db)
        with pytest.raises(redis.ResponseError) as err:
            run(db, name, keys, args)
        assert str(err.value) == f"WRONGTYPE {key} holds a string, not a {kind}"
        assert_unchanged(before, dump(db))


SPOILED_COUNTER = ["list", "text"]


def assert_counter_refused(db: redis.Redis, setup, name: str, keys, args, spoil: str) -> None:
    """As ``assert_refuses`` for the dead letters' trimmed counter, made a list
    (``spoil`` 'list') or a string that is not a number ('text'): a script that
    buries must refuse before its first write, not fail half-way at GET or SET."""
    reset(db)
    setup()
    if spoil == "list":
        db.rpush(K.dead_trimmed, "1")
        error = "holds a list, not a string"
    else:
        db.set(K.dead_trimmed, "many")
        error = "holds a string that is not a number"
    before = dump(db)
    with pytest.raises(redis.ResponseError) as err:
        run(db, name, keys, args)
    assert str(err.value) == f"WRONGTYPE {K.dead_trimmed} {error}"
    assert_unchanged(before, dump(db))


# -- ENQUEUE -------------------------------------------------------------------
def enqueue_call(raw: str, task_id: str, name: str = NAME, chan: str = CHAN, distinct: int = 0,
                 source: str = "", at: float = 0, wake: str = "", high: bool = False,
                 **extra) -> tuple[list, list]:
    """As ``Broker._enqueue_args``: ``high`` gives the channel's high queue as the
    queue (a task of high priority)."""
    fields = {"id": task_id, "channel": chan, "task_name": name, "raw": raw, "attempt": 0,
              "retry_count": 0, **extra}
    return ([K.queue_high(chan) if high else K.queue(chan), K.distinct(chan, name), K.delayed,
             K.staging(NODE), K.record(task_id), K.channels],
            [raw, distinct, source, at, wake, NODE, chan, *pairs(fields)])


def enqueue(db, raw, task_id, **kw):
    return run(db, "ENQUEUE", *enqueue_call(raw, task_id, **kw))


def new_record(task_id: str, raw: str, status: str) -> dict:
    return {"id": task_id, "channel": CHAN, "task_name": NAME, "raw": raw, "attempt": "0",
            "retry_count": "0", "status": status}


def test_enqueue_queues_takes_the_staged_entry_and_writes_the_record(db):
    a, b = entry("a"), entry("b")
    db.lpush(K.staging(NODE), "older", a)
    t0 = now(db)
    assert enqueue(db, a, "a", source=a, timeout=60) == 1
    assert enqueue(db, b, "b") == 1   # no source: a push over HTTP
    t1 = now(db)
    got = state(db)
    for task_id in ("a", "b"):
        between(got[K.record(task_id)].pop("queued_at"), t0, t1)
        assert db.ttl(K.record(task_id)) == -1
    assert got == {K.queue(CHAN): [b, a],   # pushed on the left, taken from the right
                   K.staging(NODE): ["older"],
                   K.record("a"): {**new_record("a", a, "queued"), "timeout": "60"},
                   K.record("b"): new_record("b", b, "queued")}


@pytest.mark.parametrize("at", [0, 4e9])
def test_enqueue_into_a_channel_not_declared_writes_nothing(db, at):
    """A channel deleted after the dispatcher read the settings (or never declared):
    code 6, before any other check, and the staged entry stays for the caller to
    dead-letter (see DEAD); not when the channels hash itself is gone."""
    raw = entry("a", chan=GONE)
    db.lpush(K.staging(NODE), raw)
    db.hset(K.record("a"), mapping={"id": "a", "status": "succeeded"})
    db.expire(K.record("a"), 100)
    before = dump(db)
    assert enqueue(db, raw, "a", chan=GONE, source=raw, distinct=1800, at=at) == 6
    assert_unchanged(before, dump(db))   # no flag, no record, no queue, still staged
    # no more than that: an id in use, a source no longer staged, answer 6 too
    db.hset(K.record("a"), "status", "running")
    db.delete(K.staging(NODE))
    before = dump(db)
    assert enqueue(db, raw, "a", chan=GONE, source=raw, at=at) == 6
    assert_unchanged(before, dump(db))
    db.delete(K.channels)
    db.hset(K.channels, "unrelated", "{}")   # every other channel deleted
    assert enqueue(db, entry("b"), "b", at=at) == 6
    assert set(state(db)) == {K.record("a"), K.channels}
    # no hash at all: the settings were lost (a flushed Redis), not the channel
    # deleted; the nodes make the default channels again, the task waits for it
    db.delete(K.channels)
    assert enqueue(db, entry("b"), "b", at=at) in (1, 2)


def test_enqueue_once_the_channel_is_declared(db):
    raw = entry("a", chan=GONE)
    db.lpush(K.staging(NODE), raw)
    db.hset(K.channels, GONE, "{}")   # any settings: the script only asks for the field
    t0 = now(db)
    assert enqueue(db, raw, "a", chan=GONE, source=raw) == 1
    got = state(db)
    between(got[K.record("a")].pop("queued_at"), t0, now(db))
    assert got == {K.channels: {**CHANNELS, GONE: "{}"}, K.queue(GONE): [raw],
                   K.record("a"): {**new_record("a", raw, "queued"), "channel": GONE}}


def test_enqueue_record_key_of_another_type_before_an_undeclared_channel(db):
    db.set(K.record("a"), "x")
    before = dump(db)
    assert enqueue(db, entry("a", chan=GONE), "a", chan=GONE) == 5
    assert_unchanged(before, dump(db))


def test_enqueue_distinct_flag_held(db):
    a, b = entry("a"), entry("b")   # the same task name
    assert enqueue(db, a, "a", distinct=1800) == 1
    assert db.get(FLAG) == "1"
    assert 1790 <= db.ttl(FLAG) <= 1800
    db.expire(FLAG, 100)   # a refusal must leave the flag's TTL alone
    db.lpush(K.staging(NODE), b)
    before = state(db)
    assert enqueue(db, b, "b", distinct=1800, source=b) == 0
    # refused: no record, and the staged entry is dropped (as the distinct rule asks)
    del before[K.staging(NODE)]
    assert state(db) == before
    assert 90 <= db.ttl(FLAG) <= 100
    # not distinct: the flag neither refuses nor changes
    assert enqueue(db, b, "b") == 1
    assert db.get(FLAG) == "1" and 90 <= db.ttl(FLAG) <= 100
    # another name has its own flag
    c = entry("c", task="echo other")
    assert enqueue(db, c, "c", name="echo other", distinct=1800) == 1
    assert 1790 <= db.ttl(K.distinct(CHAN, "echo other")) <= 1800
    # once the flag is gone the name is accepted again
    db.delete(FLAG)
    assert enqueue(db, entry("d"), "d", distinct=1800) == 1
    assert db.lrange(K.queue(CHAN), 0, -1) == [entry("d"), c, b, a]


def test_enqueue_delayed_and_due(db):
    t0 = now(db)
    later, past = entry("later"), entry("past")
    assert enqueue(db, later, "later", at=t0 + 100) == 2
    assert enqueue(db, past, "past", at=t0 - 10) == 1   # already due: queued
    t1 = now(db)
    got = state(db)
    for task_id in ("later", "past"):
        between(got[K.record(task_id)].pop("queued_at"), t0, t1)
    assert got == {K.delayed: [(later, pytest.approx(t0 + 100))],
                   K.queue(CHAN): [past],
                   K.record("later"): new_record("later", later, "delayed"),
                   K.record("past"): new_record("past", past, "queued")}


def test_enqueue_a_high_task_into_the_high_queue(db, heard):
    """Given the high queue as its queue (as broker.py does for a high task), ENQUEUE
    queues there as into the queue, and its wake-up message names the high queue;
    a high task not due yet waits in the delayed set like any other."""
    a, b, later = high_entry("a"), high_entry("b"), high_entry("later")
    db.lpush(K.queue(CHAN), "normal")
    db.lpush(K.staging(NODE), a)
    t0 = now(db)
    assert enqueue(db, a, "a", source=a, high=True, wake=K.wake) == 1
    assert enqueue(db, b, "b", high=True, distinct=1800) == 1
    assert enqueue(db, later, "later", high=True, at=t0 + 100, wake=K.wake) == 2
    t1 = now(db)
    assert heard() == [f"{K.queue_high(CHAN)}\n{NODE}"]   # a only: b told nobody, later waits
    got = state(db)
    for task_id in ("a", "b", "later"):
        between(got[K.record(task_id)].pop("queued_at"), t0, t1)
    assert got == {K.queue_high(CHAN): [b, a], K.queue(CHAN): ["normal"],
                   K.delayed: [(later, pytest.approx(t0 + 100))], FLAG: "1",
                   K.record("a"): new_record("a", a, "queued"),
                   K.record("b"): new_record("b", b, "queued"),
                   K.record("later"): new_record("later", later, "delayed")}
    # the distinct rule holds across both queues: one flag per name
    assert enqueue(db, entry("c"), "c", distinct=1800) == 0
    assert enqueue(db, high_entry("d"), "d", high=True, distinct=1800) == 0


@pytest.mark.parametrize("record", [
    {"status": "queued"}, {"status": "delayed"}, {"status": "running"},
    {"status": "not-a-status"},                    # not final either
    {"status": "failed", "parked": "1"},           # kept in the failed list
])
def test_enqueue_id_in_use(db, record):
    raw = entry("a")
    db.lpush(K.staging(NODE), raw)
    db.hset(K.record("a"), mapping={"id": "a", **record})
    before = dump(db)
    assert enqueue(db, raw, "a", source=raw, distinct=1800) == 3
    assert_unchanged(before, dump(db))   # the entry stays staged, for the caller to park


@pytest.mark.parametrize("status", FINAL)
def test_enqueue_replaces_a_finished_record(db, status):
    raw = entry("a")
    db.hset(K.record("a"), mapping={"id": "a", "status": status, "exit_code": "1",
                                    "attempt": "3", "stdout": "old", "finished_at": "1"})
    db.expire(K.record("a"), 100)
    assert enqueue(db, raw, "a") == 1
    record = db.hgetall(K.record("a"))
    record.pop("queued_at")
    assert record == new_record("a", raw, "queued")   # none of the old fields
    assert db.ttl(K.record("a")) == -1


@pytest.mark.parametrize("at", [0, 4e9])
def test_enqueue_source_no_longer_staged(db, at):
    raw = entry("a")
    db.lpush(K.staging(NODE), "other")
    before = dump(db)
    assert enqueue(db, raw, "a", source=raw, distinct=1800, at=at) == 4
    assert_unchanged(before, dump(db))   # no flag, no record, no queue


@pytest.mark.parametrize("kind", ["string", "list"])
def test_enqueue_record_key_of_another_type(db, kind):
    raw = entry("a")
    db.lpush(K.staging(NODE), raw)
    if kind == "string":
        db.set(K.record("a"), "x")
    else:
        db.rpush(K.record("a"), "x")
    before = dump(db)
    assert enqueue(db, raw, "a", source=raw, distinct=1800) == 5
    assert_unchanged(before, dump(db))


def test_enqueue_refuses_wrong_types(db):
    raw = entry("a")

    def setup():
        db.lpush(K.staging(NODE), raw)

    keys, args = enqueue_call(raw, "a", source=raw, distinct=1800)
    assert_refuses(db, setup, "ENQUEUE", keys, args,
                   {K.queue(CHAN): "list", K.staging(NODE): "list"})
    reset(db)
    keys, args = enqueue_call(raw, "a", source=raw, distinct=1800, at=4e9)
    assert_refuses(db, setup, "ENQUEUE", keys, args,
                   {K.delayed: "zset", K.staging(NODE): "list"})
    # the key of the other way is neither checked nor touched
    reset(db)
    db.set(K.queue(CHAN), "x")
    assert enqueue(db, raw, "a", at=4e9) == 2
    assert db.get(K.queue(CHAN)) == "x"
    reset(db)
    db.set(K.delayed, "x")
    assert enqueue(db, raw, "a") == 1
    assert db.get(K.delayed) == "x"
    # given the high queue, ENQUEUE checks it, and not the queue it was not given
    reset(db)
    high = high_entry("a")

    def staged_high():
        db.lpush(K.staging(NODE), high)

    keys, args = enqueue_call(high, "a", source=high, distinct=1800, high=True)
    assert_refuses(db, staged_high, "ENQUEUE", keys, args,
                   {K.queue_high(CHAN): "list", K.staging(NODE): "list"})
    reset(db)
    db.set(K.queue(CHAN), "x")
    assert enqueue(db, high, "a", high=True) == 1
    assert db.get(K.queue(CHAN)) == "x" and value(db, K.queue_high(CHAN)) == [high]


@pytest.mark.parametrize("at", [0, 4e9])
def test_enqueue_refuses_a_channels_key_of_another_type(db, at):
    """task:channels is read before any write: a string there is an error naming it
    (as for the keys ENQUEUE writes), and nothing is written."""
    raw = entry("a")

    def setup():
        db.lpush(K.staging(NODE), raw)

    keys, args = enqueue_call(raw, "a", source=raw, distinct=1800, at=at)
    assert_refuses(db, setup, "ENQUEUE", keys, args, {K.channels: "hash"})


# -- FIRE ----------------------------------------------------------------------
SCHED = "nightly"
AT = 1_700_000_000   # a schedule's firing time (unix s)
SKIPPED = "skipped: the previous run has not finished"
REFUSED_DISTINCT = "refused: the same command is queued or running"


def fire_call(due: float, raw: str = "", task_id: str = "", mode: str = "run",
              no_overlap: str = "0", previous: str | None = None, schedule: str = SCHED,
              **kw) -> tuple[list, list]:
    """FIRE's keys and args as ``Broker.fire`` gives them: ENQUEUE's (``enqueue_call``,
    ``kw`` its options) for a task, or the firings hash six times and no args without
    one (a task it could not make); then the firings hash, and the previous run's
    record (the firings hash again: none). ``due`` is the firing time; ``at`` (in
    ``kw``) the task's execute_at."""
    keys, args = enqueue_call(raw, task_id, **kw) if raw else ([K.fired] * 6, [])
    return ([*keys, K.fired, K.record(previous) if previous else K.fired],
            [schedule, f"{due:.6f}", mode, no_overlap, task_id, *args])


def fire(db, due, raw="", task_id="", **kw):
    return run(db, "FIRE", *fire_call(due, raw, task_id, **kw))


def made(at: float, outcome: str, task_id: str | None = None) -> dict:
    """A firing as the firings hash holds it (no task_id: none queued yet)."""
    return {"at": at, "outcome": outcome, **({"task_id": task_id} if task_id else {})}


def firings(db) -> dict:
    """The firings hash, each value parsed as JSON."""
    return {name: json.loads(text) for name, text in db.hgetall(K.fired).items()}


def fired_before(db, at: float, outcome: str = "queued", task_id: str = "s@0") -> None:
    """An earlier firing of SCHED, which queued ``task_id``."""
    db.hset(K.fired, SCHED, json.dumps(made(at, outcome, task_id)))


def test_fire_queues_the_task_as_enqueue_does_and_notes_the_firing(db):
    raw = entry("s@1")
    t0 = now(db)
    assert fire(db, AT, raw, "s@1", timeout=60) == [1, "queued"]
    t1 = now(db)
    got = state(db)
    between(got[K.record("s@1")].pop("queued_at"), t0, t1)
    assert firings(db) == {SCHED: made(AT, "queued", "s@1")}
    del got[K.fired]
    assert got == {K.queue(CHAN): [raw],
                   K.record("s@1"): {**new_record("s@1", raw, "queued"), "timeout": "60"}}
    assert db.ttl(K.record("s@1")) == -1 and db.ttl(K.fired) == -1
    # ENQUEUE given the same keys and args leaves the same keys, but the firings hash
    reset(db)
    assert enqueue(db, raw, "s@1", timeout=60) == 1
    alone = state(db)
    alone[K.record("s@1")].pop("queued_at")
    assert alone == got


def test_fire_publishes_the_queue_like_enqueue(db, heard):
    assert fire(db, AT, entry("s@1"), "s@1", wake=K.wake) == [1, "queued"]
    assert heard() == [f"{K.queue(CHAN)}\n{NODE}"]
    assert fire(db, AT, entry("s@1"), "s@1", wake=K.wake) == [0, ""]        # made already
    assert fire(db, AT + 60, entry("s@2"), "s@2", wake=K.wake, mode="missed") == [1, "missed"]
    assert heard() == []


def test_fire_makes_each_firing_once(db):
    """The same firing time again (another node made it) or an earlier one: {0, ''}
    and nothing changes; a later one fires again; another schedule has its own."""
    a = entry("s@1")
    assert fire(db, AT, a, "s@1", distinct=1800) == [1, "queued"]
    db.delete(FLAG)   # the distinct rule would refuse the same command: not this test's
    before = dump(db)
    for at in (AT, AT - 0.5, AT - 60):
        assert fire(db, at, entry("x"), "x") == [0, ""]
        assert fire(db, at, entry("x"), "x", no_overlap="1", previous="s@1") == [0, ""]
        assert fire(db, at, mode="missed") == [0, ""]
        assert fire(db, at, mode="refused: bad") == [0, ""]
    assert_unchanged(before, dump(db))
    b = entry("s@2")
    assert fire(db, AT + 60, b, "s@2") == [1, "queued"]
    c = entry("t@1")
    assert fire(db, AT, c, "t@1", schedule="other") == [1, "queued"]
    assert db.lrange(K.queue(CHAN), 0, -1) == [c, b, a]
    assert firings(db) == {SCHED: made(AT + 60, "queued", "s@2"),
                           "other": made(AT, "queued", "t@1")}
    assert [db.hget(K.record(i), "status") for i in ("s@1", "s@2", "t@1")] == ["queued"] * 3


@pytest.mark.parametrize("last", ["not json", "[1, 2]", '"x"', json.dumps({"outcome": "queued"}),
                                  json.dumps({"at": "soon", "task_id": "s@0"})])
def test_fire_over_a_last_firing_it_cannot_read(db, last):
    """A value without a time in the firings hash holds no firing: this one is made."""
    db.hset(K.fired, SCHED, last)
    assert fire(db, AT, entry("s@1"), "s@1") == [1, "queued"]
    assert firings(db) == {SCHED: made(AT, "queued", "s@1")}


def test_fire_a_delayed_task(db):
    raw = entry("s@1")
    t0 = now(db)
    assert fire(db, AT, raw, "s@1", at=t0 + 100) == [1, "delayed"]
    t1 = now(db)
    got = state(db)
    between(got[K.record("s@1")].pop("queued_at"), t0, t1)
    assert firings(db) == {SCHED: made(AT, "delayed", "s@1")}
    del got[K.fired]
    assert got == {K.delayed: [(raw, pytest.approx(t0 + 100))],
                   K.record("s@1"): new_record("s@1", raw, "delayed")}
    # the next firing's task, due already, is queued
    assert fire(db, AT + 60, entry("s@2"), "s@2", at=t0 - 10) == [1, "queued"]
    assert db.lrange(K.queue(CHAN), 0, -1) == [entry("s@2")]
    assert firings(db) == {SCHED: made(AT + 60, "queued", "s@2")}


@pytest.mark.parametrize("mode", ["missed", "refused: unknown channel 'x'"])
def test_fire_notes_a_firing_that_does_not_run(db, mode):
    """Nothing queued, no record, no flag: only the firing is noted, with the task the
    schedule queued last (none yet: no task_id)."""
    assert fire(db, AT, entry("s@1"), "s@1", mode=mode, distinct=1800) == [1, mode]
    assert firings(db) == {SCHED: made(AT, mode)}
    assert set(state(db)) == {K.fired}
    assert fire(db, AT + 60, entry("s@2"), "s@2") == [1, "queued"]
    before = dump(db)
    # with a task, as a missed firing is given; without one (Broker.fire: a task it could
    # not make), as a refused one is
    assert fire(db, AT + 120, entry("s@3"), "s@3", mode=mode, distinct=1800) == [1, mode]
    assert firings(db) == {SCHED: made(AT + 120, mode, "s@2")}
    assert fire(db, AT + 180, mode=mode, no_overlap="1", previous="s@2") == [1, mode]
    assert firings(db) == {SCHED: made(AT + 180, mode, "s@2")}
    after = dump(db)
    del before[K.fired], after[K.fired]
    assert_unchanged(before, after)   # s@2 queued and its record: nothing else


@pytest.mark.parametrize("status", ["running", "queued", "delayed"])
def test_fire_skips_while_the_previous_run_has_not_finished(db, status):
    db.hset(K.record("s@0"), mapping={"id": "s@0", "status": status})
    fired_before(db, AT - 60)
    before = dump(db)
    assert fire(db, AT, entry("s@1"), "s@1", no_overlap="1", previous="s@0",
                distinct=1800) == [1, SKIPPED]
    assert firings(db) == {SCHED: made(AT, SKIPPED, "s@0")}
    after = dump(db)
    del before[K.fired], after[K.fired]
    assert_unchanged(before, after)   # no queue, no record, no flag
    assert fire(db, AT, entry("s@1"), "s@1", no_overlap="1", previous="s@0") == [0, ""]
    # overlap allowed: queued while the previous one runs
    assert fire(db, AT + 60, entry("s@2"), "s@2", previous="s@0") == [1, "queued"]
    assert db.lrange(K.queue(CHAN), 0, -1) == [entry("s@2")]
    assert db.hgetall(K.record("s@0")) == {"id": "s@0", "status": status}
    assert firings(db) == {SCHED: made(AT + 60, "queued", "s@2")}


@pytest.mark.parametrize("previous", [*({"status": s} for s in FINAL), None, "gone", "x"])
def test_fire_without_overlap_once_the_previous_run_finished(db, previous):
    """A previous run that is final, or whose record expired ('gone'), or of another
    type ('x': no status to read), or none at all (None), does not hold the firing."""
    if isinstance(previous, dict):
        db.hset(K.record("s@0"), mapping={"id": "s@0", **previous})
    elif previous == "x":
        db.set(K.record("s@0"), "x")
    fired_before(db, AT - 60)
    raw = entry("s@1")
    assert fire(db, AT, raw, "s@1", no_overlap="1",
                previous=None if previous is None else "s@0") == [1, "queued"]
    assert db.lrange(K.queue(CHAN), 0, -1) == [raw]
    assert db.hget(K.record("s@1"), "status") == "queued"
    assert firings(db) == {SCHED: made(AT, "queued", "s@1")}
    if isinstance(previous, dict):
        assert db.hgetall(K.record("s@0")) == {"id": "s@0", **previous}


def _distinct_held(db):
    db.set(FLAG, "1", ex=100)
    return {"distinct": 1800}


def _id_in_use(db):
    db.hset(K.record("s@1"), mapping={"id": "s@1", "status": "running"})
    return {}


def _parked(db):
    db.hset(K.record("s@1"), mapping={"id": "s@1", "status": "failed", "parked": "1"})
    return {}


def _record_not_a_hash(db):
    db.set(K.record("s@1"), "x")
    return {}


def _channel_deleted(db):
    return {"chan": GONE}


@pytest.mark.parametrize("setup,outcome", [
    (_distinct_held, REFUSED_DISTINCT),                          # ENQUEUE 0
    (_id_in_use, "refused: its id is in use"),                   # 3
    (_parked, "refused: its id is in use"),                      # 3
    (_record_not_a_hash, "refused: its record key holds another type"),   # 5
    (_channel_deleted, "refused: no such channel"),              # 6
])
@pytest.mark.parametrize("at", [0, 4e9])
def test_fire_notes_what_enqueue_refused(db, setup, outcome, at):
    """A firing ENQUEUE refuses is noted with the reason (it is not tried again), the
    task the schedule queued last kept; nothing else changes."""
    fired_before(db, AT - 60)
    kw = setup(db)
    raw = entry("s@1", chan=kw.get("chan", CHAN))
    before = dump(db)
    assert fire(db, AT, raw, "s@1", at=at, **kw) == [1, outcome]
    assert firings(db) == {SCHED: made(AT, outcome, "s@0")}
    after = dump(db)
    before[K.fired] = after[K.fired]
    assert_unchanged(before, after)   # the flag's TTL too
    assert fire(db, AT, raw, "s@1", at=at, **kw) == [0, ""]
    assert_unchanged(before, dump(db))


def test_fire_refuses_a_firings_hash_of_another_type(db):
    """An error naming it, nothing written, whatever the mode."""
    db.set(K.fired, "x")
    db.hset(K.record("s@0"), mapping={"id": "s@0", "status": "running"})
    before = dump(db)
    for call in (fire_call(AT, entry("s@1"), "s@1"), fire_call(AT, entry("s@1"), "s@1", at=4e9),
                 fire_call(AT, entry("s@1"), "s@1", no_overlap="1", previous="s@0"),
                 fire_call(AT, entry("s@1"), "s@1", mode="missed"),
                 fire_call(AT, mode="refused: bad")):
        with pytest.raises(redis.ResponseError) as err:
            run(db, "FIRE", *call)
        assert str(err.value) == f"WRONGTYPE {K.fired} holds a string, not a hash"
        assert_unchanged(before, dump(db))


@pytest.mark.parametrize("at", [0, 4e9])
def test_fire_refuses_wrong_types(db, at):
    """A key ENQUEUE refuses (its error reply) leaves Redis as it was: the firing is
    not noted, so it is made once the key is right."""
    raw = entry("s@1")

    def setup():
        fired_before(db, AT - 60)

    keys, args = fire_call(AT, raw, "s@1", at=at, distinct=1800)
    wanted = {K.fired: "hash", K.channels: "hash", K.staging(NODE): "list",
              **({K.delayed: "zset"} if at else {K.queue(CHAN): "list"})}
    assert_refuses(db, setup, "FIRE", keys, args, wanted)
    # once the key is right again, the same firing is made
    reset(db)
    setup()
    spoiled = K.delayed if at else K.queue(CHAN)
    db.set(spoiled, "x")
    with pytest.raises(redis.ResponseError):
        run(db, "FIRE", keys, args)
    assert firings(db) == {SCHED: made(AT - 60, "queued", "s@0")}
    db.delete(spoiled)
    assert run(db, "FIRE", keys, args) == [1, "delayed" if at else "queued"]
    assert firings(db) == {SCHED: made(AT, "delayed" if at else "queued", "s@1")}


def test_fire_checks_enqueue_keys_only_when_it_runs_the_task(db):
    """A firing noted only (missed, or skipped) never reaches ENQUEUE's keys."""
    for key in (K.queue(CHAN), K.staging(NODE), K.channels, K.record("s@1")):
        db.set(key, "x")
    db.hset(K.record("s@0"), mapping={"id": "s@0", "status": "running"})
    assert fire(db, AT, entry("s@1"), "s@1", mode="missed") == [1, "missed"]
    assert fire(db, AT + 60, entry("s@2"), "s@2", no_overlap="1", previous="s@0") == [1, SKIPPED]
    assert firings(db) == {SCHED: made(AT + 60, SKIPPED)}
    assert [db.get(key) for key in (K.queue(CHAN), K.staging(NODE), K.channels,
                                    K.record("s@1"))] == ["x"] * 4


# -- DEAD ----------------------------------------------------------------------
DEAD_STAGED = [K.dead, K.staging(NODE), K.staging(NODE), K.dead_trimmed]      # dead_letter
DEAD_CLAIMED = [K.dead, K.processing(NODE, CHAN), K.running(CHAN), K.dead_trimmed]  # release


def letter(raw: str, reason: str = "bad") -> str:
    return json.dumps({"entry": raw, "reason": reason, "node": NODE})


def test_dead_parks_an_entry_for_an_unknown_channel_out_of_staging(db):
    raw = entry("a", chan="nowhere")
    db.lpush(K.staging(NODE), "y", raw, "x")
    rec = letter(raw, "unknown channel 'nowhere'")
    assert run(db, "DEAD", DEAD_STAGED, [rec, raw, 10, "1"]) == 1
    assert state(db) == {K.dead: [rec], K.staging(NODE): ["x", "y"]}


def test_dead_without_a_source(db):
    raw = entry("a")
    db.lpush(K.staging(NODE), raw)
    assert run(db, "DEAD", DEAD_STAGED, [letter(raw, "1"), raw, 10, "0"]) == 1
    assert run(db, "DEAD", DEAD_STAGED, [letter(raw, "2"), raw, 10, "0"]) == 1
    assert state(db) == {K.dead: [letter(raw, "2"), letter(raw, "1")],
                         K.staging(NODE): [raw]}


def test_dead_releases_a_claimed_entry_from_processing_and_running(db):
    raw, other = entry("a"), entry("b")
    db.lpush(K.processing(NODE, CHAN), raw, other)
    db.sadd(K.running(CHAN), raw, other)
    assert run(db, "DEAD", DEAD_CLAIMED, [letter(raw), raw, 10, "2"]) == 1
    assert state(db) == {K.dead: [letter(raw)], K.processing(NODE, CHAN): [other],
                         K.running(CHAN): {other}}


def test_dead_entry_no_longer_there(db):
    raw = entry("a")
    db.lpush(K.staging(NODE), "other")
    db.lpush(K.processing(NODE, CHAN), "other")
    db.sadd(K.running(CHAN), raw)   # running, but not in our processing list
    before = dump(db)
    assert run(db, "DEAD", DEAD_STAGED, [letter(raw), raw, 10, "1"]) == 0
    assert run(db, "DEAD", DEAD_CLAIMED, [letter(raw), raw, 10, "2"]) == 0
    assert_unchanged(before, dump(db))


def test_dead_empty_entry(db):
    db.lpush(K.staging(NODE), "x", "")
    assert run(db, "DEAD", DEAD_STAGED, [letter(""), "", 10, "1"]) == 1
    assert state(db) == {K.dead: [letter("")], K.staging(NODE): ["x"]}
    before = dump(db)
    assert run(db, "DEAD", DEAD_STAGED, [letter(""), "", 10, "1"]) == 0
    assert_unchanged(before, dump(db))


def test_dead_cap_and_trimmed_counter(db):
    assert run(db, "DEAD", DEAD_STAGED, ["r0", "e", 3, "0"]) == 1
    assert state(db) == {K.dead: ["r0"]}   # under the cap: no counter
    db.rpush(K.dead, "d1", "d2")            # three now: [r0, d1, d2]
    assert run(db, "DEAD", DEAD_STAGED, ["r1", "e", 3, "0"]) == 1
    assert state(db) == {K.dead: ["r1", "r0", "d1"], K.dead_trimmed: "1"}
    assert run(db, "DEAD", DEAD_STAGED, ["r2", "e", 3, "0"]) == 1
    assert state(db) == {K.dead: ["r2", "r1", "r0"], K.dead_trimmed: "2"}
    # a smaller cap than before trims all the excess at once
    assert run(db, "DEAD", DEAD_STAGED, ["r3", "e", 1, "0"]) == 1
    assert state(db) == {K.dead: ["r3"], K.dead_trimmed: "5"}
    assert db.ttl(K.dead_trimmed) == -1


def test_dead_refuses_wrong_types(db):
    raw = entry("a")

    def staged():
        db.lpush(K.staging(NODE), raw)

    def claimed():
        db.lpush(K.processing(NODE, CHAN), raw)
        db.sadd(K.running(CHAN), raw)

    for mode in ("0", "1"):   # the source list is checked even when not used
        reset(db)
        assert_refuses(db, staged, "DEAD", DEAD_STAGED, [letter(raw), raw, 10, mode],
                       {K.dead: "list", K.staging(NODE): "list"})
    reset(db)
    assert_refuses(db, claimed, "DEAD", DEAD_CLAIMED, [letter(raw), raw, 10, "2"],
                   {K.dead: "list", K.processing(NODE, CHAN): "list",
                    K.running(CHAN): "set"})
    # the trimmed counter: of another type, or a string that is not a number
    for spoil, error in [(lambda: db.rpush(K.dead_trimmed, "1"), "holds a list, not a string"),
                         (lambda: db.set(K.dead_trimmed, "many"),
                          "holds a string that is not a number")]:
        reset(db)
        claimed()
        spoil()
        before = dump(db)
        with pytest.raises(redis.ResponseError) as err:
            run(db, "DEAD", DEAD_CLAIMED, [letter(raw), raw, 10, "2"])
        assert str(err.value) == f"WRONGTYPE {K.dead_trimmed} {error}"
        assert_unchanged(before, dump(db))


# -- REVIVE --------------------------------------------------------------------
REVIVE_KEYS = [K.dead, K.prepare]


def test_revive_moves_a_letter_back_to_the_prepare_queue(db):
    raw = entry("a")
    first, second = letter(raw, "one"), letter(raw, "two")
    db.rpush(K.dead, first, second, first)   # the same letter twice: one goes
    db.lpush(K.prepare, "older")
    assert run(db, "REVIVE", REVIVE_KEYS, [first, "edited"]) == 1
    assert state(db) == {K.dead: [second, first], K.prepare: ["edited", "older"]}
    assert run(db, "REVIVE", REVIVE_KEYS, [second, raw]) == 1
    assert state(db) == {K.dead: [first], K.prepare: [raw, "edited", "older"]}


def test_revive_a_letter_no_longer_there_writes_nothing(db):
    db.rpush(K.dead, letter(entry("a")))
    before = dump(db)
    assert run(db, "REVIVE", REVIVE_KEYS, [letter(entry("b")), "x"]) == 0
    assert_unchanged(before, dump(db))


def test_revive_refuses_wrong_types(db):
    raw = entry("a")
    assert_refuses(db, lambda: db.rpush(K.dead, letter(raw)), "REVIVE", REVIVE_KEYS,
                   [letter(raw), raw], {K.dead: "list", K.prepare: "list"})


# -- TAKE ----------------------------------------------------------------------
TAKE_KEYS = [K.prepare, K.staging(NODE)]


def test_take_moves_the_oldest_entries(db):
    db.lpush(K.prepare, "e1", "e2", "e3")   # e1 is the oldest, at the right
    assert run(db, "TAKE", TAKE_KEYS, [2]) == ["e1", "e2"]
    assert state(db) == {K.prepare: ["e3"], K.staging(NODE): ["e2", "e1"]}
    assert run(db, "TAKE", TAKE_KEYS, [5]) == ["e3"]
    assert state(db) == {K.staging(NODE): ["e3", "e2", "e1"]}
    assert run(db, "TAKE", TAKE_KEYS, [5]) == []
    assert state(db) == {K.staging(NODE): ["e3", "e2", "e1"]}


def _take_spoiled(db):
    """TAKE with each of its keys a string in turn: (key, error text) for each."""
    out = []
    for key in TAKE_KEYS:
        reset(db)
        db.lpush(K.prepare, "e1", "e2")
        db.set(key, "x")
        before = dump(db)
        with pytest.raises(redis.ResponseError) as err:
            run(db, "TAKE", TAKE_KEYS, [5])
        assert str(err.value).startswith("WRONGTYPE")
        assert_unchanged(before, dump(db))
        out.append((key, str(err.value)))
    return out


def test_take_refuses_wrong_types_and_changes_nothing(db):
    _take_spoiled(db)


def test_take_refusal_names_the_key(db):
    for key, error in _take_spoiled(db):
        assert error == f"WRONGTYPE {key} holds a string, not a list"


# -- CLAIM ---------------------------------------------------------------------
def claim_call(most: int = 1, node: str = NODE, keys: Keys = K, limit: int = 0,
               chan: str = CHAN) -> tuple[list, list]:
    """As ``Broker._claim_args``: ``limit`` the most tasks of the channel running on
    all nodes together (0: none) as the node knows it; the channel's settings in
    ``keys.channels``, where they are, say it instead."""
    return ([keys.queue(chan), keys.processing(node, chan), keys.running(chan),
             keys.queue_high(chan), keys.channels],
            [most, node, keys.record(""), limit, keys.heartbeat(""), chan])


def limited(db: redis.Redis, most: int, chan: str = CHAN) -> None:
    """The channel's settings with ``most`` as its max_running (0: none)."""
    settings = {"name": chan, "distinct": False, "worker_count": 5, "timeout": 0}
    if most:
        settings["max_running"] = most
    db.hset(K.channels, chan, json.dumps(settings))


STALE = {"finished_at": "1", "exit_code": "1", "signal": "9", "duration": "1", "error": "e",
         "retry_at": "5", "pid": "4242"}   # left by an earlier attempt; a start removes them


@pytest.mark.parametrize("prefix", ["", "biz"])
def test_claim_starts_a_queued_record(db, prefix):
    k = Keys(prefix)
    raw = entry("a")
    db.lpush(k.queue(CHAN), raw)
    db.hset(k.record("a"), mapping={"id": "a", "status": "queued", "attempt": "1",
                                    "redeliveries": "2", "retry_count": "1",
                                    "kill_requested": "1", **STALE})
    db.expire(k.record("a"), 1000)
    t0 = now(db)
    assert run(db, "CLAIM", *claim_call(keys=k)) == [[raw, "a", 2, 2, 1, 1]]
    t1 = now(db)
    got = state(db)
    between(got[k.record("a")].pop("started_at"), t0, t1)
    assert got == {k.processing(NODE, CHAN): [raw], k.running(CHAN): {raw},
                   k.record("a"): {"id": "a", "status": "running", "attempt": "2",
                                   "node": NODE, "redeliveries": "2", "retry_count": "1",
                                   "kill_requested": "1"}}
    assert db.ttl(k.record("a")) == -1


def test_claim_takes_the_oldest_first_up_to_most(db):
    raws = [entry(f"t{i}") for i in range(3)]
    for i, raw in enumerate(raws):
        db.lpush(K.queue(CHAN), raw)
        db.hset(K.record(f"t{i}"), mapping={"id": f"t{i}", "status": "queued"})
    assert run(db, "CLAIM", *claim_call(2)) == [[raws[0], "t0", 1, 0, 0, 0],
                                                [raws[1], "t1", 1, 0, 0, 0]]
    assert value(db, K.queue(CHAN)) == [raws[2]]
    assert value(db, K.processing(NODE, CHAN)) == [raws[1], raws[0]]
    assert value(db, K.running(CHAN)) == {raws[0], raws[1]}
    assert run(db, "CLAIM", *claim_call(5)) == [[raws[2], "t2", 1, 0, 0, 0]]
    assert not db.exists(K.queue(CHAN))
    assert run(db, "CLAIM", *claim_call(5)) == []


def queued_in(db, key: str, *raws: str) -> None:
    """Queue ``raws`` (the oldest first) into ``key``, each with a queued record."""
    for raw in raws:
        db.lpush(key, raw)
        task_id = json.loads(raw)["id"]
        db.hset(K.record(task_id), mapping={"id": task_id, "status": "queued"})


def test_claim_takes_the_high_queue_first(db):
    """High entries first, the oldest first, then the queue's, the oldest first, in
    one call whose ``most`` spans both; a high entry queued later still goes first."""
    highs = [high_entry(f"h{i}") for i in range(2)]
    normals = [entry(f"q{i}") for i in range(3)]
    queued_in(db, K.queue(CHAN), *normals[:2])
    queued_in(db, K.queue_high(CHAN), *highs)   # queued after q0 and q1
    queued_in(db, K.queue(CHAN), normals[2])
    assert run(db, "CLAIM", *claim_call(3)) == [[highs[0], "h0", 1, 0, 0, 0],
                                                [highs[1], "h1", 1, 0, 0, 0],
                                                [normals[0], "q0", 1, 0, 0, 0]]
    got = state(db)
    for task_id in ("h0", "h1", "q0"):
        assert got[K.record(task_id)].pop("started_at")
    assert got == {K.queue(CHAN): [normals[2], normals[1]],   # no high queue left
                   K.processing(NODE, CHAN): [normals[0], highs[1], highs[0]],
                   K.running(CHAN): {highs[0], highs[1], normals[0]},
                   **{K.record(task_id): {"id": task_id, "status": "running", "attempt": "1",
                                          "node": NODE} for task_id in ("h0", "h1", "q0")},
                   **{K.record(task_id): {"id": task_id, "status": "queued"}
                      for task_id in ("q1", "q2")}}
    # a high task pushed now runs before the normal ones that waited
    late = high_entry("h2")
    queued_in(db, K.queue_high(CHAN), late)
    assert run(db, "CLAIM", *claim_call(1)) == [[late, "h2", 1, 0, 0, 0]]
    assert run(db, "CLAIM", *claim_call(5)) == [[normals[1], "q1", 1, 0, 0, 0],
                                                [normals[2], "q2", 1, 0, 0, 0]]
    assert not db.exists(K.queue(CHAN)) and not db.exists(K.queue_high(CHAN))
    assert value(db, K.processing(NODE, CHAN)) == [normals[2], normals[1], late, normals[0],
                                                   highs[1], highs[0]]
    assert run(db, "CLAIM", *claim_call(5)) == []


def test_claim_only_high_entries(db):
    """A channel whose only waiting entries are high: claimed, whatever they are
    (an entry the high queue holds is claimed from it, priority or not)."""
    raws = [high_entry("h0"), "sleep 1"]   # a bare line pushed there by hand
    queued_in(db, K.queue_high(CHAN), raws[0])
    db.lpush(K.queue_high(CHAN), raws[1])
    assert run(db, "CLAIM", *claim_call(5)) == [[raws[0], "h0", 1, 0, 0, 0],
                                                [raws[1], "", 0, 0, 0, 0]]
    assert not db.exists(K.queue_high(CHAN))
    assert value(db, K.processing(NODE, CHAN)) == raws[::-1]
    assert value(db, K.running(CHAN)) == {raws[0]}   # the bare line: START starts it


def test_claim_limit_counts_and_takes_across_both_queues(db):
    """The channel's limit (ARGV[4]) holds whichever queue an entry comes from: a
    running task whose node's heartbeat lives, or that has no node, holds a slot;
    an entry CLAIM leaves to START holds one from its claim."""
    live, dead = entry("r1"), entry("r2")
    db.hset(K.record("r1"), mapping={"id": "r1", "status": "running", "node": OTHER})
    db.hset(K.record("r2"), mapping={"id": "r2", "status": "running", "node": "n3"})
    db.sadd(K.running(CHAN), live, dead)
    db.set(K.heartbeat(OTHER), "alive", ex=30)
    db.set(K.heartbeat(NODE), "alive", ex=30)   # n3 has none: r2 holds no slot
    h0, h1, q0 = high_entry("h0"), high_entry("h1"), entry("q0")
    db.lpush(K.queue_high(CHAN), h0)            # no record: left to START
    queued_in(db, K.queue_high(CHAN), h1)
    queued_in(db, K.queue(CHAN), q0)
    # limit 3, one slot held (r1): two claims, both high
    limited(db, 3)
    assert run(db, "CLAIM", *claim_call(5, limit=3)) == [[h0, "", 0, 0, 0, 0],
                                                         [h1, "h1", 1, 0, 0, 0]]
    assert value(db, K.running(CHAN)) == {live, dead, h0, h1}   # h0 holds its slot
    assert value(db, K.queue(CHAN)) == [q0] and not db.exists(K.queue_high(CHAN))
    # r1, h0 (no record: no node) and h1 (our node) hold the three slots
    before = dump(db)
    assert run(db, "CLAIM", *claim_call(5, limit=3)) == []
    assert_unchanged(before, dump(db))
    db.delete(K.heartbeat(OTHER))               # r1's node died: its slot is free
    assert run(db, "CLAIM", *claim_call(5, limit=3)) == [[q0, "q0", 1, 0, 0, 0]]
    assert not db.exists(K.queue(CHAN))
    assert value(db, K.processing(NODE, CHAN)) == [q0, h1, h0]
    # without a limit, most alone counts
    limited(db, 0)
    queued_in(db, K.queue_high(CHAN), high_entry("h2"))
    queued_in(db, K.queue(CHAN), entry("q1"))
    assert [claim[1] for claim in run(db, "CLAIM", *claim_call(5))] == ["h2", "q1"]


def test_claim_takes_the_limit_from_the_channels_settings(db):
    """A node that has not read a change yet claims within the new limit, and
    nothing from a channel paused meanwhile: the settings in Redis win over the
    limit the node gives; without settings (a channel being deleted), the node's
    own counts."""
    db.hset(K.record("r1"), mapping={"id": "r1", "status": "running", "node": OTHER})
    db.sadd(K.running(CHAN), entry("r1"))
    db.set(K.heartbeat(OTHER), "alive", ex=30)
    db.set(K.heartbeat(NODE), "alive", ex=30)   # what this node claims holds slots
    queued_in(db, K.queue(CHAN), *(entry(f"q{n}") for n in range(4)))
    limited(db, 1)   # lowered to 1 elsewhere; this node still thinks there is no limit
    before = dump(db)
    assert run(db, "CLAIM", *claim_call(5, limit=0)) == []
    assert_unchanged(before, dump(db))
    limited(db, 2)   # raised: one more, whatever the node still thinks
    assert [c[1] for c in run(db, "CLAIM", *claim_call(5, limit=1))] == ["q0"]
    limited(db, 0)   # lifted
    assert [c[1] for c in run(db, "CLAIM", *claim_call(1, limit=2))] == ["q1"]
    # a policy whose text names max_running is not the limit (its quotes are escaped)
    db.hset(K.channels, CHAN, json.dumps({"name": CHAN, "command_policy": {
        "allow": [["echo", '"max_running": 1']]}}))
    assert [c[1] for c in run(db, "CLAIM", *claim_call(1))] == ["q2"]
    # paused elsewhere: nothing is claimed, whatever the node still thinks
    db.hset(K.channels, CHAN, json.dumps({"name": CHAN, "paused": True}))
    before = dump(db)
    assert run(db, "CLAIM", *claim_call(5)) == []
    assert_unchanged(before, dump(db))
    db.hdel(K.channels, CHAN)   # no settings: the node's limit
    assert run(db, "CLAIM", *claim_call(5, limit=3)) == []
    db.delete(K.channels)
    db.set(K.channels, "broken")   # nor when the settings' key is of another type
    assert run(db, "CLAIM", *claim_call(5, limit=3)) == []
    assert run(db, "CLAIM", *claim_call(5, limit=5)) == [[entry("q3"), "q3", 1, 0, 0, 0]]


def test_claim_leaves_entries_it_cannot_start_to_start(db):
    records = {"done": "succeeded", "other": "running", "later": "delayed"}
    for task_id, status in records.items():
        db.hset(K.record(task_id), mapping={"id": task_id, "status": status})
    raws = ["sleep 1",                          # a bare command line (Go's producers)
            '{"task": "echo"}', '{"id": 7}', '{"id": ""}', "[1, 2]", '"text"', "null",
            entry("missing"),                   # no record
            *(entry(task_id) for task_id in records)]   # a record that waits for no entry
    db.lpush(K.queue(CHAN), *raws)
    before = state(db)
    assert run(db, "CLAIM", *claim_call(20)) == [[raw, "", 0, 0, 0, 0] for raw in raws]
    expected = {k: v for k, v in before.items() if k != K.queue(CHAN)}
    assert state(db) == {**expected, K.processing(NODE, CHAN): raws[::-1]}   # no running set


def test_claim_record_key_of_another_type(db):
    foreign, fine = entry("a"), entry("b")
    db.set(K.record("a"), "x")
    db.hset(K.record("b"), mapping={"id": "b", "status": "queued"})
    db.lpush(K.queue(CHAN), foreign, fine)
    assert run(db, "CLAIM", *claim_call(2)) == [[foreign, "a", -1, 0, 0, 0],
                                                [fine, "b", 1, 0, 0, 0]]
    assert value(db, K.record("a")) == "x"
    assert value(db, K.processing(NODE, CHAN)) == [fine, foreign]   # claimed, not started
    assert value(db, K.running(CHAN)) == {fine}


def test_claim_refuses_wrong_types(db):
    raw = entry("a")

    def setup():
        db.lpush(K.queue(CHAN), raw)
        db.hset(K.record("a"), mapping={"id": "a", "status": "queued"})

    wanted = {K.queue(CHAN): "list", K.processing(NODE, CHAN): "list",
              K.running(CHAN): "set", K.queue_high(CHAN): "list"}
    assert_refuses(db, setup, "CLAIM", *claim_call(), wanted)

    def high_setup():   # the same with the entry in the high queue
        db.lpush(K.queue_high(CHAN), raw)
        db.hset(K.record("a"), mapping={"id": "a", "status": "queued"})

    reset(db)
    assert_refuses(db, high_setup, "CLAIM", *claim_call(), wanted)


# -- ROUTE ---------------------------------------------------------------------
def route_call(raw: str, task_id: str, most: int = 1, limit: int = 0, **kw) -> tuple[list, list]:
    """As ``Broker.push_claiming`` gives ROUTE: the push (waking nobody), then the claim
    for its channel (told to wake the other nodes if it leaves entries)."""
    push_keys, push_args = enqueue_call(raw, task_id, **kw)
    claim_keys, claim_args = claim_call(most, limit=limit)
    return push_keys + claim_keys, [*claim_args, K.wake, *push_args]


TIMES = ("queued_at", "started_at")


def reply_of(db, name: str, keys, args):
    """The script's reply, or the text of its error reply."""
    try:
        return run(db, name, keys, args)
    except redis.ResponseError as exc:
        return str(exc)


def after_push_and_claim(db, heard, setup, calls) -> tuple:
    """(replies, every key without the records' times, which keys expire, the wake-up
    messages) once ``setup`` and then ``calls`` ran on an empty server; each time
    checked first."""
    reset(db)
    setup()
    heard()
    t0 = now(db)
    replies = [reply_of(db, name, keys, args) for name, keys, args in calls]
    t1 = now(db)
    got = state(db)
    for key, fields in got.items():
        if key.startswith(K.record("")) and isinstance(fields, dict):
            for name in TIMES:
                if name in fields:
                    between(fields.pop(name), t0, t1)
    return replies, got, {key: db.ttl(key) >= 0 for key in db.keys("*")}, heard()


def older(*raws: str, key: str = K.queue(CHAN)):
    """A setup: ``raws`` wait in ``key``, each with a queued record, the first oldest."""
    return lambda db: queued_in(db, key, *raws)


def running_on(db, node: str, task_id: str = "r1", **record) -> None:
    """A task of the channel runs on ``node`` (its record says so)."""
    db.sadd(K.running(CHAN), entry(task_id))
    db.hset(K.record(task_id), mapping={"id": task_id, "status": "running", "node": node,
                                        **record})


def alive(db, node: str) -> None:
    db.set(K.heartbeat(node), "alive", ex=30)


# case: (the push's options, the setup, the ids claimed with room for two)
ROUTED = {
    "idle channel": ({}, lambda db: None, ["a"]),
    "idle channel, high task": ({"high": True}, lambda db: None, ["a"]),
    "an older entry waits": ({}, older(entry("o1")), ["o1", "a"]),
    "an older high entry waits": ({}, older(high_entry("o1"), key=K.queue_high(CHAN)),
                                  ["o1", "a"]),
    "an older entry without a record, under a limit": ({"limit": 2}, lambda db: (
        limited(db, 2), db.lpush(K.queue(CHAN), "sleep 1")), ["", "a"]),
    "paused": ({}, lambda db: db.hset(K.channels, CHAN, json.dumps({"name": CHAN,
                                                                     "paused": True})), []),
    "no room left": ({"limit": 1}, lambda db: (
        limited(db, 1), running_on(db, NODE), alive(db, NODE)), []),
    "room left under a limit": ({"limit": 2}, lambda db: (
        limited(db, 2), running_on(db, NODE), alive(db, NODE)), ["a"]),
    "the running task's node died": ({"limit": 1}, lambda db: (
        limited(db, 1), running_on(db, "n3")), ["a"]),
    # an entry of the pushed id in the running set (pushed by hand, not started yet),
    # its record finished on a dead node: once the push writes the record, it holds a slot
    "the pushed id is a running entry's": ({"limit": 1}, lambda db: (
        limited(db, 1), running_on(db, "n3", "a", status="succeeded")), []),
    "delayed, an older entry waits": ({"at": 4e9}, older(entry("o1")), ["o1"]),
    "refused as distinct, an older entry waits": ({"distinct": 1800}, lambda db: (
        db.set(FLAG, "1"), queued_in(db, K.queue(CHAN), entry("o1"))), ["o1"]),
    "id in use, an older entry waits": ({}, lambda db: (
        db.hset(K.record("a"), mapping={"id": "a", "status": "running"}),
        queued_in(db, K.queue(CHAN), entry("o1"))), ["o1"]),
    "no longer staged, an older entry waits": ({}, lambda db: (
        db.delete(K.staging(NODE)), queued_in(db, K.queue(CHAN), entry("o1"))), ["o1"]),
    "record key of another type, an older entry waits": ({}, lambda db: (
        db.set(K.record("a"), "x"), queued_in(db, K.queue(CHAN), entry("o1"))), ["o1"]),
    "deleted channel": ({}, lambda db: db.hdel(K.channels, CHAN), []),
    # no settings at all (lost with Redis's data): the channel is taken to exist
    "no channels hash": ({}, lambda db: db.delete(K.channels), ["a"]),
    # the record of the id's earlier, finished run is replaced, not added to
    "the id's earlier run finished": ({}, lambda db: db.hset(K.record("a"), mapping={
        "id": "a", "status": "failed", "exit_code": "3", "stdout": "old", "pid": "7"}), ["a"]),
    "the id's earlier run is kept in the failed list": ({}, lambda db: db.hset(
        K.record("a"), mapping={"id": "a", "status": "failed", "parked": "1"}), []),
    # the push refused with an error reply, by a key the claim does not use
    "delayed set of another type, an older entry waits": ({"at": 4e9}, lambda db: (
        db.set(K.delayed, "x"), queued_in(db, K.queue(CHAN), entry("o1"))), ["o1"]),
    "channels key of another type, an older entry waits": ({}, lambda db: (
        db.delete(K.channels), db.set(K.channels, "x"),
        queued_in(db, K.queue(CHAN), entry("o1"))), ["o1"]),
}


@pytest.mark.parametrize("case", ROUTED)
@pytest.mark.parametrize("most", [1, 2])
def test_route_leaves_what_enqueue_then_claim_leave(db, heard, case, most):
    """ROUTE is ENQUEUE then CLAIM in one script: the same replies (the push's error
    reply as its text), keys, records, expiries and wake-ups, whichever way it takes
    (straight into the processing list when the task is all its channel holds and the
    claim has room; else the two as they are)."""
    options, prepare, claimed = ROUTED[case]
    options = dict(options)
    limit = options.pop("limit", 0)
    raw = high_entry("a") if options.get("high") else entry("a")

    def setup():
        db.lpush(K.staging(NODE), raw)
        prepare(db)

    push_keys, push_args = enqueue_call(raw, "a", source=raw, **options)
    claim_keys, claim_args = claim_call(most, limit=limit)
    route = route_call(raw, "a", most, limit, source=raw, **options)
    fused = after_push_and_claim(db, heard, setup, [("ROUTE", *route)])
    apart = after_push_and_claim(db, heard, setup, [("ENQUEUE", push_keys, push_args),
                                                    ("CLAIM", claim_keys, [*claim_args, K.wake])])
    assert fused[0] == [apart[0]]
    assert [claim[1] for claim in fused[0][0][1]] == claimed[:most]
    assert fused[1:] == apart[1:]


def test_route_starts_an_idle_channel_s_task_at_once(db, heard):
    """The way ROUTE saves: the task never waits in the queue, and its record is
    written once, already running."""
    raw = entry("a")
    db.lpush(K.staging(NODE), raw)
    t0 = now(db)
    assert run(db, "ROUTE", *route_call(raw, "a", most=3, source=raw)) == [1, [[raw, "a", 1, 0,
                                                                                  0, 0]]]
    t1 = now(db)
    got = state(db)
    record = got[K.record("a")]
    between(record.pop("queued_at"), t0, t1)
    between(record.pop("started_at"), t0, t1)
    assert got == {K.processing(NODE, CHAN): [raw], K.running(CHAN): {raw},
                   K.record("a"): {**new_record("a", raw, "running"), "attempt": "1",
                                   "node": NODE}}
    assert db.ttl(K.record("a")) == -1 and heard() == []


def test_route_refuses_wrong_types(db, heard):
    """A key of the push of another type: its error's text in the push's place, the
    push writing nothing, and the claim made (here with nothing to take). A key only
    the claim uses: the push is made, as ENQUEUE alone makes it, and the claim's error
    comes third in the reply, nothing claimed."""
    raw = entry("a")

    def setup():
        db.lpush(K.staging(NODE), raw)

    keys, args = route_call(raw, "a", source=raw, distinct=1800)
    for key, kind in ((K.queue(CHAN), "list"), (K.staging(NODE), "list")):
        reset(db)
        setup()
        db.set(key, "x")
        before = dump(db)
        error = f"WRONGTYPE {key} holds a string, not a {kind}"
        # the queue is the claim's too: then its refusal comes third as well
        assert run(db, "ROUTE", keys, args) == [error, [], *([error] if key == K.queue(CHAN)
                                                             else [])]
        assert_unchanged(before, dump(db))
        assert heard() == []
    for key, kind in ((K.processing(NODE, CHAN), "list"), (K.running(CHAN), "set"),
                      (K.queue_high(CHAN), "list")):
        reset(db)
        setup()
        db.set(key, "x")
        error = f"WRONGTYPE {key} holds a string, not a {kind}"
        assert run(db, "ROUTE", keys, args) == [1, [], error]
        got = state(db)
        assert got[K.queue(CHAN)] == [raw] and got[K.record("a")]["status"] == "queued"
        assert got[key] == "x" and heard() == []


# -- START ---------------------------------------------------------------------
def start_call(raw: str, task_id: str = "a") -> tuple[list, list]:
    missing = {"id": task_id, "channel": CHAN, "task_name": NAME, "argv": '["echo", "hi"]',
               "raw": raw, "retry_count": 0}
    return ([K.running(CHAN), K.record(task_id), K.processing(NODE, CHAN)],
            [raw, NODE, *pairs(missing)])


def test_start_without_a_record_writes_one(db):
    raw = "echo hi"   # pushed straight into the queue by a Go producer
    db.lpush(K.processing(NODE, CHAN), raw)
    t0 = now(db)
    assert run(db, "START", *start_call(raw)) == [1, 0, 0, 0]
    got = state(db)
    between(got[K.record("a")].pop("started_at"), t0, now(db))
    assert got == {K.processing(NODE, CHAN): [raw], K.running(CHAN): {raw},
                   K.record("a"): {"id": "a", "channel": CHAN, "task_name": NAME,
                                   "argv": '["echo", "hi"]', "raw": raw, "retry_count": "0",
                                   "attempt": "1", "status": "running", "node": NODE}}


def test_start_keeps_the_fields_a_record_has(db):
    raw = entry("a")
    db.lpush(K.processing(NODE, CHAN), raw)
    db.hset(K.record("a"), mapping={"id": "a", "task_name": "named", "status": "queued",
                                    "attempt": "2", "redeliveries": "1", "retry_count": "3",
                                    "kill_requested": "1", **STALE})
    db.expire(K.record("a"), 1000)
    assert run(db, "START", *start_call(raw)) == [3, 1, 1, 3]
    record = db.hgetall(K.record("a"))
    record.pop("started_at")
    assert record == {"id": "a", "task_name": "named", "status": "running", "attempt": "3",
                      "redeliveries": "1", "retry_count": "3", "kill_requested": "1",
                      "channel": CHAN, "argv": '["echo", "hi"]', "raw": raw, "node": NODE}
    assert db.ttl(K.record("a")) == -1


def test_start_when_no_longer_in_the_processing_list(db):
    raw = entry("a")
    db.lpush(K.processing(NODE, CHAN), "other")
    db.hset(K.record("a"), mapping={"id": "a", "status": "queued"})
    before = dump(db)
    assert run(db, "START", *start_call(raw)) == [0, 0, 0, 0]
    assert_unchanged(before, dump(db))


def test_start_record_key_of_another_type(db):
    raw = entry("a")
    db.lpush(K.processing(NODE, CHAN), raw)
    db.set(K.record("a"), "x")
    before = dump(db)
    assert run(db, "START", *start_call(raw)) == [-1, 0, 0, 0]
    assert_unchanged(before, dump(db))


def test_start_refuses_wrong_types(db):
    raw = entry("a")

    def setup():
        db.lpush(K.processing(NODE, CHAN), raw)

    assert_refuses(db, setup, "START", *start_call(raw),
                   {K.running(CHAN): "set", K.processing(NODE, CHAN): "list"})


# -- FINISH --------------------------------------------------------------------
FINISH_KEYS = [K.processing(NODE, CHAN), K.running(CHAN), FLAG, K.record("a"), K.failed(CHAN),
               K.failed_index(CHAN), K.delayed]
RAW, OTHER_RAW = entry("a"), entry("b")
RUNNING = {"id": "a", "task_name": NAME, "status": "running", "attempt": "1",
           "retry_count": "0", "node": NODE}


def finish_args(outcome: str, fields: dict, ttl: int = 600, delay: str = "0.000") -> list:
    return finish_args_of(RAW, outcome, fields, ttl, delay)


def finish_args_of(raw: str, outcome: str, fields: dict, ttl: int = 600,
                   delay: str = "0.000") -> list:
    """FINISH's args for task a whose entry is ``raw``."""
    return [raw, outcome, "a", ttl, delay, *pairs(fields)]


def running(db):
    """Task a runs on our node next to task b; a distinct flag is held."""
    db.lpush(K.processing(NODE, CHAN), RAW, OTHER_RAW)
    db.sadd(K.running(CHAN), RAW, OTHER_RAW)
    db.set(FLAG, "1", ex=1800)
    db.hset(K.record("a"), mapping=RUNNING)


def test_finish_done(db):
    running(db)
    t0 = now(db)
    assert run(db, "FINISH", FINISH_KEYS,
               finish_args("done", {"status": "succeeded", "exit_code": 0})) == 1
    got = state(db)
    between(got[K.record("a")].pop("finished_at"), t0, now(db))
    assert got == {K.processing(NODE, CHAN): [OTHER_RAW], K.running(CHAN): {OTHER_RAW},
                   K.record("a"): {**RUNNING, "status": "succeeded", "exit_code": "0"}}
    assert 590 <= db.ttl(K.record("a")) <= 600   # the flag is gone too


def test_finish_failed_parks_the_task(db):
    running(db)
    t0 = now(db)
    assert run(db, "FINISH", FINISH_KEYS,
               finish_args("failed", {"status": "failed", "exit_code": 3})) == 1
    got = state(db)
    record = got[K.record("a")]
    between(record["finished_at"], t0, now(db))
    assert record.pop("failed_at") == record.pop("finished_at")
    (task_id, score), = got.pop(K.failed_index(CHAN))
    assert task_id == "a"
    between(score, t0, now(db))
    assert got == {K.processing(NODE, CHAN): [OTHER_RAW], K.running(CHAN): {OTHER_RAW},
                   K.record("a"): {**RUNNING, "status": "failed", "exit_code": "3",
                                   "parked": "1"},
                   K.failed(CHAN): {"a": RAW}}
    assert db.ttl(K.record("a")) == -1   # kept until deleted from the failed list


def test_finish_retry_delays_the_task(db):
    running(db)
    db.hset(K.record("a"), "retry_count", "2")
    t0 = now(db)
    assert run(db, "FINISH", FINISH_KEYS,
               finish_args("retry", {"exit_code": 1}, delay="30.000")) == 2
    t1 = now(db)
    got = state(db)
    (raw, score), = got.pop(K.delayed)
    assert raw == RAW
    between(score, t0 + 30, t1 + 30)
    record = got[K.record("a")]
    assert float(record.pop("retry_at")) == pytest.approx(score)
    assert got == {K.processing(NODE, CHAN): [OTHER_RAW], K.running(CHAN): {OTHER_RAW},
                   K.record("a"): {**RUNNING, "status": "delayed", "exit_code": "1",
                                   "retry_count": "3"},
                   FLAG: "1"}   # still held while it waits
    assert 1790 <= db.ttl(FLAG) <= 1800
    assert db.ttl(K.record("a")) == -1


@pytest.mark.parametrize("outcome", ["done", "failed", "retry"])
def test_finish_late_ack_changes_nothing(db, outcome):
    """Our node was reaped: the entry went back to the queue (and may run elsewhere)."""
    db.lpush(K.processing(NODE, CHAN), OTHER_RAW)
    db.sadd(K.running(CHAN), OTHER_RAW)
    db.lpush(K.queue(CHAN), RAW)
    db.set(FLAG, "1", ex=1800)
    db.hset(K.record("a"), mapping={**RUNNING, "status": "queued", "redeliveries": "1"})
    before = dump(db)
    assert run(db, "FINISH", FINISH_KEYS,
               finish_args(outcome, {"status": "succeeded", "exit_code": 0})) == 0
    assert_unchanged(before, dump(db))


def test_finish_refuses_wrong_types(db):
    common = {K.processing(NODE, CHAN): "list", K.running(CHAN): "set", K.record("a"): "hash"}
    for outcome, more in [("done", {}), ("retry", {K.delayed: "zset"}),
                          ("failed", {K.failed(CHAN): "hash", K.failed_index(CHAN): "zset"})]:
        reset(db)
        assert_refuses(db, lambda: running(db), "FINISH", FINISH_KEYS,
                       finish_args(outcome, {"exit_code": 1}), {**common, **more})


def test_finish_ignores_the_keys_of_other_outcomes(db):
    running(db)
    for key in (K.failed(CHAN), K.failed_index(CHAN), K.delayed):
        db.set(key, "x")
    assert run(db, "FINISH", FINISH_KEYS, finish_args("done", {"status": "succeeded"})) == 1
    assert [db.get(key) for key in (K.failed(CHAN), K.failed_index(CHAN), K.delayed)] == ["x"] * 3


# -- REQUEUE -------------------------------------------------------------------
def requeue_call(raw: str, did_not_run: str = "1", wake: str = "", chan: str = CHAN,
                 task_id: str = "a", most: int = MOST, high: bool = False) -> tuple[list, list]:
    """As ``Broker.requeue``: ``high`` gives the high queue (a high entry's)."""
    queue = K.queue_high(chan) if high else K.queue(chan)
    return ([K.processing(NODE, chan), K.running(chan), queue, K.record(task_id),
             K.channels, K.dead, K.dead_trimmed],
            [raw, did_not_run, wake, chan, NODE, most, TTL])


G_RAW, G_OTHER = entry("a", chan=GONE), entry("b", chan=GONE)   # entries of a deleted channel


@pytest.mark.parametrize("started,did_not_run,attempt,after", [
    (True, "0", "2", "2"),    # it ran (a shutdown stopped it): the attempt counts
    (True, "1", "2", "1"),    # it did not run: the attempt its start counted is taken back
    (False, "1", "2", "2"),   # claimed, never started: nothing was counted
    (True, "1", "0", "0"),    # never below 0
])
def test_requeue_gives_the_entry_back(db, started, did_not_run, attempt, after):
    db.lpush(K.queue(CHAN), "next")
    db.lpush(K.processing(NODE, CHAN), RAW, OTHER_RAW)
    if started:
        db.sadd(K.running(CHAN), RAW)
    db.hset(K.record("a"), mapping={**RUNNING, "attempt": attempt})
    assert run(db, "REQUEUE", *requeue_call(RAW, did_not_run)) == 1
    assert state(db) == {K.queue(CHAN): ["next", RAW],   # at the right: it runs next
                         K.processing(NODE, CHAN): [OTHER_RAW],
                         K.record("a"): {**RUNNING, "status": "queued", "attempt": after}}


def test_requeue_gives_a_high_entry_back_to_the_high_queue(db, heard):
    """Given the high queue (as broker.py does for a high entry), REQUEUE puts the
    entry at its right (it runs next) and names it in the wake-up message."""
    raw = high_entry("a")
    db.lpush(K.queue(CHAN), "normal")
    db.lpush(K.queue_high(CHAN), "next")
    db.lpush(K.processing(NODE, CHAN), raw, OTHER_RAW)
    db.sadd(K.running(CHAN), raw)
    db.hset(K.record("a"), mapping={**RUNNING, "attempt": "2"})
    assert run(db, "REQUEUE", *requeue_call(raw, "1", K.wake, high=True)) == 1
    assert state(db) == {K.queue_high(CHAN): ["next", raw], K.queue(CHAN): ["normal"],
                         K.processing(NODE, CHAN): [OTHER_RAW],
                         K.record("a"): {**RUNNING, "status": "queued", "attempt": "1"}}
    assert heard() == [K.queue_high(CHAN)]
    # the claim that follows takes it first
    assert run(db, "CLAIM", *claim_call(1)) == [[raw, "a", 2, 0, 0, 0]]


def test_requeue_when_no_longer_ours(db):
    for chan, raw in ((CHAN, RAW), (GONE, G_RAW)):   # deleted or not: nothing to bury
        reset(db)
        db.lpush(K.processing(NODE, chan), entry("b", chan=chan))
        db.sadd(K.running(chan), raw)
        db.hset(K.record("a"), mapping=RUNNING)
        before = dump(db)
        assert run(db, "REQUEUE", *requeue_call(raw, chan=chan)) == 0
        assert_unchanged(before, dump(db))


def test_requeue_without_a_record(db):
    for record in (None, "x"):   # broker.py passes task:record:- for no record
        reset(db)
        if record:
            db.set(K.record("-"), record)
        db.lpush(K.processing(NODE, CHAN), "sleep 1")
        db.sadd(K.running(CHAN), "sleep 1")
        assert run(db, "REQUEUE", *requeue_call("sleep 1", task_id="-")) == 1
        assert state(db) == {K.queue(CHAN): ["sleep 1"],
                             **({K.record("-"): record} if record else {})}


def test_requeue_without_a_channels_hash_gives_the_entry_back(db):
    """No channels hash at all: the settings were lost, not the channel deleted."""
    db.delete(K.channels)
    db.lpush(K.processing(NODE, CHAN), RAW)
    assert run(db, "REQUEUE", *requeue_call(RAW)) == 1
    assert db.lrange(K.queue(CHAN), 0, -1) == [RAW] and db.llen(K.dead) == 0


def test_requeue_buries_an_entry_of_a_deleted_channel(db, heard):
    db.lpush(K.processing(NODE, GONE), G_RAW, G_OTHER)
    db.sadd(K.running(GONE), G_RAW, G_OTHER)
    db.hset(K.record("a"), mapping={**RUNNING, "channel": GONE, "attempt": "2"})
    t0 = now(db)
    assert run(db, "REQUEUE", *requeue_call(G_RAW, "1", K.wake, chan=GONE)) == 2
    t1 = now(db)
    assert letters(db, t0, t1) == [{"entry": G_RAW, "reason": gone(), "node": NODE}]
    got = state(db)
    del got[K.dead]
    closed(got[K.record("a")], gone(), t0, t1)
    # out of the processing list and the running set, into no queue; the attempt stays
    assert got == {K.processing(NODE, GONE): [G_OTHER], K.running(GONE): {G_OTHER},
                   K.record("a"): {**RUNNING, "channel": GONE, "attempt": "2",
                                   "status": "canceled", "error": gone()}}
    assert TTL - 10 <= db.ttl(K.record("a")) <= TTL
    assert heard() == []   # nothing was queued


def test_requeue_buries_an_entry_without_a_record(db):
    for record in (None, "x"):
        reset(db)
        if record:
            db.set(K.record("-"), record)
        db.lpush(K.processing(NODE, GONE), "sleep 1")
        t0 = now(db)
        assert run(db, "REQUEUE", *requeue_call("sleep 1", chan=GONE, task_id="-")) == 2
        assert letters(db, t0, now(db)) == [{"entry": "sleep 1", "reason": gone(),
                                             "node": NODE}]
        got = state(db)
        del got[K.dead]
        assert got == ({K.record("-"): record} if record else {})
        assert db.ttl(K.record("-")) == (-1 if record else -2)   # a string is left alone


def test_requeue_burial_trims_the_dead_letters(db):
    db.rpush(K.dead, "old1", "old2")
    db.set(K.dead_trimmed, "3")
    db.lpush(K.processing(NODE, GONE), G_RAW, G_OTHER)
    assert run(db, "REQUEUE", *requeue_call(G_RAW, chan=GONE, most=2)) == 2
    newest, rest = db.lindex(K.dead, 0), db.lrange(K.dead, 1, -1)
    assert json.loads(newest)["entry"] == G_RAW and rest == ["old1"]
    assert db.get(K.dead_trimmed) == "4" and db.ttl(K.dead_trimmed) == -1
    assert run(db, "REQUEUE", *requeue_call(G_OTHER, chan=GONE, most=1)) == 2
    assert [json.loads(text)["entry"] for text in db.lrange(K.dead, 0, -1)] == [G_OTHER]
    assert db.get(K.dead_trimmed) == "6"


def test_requeue_refuses_wrong_types(db):
    def holding(chan: str, raw: str):
        """A setup: ``raw`` claimed and started in ``chan`` by this node."""
        def setup():
            db.lpush(K.processing(NODE, chan), raw)
            db.sadd(K.running(chan), raw)
            db.hset(K.record("a"), mapping=RUNNING)
        return setup

    high = high_entry("a")
    for chan, raw, call, queue in ((CHAN, RAW, requeue_call(RAW), K.queue(CHAN)),
                                   (GONE, G_RAW, requeue_call(G_RAW, chan=GONE), K.queue(GONE)),
                                   (CHAN, high, requeue_call(high, high=True),
                                    K.queue_high(CHAN))):
        reset(db)
        assert_refuses(db, holding(chan, raw), "REQUEUE", *call,
                       {K.processing(NODE, chan): "list", K.running(chan): "set",
                        queue: "list", K.channels: "hash", K.dead: "list"})


@pytest.mark.parametrize("spoil", SPOILED_COUNTER)
def test_requeue_refuses_a_trimmed_counter_that_is_not_a_number(db, spoil):
    def deleted():
        db.lpush(K.processing(NODE, GONE), G_RAW)
        db.hset(K.record("a"), mapping=RUNNING)

    assert_counter_refused(db, deleted, "REQUEUE", *requeue_call(G_RAW, chan=GONE), spoil)


# -- REAP ----------------------------------------------------------------------
def reap_call(only_if_dead: str = "1", forget: str = "1", node: str = NODE,
              chans=("a", "b"), me: str = OTHER, wake: str = "",
              most: int = MOST) -> tuple[list, list]:
    """REAP of ``node`` by node ``me`` (as ``Broker.requeue_node``)."""
    keys = [K.heartbeat(node), K.nodes, K.staging(node), K.prepare, K.node_channels(node),
            K.channels, K.dead, K.dead_trimmed]
    for chan in chans:
        keys += [K.processing(node, chan), K.running(chan), K.queue(chan)]
    return keys, [node, only_if_dead, forget, K.record(""), wake, me, most, TTL, K.high,
                  *chans]


A1, A2, B1 = entry("a1", chan="a"), entry("a2", chan="a"), "sleep 1"
A1_RUNNING = {"id": "a1", "status": "running", "redeliveries": "1", "node": NODE}
A2_QUEUED = {"id": "a2", "status": "queued"}   # claimed, not started yet


def dead_node(db):
    """Node n1 died routing two entries, holding two claims of channel a (a1
    started, a2 not) and one of channel b (a bare command line)."""
    db.lpush(K.prepare, "p1")
    db.lpush(K.staging(NODE), "s1", "s2")        # s1 taken first (the older)
    db.sadd(K.nodes, NODE, OTHER)
    db.sadd(K.node_channels(NODE), "a", "b")
    db.lpush(K.processing(NODE, "a"), A1, A2)    # a1 claimed first
    db.sadd(K.running("a"), A1, A2, "elsewhere")
    db.lpush(K.queue("a"), "qa")
    db.hset(K.record("a1"), mapping=A1_RUNNING)
    db.hset(K.record("a2"), mapping=A2_QUEUED)
    db.lpush(K.processing(NODE, "b"), B1)
    db.sadd(K.running("b"), B1)


REAPED = {K.prepare: ["p1", "s2", "s1"],           # s1 is taken next, then s2
          K.queue("a"): ["qa", A2, A1],             # a1 runs next, then a2
          K.running("a"): {"elsewhere"},
          K.record("a1"): {**A1_RUNNING, "status": "queued", "redeliveries": "2"},
          K.record("a2"): A2_QUEUED,                # not started: no redelivery counted
          K.queue("b"): [B1]}


def test_reap_a_dead_node(db):
    dead_node(db)
    assert run(db, "REAP", *reap_call()) == 5
    assert state(db) == {**REAPED, K.nodes: {OTHER}}   # forgotten: no staging, no lists


def test_reap_waits_while_the_heartbeat_lives(db):
    dead_node(db)
    db.set(K.heartbeat(NODE), "alive", ex=30)
    before = dump(db)
    assert run(db, "REAP", *reap_call()) == -1
    assert_unchanged(before, dump(db))


def test_reap_own_node_on_leaving_and_without_forgetting(db):
    dead_node(db)
    db.set(K.heartbeat(NODE), "alive", ex=30)
    assert run(db, "REAP", *reap_call(only_if_dead="0", forget="0", me=NODE)) == 5
    assert state(db) == {**REAPED, K.heartbeat(NODE): "alive", K.nodes: {NODE, OTHER},
                         K.node_channels(NODE): {"a", "b"}}


H1, H2 = high_entry("h1", chan="a"), high_entry("h2", chan="a")
H1_RUNNING = {"id": "h1", "status": "running", "node": NODE}


def test_reap_gives_high_entries_back_to_the_high_queue(db, heard):
    """Each claim goes back to the list it came from, to run next: a high entry to
    its channel's high queue, any other (a bare line, JSON of another priority) to
    the queue; a channel whose only claims are high ones too."""
    normal = entry("n", chan="a", priority="normal")
    db.sadd(K.nodes, NODE, OTHER)
    # claimed in this order: a1, h1, bare, normal, h2 (the newest at the left)
    db.lpush(K.processing(NODE, "a"), A1, H1, B1, normal, H2)
    db.sadd(K.running("a"), A1, H1, H2, "elsewhere")
    db.lpush(K.queue("a"), "qa")
    db.lpush(K.queue_high(CHAN), "hc")
    db.lpush(K.processing(NODE, CHAN), high_entry("h3"))
    db.hset(K.record("a1"), mapping=A1_RUNNING)
    db.hset(K.record("h1"), mapping=H1_RUNNING)
    db.hset(K.record("h2"), mapping={"id": "h2", "status": "queued"})   # not started
    assert run(db, "REAP", *reap_call(chans=("a", CHAN), wake=K.wake)) == 6
    assert state(db) == {K.nodes: {OTHER}, K.running("a"): {"elsewhere"},
                         K.queue("a"): ["qa", normal, B1, A1],   # a1 runs next
                         K.queue_high("a"): [H2, H1],             # h1 runs next, first of all
                         K.queue_high(CHAN): ["hc", high_entry("h3")],
                         K.record("a1"): {**A1_RUNNING, "status": "queued",
                                          "redeliveries": "2"},
                         K.record("h1"): {**H1_RUNNING, "status": "queued",
                                          "redeliveries": "1"},
                         K.record("h2"): {"id": "h2", "status": "queued"}}
    # one message a channel, naming its queue (a node wakes the channel for either key)
    assert heard() == [K.queue("a"), K.queue(CHAN)]
    # the next claim of channel a takes h1, h2, then a1
    claims = run(db, "CLAIM", *claim_call(3, node=OTHER, chan="a"))
    assert [claim[0] for claim in claims] == [H1, H2, A1]


def test_reap_buries_the_high_claims_of_a_deleted_channel(db):
    db.lpush(K.processing(NODE, GONE), entry("g1", chan=GONE), high_entry("g2", chan=GONE))
    db.lpush(K.queue_high(GONE), "waiting")   # left for DELETE_CHANNEL's caller
    t0 = now(db)
    assert run(db, "REAP", *reap_call(chans=(GONE,))) == 2
    assert letters(db, t0, now(db)) == [
        {"entry": raw, "reason": gone(), "node": OTHER}
        for raw in (entry("g1", chan=GONE), high_entry("g2", chan=GONE))]
    got = state(db)
    del got[K.dead]
    assert got == {K.queue_high(GONE): ["waiting"]}


def test_reap_leaves_records_that_do_not_run(db):
    entries = {"s": "x", "f": {"id": "f", "status": "succeeded"},
               "n": {"id": "n", "status": "running", "redeliveries": "bad"}}
    for task_id, record in entries.items():
        if isinstance(record, str):
            db.set(K.record(task_id), record)
        else:
            db.hset(K.record(task_id), mapping=record)
        db.lpush(K.processing(NODE, "a"), entry(task_id, chan="a"))
    db.lpush(K.processing(NODE, "a"), '{"id": 5}', "[]")
    assert run(db, "REAP", *reap_call(chans=("a",))) == 5
    assert value(db, K.record("s")) == "x"
    assert value(db, K.record("f")) == entries["f"]
    assert value(db, K.record("n")) == {"id": "n", "status": "queued", "redeliveries": "1"}
    assert len(value(db, K.queue("a"))) == 5


def test_reap_buries_the_claims_of_a_deleted_channel(db, heard):
    dead_node(db)
    db.hdel(K.channels, "a")
    t0 = now(db)
    assert run(db, "REAP", *reap_call(wake=K.wake)) == 5
    t1 = now(db)
    # a2 was claimed last (the left of the list): buried first
    assert letters(db, t0, t1) == [{"entry": A1, "reason": gone("a"), "node": OTHER},
                                   {"entry": A2, "reason": gone("a"), "node": OTHER}]
    got = state(db)
    del got[K.dead]
    for task_id in ("a1", "a2"):
        closed(got[K.record(task_id)], gone("a"), t0, t1)
        assert TTL - 10 <= db.ttl(K.record(task_id)) <= TTL
    assert got == {**REAPED, K.nodes: {OTHER}, K.channels: channels_but("a"),
                   K.queue("a"): ["qa"],   # none of a's claims went back
                   K.record("a1"): {**A1_RUNNING, "status": "canceled", "error": gone("a")},
                   K.record("a2"): {**A2_QUEUED, "status": "canceled", "error": gone("a")}}
    assert heard() == [K.queue("b")]   # only the queue that got entries


def test_reap_buries_entries_whose_record_it_cannot_close(db):
    raws = [entry("s", chan=GONE), '{"id": 5}', "[]", "sleep 1", entry("m", chan=GONE)]
    db.set(K.record("s"), "x")   # another type: left alone
    db.lpush(K.processing(NODE, GONE), *raws)
    db.sadd(K.running(GONE), *raws, "elsewhere")
    t0 = now(db)
    assert run(db, "REAP", *reap_call(chans=(GONE,))) == 5
    assert letters(db, t0, now(db)) == [{"entry": raw, "reason": gone(), "node": OTHER}
                                        for raw in raws]
    got = state(db)
    del got[K.dead]
    assert got == {K.record("s"): "x", K.running(GONE): {"elsewhere"}}   # no record made
    assert db.ttl(K.record("s")) == -1


def test_reap_burials_trim_the_dead_letters(db):
    db.rpush(K.dead, "old")
    db.lpush(K.processing(NODE, GONE), "e1", "e2", "e3")
    assert run(db, "REAP", *reap_call(chans=(GONE,), most=2)) == 3
    assert [json.loads(text)["entry"] for text in db.lrange(K.dead, 0, -1)] == ["e1", "e2"]
    assert db.get(K.dead_trimmed) == "2"   # "old" and e3
    assert db.ttl(K.dead_trimmed) == -1


def test_reap_refuses_wrong_types(db):
    keys, args = reap_call()
    wanted = {K.nodes: "set", K.staging(NODE): "list", K.prepare: "list",
              K.node_channels(NODE): "set", K.channels: "hash", K.dead: "list",
              **{key: kind for chan in ("a", "b") for key, kind in [
                  (K.processing(NODE, chan), "list"), (K.running(chan), "set"),
                  (K.queue(chan), "list"), (K.queue_high(chan), "list")]}}
    assert_refuses(db, lambda: dead_node(db), "REAP", keys, args, wanted)
    # the same with a high claim of channel a, which goes to its high queue

    def with_high():
        dead_node(db)
        db.lpush(K.processing(NODE, "a"), H1)

    reset(db)
    assert_refuses(db, with_high, "REAP", keys, args, wanted)

    def deleted():   # the same with channel a deleted: its claims would be buried
        dead_node(db)
        db.hdel(K.channels, "a")

    reset(db)
    assert_refuses(db, deleted, "REAP", keys, args, wanted)


@pytest.mark.parametrize("spoil", SPOILED_COUNTER)
def test_reap_refuses_a_trimmed_counter_that_is_not_a_number(db, spoil):
    def deleted():
        dead_node(db)
        db.hdel(K.channels, "a")

    assert_counter_refused(db, deleted, "REAP", *reap_call(), spoil)


def test_late_ack_after_a_dead_node_was_reaped(db):
    """n1 claims a task and stops beating; n2 reaps it and runs the task again;
    n1's late FINISH changes nothing, n2's finishes the task."""
    assert enqueue(db, RAW, "a", distinct=1800) == 1
    assert run(db, "CLAIM", *claim_call()) == [[RAW, "a", 1, 0, 0, 0]]
    assert run(db, "REAP", *reap_call(chans=(CHAN,))) == 1
    assert run(db, "CLAIM", *claim_call(node=OTHER)) == [[RAW, "a", 2, 1, 0, 0]]
    before = dump(db)
    assert run(db, "FINISH", FINISH_KEYS, finish_args("done", {"status": "succeeded"})) == 0
    assert_unchanged(before, dump(db))
    theirs = [K.processing(OTHER, CHAN), *FINISH_KEYS[1:]]
    assert run(db, "FINISH", theirs, finish_args("done", {"status": "succeeded"})) == 1
    assert db.hget(K.record("a"), "status") == "succeeded"
    assert db.hget(K.record("a"), "node") == OTHER
    assert set(state(db)) == {K.record("a")}


# -- PROMOTE -------------------------------------------------------------------
def promote_call(raw: str, wake: str = "", chan: str = CHAN, task_id: str = "a",
                 most: int = MOST, high: bool = False) -> tuple[list, list]:
    """As ``Broker.promote_due``: ``high`` gives the high queue (a high entry's)."""
    queue = K.queue_high(chan) if high else K.queue(chan)
    return ([K.delayed, queue, K.record(task_id), K.channels, K.dead, K.dead_trimmed],
            [raw, wake, chan, NODE, most, TTL])


def test_promote_queues_a_due_task(db):
    db.zadd(K.delayed, {RAW: 100, OTHER_RAW: 200})
    db.lpush(K.queue(CHAN), "earlier")
    db.hset(K.record("a"), mapping={"id": "a", "status": "delayed"})
    assert run(db, "PROMOTE", *promote_call(RAW)) == 1
    assert state(db) == {K.delayed: [(OTHER_RAW, 200.0)], K.queue(CHAN): [RAW, "earlier"],
                         K.record("a"): {"id": "a", "status": "queued"}}


def test_promote_queues_a_due_high_task_into_the_high_queue(db, heard):
    raw = high_entry("a")
    db.zadd(K.delayed, {raw: 100, OTHER_RAW: 200})
    db.lpush(K.queue(CHAN), "normal")
    db.lpush(K.queue_high(CHAN), "earlier")
    db.hset(K.record("a"), mapping={"id": "a", "status": "delayed"})
    assert run(db, "PROMOTE", *promote_call(raw, K.wake, high=True)) == 1
    assert state(db) == {K.delayed: [(OTHER_RAW, 200.0)], K.queue(CHAN): ["normal"],
                         K.queue_high(CHAN): [raw, "earlier"],
                         K.record("a"): {"id": "a", "status": "queued"}}
    assert heard() == [K.queue_high(CHAN)]


def test_promote_lost_to_another_node(db):
    db.zadd(K.delayed, {OTHER_RAW: 200})
    db.hset(K.record("a"), mapping={"id": "a", "status": "delayed"})
    before = dump(db)
    assert run(db, "PROMOTE", *promote_call(RAW)) == 0
    assert_unchanged(before, dump(db))


@pytest.mark.parametrize("record", [None, "x", {"id": "a", "status": "canceled"}])
def test_promote_leaves_a_record_that_is_not_delayed(db, record):
    db.zadd(K.delayed, {RAW: 100})
    if isinstance(record, str):
        db.set(K.record("a"), record)
    elif record:
        db.hset(K.record("a"), mapping=record)
    assert run(db, "PROMOTE", *promote_call(RAW)) == 1
    assert state(db) == {K.queue(CHAN): [RAW], **({K.record("a"): record} if record else {})}


def test_promote_refuses_wrong_types(db):
    def delaying(raw: str):
        """A setup: ``raw`` delayed, its record waiting for it."""
        def setup():
            db.zadd(K.delayed, {raw: 100})
            db.hset(K.record("a"), mapping={"id": "a", "status": "delayed"})
        return setup

    high = high_entry("a")
    for raw, call, queue in ((RAW, promote_call(RAW), K.queue(CHAN)),
                             (G_RAW, promote_call(G_RAW, chan=GONE), K.queue(GONE)),
                             (high, promote_call(high, high=True), K.queue_high(CHAN))):
        reset(db)
        assert_refuses(db, delaying(raw), "PROMOTE", *call,
                       {K.delayed: "zset", queue: "list", K.channels: "hash",
                        K.dead: "list"})


@pytest.mark.parametrize("spoil", SPOILED_COUNTER)
def test_promote_refuses_a_trimmed_counter_that_is_not_a_number(db, spoil):
    def deleted():
        db.zadd(K.delayed, {G_RAW: 100})

    assert_counter_refused(db, deleted, "PROMOTE", *promote_call(G_RAW, chan=GONE), spoil)


def test_promote_buries_a_task_of_a_deleted_channel(db, heard):
    db.zadd(K.delayed, {G_RAW: 100, G_OTHER: 200})
    db.hset(K.record("a"), mapping={"id": "a", "channel": GONE, "status": "delayed"})
    t0 = now(db)
    assert run(db, "PROMOTE", *promote_call(G_RAW, K.wake, chan=GONE)) == 2
    t1 = now(db)
    assert letters(db, t0, t1) == [{"entry": G_RAW, "reason": gone(), "node": NODE}]
    got = state(db)
    del got[K.dead]
    closed(got[K.record("a")], gone(), t0, t1)
    assert got == {K.delayed: [(G_OTHER, 200.0)],   # no queue
                   K.record("a"): {"id": "a", "channel": GONE, "status": "canceled",
                                   "error": gone()}}
    assert TTL - 10 <= db.ttl(K.record("a")) <= TTL
    assert heard() == []
    # another node buried it first: nothing more
    before = dump(db)
    assert run(db, "PROMOTE", *promote_call(G_RAW, K.wake, chan=GONE)) == 0
    assert_unchanged(before, dump(db))


@pytest.mark.parametrize("record", [None, "x"])
def test_promote_buries_a_task_without_a_record(db, record):
    db.zadd(K.delayed, {"sleep 1": 100})
    if record:
        db.set(K.record("a"), record)
    t0 = now(db)
    assert run(db, "PROMOTE", *promote_call("sleep 1", chan=GONE)) == 2
    assert letters(db, t0, now(db)) == [{"entry": "sleep 1", "reason": gone(), "node": NODE}]
    got = state(db)
    del got[K.dead]
    assert got == ({K.record("a"): record} if record else {})
    assert db.ttl(K.record("a")) == (-1 if record else -2)


def test_promote_burial_trims_the_dead_letters(db):
    db.rpush(K.dead, "old1", "old2")
    db.set(K.dead_trimmed, "7")
    db.zadd(K.delayed, {G_RAW: 100})
    assert run(db, "PROMOTE", *promote_call(G_RAW, chan=GONE, most=2)) == 2
    newest, rest = db.lindex(K.dead, 0), db.lrange(K.dead, 1, -1)
    assert json.loads(newest)["entry"] == G_RAW and rest == ["old1"]
    assert db.get(K.dead_trimmed) == "8"


# -- CANCEL --------------------------------------------------------------------
CANCEL_KEYS = [K.record("a"), K.queue(CHAN), K.delayed, FLAG, K.queue_high(CHAN)]


@pytest.mark.parametrize("where", ["queue", "high", "delayed"])
def test_cancel_a_waiting_task(db, where):
    """Found in the queue, the high queue or the delayed set; the others untouched."""
    db.lpush(K.queue(CHAN), "q1", *([RAW] if where == "queue" else []), "q2")
    db.lpush(K.queue_high(CHAN), "h1", *([RAW] if where == "high" else []), "h2")
    db.zadd(K.delayed, {"d": 5e9, **({RAW: 4e9} if where == "delayed" else {})})
    db.set(FLAG, "1", ex=1800)
    db.hset(K.record("a"), mapping={"id": "a", "status": "queued"})
    t0 = now(db)
    assert run(db, "CANCEL", CANCEL_KEYS, [RAW, 600]) == 1
    got = state(db)
    between(got[K.record("a")].pop("finished_at"), t0, now(db))
    assert got == {K.record("a"): {"id": "a", "status": "canceled"},   # no flag
                   K.queue(CHAN): ["q2", "q1"], K.queue_high(CHAN): ["h2", "h1"],
                   K.delayed: [("d", 5e9)]}
    assert 590 <= db.ttl(K.record("a")) <= 600


def test_cancel_an_entry_without_a_record(db):
    db.lpush(K.queue(CHAN), "echo hi")
    assert run(db, "CANCEL", CANCEL_KEYS, ["echo hi", 600]) == 1
    record = db.hgetall(K.record("a"))
    assert record.pop("status") == "canceled" and set(record) == {"finished_at"}
    assert 590 <= db.ttl(K.record("a")) <= 600
    assert set(state(db)) == {K.record("a")}


@pytest.mark.parametrize("status", [None, "running", "succeeded"])
def test_cancel_a_task_that_does_not_wait(db, status):
    db.lpush(K.processing(NODE, CHAN), RAW)
    db.lpush(K.queue(CHAN), "q1")
    db.lpush(K.queue_high(CHAN), "h1")
    db.set(FLAG, "1", ex=1800)
    if status:
        db.hset(K.record("a"), mapping={"id": "a", "status": status})
    before = dump(db)
    assert run(db, "CANCEL", CANCEL_KEYS, [RAW, 600]) == 0
    assert_unchanged(before, dump(db))


def test_cancel_refuses_wrong_types(db):
    def setup():
        db.lpush(K.queue(CHAN), RAW)
        db.zadd(K.delayed, {"d": 1})
        db.hset(K.record("a"), mapping={"id": "a", "status": "queued"})

    wanted = {K.record("a"): "hash", K.queue(CHAN): "list", K.delayed: "zset",
              K.queue_high(CHAN): "list"}
    assert_refuses(db, setup, "CANCEL", CANCEL_KEYS, [RAW, 600], wanted)

    def high_setup():   # the entry in the high queue: every key is checked still
        db.lpush(K.queue_high(CHAN), RAW)
        db.zadd(K.delayed, {"d": 1})
        db.hset(K.record("a"), mapping={"id": "a", "status": "queued"})

    reset(db)
    assert_refuses(db, high_setup, "CANCEL", CANCEL_KEYS, [RAW, 600], wanted)


# -- KILL ----------------------------------------------------------------------
KILLS = K.kill_requests(NODE)


def test_kill_a_running_task(db):
    db.hset(K.record("a"), mapping=RUNNING)
    assert run(db, "KILL", [K.record("a"), KILLS], ["a"]) == 1
    assert state(db) == {K.record("a"): {**RUNNING, "kill_requested": "1"}, KILLS: {"a"}}


def test_kill_a_task_no_node_has_started(db):
    db.hset(K.record("a"), mapping={"id": "a", "status": "queued"})
    assert run(db, "KILL", [K.record("a"), K.record("a")], ["a"]) == 1
    assert state(db) == {K.record("a"): {"id": "a", "status": "queued", "kill_requested": "1"}}


@pytest.mark.parametrize("record", [None, {"id": "a"}, *({"status": s} for s in FINAL)])
def test_kill_a_task_that_ended_or_is_unknown(db, record):
    if record:
        db.hset(K.record("a"), mapping=record)
    before = dump(db)
    assert run(db, "KILL", [K.record("a"), KILLS], ["a"]) == 0
    assert_unchanged(before, dump(db))


def test_kill_refuses_wrong_types(db):
    def setup():
        db.hset(K.record("a"), mapping=RUNNING)

    assert_refuses(db, setup, "KILL", [K.record("a"), KILLS], ["a"],
                   {K.record("a"): "hash", KILLS: "set"})
    reset(db)
    assert_refuses(db, setup, "KILL", [K.record("a"), K.record("a")], ["a"],
                   {K.record("a"): "hash"})


# -- UNFAIL --------------------------------------------------------------------
UNFAIL_KEYS = [K.failed(CHAN), K.failed_index(CHAN), K.queue(CHAN), K.record("a"), FLAG,
               K.queue_high(CHAN), K.channels]
PARKED = {"id": "a", "task_name": NAME, "status": "failed", "parked": "1", "failed_at": "100",
          "finished_at": "100", "kill_requested": "1", "retry_count": "2", "redeliveries": "1",
          "attempt": "3", "exit_code": "1"}


def unfail_args(mode: str, distinct: int = 1800, wake: str = "", task_id: str = "a",
                chan: str = CHAN) -> list:
    """As ``Broker.unfail``: ``mode`` '1' retries, '0' deletes."""
    return [task_id, mode, TTL, distinct, wake, chan]


def parked(db, raw: str = RAW):
    """Task a (entry ``raw``) and task b are in the failed list."""
    db.hset(K.failed(CHAN), mapping={"a": raw, "b": OTHER_RAW})
    db.zadd(K.failed_index(CHAN), {"a": 100, "b": 200})
    db.hset(K.record("a"), mapping=PARKED)


def test_unfail_retry(db):
    parked(db)
    db.expire(K.record("a"), 1000)   # a retried record is kept: PERSIST
    assert run(db, "UNFAIL", UNFAIL_KEYS, unfail_args("1")) == 1
    kept = {k: v for k, v in PARKED.items() if k not in ("parked", "kill_requested", "failed_at")}
    assert state(db) == {K.failed(CHAN): {"b": OTHER_RAW}, K.failed_index(CHAN): [("b", 200.0)],
                         K.queue(CHAN): [RAW], FLAG: "1",
                         K.record("a"): {**kept, "status": "queued", "retry_count": "0",
                                         "redeliveries": "0"}}
    assert db.ttl(K.record("a")) == -1
    assert 1790 <= db.ttl(FLAG) <= 1800


def test_unfail_retry_a_high_task_into_the_high_queue(db, heard):
    raw = high_entry("a")
    parked(db, raw)
    db.lpush(K.queue(CHAN), "normal")
    db.lpush(K.queue_high(CHAN), "high")
    assert run(db, "UNFAIL", UNFAIL_KEYS, unfail_args("1", wake=K.wake)) == 1
    kept = {k: v for k, v in PARKED.items() if k not in ("parked", "kill_requested", "failed_at")}
    assert state(db) == {K.failed(CHAN): {"b": OTHER_RAW}, K.failed_index(CHAN): [("b", 200.0)],
                         K.queue(CHAN): ["normal"], K.queue_high(CHAN): [raw, "high"],
                         FLAG: "1",
                         K.record("a"): {**kept, "status": "queued", "retry_count": "0",
                                         "redeliveries": "0"}}
    assert heard() == [K.queue_high(CHAN)]
    # deleted instead: into no queue, nobody told
    reset(db)
    parked(db, raw)
    assert run(db, "UNFAIL", UNFAIL_KEYS, unfail_args("0", wake=K.wake)) == 1
    assert set(state(db)) == {K.failed(CHAN), K.failed_index(CHAN), K.record("a")}
    assert heard() == []


def test_unfail_retry_not_distinct_leaves_the_flag_alone(db):
    parked(db)
    assert run(db, "UNFAIL", UNFAIL_KEYS, unfail_args("1", 0)) == 1
    assert not db.exists(FLAG)
    reset(db)
    parked(db)
    db.set(FLAG, "held", ex=100)
    assert run(db, "UNFAIL", UNFAIL_KEYS, unfail_args("1", 0)) == 1
    assert db.get(FLAG) == "held" and 90 <= db.ttl(FLAG) <= 100


def test_unfail_delete(db):
    parked(db)
    assert run(db, "UNFAIL", UNFAIL_KEYS, unfail_args("0")) == 1
    kept = {k: v for k, v in PARKED.items() if k != "parked"}
    assert state(db) == {K.failed(CHAN): {"b": OTHER_RAW}, K.failed_index(CHAN): [("b", 200.0)],
                         K.record("a"): kept}
    assert 590 <= db.ttl(K.record("a")) <= 600


def test_unfail_an_id_that_is_not_failed(db):
    parked(db)
    keys = [*UNFAIL_KEYS[:3], K.record("zz"), *UNFAIL_KEYS[4:]]
    before = dump(db)
    assert run(db, "UNFAIL", keys, unfail_args("1", task_id="zz")) == 0
    assert run(db, "UNFAIL", keys, unfail_args("0", task_id="zz")) == 0
    assert_unchanged(before, dump(db))
    db.hdel(K.channels, CHAN)   # not among the failed comes first: 0, not 2
    before = dump(db)
    assert run(db, "UNFAIL", keys, unfail_args("1", task_id="zz")) == 0
    assert_unchanged(before, dump(db))


@pytest.mark.parametrize("high", [False, True])
def test_unfail_does_not_retry_a_task_of_a_deleted_channel(db, heard, high):
    """2 and nothing written: the task stays among the failed (its record, TTL
    and all, its distinct flag free), no queue made, nobody told."""
    parked(db, high_entry("a") if high else RAW)
    db.expire(K.record("a"), 1000)
    db.hdel(K.channels, CHAN)
    before = dump(db)
    assert run(db, "UNFAIL", UNFAIL_KEYS, unfail_args("1", wake=K.wake)) == 2
    assert_unchanged(before, dump(db))
    assert heard() == []
    # only the field is asked for: other channels, or this one's settings, do not count
    db.delete(K.channels)
    db.hset(K.channels, CHAN, "{}")
    assert run(db, "UNFAIL", UNFAIL_KEYS, unfail_args("1", wake=K.wake)) == 1
    assert heard() == [K.queue_high(CHAN) if high else K.queue(CHAN)]


def test_unfail_retries_without_a_channels_hash(db):
    """No channels hash at all: the settings were lost, not the channel deleted
    (the nodes make the default channels again), so the task is retried."""
    parked(db)
    db.delete(K.channels)
    assert run(db, "UNFAIL", UNFAIL_KEYS, unfail_args("1")) == 1
    kept = {k: v for k, v in PARKED.items() if k not in ("parked", "kill_requested", "failed_at")}
    assert state(db) == {K.failed(CHAN): {"b": OTHER_RAW}, K.failed_index(CHAN): [("b", 200.0)],
                         K.queue(CHAN): [RAW], FLAG: "1",
                         K.record("a"): {**kept, "status": "queued", "retry_count": "0",
                                         "redeliveries": "0"}}   # no channels hash made


def test_unfail_deletes_a_task_of_a_deleted_channel(db, heard):
    parked(db)
    db.hdel(K.channels, CHAN)
    assert run(db, "UNFAIL", UNFAIL_KEYS, unfail_args("0", wake=K.wake)) == 1
    kept = {k: v for k, v in PARKED.items() if k != "parked"}
    assert state(db) == {K.failed(CHAN): {"b": OTHER_RAW}, K.failed_index(CHAN): [("b", 200.0)],
                         K.record("a"): kept, K.channels: channels_but(CHAN)}
    assert 590 <= db.ttl(K.record("a")) <= 600
    assert heard() == []
    # no channels hash at all: the same
    reset(db)
    parked(db)
    db.delete(K.channels)
    assert run(db, "UNFAIL", UNFAIL_KEYS, unfail_args("0")) == 1
    assert state(db) == {K.failed(CHAN): {"b": OTHER_RAW}, K.failed_index(CHAN): [("b", 200.0)],
                         K.record("a"): kept}


def test_unfail_refuses_wrong_types(db):
    wanted = {K.failed(CHAN): "hash", K.failed_index(CHAN): "zset", K.queue(CHAN): "list",
              K.record("a"): "hash", K.queue_high(CHAN): "list", K.channels: "hash"}
    assert_refuses(db, lambda: parked(db), "UNFAIL", UNFAIL_KEYS, unfail_args("1"),
                   wanted)
    reset(db)   # a high task: both queues checked, whichever it goes to
    assert_refuses(db, lambda: parked(db, high_entry("a")), "UNFAIL", UNFAIL_KEYS,
                   unfail_args("1"), wanted)


# -- SET_CHANNEL ---------------------------------------------------------------
NEW_SPEC = json.dumps({"name": CHAN, "worker_count": 4})
# what SET_CHANNEL and DELETE_CHANNEL publish: the nodes read the settings again,
# but NODE, which applied the change itself
RELOAD = f"{K.channels}\n{NODE}"


def set_channel(db, chan: str, read: str, new: str, wake: str = ""):
    return run(db, "SET_CHANNEL", [K.channels], [chan, read, new, wake, NODE])


def test_set_channel_writes_and_tells_every_node(db, heard):
    assert set_channel(db, CHAN, CHANNELS[CHAN], NEW_SPEC, K.wake) == 1
    assert state(db) == {K.channels: {**CHANNELS, CHAN: NEW_SPEC}}
    assert heard() == [RELOAD]   # the nodes read the settings again
    # no wake-up channel: written, nobody told
    assert set_channel(db, CHAN, NEW_SPEC, CHANNELS[CHAN]) == 1
    assert state(db) == {}
    assert heard() == []


def test_set_channel_changed_meanwhile(db, heard):
    """Another caller wrote first: 0 and nothing written, whatever the new text."""
    db.hset(K.channels, CHAN, NEW_SPEC)
    before = dump(db)
    for read in (CHANNELS[CHAN], NEW_SPEC + " ", ""):   # the text is compared, not its meaning
        assert set_channel(db, CHAN, read, "{}", K.wake) == 0
    assert_unchanged(before, dump(db))
    assert heard() == []


def test_set_channel_unknown(db, heard):
    before = dump(db)
    assert set_channel(db, GONE, "", "{}", K.wake) == -1
    assert set_channel(db, GONE, "{}", "{}", K.wake) == -1
    assert_unchanged(before, dump(db))   # no field made
    db.delete(K.channels)
    assert set_channel(db, CHAN, CHANNELS[CHAN], "{}", K.wake) == -1
    assert db.keys("*") == []
    assert heard() == []


def test_set_channel_refuses_wrong_types(db):
    assert_refuses(db, lambda: None, "SET_CHANNEL", [K.channels],
                   [CHAN, CHANNELS[CHAN], NEW_SPEC, "", NODE], {K.channels: "hash"})


# -- DELETE_CHANNEL ------------------------------------------------------------
def delete_call(mode: str = "refuse", to: str = "", chan: str = CHAN, batch: int = 1000,
                most: int = MOST, wake: str = "") -> tuple[list, list]:
    """As ``Broker.delete_channel`` calls it (one round trip)."""
    before, after = K.distinct_around(chan)
    return ([K.channels, K.queue(chan), K.queue(to) if to else K.queue(chan), K.dead,
             K.dead_trimmed, K.queue_high(chan),
             K.queue_high(to) if to else K.queue_high(chan), K.stats(chan)],
            [chan, mode, to, batch, before, after, K.record(""), most, gone(chan), NODE, TTL,
             wake])


C1, C2 = entry("c1", task="t1"), entry("c2", task="t2")
C3 = "sleep 3"                                         # a Go plain string: its own name
C4 = json.dumps({"task_id": "g4", "task_name": "t4"})  # later Go versions' JSON
C5 = entry("c5", task="t5")                            # its record's key holds a string
QUEUED = [C1, C2, C3, C4, C5]                          # the oldest first
C_RECORD = {"status": "queued", "channel": CHAN, "task_name": "t1"}


def waiting(db):
    """Five tasks wait in channel c, each holding its distinct flag; a task of c
    runs (flag t9); two tasks wait in channel 'other', which has a flag of its own."""
    db.lpush(K.queue(CHAN), *QUEUED)
    for task_id in ("c1", "c2"):
        db.hset(K.record(task_id), mapping={"id": task_id, **C_RECORD})
    db.set(K.record("c5"), "x")
    for name in ("t1", "t2", "sleep 3", "t4", "t5", "t9"):
        db.set(K.distinct(CHAN, name), "1", ex=1800)
    db.set(K.distinct("other", "t1"), "1", ex=1800)
    db.sadd(K.running(CHAN), "r")
    db.lpush(K.queue("other"), "o1", "o2")   # o1 the oldest


# what a deletion leaves of waiting(): the running task's flag and set, another
# channel's flag, a record key of another type
LEFT = {K.distinct(CHAN, "t9"): "1", K.distinct("other", "t1"): "1", K.running(CHAN): {"r"},
        K.record("c5"): "x"}


def delete_channel(db, *args, **kw):
    return run(db, "DELETE_CHANNEL", *delete_call(*args, **kw))


@pytest.mark.parametrize("mode,to", [("refuse", ""), ("move", "other"), ("drop", "")])
def test_delete_channel_unknown(db, heard, mode, to):
    db.lpush(K.queue(GONE), "left alone")   # a queue nobody declared
    db.lpush(K.queue_high(GONE), "left alone too")
    waiting(db)
    before = dump(db)
    assert delete_channel(db, mode, to, chan=GONE, wake=K.wake) == [0, 0]
    assert_unchanged(before, dump(db))
    assert heard() == []


def test_delete_channel_move_to_a_channel_not_declared(db, heard):
    waiting(db)
    before = dump(db)
    assert delete_channel(db, "move", GONE, wake=K.wake) == [3, 0]
    assert_unchanged(before, dump(db))
    db.delete(K.queue(CHAN))   # even with nothing to move
    before = dump(db)
    assert delete_channel(db, "move", GONE, wake=K.wake) == [3, 0]
    assert_unchanged(before, dump(db))
    assert heard() == []


def test_delete_channel_refused_while_tasks_wait(db, heard):
    waiting(db)
    before = dump(db)
    assert delete_channel(db, "refuse", wake=K.wake) == [2, 5]
    assert_unchanged(before, dump(db))
    assert heard() == []


def test_delete_channel_with_an_empty_queue(db, heard):
    """Running, claimed, delayed or failed tasks do not keep a channel: the scripts
    that give them back later bury them (see REQUEUE, REAP, PROMOTE)."""
    db.sadd(K.running(CHAN), RAW)
    db.lpush(K.processing(NODE, CHAN), RAW)
    db.zadd(K.delayed, {OTHER_RAW: 100})
    db.hset(K.failed(CHAN), "f", "{}")
    db.set(FLAG, "1", ex=1800)
    before = state(db)
    db.hset(K.stats(CHAN), "finished:succeeded", 3)   # its statistics go with it
    assert delete_channel(db, "refuse", wake=K.wake) == [1, 0]
    assert state(db) == {**before, K.channels: channels_but(CHAN)}
    assert heard() == [RELOAD]   # every node stops the channel now
    assert delete_channel(db, "refuse", wake=K.wake) == [0, 0]   # already gone
    assert heard() == []
    # the other modes too; no wake-up channel: nobody told
    for mode, to in (("move", "other"), ("drop", "")):
        reset(db)
        assert delete_channel(db, mode, to) == [1, 0]
        assert state(db) == {K.channels: channels_but(CHAN)}   # no dead letter, no queue
    assert heard() == []


def test_delete_channel_moves_the_waiting_tasks_behind_the_others(db, heard):
    waiting(db)
    assert delete_channel(db, "move", "other", wake=K.wake) == [1, 5]
    got = state(db)
    # taken from the right: o1, o2, then c's tasks in their order
    assert got == {**LEFT, K.channels: channels_but(CHAN),
                   K.queue("other"): [*QUEUED[::-1], "o2", "o1"],
                   K.record("c1"): {"id": "c1", **C_RECORD, "channel": "other"},
                   K.record("c2"): {"id": "c2", **C_RECORD, "channel": "other"}}
    assert db.ttl(K.record("c1")) == -1
    assert heard() == [K.queue("other"), RELOAD]


def test_delete_channel_moves_in_batches(db, heard):
    waiting(db)
    assert delete_channel(db, "move", "other", batch=2, wake=K.wake) == [4, 2]
    assert value(db, K.queue(CHAN)) == [C5, C4, C3]
    assert value(db, K.queue("other")) == [C2, C1, "o2", "o1"]
    assert value(db, K.channels) == CHANNELS   # not deleted yet: pushes still go in
    assert not db.exists(K.distinct(CHAN, "t1"))
    assert db.exists(K.distinct(CHAN, "sleep 3"))   # not moved yet: kept
    assert db.hget(K.record("c1"), "channel") == "other"
    assert heard() == [K.queue("other")]
    db.lpush(K.queue(CHAN), "late")   # pushed between two calls: taken with the rest
    assert delete_channel(db, "move", "other", batch=2, wake=K.wake) == [4, 2]
    assert heard() == [K.queue("other")]
    assert delete_channel(db, "move", "other", batch=2, wake=K.wake) == [1, 2]
    assert heard() == [K.queue("other"), RELOAD]
    assert state(db) == {**LEFT, K.channels: channels_but(CHAN),
                         K.queue("other"): ["late", *QUEUED[::-1], "o2", "o1"],
                         K.record("c1"): {"id": "c1", **C_RECORD, "channel": "other"},
                         K.record("c2"): {"id": "c2", **C_RECORD, "channel": "other"}}


def test_delete_channel_a_batch_the_size_of_the_queue_deletes_at_once(db):
    waiting(db)
    assert delete_channel(db, "drop", batch=5) == [1, 5]
    assert value(db, K.channels) == channels_but(CHAN)
    assert not db.exists(K.queue(CHAN))


def test_delete_channel_drops_the_waiting_tasks(db, heard):
    waiting(db)
    t0 = now(db)
    assert delete_channel(db, "drop", wake=K.wake) == [1, 5]
    t1 = now(db)
    # the oldest buried first: the newest letter is the newest task
    assert letters(db, t0, t1) == [{"entry": raw, "reason": gone(CHAN), "node": NODE}
                                   for raw in QUEUED[::-1]]
    got = state(db)
    del got[K.dead]
    for task_id in ("c1", "c2"):
        closed(got[K.record(task_id)], gone(CHAN), t0, t1)
        assert TTL - 10 <= db.ttl(K.record(task_id)) <= TTL
    assert got == {**LEFT, K.channels: channels_but(CHAN), K.queue("other"): ["o2", "o1"],
                   **{K.record(task_id): {"id": task_id, **C_RECORD, "status": "canceled",
                                          "error": gone(CHAN)} for task_id in ("c1", "c2")}}
    assert db.ttl(K.record("c5")) == -1
    assert heard() == [RELOAD]   # no queue got entries


def test_delete_channel_drops_in_batches_and_trims_the_dead_letters(db):
    waiting(db)
    db.rpush(K.dead, "old")
    db.set(K.dead_trimmed, "10")
    assert delete_channel(db, "drop", batch=3, most=3) == [4, 3]
    assert [json.loads(text)["entry"] for text in db.lrange(K.dead, 0, -1)] == [C3, C2, C1]
    assert db.get(K.dead_trimmed) == "11"   # "old"
    assert value(db, K.queue(CHAN)) == [C5, C4]
    assert value(db, K.channels) == CHANNELS
    assert delete_channel(db, "drop", batch=3, most=3) == [1, 2]
    assert [json.loads(text)["entry"] for text in db.lrange(K.dead, 0, -1)] == [C5, C4, C3]
    assert db.get(K.dead_trimmed) == "13"
    assert db.ttl(K.dead_trimmed) == -1
    assert value(db, K.channels) == channels_but(CHAN)


CH1, CH2 = high_entry("ch1", task="th1"), high_entry("ch2", task="th2")
HIGH_QUEUED = [CH1, CH2]   # the oldest first


def waiting_high(db):
    """As ``waiting``, and two high tasks wait in channel c (with records and
    distinct flags), one in the high queue of 'other'."""
    waiting(db)
    db.lpush(K.queue_high(CHAN), *HIGH_QUEUED)
    for task_id in ("ch1", "ch2"):
        db.hset(K.record(task_id), mapping={"id": task_id, **C_RECORD})
    for name in ("th1", "th2"):
        db.set(K.distinct(CHAN, name), "1", ex=1800)
    db.lpush(K.queue_high("other"), "oh1")


def moved(*task_ids: str) -> dict:
    """The records of these tasks moved to channel 'other'."""
    return {K.record(task_id): {"id": task_id, **C_RECORD, "channel": "other"}
            for task_id in task_ids}


def test_delete_channel_refused_while_tasks_wait_in_either_queue(db, heard):
    waiting_high(db)
    before = dump(db)
    assert delete_channel(db, "refuse", wake=K.wake) == [2, 7]   # both lists counted
    assert_unchanged(before, dump(db))
    db.delete(K.queue(CHAN))   # only high tasks wait
    before = dump(db)
    assert delete_channel(db, "refuse", wake=K.wake) == [2, 2]
    assert_unchanged(before, dump(db))
    assert heard() == []


def test_delete_channel_moves_high_tasks_into_the_high_queue_first(db, heard):
    waiting_high(db)
    assert delete_channel(db, "move", "other", wake=K.wake) == [1, 7]
    # each behind what waits in the target's list of the same kind, in order
    assert state(db) == {**LEFT, K.channels: channels_but(CHAN),
                         K.queue("other"): [*QUEUED[::-1], "o2", "o1"],
                         K.queue_high("other"): [*HIGH_QUEUED[::-1], "oh1"],
                         **moved("c1", "c2", "ch1", "ch2")}   # flags th1, th2 gone too
    assert heard() == [K.queue("other"), RELOAD]
    # the next claims of 'other' take oh1, ch1, ch2, then o1
    claims = run(db, "CLAIM", *claim_call(4, chan="other"))
    assert [claim[0] for claim in claims] == ["oh1", CH1, CH2, "o1"]


def test_delete_channel_moves_only_high_tasks(db, heard):
    """Only high tasks wait: a batch that leaves one in the high queue asks for more
    (the empty queue does not end it); a batch their size deletes at once."""
    waiting_high(db)
    db.delete(K.queue(CHAN))
    third = high_entry("ch3", task="th3")
    db.lpush(K.queue_high(CHAN), third)
    assert delete_channel(db, "move", "other", batch=2, wake=K.wake) == [4, 2]
    assert value(db, K.queue_high(CHAN)) == [third]
    assert value(db, K.channels) == CHANNELS   # not deleted yet
    assert delete_channel(db, "move", "other", batch=1, wake=K.wake) == [1, 1]
    assert value(db, K.queue_high("other")) == [third, *HIGH_QUEUED[::-1], "oh1"]
    assert value(db, K.queue("other")) == ["o2", "o1"]
    assert value(db, K.channels) == channels_but(CHAN)
    # one message a call wakes the target channel (it names its queue)
    assert heard() == [K.queue("other"), K.queue("other"), RELOAD]
    # the same, their number in one batch
    reset(db)
    waiting_high(db)
    db.delete(K.queue(CHAN))
    assert delete_channel(db, "drop", batch=2) == [1, 2]
    assert not db.exists(K.queue_high(CHAN))
    assert value(db, K.channels) == channels_but(CHAN)


def test_delete_channel_batches_across_both_queues(db, heard):
    """ARGV[4] counts entries of both lists: the high ones first; a batch that
    empties the high queue but not the queue asks for more."""
    waiting_high(db)
    assert delete_channel(db, "move", "other", batch=2, wake=K.wake) == [4, 2]
    assert not db.exists(K.queue_high(CHAN))
    assert value(db, K.queue(CHAN)) == QUEUED[::-1]
    assert value(db, K.queue_high("other")) == [*HIGH_QUEUED[::-1], "oh1"]
    assert value(db, K.queue("other")) == ["o2", "o1"]
    assert value(db, K.channels) == CHANNELS   # not deleted yet
    assert heard() == [K.queue("other")]
    assert delete_channel(db, "move", "other", batch=3, wake=K.wake) == [4, 3]
    assert value(db, K.queue(CHAN)) == [C5, C4]
    late = high_entry("late", task="tl")   # pushed between two calls: taken first
    db.lpush(K.queue_high(CHAN), late)
    assert delete_channel(db, "move", "other", batch=2, wake=K.wake) == [4, 2]
    assert not db.exists(K.queue_high(CHAN))
    assert value(db, K.queue(CHAN)) == [C5]
    assert delete_channel(db, "move", "other", batch=2, wake=K.wake) == [1, 1]
    assert heard() == [K.queue("other")] * 3 + [RELOAD]
    assert state(db) == {**LEFT, K.channels: channels_but(CHAN),
                         K.queue("other"): [*QUEUED[::-1], "o2", "o1"],
                         K.queue_high("other"): [late, *HIGH_QUEUED[::-1], "oh1"],
                         **moved("c1", "c2", "ch1", "ch2")}


def test_delete_channel_drops_the_high_tasks_first(db, heard):
    waiting_high(db)
    t0 = now(db)
    assert delete_channel(db, "drop", batch=3, wake=K.wake) == [4, 3]   # ch1, ch2, c1
    assert delete_channel(db, "drop", batch=3, wake=K.wake) == [4, 3]
    assert delete_channel(db, "drop", batch=3, wake=K.wake) == [1, 1]
    t1 = now(db)
    # buried the oldest first, the high ones before: the newest letter is c5
    assert letters(db, t0, t1) == [{"entry": raw, "reason": gone(CHAN), "node": NODE}
                                   for raw in [*QUEUED[::-1], *HIGH_QUEUED[::-1]]]
    got = state(db)
    del got[K.dead]
    for task_id in ("c1", "c2", "ch1", "ch2"):
        closed(got[K.record(task_id)], gone(CHAN), t0, t1)
        assert TTL - 10 <= db.ttl(K.record(task_id)) <= TTL
    assert got == {**LEFT, K.channels: channels_but(CHAN), K.queue("other"): ["o2", "o1"],
                   K.queue_high("other"): ["oh1"],
                   **{K.record(task_id): {"id": task_id, **C_RECORD, "status": "canceled",
                                          "error": gone(CHAN)}
                      for task_id in ("c1", "c2", "ch1", "ch2")}}
    assert heard() == [RELOAD]


@pytest.mark.parametrize("high", [False, True])
@pytest.mark.parametrize("mode,to", [("refuse", ""), ("move", "other"), ("drop", "")])
def test_delete_channel_refuses_wrong_types(db, mode, to, high):
    def setup():
        (waiting_high if high else waiting)(db)
        if mode == "refuse":   # else it refuses with code 2, writing nothing
            db.delete(K.queue(CHAN), K.queue_high(CHAN))

    wanted = {K.channels: "hash", K.queue(CHAN): "list", K.dead: "list",
              K.queue_high(CHAN): "list",
              **({K.queue(to): "list", K.queue_high(to): "list"} if to else {})}
    assert_refuses(db, setup, "DELETE_CHANNEL", *delete_call(mode, to), wanted)


@pytest.mark.parametrize("spoil", SPOILED_COUNTER)
@pytest.mark.parametrize("mode,to", [("move", "other"), ("drop", "")])
def test_delete_channel_refuses_a_trimmed_counter_that_is_not_a_number(db, spoil, mode, to):
    assert_counter_refused(db, lambda: waiting(db), "DELETE_CHANNEL", *delete_call(mode, to),
                           spoil)


# -- NOTE_PIDS -----------------------------------------------------------------
def test_note_pids_only_in_records_running_on_this_node(db):
    records = {"a": {"id": "a", "status": "running", "node": NODE},               # noted
               "b": {"id": "b", "status": "running", "node": OTHER},              # reaped
               "c": {"id": "c", "status": "queued", "node": NODE},                # requeued
               "d": {"id": "d", "status": "succeeded", "node": NODE, "pid": "1"},  # ended
               "e": {"id": "e", "status": "running"},                             # no node
               "f": {"id": "f", "status": "running", "node": NODE, "pid": "1"}}   # again
    for task_id, record in records.items():
        db.hset(K.record(task_id), mapping=record)
    db.expire(K.record("d"), 100)
    db.set(K.record("s"), "x")   # another type
    ids = [*records, "s", "m"]   # m: no record at all
    assert run(db, "NOTE_PIDS", [K.record(task_id) for task_id in ids],
               [NODE, *range(101, 101 + len(ids))]) == 1
    assert state(db) == {**{K.record(task_id): record for task_id, record in records.items()},
                         K.record("a"): {**records["a"], "pid": "101"},
                         K.record("f"): {**records["f"], "pid": "106"},
                         K.record("s"): "x"}   # no record made for m
    assert 90 <= db.ttl(K.record("d")) <= 100
    assert db.ttl(K.record("a")) == -1
    assert run(db, "NOTE_PIDS", [], [NODE]) == 1


def test_a_start_forgets_the_pid_of_an_earlier_attempt(db):
    """The pid a node noted stays with its attempt: reaped and claimed by another
    node, the task has none until that node notes its own; the first node's late
    note does not write."""
    assert enqueue(db, RAW, "a") == 1
    assert run(db, "CLAIM", *claim_call()) == [[RAW, "a", 1, 0, 0, 0]]
    assert run(db, "NOTE_PIDS", [K.record("a")], [NODE, 4242]) == 1
    assert db.hget(K.record("a"), "pid") == "4242"
    assert run(db, "REAP", *reap_call(chans=(CHAN,))) == 1
    assert run(db, "CLAIM", *claim_call(node=OTHER)) == [[RAW, "a", 2, 1, 0, 0]]
    assert db.hget(K.record("a"), "pid") is None
    assert run(db, "NOTE_PIDS", [K.record("a")], [NODE, 4242]) == 1   # too late
    assert db.hget(K.record("a"), "pid") is None
    assert run(db, "NOTE_PIDS", [K.record("a")], [OTHER, 5151]) == 1
    assert db.hget(K.record("a"), "pid") == "5151"
    # START (an entry CLAIM left alone) forgets it too
    db.hset(K.record("a"), "status", "queued")
    db.lpush(K.processing(NODE, CHAN), RAW)
    assert run(db, "START", *start_call(RAW)) == [3, 1, 0, 0]
    assert db.hget(K.record("a"), "pid") is None
    assert db.hget(K.record("a"), "node") == NODE


# -- a whole life ---------------------------------------------------------------
def test_a_task_through_every_script(db):
    """Delayed, promoted, claimed, retried, promoted, claimed, failed, unfailed,
    claimed, done: the record's counters add up along the way."""
    t0 = now(db)
    assert enqueue(db, RAW, "a", distinct=1800, at=t0 + 60) == 2
    assert run(db, "PROMOTE", *promote_call(RAW)) == 1
    assert run(db, "CLAIM", *claim_call()) == [[RAW, "a", 1, 0, 0, 0]]
    assert run(db, "FINISH", FINISH_KEYS, finish_args("retry", {"exit_code": 1})) == 2
    assert run(db, "PROMOTE", *promote_call(RAW)) == 1
    assert run(db, "CLAIM", *claim_call()) == [[RAW, "a", 2, 0, 0, 1]]
    assert run(db, "FINISH", FINISH_KEYS, finish_args("failed", {"status": "failed"})) == 1
    assert not db.exists(FLAG)
    assert enqueue(db, RAW, "a") == 3   # parked: the id stays in use
    assert run(db, "UNFAIL", UNFAIL_KEYS, unfail_args("1")) == 1
    assert run(db, "CLAIM", *claim_call()) == [[RAW, "a", 3, 0, 0, 0]]
    assert run(db, "FINISH", FINISH_KEYS, finish_args("done", {"status": "succeeded"})) == 1
    assert set(state(db)) == {K.record("a")}
    assert db.hget(K.record("a"), "status") == "succeeded"
    assert 590 <= db.ttl(K.record("a")) <= 600


def test_a_high_task_through_every_script(db):
    """The same life for a high task, given its high queue where broker.py gives it:
    each time it waits it runs before the normal task that waited longer."""
    raw, normal = high_entry("a"), entry("n", task="echo n")
    assert enqueue(db, normal, "n", name="echo n") == 1
    t0 = now(db)
    assert enqueue(db, raw, "a", high=True, distinct=1800, at=t0 + 60) == 2
    assert run(db, "PROMOTE", *promote_call(raw, high=True)) == 1
    assert run(db, "CLAIM", *claim_call()) == [[raw, "a", 1, 0, 0, 0]]
    assert run(db, "FINISH", FINISH_KEYS, finish_args_of(raw, "retry", {"exit_code": 1})) == 2
    assert run(db, "PROMOTE", *promote_call(raw, high=True)) == 1
    assert run(db, "CLAIM", *claim_call()) == [[raw, "a", 2, 0, 0, 1]]
    assert run(db, "REAP", *reap_call(chans=(CHAN,))) == 1   # its node died
    assert value(db, K.queue_high(CHAN)) == [raw]
    assert run(db, "CLAIM", *claim_call(node=OTHER)) == [[raw, "a", 3, 1, 0, 1]]
    theirs = [K.processing(OTHER, CHAN), *FINISH_KEYS[1:]]
    assert run(db, "FINISH", theirs, finish_args_of(raw, "failed", {"status": "failed"})) == 1
    assert run(db, "UNFAIL", UNFAIL_KEYS, unfail_args("1")) == 1
    assert value(db, K.queue_high(CHAN)) == [raw]
    assert run(db, "CLAIM", *claim_call()) == [[raw, "a", 4, 0, 0, 0]]
    assert run(db, "FINISH", FINISH_KEYS, finish_args_of(raw, "done", {"status": "succeeded"})) == 1
    assert run(db, "CLAIM", *claim_call()) == [[normal, "n", 1, 0, 0, 0]]   # at last
    assert set(state(db)) == {K.record("a"), K.record("n"), K.processing(NODE, CHAN),
                              K.running(CHAN)}
    assert db.hget(K.record("a"), "status") == "succeeded"


# -- wake-up messages and WAITING ---------------------------------------------
def test_scripts_that_queue_a_task_publish_its_queue_key(db, heard):
    """Every script that puts an entry into a channel queue tells the nodes which
    queue, on the wake-up channel it is given; one that queues nothing is silent.
    ENQUEUE tells only when the queue was empty: a queue that held entries has
    been told of already, and whoever takes them claims the next one itself."""
    raw = entry("a")
    queued_here = f"{K.queue(CHAN)}\n{NODE}"   # ENQUEUE says which node queued it
    assert enqueue(db, raw, "a", wake=K.wake) == 1
    assert heard() == [queued_here]
    assert enqueue(db, entry("b", task="later"), "b", name="later", at=4e9, wake=K.wake) == 2
    assert enqueue(db, entry("c"), "c", distinct=60, wake=K.wake) == 1   # behind "a": silent
    assert heard() == []
    db.delete(K.queue(CHAN))
    assert enqueue(db, entry("c2"), "c2", wake=K.wake) == 1
    assert enqueue(db, entry("d"), "d", distinct=60, wake=K.wake) == 0   # refused: distinct
    assert enqueue(db, entry("e"), "e") == 1                             # no channel given
    assert enqueue(db, entry("g", chan=GONE), "g", chan=GONE, wake=K.wake) == 6   # deleted
    assert heard() == [queued_here]                                      # only for "c2"
    # a claimed entry given back
    db.lpush(K.processing(NODE, CHAN), raw)
    assert run(db, "REQUEUE", *requeue_call(raw, "1", K.wake)) == 1
    assert heard() == [K.queue(CHAN)]
    assert run(db, "REQUEUE", *requeue_call(raw, "1", K.wake)) == 0   # not ours: silent
    # a due delayed task
    db.zadd(K.delayed, {RAW: 1})
    assert run(db, "PROMOTE", *promote_call(RAW, K.wake)) == 1
    assert run(db, "PROMOTE", *promote_call(RAW, K.wake)) == 0
    assert heard() == [K.queue(CHAN)]
    # a failed task retried, not one deleted
    parked(db)
    assert run(db, "UNFAIL", UNFAIL_KEYS, unfail_args("0", 0, K.wake)) == 1
    assert heard() == []
    parked(db)
    assert run(db, "UNFAIL", UNFAIL_KEYS, unfail_args("1", 0, K.wake)) == 1
    assert heard() == [K.queue(CHAN)]


def test_scripts_that_queue_a_high_task_publish_the_high_queue_key(db, heard):
    """As above for a high task: the message names the high queue (a node wakes the
    channel for it as for its queue)."""
    raw = high_entry("a")
    assert enqueue(db, raw, "a", high=True, wake=K.wake) == 1
    assert heard() == [f"{K.queue_high(CHAN)}\n{NODE}"]
    db.delete(K.queue_high(CHAN))
    db.lpush(K.processing(NODE, CHAN), raw)
    assert run(db, "REQUEUE", *requeue_call(raw, "1", K.wake, high=True)) == 1
    assert heard() == [K.queue_high(CHAN)]
    db.delete(K.queue_high(CHAN))
    db.zadd(K.delayed, {raw: 1})
    assert run(db, "PROMOTE", *promote_call(raw, K.wake, high=True)) == 1
    assert heard() == [K.queue_high(CHAN)]
    db.delete(K.queue_high(CHAN))
    parked(db, raw)
    assert run(db, "UNFAIL", UNFAIL_KEYS, unfail_args("1", 0, K.wake)) == 1
    assert heard() == [K.queue_high(CHAN)]
    assert value(db, K.queue_high(CHAN)) == [raw] and not db.exists(K.queue(CHAN))


def test_reap_publishes_each_queue_it_gives_entries_back_to(db, heard):
    db.sadd(K.nodes, OTHER)
    db.lpush(K.processing(OTHER, "x"), "echo x")
    # y: nothing to give back, no message
    assert run(db, "REAP", *reap_call(node=OTHER, chans=("x", "y"), me=NODE,
                                      wake=K.wake)) == 1
    assert heard() == [K.queue("x")]
    assert db.lrange(K.queue("x"), 0, -1) == ["echo x"]


def test_waiting_names_the_queues_that_hold_entries(db):
    db.lpush(K.queue("b"), "echo b")
    db.lpush(K.queue("d"), "echo d1", "echo d2")
    db.set(K.queue("e"), "x")   # another type: skipped, not an error
    queues = [K.queue(chan) for chan in "abcde"]
    assert run(db, "WAITING", queues, [K.high]) == [2, 4]
    assert run(db, "WAITING", [], [K.high]) == []


def test_waiting_sees_the_high_queues_too(db):
    """A channel counts once when its queue or its high queue holds entries (or
    both); a list of another type is skipped, the other list still looked at."""
    db.lpush(K.queue_high("a"), high_entry("h", chan="a"))   # only high entries
    db.lpush(K.queue("b"), "echo b")
    db.lpush(K.queue_high("b"), high_entry("h", chan="b"))   # both: once
    db.set(K.queue_high("c"), "x")                           # nothing usable
    db.set(K.queue("d"), "x")
    db.lpush(K.queue_high("d"), high_entry("h", chan="d"))
    db.set(K.queue_high("e"), "x")
    db.lpush(K.queue("e"), "echo e")
    queues = [K.queue(chan) for chan in "abcdef"]
    before = dump(db)
    assert run(db, "WAITING", queues, [K.high]) == [1, 2, 4, 5]
    assert_unchanged(before, dump(db))   # read only


def test_digest_changes_with_any_field_or_value_of_the_channels(db):
    db.delete(K.channels)
    empty = run(db, "DIGEST", [K.channels])
    db.hset(K.channels, mapping={"a": '{"worker_count": 1}', "b": '{"worker_count": 2}'})
    first = run(db, "DIGEST", [K.channels])
    assert first == run(db, "DIGEST", [K.channels]) != empty   # read only: stable
    db.hset(K.channels, "b", '{"worker_count": 3}')
    changed = run(db, "DIGEST", [K.channels])
    db.hset(K.channels, "c", "{}")
    added = run(db, "DIGEST", [K.channels])
    assert len({first, changed, added}) == 3
    db.delete(K.channels)
    db.set(K.channels, "x")
    with pytest.raises(redis.ResponseError, match=f"WRONGTYPE {K.channels} holds a string"):
        run(db, "DIGEST", [K.channels])


def test_counts_gives_running_high_and_queued_per_channel(db):
    """Three numbers a channel: its running set's size, its high queue's length,
    its queue's length (given the keys ``Keys.running_and_queue`` makes)."""
    db.sadd(K.running("a"), "x", "y")
    db.lpush(K.queue("a"), "1", "2", "3")
    db.lpush(K.queue_high("a"), "h1")
    db.lpush(K.queue("c"), "1")
    db.lpush(K.queue_high("d"), "h1", "h2")   # only high entries
    keys = K.running_and_queue("abcd")
    assert keys == [key for chan in "abcd" for key in (K.running(chan), K.queue(chan))]
    before = dump(db)
    assert run(db, "COUNTS", keys, [K.high]) == [2, 1, 3, 0, 0, 0, 0, 0, 1, 0, 2, 0]
    assert_unchanged(before, dump(db))
    assert run(db, "COUNTS", [], [K.high]) == []


# -- FINISH's statistics -------------------------------------------------------------
STATS = K.stats(CHAN)


def test_finish_counts_outcomes_and_durations(db):
    running(db)
    assert run(db, "FINISH", [*FINISH_KEYS, STATS], finish_args(
        "done", {"status": "succeeded", "duration": "0.042000"})) == 1
    db.lpush(K.processing(NODE, CHAN), RAW)   # claimed again, for a second attempt
    assert run(db, "FINISH", [*FINISH_KEYS, STATS], finish_args(
        "retry", {"status": "failed", "duration": "7.5"})) == 2
    db.lpush(K.processing(NODE, CHAN), RAW)
    assert run(db, "FINISH", [*FINISH_KEYS, STATS], finish_args(
        "done", {"status": "canceled"})) == 1   # no duration: counted, not timed
    db.lpush(K.processing(NODE, CHAN), RAW)
    assert run(db, "FINISH", [*FINISH_KEYS, STATS], finish_args(
        "failed", {"status": "timed_out", "duration": "99999"})) == 1
    stats = db.hgetall(STATS)
    ring = {name: stats.pop(name) for name in list(stats) if not name.startswith(
        ("finished:", "bucket:", "duration_"))}
    assert stats == {
        "finished:succeeded": "1", "finished:retried": "1", "finished:canceled": "1",
        "finished:timed_out": "1", "bucket:0.05": "1", "bucket:10": "1", "bucket:+Inf": "1",
        "duration_sum": "100006.542000", "duration_count": "3"}
    # this minute's slot of the ring: three tasks finished (the retry is not one of
    # them), two of them not succeeded (a minute may have turned meanwhile: two slots)
    minute = int(now(db) // 60)
    slots = {int(name.split(":")[1]) for name in ring}
    assert slots <= {minute % scripts.MINUTES, (minute - 1) % scripts.MINUTES}
    assert sum(int(ring[f"done:{slot}"]) for slot in slots) == 3
    assert sum(int(ring[f"failed:{slot}"]) for slot in slots) == 2
    assert {int(ring[f"minute:{slot}"]) for slot in slots} <= {minute, minute - 1}


def test_finish_ring_starts_a_slot_over_for_a_new_minute(db):
    minute = int(now(db) // 60)
    # this minute's slot and the next (should the minute turn meanwhile) still count
    # the same minutes an hour ago: the one FINISH counts in starts over at 1
    for past in (minute, minute + 1):
        slot = past % scripts.MINUTES
        db.hset(STATS, mapping={f"minute:{slot}": past - scripts.MINUTES,
                                f"done:{slot}": 40, f"failed:{slot}": 7})
    running(db)
    assert run(db, "FINISH", [*FINISH_KEYS, STATS], finish_args(
        "done", {"status": "succeeded", "duration": "1"})) == 1
    slots = {past: db.hmget(STATS, *(f"{field}:{past % scripts.MINUTES}"
                                      for field in ("minute", "done", "failed")))
             for past in (minute, minute + 1)}
    fresh = [past for past, got in slots.items() if got == [str(past), "1", "0"]]
    assert len(fresh) == 1, slots   # counted in one, started over; the other untouched
    (other,) = {minute, minute + 1} - set(fresh)
    assert slots[other] == [str(other - scripts.MINUTES), "40", "7"]


def test_finish_statistics_never_stop_a_finish(db):
    running(db)
    db.hset(STATS, "finished:succeeded", "not a number")   # a hand edit
    assert run(db, "FINISH", [*FINISH_KEYS, STATS],
               finish_args("done", {"status": "succeeded", "duration": "1"})) == 1
    assert db.hgetall(STATS) == {"finished:succeeded": "not a number"}   # left alone
    assert db.hget(K.record("a"), "status") == "succeeded"
    db.delete(STATS)
    db.set(STATS, "a string")
    db.lpush(K.processing(NODE, CHAN), RAW)
    assert run(db, "FINISH", [*FINISH_KEYS, STATS],
               finish_args("done", {"status": "succeeded", "duration": "1"})) == 1
    assert db.get(STATS) == "a string"
    # a late ack counts nothing
    db.delete(STATS)
    assert run(db, "FINISH", [*FINISH_KEYS, STATS],
               finish_args("done", {"status": "succeeded", "duration": "1"})) == 0
    assert not db.exists(STATS)
