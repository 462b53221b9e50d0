"""The log: control characters escaped (no forged lines, no terminal escapes),
and the per-task budget of command output."""

from __future__ import annotations

import json
import logging
import signal
import sys

import pytest
from conftest import wait_until

from coyotes_lib import log as logsetup
from coyotes_lib.log import Formatter, OutputBudget, escape


def record(msg: str, *args, level: int = logging.INFO, exc_info=None, **extra):
    rec = logging.LogRecord("coyotes.test", level, __file__, 1, msg, args, exc_info)
    rec.__dict__.update(extra)
    return rec


@pytest.mark.parametrize("text, expected", [
    ("plain ascii", "plain ascii"),
    ("中文输出 café", "中文输出 café"),                 # printable non-ASCII stays
    ("a\nforged ERROR line", "a\\nforged ERROR line"),
    ("carriage\roverwrite", "carriage\\roverwrite"),
    ("\x1b[2Jcleared", "\\x1b[2Jcleared"),
    ("tab\there\x00\x7f\x85", "tab\\there\\x00\\x7f\\x85"),
    ("line\u2028separator", "line\\u2028separator"),   # not C0/C1, still a line break
    ("bad \udcff byte", "bad \\udcff byte"),
])
def test_escape(text, expected):
    assert escape(text) == expected


def test_a_message_cannot_forge_a_line_nor_send_terminal_escapes():
    text = Formatter(colour=False).format(
        record("task %s started: %s", "t1", "echo a\nforged ERROR line\r\x1b[31m"))
    assert "\n" not in text and "\r" not in text and "\x1b" not in text
    assert text.endswith("task t1 started: echo a\\nforged ERROR line\\r\\x1b[31m")


def test_colours_of_our_own_survive_the_escaping():
    text = Formatter(colour=True).format(record("out\x1b[0m", stream="stdout"))
    assert text.startswith(logsetup.STREAM_COLOURS["stdout"]) and text.endswith(logsetup.RESET)
    assert text.count("\x1b") == 2 and "out\\x1b[0m" in text


def test_a_traceback_stays_multi_line_and_only_the_message_is_escaped():
    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    text = Formatter(colour=False).format(
        record("loop %s failed", "a\nb", level=logging.ERROR, exc_info=exc_info))
    first, *rest = text.split("\n")
    assert first.endswith("loop a\\nb failed")
    assert rest[0] == "Traceback (most recent call last):" and rest[-1] == "ValueError: boom"


@pytest.mark.parametrize("args, exc", [
    (("task %s started (attempt %d): %s", "t1", 1, "echo a\nb"), False),
    (("value %(a)s and %(b)d", {"a": "x", "b": 2}), False),
    (("no arguments at all",), False),
    (("loop %s failed", "x"), True),
])
def test_the_lean_record_is_logging_s_own_record(monkeypatch, args, exc):
    """The record setup installs (made for two lines a task) holds what logging's own
    record holds, with the settings setup makes, and comes out as the same line."""
    monkeypatch.setattr(logging, "_srcfile", None)
    for flag in ("logThreads", "logProcesses", "logMultiprocessing"):
        monkeypatch.setattr(logging, flag, False)
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    msg, *rest = args
    made = [kind("coyotes.channel", logging.WARNING, logsetup.UNKNOWN_FILE, 0, msg,
                  tuple(rest), exc_info, "(unknown function)")
            for kind in (logsetup.Record, logging.LogRecord)]
    made[1].created, made[1].msecs, made[1].relativeCreated = (
        made[0].created, made[0].msecs, made[0].relativeCreated)
    assert vars(made[0]) == vars(made[1])
    ours, theirs = Formatter(colour=False), logging.Formatter(logsetup.TEXT_FORMAT)
    line, expected = ours.format(made[0]), theirs.format(made[1])
    if exc:   # the message (without a line break here) is escaped, not the traceback
        first, _, traceback = expected.partition("\n")
        assert line == f"{escape(first)}\n{traceback}" and traceback.endswith("boom")
    else:
        assert line == escape(expected)


def test_setup_handler_escapes_what_it_writes(tmp_path):
    path = tmp_path / "coyotes.log"
    root = logging.getLogger("coyotes")
    saved = root.handlers[:], root.level, root.propagate
    logsetup.setup(log_file=str(path))
    try:
        logging.getLogger("coyotes.output").info("worker 1 stdout: %s", "x\nforged\x1b[2J")
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:], root.level, root.propagate = saved
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 and lines[0].endswith("worker 1 stdout: x\\nforged\\x1b[2J")


def test_the_daemon_log_holds_no_forged_line_nor_escape(coyotes, r):
    """A task whose name holds a newline and whose output holds a carriage return
    and an escape sequence: each log line stays one line, escaped."""
    name = "printf 'a\\033[2Jb\\rforged ERROR output\\n%s\\n' 'x\nforged ERROR name'"
    r.lpush("task:prepare:queue", json.dumps({"id": "forger", "task": name}))
    wait_until(lambda: "task forger exited 0" in coyotes.log(), what="the task's result")
    log = coyotes.log()
    assert "\x1b" not in log and "\r" not in log
    # splitlines also cuts at \r, as a terminal shows it
    assert not [line for line in log.splitlines() if line.startswith("forged")], log
    assert "a\\x1b[2Jb\\rforged ERROR output" in log


# -- the output budget -------------------------------------------------------

def test_budget_passes_lines_until_spent_and_counts_what_it_drops():
    budget = OutputBudget(total=12)
    assert budget.summary == ""
    assert budget.line("abcde") == "abcde"   # 5 bytes and its newline
    assert budget.line("fghij") == "fghij"   # 12: exactly spent
    assert budget.line("k") is None
    assert budget.line("") is None
    assert budget.summary == "output: 3 bytes not logged (log budget of 12 bytes per task)"


def test_budget_cuts_the_line_that_crosses_it():
    budget = OutputBudget(total=10)
    assert budget.line("abcdef") == "abcdef"
    assert budget.line("0123456789") == "012 [... 7 more bytes]"   # 3 bytes were left
    assert budget.line("z") is None
    assert budget.summary == "output: 9 bytes not logged (log budget of 10 bytes per task)"


def test_budget_cuts_long_lines_but_a_cut_alone_is_not_a_summary():
    budget = OutputBudget(total=1 << 20, line=8)
    assert budget.line("x" * 8) == "x" * 8
    assert budget.line("x" * 20) == "x" * 8 + " [... 12 more bytes]"
    assert budget.line("y" * 9) == "y" * 8 + " [... 1 more byte]"
    assert budget.summary == ""   # each cut line says so itself


def test_budget_zero_logs_nothing_and_says_nothing():
    budget = OutputBudget(total=0)
    assert all(budget.line(text) is None for text in ("a", "", "中文"))
    assert budget.summary == ""   # output logging is off: no line per task about it


def test_budget_counts_utf8_bytes_and_never_cuts_a_character():
    budget = OutputBudget(total=1 << 20, line=7)
    assert budget.line("中文") == "中文"                       # 6 bytes
    assert budget.line("中文输出") == "中文 [... 6 more bytes]"  # 12 bytes, cut at 7 -> 6
    budget = OutputBudget(total=8)
    assert budget.line("中文输出") == "中文 [... 6 more bytes]"
    assert budget.line("a") is None
    assert budget.summary == "output: 8 bytes not logged (log budget of 8 bytes per task)"


def test_budget_summary_of_a_flood():
    budget = OutputBudget(total=1 << 20)
    chunk = "x" * 65535
    logged = [budget.line(chunk) for _ in range(1526)]   # 100,007,936 bytes with newlines
    kept = [text for text in logged if text is not None]
    assert len(kept) == 16 and all(text.startswith("x" * 4096 + " [... ") for text in kept)
    # what was not logged: the dropped lines and the cut parts of the logged ones
    assert budget.summary == "output: 95.3 MB not logged (log budget of 1 MB per task)"


# -- the log file under logrotate, and JSON lines --------------------------------------

def test_usr1_reopens_the_log_file_that_logrotate_moved(coyotes_factory, r, tmp_path):
    path = tmp_path / "coyotes-own.log"
    daemon = coyotes_factory("-log-file", str(path))
    wait_until(lambda: path.exists() and "coyotes ready" in path.read_text())
    rotated = tmp_path / "coyotes-own.log.1"
    path.rename(rotated)   # what logrotate does; the daemon still writes to the moved file
    daemon.signal(signal.SIGUSR1)
    wait_until(lambda: path.exists() and "reopened" in path.read_text(),
               what="a new log file at the old path")
    r.lpush("task:prepare:queue", json.dumps({"task": "true after-rotation"}))
    wait_until(lambda: "true after-rotation" in path.read_text(), what="the task in the new file")
    assert "coyotes ready" in rotated.read_text() and "after-rotation" not in rotated.read_text()
    assert daemon.proc.poll() is None   # USR1 used to be fatal (its default disposition)


def test_usr1_without_a_log_file_is_harmless(coyotes):
    coyotes.signal(signal.SIGUSR1)
    wait_until(lambda: "nothing to reopen" in coyotes.log())
    assert coyotes.proc.poll() is None and coyotes.request("GET", "/health")[0] == 200


def test_json_lines_with_the_node_channel_and_task(coyotes_factory, r):
    daemon = coyotes_factory("-log-format", "json", node_id="json-node")
    r.lpush("task:prepare:queue", json.dumps({"task": "echo hi", "id": "j1"}))
    wait_until(lambda: '"task_id": "j1"' in daemon.log() and "exited 0" in daemon.log())
    lines = [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]
    assert lines and all(set(line) >= {"ts", "level", "logger", "message", "node"}
                         for line in lines)
    assert all(line["node"] == "json-node" for line in lines)
    about = [line for line in lines if line.get("task_id") == "j1"]
    assert {line["logger"] for line in about} >= {"coyotes.channel", "coyotes.output"}
    assert all(line["channel"] == "default" for line in about)
    output = next(line for line in about if line["logger"] == "coyotes.output")
    assert output["stream"] == "stdout" and output["message"].endswith("stdout: hi")
    # every line the daemon wrote is JSON (nothing else went to the log)
    assert all(line.startswith("{") for line in daemon.log().splitlines() if line.strip())


def test_a_json_line_of_a_traceback_and_of_bytes_that_are_not_utf8():
    formatter = logsetup.JSONFormatter("n1")
    try:
        raise ValueError("boom")
    except ValueError:
        line = json.loads(formatter.format(record("failed: %s", "x", exc_info=sys.exc_info())))
    assert line["message"] == "failed: x" and "ValueError: boom" in line["traceback"]
    odd = formatter.format(record("argv %s", "touch \udcc4\udce3"))
    assert "\n" not in odd and json.loads(odd)["message"] == "argv touch \udcc4\udce3"
