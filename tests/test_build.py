"""`make build`: one executable zipapp that runs the daemon with python3 alone.

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
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, wait_until

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
                     "site-packages/redis/__init__.py"):
        assert required in names, required
    assert any(n.startswith("site-packages/gevent/") and n.endswith(".so") for n in names)


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

    daemon.signal(signal.SIGUSR2)
    assert daemon.wait(30) == 0
    assert not daemon.pidfile.exists()
