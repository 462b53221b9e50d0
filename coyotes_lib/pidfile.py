"""The pid file, done as gunicorn does it, and whether a pid is alive.

Refuse to start while the file names a live process, replace a stale file,
write it atomically (a temporary file renamed), and on exit remove it only if
it still names us.
"""

from __future__ import annotations

import logging
import os
import tempfile

log = logging.getLogger("coyotes.pidfile")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PidFileError(Exception):
    pass


class PidFile:
    """gunicorn's rules: refuse a live owner, replace a stale file, write
    atomically, and on exit remove the file only if it still names us."""

    def __init__(self, path: str):
        self.path = path
        self.pid = 0

    def acquire(self) -> None:
        other = self.read()
        if other and other != os.getpid() and pid_alive(other):
            raise PidFileError(f"pid file {self.path} names running process {other}; "
                               "is another coyotes running?")
        if other:
            log.warning("pid file %s: replacing a stale file (pid %d is gone)", self.path, other)
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(prefix=".coyotes-", dir=directory)
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.path)
        self.pid = os.getpid()

    def read(self) -> int:
        try:
            with open(self.path) as f:
                return int(f.read().strip() or 0)
        except FileNotFoundError:
            return 0
        except ValueError:
            return 0

    def release(self) -> None:
        if self.pid and self.read() == self.pid:
            os.unlink(self.path)
