"""The pid file: refuse a live owner, replace a stale file, hold our pid while
running, remove it on a clean exit only if it still names us; and
``coyotes_lib.pidfile.PidFile`` in-process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from conftest import wait_until

from coyotes_lib.pidfile import PidFile, PidFileError
from coyotes_lib.pidfile import pid_alive as alive


@pytest.fixture
def sleeper():
    """A live process that is not a coyotes."""
    proc = subprocess.Popen(["sleep", "300"])
    yield proc
    proc.kill()
    proc.wait(5)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(10)
    assert not alive(proc.pid)
    return proc.pid


# -- the daemon --------------------------------------------------------------

def test_start_refused_while_a_live_process_owns_the_pid_file(coyotes_factory, sleeper, r):
    daemon = coyotes_factory(start=False)
    daemon.pidfile.write_text(f"{sleeper.pid}\n")
    daemon.start(wait=False)
    assert daemon.wait(20) != 0
    log = daemon.log()
    refusal = [line for line in log.splitlines() if str(sleeper.pid) in line]
    assert refusal, log
    assert "pid file" in refusal[0] and str(daemon.pidfile) in refusal[0]
    assert "coyotes ready" not in log
    # the owner's file is left alone, and nothing was consumed or created
    assert daemon.pidfile.read_text().strip() == str(sleeper.pid)
    assert sleeper.poll() is None
    assert not r.exists("task:channels")


def test_stale_pid_file_is_replaced(coyotes_factory):
    daemon = coyotes_factory(start=False)
    stale = dead_pid()
    daemon.pidfile.write_text(f"{stale}\n")
    daemon.start()
    assert "stale" in daemon.log() and str(stale) in daemon.log()
    assert daemon.pidfile.read_text().strip() == str(daemon.proc.pid)
    assert daemon.stop() == 0
    assert not daemon.pidfile.exists()


def test_garbage_pid_file_is_replaced(coyotes_factory):
    daemon = coyotes_factory(start=False)
    daemon.pidfile.write_text("not a pid\n")
    daemon.start()
    assert daemon.pidfile.read_text().strip() == str(daemon.proc.pid)
    assert daemon.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR2, signal.SIGHUP, signal.SIGINT],
                         ids=lambda s: signal.Signals(s).name)
def test_pid_file_held_while_running_and_removed_on_clean_exit(coyotes_factory, sig):
    daemon = coyotes_factory()
    assert daemon.pidfile.read_text() == f"{daemon.proc.pid}\n"
    daemon.signal(sig)
    assert daemon.wait(30) == 0
    assert not daemon.pidfile.exists()
    assert "coyotes stopped" in daemon.log()


def test_pid_file_not_removed_when_it_names_someone_else(coyotes_factory):
    daemon = coyotes_factory()
    wait_until(daemon.pidfile.exists)
    daemon.pidfile.write_text("424242\n")
    assert daemon.stop() == 0
    assert daemon.pidfile.exists()
    assert daemon.pidfile.read_text() == "424242\n"


def test_pid_file_released_when_the_http_port_is_taken(coyotes_factory, tmp_path):
    first = coyotes_factory()
    second = coyotes_factory(start=False)
    second.http_port = first.http_port
    second.pidfile = tmp_path / "second.pid"
    second.start(wait=False)
    assert second.wait(20) == 1
    assert "cannot listen" in second.log()
    assert not second.pidfile.exists()
    assert first.pidfile.read_text().strip() == str(first.proc.pid)


def test_pid_file_in_missing_directory_is_an_error(coyotes_factory, tmp_path):
    daemon = coyotes_factory(start=False)
    daemon.pidfile = tmp_path / "no" / "such" / "dir" / "coyotes.pid"
    daemon.start(wait=False)
    assert daemon.wait(20) == 1
    assert "no/such/dir" in daemon.log()


# -- PidFile in-process ------------------------------------------------------

def test_acquire_writes_our_pid_atomically(tmp_path):
    path = tmp_path / "c.pid"
    pidfile = PidFile(str(path))
    pidfile.acquire()
    assert path.read_text() == f"{os.getpid()}\n"
    assert pidfile.read() == os.getpid()
    assert os.listdir(tmp_path) == ["c.pid"]   # no temporary file left behind
    assert path.stat().st_mode & 0o777 == 0o644
    pidfile.release()
    assert os.listdir(tmp_path) == []


def test_acquire_refuses_a_live_owner(tmp_path, sleeper):
    path = tmp_path / "c.pid"
    path.write_text(f"{sleeper.pid}\n")
    pidfile = PidFile(str(path))
    with pytest.raises(PidFileError, match=str(sleeper.pid)):
        pidfile.acquire()
    assert path.read_text() == f"{sleeper.pid}\n"
    assert os.listdir(tmp_path) == ["c.pid"]
    pidfile.release()   # never acquired: must not touch the owner's file
    assert path.read_text() == f"{sleeper.pid}\n"


@pytest.mark.parametrize("content", ["stale", "", "garbage\n", "  \n"])
def test_acquire_replaces_stale_or_unreadable_content(tmp_path, content):
    path = tmp_path / "c.pid"
    path.write_text(f"{dead_pid()}\n" if content == "stale" else content)
    pidfile = PidFile(str(path))
    pidfile.acquire()
    assert path.read_text() == f"{os.getpid()}\n"
    assert os.listdir(tmp_path) == ["c.pid"]


def test_acquire_accepts_a_file_naming_ourselves(tmp_path):
    path = tmp_path / "c.pid"
    path.write_text(f"{os.getpid()}\n")
    PidFile(str(path)).acquire()
    assert path.read_text() == f"{os.getpid()}\n"


def test_acquire_replaces_a_symlink_not_its_target(tmp_path):
    target = tmp_path / "precious"
    target.write_text("keep me\n")
    path = tmp_path / "c.pid"
    path.symlink_to(target)
    PidFile(str(path)).acquire()
    assert target.read_text() == "keep me\n"
    assert not path.is_symlink()
    assert path.read_text() == f"{os.getpid()}\n"


def test_release_keeps_a_file_naming_someone_else(tmp_path):
    path = tmp_path / "c.pid"
    pidfile = PidFile(str(path))
    pidfile.acquire()
    path.write_text("424242\n")
    pidfile.release()
    assert path.read_text() == "424242\n"


def test_release_when_the_file_is_gone(tmp_path):
    path = tmp_path / "c.pid"
    pidfile = PidFile(str(path))
    pidfile.acquire()
    path.unlink()
    pidfile.release()   # no error
    assert not path.exists()


def test_read_missing_file(tmp_path):
    assert PidFile(str(tmp_path / "none.pid")).read() == 0


def test_acquire_in_missing_directory_raises_oserror(tmp_path):
    with pytest.raises(OSError):
        PidFile(str(tmp_path / "missing" / "c.pid")).acquire()


def test_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pidfile = PidFile("rel.pid")
    pidfile.acquire()
    assert (tmp_path / "rel.pid").read_text() == f"{os.getpid()}\n"
    pidfile.release()
    assert os.listdir(tmp_path) == []


def test_alive():
    assert alive(os.getpid())
    assert not alive(dead_pid())
