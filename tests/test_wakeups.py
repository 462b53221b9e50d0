"""How a node learns that a channel's queue got a task, with the daemons as real
processes: from its own push at once, from another node's push through Redis's
wake-up message, and from an entry nobody announced through the scan each second.
"""

from __future__ import annotations

import json
import random
import time

from conftest import wait_until


def start_delays(r, ids) -> list[float]:
    """Seconds between queued and started (Redis's clock) of each task, once all ran."""
    wait_until(lambda: all(r.hget(f"task:record:{i}", "status") == "succeeded" for i in ids),
               timeout=20, what="every task to succeed")
    return [float(r.hget(f"task:record:{i}", "started_at"))
            - float(r.hget(f"task:record:{i}", "queued_at")) for i in ids]


def test_a_push_on_one_node_starts_on_another_without_waiting_for_the_scan(coyotes_factory, r):
    """A node that only serves the API queues the tasks; the working node hears of
    each from Redis's message, well before its next scan (one a second) would find
    it. The pushes come at random moments of the scan's second."""
    coyotes_factory()                        # works
    api = coyotes_factory("-task-mode=false")   # queues only
    ids, rng = [], random.Random(13)
    for n in range(6):
        time.sleep(rng.uniform(0.1, 0.45))
        status, body = api.request("POST", "/channels/default/tasks",
                                   {"task": f"true {n}", "id": f"w{n}"})
        assert status == 200, body
        ids.append(f"w{n}")
    delays = start_delays(r, ids)
    # the scan alone would give delays spread over its second: all six under 0.25 s
    # by chance about once in 4,000 runs
    assert max(delays) < 0.25, delays


def test_a_push_on_the_working_node_itself_starts_at_once(coyotes, r):
    ids, rng = [], random.Random(17)
    for n in range(6):
        time.sleep(rng.uniform(0.1, 0.45))
        r.lpush("task:prepare:queue", json.dumps({"task": f"true {n}", "id": f"s{n}"}))
        ids.append(f"s{n}")
    delays = start_delays(r, ids)
    assert max(delays) < 0.25, delays


def test_entries_nobody_announced_are_found_by_the_scan(coyotes, r, tmp_path):
    """Entries put straight into a channel queue (as a Go node does) publish nothing:
    the scan finds them within about a second, in a channel created after start."""
    assert coyotes.request("POST", "/channels", {"name": "late", "worker": 2})[0] == 200
    marks = [tmp_path / f"m{n}" for n in range(3)]
    r.lpush("late:tasks:queue", *[f"touch {m}" for m in marks])
    t0 = time.monotonic()
    wait_until(lambda: all(m.exists() for m in marks), timeout=10, what="the three files")
    assert time.monotonic() - t0 < 4   # a scan a second, not a slower fallback
