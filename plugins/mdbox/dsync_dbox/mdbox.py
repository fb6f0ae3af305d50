"""MdboxStorage and MdboxMailbox: Dovecot's multi-dbox, read and written in Dovecot's own files.

Messages of all mailboxes live in ``storage/m.<file_id>`` dbox files, many per file; the
map index (:mod:`.map`) says where each stored message is and how many mailbox records
refer to it. Each mailbox has its own Dovecot index with UIDs, flags, keywords, modseqs,
the ``mdbox`` record (map UID, save date) and the ``guid`` record (128-bit GUID); the
mailbox GUID is in ``mdbox-hdr``, whose first u32 must equal the map's UIDVALIDITY.

Writing follows Dovecot (storage-formats §5.5, §5.6): message data first (new files
written under temporary names, rotated at ``mdbox_rotate_size``; with
``dsync_mdbox_append=yes`` appended to the newest file under its ``flock`` as Dovecot
does, which a SIGKILL mid-write can leave half-written), made durable; then, holding the map lock and then the
mailbox's log lock, new files are renamed to ``m.<id>``, the map transaction (new map
records, ``highest_file_id``, reference counts) is appended and finally the mailbox
transaction that refers to it. Expunges lower reference counts in the map first; space is
reclaimed by :meth:`MdboxStorage.purge` (``dsync purge``, ``-P``), which rewrites files
holding unreferenced messages as Dovecot's ``doveadm purge`` does.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import struct
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

from dsync_core import dbox
from dsync_core import dovecot_index as di
from dsync_core.dovecot_index import logfile as lf
from dsync_core.dovecot_index.state import OFF_UID_VALIDITY
from dsync_core.durable import fsync_dir, sync_files
from dsync_core.errors import CorruptError, NotFoundError, StorageError, UsageError
from dsync_core.location import Location
from dsync_core.model import ExpungeRecord, MailboxStatus, MessageRecord, SaveRequest, UserInfo
from dsync_core.settings import Settings

from . import map as mmap
from .common import (
    LOCK_TIMEOUT,
    MAILBOX_HDR_SIZE,
    DboxMailbox,
    DboxStorage,
    index_record,
    message_guid,
    temp_name,
)

log = logging.getLogger("dsync.dbox")

MDBOX_HDR = "mdbox-hdr"
EXT_MDBOX = "mdbox"  # per message: map_uid u32, save_date u32
EXT_GUID = "guid"  # per message: 128-bit GUID
STORAGE_DIR = "storage"
DEFAULT_ROTATE_SIZE = 10 * 1024 * 1024
MAX_FILE_SIZE = 2**32 - 1  # map offsets and sizes are u32
_FILE_RE = re.compile(r"^m\.([1-9][0-9]*)$")
_OPEN_FILES = 16
_CACHED_MESSAGES = 200_000


class _Files:
    """Open ``m.*`` files and the messages read from them. Files are never rewritten in
    place (a purge writes new files and deletes the old), so what we read stays true."""

    def __init__(self, dirs: list[str]) -> None:
        self.dirs = dirs
        self._open: OrderedDict[int, tuple[str, BinaryIO, int]] = OrderedDict()
        self._msgs: dict[tuple[int, int], tuple[str, dbox.DboxMessage]] = {}

    def paths(self, file_id: int) -> list[str]:
        return [os.path.join(d, f"m.{file_id}") for d in self.dirs]

    def _file(self, file_id: int) -> tuple[str, BinaryIO, int]:
        got = self._open.get(file_id)
        if got is not None:
            self._open.move_to_end(file_id)
            return got
        for path in self.paths(file_id):
            try:
                f = open(path, "rb")
            except FileNotFoundError:
                continue
            except OSError as e:
                raise StorageError(f"Cannot read {path}: {e.strerror}") from None
            try:
                _v, hsize, _first = dbox.read_file_header(f, path)  # type: ignore[arg-type]
            except BaseException:
                f.close()
                raise
            self._open[file_id] = (path, f, hsize)  # type: ignore[assignment]
            while len(self._open) > _OPEN_FILES:
                _id, (_p, old, _h) = self._open.popitem(last=False)
                old.close()
            return path, f, hsize  # type: ignore[return-value]
        raise FileNotFoundError(errno.ENOENT, f"m.{file_id} not found", self.paths(file_id)[0])

    def message(self, file_id: int, offset: int) -> tuple[str, dbox.DboxMessage]:
        key = (file_id, offset)
        got = self._msgs.get(key)
        if got is None:
            path, f, hsize = self._file(file_id)
            got = (path, dbox.read_message(f, offset, hsize, path))
            if len(self._msgs) >= _CACHED_MESSAGES:
                self._msgs.clear()  # bounded memory on huge stores; re-reading is cheap
            self._msgs[key] = got
        return got

    def close(self) -> None:
        for _p, f, _h in self._open.values():
            f.close()
        self._open.clear()
        self._msgs.clear()


class MdboxStorage(DboxStorage):
    scheme = "mdbox"

    def __init__(self, location: Location, settings: Settings | None = None, user: UserInfo | None = None) -> None:
        super().__init__(location, settings, user)
        self.storage_dir = os.path.join(self.root, STORAGE_DIR)
        self.alt_storage_dir = os.path.join(self.layout.alt_root, STORAGE_DIR) if self.layout.alt_root else None
        map_dir = os.path.join(self.layout.index_root, STORAGE_DIR)
        try:
            self.makedirs(self.storage_dir)
            self.makedirs(map_dir)
        except OSError as e:
            raise StorageError(f"Cannot create {self.storage_dir}: {e.strerror}") from None
        self.map = mmap.MdboxMap(map_dir, fsync=self.fsync, chown=self.own, timeout=LOCK_TIMEOUT)
        self.rotate_size = min(self.settings.get_size("mdbox_rotate_size", DEFAULT_ROTATE_SIZE), MAX_FILE_SIZE)
        # Appending to the newest m.* file (as Dovecot does) leaves a half-written message
        # in a file Dovecot uses when we are killed mid-write, and Dovecot then calls the
        # file corrupted on its next append. By default each save batch therefore goes to
        # new files (temporary name, renamed under the map lock): a crash leaves nothing
        # Dovecot can see. Dovecot still appends its own deliveries to our newest file.
        self.append_mode = self.settings.get_bool("dsync_mdbox_append", False)
        self.files = _Files([d for d in (self.storage_dir, self.alt_storage_dir) if d])
        self._held_map_fd: int | None = None
        self._held_box_fd: int | None = None

    def close(self) -> None:
        self.files.close()
        super().close()

    def new_mailbox_transaction(self, guid: str, uidvalidity: int) -> lf.Transaction:
        """The first transaction of a new mailbox index: ``mdbox-hdr`` tied to the map."""
        tx = lf.Transaction()
        tx.ext_intro(MDBOX_HDR, hdr_size=MAILBOX_HDR_SIZE)
        tx.ext_hdr_update(0, struct.pack("<I", self.map.uid_validity) + bytes.fromhex(guid) + bytes(4))
        tx.header_u32(OFF_UID_VALIDITY, uidvalidity)
        return tx

    # -- locking -----------------------------------------------------------------------
    @contextlib.contextmanager
    def map_lock(self) -> Iterator[int]:
        """Dovecot's map lock (taken before any mailbox lock, §5.6); yields the log's fd."""
        self.map.ensure()
        with di.LogLock(self.map.log_path, LOCK_TIMEOUT) as fd:
            self._held_map_fd = fd
            try:
                yield fd
            finally:
                self._held_map_fd = None

    def commit_map(self, build: Any) -> Any:
        """Append a map transaction; the map lock must be held (:meth:`map_lock`)."""
        assert self._held_map_fd is not None, "map transaction without the map lock"
        return mmap.commit_locked(self.map, self._held_map_fd, build)

    @contextlib.contextmanager
    def _mailbox_write_lock(self, box: MdboxMailbox) -> Iterator[Any]:  # type: ignore[override]
        with self.map_lock(), di.LogLock(box.log_path, LOCK_TIMEOUT) as fd:
            self._held_box_fd = fd
            try:
                yield fd
            finally:
                self._held_box_fd = None

    def _remove_mailbox_files(self, name: str, *, has_children: bool) -> None:
        # As Dovecot: the mailbox's messages are expunged first (references dropped in
        # the map, then in the mailbox's own log), then its directories go.
        index_dir = self.layout.index_dir(name)
        st = di.IndexState.load(index_dir)
        if st.exists and st.messages:
            assert self._held_box_fd is not None, "mailbox removal without its lock"
            self._drop_all(index_dir, st, self._held_box_fd)
        super()._remove_mailbox_files(name, has_children=has_children)

    def _drop_all(self, index_dir: str, st: di.IndexState, box_fd: int) -> None:
        """Expunge every message of a mailbox whose log is locked through ``box_fd``."""
        diffs = _ref_diffs(st, list(st.messages))

        def build_map(ms: di.IndexState) -> tuple[lf.Transaction, None]:
            tx = lf.Transaction(external=False)
            mmap.change_refs(tx, ms, diffs)
            return tx, None

        def build_box(bs: di.IndexState) -> tuple[lf.Transaction, None]:
            tx = lf.Transaction()
            tx.expunge_guid([(u, _guid_rec(bs, u)) for u in sorted(bs.messages)])
            return tx, None

        self.commit_map(build_map)
        di.append_locked(box_fd, index_dir, build_box, fsync=self.fsync)

    # -- new data files ----------------------------------------------------------------
    def _appendable(self, need: int) -> tuple[int, str, int] | None:
        """The newest primary ``m.*`` file we may append ``need`` bytes to, flock'ed:
        (file_id, path, fd). Dovecot's conditions: version 2 with 30-byte message headers,
        under the rotate size, and its lock free. Bytes after the end of the file's last
        map record can only be what an appender killed before its map commit left (an
        appender holds the lock until then): they are cut off, so that the file stays
        appendable and a rebuild finds no half-written message."""
        ends = self._file_ends(self.map.state())
        if not ends:
            return None
        file_id = max(ends)
        path = os.path.join(self.storage_dir, f"m.{file_id}")
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise _NotAppendable from None
            end = self._file_ends(self.map.state()).get(file_id, 0)  # current, now that we hold the lock
            size = os.fstat(fd).st_size
            if end == 0 or size < end or end + need > self.rotate_size:
                raise _NotAppendable
            with open(path, "rb") as f:
                version, hsize, _first = dbox.read_file_header(f, path)  # type: ignore[arg-type]
            if version != 2 or hsize != dbox.MSG_HEADER_SIZE:
                raise _NotAppendable
            if size > end:
                log.warning("%s: removing %d bytes after its last message (an interrupted save)", path, size - end)
                os.ftruncate(fd, end)
                if self.fsync:
                    os.fsync(fd)
        except (_NotAppendable, CorruptError, OSError):
            os.close(fd)
            return None
        return file_id, path, fd

    def _file_ends(self, ms: di.IndexState) -> dict[int, int]:
        ends: dict[int, int] = {}
        for rec in self.map.records(ms):
            ends[rec.file_id] = max(ends.get(rec.file_id, 0), rec.end)
        return ends

    def _clear_leftovers(self, ms: di.IndexState) -> None:
        """Under the map lock: ``m.<id>`` files above the map's ``highest_file_id`` were
        renamed into place by a writer killed before its map commit (ids are taken and
        committed under this lock). Nothing refers to them; they would block the id and a
        Dovecot rebuild would resurrect their messages, so they go."""
        highest = mmap.highest_file_id(ms)
        try:
            names = os.listdir(self.storage_dir)
        except OSError:
            return
        for n in names:
            m = _FILE_RE.match(n)
            if m and int(m.group(1)) > highest:
                log.warning("%s: removing m.%s, which an interrupted save left behind", self.storage_dir, m.group(1))
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.storage_dir, n))

    def purge(self) -> None:
        """Rewrite the ``m.*`` files that hold unreferenced messages (Dovecot's ``doveadm
        purge``): the referenced ones are copied byte for byte into new files, their map
        records point there, the unreferenced map records are expunged, the old files go."""
        with self.map_lock():
            ms = self.map.state()
            by_file: dict[int, list[mmap.MapRecord]] = {}
            for rec in self.map.records(ms):
                by_file.setdefault(rec.file_id, []).append(rec)
            victims = sorted(f for f, recs in by_file.items() if any(r.refcount == 0 for r in recs))
            if not victims:
                return
            writer = _NewFiles(self)
            moved: list[tuple[int, int, int, int]] = []  # map_uid, temp index, offset, size
            dropped: list[int] = []
            old_paths: list[str] = []
            locks: list[int] = []
            try:
                for file_id in victims:
                    found = self._open_locked(file_id)
                    if found is None:
                        continue  # someone appends to it now: next purge
                    path, fd = found
                    locks.append(fd)
                    old_paths.append(path)
                    for rec in sorted(by_file[file_id], key=lambda r: r.offset):
                        if rec.refcount == 0:
                            dropped.append(rec.map_uid)
                            continue
                        data = os.pread(fd, rec.size, rec.offset)
                        if len(data) != rec.size:
                            raise CorruptError(f"{path}: message of map UID {rec.map_uid} is cut short")
                        idx, off = writer.add_raw(data)
                        moved.append((rec.map_uid, idx, off, rec.size))
                temps = writer.finish()
                if not old_paths:
                    return
                if temps:
                    self._clear_leftovers(ms)
                first_id = mmap.highest_file_id(ms) + 1

                def build(st: di.IndexState) -> tuple[lf.Transaction, None]:
                    if mmap.highest_file_id(st) + 1 != first_id:
                        raise CorruptError(f"mdbox map {self.map.log_path} changed while it was locked")
                    tx = lf.Transaction()  # Dovecot writes its purge records external
                    mmap.move_records(tx, st, [(u, first_id + i, o, s) for u, i, o, s in moved], dropped,
                                      first_id + len(temps) - 1)
                    return tx, None

                def place(st: di.IndexState, tx: lf.Transaction) -> None:
                    writer.place(first_id)

                mmap_state, _ = di.append_locked(self._held_map_fd, self.map.dir, build, prefix=mmap.MAP_PREFIX,
                                                 state=self.map._state, fsync=self.fsync, before_write=place)
                self.map._state = mmap_state
                for path in old_paths:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                fsync_dir(self.storage_dir, enabled=self.fsync)
            finally:
                writer.discard()
                for fd in locks:
                    os.close(fd)

    def _open_locked(self, file_id: int) -> tuple[str, int] | None:
        for path in self.files.paths(file_id):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return None
            return path, fd
        return None


class _NotAppendable(Exception):
    pass


class _NewFiles:
    """New ``m.*`` files being written under temporary names, rotated by size."""

    def __init__(self, storage: MdboxStorage) -> None:
        self.storage = storage
        self.temps: list[str] = []
        self._fd: int | None = None
        self._size = 0

    def _start(self) -> int:
        self._close()
        tmp = os.path.join(self.storage.storage_dir, temp_name())
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            raise StorageError(f"Cannot create {tmp}: {e.strerror}") from None
        self.temps.append(tmp)
        self.storage.own(tmp)
        hdr = dbox.file_header()
        os.write(fd, hdr)
        self._fd, self._size = fd, len(hdr)
        return fd

    def _room(self, need: int) -> int:
        if self._fd is None or (self._size + need > self.storage.rotate_size and self._size > len(dbox.file_header())):
            return self._start()
        return self._fd

    def add_raw(self, data: bytes) -> tuple[int, int]:
        """Append one whole message record; returns (file index, offset)."""
        fd = self._room(len(data))
        off = self._size
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        self._size += len(data)
        return len(self.temps) - 1, off

    def add_message(self, body: BinaryIO, meta: dict[str, str], size_hint: int) -> tuple[int, int, int]:
        """Write one message; returns (file index, offset, record size)."""
        fd = self._room(size_hint)
        off = self._size
        dbox.write_message(fd, body, meta, with_file_header=False)
        self._size = os.lseek(fd, 0, os.SEEK_END)
        if self._size > MAX_FILE_SIZE:
            raise StorageError("Message too large for an mdbox file (4 GiB)")
        return len(self.temps) - 1, off, self._size - off

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def finish(self) -> list[str]:
        self._close()
        sync_files(self.temps, enabled=self.storage.fsync)
        return self.temps

    def place(self, first_id: int) -> None:
        """Rename the files to ``m.<first_id>``, ``m.<first_id + 1>``... (under the map lock).
        An existing target means the map does not know a file it should: Dovecot calls that
        corruption too."""
        d = self.storage.storage_dir
        for i, tmp in enumerate(self.temps):
            dest = os.path.join(d, f"m.{first_id + i}")
            try:
                os.link(tmp, dest)
            except FileExistsError:
                raise CorruptError(f"Cannot save {dest}: the file exists but the map does not know it; "
                                   "run doveadm force-resync") from None
            except OSError as e:
                raise StorageError(f"Cannot create {dest}: {e.strerror}") from None
            os.unlink(tmp)
        self.temps = []
        fsync_dir(d, enabled=self.storage.fsync)

    def discard(self) -> None:
        self._close()
        for tmp in self.temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self.temps = []


def _map_uid(st: di.IndexState, uid: int) -> int:
    ext = st.extensions.get(EXT_MDBOX)
    return ext.record_int(uid) if ext is not None else 0


def _guid_rec(st: di.IndexState, uid: int) -> bytes:
    ext = st.extensions.get(EXT_GUID)
    rec = ext.records.get(uid, b"") if ext is not None else b""
    return rec[:16] if len(rec) >= 16 else bytes(16)


def _ref_diffs(st: di.IndexState, uids: Iterable[int]) -> dict[int, int]:
    diffs: dict[int, int] = {}
    for u in uids:
        m = _map_uid(st, u)
        if m:
            diffs[m] = diffs.get(m, 0) - 1
    return diffs


class MdboxMailbox(DboxMailbox):
    storage: MdboxStorage
    hdr_ext = MDBOX_HDR

    def __init__(self, storage: MdboxStorage, name: str) -> None:
        super().__init__(storage, name)
        st = self.index()
        hdr = st.ext_header(MDBOX_HDR)
        if hdr is not None and len(hdr) >= 4:
            muv = struct.unpack_from("<I", hdr, 0)[0]
            if muv != storage.map.uid_validity:
                raise CorruptError(f"Mailbox {name}: map uidvalidity mismatch ({muv} vs "
                                   f"{storage.map.uid_validity}); run doveadm force-resync")

    # -- reading -----------------------------------------------------------------------
    def _locate(self, st: di.IndexState, msg: di.Message, ms: di.IndexState) -> tuple[str, dbox.DboxMessage] | None:
        map_uid = _map_uid(st, msg.uid)
        for attempt in range(2):
            rec = self.storage.map.lookup(map_uid, ms) if map_uid else None
            if rec is None:
                break
            try:
                return self.storage.files.message(rec.file_id, rec.offset)
            except FileNotFoundError:
                if attempt == 0:
                    ms = self.storage.map.state()  # purged meanwhile: the map says where it went
        log.warning("Mailbox %s: UID %d refers to map UID %d, which has no readable message",
                    self.name, msg.uid, map_uid)
        return None

    def _records(self, st: di.IndexState, msgs: list[di.Message]) -> Iterator[MessageRecord]:
        ms = self.storage.map.state()
        for m in msgs:
            rec = self._record(st, m, ms)
            if rec is not None:
                yield rec

    def _record(self, st: di.IndexState, msg: di.Message, ms: di.IndexState | None = None) -> MessageRecord | None:
        found = self._locate(st, msg, ms or self.storage.map.state())
        if found is None:
            return None
        _path, info = found
        guid = info.guid or _guid_rec(st, msg.uid).hex()
        self._remember_guid(guid)
        ext = st.extensions.get(EXT_MDBOX)
        save_date = ext.record_int(msg.uid, "<4xI") if ext is not None else 0
        return index_record(msg, guid, info, save_date)

    def open_body(self, uid: int) -> BinaryIO:
        st = self.index()
        msg = st.messages.get(uid)
        what = f"Message UID {uid} in mailbox {self.name}"
        found = self._locate(st, msg, self.storage.map.state()) if msg is not None else None
        if found is None:
            raise NotFoundError(f"{what} doesn't exist")
        path, info = found
        try:
            return dbox.open_body(path, info)
        except FileNotFoundError:
            raise NotFoundError(f"{what}: {path} is gone") from None
        except OSError as e:
            raise StorageError(f"Cannot read {path}: {e.strerror}") from None

    # -- writing -----------------------------------------------------------------------
    def save(self, requests: Iterable[SaveRequest]) -> list[MessageRecord]:
        reqs = list(requests)
        if not reqs:
            return []
        self._check_wanted_uids([r.uid for r in reqs if r.uid is not None])
        storage = self.storage
        storage.map.ensure()
        box_name = storage.layout.storage_levels(self.name)
        origin = "/".join(box_name)
        guids = [message_guid(r.guid, self.name) for r in reqs]
        now = int(time.time())
        metas = [{dbox.META_RECEIVED: f"{int(r.internaldate if r.internaldate is not None else now):x}",
                  dbox.META_GUID: g, dbox.META_ORIG_MAILBOX: origin} for r, g in zip(reqs, guids)]
        writer = _NewFiles(storage)
        appended: tuple[int, str, int] | None = None
        app_start = 0
        map_done = False
        # (existing file_id, or -1 - index of a new file; offset; record size) per request
        places: list[tuple[int, int, int]] = []
        try:
            sizes = [_size_hint(r.body) for r in reqs]
            appended = storage._appendable(sizes[0] + 256) if storage.append_mode else None
            app_start = app_end = os.fstat(appended[2]).st_size if appended else 0
            for r, meta, hint in zip(reqs, metas, sizes):
                if appended is not None and app_end + hint + 256 <= storage.rotate_size:
                    fd = appended[2]
                    dbox.write_message(fd, r.body, meta, with_file_header=False)
                    end = os.lseek(fd, 0, os.SEEK_END)
                    places.append((appended[0], app_end, end - app_end))
                    app_end = end
                    continue
                idx, off, size = writer.add_message(r.body, meta, hint + 256)
                places.append((-1 - idx, off, size))
            temps = writer.finish()
            if appended is not None:
                sync_files([appended[2]], enabled=storage.fsync)
            with storage.map_lock():
                ms = storage.map.state()
                if temps:
                    storage._clear_leftovers(ms)
                first_map_uid = ms.next_uid
                first_file = mmap.highest_file_id(ms) + 1
                if appended is not None and not any(r.file_id == appended[0] for r in storage.map.records(ms)):
                    raise StorageError(f"mdbox file {appended[1]} left the map while we appended to it")
                items = []
                for i, (f, off, size) in enumerate(places):
                    file_id = f if f >= 0 else first_file + (-1 - f)
                    items.append((first_map_uid + i, file_id, off, size))
                new_highest = first_file + len(temps) - 1

                def build_box(st: di.IndexState) -> tuple[lf.Transaction, list[int]]:
                    uids = self._assign_uids(st, [r.uid for r in reqs])
                    tx = lf.Transaction()
                    order = self._append_records(st, tx, uids, reqs)
                    _intro(tx, st, EXT_MDBOX, 8, 4)
                    tx.ext_rec_update([(uids[i], struct.pack("<II", first_map_uid + i, now)) for i in order])
                    _intro(tx, st, EXT_GUID, 16, 1)
                    tx.ext_rec_update([(uids[i], di.guid_128(guids[i])) for i in order])
                    self._keyword_records(st, tx, uids, reqs, order)
                    return tx, uids

                def build_map(mst: di.IndexState) -> tuple[lf.Transaction, None]:
                    if mst.next_uid != first_map_uid:
                        raise CorruptError(f"mdbox map {storage.map.log_path} changed while it was locked")
                    tx = lf.Transaction(external=False)
                    mmap.add_records(tx, mst, items, new_highest)
                    return tx, None

                def place(st: di.IndexState, tx: lf.Transaction) -> None:
                    nonlocal map_done
                    writer.place(first_file)
                    map_done = True  # from here on the map may refer to the appended bytes
                    storage.commit_map(build_map)

                uids = self._commit(build_box, before_write=place)
        except BaseException:
            writer.discard()
            if appended is not None and not map_done:
                # Nobody refers to what we appended (we hold the file's flock): take it back,
                # so that the file stays appendable for Dovecot and us.
                with contextlib.suppress(OSError):
                    os.ftruncate(appended[2], app_start)
            raise
        finally:
            if appended is not None:
                os.close(appended[2])
        return self._read_back(uids, guids)

    def expunge(self, uids: Iterable[int]) -> list[ExpungeRecord]:
        wanted = sorted(set(uids))
        if not wanted:
            return []
        st0 = self.index()
        ms = self.storage.map.state()
        guids: dict[int, str] = {}
        for uid in wanted:
            msg = st0.messages.get(uid)
            if msg is not None:
                found = self._locate(st0, msg, ms)
                guids[uid] = found[1].guid if found is not None and found[1].guid else _guid_rec(st0, uid).hex()
        storage = self.storage

        def build(st: di.IndexState) -> tuple[lf.Transaction, list[int]]:
            gone = [u for u in wanted if u in st.messages]
            for u in gone:
                guids.setdefault(u, _guid_rec(st, u).hex())
            tx = lf.Transaction()
            tx.expunge_guid([(u, _guid_rec(st, u)) for u in gone])
            diffs.update(_ref_diffs(st, gone))
            return tx, gone

        diffs: dict[int, int] = {}

        def build_map(mst: di.IndexState) -> tuple[lf.Transaction, None]:
            tx = lf.Transaction(external=False)
            mmap.change_refs(tx, mst, diffs)
            return tx, None

        with storage.map_lock():
            gone = self._commit(build, before_write=lambda st, tx: storage.commit_map(build_map))
        return self._expunged_records(gone, guids)

    def reset(self, uidvalidity: int) -> MailboxStatus:
        """Empty the mailbox and restart its UIDs at 1 under ``uidvalidity`` (same GUID):
        every message's reference is dropped (map, then the mailbox's log), the index
        directories go in one rename each and a new index starts with a higher
        HIGHESTMODSEQ."""
        if not 0 < uidvalidity < 2**32:
            raise UsageError(f"Invalid UIDVALIDITY {uidvalidity}: must be 1..4294967295")
        guid, highest = self.guid, self.index().highest_modseq
        storage = self.storage
        with storage._mailbox_write_lock(self) as fd:
            st = di.IndexState.load(self.index_dir)
            if st.messages:
                storage._drop_all(self.index_dir, st, fd)
            for d in dict.fromkeys([self.dir, self.index_dir]):
                if d and os.path.isdir(d):
                    storage._remove_dir(d)
        storage._create_index(self.name, guid=guid, uidvalidity=uidvalidity)
        self._state = None
        return self.update_status(min_highestmodseq=highest + 1)


def _intro(tx: lf.Transaction, st: di.IndexState, name: str, rec_size: int, align: int) -> None:
    ext = st.extensions.get(name)
    tx.ext_intro(name, record_size=rec_size, record_align=align, reset_id=ext.reset_id if ext else 0,
                 flags=mmap.NO_SHRINK)


def _size_hint(body: Any) -> int:
    """A message's size if its stream can tell (for rotation); 0 when it cannot."""
    with contextlib.suppress(Exception):
        return os.fstat(body.fileno()).st_size
    with contextlib.suppress(Exception):
        pos = body.tell()
        end = body.seek(0, os.SEEK_END)
        body.seek(pos)
        return int(end - pos)
    return 0


MdboxStorage.mailbox_class = MdboxMailbox

__all__ = ["MdboxStorage", "MdboxMailbox"]
