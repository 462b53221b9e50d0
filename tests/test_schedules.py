"""Schedules through the API, fired by real daemons on Redis's clock: the
definition checked and stored, a per-second schedule observed for several
seconds on three nodes (each firing once, none skipped), the overlap and
missed-firing policies, a manual run, disable and enable.
"""

from __future__ import annotations

import datetime
import itertools
import json
import os
import time
import zoneinfo

from conftest import assert_error, events, gate_command, ledger_command, ok_data, wait_until

from coyotes_lib.schedules import Schedule

SCHEDULES_KEY = "task:schedules"


def add(daemon, **fields):
    return daemon.request("POST", "/schedules", fields)


def fired_slots(r, name: str) -> list[int]:
    """The firing times whose task was queued: its record's id is name@time."""
    return sorted(int(key.rsplit("@", 1)[1]) for key in r.scan_iter(f"task:record:{name}@*")
                  if key.rsplit("@", 1)[1].isdigit())


def channel(daemon, name: str = "timed") -> str:
    assert ok_data(daemon.request("POST", "/channels", {"name": name, "worker": 5})) is None
    return name


def test_a_schedule_is_checked_stored_and_shown(coyotes, r):
    good = {"name": "nightly", "cron": "0 2 * * *", "command": "php artisan report",
            "channel": "biz", "timezone": "Asia/Shanghai", "timeout": 30, "retries": 2}
    for bad, words in (({"cron": "61 * * * *"}, "not a valid expression"),
                       ({"cron": "* * * *"}, "5 fields"), ({"cron": "* * * * * * *"}, "5 fields"),
                       ({"timezone": "Mars/Base"}, "unknown time zone"),
                       ({"channel": "nope"}, "does not exist"), ({"command": ""}, "command"),
                       ({"command": "echo 'open"}, "command"), ({"missed": "later"}, "missed"),
                       ({"overlap": "never"}, "overlap"), ({"timeout": -1}, "timeout"),
                       ({"name": "a b"}, "name"), ({"every": "day"}, "unknown field")):
        message = assert_error(add(coyotes, **{**good, **bad}), 400, str(bad))
        assert words in message, (bad, message)
    assert r.hlen(SCHEDULES_KEY) == 0

    view = ok_data(add(coyotes, **good))
    assert_error(add(coyotes, **good), 409)
    assert (view["cron"], view["timezone"], view["options"]) == \
        ("0 2 * * *", "Asia/Shanghai", {"timeout": 30.0, "retries": 2})
    assert (view["enabled"], view["missed"], view["overlap"], view["last"]) == \
        (True, "skip", "skip", None)
    shanghai = zoneinfo.ZoneInfo("Asia/Shanghai")
    runs = [datetime.datetime.fromtimestamp(t, shanghai) for t in view["next_runs"]]
    assert len(runs) == 5 and all((t.hour, t.minute, t.second) == (2, 0, 0) for t in runs)
    assert [(b - a).days for a, b in itertools.pairwise(runs)] == [1, 1, 1, 1]
    assert json.loads(r.hget(SCHEDULES_KEY, "nightly"))["cron"] == "0 2 * * *"

    # PUT replaces the whole definition (or makes one); the name is the path's
    assert_error(coyotes.request("PUT", "/schedules/nightly", {**good, "name": "other"}), 400)
    view = ok_data(coyotes.request("PUT", "/schedules/nightly",
                                   {"cron": "*/10 * * * * *", "command": "true"}))
    assert (view["cron"], view["channel"], view["timezone"], view["options"]) == \
        ("*/10 * * * * *", "default", "UTC", {})
    assert all(t % 10 == 0 for t in view["next_runs"])
    ok_data(coyotes.request("PUT", "/schedules/weekly", {"cron": "@weekly", "command": "true"}))
    names = [s["name"] for s in ok_data(coyotes.request("GET", "/schedules"))["schedules"]]
    assert names == ["nightly", "weekly"]
    assert ok_data(coyotes.request("DELETE", "/schedules/weekly")) == \
        {"name": "weekly", "deleted": True}
    for method, path in (("GET", "/schedules/weekly"), ("DELETE", "/schedules/weekly"),
                         ("POST", "/schedules/weekly/run"), ("POST", "/schedules/weekly/enable")):
        assert_error(coyotes.request(method, path), 404, path)


def test_a_per_second_schedule_fires_once_a_second_on_three_nodes(coyotes_factory, r,
                                                                   tmp_path):
    nodes = [coyotes_factory(node_id=f"n{i}") for i in range(3)]
    ledger = tmp_path / "ledger"
    ok_data(add(nodes[0], name="tick", cron="* * * * * *", command=ledger_command(ledger, "t"),
                channel=channel(nodes[0]), overlap="allow"))
    wait_until(lambda: len(fired_slots(r, "tick")) >= 6, timeout=20, what="six firings")
    ok_data(nodes[1].request("POST", "/schedules/tick/disable"))
    time.sleep(1.5)   # a firing being made when it was disabled ends
    slots = fired_slots(r, "tick")
    assert slots == list(range(slots[0], slots[0] + len(slots))), slots   # no gap
    wait_until(lambda: events(ledger).count(("end", "t")) == len(slots), what="all ran")
    assert events(ledger).count(("start", "t")) == len(slots)   # none twice
    time.sleep(1.5)
    assert fired_slots(r, "tick") == slots   # disabled: no more
    view = ok_data(nodes[2].request("GET", "/schedules/tick"))
    assert view["enabled"] is False and view["next_runs"] == []
    assert view["last"]["task_id"] == f"tick@{slots[-1]}" and view["last"]["outcome"] == "queued"
    assert view["last"]["status"] == "succeeded"


def test_overlap_skip_waits_for_the_previous_run(coyotes, r, tmp_path, gate):
    ledger = tmp_path / "ledger"
    ok_data(add(coyotes, name="slow", cron="* * * * * *", channel=channel(coyotes),
                command=gate_command(ledger, gate, "s")))
    wait_until(lambda: ("start", "s") in events(ledger), what="a first run")
    wait_until(lambda: ok_data(coyotes.request("GET", "/schedules/slow"))["last"]["outcome"]
               == "skipped: the previous run has not finished", what="a firing skipped")
    time.sleep(2.5)   # more firings, skipped as well: the first run still has not ended
    assert events(ledger).count(("start", "s")) == 1
    last = ok_data(coyotes.request("GET", "/schedules/slow"))["last"]
    assert last["task_id"] == f"slow@{fired_slots(r, 'slow')[0]}" and last["status"] == "running"
    ok_data(coyotes.request("POST", "/schedules/slow/disable"))
    gate.touch()
    wait_until(lambda: ("end", "s") in events(ledger), what="the run ended")
    assert len(fired_slots(r, "slow")) == 1


def test_a_firing_missed_while_no_node_ran_is_skipped_or_run_once(coyotes, r, tmp_path):
    """Both schedules fire at one time of day, ten minutes ago, and were made two
    hours ago (written into Redis as the API would): that firing is missed."""
    ten_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=10)
    cron = f"{ten_ago.minute} {ten_ago.hour} * * *"
    ledger = tmp_path / "ledger"
    name = channel(coyotes)
    for schedule, missed in (("skipper", "skip"), ("catcher", "run_once")):
        r.hset(SCHEDULES_KEY, schedule, json.dumps({
            "name": schedule, "cron": cron, "command": ledger_command(ledger, schedule),
            "channel": name, "timezone": "UTC", "enabled": True, "missed": missed,
            "overlap": "skip", "options": {}, "since": time.time() - 7200}))
    slot = int(ten_ago.replace(second=0, microsecond=0).timestamp())
    wait_until(lambda: ("end", "catcher") in events(ledger), what="run once, late")
    wait_until(lambda: (ok_data(coyotes.request("GET", "/schedules/skipper"))["last"] or {})
               .get("outcome") == "missed", what="noted as missed")
    assert fired_slots(r, "catcher") == [slot]
    assert fired_slots(r, "skipper") == []
    skipper = ok_data(coyotes.request("GET", "/schedules/skipper"))["last"]
    assert skipper["at"] == slot and skipper["task_id"] is None and skipper["status"] is None
    time.sleep(1.5)
    assert events(ledger).count(("start", "catcher")) == 1   # once, not every turn


def test_run_now_and_enable_again_without_the_firings_it_missed(coyotes, r, tmp_path):
    ledger = tmp_path / "ledger"
    ok_data(add(coyotes, name="manual", cron="0 3 1 1 *", enabled=False,
                command=ledger_command(ledger, "m"), channel=channel(coyotes)))
    data = ok_data(coyotes.request("POST", "/schedules/manual/run"))
    assert data["task_id"].startswith("manual@run-") and data["result"] is True
    wait_until(lambda: ("end", "m") in events(ledger), what="the manual run")
    # the ledger's end line comes before the command exits and its result is recorded
    wait_until(lambda: ok_data(coyotes.request("GET", f"/tasks/{data['task_id']}"))[
        "status"] == "succeeded", what="its result recorded")

    ok_data(coyotes.request("PUT", "/schedules/manual",
                            {"cron": "* * * * * *", "enabled": False,
                             "command": ledger_command(ledger, "m"), "channel": "timed"}))
    time.sleep(1.5)
    assert fired_slots(r, "manual") == []   # disabled
    before = time.time()
    view = ok_data(coyotes.request("POST", "/schedules/manual/enable"))
    assert view["enabled"] is True and view["since"] >= before - 1
    wait_until(lambda: len(fired_slots(r, "manual")) >= 2, what="firing again")
    assert min(fired_slots(r, "manual")) >= int(before) - 1   # nothing from before


def test_schedules_and_settings_from_the_config_file_and_the_environment(
        coyotes_factory, r, tmp_path):
    ledger = tmp_path / "ledger"
    config = tmp_path / "coyotes.toml"
    config.write_text(f"""
channel-default = "main"
concurrent = 7
[schedules.tick]
cron = "* * * * * *"
command = "{ledger_command(ledger, 'f')}"
overlap = "allow"
""")
    daemon = coyotes_factory("-config", str(config), start=False)
    daemon.start(env={**os.environ, "COYOTES_CONCURRENT": "2"})   # the environment wins
    settings = json.loads(r.hget("task:channels", "main"))
    assert settings["worker_count"] == 2
    wait_until(lambda: ("end", "f") in events(ledger), what="a firing of the file's schedule")
    view = ok_data(daemon.request("GET", "/schedules/tick"))
    assert (view["channel"], view["overlap"]) == ("main", "allow")
    since = view["since"]
    daemon.stop()   # started again with the same file: the schedule keeps its history
    daemon.start()
    assert ok_data(daemon.request("GET", "/schedules/tick"))["since"] == since
    assert "schedule tick: made from" in daemon.log()


def test_a_fixed_hour_fires_once_when_daylight_saving_ends():
    """On the last Sunday of October 2026, 02:00-03:00 comes twice in Berlin."""
    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    start = datetime.datetime(2026, 10, 24, 12, tzinfo=datetime.UTC).timestamp()
    end = datetime.datetime(2026, 10, 26, 12, tzinfo=datetime.UTC).timestamp()
    daily = Schedule("d", "30 2 * * *", "true", "default", "Europe/Berlin")
    assert [datetime.datetime.fromtimestamp(t, berlin).isoformat()
            for t in daily.between(start, end)] == \
        ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
    hourly = Schedule("h", "30 * * * *", "true", "default", "Europe/Berlin")
    night = [datetime.datetime.fromtimestamp(t, berlin).isoformat()
             for t in hourly.between(start + 11 * 3600, start + 16 * 3600)]
    assert night == ["2026-10-25T01:30:00+02:00", "2026-10-25T02:30:00+02:00",
                     "2026-10-25T02:30:00+01:00", "2026-10-25T03:30:00+01:00",
                     "2026-10-25T04:30:00+01:00"]


def test_more_refusals_and_an_unreadable_definition(coyotes, r):
    good = {"name": "x", "cron": "* * * * *", "command": "true"}
    for bad, words in (({"timezone": "Europe"}, "unknown time zone"),
                       ({"timezone": "A" * 300}, "at most 64"),
                       ({"timezone": 0}, "IANA name"), ({"channel": 0}, "channel"),
                       ({"channel": ["biz"]}, "channel"), ({"cron": 5}, "cron")):
        assert words in assert_error(add(coyotes, **{**good, **bad}), 400, str(bad))
    r.hset(SCHEDULES_KEY, "broken", "{not json")
    ok_data(add(coyotes, **good))
    listed = ok_data(coyotes.request("GET", "/schedules"))["schedules"]
    assert listed[0] == {"name": "broken", "error": "unreadable definition in Redis"}
    assert listed[1]["name"] == "x"
    assert "unreadable" in assert_error(coyotes.request("POST", "/schedules/broken/run"), 409)
    view = ok_data(coyotes.request("PUT", "/schedules/broken", good | {"name": "broken"}))
    assert view["cron"] == "* * * * *"   # PUT repairs it
