"""Making written files durable in batches, the way a mail store needs it.

Saving many messages one ``fsync`` at a time is what makes naive mail stores slow. These
helpers let a backend write a whole batch first and then make it durable at once:

* :func:`sync_files` flushes many files. On Linux it issues one ``syncfs(2)`` per
  filesystem the files live on (found through ``ctypes``); elsewhere, or when ``syncfs``
  fails, it falls back to ``fdatasync`` per file.
* :func:`fsync_dir` / :func:`fsync_dirs` make renames and unlinks in directories durable.

Dovecot's ``mail_fsync = never`` is honoured by passing ``enabled=False`` (see
:func:`fsync_enabled`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Iterable, Mapping

from .errors import StorageError

_syncfs_fn: object = None  # None = not looked up yet, False = unavailable


def _syncfs() -> object:
    global _syncfs_fn
    if _syncfs_fn is None:
        _syncfs_fn = False
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            fn = libc.syncfs
            fn.argtypes = [ctypes.c_int]
            fn.restype = ctypes.c_int
            _syncfs_fn = fn
        except (OSError, AttributeError):
            pass
    return _syncfs_fn


def fsync_enabled(settings: Mapping[str, str] | None) -> bool:
    """False when Dovecot's ``mail_fsync`` setting says ``never``."""
    if not settings:
        return True
    return str(settings.get("mail_fsync", "optimized")).strip().lower() != "never"


def _fdatasync(fd: int) -> None:
    try:
        os.fdatasync(fd)
    except AttributeError:  # pragma: no cover - platforms without fdatasync
        os.fsync(fd)


def sync_files(files: Iterable[int | str], *, enabled: bool = True) -> None:
    """Make the data of every file (open descriptors or paths) durable.

    One ``syncfs`` per filesystem when available, else ``fdatasync`` per file. Paths that
    vanished meanwhile are ignored (someone else already removed them).
    """
    if not enabled:
        return
    items = list(files)
    if not items:
        return
    fn = _syncfs()
    if fn and len(items) > 1:
        by_dev: dict[int, int | str] = {}
        try:
            for item in items:
                st = os.fstat(item) if isinstance(item, int) else os.stat(item)
                by_dev.setdefault(st.st_dev, item)
        except FileNotFoundError:
            by_dev = {}
        ok = bool(by_dev)
        for item in by_dev.values():
            if not _syncfs_one(fn, item):
                ok = False
                break
        if ok:
            return
    for item in items:
        if isinstance(item, int):
            try:
                _fdatasync(item)
            except OSError as e:
                raise StorageError(f"fdatasync failed: {e.strerror}") from None
            continue
        try:
            fd = os.open(item, os.O_RDONLY)
        except FileNotFoundError:
            continue
        except OSError as e:
            raise StorageError(f"Cannot open {item} for fsync: {e.strerror}") from None
        try:
            _fdatasync(fd)
        except OSError as e:
            raise StorageError(f"fdatasync({item}) failed: {e.strerror}") from None
        finally:
            os.close(fd)


def _syncfs_one(fn: object, item: int | str) -> bool:
    if isinstance(item, int):
        return fn(item) == 0  # type: ignore[operator]
    try:
        fd = os.open(item, os.O_RDONLY)
    except OSError:
        return False
    try:
        return fn(fd) == 0  # type: ignore[operator]
    finally:
        os.close(fd)


def fsync_dir(path: str, *, enabled: bool = True) -> None:
    """``fsync`` a directory so that renames, links and unlinks in it are durable."""
    if not enabled:
        return
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except FileNotFoundError:
        return
    except OSError as e:
        raise StorageError(f"Cannot open directory {path} for fsync: {e.strerror}") from None
    try:
        os.fsync(fd)
    except OSError as e:
        raise StorageError(f"fsync({path}) failed: {e.strerror}") from None
    finally:
        os.close(fd)


def fsync_dirs(paths: Iterable[str], *, enabled: bool = True) -> None:
    """:func:`fsync_dir` for each distinct directory."""
    for p in dict.fromkeys(paths):
        fsync_dir(p, enabled=enabled)


def write_file_atomic(path: str, data: bytes, *, mode: int = 0o600, tmp_path: str | None = None,
                      enabled: bool = True) -> None:
    """Write ``data`` to a temporary file beside ``path``, make it durable, rename it over."""
    tmp = tmp_path or path + ".tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            if enabled:
                _fdatasync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        raise StorageError(f"Cannot write {path}: {e.strerror}") from None
    fsync_dir(os.path.dirname(path) or ".", enabled=enabled)


__all__ = ["sync_files", "fsync_dir", "fsync_dirs", "fsync_enabled", "write_file_atomic"]
