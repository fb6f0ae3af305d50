"""When a directory's stamp may be trusted: the "racy" rule for ``cur/`` and ``new/``.

A rescan remembers the stat of ``cur/`` and ``new/`` and skips the next listing while it is
unchanged. That is unsafe for an entry added in the same timestamp tick as the listing,
after it: the directory's mtime would not change again. Two rules decide:

- Anywhere, a directory whose mtime is ``RACY_SECONDS`` old is safe (Dovecot's rule, with
  room for an NFS server's clock).
- On a local filesystem, timestamps come from this kernel's coarse clock, whose tick
  ``clock_getres`` tells. A listing that starts two ticks after the mtime cannot be
  followed by a change that keeps it, whatever happens later: any later change gets a
  later tick (git's answer to its racy index). Then a mailbox we have just written need
  not be listed again by the next run.
"""

from __future__ import annotations

import os
import sys
import time

RACY_SECONDS = 2.0

#: Filesystems whose timestamps are this kernel's clock. Anything else (nfs, cifs, fuse,
#: ceph, 9p, ...) may use a server's clock and gets only the RACY_SECONDS rule.
LOCAL_FILESYSTEMS = frozenset({
    "ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs", "zfs", "overlay", "jfs",
    "reiserfs", "bcachefs", "ramfs",
})

#: Linux's CLOCK_REALTIME_COARSE, the clock filesystems stamp with (not in Python's time).
_CLOCK_REALTIME_COARSE = 5


def tick_ns() -> int:
    """The kernel's timestamp tick (its coarse clock's resolution), 10 ms when unknown."""
    try:
        return max(1, int(time.clock_getres(_CLOCK_REALTIME_COARSE) * 1e9))
    except (OSError, AttributeError):
        return 10_000_000


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        digits = field[i + 1:i + 4]
        if field[i] == "\\" and len(digits) == 3 and digits.isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def filesystem_type(path: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The type of the filesystem holding ``path`` (``ext4``, ``nfs4``, ...), None if unknown."""
    try:
        real = os.path.realpath(path)
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    best, best_type = -1, None
    for line in lines:
        head, sep, tail = line.partition(" - ")
        fields = head.split(" ")
        if not sep or len(fields) < 5 or not tail:
            continue
        mount = _unescape(fields[4])
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= best:  # the last of equal mounts is the one on top
            best, best_type = len(mount), tail.split(" ", 1)[0]
    return best_type


class RacyRule:
    """Whether a stamp taken now (or by a listing that started at ``listed_at``) is safe."""

    def __init__(self, path: str, *, nfs: bool = False) -> None:
        self.fine = sys.platform.startswith("linux") and not nfs and filesystem_type(path) in LOCAL_FILESYSTEMS
        #: How long after a directory's mtime a listing must start to be safe (two ticks and
        #: a little: the coarse clock lags the fine one by up to one tick).
        self.settle_ns = 2 * tick_ns() + 1_000_000

    def racy(self, mtime_ns: int, now_ns: int, listed_at: int | None = None) -> bool:
        if now_ns - mtime_ns >= RACY_SECONDS * 1e9:
            return False
        return not (self.fine and listed_at is not None and listed_at - mtime_ns >= self.settle_ns)

    def settle(self, mtimes_ns: list[int], *, wait: bool = True) -> int | None:
        """The time a listing may start so that its stamp is safe: now, after sleeping the
        few milliseconds until the newest of ``mtimes_ns`` is two ticks old (when ``wait``).
        None without the fine rule."""
        if not self.fine:
            return None
        now = time.time_ns()
        needed = max(mtimes_ns, default=0) + self.settle_ns - now
        if wait and 0 < needed <= self.settle_ns:  # an mtime in the future: clocks disagree, no wait
            time.sleep(needed / 1e9)
            now = time.time_ns()
        return now
