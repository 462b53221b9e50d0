"""A channel's command policy: in-process checks of the rules, then real daemons
with each runner: what a policy allows runs in its directory, environment,
limits and (as root) user; what it does not is refused over HTTP (403), from
the prepare queue (dead letter) and from a channel queue (a failed task), and
never runs; an output cap stops a flood.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest
from conftest import assert_error, ok_data, wait_until

from coyotes_lib.policy import BadPolicy, CommandPolicy, Refused, Rule

PY = sys.executable
# what a task prints about where and how it runs
PROBE = ("import json, os, resource; print(json.dumps({'cwd': os.getcwd(), "
         "'env': dict(os.environ), 'uid': os.getuid(), 'gid': os.getgid(), "
         "'nofile': resource.getrlimit(resource.RLIMIT_NOFILE), "
         "'cpu': resource.getrlimit(resource.RLIMIT_CPU), "
         "'nproc': resource.getrlimit(resource.RLIMIT_NPROC)}))")


# -- the rules, in-process ------------------------------------------------------------

@pytest.mark.parametrize(("patterns", "args", "allowed"), [
    ((), [], True), ((), ["anything", "at all"], True),
    (("artisan", "queue:*"), ["artisan", "queue:work"], True),
    (("artisan", "queue:*"), ["artisan", "tinker"], False),
    (("artisan", "queue:*"), ["artisan", "queue:work", "--once"], False),
    (("artisan", "queue:*"), ["artisan"], False),
    (("artisan", "..."), ["artisan"], True),
    (("artisan", "..."), ["artisan", "a", "b"], True),
    (("artisan", "..."), ["tinker", "a"], False),
    (("-c", "[0-9]*"), ["-c", "42"], True), (("-c", "[0-9]*"), ["-c", "x"], False),
])
def test_argument_patterns(patterns, args, allowed):
    assert Rule("/usr/bin/php", patterns).allows(args) is allowed


def test_names_are_resolved_when_the_policy_is_made_and_checked_by_real_path(tmp_path):
    policy = CommandPolicy.parse({"allow": ["true", "sleep [0-9]*"]})
    assert [rule.program for rule in policy.allow] == [shutil.which("true"),
                                                       shutil.which("sleep")]
    assert policy.program(["true"]) == policy.allow[0].program
    assert policy.program([policy.allow[1].program, "5"]) == policy.allow[1].program
    with pytest.raises(Refused, match="is not allowed by the channel's command policy"):
        policy.program(["sleep", "x"])
    with pytest.raises(Refused):
        policy.program(["sh", "-c", "true"])
    with pytest.raises(Refused):   # not found on PATH at all
        policy.program(["no-such-program-here"])
    # stored as resolved, read back as stored
    again = CommandPolicy.parse(json.loads(json.dumps(policy.to_dict())), resolve=False)
    assert again == policy


@pytest.mark.parametrize(("data", "words"), [
    ([], "must be an object"), ({"allow": "true"}, "must be a list"),
    ({"allow": ["no-such-program-here"]}, "is not an executable"),
    ({"allow": ["./relative"]}, "is not an executable"),
    ({"allow": ["true ... x"]}, "'...' can only be the last"),
    ({"allow": ["'unbalanced"]}, "No closing quotation"),
    ({"cwd": "relative/dir"}, "not an absolute path to a directory"),
    ({"cwd": "/no/such/dir"}, "not an absolute path to a directory"),
    ({"env": ["1BAD"]}, "NAME=VALUE"), ({"env": "PATH"}, "NAME=VALUE"),
    ({"user": "no-such-user-here"}, "no user"), ({"group": "no-such-group-here"}, "no group"),
    ({"limits": {"cores": 2}}, "limits takes cpu, as, nofile, nproc"),
    ({"limits": {"nofile": 2}}, "limits.nofile must be an integer 8.."),
    ({"limits": {"cpu": True}}, "limits.cpu must be an integer"),
    ({"output_max": -1}, "output_max must be"), ({"shell": True}, "unknown field(s) shell"),
])
def test_bad_policies_are_refused_with_the_reason(data, words):
    with pytest.raises(BadPolicy) as err:
        CommandPolicy.parse(data)
    assert words in str(err.value), str(err.value)


def test_how_a_policy_is_applied_on_the_command_line(tmp_path):
    policy = CommandPolicy.parse({"allow": [f"{PY} -c ..."], "cwd": str(tmp_path),
                                  "env": ["PATH", "APP_ENV=production", "NOT_SET_ANYWHERE"],
                                  "limits": {"nofile": 64, "cpu": 30}})
    argv, env = policy.launch([PY, "-c", "pass"])
    assert argv == ["/usr/bin/prlimit", "--cpu=30:30", "--nofile=64:64", "--",
                    "/usr/bin/env", "-C", str(tmp_path), "--", PY, "-c", "pass"]
    assert env == {"PATH": os.environ["PATH"], "APP_ENV": "production"}
    assert CommandPolicy().launch(["true"]) == ([CommandPolicy().program(["true"])], None)


# -- real daemons, with each runner ---------------------------------------------------

@pytest.fixture(params=["spawn", "subprocess"])
def runner(request) -> str:
    return request.param


def make_channel(daemon, name: str, policy: dict, worker: int = 2) -> dict:
    ok_data(daemon.request("POST", "/channels", {"name": name, "worker": worker,
                                                  "command_policy": policy}))
    return ok_data(daemon.request("GET", f"/channels/{name}"))["settings"]["command_policy"]


def finished(daemon, task_id: str) -> dict:
    def done():
        record = ok_data(daemon.request("GET", f"/tasks/{task_id}"))
        return record if record["status"] not in ("queued", "running", "delayed") else None
    return wait_until(done, timeout=30, what=f"task {task_id} to finish")


def push(daemon, channel: str, argv: list[str]) -> tuple[int, dict]:
    return daemon.request("POST", f"/channels/{channel}/tasks",
                          {"command": {"name": argv[0], "args": argv[1:]}})


def test_what_a_policy_allows_runs_there_and_so(coyotes_factory, tmp_path, runner):
    daemon = coyotes_factory("-runner", runner)
    work = tmp_path / "work"
    work.mkdir()
    shown = make_channel(daemon, "jobs", {
        "allow": [f"{PY} -c ..."], "cwd": str(work),
        "env": ["PATH", "APP_ENV=production"],
        "limits": {"nofile": 64, "cpu": 300, "nproc": 4096, "as": 4 << 30}})
    assert shown["allow"] == [f"{PY} -c ..."] and shown["limits"]["nofile"] == 64
    assert shown["env"] == ["PATH", "APP_ENV=***"]   # a value may be a secret
    assert "production" not in daemon.log()
    task = ok_data(push(daemon, "jobs", [PY, "-c", PROBE]))
    record = finished(daemon, task["task_id"])
    assert record["status"] == "succeeded", record
    seen = json.loads(record["stdout"])
    assert seen["cwd"] == str(work)
    # a clean environment: what the policy lists (Python may add its LC_CTYPE)
    assert set(seen["env"]) - {"LC_CTYPE"} == {"PATH", "APP_ENV"}, seen["env"]
    assert seen["env"]["APP_ENV"] == "production"
    assert seen["nofile"] == [64, 64] and seen["cpu"] == [300, 300]
    assert seen["nproc"] == [4096, 4096]
    assert (seen["uid"], seen["gid"]) == (os.getuid(), os.getgid())
    assert record["argv"] == [PY, "-c", PROBE]   # the record shows what was asked


def test_as_root_a_policy_runs_commands_as_its_user(coyotes_factory, runner):
    if os.geteuid() != 0:
        pytest.fail("this test needs root, as CI has (setpriv switches the user)")
    daemon = coyotes_factory("-runner", runner)
    python = "/usr/bin/python3"   # the test's own may be out of nobody's reach
    make_channel(daemon, "as-nobody", {"allow": [f"{python} -c ..."], "cwd": "/",
                                       "user": "nobody", "group": "nogroup"})
    record = finished(daemon, ok_data(push(daemon, "as-nobody",
                                           [python, "-c", PROBE]))["task_id"])
    assert record["status"] == "succeeded", record
    seen = json.loads(record["stdout"])
    assert (seen["uid"], seen["gid"], seen["cwd"]) == (65534, 65534, "/")


def test_what_a_policy_does_not_allow_never_runs(coyotes_factory, tmp_path, r, runner):
    daemon = coyotes_factory("-runner", runner)
    make_channel(daemon, "jobs", {"allow": ["touch " + str(tmp_path / "ok-*")]})
    marker = tmp_path / "ran"

    # over HTTP: 403 with the reason, nothing queued
    for argv in (["sh", "-c", f"touch {marker}"], ["touch", str(marker)]):
        message = assert_error(push(daemon, "jobs", argv), 403)
        assert "is not allowed by the channel's command policy" in message, message
    status, env = daemon.request("POST", "/channels/jobs", {"task": f"touch {marker}"})
    assert status == 403, env
    assert r.llen("jobs:tasks:queue") == 0

    # from the prepare queue: a dead letter with the reason
    r.lpush("task:prepare:queue", json.dumps({"task": f"touch {marker}", "chan": "jobs"}))
    wait_until(lambda: r.llen("task:prepare:dead") == 1, what="the dead letter")
    dead = json.loads(r.lindex("task:prepare:dead", 0))
    assert dead["reason"].startswith("refused: ") and "command policy" in dead["reason"]

    # straight into the channel queue (as a Go producer would): the worker refuses it,
    # and the task fails with the reason
    r.lpush("jobs:tasks:queue", json.dumps({"task_id": "direct", "task_name": f"touch {marker}",
                                            "channel": "jobs"}))
    record = finished(daemon, "direct")
    assert record["status"] == "failed" and record["error"].startswith("refused: "), record

    # an allowed one does run, and the refused ones never did
    allowed = tmp_path / "ok-1"
    task = ok_data(push(daemon, "jobs", ["touch", str(allowed)]))
    assert finished(daemon, task["task_id"])["status"] == "succeeded"
    assert allowed.exists() and not marker.exists()


def test_the_output_cap_stops_a_flood(coyotes_factory, runner):
    daemon = coyotes_factory("-runner", runner)
    make_channel(daemon, "quiet", {"output_max": 100_000})
    flood = "import sys\nwhile True: sys.stdout.write('x' * 1000 + '\\n')"
    record = finished(daemon, ok_data(push(daemon, "quiet", [PY, "-c", flood]))["task_id"])
    assert record["status"] == "failed" and "output passed the channel's cap" in record["error"]
    polite = ok_data(push(daemon, "quiet", [PY, "-c", "print('hello')"]))
    assert finished(daemon, polite["task_id"])["status"] == "succeeded"


def test_a_policy_is_changed_shown_and_removed_through_the_api(coyotes_factory, tmp_path):
    daemon = coyotes_factory()
    ok_data(daemon.request("POST", "/channels", {"name": "jobs"}))
    assert ok_data(daemon.request("GET", "/channels/jobs"))["settings"]["command_policy"] is None
    # a form gives it as JSON text
    status, env = daemon.request("PATCH", "/channels/jobs", body=(
        "command_policy=" + json.dumps({"allow": ["true"]})).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200 and env["data"]["command_policy"]["allow"][0].endswith("/true"), env
    assert_error(push(daemon, "jobs", ["false"]), 403)
    for bad, words in (({"allow": ["no-such-program-here"]}, "is not an executable"),
                       ("{not json", "must be a JSON object"),
                       ({"cwd": "relative"}, "absolute path")):
        message = assert_error(daemon.request("PATCH", "/channels/jobs",
                                              {"command_policy": bad}), 400)
        assert words in message, message
    assert ok_data(daemon.request("GET", "/channels/jobs"))["settings"]["command_policy"]
    ok_data(daemon.request("PATCH", "/channels/jobs", {"command_policy": None}))   # removed
    assert ok_data(daemon.request("GET", "/channels/jobs"))["settings"]["command_policy"] is None
    assert ok_data(push(daemon, "jobs", ["false"]))


def test_an_unreadable_stored_policy_refuses_every_task(coyotes_factory, r):
    daemon = coyotes_factory()
    r.hset("task:channels", "locked", json.dumps({
        "name": "locked", "distinct": False, "worker_count": 1,
        "command_policy": {"allow": ["relative-not-allowed-when-stored"]}}))
    wait_until(lambda: daemon.request("GET", "/channels/locked")[0] == 200,
               what="the channel to be seen")
    message = assert_error(push(daemon, "locked", ["true"]), 403)
    assert "stored command policy is unreadable" in message, message


def test_a_policy_from_the_config_file_is_applied_at_every_start(coyotes_factory, tmp_path):
    conf = tmp_path / "coyotes.toml"
    conf.write_text('[channels.locked]\nworker = 3\n'
                    '[channels.locked.command_policy]\nallow = ["true"]\n')
    daemon = coyotes_factory("-config", str(conf))
    assert "channel locked: created from" in daemon.log()
    settings = ok_data(daemon.request("GET", "/channels/locked"))["settings"]
    assert settings["worker"] == 3 and settings["command_policy"]["allow"] == [
        shutil.which("true")]
    assert_error(push(daemon, "locked", ["false"]), 403)
    assert finished(daemon, ok_data(push(daemon, "locked", ["true"]))["task_id"])[
        "status"] == "succeeded"
    # changed through the API, then the node restarts: the file has the last word on
    # what it names; what it does not name (distinct) keeps the API's value
    ok_data(daemon.request("PATCH", "/channels/locked", {"command_policy": None,
                                                         "distinct": True}))
    daemon.signal()
    assert daemon.wait(30) == 0
    conf.write_text('[channels.locked]\nworker = 3\n'
                    '[channels.locked.command_policy]\nallow = ["false"]\n')
    again = coyotes_factory("-config", str(conf))
    settings = ok_data(again.request("GET", "/channels/locked"))["settings"]
    assert settings["command_policy"]["allow"] == [shutil.which("false")]
    assert settings["distinct"] is True
    assert "channel locked: settings from" in again.log()
    assert_error(push(again, "locked", ["true"]), 403)


def test_a_twin_name_of_the_same_program_runs_as_the_allowed_name(tmp_path):
    """A program that acts on the name it is called by (busybox, xz/unxz, bash/rbash):
    a task naming the twin is allowed by real path, but the rule's own name runs."""
    real = tmp_path / "multi"
    real.write_text("#!/bin/sh\necho \"$0\"\n")
    real.chmod(0o755)
    (tmp_path / "safe").symlink_to(real)
    (tmp_path / "evil").symlink_to(real)
    policy = CommandPolicy.parse({"allow": [f"{tmp_path / 'safe'} ..."]})
    argv, _ = policy.launch([str(tmp_path / "evil"), "x"])
    assert argv == [str(tmp_path / "safe"), "x"]


def test_a_relative_path_entry_is_found_in_the_commands_directory(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "tool").write_text("#!/bin/sh\n")
    (work / "tool").chmod(0o755)
    policy = CommandPolicy.parse({"cwd": str(work), "env": ["PATH=.:/usr/bin"],
                                  "allow": ["true"]})
    with pytest.raises(Refused):   # ./tool in the command's directory: not allowed
        policy.program(["tool"])
    assert CommandPolicy.parse({"cwd": str(work), "env": ["PATH=.:/usr/bin"]}).program(
        ["tool"]) == str(work / "tool")


def test_a_huge_user_or_group_number_is_refused_not_a_crash():
    for data, words in (({"user": "9" * 30}, "no user"), ({"group": "9" * 30}, "no group")):
        with pytest.raises(BadPolicy, match=words):
            CommandPolicy.parse(data)
