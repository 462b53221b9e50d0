"""What the API reads from Redis to show: channel pages, records, failed and
delayed tasks, dead letters. ``Broker`` has these methods; they only read.
"""

from __future__ import annotations

import redis

from .connection import Lean, Script
from .keys import Keys
from .task import legacy_id, locate


class Listings:
    """Read-only queries, mixed into ``Broker``, which provides ``redis``, ``keys``,
    ``lean`` and the COUNTS script."""

    redis: redis.Redis
    keys: Keys
    lean: Lean
    _counts: Script

    def channel_tasks(self, chans: list[str], offset: int = 0, limit: int = 100):
        """Each channel's running entries, then its queued entries in run order (its
        high queue's first), sliced, and their total count, in at most three round
        trips: {chan: (page, count)}."""
        k = self.keys
        if not chans:
            return {}
        counts = self._counts(keys=k.running_and_queue(chans), args=[k.high])
        busy = [chan for i, chan in enumerate(chans) if counts[3 * i]]
        members = dict(zip(busy, self.lean.round_trip(
            [("SMEMBERS", k.running(chan)) for chan in busy]) if busy else [], strict=True))
        pages, ranges = {}, []
        for i, chan in enumerate(chans):
            n_running, highs, queued = counts[3 * i:3 * i + 3]
            if not (n_running or highs or queued):
                pages[chan] = ([], 0)   # most of thousands of channels: nothing to read
                continue
            running = members.get(chan, ())
            if isinstance(running, Exception):
                raise running
            running = sorted(running)
            page = [(raw, "running") for raw in running[offset:offset + limit]]
            start, want = max(0, offset - len(running)), limit - len(page)
            pages[chan] = (page, len(running) + highs + queued)
            for key, size in ((k.queue_high(chan), highs), (k.queue(chan), queued)):
                if want > 0 and start < size:   # taken from the right: the next is at -1
                    take = min(want, size - start)
                    ranges.append((chan, ("LRANGE", key, -(start + take), -(start + 1))))
                    want -= take
                start = max(0, start - size)
        tails = self.lean.round_trip([cmd for _, cmd in ranges]) if ranges else []
        for (chan, _), raws in zip(ranges, tails, strict=True):
            if isinstance(raws, Exception):
                raise raws
            pages[chan][0].extend((raw, "queued") for raw in reversed(raws))
        return pages

    def where_running(self, task_ids: list[str]) -> list[dict]:
        """For each task: the node running it, since when and its pid (once the node
        noted it), from the records, in one round trip."""
        fields = ("node", "started_at", "pid")
        replies = self.lean.round_trip([("HMGET", self.keys.record(task_id), *fields)
                                        for task_id in task_ids]) if task_ids else []
        out = []
        for reply in replies:
            if isinstance(reply, Exception):   # a record key of another type: not shown
                reply = [None] * len(fields)
            node, started, pid = reply
            out.append({"node": node, "started_at": float(started) if started else None,
                        "pid": int(pid) if pid else None})
        return out

    def channel_counts(self, chan: str) -> dict[str, int]:
        """How many of a channel's tasks run, wait and failed (one round trip)."""
        replies = self.lean.round_trip(count_commands(self.keys, chan))
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return counts_of(replies)

    def record(self, task_id: str) -> dict | None:
        data = self.redis.hgetall(self.keys.record(task_id))
        return data or None

    def records(self, task_ids: list[str]) -> list[dict]:
        with self.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hgetall(self.keys.record(task_id))
            return pipe.execute() if task_ids else []

    def find_unrecorded(self, task_id: str, channels, scan: int = 100_000) -> dict | None:
        """An entry queued without a record (a plain string left by the Go daemon),
        found by its derived id among the first ``scan`` entries of each channel."""
        for chan in channels:
            for start in range(0, scan, 1000):
                chunk = self.redis.lrange(self.keys.queue(chan), start, start + 999)
                for raw in chunk:
                    if legacy_id(raw) == task_id:
                        return {"channel": chan, "raw": raw, "task_name": raw, "id": task_id}
                if len(chunk) < 1000:
                    break
        return None

    def failed_tasks(self, chan: str, offset: int = 0, limit: int = 100):
        """(raw entries, newest failure first; total count)."""
        k = self.keys
        index = k.failed_index(chan)
        ids, count = self._page(lambda pipe: pipe.zrevrange(index, offset, offset + limit - 1),
                                ("zcard", index), limit)
        entries = self.redis.hmget(k.failed(chan), ids) if ids else []
        return [e for e in entries if e is not None], count

    def failed_task(self, chan: str, task_id: str) -> str | None:
        return self.redis.hget(self.keys.failed(chan), task_id)

    def failed_ids(self, chan: str, before: float, limit: int = 1000) -> list[str]:
        """Ids of tasks that failed no later than ``before`` (Redis time), oldest first."""
        return self.redis.zrangebyscore(self.keys.failed_index(chan), "-inf", before, 0, limit)

    def delayed_tasks(self, offset: int = 0, limit: int = 100):
        """(raw entries with their due time, soonest first; total count)."""
        return self._page(lambda pipe: pipe.zrange(self.keys.delayed, offset, offset + limit - 1,
                                                   withscores=True),
                          ("zcard", self.keys.delayed), limit)

    def delayed_task(self, task_id: str) -> tuple[str, float] | None:
        record = self.record(task_id)
        if not record or "raw" not in record:
            return None
        score = self.redis.zscore(self.keys.delayed, record["raw"])
        return None if score is None else (record["raw"], score)

    def dead_letters(self, offset: int = 0, limit: int = 100):
        """(entries, newest first; count; how many were trimmed off the end so far)."""
        entries, count = self._page(
            lambda pipe: pipe.lrange(self.keys.dead, offset, offset + limit - 1),
            ("llen", self.keys.dead), limit)
        return entries, count, int(self.redis.get(self.keys.dead_trimmed) or 0)

    def find_dead_letter(self, wanted, hint: int | None = None,
                         chunk: int = 1000) -> str | None:
        """The first dead letter for which ``wanted(text)`` holds: the one at index
        ``hint`` if it does (where a listing showed it), else a chunk at a time from
        the newest (the list may hold millions, of up to 16 KiB each)."""
        if hint is not None:
            text = self.redis.lindex(self.keys.dead, hint)
            if text is not None and wanted(text):
                return text
        start = 0
        while texts := self.redis.lrange(self.keys.dead, start, start + chunk - 1):
            for text in texts:
                if wanted(text):
                    return text
            start += chunk
        return None

    def delayed_channels(self, most: int) -> dict[str, int]:
        """{channel: its delayed tasks} among the ``most`` soonest: the set is one for
        all channels, so counting each channel's means reading entries, and a huge
        set is only sampled."""
        out: dict[str, int] = {}
        for raw in self.redis.zrange(self.keys.delayed, 0, most - 1):
            chan = locate(raw)[0]
            out[chan] = out.get(chan, 0) + 1
        return out

    def _page(self, pipe_range, count: tuple[str, str], limit: int) -> tuple[list, int]:
        """(a page, the total) in one round trip; no range at all for limit 0 (a range
        ending at offset - 1 = -1 would be the whole list)."""
        with self.redis.pipeline(transaction=False) as pipe:
            getattr(pipe, count[0])(count[1])
            if limit:
                pipe_range(pipe)
            total, *page = pipe.execute()
        return (page[0] if page else []), total


def count_commands(k, chan: str) -> list[tuple]:
    """The commands that count a channel's running, queued (both queues) and failed
    tasks; ``counts_of`` reads their replies."""
    return [("SCARD", k.running(chan)), ("LLEN", k.queue(chan)), ("LLEN", k.queue_high(chan)),
            ("ZCARD", k.failed_index(chan))]


def counts_of(replies) -> dict[str, int]:
    running, queued, highs, failed = replies
    return {"running": running, "queued": queued + highs, "failed": failed}
