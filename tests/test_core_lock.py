"""dsync_core.lock: Dovecot-style dotlocks and fcntl locks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dsync_core.errors import LockTimeoutError
from dsync_core.lock import DotLock, FcntlLock


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_dotlock_content_and_release(tmp_path: Path) -> None:
    target = tmp_path / "dovecot-uidlist"
    with DotLock(str(target), timeout=1) as lock:
        assert lock.held
        content = (tmp_path / "dovecot-uidlist.lock").read_text()
        assert content == f"{os.getpid()}:{socket.gethostname()}"
    assert not lock.held
    assert not (tmp_path / "dovecot-uidlist.lock").exists()


def test_dotlock_held_by_live_process_times_out(tmp_path: Path) -> None:
    target = str(tmp_path / "f")
    Path(target + ".lock").write_text(f"{os.getppid()}:{socket.gethostname()}")
    t0 = time.monotonic()
    with pytest.raises(LockTimeoutError, match=r"f\.lock"):
        DotLock(target, timeout=0.3).acquire()
    assert time.monotonic() - t0 >= 0.3
    assert Path(target + ".lock").exists(), "someone else's live lock must not be removed"


def test_dotlock_of_dead_process_is_stale(tmp_path: Path) -> None:
    target = str(tmp_path / "f")
    Path(target + ".lock").write_text(f"{_dead_pid()}:{socket.gethostname()}")
    t0 = time.monotonic()
    with DotLock(target, timeout=5, stale_after=3600):
        assert Path(target + ".lock").read_text().startswith(f"{os.getpid()}:")
    assert time.monotonic() - t0 < 2, "a dead owner's lock should be broken at once"


def test_dotlock_dead_pid_on_other_host_is_not_stale(tmp_path: Path) -> None:
    target = str(tmp_path / "f")
    Path(target + ".lock").write_text(f"{_dead_pid()}:other-host.invalid")
    with pytest.raises(LockTimeoutError):
        DotLock(target, timeout=0.2, stale_after=3600).acquire()


def test_dotlock_old_mtime_is_stale(tmp_path: Path) -> None:
    target = str(tmp_path / "f")
    lockfile = Path(target + ".lock")
    lockfile.write_text("1:other-host.invalid")
    old = time.time() - 600
    os.utime(lockfile, (old, old))
    with DotLock(target, timeout=1, stale_after=120):
        pass


def test_abandoned_content_lock(tmp_path: Path) -> None:
    """A lock whose file already holds the new content (dovecot-keywords) names no owner:
    left by a killed writer (unchanged, no fcntl lock) it is broken after
    ``abandoned_after`` seconds, not the 120-s stale time; while a live process holds an
    fcntl lock on it, or while it is fresh, it is respected."""
    target = str(tmp_path / "dovecot-keywords")
    lockfile = Path(target + ".lock")
    lockfile.write_text("0 work\n1 $Forwarded\n")
    with pytest.raises(LockTimeoutError):
        DotLock(target, timeout=0.3, stale_after=120, abandoned_after=5).acquire()  # fresh
    old = time.time() - 30
    os.utime(lockfile, (old, old))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'r+b'); "
         "fcntl.lockf(f.fileno(), fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)", str(lockfile)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(LockTimeoutError):
            DotLock(target, timeout=0.3, stale_after=120, abandoned_after=5).acquire()
    finally:
        holder.kill()
        holder.wait()
    os.utime(lockfile, (old, old))
    with pytest.raises(LockTimeoutError):  # without the option, only the stale time counts
        DotLock(target, timeout=0.3, stale_after=120).acquire()
    t0 = time.monotonic()
    with DotLock(target, timeout=5, stale_after=120, abandoned_after=5):
        pass
    assert time.monotonic() - t0 < 2


def test_dotlock_replace_target(tmp_path: Path) -> None:
    target = tmp_path / "subscriptions"
    target.write_text("old")
    lock = DotLock(str(target), timeout=1)
    lock.acquire()
    Path(lock.path).write_text("new")
    lock.replace_target()
    assert target.read_text() == "new"
    assert not lock.held and not Path(lock.path).exists()


_HOLDER = """
import sys
from dsync_core.lock import FcntlLock
with FcntlLock(sys.argv[1], timeout=5):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_fcntl_lock_timeout_across_processes(tmp_path: Path) -> None:
    path = str(tmp_path / ".dovecot-sync.lock")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        with pytest.raises(LockTimeoutError, match="timed out after 0.3 seconds"):
            FcntlLock(path, timeout=0.3).acquire()
        assert time.monotonic() - t0 >= 0.3
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(10)
    with FcntlLock(path, timeout=2):  # free again once the holder is gone
        pass


def test_fcntl_lock_waits_for_release(tmp_path: Path) -> None:
    path = str(tmp_path / "lock")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    assert holder.stdin is not None
    holder.stdin.close()  # the holder releases soon; a waiting acquire gets it
    with FcntlLock(path, timeout=10):
        pass
    holder.wait(10)


def test_fcntl_unlink_on_release(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    with FcntlLock(str(path), unlink_on_release=True):
        assert path.exists()
    assert not path.exists()
    with FcntlLock(str(path)):
        pass
    assert path.exists()
