"""One channel's workers against a real Redis, with a fake runner injected through
its constructor: no processes, so each scenario takes well under a second.

The harness (``channel_harness.py``) runs in a child Python that gevent
patches, as the daemon is; it prints what the channel left in Redis.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

HARNESS = Path(__file__).resolve().parent / "channel_harness.py"


def run(redis_server, scenario: str) -> dict:
    out = subprocess.run([sys.executable, str(HARNESS), str(redis_server.port), scenario],
                         cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_tasks_run_and_their_results_are_recorded(redis_server):
    result = run(redis_server, "run")
    records = result["records"]
    assert records["a"]["status"] == "succeeded" and records["a"]["stdout"] == "hello\n"
    assert records["b"]["status"] == "failed" and records["b"]["exit_code"] == "3"
    assert records["c"]["status"] == "succeeded" and records["c"]["stdout"] == "late\n"
    assert {r["attempt"] for r in records.values()} == {"1"}
    assert result["processing"] == [] and result["running"] == [] and result["dead"] == []


def test_a_command_that_cannot_start_for_want_of_descriptors_runs_again(redis_server):
    result = run(redis_server, "transient")
    record = result["records"]["t"]
    assert record["status"] == "succeeded" and record["stdout"] == "second\n"
    assert record["attempt"] == "1"   # the failed start was not counted
    assert len(result["starts"]) == 2 and result["processing"] == []


def test_a_missing_program_fails_with_127(redis_server):
    record = run(redis_server, "missing")["records"]["m"]
    assert record["status"] == "failed" and record["exit_code"] == "127"
    assert "No such file" in record["error"]


def test_a_failure_with_retries_left_waits_in_the_delayed_set(redis_server):
    result = run(redis_server, "retry")
    record = result["records"]["r"]
    assert record["status"] == "delayed" and record["retry_count"] == "1"
    assert float(record["retry_at"]) > float(record["finished_at"] if "finished_at" in record
                                              else record["started_at"])
    assert result["delayed"] == 1 and result["processing"] == []


def test_a_bad_entry_is_parked_and_the_worker_goes_on(redis_server):
    result = run(redis_server, "bad")
    assert result["records"]["after"]["status"] == "succeeded"
    [letter] = result["dead"]
    assert "lone surrogate" in letter["reason"] and letter["channel"] == "fake"
    assert result["processing"] == [] and result["running"] == []


def test_the_routing_loop_claims_for_an_idle_channel_with_the_push(redis_server):
    """An idle channel lends its workers to the push: both are claimed in the same
    round trip, and the third task runs once a worker is free. The first claim's
    command has started by the time the reply is handed over (before any worker's
    greenlet had a turn), and its output still reaches its record."""
    result = run(redis_server, "loan")
    notes = result["notes"]
    assert notes["most"] == 2 and notes["again"] == 0 and notes["outcomes"] == [1, 1, 1]
    assert notes["claimed"] == ["l1", "l2"]   # oldest first
    assert notes["started_at_once"] == [["print=1"]]
    assert result["records"]["l1"]["stdout"] == "1\n"
    assert {r["status"] for r in result["records"].values()} == {"succeeded"}
    assert {r["attempt"] for r in result["records"].values()} == {"1"}
    assert result["processing"] == [] and result["running"] == []


def test_a_loan_whose_reply_was_lost_is_reconciled(redis_server):
    """Claims made by a push whose reply never came are found in the processing list
    and given back; every task runs once."""
    result = run(redis_server, "lost-loan")
    assert result["notes"]["claimed"] == ["l1", "l2"]   # claimed in Redis, never held
    assert {r["status"] for r in result["records"].values()} == {"succeeded"}
    assert len(result["starts"]) == 3 and result["processing"] == []
