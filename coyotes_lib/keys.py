"""Every Redis key name Coyotes uses, in one place.

The names of the Go daemon are kept as they were (``task:prepare:queue``,
``<chan>:tasks:queue`` ...), with no prefix unless ``-biz-name`` gives one.
Keys that only this daemon uses live under ``task:`` too, so that one
``-biz-name`` separates two deployments completely.
"""

from __future__ import annotations


class Keys:
    def __init__(self, prefix: str = ""):
        self.prefix = f"{prefix}:" if prefix else ""
        p = self.prefix
        self.prepare = p + "task:prepare:queue"   # list: producers LPUSH, we take from the right
        self.channels = p + "task:channels"       # hash: channel name -> JSON settings
        self.dead = p + "task:prepare:dead"       # list: rejected entries with their reason
        self.dead_trimmed = self.dead + ":trimmed"  # string: dead letters trimmed off so far
        self.delayed = p + "task:delay:queue"     # zset: task JSON scored by execute_at
        self.nodes = p + "task:nodes"             # set: ids of nodes that may hold work
        self.wake = p + "task:wake"               # pub/sub: channel queues that got entries
        self.schedules = p + "task:schedules"     # hash: schedule name -> JSON definition
        self.fired = p + "task:schedules:fired"   # hash: schedule name -> its last firing
        self.high = ":high"   # what follows a channel queue's key in its high queue's

    def queue(self, chan: str) -> str:
        return f"{self.prefix}{chan}:tasks:queue"

    def queue_high(self, chan: str) -> str:
        """List: a channel's tasks of high priority, claimed before its queue's."""
        return self.queue(chan) + self.high

    def stats(self, chan: str) -> str:
        """Hash: a channel's finished attempts by outcome and its duration histogram."""
        return f"{self.prefix}task:stats:{chan}"

    def running(self, chan: str) -> str:
        return self.queue(chan) + ":exec"

    def running_and_queue(self, chans) -> list[str]:
        """The running set and queue of each channel, in a row (thousands at a time)."""
        keys = []
        for chan in chans:
            queue = self.queue(chan)
            keys += (queue + ":exec", queue)   # running(chan), queue(chan)
        return keys

    def distinct(self, chan: str, name: str) -> str:
        before, after = self.distinct_around(chan)
        return before + name + after

    def distinct_around(self, chan: str) -> tuple[str, str]:
        """What comes before and after a task's name in its distinct flag's key
        (for a script that finds the names in the entries)."""
        return f"{self.queue(chan)}:", ":dis"

    def failed(self, chan: str) -> str:
        """Hash: task id -> task JSON, the tasks that used up their attempts (Go's name)."""
        return self.queue(chan) + ":failed"

    def failed_index(self, chan: str) -> str:
        """Zset: task id scored by when it failed, to page through ``failed``."""
        return self.queue(chan) + ":failed:index"

    def record(self, task_id: str) -> str:
        """Hash: the record of one task (status, times, exit code, output tails)."""
        return f"{self.prefix}task:record:{task_id}"

    def kill_requests(self, node: str) -> str:
        """Set: ids of tasks running on ``node`` that a caller asked to kill."""
        return f"{self.prefix}task:node:{node}:kill"

    def heartbeat(self, node: str) -> str:
        return f"{self.prefix}task:node:{node}"

    def processing(self, node: str, chan: str) -> str:
        """Entries of ``chan`` that ``node`` has claimed and not yet finished."""
        return f"{self.prefix}task:node:{node}:processing:{chan}"

    def node_info(self, node: str) -> str:
        """Hash: what GET /nodes shows of ``node`` (host, pid, version, ...), kept
        as long as its heartbeat; a ``drain`` field asks it to drain and exit."""
        return f"{self.prefix}task:node:{node}:info"

    def output(self, task_id: str) -> str:
        """Pub/sub channel (not a key): the lines of a running task, sent by its node
        while a reader on another node asks (``output_wanted`` on ``wake``)."""
        return f"{self.prefix}task:output:{task_id}"

    def output_wanted(self, task_id: str) -> str:
        """A message on ``wake``: a reader wants this task's lines (followed by a
        newline and the last line it has)."""
        return f"{self.prefix}task:output-wanted:{task_id}"

    def drain(self, node: str) -> str:
        """The message on ``wake`` that tells ``node`` to drain (not a key)."""
        return f"{self.prefix}task:node:{node}:drain"

    def node_channels(self, node: str) -> str:
        """Set of the channels ``node`` claims from (so a reaper finds every list)."""
        return f"{self.prefix}task:node:{node}:channels"

    def staging(self, node: str) -> str:
        """Prepare-queue entries that ``node`` is routing right now."""
        return f"{self.prefix}task:node:{node}:prepare"
