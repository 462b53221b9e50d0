"""The values that cross between the broker and its callers: a channel's settings,
what queueing, claiming and starting a task found, and how an attempt ends.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import typing

from .policy import BadPolicy, CommandPolicy
from .task import POLICY_LIMITS, BadTask, Policy, Task

MAX_WORKERS = 1000
MAX_RUNNING = 100_000
# a channel's settings: the fields of PATCH /channels/<name> and of a config file's
# [channels.<name>] table
SETTINGS = ("worker", "distinct", "max_running", *POLICY_LIMITS, "command_policy")


@dataclasses.dataclass(frozen=True)
class ChannelSpec:
    """A channel's settings, as ``task:channels`` holds them: the Go daemon's three
    fields first (it ignores the others), then what differs from the defaults."""
    name: str
    distinct: bool
    worker_count: int
    policy: Policy = dataclasses.field(default_factory=Policy)
    paused: bool = False   # no task is claimed; running ones finish
    max_running: int = 0   # most of its tasks running on all nodes together, 0 = no limit
    command_policy: CommandPolicy | None = None   # what its tasks may run, and how

    def to_json(self, shown: bool = False) -> str:
        """As ``task:channels`` holds it; ``shown``: for the log (see ``to_dict``)."""
        more = {"paused": True} if self.paused else {}
        if self.max_running:
            more["max_running"] = self.max_running
        if self.command_policy is not None:
            more["command_policy"] = self.command_policy.to_dict(shown)
        return json.dumps({"name": self.name, "distinct": self.distinct,
                           "worker_count": self.worker_count, **self.policy.to_dict(),
                           **more})

    def settings(self) -> dict:
        """What the API shows of them."""
        return {"distinct": self.distinct, "worker": self.worker_count,
                "max_running": self.max_running, "paused": self.paused,
                **dataclasses.asdict(self.policy),
                "command_policy": None if self.command_policy is None
                else self.command_policy.to_dict(shown=True)}


def from_file(name: str, fields: dict, base: ChannelSpec) -> ChannelSpec:
    """``base`` with the settings of a config file's ``[channels.<name>]`` table (the
    fields of ``PATCH /channels/{name}``, TOML-typed); ValueError with the reason."""
    unknown = sorted(set(fields) - set(SETTINGS))
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}; a channel's are "
                         f"{', '.join(SETTINGS)}")
    changes: dict = {}
    for key, attr, low, high in (("worker", "worker_count", 1, MAX_WORKERS),
                                 ("max_running", "max_running", 0, MAX_RUNNING)):
        if key in fields:
            value = fields[key]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{key} must be an integer {low}..{high}")
            changes[attr] = value
    if "distinct" in fields:
        if not isinstance(fields["distinct"], bool):
            raise ValueError("distinct must be true or false")
        changes["distinct"] = fields["distinct"]
    if "command_policy" in fields:
        try:
            changes["command_policy"] = CommandPolicy.parse(fields["command_policy"])
        except BadPolicy as exc:
            raise ValueError(str(exc)) from None
    try:
        policy = base.policy.merge(fields)
    except BadTask as exc:
        raise ValueError(str(exc)) from None
    return dataclasses.replace(base, name=name, policy=policy, **changes)


class Deleted(enum.IntEnum):
    """What DELETE_CHANNEL did (its return code)."""
    DELETED = 1
    UNKNOWN = 0          # no such channel
    BUSY = 2             # tasks wait in its queue: neither moved nor dropped
    NO_TARGET = 3        # the channel to move them to does not exist


class Enqueued(enum.IntEnum):
    """What ENQUEUE did with a task (its return code)."""
    REFUSED = 0         # the distinct rule: the same command is queued or running
    QUEUED = 1
    DELAYED = 2
    ID_IN_USE = 3       # by a task that has not finished, or one kept among the failed
    NOT_OURS = 4        # the staged entry went back to the queue (this node was reaped)
    FOREIGN_RECORD = 5  # the id's record key holds another type: nothing done
    NO_CHANNEL = 6      # the channel was deleted (another node's settings lag behind)


class Outcome(enum.StrEnum):
    """How FINISH records an attempt."""
    DONE = "done"       # final; the record expires after the record TTL
    FAILED = "failed"   # final, kept in the channel's failed tasks
    RETRY = "retry"     # into the delayed set for another attempt


class Started(typing.NamedTuple):
    """What starting a claimed task found in its record."""
    attempt: int        # this attempt's number; 0 = no longer ours, FOREIGN_RECORD
    redeliveries: int   # times its node died under it
    kill: bool          # a caller asked to kill it before it started
    retries: int        # retries so far

    @classmethod
    def of(cls, reply) -> Started:
        attempt, redeliveries, kill, retries = reply
        return cls(int(attempt), int(redeliveries), bool(kill), int(retries))


# the attempt of a Started when the task's record key holds another type: not started
FOREIGN_RECORD = -1


@dataclasses.dataclass(frozen=True)
class Claim:
    """A claimed entry; ``task_id`` and ``started`` are set when CLAIM started it
    (else the worker calls ``Broker.start``), ``task`` when this node parsed the
    entry already (it routed it a moment ago: no need to read it again)."""
    raw: str
    task_id: str = ""
    started: Started | None = None
    task: Task | None = None
