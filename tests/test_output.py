"""GET /tasks/{id}/output: server-sent events from real daemons. Lines arrive
while the task runs, each once and in order, then the end with the status; a
reader who comes late gets what is kept and how much it missed; a finished
task, or one followed through another node, gives the tails of its record.
"""

from __future__ import annotations

import json
import sys
import urllib.request

from conftest import assert_error, ok_data, wait_until

PY = sys.executable


def events(daemon, task_id: str, on_event=None) -> list[tuple[str, object]]:
    """Every event of the stream, read as it comes, until it ends."""
    out, kind = [], None
    with urllib.request.urlopen(f"{daemon.url}/tasks/{task_id}/output", timeout=60) as reply:
        assert reply.headers["Content-Type"].startswith("text/event-stream")
        for raw in reply:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[len("event: "):]
            elif line.startswith("data: "):
                out.append((kind, json.loads(line[len("data: "):])))
                if on_event is not None:
                    on_event(kind, out[-1][1])
    return out


def push(daemon, script: str, **more) -> str:
    return ok_data(daemon.request("POST", "/channels/default/tasks", {
        "command": {"name": PY, "args": ["-c", script]}, **more}))["task_id"]


def test_lines_arrive_while_the_task_runs_then_the_end(coyotes):
    script = ("import sys, time\nfor i in range(5):\n    print(i, flush=True)\n"
              "    print('e', i, file=sys.stderr, flush=True)\n    time.sleep(0.3)\n"
              "sys.exit(3)")
    task_id = push(coyotes, script)
    seen_running = []

    def note(kind, data):
        if kind == "stdout" and data == "0":   # the first line: the task is not over
            status = ok_data(coyotes.request("GET", f"/tasks/{task_id}"))["status"]
            seen_running.append(status)
    got = events(coyotes, task_id, note)
    assert seen_running == ["running"]
    assert [d for k, d in got if k == "stdout"] == ["0", "1", "2", "3", "4"]
    assert [d for k, d in got if k == "stderr"] == [f"e {i}" for i in range(5)]
    assert got[-1] == ("end", {"status": "failed", "exit_code": "3", "signal": None,
                               "error": None})


def test_a_late_reader_gets_what_is_kept_and_what_it_missed(coyotes, tmp_path):
    printed = tmp_path / "printed"
    script = ("import pathlib, sys, time\nfor i in range(3000):\n    print(i)\n"
              f"sys.stdout.flush()\npathlib.Path({str(printed)!r}).touch()\ntime.sleep(2)")
    task_id = push(coyotes, script)
    wait_until(printed.exists, what="all printed, the task still running")
    got = events(coyotes, task_id)
    assert got[0] == ("dropped", {"lines": 1000})
    lines = [d for k, d in got if k == "stdout"]
    assert lines == [str(i) for i in range(1000, 3000)]
    assert got[-1][0] == "end" and got[-1][1]["status"] == "succeeded"


def test_a_finished_task_and_one_followed_through_another_node(coyotes_factory):
    runner = coyotes_factory(node_id="runs")
    viewer = coyotes_factory("-task-mode=false", node_id="views")   # runs nothing
    task_id = push(runner, "import time\nfor i in range(3):\n    print(i, flush=True)\n"
                           "    time.sleep(0.7)\nprint('done here')")
    wait_until(lambda: ok_data(runner.request("GET", f"/tasks/{task_id}"))["status"] ==
               "running")
    seen_running = []

    def note(kind, data):
        if data == "0":   # relayed by the running node while the task runs
            seen_running.append(ok_data(viewer.request("GET", f"/tasks/{task_id}"))["status"])
    got = events(viewer, task_id, note)
    assert seen_running == ["running"]
    assert got == [("stdout", "0"), ("stdout", "1"), ("stdout", "2"), ("stdout", "done here"),
                   ("end", {"status": "succeeded", "exit_code": "0", "signal": None,
                            "error": None})]
    assert events(runner, task_id) == got   # finished: from the record, on any node
    assert_error(runner.request("GET", "/tasks/no-such-task/output"), 404)


def test_what_a_live_buffer_keeps_is_bounded_in_lines_and_bytes():
    from coyotes_lib.live import Live
    live = Live(keep=3, keep_bytes=10)
    for text in ("a", "b", "c", "d"):
        live.add("stdout", text)
    assert live.since(0) == (1, [(2, "stdout", "b"), (3, "stdout", "c"), (4, "stdout", "d")])
    live.add("stderr", "0123456789")   # ten bytes alone: the others go
    assert live.since(0) == (4, [(5, "stderr", "0123456789")])
    assert live.since(5) == (0, [])


def test_a_relay_sends_again_only_what_a_reader_lacks():
    """A reader's request names the last line it has: a reader that is up to date
    only keeps the relay going; one behind, or new, gets the lines after its own."""
    from coyotes_lib.live import Live, Relay
    live, sent = Live(), []
    for n in range(5):
        live.add("stdout", f"line {n}")
    live.end({})
    relay = Relay(live, lambda message: sent.append(json.loads(message)))
    clock = iter(range(100)).__next__   # each look at the clock is a second later

    def run(seq: int) -> list:
        sent.clear()
        relay.asked(clock(), seq)
        relay.run(clock)
        return [line[0] for message in sent for line in message.get("lines", [])]

    assert run(0) == [1, 2, 3, 4, 5] and sent[-1] == {"end": True}
    assert run(5) == [] and relay.replay is None   # up to date: nothing again
    assert run(3) == [4, 5]                        # behind: what it lacks
    assert run(0) == [1, 2, 3, 4, 5]               # a new reader: everything kept
