"""The mdbox map index: ``storage/dovecot.map.index`` + ``.log`` (storage-formats §5.3).

A Dovecot index whose "messages" are stored messages, keyed by map UID: the ``map``
extension says where each one is (``file_id``, ``offset`` of its 30-byte header, ``size``
of header + body + metadata) and ``ref`` how many mailbox records point at it; the
``map`` header holds ``highest_file_id``. It lives in ``<INDEX or root>/storage``; the
``m.<file_id>`` files in ``<root>/storage`` (or ``<ALT>/storage``).

Writers hold the map log's fcntl lock (Dovecot's "map lock") before any mailbox lock, and
every map transaction ends with the tail-offset update (tail == head, else Dovecot
rebuilds the whole storage). Like Dovecot we write saves and reference changes as
non-external records, purges as external ones.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

import attrs

from dsync_core import dovecot_index as di
from dsync_core.dovecot_index import logfile as lf
from dsync_core.dovecot_index.state import OFF_UID_VALIDITY
from dsync_core.errors import CorruptError, ExistsError

T = TypeVar("T")

MAP_PREFIX = "dovecot.map.index"
EXT_MAP = "map"
EXT_REF = "ref"
MAP_HDR_SIZE = 8
MAP_REC_SIZE = 12
REF_REC_SIZE = 2
NO_SHRINK = 0x1


@attrs.frozen
class MapRecord:
    map_uid: int
    file_id: int
    offset: int
    size: int
    refcount: int

    @property
    def end(self) -> int:
        return self.offset + self.size


class MdboxMap:
    """Reads the map and appends transactions to it."""

    def __init__(self, index_dir: str, *, fsync: bool = True, chown: Callable[[str], None] | None = None,
                 timeout: float = di.writer.LOCK_TIMEOUT) -> None:
        self.dir = index_dir
        self.fsync = fsync
        self.chown = chown
        self.timeout = timeout
        self.log_path = os.path.join(index_dir, MAP_PREFIX + lf.LOG_SUFFIX)
        self._state: di.IndexState | None = None

    # -- reading -----------------------------------------------------------------------
    def exists(self) -> bool:
        return os.path.exists(self.log_path)

    def ensure(self) -> None:
        """Create an empty map (as Dovecot does: a log that only sets UIDVALIDITY)."""
        if self.exists():
            return
        tx = lf.Transaction()
        tx.header_u32(OFF_UID_VALIDITY, int(time.time()))
        with contextlib.suppress(ExistsError):
            di.create_log(self.dir, tx, prefix=MAP_PREFIX, fsync=self.fsync, chown=self.chown)

    def state(self) -> di.IndexState:
        """The map brought up to date (incrementally when its log only grew)."""
        self._state = (self._state.refresh() if self._state is not None
                       else di.IndexState.load(self.dir, MAP_PREFIX))
        return self._state

    @property
    def uid_validity(self) -> int:
        self.ensure()
        uv = self.state().uid_validity
        if uv == 0:
            raise CorruptError(f"mdbox map {self.log_path} has no UIDVALIDITY; run doveadm force-resync")
        return uv

    def lookup(self, map_uid: int, st: di.IndexState | None = None) -> MapRecord | None:
        st = st or self.state()
        if map_uid not in st.messages:
            return None
        ext = st.extensions.get(EXT_MAP)
        if ext is None or map_uid not in ext.records:
            return None
        file_id, offset, size = struct.unpack_from("<III", ext.records[map_uid].ljust(MAP_REC_SIZE, b"\0"), 0)
        ref = st.extensions.get(EXT_REF)
        return MapRecord(map_uid, file_id, offset, size, ref.record_int(map_uid, "<H") if ref else 0)

    def records(self, st: di.IndexState | None = None) -> list[MapRecord]:
        st = st or self.state()
        out = []
        for map_uid in sorted(st.messages):
            rec = self.lookup(map_uid, st)
            if rec is not None:
                out.append(rec)
        return out


def highest_file_id(st: di.IndexState) -> int:
    hdr = st.ext_header(EXT_MAP)
    return struct.unpack_from("<I", hdr, 0)[0] if hdr and len(hdr) >= 4 else 0


def _intro(tx: lf.Transaction, st: di.IndexState, name: str, hdr_size: int, rec_size: int, align: int) -> None:
    ext = st.extensions.get(name)
    tx.ext_intro(name, hdr_size=max(hdr_size, len(ext.hdr)) if ext else hdr_size, record_size=rec_size,
                 record_align=align, reset_id=ext.reset_id if ext else 0, flags=NO_SHRINK)


def add_records(tx: lf.Transaction, st: di.IndexState, items: Iterable[tuple[int, int, int, int]],
                new_highest: int) -> None:
    """Map records of newly stored messages: {map_uid, file_id, offset, size}, ref 1."""
    items = sorted(items)
    _intro(tx, st, EXT_MAP, MAP_HDR_SIZE, MAP_REC_SIZE, 4)
    if new_highest > highest_file_id(st):
        tx.ext_hdr_update(0, struct.pack("<I", new_highest))
    tx.append([(map_uid, 0) for map_uid, *_ in items])
    _intro(tx, st, EXT_MAP, MAP_HDR_SIZE, MAP_REC_SIZE, 4)
    tx.ext_rec_update([(u, struct.pack("<III", f, o, s)) for u, f, o, s in items])
    _intro(tx, st, EXT_REF, 0, REF_REC_SIZE, 2)
    tx.ext_rec_update([(u, struct.pack("<H", 1)) for u, *_ in items])


def change_refs(tx: lf.Transaction, st: di.IndexState, diffs: dict[int, int]) -> None:
    """Reference count changes (Dovecot's EXT_ATOMIC_INC on ``ref``)."""
    items = [(u, d) for u, d in sorted(diffs.items()) if d and u in st.messages]
    if items:
        _intro(tx, st, EXT_REF, 0, REF_REC_SIZE, 2)
        tx.ext_atomic_inc(items)


def move_records(tx: lf.Transaction, st: di.IndexState, moved: Iterable[tuple[int, int, int, int]],
                 dropped: Iterable[int], new_highest: int) -> None:
    """A purge: new places of the kept messages, map UIDs of unreferenced ones expunged."""
    moved = sorted(moved)
    _intro(tx, st, EXT_MAP, MAP_HDR_SIZE, MAP_REC_SIZE, 4)
    if new_highest > highest_file_id(st):
        tx.ext_hdr_update(0, struct.pack("<I", new_highest))
    if moved:
        tx.ext_rec_update([(u, struct.pack("<III", f, o, s)) for u, f, o, s in moved])
    tx.expunge_guid([(u, bytes(16)) for u in sorted(set(dropped))])


def commit_locked(mp: MdboxMap, fd: int, build: Callable[[di.IndexState], tuple[lf.Transaction | None, T]]) -> T:
    """Append ``build``'s transaction to the map log locked through ``fd``."""
    mp._state, result = di.append_locked(fd, mp.dir, build, prefix=MAP_PREFIX, state=mp._state, fsync=mp.fsync)
    return result


__all__ = ["MdboxMap", "MapRecord", "MAP_PREFIX", "add_records", "change_refs", "move_records", "commit_locked",
           "highest_file_id"]
