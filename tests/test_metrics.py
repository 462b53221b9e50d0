"""GET /metrics against real daemons, parsed by prometheus-client's own parser:
the cluster's figures (the same from every node), the counters FINISH keeps,
the process's own, a scrape whose cost does not grow with the tasks, and the
sample Grafana dashboard naming only metrics that exist.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request

from conftest import ROOT, gate_command, started, wait_until
from prometheus_client.parser import text_string_to_metric_families


def scrape(daemon) -> dict[str, list]:
    """{sample name: [(labels, value)]} of GET /metrics."""
    with urllib.request.urlopen(daemon.url + "/metrics", timeout=30) as reply:
        assert reply.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = reply.read().decode()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples, name: str, **labels) -> float:
    found = [v for got, v in samples.get(name, []) if all(got.get(k) == w
                                                           for k, w in labels.items())]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]


def test_the_cluster_as_every_node_sees_it(coyotes_factory, r, tmp_path, gate):
    a = coyotes_factory(node_id="node-a")
    b = coyotes_factory("-task-mode=false", node_id="node-b")   # API only: reads the same
    ledger = tmp_path / "ledger"
    r.lpush("task:prepare:queue", json.dumps({"task": "true one", "id": "ok-1"}),
            json.dumps({"task": "false two", "id": "bad-1"}),
            json.dumps({"task": "true later", "execute_at": time.time() + 3600}),
            json.dumps({"task": gate_command(ledger, gate, "held"), "id": "held",
                        "chan": "biz"}),
            "not json")
    wait_until(lambda: started(ledger, "held") and r.hget("task:record:bad-1", "status")
               == "failed" and r.hget("task:record:ok-1", "status") == "succeeded",
               what="the tasks to settle")
    # a node's running count is as of its last heartbeat
    wait_until(lambda: value(scrape(a), "coyotes_node_running_tasks", node="node-a") == 1,
               timeout=30, what="node-a's heartbeat to count the held task")
    for daemon in (a, b):
        samples = scrape(daemon)
        assert value(samples, "coyotes_running_tasks", channel="biz") == 1
        assert value(samples, "coyotes_failed_tasks", channel="default") == 1
        assert value(samples, "coyotes_queued_tasks", channel="default") == 0
        assert value(samples, "coyotes_channel_paused", channel="cron") == 0
        assert value(samples, "coyotes_channel_workers", channel="default") == 5
        assert value(samples, "coyotes_tasks_finished_total", channel="default",
                     status="succeeded") == 1
        assert value(samples, "coyotes_tasks_finished_total", channel="default",
                     status="failed") == 1
        assert value(samples, "coyotes_task_duration_seconds_count", channel="default") == 2
        assert value(samples, "coyotes_task_duration_seconds_bucket", channel="default",
                     le="+Inf") == 2
        assert value(samples, "coyotes_delayed_tasks") == 1
        assert value(samples, "coyotes_dead_letters") == 1
        assert value(samples, "coyotes_node_up", node="node-a") == 1
        assert 0 <= value(samples, "coyotes_node_heartbeat_age_seconds", node="node-a") <= 30
        assert value(samples, "coyotes_node_running_tasks", node="node-a") == 1
        assert "node-b" not in str(samples["coyotes_node_up"])   # API only: runs nothing
        # this process's own figures, and its version
        assert value(samples, "process_resident_memory_bytes") > 10 << 20
        node = "node-a" if daemon is a else "node-b"
        info = value(samples, "coyotes_build_info", node=node)
        assert info == 1
    # pausing a channel shows on the other node's scrape
    a.request("POST", "/channels/cron/pause")
    assert value(scrape(b), "coyotes_channel_paused", channel="cron") == 1


def test_a_scrape_costs_the_same_whatever_the_number_of_tasks(coyotes_factory, r):
    daemon = coyotes_factory("-task-mode=false")   # nothing else talks to this Redis

    def commands_of_a_scrape() -> int:
        before = r.info("stats")["total_commands_processed"]
        scrape(daemon)
        return r.info("stats")["total_commands_processed"] - before

    commands_of_a_scrape()   # the first one builds the registry and reads the channels
    r.lpush("default:tasks:queue", *[f"echo {i}" for i in range(10)])
    few = commands_of_a_scrape()
    r.lpush("default:tasks:queue", *[f"echo more {i}" for i in range(5000)])
    for i in range(200):
        r.hset("default:tasks:queue:failed", f"f{i}", "x")
        r.zadd("default:tasks:queue:failed:index", {f"f{i}": time.time()})
    many = commands_of_a_scrape()
    assert few == many, (few, many)
    assert value(scrape(daemon), "coyotes_queued_tasks", channel="default") == 5010


def test_the_grafana_dashboard_names_only_metrics_that_exist(coyotes, r):
    r.lpush("task:prepare:queue", json.dumps({"task": "true", "id": "one"}))
    wait_until(lambda: r.hget("task:record:one", "status") == "succeeded")
    dashboard = json.loads((ROOT / "contrib" / "grafana-coyotes.json").read_text())
    queries = [target["expr"] for panel in dashboard["panels"]
               for target in panel.get("targets", [])]
    assert queries and dashboard["title"]
    samples = scrape(coyotes)
    for name in {n for expr in queries for n in re.findall(r"\b(coyotes_\w+)", expr)}:
        assert name in samples, f"{name} is not exported: {sorted(samples)}"
