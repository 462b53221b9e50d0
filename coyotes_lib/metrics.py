"""GET /metrics: the Prometheus text format, made by prometheus-client.

Everything but the process's own figures is read from Redis at each scrape,
so every node reports the same cluster (scrape any one, or all: Prometheus
can tell them apart by the ``instance`` label it adds). A scrape costs a fixed
number of round trips, whatever the number of tasks: the channels' settings,
one pipeline of their counts and statistics, and the nodes. The finished-task
counters and the duration histogram are kept by FINISH in each channel's
statistics hash. Imported at the first scrape only.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)

# the classic text format (0.0.4): what every Prometheus version reads
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4 as CONTENT_TYPE
from prometheus_client.exposition import generate_latest

from . import __version__
from .scripts import DURATION_BOUNDS

__all__ = ["CONTENT_TYPE", "generate_latest", "registry"]


class Cluster:
    """A custom collector: the cluster's state as Redis holds it."""

    def __init__(self, broker):
        self.broker = broker

    def describe(self):
        return []   # the families depend on Redis: nothing to check at registration

    def collect(self):
        snap = self.broker.metrics_snapshot()
        labels = ["channel"]
        gauges = {name: GaugeMetricFamily(f"coyotes_{name}", doc, labels=labels) for name, doc in (
            ("queued_tasks", "Tasks waiting in a channel's queues (high priority included)"),
            ("running_tasks", "Tasks of a channel running on any node"),
            ("failed_tasks", "Tasks kept among a channel's failed tasks"),
            ("channel_paused", "1 if the channel is paused (nothing is claimed)"),
            ("channel_workers", "Workers of the channel on each node"),
            ("channel_max_running", "Most tasks of the channel on all nodes, 0: no limit"))}
        finished = CounterMetricFamily(
            "coyotes_tasks_finished", "Attempts finished, by outcome (retried: another "
            "attempt follows)", labels=["channel", "status"])
        durations = HistogramMetricFamily(
            "coyotes_task_duration_seconds", "How long attempts ran", labels=labels)
        for chan, row in sorted(snap["channels"].items()):
            for name in ("queued_tasks", "running_tasks", "failed_tasks", "channel_paused",
                         "channel_workers", "channel_max_running"):
                gauges[name].add_metric([chan], row[name])
            stats = row["stats"]
            for field, value in sorted(stats.items()):
                if field.startswith("finished:"):
                    finished.add_metric([chan, field[len("finished:"):]], number(value))
            total, buckets = 0.0, []
            for bound in (*DURATION_BOUNDS, "+Inf"):
                total += number(stats.get(f"bucket:{bound}"))
                buckets.append((bound, total))
            durations.add_metric([chan], buckets, sum_value=number(stats.get("duration_sum")))
        yield from gauges.values()
        yield finished
        yield durations
        yield GaugeMetricFamily("coyotes_delayed_tasks", "Tasks waiting for their time "
                                "(delayed pushes and retries), all channels",
                                value=snap["delayed"])
        yield GaugeMetricFamily("coyotes_dead_letters", "Entries in the dead-letter list",
                                value=snap["dead"])
        up = GaugeMetricFamily("coyotes_node_up", "1 while the node's heartbeat lives",
                               labels=["node"])
        age = GaugeMetricFamily("coyotes_node_heartbeat_age_seconds",
                                "Seconds since the node's last heartbeat", labels=["node"])
        running = GaugeMetricFamily("coyotes_node_running_tasks",
                                    "Commands the node runs (as of its last heartbeat)",
                                    labels=["node"])
        for node in snap["nodes"]:
            up.add_metric([node["id"]], 1 if node["alive"] else 0)
            if node["heartbeat_age"] is not None:
                age.add_metric([node["id"]], node["heartbeat_age"])
            running.add_metric([node["id"]], node["running"])
        yield from (up, age, running)
        info = InfoMetricFamily("coyotes_build", "This node's version", labels=["node"])
        info.add_metric([self.broker.node], {"version": __version__})
        yield info


def number(value) -> float:
    try:
        return float(value or 0)
    except ValueError:   # a field edited by hand
        return 0.0


def registry(broker) -> CollectorRegistry:
    """The registry a node's /metrics reads: the cluster, and this process."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(Cluster(broker))
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    return reg
