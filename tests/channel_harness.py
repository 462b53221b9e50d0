"""One Channel against a real Redis, with a fake runner instead of processes.

Run as a script in a child Python (gevent patches the process):
``channel_harness.py REDIS_PORT SCENARIO``; prints the records, dead letters
and lists it leaves as JSON. The fake runner is injected through the
channel's constructor, as the daemon injects the real one: its "command"
``fake exit=N print=TEXT sleep=S fail=ERRNO-NAME`` prints, waits and exits
without starting a process.
"""

from gevent import monkey

monkey.patch_all()

import dataclasses
import errno
import json
import os
import sys

import gevent
import gevent.event

from coyotes_lib.broker import Broker
from coyotes_lib.channel import Channel, Limits
from coyotes_lib.connection import connect
from coyotes_lib.keys import Keys
from coyotes_lib.model import ChannelSpec
from coyotes_lib.runners import Process
from coyotes_lib.task import Policy, build

NO_SUCH_GROUP = 2**30   # above any pid_max: signalling its group finds nothing


class FakeRunner:
    """``start`` as the real runners have it; ``fail=EMFILE`` fails the first start
    of that command only, as a shortage that passes would."""

    def __init__(self):
        self.starts: list[list[str]] = []
        self.failed: set[str] = set()

    def start(self, argv, env, stdout: int, stderr: int) -> Process:
        self.starts.append(list(argv))
        opts = dict(arg.split("=", 1) for arg in argv[1:] if "=" in arg)
        name = opts.get("fail")
        if name and " ".join(argv) not in self.failed:
            self.failed.add(" ".join(argv))
            os.close(stdout)
            os.close(stderr)
            code = getattr(errno, name)
            raise OSError(code, os.strerror(code), argv[0])
        if "print" in opts:
            os.write(stdout, opts["print"].encode() + b"\n")
        os.close(stdout)
        os.close(stderr)
        seconds, code = float(opts.get("sleep", 0)), int(opts.get("exit", 0))

        def wait() -> int:
            gevent.sleep(seconds)
            return code
        return Process(NO_SUCH_GROUP, wait)


def main(port: int, scenario: str) -> None:
    keys = Keys()
    broker = Broker(connect("127.0.0.1", port), keys, "harness")
    broker.load_scripts()
    spec = ChannelSpec("fake", False, 2, Policy())
    broker.add_channel(spec)
    tasks = SCENARIOS[scenario]
    for task_id, command, extra in tasks["push"]:
        if task_id is None:   # an entry as an old producer pushes it, straight in
            broker.redis.lpush(keys.queue("fake"), command)
        else:
            broker.push(build("fake", command, task_id=task_id, extra=extra), False)
    stop, give_up = gevent.event.Event(), gevent.event.Event()
    runner = FakeRunner()
    channel = Channel(spec, broker, stop, give_up, runner, Limits())
    channel.start()
    deadline = gevent.Timeout(20)
    deadline.start()
    notes = tasks["then"](broker, channel) if "then" in tasks else None
    try:
        while not tasks["done"](broker):
            gevent.sleep(0.02)
    finally:
        deadline.close()
        stop.set()
        channel.greenlet.join(timeout=3)
        channel.workers.join(timeout=3)
    ids = [task_id for task_id, _, _ in tasks["push"] if task_id] + tasks.get("ids", [])
    print(json.dumps({
        "records": {task_id: broker.record(task_id) for task_id in ids},
        "dead": [json.loads(letter) for letter in broker.redis.lrange(keys.dead, 0, -1)],
        "processing": broker.claimed("fake"),
        "running": sorted(broker.redis.smembers(keys.running("fake"))),
        "delayed": broker.redis.zcard(keys.delayed),
        "starts": runner.starts,
        "notes": notes,
    }))


def loan(lost: bool):
    """What the routing loop does for an idle channel: the push of three tasks
    claims for it in the same round trip; ``lost``: as if that reply never came."""
    def then(broker, channel) -> dict:
        while not (most := channel.lend()):   # until the dispatcher's first claim is over
            gevent.sleep(0.01)
        again = channel.lend()   # one loan at a time
        pushes = [(build("fake", f"fake print={i}", task_id=f"l{i}"), False, "") for i in "123"]
        outcomes, claimed = broker.push_claiming(pushes, {"fake": (most, 0)})
        parsed = {task.raw: task for task, _, _ in pushes}   # as the routing loop gives them
        channel.repaid(None if lost else [dataclasses.replace(c, task=parsed[c.raw])
                                          for c in claimed["fake"]])
        return {"most": most, "again": again, "outcomes": outcomes,
                "claimed": [c.task_id for c in claimed["fake"]],
                "started_at_once": [argv[1:] for argv in channel.run_with.starts]}
    return then


def final(*ids):
    final_states = {"succeeded", "failed", "timed_out", "canceled", "killed", "delayed"}
    return lambda broker: all((broker.record(i) or {}).get("status") in final_states
                              for i in ids)


SCENARIOS = {
    "run": {"push": [("a", "fake print=hello", {}), ("b", "fake exit=3", {}),
                     ("c", "fake sleep=0.2 print=late", {})],
            "done": final("a", "b", "c")},
    "transient": {"push": [("t", "fake fail=EMFILE print=second", {})],
                  "done": final("t")},
    "missing": {"push": [("m", "fake fail=ENOENT", {})], "done": final("m")},
    "retry": {"push": [("r", "fake exit=1", {"retries": 2, "retry_backoff": 60})],
              "done": final("r")},
    "bad": {"push": [(None, '{"id": "x", "task": "fake \\ud800"}', {}),
                     ("after", "fake print=after", {})],
            "done": lambda broker: final("after")(broker)
            and broker.redis.llen(broker.keys.dead) == 1},
    "loan": {"push": [], "then": loan(lost=False), "ids": ["l1", "l2", "l3"],
             "done": final("l1", "l2", "l3")},
    "lost-loan": {"push": [], "then": loan(lost=True), "ids": ["l1", "l2", "l3"],
                  "done": final("l1", "l2", "l3")},
}


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
