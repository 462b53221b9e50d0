r"""Logging set-up, colours and the start-up banner.

Everything goes through ``logging`` under ``coyotes.*``; command output goes
to ``coyotes.output`` with the channel, worker and command in each line.
``-colorful-tty`` colours levels and output lines and prints a banner;
``-log-file`` sends it all to a file instead of stderr, reopened on USR1 (for
logrotate); ``-log-format json`` writes one JSON object a line instead, with the
node and, where the line is about one, the channel and the task. Control
characters in a message are escaped (``\n``, ``\x1b``): a task name or a line of
output cannot forge a log line or drive the terminal. ``OutputBudget`` caps how
much of one task's output reaches the log.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping

from gevent.monkey import get_original

from . import __version__

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
UNKNOWN_FILE = "(unknown file)"   # the pathname a record gets when no caller is looked for
RESET = "\033[0m"
LEVEL_COLOURS = {logging.DEBUG: "\033[90m", logging.INFO: "\033[32m",
                 logging.WARNING: "\033[33m", logging.ERROR: "\033[31m",
                 logging.CRITICAL: "\033[1;31m"}
STREAM_COLOURS = {"stdout": "\033[36m", "stderr": "\033[35m"}
# C0 and C1 controls and DEL, as repr writes them (\n, \r, \t, \x1b...)
CONTROLS = {c: repr(chr(c))[1:-1] for c in (*range(0x20), *range(0x7f, 0xa0))}

BANNER = r"""
   ______                  __
  / ____/___  __  ______  / /____  _____
 / /   / __ \/ / / / __ \/ __/ _ \/ ___/
/ /___/ /_/ / /_/ / /_/ / /_/  __(__  )
\____/\____/\__, /\____/\__/\___/____/
           /____/   you give me the command, I run it.
"""


def escape(text: str) -> str:
    """``text`` with what ``str.isprintable`` rejects written as repr writes it."""
    if text.isprintable():
        return text
    text = text.translate(CONTROLS)
    if text.isprintable():
        return text
    # the rare rest: line separators, format characters, lone surrogates
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def human(size: int) -> str:
    """1536 -> '1.5 KB' (binary units, as the flags count)."""
    if size < 1024:
        return f"{size} byte{'' if size == 1 else 's'}"
    value = float(size)
    for unit in ("KB", "MB", "GB", "TB"):
        value /= 1024
        if value < 1024 or unit == "TB":
            break
    return f"{value:.1f}".removesuffix(".0") + f" {unit}"


class OutputBudget:
    """How much of one task's output goes to the log: each line cut at ``line``
    bytes, and nothing more once ``total`` bytes were seen (0: nothing at all,
    and no summary: output logging is off).

    Sizes are UTF-8 bytes, and each line counts one more for its newline (a flood
    of empty lines spends the budget too). ``line(text)`` is the text to log, or
    None; ``summary`` says, once the budget ran out, how much was not logged."""

    def __init__(self, total: int, line: int = 4096):
        self.total, self.width = total, line
        self.seen = 0       # bytes of output, newlines included
        self.logged = 0     # bytes of it that were logged
        self.spent = False  # a line was dropped or cut for want of budget

    def line(self, text: str) -> str | None:
        data = None
        if text.isascii():
            size = len(text)
        else:
            data = text.encode("utf-8", "surrogatepass")
            size = len(data)
        room = self.total - self.seen
        self.seen += size + 1
        if room <= 0:
            self.spent = self.spent or self.total > 0
            return None
        keep = min(self.width, room)
        if size <= keep:
            self.logged += size + 1
            return text
        if room < self.width:
            self.spent = True
        # cut at a character boundary: a multibyte character is never split
        kept = text[:keep] if data is None else data[:keep].decode("utf-8", "ignore")
        kept_size = keep if data is None else len(kept.encode("utf-8", "surrogatepass"))
        self.logged += kept_size + 1
        more = size - kept_size
        return f"{kept} [... {more} more byte{'' if more == 1 else 's'}]"

    @property
    def summary(self) -> str:
        if not self.spent:
            return ""
        return (f"output: {human(self.seen - self.logged)} not logged "
                f"(log budget of {human(self.total)} per task)")


class Record(logging.LogRecord):
    """logging's record as ``setup`` has it (no caller frame, thread or process), made
    without the work that then always comes to the same: a command's start and its
    end are logged for every task, and logging's own record cost a quarter of a line."""

    def __init__(self, name, level, pathname, lineno, msg, args, exc_info, func=None,
                 sinfo=None, **kwargs):
        if pathname != UNKNOWN_FILE:   # a caller that gives a file: logging's own way
            super().__init__(name, level, pathname, lineno, msg, args, exc_info, func,
                             sinfo, **kwargs)
            return
        ct = time.time()
        if args and len(args) == 1 and isinstance(args[0], Mapping) and args[0]:
            args = args[0]   # as logging does: "%(a)s" % {"a": ...}
        self.name, self.msg, self.args = name, msg, args
        self.levelname, self.levelno = logging.getLevelName(level), level
        self.pathname = self.filename = self.module = pathname   # as basename, splitext give
        self.exc_info, self.exc_text, self.stack_info = exc_info, None, sinfo
        self.lineno, self.funcName = lineno, func
        self.created, self.msecs = ct, int((ct - int(ct)) * 1000) + 0.0
        self.relativeCreated = (ct - logging._startTime) * 1000
        self.thread = self.threadName = self.processName = self.process = None


class Formatter(logging.Formatter):
    def __init__(self, colour: bool):
        super().__init__(TEXT_FORMAT)
        self.colour = colour
        self.second, self.stamp = None, ""

    def formatTime(self, record: logging.LogRecord, datefmt=None) -> str:
        """logging's own format, its strftime done once a second."""
        second = int(record.created)
        if second != self.second:
            self.second, self.stamp = second, time.strftime(self.default_time_format,
                                                            self.converter(second))
        return self.default_msec_format % (self.stamp, record.msecs)

    def formatMessage(self, record: logging.LogRecord) -> str:
        """The line without the traceback (which ``format`` adds after, unescaped):
        TEXT_FORMAT, written out."""
        return escape(f"{record.asctime} {record.levelname:<7} {record.name}: {record.message}")

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.stack_info:
            text = super().format(record)
        else:   # what logging's format does for a plain line
            record.message = record.getMessage()
            record.asctime = self.formatTime(record)
            text = self.formatMessage(record)
        if not self.colour:
            return text
        stream = getattr(record, "stream", None)
        colour = STREAM_COLOURS.get(stream) or LEVEL_COLOURS.get(record.levelno, "")
        return f"{colour}{text}{RESET}"


class JSONFormatter(logging.Formatter):
    """One JSON object a line: time (unix seconds), level, logger, message, node, and
    the record's channel, task_id and stream when the call gave them."""

    def __init__(self, node: str):
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        line = {"ts": round(record.created, 6), "level": record.levelname,
                "logger": record.name, "message": record.getMessage(), "node": self.node}
        for key in ("channel", "task_id", "stream"):
            value = getattr(record, key, None)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        # ensure_ascii: a message that is not UTF-8 (surrogate escapes) is still a line
        return json.dumps(line)


def setup(colour: bool = False, debug: bool = False, log_file: str = "",
          log_format: str = "text", node: str = "") -> None:
    # records skip what our format never shows (logging's documented optimisations:
    # the caller's frame, thread and process names)
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging.setLogRecordFactory(Record)
    # a command line or output that is not UTF-8 is logged escaped, never an error
    handler = (logging.FileHandler(log_file, encoding="utf-8", errors="backslashreplace")
               if log_file else logging.StreamHandler(sys.stderr))
    handler.setFormatter(JSONFormatter(node) if log_format == "json"
                         else Formatter(colour and not log_file))
    # logging locks the handler twice a line (emit, flush); under gevent's patching
    # that is a lock written in Python. Writing a line never yields to another
    # greenlet, so the thread's own, much cheaper, lock is enough
    handler.lock = get_original("_thread", "RLock")()
    root = logging.getLogger("coyotes")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False


def reopen() -> str:
    """Reopen the log file (logrotate moved it away) -> what was done, for the log."""
    for handler in logging.getLogger("coyotes").handlers:
        if isinstance(handler, logging.FileHandler):
            old = handler.setStream(handler._open())
            if old is not None:
                old.close()
            return f"log: reopened {handler.baseFilename} (USR1)"
    return "log: USR1 received; the log goes to stderr, nothing to reopen"


def banner(config, colour: bool) -> str:
    lines = [f"Coyotes {__version__}  node {config.node_id}",
             f"redis {config.redis_where}"
             + (f"  prefix {config.biz_name}:" if config.biz_name else ""),
             (f"http  {config.http_where}   "
              f"task mode {'on' if config.task_mode else 'off (API only)'}   "
              f"workers per new channel {config.concurrent}")]
    text = BANNER + "\n".join("  " + line for line in lines) + "\n"
    return f"\033[1;33m{text}{RESET}" if colour else text
