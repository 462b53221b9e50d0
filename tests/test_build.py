"""`make build`: one executable zipapp that runs the daemon with python3 alone;
and `make run`, the README's command for running Coyotes from the checkout.

The file is built once for the module with the Makefile itself (into a temp
directory, not bin/), then run the way it is deployed: as a program, from an
unrelated working directory, unpacking its dependencies (gevent's compiled
extensions among them) to ``~/.shiv`` or ``$SHIV_ROOT``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, free_port, wait_until

VERSION = re.search(r'__version__ = "(.+)"', (ROOT / "coyotes_lib/__init__.py").read_text())[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "coyotes"
    proc = subprocess.run(["make", "--no-print-directory", "build", f"OUT={out}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"make build failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def test_build_is_one_executable_zipapp(built):
    assert sorted(p.name for p in built.parent.iterdir()) == ["coyotes"]
    assert os.access(built, os.X_OK)
    with built.open("rb") as f:
        assert f.readline() == b"#!/usr/bin/env python3\n"
    assert zipfile.is_zipfile(built)
    with zipfile.ZipFile(built) as z:
        names = set(z.namelist())
        env = json.loads(z.read("environment.json"))
    assert "__main__.py" in names
    assert env["entry_point"] == "coyotes:main"
    # The program and every runtime dependency travel inside, compiled parts too.
    for required in ("site-packages/coyotes.py", "site-packages/coyotes_lib/daemon.py",
                     "site-packages/bottle.py", "site-packages/docopt.py",
                     "site-packages/redis/__init__.py", "site-packages/coyotes_lib/ui/app.js",
                     "site-packages/coyotes_lib/ui/index.html"):
        assert required in names, required
    assert any(n.startswith("site-packages/gevent/") and n.endswith(".so") for n in names)


def test_build_stages_the_sources_at_an_absolute_path():
    """A bare OUT (``make build OUT=coyotes``) must not hand pip a bare name as what
    to install: pip would look for a package of that name on the index."""
    proc = subprocess.run(["make", "-n", "--always-make", "--no-print-directory", "build",
                           "OUT=coyotes"], cwd=ROOT, capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    stage = re.search(r"stage='([^']*)'", proc.stdout)
    assert stage and stage[1] == f"{ROOT}/coyotes.src", proc.stdout


def test_build_runs_from_any_cwd_unpacking_to_home(built, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "SHIV_ROOT"} | {"HOME": str(home)}
    proc = subprocess.run([str(built), "--version"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"coyotes {VERSION}"
    # shiv's default: dependencies unpacked once under ~/.shiv
    assert list((home / ".shiv").glob("coyotes_*/site-packages/gevent")), \
        sorted(p.name for p in (home / ".shiv").iterdir())
    # and compiled there once (even under PYTHONDONTWRITEBYTECODE), so that no
    # start compiles them again: slower, and about 0.8 MB more resident for good
    assert list((home / ".shiv").glob("coyotes_*/site-packages/coyotes_lib/__pycache__/"
                                      "daemon.*.pyc"))


def test_build_runs_on_another_python_of_the_same_minor_version(built, tmp_path):
    # Deployed, `/usr/bin/env python3` is often the system Python, not the one
    # that built the file: a dependency resolved only for the builder (like
    # redis-py's async-timeout below 3.11.3) would be missing there.
    system = Path("/usr/bin/python3")
    if not system.exists() or system.resolve() == Path(sys.executable).resolve():
        pytest.skip("no separate /usr/bin/python3 on this machine")
    minor = subprocess.run([system, "-c", "import sys; print(sys.version_info[:2])"],
                           capture_output=True, text=True, timeout=30).stdout.strip()
    if minor != str(sys.version_info[:2]):
        pytest.skip(f"/usr/bin/python3 is {minor}, the build is for {sys.version_info[:2]}")
    proc = subprocess.run([system, str(built), "--version"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env=os.environ | {"SHIV_ROOT": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"coyotes {VERSION}"


def test_built_file_runs_a_pushed_task(built, coyotes_factory, r, tmp_path):
    shiv_root = tmp_path / "shiv-root"
    daemon = coyotes_factory(start=False, command=[str(built)])
    daemon.start(env=os.environ | {"SHIV_ROOT": str(shiv_root)})
    assert list(shiv_root.glob("coyotes_*/site-packages/gevent")), "SHIV_ROOT was not used"

    marker = tmp_path / "built ran"
    argv = [sys.executable, "-c", "import pathlib, sys; pathlib.Path(sys.argv[1]).touch()",
            str(marker)]
    r.lpush("task:prepare:queue",
            json.dumps({"task": shlex.join(argv), "chan": "default", "ts": 1}))
    wait_until(marker.exists, timeout=20, what="the task pushed to the built daemon to run")
    wait_until(lambda: not r.smembers("default:tasks:queue:exec"), what="the task to be acked")
    # the client is in the same file: push --wait, as if the command ran here
    client = subprocess.run([str(built), "push", "--wait", "--addr",
                             f"127.0.0.1:{daemon.http_port}", "--", sys.executable, "-c",
                             "print('from the client'); raise SystemExit(3)"],
                            capture_output=True, text=True, timeout=60,
                            env=os.environ | {"SHIV_ROOT": str(shiv_root)})
    assert (client.returncode, client.stdout) == (3, "from the client\n"), client
    # the dashboard's files are inside too
    for path, text in (("/ui/", b"app.js"), ("/ui/app.js", b"use strict")):
        with urllib.request.urlopen(daemon.url + path, timeout=30) as reply:
            assert text in reply.read()

    daemon.signal(signal.SIGUSR2)
    assert daemon.wait(30) == 0
    assert not daemon.pidfile.exists()


def test_make_run_compiles_the_modules_and_runs_tasks_against_the_given_redis(
        redis_server, r, tmp_path):
    """`make run REDIS=host:port`: coyotes_lib's bytecode is written first, even under
    PYTHONDONTWRITEBYTECODE (a daemon that compiles its modules at every start
    stays about 0.8 MB larger), a pushed task runs, and USR2 stops it cleanly."""
    tag = sys.implementation.cache_tag
    compiled = ROOT / "coyotes_lib" / "__pycache__" / f"daemon.{tag}.pyc"
    compiled.unlink(missing_ok=True)
    log_path = tmp_path / "make-run.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            ["make", "--no-print-directory", "run", f"REDIS=127.0.0.1:{redis_server.port}",
             # its own pid file: a `make run` of the developer's may hold .run/'s
             (f"ARGS=-http-addr 127.0.0.1:{free_port()} -node-id make-run "
              f"-pidfile {tmp_path}/coyotes.pid")],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=os.environ | {"PYTHONDONTWRITEBYTECODE": "1"}, start_new_session=True)
    try:
        wait_until(lambda: "coyotes ready" in log_path.read_text(errors="replace"),
                   timeout=60, what="make run to start coyotes")
        assert compiled.exists()
        assert f"using the Redis at 127.0.0.1:{redis_server.port}" in log_path.read_text()
        r.lpush("task:prepare:queue", json.dumps({"task": f"touch {tmp_path}/ran",
                                                  "chan": "default", "ts": 0}))
        wait_until(lambda: (tmp_path / "ran").exists(), timeout=20, what="the task")
        pid = int((tmp_path / "coyotes.pid").read_text())
        os.kill(pid, signal.SIGUSR2)
        assert proc.wait(60) == 0, log_path.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
