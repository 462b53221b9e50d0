"""Logging set-up, colours and the start-up banner.

Everything goes through ``logging`` under ``coyotes.*``; command output goes
to ``coyotes.output`` with the channel, worker and command in each line.
``-colorful-tty`` colours levels and output lines and prints a banner;
``-log-file`` sends it all to a file instead of stderr.
"""

from __future__ import annotations

import logging
import sys
import time

from gevent.monkey import get_original

from . import __version__

RESET = "\033[0m"
LEVEL_COLOURS = {logging.DEBUG: "\033[90m", logging.INFO: "\033[32m",
                 logging.WARNING: "\033[33m", logging.ERROR: "\033[31m",
                 logging.CRITICAL: "\033[1;31m"}
STREAM_COLOURS = {"stdout": "\033[36m", "stderr": "\033[35m"}

BANNER = r"""
   ______                  __
  / ____/___  __  ______  / /____  _____
 / /   / __ \/ / / / __ \/ __/ _ \/ ___/
/ /___/ /_/ / /_/ / /_/ / /_/  __(__  )
\____/\____/\__, /\____/\__/\___/____/
           /____/   you give me the command, I run it.
"""


class Formatter(logging.Formatter):
    def __init__(self, colour: bool):
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        self.colour = colour
        self.second, self.stamp = None, ""

    def formatTime(self, record: logging.LogRecord, datefmt=None) -> str:
        """logging's own format, its strftime done once a second."""
        second = int(record.created)
        if second != self.second:
            self.second, self.stamp = second, time.strftime(self.default_time_format,
                                                            self.converter(second))
        return self.default_msec_format % (self.stamp, record.msecs)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if not self.colour:
            return text
        stream = getattr(record, "stream", None)
        colour = STREAM_COLOURS.get(stream) or LEVEL_COLOURS.get(record.levelno, "")
        return f"{colour}{text}{RESET}"


def setup(colour: bool = False, debug: bool = False, log_file: str = "") -> None:
    # records skip what our format never shows (logging's documented optimisations:
    # the caller's frame, thread and process names), a third of a line's cost
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    # a command line or output that is not UTF-8 is logged escaped, never an error
    handler = (logging.FileHandler(log_file, encoding="utf-8", errors="backslashreplace")
               if log_file else logging.StreamHandler(sys.stderr))
    handler.setFormatter(Formatter(colour and not log_file))
    # logging locks the handler twice a line (emit, flush); under gevent's patching
    # that is a lock written in Python. Writing a line never yields to another
    # greenlet, so the thread's own lock is enough, at a tenth of the cost
    handler.lock = get_original("_thread", "RLock")()
    root = logging.getLogger("coyotes")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False


def banner(config, colour: bool) -> str:
    lines = [f"Coyotes {__version__}  node {config.node_id}",
             f"redis {config.redis_host}:{config.redis_port} db {config.redis_db}"
             + (f"  prefix {config.biz_name}:" if config.biz_name else ""),
             (f"http  {config.http_host}:{config.http_port}   "
              f"task mode {'on' if config.task_mode else 'off (API only)'}   "
              f"workers per new channel {config.concurrent}")]
    text = BANNER + "\n".join("  " + line for line in lines) + "\n"
    return f"\033[1;33m{text}{RESET}" if colour else text
