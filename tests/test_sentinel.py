"""Redis Sentinel: a master, a replica and a sentinel as real processes. The
daemon finds the master through the sentinels (the first one listed does not
answer). In the middle of running tasks the master is killed with SIGKILL, or
an operator asks for a failover (the old master lives on as a replica); the
sentinel promotes the replica, and every task pushed before and after the
failover runs (at least once).
"""

from __future__ import annotations

import json
import subprocess

import pytest
import redis
from conftest import ended, free_port, ledger_command, started, stop_process, wait_until
from harness import Coyotes, RedisServer

MASTER = "coyotes-main"


def sentinel_process(tmp_path, master_port: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    conf = tmp_path / "sentinel.conf"   # the sentinel rewrites it: a file of its own
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                    f"logfile {tmp_path / 'sentinel.log'}\n"
                    f"sentinel monitor {MASTER} 127.0.0.1 {master_port} 1\n"
                    f"sentinel down-after-milliseconds {MASTER} 1000\n"
                    f"sentinel failover-timeout {MASTER} 10000\n")
    proc = subprocess.Popen(["redis-server", str(conf), "--sentinel"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    return proc, port


def push(client: redis.Redis, ledger, tags, sleep: float) -> None:
    for tag in tags:
        client.lpush("task:prepare:queue", json.dumps(
            {"task": ledger_command(ledger, tag, sleep), "chan": "default"}))


@pytest.mark.parametrize("failover", ["master killed", "asked for"])
def test_the_daemon_follows_a_failover_and_loses_no_task(tmp_path, failover):
    (tmp_path / "master").mkdir()
    (tmp_path / "replica").mkdir()
    master = RedisServer(tmp_path / "master").start()
    replica = RedisServer(tmp_path / "replica",
                          extra=["--replicaof", "127.0.0.1", str(master.port)]).start()
    sentinel, sentinel_port = sentinel_process(tmp_path, master.port)
    daemon = None
    try:
        wait_until(lambda: replica.client().info("replication")["master_link_status"] == "up",
                   what="the replica in sync")
        watcher = redis.Redis(port=sentinel_port, decode_responses=True, socket_timeout=5)

        def knows_the_replica() -> bool:
            try:
                return len(watcher.sentinel_slaves(MASTER)) == 1
            except redis.ConnectionError:   # not listening yet
                return False
        wait_until(knows_the_replica, timeout=30, what="the sentinel to see the replica")

        ledger = tmp_path / "ledger"
        dead = free_port()   # a sentinel that does not answer is skipped
        daemon = Coyotes(free_port(), tmp_path, [
            "-redis-sentinel", f"127.0.0.1:{dead},127.0.0.1:{sentinel_port}",
            "-redis-sentinel-master", MASTER, "-concurrent", "3"], node_id="n1").start()
        assert (f"redis sentinel://127.0.0.1:{dead},127.0.0.1:{sentinel_port}/{MASTER} db 0"
                in daemon.log())

        before = [f"before{i}" for i in range(9)]
        push(master.client(), ledger, before, 0.5)
        assert master.client().wait(1, 5000) == 1   # the pushes reached the replica
        wait_until(lambda: started(ledger, "before0"), what="the first task to start")

        if failover == "master killed":
            master.kill()
        else:
            watcher.execute_command("SENTINEL", "FAILOVER", MASTER)
        wait_until(lambda: watcher.sentinel_get_master_addr_by_name(MASTER)[1]
                   == replica.port, timeout=60, what="the sentinel to promote the replica")
        after = [f"after{i}" for i in range(9)]
        push(replica.client(), ledger, after, 0)

        wait_until(lambda: all(ended(ledger, tag) for tag in before + after), timeout=90,
                   what="every task pushed before and after the failover to run")
        # the daemon now works on the promoted replica: its heartbeat and records are there
        promoted = replica.client()
        wait_until(lambda: promoted.exists("task:node:n1"), what="a heartbeat on the new master")
        assert promoted.llen("task:prepare:queue") == 0
        if failover == "asked for":   # the old master, alive, became a replica
            wait_until(lambda: master.client().info("replication")["role"] == "slave",
                       what="the old master to follow the new one")
        assert daemon.request("GET", "/health")[0] == 200
    finally:
        if daemon is not None:
            daemon.reap()
        stop_process(sentinel)
        replica.stop()
        master.stop()
