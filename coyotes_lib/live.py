"""A running task's output as it comes, for GET /tasks/{id}/output.

The worker adds each line to its task's ``Live`` (the last LINES lines, at most
KEPT_BYTES, numbered); readers replay what is kept and then wait for more.
Nothing waits on a reader: one that falls behind the kept lines is told how
many it missed. A reader on another node asks over Redis: the running node then
``relay``s the task's lines on a pub/sub channel while someone keeps asking, so
a task nobody watches costs nothing but its buffer.
"""

from __future__ import annotations

import collections
import itertools
import json

import gevent
import gevent.event

LINES = 2000          # lines of a running task kept for readers who come late
KEPT_BYTES = 1 << 20  # and at most this much text (a line may be 64 KiB)


class Live:
    def __init__(self, keep: int = LINES, keep_bytes: int = KEPT_BYTES):
        self.lines: collections.deque[tuple[int, str, str]] = collections.deque()
        self.keep, self.keep_bytes, self.size = keep, keep_bytes, 0
        self.seq = 0
        self.ended: dict | None = None   # how the command ended, once it has
        # set (and replaced) at a change that a reader waits for: a task nobody reads
        # makes no event per line
        self.tick = gevent.event.Event()
        self.awaited = False

    def add(self, stream: str, text: str) -> None:
        self.seq += 1
        self.lines.append((self.seq, stream, text))
        self.size += len(text)
        while len(self.lines) > self.keep or self.size > self.keep_bytes:
            self.size -= len(self.lines.popleft()[2])
        self._changed()

    def end(self, how: dict) -> None:
        self.ended = how
        self._changed()

    def _changed(self) -> None:
        if self.awaited:
            self.awaited = False
            tick, self.tick = self.tick, gevent.event.Event()
            tick.set()

    def reader_tick(self) -> gevent.event.Event:
        """The event the next change sets (look at ``since`` after taking it)."""
        self.awaited = True
        return self.tick

    def since(self, seq: int) -> tuple[int, list[tuple[int, str, str]]]:
        """(lines missed, the kept lines numbered after ``seq``)."""
        if not self.lines or self.lines[-1][0] <= seq:
            return 0, []
        first, last = self.lines[0][0], self.lines[-1][0]
        missed = max(0, first - seq - 1)
        # numbers follow one another: the newest last - seq lines, not a scan of all
        newer = list(itertools.islice(reversed(self.lines), last - max(seq, first - 1)))
        return missed, newer[::-1]


def event(kind: str, data) -> bytes:
    """One server-sent event; a line's text is JSON so that it stays one line."""
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


def follow(live: Live, wait: float = 15.0):
    """Server-sent events of ``live``: what is kept, then each new line, until it
    ends (-> how it ended); a comment every ``wait`` seconds keeps proxies open."""
    seq = 0
    while True:
        tick = live.reader_tick()
        missed, lines = live.since(seq)
        if missed:
            yield event("dropped", {"lines": missed})
        for number, stream, text in lines:
            yield event(stream, text)
            seq = number
        if live.ended is not None and not live.since(seq)[1]:
            return live.ended
        if not tick.wait(wait):
            yield b": waiting\n\n"
        gevent.sleep(0)


RELAY_IDLE = 10.0     # seconds a relay goes on after the last reader asked


class Relay:
    """Sends one running task's lines to readers on other nodes: each message is
    JSON, ``{"missed": n, "lines": [[seq, stream, text]...]}``, then ``{"end": true}``.
    A request names the last line its reader has (0: a new reader): lines after it
    are sent again, and a reader that is up to date only keeps the relay going."""

    def __init__(self, live: Live, send):
        self.live, self.send = live, send
        self.wanted = 0.0          # monotonic time of the last request
        self.sent = 0              # the last line sent
        self.replay: int | None = 0   # send again from this line on

    def asked(self, now: float, seq: int = 0) -> None:
        self.wanted = now
        if seq < self.sent:   # a reader behind (or new): what it lacks goes again
            self.replay = seq if self.replay is None else min(self.replay, seq)
            self.live._changed()   # wake the loop: a reader waits

    def run(self, clock) -> None:
        while clock() - self.wanted < RELAY_IDLE:
            tick = self.live.reader_tick()
            if self.replay is not None:
                self.sent, self.replay = min(self.sent, self.replay), None
            seq = self.sent
            missed, lines = self.live.since(seq)
            for start in range(0, len(lines), 200):   # messages of bounded size
                self.send(json.dumps({"missed": missed if start == 0 else 0,
                                      "lines": lines[start:start + 200]}))
            if lines:
                seq = self.sent = lines[-1][0]
            if self.live.ended is not None and not self.live.since(seq)[1]:
                self.send(json.dumps({"end": True}))
                return
            tick.wait(1.0)
