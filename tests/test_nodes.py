"""Several nodes on one Redis, as GET /nodes shows them: work spread over three
real daemons, one killed with -9 (its task runs again elsewhere, nothing is
lost), one told to drain through the API (it finishes its task and exits 0).
"""

from __future__ import annotations

import socket
import time

from conftest import assert_error, ended, gate_command, ok_data, started, wait_until

from coyotes_lib import __version__

TTL = 3   # -node-ttl: a killed node's work comes back within seconds


def by_id(daemon) -> dict[str, dict]:
    return {node["id"]: node for node in ok_data(daemon.request("GET", "/nodes"))["nodes"]}


def record(daemon, task_id: str) -> dict:
    return ok_data(daemon.request("GET", f"/tasks/{task_id}"))


def test_three_nodes_share_the_work_survive_a_kill_and_drain_on_request(
        coyotes_factory, tmp_path, gate):
    n0, n1, n2 = (coyotes_factory("-node-ttl", str(TTL), node_id=f"n{i}") for i in range(3))
    nodes = by_id(n0)
    assert set(nodes) == {"n0", "n1", "n2"}
    for daemon, node_id in ((n0, "n0"), (n1, "n1"), (n2, "n2")):
        node = nodes[node_id]
        assert node["alive"] is True and node["draining"] is False, node
        assert (node["host"], node["pid"], node["version"]) == \
            (socket.gethostname(), daemon.pid, __version__)
        assert time.time() - 60 < node["started_at"] <= time.time()
        assert 0 <= node["heartbeat_age"] <= TTL
        assert {"default", "biz", "cron"} <= set(node["channels"])

    # one worker per node: three tasks at once can only run one on each node
    assert ok_data(n0.request("POST", "/channels", {"name": "spread", "worker": 1})) is None
    ledger = tmp_path / "ledger"
    ids = [ok_data(daemon.request("POST", "/channels/spread/tasks",
                                  {"task": gate_command(ledger, gate, tag)}))["task_id"]
           for daemon, tag in ((n0, "a"), (n1, "b"), (n2, "c"))]
    wait_until(lambda: all(started(ledger, tag) for tag in "abc"), what="a, b and c running")
    where = {record(n0, task_id)["node"]: task_id for task_id in ids}
    assert set(where) == {"n0", "n1", "n2"}
    assert sorted(ok_data(n0.request("GET", "/channels/spread"))["nodes"]) == ["n0", "n1", "n2"]
    listing = ok_data(n1.request("GET", "/channels"))
    assert {name: sorted(view["nodes"]) for name, view in listing.items()} == \
        {name: ["n0", "n1", "n2"] for name in ("biz", "cron", "default", "spread")}
    wait_until(lambda: all(node["running"] == 1 for node in by_id(n1).values()),
               what="each node says it runs one command (at its next heartbeat)")

    # n2 is told to drain: it claims nothing more and exits once its task is done
    assert ok_data(n1.request("POST", "/nodes/n2/drain")) == {"node": "n2", "draining": True}
    assert by_id(n0)["n2"]["draining"] is True
    wait_until(lambda: "drain asked" in n2.log(), what="n2 heard it")

    # n1 dies: once its heartbeat expires its task is requeued; the other two are busy
    n1.kill9()
    wait_until(lambda: "n1" not in by_id(n0) or not by_id(n0)["n1"]["alive"],
               timeout=TTL + 5, what="n1's heartbeat expired")
    assert_error(n0.request("POST", "/nodes/n1/drain"), 404)
    assert_error(n0.request("POST", "/nodes/nope/drain"), 404)
    wait_until(lambda: record(n0, where["n1"])["status"] == "queued", timeout=TTL + 10,
               what="n1's task requeued by a survivor")

    gate.touch()
    assert n2.wait(30) == 0   # drained: a clean exit
    for task_id in ids:   # nothing lost: n1's task ran again, on n0 (n2 was draining)
        wait_until(lambda task_id=task_id: record(n0, task_id)["status"] == "succeeded",
                   timeout=20, what=f"task {task_id} succeeded")
    again = record(n0, where["n1"])
    assert (again["node"], again["attempt"], again["redeliveries"]) == ("n0", 2, 1), again
    assert record(n0, where["n2"])["node"] == "n2"
    assert ended(ledger, "b")
    assert set(by_id(n0)) == {"n0"}   # n2 left cleanly, n1 was reaped and forgotten
    assert ok_data(n0.request("GET", "/channels"))["spread"]["nodes"] == ["n0"]
