"""Writing Dovecot transaction logs that Dovecot accepts (storage-formats §6.10).

* :func:`create_log` writes the first ``dovecot.index.log`` of a new index (no
  ``dovecot.index``: the log alone is a complete index), through a temporary file that
  is made durable and then linked into place, so it never replaces an existing log.
* :func:`append_transaction` appends one transaction to an existing log under Dovecot's
  own lock (a whole-file fcntl write lock on the log), after re-reading the state under
  that lock so that UIDs, keywords and extension ids are current. It ends the
  transaction with the ``log_file_tail_offset`` header update Dovecot writes.

We never write ``dovecot.index``, never rotate and never truncate: Dovecot does those in
its own next sync.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from collections.abc import Callable
from typing import TypeVar

from ..durable import fsync_dir
from ..errors import CorruptError, ExistsError, LockTimeoutError, StorageError
from . import logfile as lf
from .state import INDEX_PREFIX, IndexState

T = TypeVar("T")
LOCK_TIMEOUT = 120.0  # Dovecot waits up to 3 minutes for an index lock
_POLL = 0.02


def create_log(index_dir: str, tx: lf.Transaction, *, prefix: str = INDEX_PREFIX, indexid: int | None = None,
               fsync: bool = True, chown: Callable[[str], None] | None = None) -> None:
    """Create ``<prefix>.log`` holding one transaction; :class:`ExistsError` if a log exists."""
    path = os.path.join(index_dir, prefix + lf.LOG_SUFFIX)
    now = int(time.time())
    hdr = lf.LogHeader(lf.LOG_HDR_SIZE, indexid or now, 1, 0, 0, now, 1).encode()
    body = tx.encode()
    data = hdr + body + lf.tail_update(len(hdr) + len(body))
    tmp = os.path.join(index_dir, f"{prefix}.log.newlock.{os.getpid()}.{socket.gethostname()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            if chown is not None:
                chown(tmp)
            os.write(fd, data)
            if fsync:
                os.fdatasync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise ExistsError(f"Transaction log {path} already exists") from None
        finally:
            os.unlink(tmp)
    except OSError as e:
        raise StorageError(f"Cannot create {path}: {e.strerror}") from None
    fsync_dir(index_dir, enabled=fsync)


class LogLock:
    """Dovecot's index lock: a whole-file fcntl write lock on the current ``.log``.

    After the lock is taken the path is checked to still name the locked file (Dovecot
    may have rotated the log meanwhile); if not, the new log is locked instead.
    """

    def __init__(self, path: str, timeout: float = LOCK_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        self.fd: int | None = None

    def acquire(self) -> int:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
            except FileNotFoundError:
                raise CorruptError(f"Transaction log {self.path} is missing") from None
            except OSError as e:
                raise StorageError(f"Cannot open {self.path}: {e.strerror}") from None
            try:
                while True:
                    try:
                        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except OSError as e:
                        if e.errno not in (errno.EAGAIN, errno.EACCES):
                            raise StorageError(f"Cannot lock {self.path}: {e.strerror}") from None
                        if time.monotonic() >= deadline:
                            raise LockTimeoutError(
                                f"Timeout ({self.timeout:g}s) while waiting for lock for transaction log file "
                                f"{self.path}"
                            ) from None
                        time.sleep(_POLL)
                try:
                    same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
            except BaseException:
                os.close(fd)
                raise
            if same:
                self.fd = fd
                return fd
            os.close(fd)  # rotated while we waited: lock the new file

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the fcntl lock
            self.fd = None

    def __enter__(self) -> int:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def append_transaction(
    index_dir: str,
    build: Callable[[IndexState], tuple[lf.Transaction | None, T]],
    *,
    prefix: str = INDEX_PREFIX,
    state: IndexState | None = None,
    fsync: bool = True,
    timeout: float = LOCK_TIMEOUT,
    before_write: Callable[[IndexState, lf.Transaction], None] | None = None,
) -> tuple[IndexState, T]:
    """Lock the log, read the current state, append ``build(state)``'s transaction.

    ``build`` returns ``(transaction or None, result)``; the state it sees is current
    under the lock. ``before_write`` runs under the lock just before the append (a
    storage renames its message files into place there). Returns the state after the
    append (with our own records applied) and ``result``.
    """
    path = os.path.join(index_dir, prefix + lf.LOG_SUFFIX)
    with LogLock(path, timeout) as fd:
        return append_locked(fd, index_dir, build, prefix=prefix, state=state, fsync=fsync,
                             before_write=before_write)


def append_locked(
    fd: int,
    index_dir: str,
    build: Callable[[IndexState], tuple[lf.Transaction | None, T]],
    *,
    prefix: str = INDEX_PREFIX,
    state: IndexState | None = None,
    fsync: bool = True,
    before_write: Callable[[IndexState, lf.Transaction], None] | None = None,
) -> tuple[IndexState, T]:
    """:func:`append_transaction` on a log the caller has locked already (``fd`` from
    :class:`LogLock`): for several transactions under one lock (mdbox keeps its map
    locked from the map commit to the mailbox commit). Opening and closing a second
    descriptor of a locked file would drop the process's fcntl lock, so callers that
    hold a :class:`LogLock` must append through its ``fd``."""
    path = os.path.join(index_dir, prefix + lf.LOG_SUFFIX)
    state = state.refresh() if state is not None else IndexState.load(index_dir, prefix)
    size = os.fstat(fd).st_size
    if not state.exists or state.log_offset != size:
        state = IndexState.load(index_dir, prefix)
        if state.log_offset != size:
            raise CorruptError(
                f"Transaction log {path} ends with an incomplete record at offset {state.log_offset}; "
                "let Dovecot repair it (doveadm force-resync)"
            )
    tx, result = build(state)
    if not tx:
        return state, result
    if before_write is not None:
        before_write(state, tx)
    body = tx.encode()
    data = body + lf.tail_update(size + len(body))
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise StorageError(f"Short write to {path}")
        if fsync:
            os.fdatasync(fd)
    except OSError as e:
        raise StorageError(f"Cannot append to {path}: {e.strerror}") from None
    state = state.refresh()
    return state, result
