"""Property-based tests (hypothesis): bad input is never silently dropped.

Each entry is queued, refused as a duplicate or dead-lettered with a reason,
checked on random input rather than on the examples we thought of. Three
layers, fastest first:

- the decoder (``from_producer``, ``from_queue``), pure: any entry becomes a
  task or raises ``BadTask`` with a reason, never another exception, and a
  task it makes reads back (``from_queue``) as the same argv and id;
- the routing step (``Scheduler._route``) in this process against a private
  redis-server: every entry of a batch ends queued (or delayed) with its
  record, refused as a distinct duplicate, or in the dead-letter list with a
  reason; the staging list is empty and every good entry is queued;
- the daemon as a real process: good entries run and succeed beside bad ones,
  which are all dead-lettered; entries pushed straight into a channel queue
  (as the Go daemon's producers did) each run or are dead-lettered, and the
  channel's workers live on.

Entries are bytes, as producers write them; the daemon reads them with
redis-py's ``decode_responses`` and ``surrogateescape`` (``redis_text``).
Examples are derandomized so that CI sees the same ones every run; set
``COYOTES_FUZZ=deep`` for ten times as many, random ones, when hunting.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import random
import shutil
import uuid

import gevent.event
import pytest
import redis
from conftest import Coyotes, RedisServer, wait_until
from hypothesis import HealthCheck, Phase, example, given, note, settings
from hypothesis import strategies as st

from coyotes_lib.broker import DEAD_ENTRY_MAX, Broker
from coyotes_lib.config import Config
from coyotes_lib.connection import connect
from coyotes_lib.keys import Keys
from coyotes_lib.model import ChannelSpec
from coyotes_lib.scheduler import MAX_ENTRY, Scheduler
from coyotes_lib.task import POLICY_LIMITS, BadTask, Policy, from_producer, from_queue

DEEP = os.environ.get("COYOTES_FUZZ") == "deep"
# deep and long entries are meant to be large; hypothesis warns when it prints one
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")


def profile(examples: int, **more) -> settings:
    """Deadline off (a slow shared machine is not a failure), derandomized for CI."""
    return settings(max_examples=examples * (10 if DEEP else 1), deadline=None,
                    derandomize=not DEEP, database=None, print_blob=True, **more)


PURE = profile(1000, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])
ROUTING = profile(150, suppress_health_check=list(HealthCheck))
# one daemon serves every example: a failure may stem from an earlier one, so no
# shrinking (each try would wait out a timeout); the failing example is printed whole
DAEMON = profile(25, suppress_health_check=list(HealthCheck),
                 phases=[Phase.explicit, Phase.reuse, Phase.generate])

K = Keys()
NODE = "fuzz-node"
# every key a producer's entry may hold; policy keys added later are fuzzed as well
FIELDS = ("task", "chan", "id", "command", "execute_at", "ts", "argv", *POLICY_LIMITS)
FINAL = {"succeeded", "failed", "timed_out", "canceled", "killed"}


# -- how entries look to the daemon ------------------------------------------
def redis_text(entry: bytes) -> str:
    """An entry as redis-py gives it to the daemon."""
    return entry.decode("utf-8", "surrogateescape")


def written(text: str) -> bytes:
    """What a producer writes for ``text``: UTF-8, a lone surrogate as its three
    bytes (what a careless UTF-16 to UTF-8 converter makes of it)."""
    return text.encode("utf-8", "surrogatepass")


def encodable(text: str) -> bool:
    try:
        text.encode("utf-8", "surrogateescape")
        return True
    except UnicodeEncodeError:
        return False


# -- JSON text of any shape, including what json.dumps never writes -----------
class Raw(str):
    """A JSON token written as it is (NaN, 1e999, a 5000-digit number, "\\ud800")."""


class Obj(tuple):
    """A JSON object as (key, value) pairs: a key may come twice."""


def to_json(value, ascii_only: bool) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, Obj):
        return "{" + ",".join(f"{to_json(k, ascii_only)}:{to_json(v, ascii_only)}"
                              for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_json(v, ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)   # NaN and Infinity for floats


SPECIAL_CHARS = "\0\x01\x1b\t\n\r \"'\\/\x7f\x85\u2028\ufeff\udc80\udcff\ud800\udfffé中{}[]:,$`;|&"
chars = st.one_of(st.characters(), st.sampled_from(SPECIAL_CHARS))
texts = st.text(chars, max_size=12)
numbers = st.one_of(
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1e-999", "-0", "0.0",
                     "1E+2", "2.5", "-1", "4294967296", "18446744073709551616"]),
    st.integers(20, 5000).map(lambda n: "9" * n),            # past float, past int's 4300 digits
    st.integers(300, 400).map(lambda n: "1" + "0" * n + ".5"),
).map(Raw)
ESCAPES = ["\\ud800", "\\udbff", "\\udc00", "\\udc80", "\\udcff", "\\udfff", "\\ud83d\\ude00",
           "\\ude00\\ud83d", "\\u0000", "\\u001b", "\\n", "\\\\", '\\"', "\\/", "\\u00e9", "a", " "]
escaped = st.lists(st.sampled_from(ESCAPES), max_size=5).map(lambda p: Raw('"' + "".join(p) + '"'))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), texts, numbers,
                    escaped)
keys = st.one_of(texts, st.sampled_from(FIELDS), escaped)
json_values = st.recursive(
    scalars,
    lambda kids: st.one_of(st.lists(kids, max_size=4),
                           st.lists(st.tuples(keys, kids), max_size=4).map(Obj)),
    max_leaves=12)
wrong = json_values   # for a field, a value of any type (most of them wrong)

# producer entries: a good one, some fields of which take values of any type
plausible = {
    "task": st.sampled_from(["true", "echo hi", 'echo "a b"', "echo 'unclosed", "  ", "",
                             "php artisan report:daily --force", "true\0x", "\\", "a" * 70000]),
    "chan": st.sampled_from(["default", "biz", "cron", "plain", "nowhere", "", "Default",
                             "default ", "default\udcff"]),
    "id": st.sampled_from(["x-1", "", "a b", "a/b", "x" * 128, "x" * 129, "é", "\t", "0",
                           "\udcff", "a\nb"]),
    "command": st.fixed_dictionaries({}, optional={
        "name": st.one_of(st.sampled_from(["true", "echo", "", " ", "a\0b"]), wrong),
        "args": st.one_of(st.lists(st.one_of(scalars, wrong), max_size=4), wrong)}).map(
            lambda d: Obj(d.items())),
    "execute_at": st.one_of(st.sampled_from([0, 1, -1, 1e11, 1e11 - 1, 4102444800, 1.5]),
                            st.floats()),
    "ts": st.integers(0, 2**32),
    "timeout": st.one_of(st.sampled_from([0, 0.5, 7 * 86400, 7 * 86400 + 1, "5", "x"]),
                         st.floats(), st.integers()),
    "retries": st.one_of(st.integers(-5, 200), st.sampled_from(["3", 1.5, True])),
    "retry_backoff": st.one_of(st.floats(), st.integers(), st.just("1")),
    "retry_max": st.one_of(st.floats(), st.integers(), st.just("1")),
    "retry_on": st.one_of(st.lists(st.one_of(st.integers(-1, 300), texts, st.floats()),
                                   max_size=3), st.sampled_from(["1,2", "a", "", "1,,2"])),
    "kill_group": st.sampled_from([True, False, "true", "false", 1, 0, "1", "yes", 2, None]),
    "argv": st.lists(texts, max_size=3),
}
changes = st.lists(st.sampled_from(FIELDS), max_size=3, unique=True).flatmap(
    lambda fields: st.fixed_dictionaries({f: st.one_of(plausible.get(f, wrong), wrong)
                                          for f in fields}))
producer_objects = st.builds(
    lambda base, changed, dup: Obj([*base.items(), *changed.items(), *dup]),
    st.fixed_dictionaries({"task": st.just("true")}, optional={"chan": st.just("default")}),
    changes, st.lists(st.tuples(st.sampled_from(FIELDS), wrong), max_size=1))   # a key twice


def nested(depth: int, kind: str, where: str, closed: bool) -> str:
    opening, closing = {"list": ("[", "]"), "object": ('{"a":', "}")}[kind]
    inner = opening * depth + "1" + (closing * depth if closed else "")
    if where == "top":
        return inner
    if where == "args":
        return '{"command": {"name": "true", "args": ' + inner + "}}"
    return '{"task": "true", "' + where + '": ' + inner + "}"


# clear of the parser's limit, which depends on the stack (and hypothesis raises it while
# a test runs): the depths around it are test_nesting_at_the_parsers_limit's
deep_texts = st.builds(nested, st.one_of(st.integers(500, 800), st.integers(2500, 20000)),
                       st.sampled_from(["list", "object"]),
                       st.sampled_from(["top", "task", "id", "ts", "chan", "retry_on", "args",
                                        "command", "other"]),
                       st.booleans())
special_texts = st.sampled_from([
    "", " ", "{", "}", "{}", "[]", "null", "true", "0", '""', '"true"', "{\"task\": \"true\"",
    '{"task": "true"}garbage', '{"task": "true"} ', '\ufeff{"task": "true"}',
    '{"task": "true", "task": {"name": "x"}}', '{"task": "true", "id": "a", "id": 5}',
    '{"task": "true", "execute_at": NaN}', '{"task": "true", "timeout": Infinity}',
    '{"task": "true", "timeout": 1' + "0" * 400 + "}", '{"task": "\\ud800"}',
    '{"\\ud800": 1, "task": "true"}', '{"task": "true", "id": "\\udcff"}',
    '{"command": {"name": "", "args": null}, "task": "true"}',
    '{"command": {"name": "true", "args": [1e400, -0.0, 2.5, true, null]}}',
])
json_texts = st.builds(to_json, json_values, st.booleans())
producer_texts = st.builds(to_json, producer_objects, st.booleans())
random_bytes = st.binary(max_size=40)
wrapped_bytes = st.builds(lambda b, tail: b'{"task": "true ' + b + b'"' + tail,
                          st.binary(max_size=12),
                          st.sampled_from([b"}", b', "chan": "default"}', b"", b',"id":"\xff"}']))

entries = st.one_of(
    random_bytes, wrapped_bytes, *[t.map(written) for t in (
        json_texts, producer_texts, producer_texts, producer_texts, deep_texts, special_texts,
        texts)])


# entries that broke a property once (each is also an explicit example below)
FOUND = [
    b"",   # the empty entry: '' also meant "no source entry" to the scripts
    b'{"task": "true", "timeout": 1' + b"0" * 400 + b"}",   # OverflowError, not BadTask
]
FOUND_IN_QUEUES = [   # queue entries are read with Python's JSON: Infinity passes
    b'{"task": "true", "retries": -Infinity}',
    b'{"task": "true", "timeout": 1e999, "retry_on": [Infinity]}',
]


# -- 1. the decoder ---------------------------------------------------------------
def check_task(task, read_back: bool = True) -> None:
    """A task from_producer made: argv fit for exec, every string fit for Redis, and
    a worker reads back the same task."""
    assert isinstance(task.argv, tuple) and task.argv, task
    assert all(isinstance(a, str) and "\0" not in a for a in task.argv), task.argv
    for text in (task.raw, task.id, task.channel, task.name, *task.argv):
        assert encodable(text), f"{text!r} cannot be written to redis"
    if read_back:
        again = from_queue(task.raw, task.channel)
        assert (again.argv, again.id, again.name) == (task.argv, task.id, task.name)


def producer_property(entry: bytes) -> None:
    raw = redis_text(entry)
    try:
        task = from_producer(raw, "default")
    except BadTask as exc:
        assert str(exc), "a BadTask without a reason"
        return
    check_task(task)


@PURE
@given(entries)
@example(FOUND[1])
def test_producer_entry_is_a_task_or_bad_task(entry):
    producer_property(entry)


@PURE
@given(entries)
@example(FOUND_IN_QUEUES[0])
@example(FOUND_IN_QUEUES[1])
def test_queue_entry_is_a_task_or_bad_task(entry):
    raw = redis_text(entry)
    try:
        task = from_queue(raw, "default")
        Policy().merge(task.payload)   # what a worker does next
    except BadTask as exc:
        assert str(exc), "a BadTask without a reason"
        return
    assert isinstance(task.argv, tuple) and task.argv
    assert all(isinstance(a, str) for a in task.argv)
    assert encodable(task.id) and encodable(task.name)


@PURE
@given(producer_texts.map(written))
def test_producer_fields_of_every_type(entry):
    """Producer-shaped entries only: each known field with values of every type."""
    producer_property(entry)


@pytest.mark.parametrize("field", ["task", "id", "ts", "retry_on", "chan", "command",
                                   "timeout", "other"])
def test_nesting_at_the_parsers_limit(field):
    """Every depth around the deepest the parser takes (outside hypothesis, which
    raises the recursion limit while a test runs): an entry is refused with a reason
    or becomes a task that reads back the same, read at the same stack depth (the
    router's parse and a worker's are about as deep in the daemon)."""
    for depth in range(850, 1100):
        for opening, closing in (("[", "]"), ('{"a":', "}")):
            raw = f'{{"task": "true", "{field}": {opening * depth}1{closing * depth}}}'
            try:
                from_queue(raw, "default")
            except BadTask:
                pass
            try:
                task = from_producer(raw, "default")
            except BadTask:
                continue
            check_task(task, read_back=False)
            again = from_queue(task.raw, task.channel)   # as deep as from_producer was
            assert (again.argv, again.id, again.name) == (task.argv, task.id, task.name)


# -- 2. routing against a real redis ------------------------------------------------
class RecordingBroker(Broker):
    """The real broker, noting each push's outcome (routing reads nothing else back)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.outcomes: list = []

    def push_claiming(self, pushes, claim):
        outcomes, claimed = super().push_claiming(pushes, claim)
        self.outcomes += zip(pushes, outcomes, strict=True)
        return outcomes, claimed


@pytest.fixture(scope="module")
def router(module_redis):
    config = Config(redis_port=module_redis.port, node_id=NODE, concurrent=2)
    broker = RecordingBroker(connect("127.0.0.1", module_redis.port), Keys(), NODE)
    return Scheduler(broker, config, gevent.event.Event())


def text_client(port: int) -> redis.Redis:
    """A client that reads as the daemon does and writes keys holding surrogate escapes
    (a task id from bytes that are not UTF-8) back as those bytes: the daemon's own."""
    return connect("127.0.0.1", port)


def dead_letters(r: redis.Redis) -> list[dict]:
    """The dead letters, each with a reason that is not a bug of ours."""
    letters = [json.loads(x) for x in r.lrange(K.dead, 0, -1)]
    for letter in letters:
        assert isinstance(letter.get("reason"), str) and letter["reason"].strip(), letter
        assert not letter["reason"].startswith("internal error"), letter   # a bug of ours
    return letters


def dead_key(letter: dict) -> str:
    """An entry as a dead letter keeps it: whole, or cut with the hash of the whole."""
    if letter.get("truncated"):
        return "sha256:" + letter["entry_sha256"]
    return letter["entry"]


def entry_key(raw: str) -> str:
    if len(raw) > DEAD_ENTRY_MAX:
        return "sha256:" + hashlib.sha256(raw.encode("utf-8", "surrogateescape")).hexdigest()
    return raw


def verdict(raw: str, channels) -> str | None:
    """Why routing must refuse ``raw`` (None: it is a task of a known channel)."""
    if len(raw) > MAX_ENTRY:
        return "too large"
    try:
        task = from_producer(raw, "default")
    except Exception as exc:   # BadTask; anything else is a bug the decoder tests report
        return str(exc) or repr(exc)
    return None if task.channel in channels else "unknown channel"


def good_entry(i: int, form: str, chan: str) -> tuple[bytes, str]:
    """A good producer entry (unique name, so the distinct rule keeps it) -> (entry, name)."""
    tag = f"good-{i}-{uuid.uuid4().hex[:8]}"
    name = f"true {tag}"
    data = {"id": {"task": name, "chan": chan, "id": tag},
            "php": {"task": name, "chan": chan, "ts": 1700000000},   # no id: PHP's form
            "command": {"command": {"name": "true", "args": [tag]}, "chan": chan},
            "bare": {"task": name}}[form]
    return json.dumps(data).encode(), name


good_specs = st.lists(st.tuples(st.sampled_from(["id", "php", "command", "bare"]),
                                st.sampled_from(["default", "biz", "plain"])),
                      min_size=1, max_size=5)


@ROUTING
@given(good=good_specs, bad=st.lists(entries, max_size=20), victim=st.booleans(),
       shuffle=st.randoms(use_true_random=False))
@example(good=[("id", "default")], bad=FOUND, victim=True, shuffle=random.Random(0))
@example(good=[("command", "plain")], bad=[b'{"task": "true", "ts": "' + b"x" * MAX_ENTRY + b'"}'],
         victim=False, shuffle=random.Random(1))   # too large: cut in its dead letter
def test_routing_queues_or_dead_letters_every_entry(router, good, bad, victim, shuffle):
    broker: RecordingBroker = router.broker
    r = broker.redis   # our own redis-server's
    r.flushall()
    router.ensure_default_channels()
    broker.add_channel(ChannelSpec("plain", False, 2))
    router.specs = broker.channels()
    broker.outcomes.clear()

    goods = [good_entry(i, form, chan) for i, (form, chan) in enumerate(good)]
    victims = []   # good entries whose record key someone filled with a string
    if victim:
        task_id = f"victim-{uuid.uuid4().hex[:8]}"
        r.set(K.record(task_id), "not a hash")
        victims.append(json.dumps({"task": f"true {task_id}", "id": task_id}).encode())
    batch = [e for e, _ in goods] + victims + bad
    shuffle.shuffle(batch)
    note(f"batch: {[redis_text(e)[:200] for e in batch]!r}")
    r.lpush(K.prepare, *batch)
    staged = broker.take_prepared(len(batch))
    assert staged == [redis_text(e) for e in batch]   # oldest first
    assert router._route(staged) is None              # nothing refused by redis

    assert r.llen(K.staging(NODE)) == 0 and r.llen(K.prepare) == 0
    letters = dead_letters(r)
    outcomes = collections.Counter(outcome for _, outcome in broker.outcomes)
    note(f"outcomes {outcomes}; dead letters {[(d['entry'][:80], d['reason']) for d in letters]}")
    assert set(outcomes) <= {0, 1, 2, 3, 5}, outcomes   # 4: lost track of the entry
    # every entry is accounted for, once
    routed = collections.Counter(entry_key(source) for (_, _, source), outcome
                                 in broker.outcomes if outcome in (0, 1, 2))
    assert collections.Counter(map(dead_key, letters)) + routed == \
        collections.Counter(entry_key(raw) for raw in staged)
    # entries the decoder refuses are dead letters with that reason
    reasons = {dead_key(d): d["reason"] for d in letters}
    for raw in staged:
        why = verdict(raw, router.specs)
        if why is not None:
            assert entry_key(raw) in reasons, (raw, why)
            assert why in ("too large", "unknown channel") or reasons[entry_key(raw)] == why
    for entry in victims:
        assert "holds another type" in reasons[redis_text(entry)]
        assert r.get(K.record(json.loads(entry)["id"])) == "not a hash"   # left alone
    # what was queued or delayed is there, with its record
    queued = {chan: r.lrange(K.queue(chan), 0, -1) for chan in router.specs}
    assert sum(map(len, queued.values())) == outcomes[1]
    assert r.zcard(K.delayed) == outcomes[2]
    names = collections.Counter()
    for (task, _, _), outcome in broker.outcomes:
        if outcome == 1:
            assert task.raw in queued[task.channel]
        elif outcome == 2:
            assert r.zscore(K.delayed, task.raw) is not None
        if outcome in (1, 2):
            record = r.hgetall(K.record(task.id))
            assert record["status"] == ("queued" if outcome == 1 else "delayed")
            assert record["raw"] == task.raw
            names[task.channel, task.name] += 1
    for (task, distinct, _), outcome in broker.outcomes:
        if outcome == 0:   # refused as a duplicate of a task routed just before
            assert distinct and names[task.channel, task.name] == 1, task
    assert all(n == 1 or not router.specs[chan].distinct for (chan, _), n in names.items())
    # and every good entry is queued
    queued_names = {json.loads(raw)["task"] for raws in queued.values() for raw in raws}
    for _, name in goods:
        assert name in queued_names, name


# -- 3. the daemon as a real process -------------------------------------------------
@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A private redis-server and one daemon for the module. Commands find only `true`
    on their PATH: a random entry that decodes to a command cannot run anything else."""
    directory = tmp_path_factory.mktemp("fuzz-daemon")
    server = RedisServer(directory, aof=False)
    server.start()
    bin_dir = directory / "bin"
    bin_dir.mkdir()
    (bin_dir / "true").symlink_to(shutil.which("true"))
    daemon = Coyotes(server.port, directory, ["-concurrent", "4"], node_id=NODE)
    try:
        daemon.start(env={**os.environ, "PATH": str(bin_dir)})
        r = text_client(server.port)
        status, _ = daemon.request("POST", "/channels",
                                   {"name": "plain", "distinct": "false", "worker": 2})
        assert status == 200
        wait_until(lambda: "channel plain: consuming" in daemon.log(), what="channel plain")
        yield daemon, r
    finally:
        daemon.reap()
        server.stop()


def busy(r: redis.Redis) -> dict:
    """What waits, runs or is held anywhere (the delayed set aside): key -> entries."""
    lists = [K.prepare, *r.keys(K.staging("*")), *r.keys(K.processing("*", "*")),
             *(K.queue(c) for c in r.hkeys(K.channels))]
    held = {k: r.lrange(k, 0, 5) for k in lists if r.llen(k)}
    held.update({K.running(c): r.srandmember(K.running(c), 5) for c in r.hkeys(K.channels)
                 if r.scard(K.running(c))})
    return held


def idle(r: redis.Redis) -> bool:
    return not busy(r)


def settle(r: redis.Redis, done=lambda: True, timeout: float = 20, what: str = "",
           state=lambda: "") -> None:
    """Wait until the daemon is idle and ``done()``; else fail saying what it holds
    (and ``state()``)."""
    try:
        wait_until(lambda: idle(r) and done(), timeout=timeout, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; still held: {busy(r)!r}; {state()}") from None


def forget(r: redis.Redis) -> None:
    """Between examples, the daemon idle: drop what the last one left to count. An
    example that leaves something held fails itself (``settle``); what it left is
    dropped here, so that hypothesis's second run of it starts clean and fails the
    same way."""
    try:
        wait_until(lambda: idle(r), timeout=10, what="the daemon to be idle")
    except AssertionError:
        r.delete(*busy(r))
    doomed = [K.dead, K.dead_trimmed, K.delayed, *r.keys("task:record:*"),
              *r.keys("*:tasks:queue:failed*"), *r.keys("*:tasks:queue:*:dis")]
    if doomed:
        r.delete(*doomed)


def records(r: redis.Redis) -> list[dict]:
    return [r.hgetall(k) for k in r.keys("task:record:*")]


def no_trouble(daemon: Coyotes, since: int) -> None:
    """No sign of a bug of ours in what the daemon logged from offset ``since`` on."""
    text = daemon.log()[since:]
    for sign in ("Traceback", "internal error", "unexpected error"):
        assert sign not in text, text[text.index(sign) - 2000:text.index(sign) + 2000]


CHANNELS = {"default", "biz", "cron", "plain"}   # the daemon's


def plainly_bad(entry: bytes) -> bool:
    return verdict(redis_text(entry), CHANNELS) is not None


@DAEMON
@given(good=good_specs, bad=st.lists(entries.filter(plainly_bad), max_size=10),
       shuffle=st.randoms(use_true_random=False))
@example(good=[("php", "default"), ("id", "biz")], bad=FOUND, shuffle=random.Random(0))
def test_daemon_runs_the_good_and_dead_letters_the_bad(live, good, bad, shuffle):
    daemon, r = live
    goods = [good_entry(i, form, chan) for i, (form, chan) in enumerate(good)]
    failing = f"no-such-command-{uuid.uuid4().hex[:8]}"   # a task that runs and fails
    batch = [e for e, _ in goods] + bad + [json.dumps({"task": failing, "id": failing}).encode()]
    shuffle.shuffle(batch)
    forget(r)
    since = len(daemon.log())
    note(f"pushed into {K.prepare}: {[redis_text(e)[:200] for e in batch]!r}")
    r.lpush(K.prepare, *batch)
    names = {name for _, name in goods}

    def done() -> bool:
        by_name = {rec.get("task_name"): rec.get("status") for rec in records(r)}
        return (all(by_name.get(name) == "succeeded" for name in names)
                and by_name.get(failing) == "failed"
                and r.llen(K.dead) >= len(bad))

    def state() -> str:
        return (f"{r.llen(K.dead)} dead letter(s) of {len(bad)} expected; records "
                f"{[(rec.get('task_name'), rec.get('status')) for rec in records(r)]}")

    settle(r, done, what="good tasks to succeed and bad ones to be dead letters", state=state)
    letters = dead_letters(r)
    assert collections.Counter(map(dead_key, letters)) == \
        collections.Counter(entry_key(redis_text(e)) for e in bad)
    for letter in letters:
        if not letter.get("truncated"):
            why = verdict(letter["entry"], CHANNELS)
            assert why == "unknown channel" or letter["reason"] == why, letter
    assert all(rec.get("status") in FINAL for rec in records(r))
    no_trouble(daemon, since)


def runnable_here(entry: bytes) -> bool:
    """Entries for the channel queue whose command (if any) names no path: with PATH
    holding only `true`, such a command is `true` or not found."""
    try:
        task = from_queue(redis_text(entry), "default")
    except Exception:   # a dead letter to be
        return True
    return "/" not in task.argv[0]


@DAEMON
@given(st.lists(entries.filter(runnable_here), min_size=1, max_size=10,
                unique_by=redis_text))
@example(FOUND + FOUND_IN_QUEUES)
def test_channel_queue_entries_run_or_are_dead_lettered(live, pushed):
    """Entries as the Go daemon's producers left them in a channel queue: each runs
    (its record ends, or waits for a retry) or is a dead letter; workers live on."""
    daemon, r = live
    forget(r)
    since = len(daemon.log())
    raws = [redis_text(e) for e in pushed]
    note(f"pushed into {K.queue('default')}: {[raw[:200] for raw in raws]!r}")
    expected_dead, ids = collections.Counter(), {}
    for raw in raws:
        try:
            task = from_queue(raw, "default")
            Policy().merge(task.payload)
        except Exception:   # BadTask; anything else is a bug the decoder tests report
            expected_dead[entry_key(raw)] += 1
        else:
            ids[raw] = task.id
    r.lpush(K.queue("default"), *pushed)

    def ran(task_id: str) -> bool:
        record = r.hgetall(K.record(task_id))
        return record.get("status") in FINAL or (record.get("status") == "delayed"
                                                 and int(record.get("attempt", 0)) >= 1)

    def state() -> str:
        waiting = {i: (raw[:300], r.hgetall(K.record(i))) for raw, i in ids.items()
                   if not ran(i)}
        letters = [(d["entry"][:300], d["reason"])
                   for d in map(json.loads, r.lrange(K.dead, 0, -1))]
        return (f"{len(letters)} dead letter(s) of {sum(expected_dead.values())} expected: "
                f"{letters}; records not ended: {waiting}")

    settle(r, lambda: r.llen(K.dead) >= sum(expected_dead.values())
           and all(ran(i) for i in ids.values()), what="every entry to run or be dead-lettered",
           state=state)
    letters = dead_letters(r)
    assert collections.Counter(map(dead_key, letters)) == expected_dead
    assert all(letter.get("channel") == "default" for letter in letters)
    # and no record says it runs (or waits) when nothing does
    for record in records(r):
        assert record.get("status") in FINAL or record.get("status") == "delayed", record
    # the workers live on: a good task pushed after them runs
    after = f"after-{uuid.uuid4().hex[:8]}"
    r.lpush(K.prepare, json.dumps({"task": f"true {after}", "id": after}))
    wait_until(lambda: r.hget(K.record(after), "status") == "succeeded", timeout=15,
               what="a good task after the random ones")
    no_trouble(daemon, since)


@pytest.mark.parametrize("second", [
    pytest.param(b'{"task": "true", "id": "%s", "retries": -1}',   # a policy the worker refuses
                 id="bad-policy"),
    # a raw control character: Lua's JSON reads the id, Python's strict JSON does not (to
    # the worker it is a plain command line, with an id of its own)
    pytest.param(b'{"task": "true", "id": "%s", "note": "a\x1bb"}', id="control-character"),
    pytest.param(b'{"task": "true", "id": "%s", "note": "\\ud800"}', id="lone-surrogate"),
    # nested deeper than Python parses in a worker, not deeper than Lua's JSON does
    pytest.param(b'{"task": "true", "id": "%s", "ts": ' + b"[" * 990 + b"]" * 990 + b"}",
                 id="deep"),
])
def test_an_entry_the_worker_refuses_leaves_the_record_of_its_id_alone(live, second):
    """Found by the property above: an entry pushed into a channel queue with the id
    of a finished task, which the worker then refuses (or reads without that id).
    CLAIM reads the id with Lua's JSON and starts that record; the worker must not
    leave it 'running' for ever (no TTL, its result erased)."""
    _, r = live
    forget(r)
    task_id = f"twice-{uuid.uuid4().hex[:8]}"
    r.lpush(K.queue("default"), json.dumps({"task": "true", "id": task_id}))
    wait_until(lambda: r.hget(K.record(task_id), "status") == "succeeded", timeout=15)
    before = r.hgetall(K.record(task_id))
    raw = second.replace(b"%s", task_id.encode())
    r.lpush(K.queue("default"), raw)
    settle(r, lambda: r.llen(K.dead) or any(rec.get("status") in FINAL for rec in records(r)
                                            if rec.get("id") != task_id),
           what="the second entry to be dead-lettered or run")
    after = r.hgetall(K.record(task_id))
    assert after.get("status") == before["status"], (before, after)
    assert r.ttl(K.record(task_id)) > 0   # it expires as a finished record does
