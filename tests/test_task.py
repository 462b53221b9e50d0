"""In-process tests of task payloads, policies and the retry backoff."""

from __future__ import annotations

import json
import random
import shlex

import pytest

from coyotes_lib.channel import backoff
from coyotes_lib.task import (
    BadTask,
    Policy,
    argv_of,
    build,
    check_policy,
    from_producer,
    from_queue,
    legacy_id,
    split_line,
)


def test_producer_json_forms():
    task = from_producer('{"task": "echo \\"a b\\" c", "chan": "biz", "ts": 1}', "default")
    assert task.argv == ("echo", "a b", "c") and task.channel == "biz" and len(task.id) == 32
    task = from_producer('{"id": "x-1", "command": {"name": "php", "args": ["artisan", 7, 2.5]}}',
                         "default")
    assert task.id == "x-1" and task.channel == "default"
    assert task.argv == ("php", "artisan", "7", "2.5") and task.name == "php artisan 7 2.5"
    assert json.loads(task.raw)["command"] == {"name": "php", "args": ["artisan", "7", "2.5"]}


@pytest.mark.parametrize(("raw", "reason"), [
    ("nope", "not valid JSON"), ("[1]", "not a JSON object"), ("{}", "no command"),
    ('{"task": "x", "execute_at": NaN}', "not valid JSON"),
    ('{"task": "x", "execute_at": "soon"}', "execute_at"),
    ('{"task": "x", "timeout": -1}', "timeout"), ('{"task": "x", "retries": 1000}', "retries"),
    ('{"task": "x", "retry_on": ["a"]}', "retry_on"), ('{"task": "x", "chan": 5}', "chan"),
    ('{"task": "echo \\u0000"}', "NUL"),
    ('{"task": "x", "id": "a b"}', "id must"), ('{"task": "x", "id": "a\\u00a0b"}', "id must"),
    ('{"task": "x", "id": "a\\u3000b"}', "id must"), ('{"task": "x", "id": "a/b"}', "id must"),
    ('{"task": "x", "id": "a\\u0007"}', "id must"),
    (f'{{"task": "x", "id": "{"i" * 129}"}}', "id must"),
])
def test_producer_json_refused_with_a_reason(raw, reason):
    with pytest.raises(BadTask, match=reason):
        from_producer(raw, "default")


def test_queue_entries_of_every_generation():
    plain = from_queue("echo hi", "default")   # Go v1.0-beta
    assert plain.argv == ("echo", "hi") and plain.id == legacy_id("echo hi") and not plain.payload
    go = from_queue('{"task_id": "g", "task_name": "ls -l", "command": {"name": "", "args": null},'
                    ' "channel": "default"}', "default")   # later Go versions
    assert go.id == "g" and go.argv == ("ls", "-l") and go.name == "ls -l"
    ours = build("default", "date", task_id="o")
    assert from_queue(ours.raw, "default").id == "o"


def test_policy_merge_and_limits():
    channel = Policy(timeout=10, retries=1)
    merged = channel.merge({"retries": "3", "retry_on": "4, 5,4"})
    assert merged == Policy(timeout=10, retries=3, retry_on=(4, 5))
    assert channel.merge({}) is channel
    assert check_policy({"timeout": "1.5"}) == {"timeout": 1.5}
    for bad in ({"timeout": "nan"}, {"retries": True}, {"retry_backoff": -1},
                {"retry_on": [256]}):
        with pytest.raises(BadTask):
            check_policy(bad)
    assert Policy(retries=2).to_dict() == {"retries": 2}


def test_backoff_grows_is_capped_and_jittered():
    random.seed(7)
    policy = Policy(retry_backoff=1, retry_max=10)
    for n, step in enumerate([1, 2, 4, 8, 10, 10]):
        delays = [backoff(policy, n) for _ in range(50)]
        assert all(step / 2 <= d <= step for d in delays)
        assert len(set(delays)) > 1   # jitter: not lockstep


@pytest.mark.parametrize("line", [
    "touch /tmp/x", "  php  artisan\tqueue:work \r\n --once ", "", "   ", "a\u3000b c\xa0d",
    "a\x0bb\x0cc", "echo 'hello world'", 'say "a b" c', r"a\ b", "it's", 'x"', "#not a comment",
    "中文 参数 -v", "a\nb",
])
def test_split_line_is_shlex_split(line):
    """The fast path for lines without quotes gives what shlex.split gives (only
    ' \\t\\r\\n' separate words: a full-width or no-break space is part of one)."""
    try:
        expected = tuple(shlex.split(line))
    except ValueError:
        with pytest.raises(BadTask):
            split_line(line)
        return
    assert split_line(line) == expected


def test_policy_and_args_edge_values_found_by_schemathesis():
    """1e400 is infinity in JSON (an OverflowError as an int), PHP sends exit codes as
    floats (50.0), and an args of 0 or "" was read as no args at all."""
    for fields in ({"retries": 1e400}, {"timeout": 1e400}, {"retry_on": [1e400]},
                   {"retry_on": [1.5]}):
        with pytest.raises(BadTask):
            check_policy(fields)
    assert check_policy({"retry_on": [50.0, "1", 3]}) == {"retry_on": (1, 3, 50)}
    for args in (0, "", {}, False):
        with pytest.raises(BadTask, match=r"command\.args must be a list"):
            argv_of("", {"name": "sleep", "args": args})
    with pytest.raises(BadTask):
        from_producer('{"task": "true", "retries": 1e400}', "default")


def test_a_nul_in_a_queued_argv_is_refused_not_cut_short():
    """exec reads each argument up to its first NUL: 'a\\0b' would run as 'a'."""
    raw = json.dumps({"id": "x", "task": "echo a", "argv": ["echo", "a\0b"]})
    with pytest.raises(BadTask, match="NUL"):
        from_queue(raw, "default")
