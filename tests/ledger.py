"""Test helper run as a task: ledger.py PATH TAG SECONDS.

Appends 'start TAG <time>' to PATH, sleeps, appends 'end TAG <time>'; each
line is one O_APPEND write, so concurrent tasks never interleave.
"""

import os
import sys
import time


def note(path: str, event: str, tag: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{event} {tag} {time.time()}\n".encode())
    finally:
        os.close(fd)


if __name__ == "__main__":
    path, tag, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    note(path, "start", tag)
    time.sleep(seconds)
    note(path, "end", tag)
