"""The Redis ACL recipe of docs/SECURITY.md, against a real redis-server: a
producer user that may only push to the prepare queue, and the daemon's own
user. Every rule comes from the docs' recipe itself, so the docs and the test
cannot drift apart.
"""

from __future__ import annotations

import json
import re

import pytest
import redis
from conftest import ROOT, ended, free_port, ledger_command, stop_process, wait_until
from test_redis_url import answers, redis_server

PRODUCER_PW, DAEMON_PW = "producer-pw-1234", "daemon-pw-5678"


def recipe() -> dict[str, list[str]]:
    """user -> ACL rules, read from the ACL SETUSER lines of docs/SECURITY.md."""
    text = (ROOT / "docs" / "SECURITY.md").read_text()
    users = {}
    for user, rules in re.findall(r"^ACL SETUSER (\S+) (.+)$", text, re.M):
        users[user] = rules.split()
    assert set(users) == {"coyotes", "producer"}, users
    return users


def server_args(users: dict[str, list[str]]) -> list[str]:
    args = ["--user", "default", "off"]
    passwords = {"coyotes": DAEMON_PW, "producer": PRODUCER_PW}
    for user, rules in users.items():
        args += ["--user", user, *[f">{passwords[user]}" if rule.startswith(">") else rule
                                   for rule in rules]]
    return args


def test_a_producer_may_only_push_and_the_daemon_runs_what_it_pushed(coyotes_factory,
                                                                      tmp_path):
    port = free_port()
    server = redis_server(tmp_path, "--port", str(port), *server_args(recipe()))
    try:
        producer = redis.Redis(port=port, username="producer", password=PRODUCER_PW,
                               decode_responses=True)
        wait_until(lambda: answers(producer), what="redis-server with ACL users")
        daemon = coyotes_factory("-redis-url", f"redis://coyotes:{DAEMON_PW}@127.0.0.1:{port}")
        ledger = tmp_path / "ledger"
        producer.lpush("task:prepare:queue", json.dumps({"task": ledger_command(ledger, "a")}))
        wait_until(lambda: ended(ledger, "a"), what="the producer's task to run")

        # what the producer may not do: read anything, write anything but the queue
        task_id = next(iter(redis.Redis(port=port, username="coyotes", password=DAEMON_PW,
                                        decode_responses=True).scan_iter("task:record:*")))
        refused = [
            lambda: producer.hgetall(task_id),                               # records
            lambda: producer.lrange("task:prepare:queue", 0, -1),            # other pushes
            lambda: producer.hset("task:channels", "x", "{}"),               # channel settings
            lambda: producer.hget("task:channels", "default"),
            lambda: producer.lpush("default:tasks:queue", "touch /tmp/x"),   # a channel queue
            lambda: producer.delete("task:prepare:queue"),
            lambda: producer.eval("return 1", 0),                            # scripts
            lambda: producer.publish("task:wake", "x"),
            lambda: producer.config_get("*"), lambda: producer.flushall(),
        ]
        for call in refused:
            with pytest.raises(redis.exceptions.NoPermissionError):
                call()
        assert "NOPERM" not in daemon.log() and "Traceback" not in daemon.log()
        assert daemon.request("GET", "/health")[0] == 200
    finally:
        stop_process(server)
