"""The two lock kinds Dovecot uses, so that our locks and Dovecot's exclude each other.

* :class:`DotLock`: ``<file>.lock`` created with ``O_CREAT|O_EXCL`` and content
  ``<pid>:<hostname>``; stale when its owner is a dead local process or it has not been
  touched for ``stale_after`` seconds (Dovecot: 120 s for maildir uidlist and keywords).
* :class:`FcntlLock`: a whole-file POSIX write lock, waited for with a timeout.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import time
from types import TracebackType

from .errors import LockTimeoutError, StorageError


@functools.cache
def hostname() -> str:
    """This host's name as gethostname() gives it (the kernel's nodename), without
    loading the socket module for it; read once per process, as Dovecot does."""
    return os.uname().nodename

_POLL = 0.05
EMPTY_STALE_AFTER = 5.0
# A lock holding a target's new content (see DotLock.abandoned_after), unchanged this long
# and locked by no process, was left by a killed writer: Dovecot holds such a lock for
# one small write.
ABANDONED_AFTER = 5.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fcntl_held(path: str) -> bool:
    """Whether another process holds a POSIX lock on ``path`` (tested with a shared lock,
    released at once)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


class DotLock:
    """``path + '.lock'`` held exclusively; usable as a context manager."""

    def __init__(self, path: str, *, timeout: float = 120.0, stale_after: float = 120.0,
                 abandoned_after: float | None = None) -> None:
        self.target = path
        self.path = path + ".lock"
        self.timeout = timeout
        self.stale_after = stale_after
        # For locks whose file becomes the new target (dovecot-keywords): once the owner
        # wrote the new content, no pid says who it is. Such a lock that no process holds
        # an fcntl lock on (our writers do while writing) and that has not changed for
        # this long was left by a killed writer (Dovecot holds it for one small write).
        self.abandoned_after = abandoned_after
        self._held = False
        self._last_touch = 0.0

    def _is_stale(self) -> bool:
        try:
            st = os.stat(self.path)
            with open(self.path, "rb") as f:
                content = f.read(256).decode("ascii", "replace")
        except FileNotFoundError:
            return False
        except OSError:
            return False
        pid_s, _, host = content.partition(":")
        if host.strip() == hostname() and pid_s.isdigit():
            if not _pid_alive(int(pid_s)):
                return True
        age = time.time() - st.st_mtime
        if not content and age > EMPTY_STALE_AFTER:
            # A writer that creates with O_EXCL and then writes (Dovecot's default) was
            # killed in between: nobody can own an empty lock for seconds.
            return True
        owner_line = pid_s.isdigit() and bool(host.strip()) and "\n" not in content
        if self.abandoned_after is not None and not owner_line and age > self.abandoned_after:
            return not _fcntl_held(self.path)
        return age > self.stale_after

    def _create(self, content: bytes, tmp: str) -> bool:
        """Create the lock file with its content in one step; False if it exists.

        The content goes into a private temporary file that is then hard-linked to the
        lock name, so a crash can never leave an empty lock (whose owner nobody could
        tell, making every later run wait for the stale timeout). Where hard links are
        not possible, fall back to ``O_EXCL`` and write.
        """
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
                raise
        try:
            # Readable by all: a Dovecot waiting for our lock (as the mail user) watches it with inotify.
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, content)
        finally:
            os.close(fd)
        return True

    def acquire(self) -> None:
        deadline = time.monotonic() + self.timeout
        content = f"{os.getpid()}:{hostname()}".encode()
        tmp = f"{self.path}.{os.getpid()}.{time.monotonic_ns()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, content)
            finally:
                os.close(fd)
        except OSError as e:
            raise StorageError(f"Cannot create lock file {self.path}: {e.strerror}") from None
        try:
            while True:
                try:
                    created = self._create(content, tmp)
                except OSError as e:
                    raise StorageError(f"Cannot create lock file {self.path}: {e.strerror}") from None
                if created:
                    self._held = True
                    self._last_touch = time.monotonic()
                    return
                if self._is_stale():
                    try:
                        os.unlink(self.path)
                    except FileNotFoundError:
                        pass
                    continue
                if time.monotonic() >= deadline:
                    raise LockTimeoutError(f"Timeout while waiting for lock {self.path}") from None
                time.sleep(_POLL)
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

    def touch(self) -> None:
        """Keep a long-held lock from looking stale (Dovecot touches every 10 s)."""
        if self._held and time.monotonic() - self._last_touch > 10:
            try:
                os.utime(self.path)
            except OSError:
                pass
            self._last_touch = time.monotonic()

    def write_content(self, data: bytes, *, fsync: bool = True) -> None:
        """Make the lock file hold the target's new content (then :meth:`replace_target`),
        as Dovecot writes dovecot-keywords and subscriptions. An fcntl lock is held while
        the owner line is overwritten, so that a killed writer's lock is known abandoned
        (``abandoned_after``) rather than waited for until it is stale."""
        if not self._held:
            raise RuntimeError("write_content() without holding the lock")
        with open(self.path, "r+b") as f:
            fcntl.lockf(f.fileno(), fcntl.LOCK_EX)
            f.truncate()
            f.write(data)
            f.flush()
            if fsync:
                os.fdatasync(f.fileno())

    def replace_target(self) -> None:
        """Rename the lock file (holding new content) over the target: write and unlock."""
        if not self._held:
            raise RuntimeError("replace_target() without holding the lock")
        os.replace(self.path, self.target)
        self._held = False

    def release(self) -> None:
        if self._held:
            self._held = False
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    @property
    def held(self) -> bool:
        return self._held

    def __enter__(self) -> DotLock:
        self.acquire()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


class FcntlLock:
    """A whole-file ``F_WRLCK`` on ``path`` (created if missing)."""

    def __init__(self, path: str, *, timeout: float = 30.0, unlink_on_release: bool = False) -> None:
        self.path = path
        self.timeout = timeout
        self.unlink_on_release = unlink_on_release
        self._fd: int | None = None

    def acquire(self) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as e:
                raise StorageError(f"Cannot open lock file {self.path}: {e.strerror}") from None
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise StorageError(f"Cannot lock {self.path}: {e.strerror}") from None
                if time.monotonic() >= deadline:
                    raise LockTimeoutError(
                        f"Couldn't lock {self.path}: timed out after {self.timeout:g} seconds"
                    ) from None
                time.sleep(_POLL)
                continue
            # The holder before us may have unlinked the file after we opened it.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            self._fd = fd
            return

    def release(self) -> None:
        if self._fd is not None:
            if self.unlink_on_release:
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FcntlLock:
        self.acquire()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


__all__ = ["DotLock", "FcntlLock"]
