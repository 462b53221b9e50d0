"""Priorities on a real daemon: a high task, pushed over HTTP or through the
prepare queue, runs before every normal task of its channel, in the order the
high ones came; plain Go-style entries stay normal; a bad priority is refused.
"""

from __future__ import annotations

import json

from conftest import (
    assert_error,
    events,
    gate_command,
    ledger_command,
    ok_data,
    started,
    wait_until,
)

DEAD_KEY = "task:prepare:dead"


def test_high_tasks_run_before_the_normal_ones_in_their_order(coyotes, r, tmp_path, gate):
    assert ok_data(coyotes.request("POST", "/channels", {"name": "prio", "worker": 1})) is None
    ledger = tmp_path / "ledger"

    def push(tag: str, **more) -> str:
        return ok_data(coyotes.request("POST", "/channels/prio/tasks",
                                       {"task": ledger_command(ledger, tag), **more}))["task_id"]

    ok_data(coyotes.request("POST", "/channels/prio/tasks",
                            {"task": gate_command(ledger, gate, "G")}))
    wait_until(lambda: started(ledger, "G"), what="G holds the one worker")
    push("N1")
    push("H1", priority="high")
    push("N2", priority="normal")
    r.lpush("prio:tasks:queue", ledger_command(ledger, "N3"))   # a Go-style plain entry
    r.lpush("task:prepare:queue", json.dumps({"task": ledger_command(ledger, "H2"),
                                              "chan": "prio", "priority": "high"}))
    wait_until(lambda: r.llen("prio:tasks:queue:high") == 2, what="H2 routed")
    push("H3", priority="high")

    assert_error(coyotes.request("POST", "/channels/prio/tasks",
                                 {"task": "true", "priority": "urgent"}), 400)
    r.lpush("task:prepare:queue", json.dumps({"task": "true", "chan": "prio",
                                              "priority": "urgent"}))
    wait_until(lambda: r.llen(DEAD_KEY) == 1, what="the bad entry dead-lettered")
    assert "priority must be normal or high" in json.loads(r.lindex(DEAD_KEY, 0))["reason"]

    listing = ok_data(coyotes.request("GET", "/channels/prio"))
    tags = [task["task_name"].split()[-2 if task["status"] == "queued" else -1]
            for task in listing["tasks"]]
    assert tags == ["G", "H1", "H2", "H3", "N1", "N2", "N3"], tags
    assert [task.get("priority") for task in listing["tasks"]] == \
        [None, "high", "high", "high", None, None, None]
    assert listing["counts"]["queued"] == 6 and listing["count"] == 7
    page = ok_data(coyotes.request("GET", "/channels/prio?offset=3&limit=2"))["tasks"]
    assert [task["task_name"].split()[-2] for task in page] == ["H3", "N1"]

    gate.touch()
    wait_until(lambda: events(ledger).count(("end", "N3")) == 1, what="all ran")
    order = [tag for event, tag in events(ledger) if event == "start"]
    assert order == ["G", "H1", "H2", "H3", "N1", "N2", "N3"], order
