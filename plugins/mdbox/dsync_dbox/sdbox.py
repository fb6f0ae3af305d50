"""SdboxStorage and SdboxMailbox: Dovecot's single-dbox, read and written in Dovecot's own files.

One ``u.<uid>`` dbox file per message (body, GUID, received date, virtual size); UIDs,
flags, keywords, modseqs, UIDVALIDITY, next UID and the mailbox GUID (``dbox-hdr``) live in
Dovecot's index, which we read by replaying ``dovecot.index`` + ``dovecot.index.log`` and
change by appending transactions to the log under Dovecot's fcntl lock. There is no side
change log: modseqs are the index's, and expunges since a modseq come from the log's
EXPUNGE_GUID records (see :meth:`SdboxMailbox.expunges_complete_since`).

Saving follows Dovecot (storage-formats §4.4): each message is written to a temporary
name and made durable; then, under the log lock, UIDs are assigned, the files are renamed
to ``u.<uid>`` and the directory synced, and only then is the transaction that announces
them appended. A crash in between leaves a ``u.<uid>`` file the index does not know, which
Dovecot ignores (and we overwrite-protect: the next save of that UID fails loudly).
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import time
from collections.abc import Iterable
from typing import BinaryIO

from dsync_core import dbox
from dsync_core import dovecot_index as di
from dsync_core.dovecot_index import logfile as lf
from dsync_core.dovecot_index.state import OFF_UID_VALIDITY
from dsync_core.durable import fsync_dir, fsync_dirs, sync_files
from dsync_core.errors import CorruptError, NotFoundError, StorageError, UsageError
from dsync_core.model import ExpungeRecord, MailboxStatus, MessageRecord, SaveRequest

from .common import (
    LOCK_TIMEOUT,
    MAILBOX_HDR_SIZE,
    DboxMailbox,
    DboxStorage,
    index_record,
    message_guid,
    open_dbox_body,
    temp_name,
)

log = logging.getLogger("dsync.dbox")

DBOX_HDR = "dbox-hdr"
DBOX_HDR_SIZE = MAILBOX_HDR_SIZE


def new_mailbox_transaction(guid: str, uidvalidity: int) -> lf.Transaction:
    """The first transaction of a new sdbox mailbox index (§6.10)."""
    tx = lf.Transaction()
    tx.ext_intro(DBOX_HDR, hdr_size=DBOX_HDR_SIZE)
    tx.ext_hdr_update(0, struct.pack("<I", 0) + bytes.fromhex(guid) + bytes(4))
    tx.header_u32(OFF_UID_VALIDITY, uidvalidity)
    # No "modseq" extension here: Dovecot 2.3.19 crashes (SIGSEGV) syncing a log whose
    # first transaction introduces it bare and a later one adds a keyword. Dovecot adds it
    # itself when something asks for modseqs.
    return tx


class SdboxStorage(DboxStorage):
    scheme = "sdbox"

    def new_mailbox_transaction(self, guid: str, uidvalidity: int) -> lf.Transaction:
        return new_mailbox_transaction(guid, uidvalidity)


class SdboxMailbox(DboxMailbox):
    storage: SdboxStorage
    hdr_ext = DBOX_HDR

    def __init__(self, storage: SdboxStorage, name: str) -> None:
        # Files never change once written: what we learnt from one stays true.
        self._files: dict[int, dbox.DboxMessage] = {}
        super().__init__(storage, name)

    def _has_orphan_files(self) -> bool:
        return bool(os.listdir(self.dir)) if os.path.isdir(self.dir) else False

    # -- files -------------------------------------------------------------------------
    def _paths(self, uid: int, msg: di.Message | None = None) -> list[str]:
        name = f"u.{uid}"
        paths = [os.path.join(self.dir, name)]
        if self.alt:
            alt = os.path.join(self.alt, name)
            if msg is not None and msg.flags & di.state.FLAG_BACKEND:
                paths.insert(0, alt)
            else:
                paths.append(alt)
        return paths

    def _file(self, uid: int, msg: di.Message | None = None) -> tuple[str, dbox.DboxMessage] | None:
        for path in self._paths(uid, msg):
            try:
                info = self._files.get(uid) or dbox.read_single(path)
            except FileNotFoundError:
                continue
            self._files[uid] = info
            return path, info
        return None

    def _record(self, st: di.IndexState, msg: di.Message) -> MessageRecord | None:
        found = self._file(msg.uid, msg)
        if found is None:
            log.warning("Mailbox %s: UID %d is in the index but its file u.%d is missing", self.name, msg.uid, msg.uid)
            return None
        path, info = found
        guid = info.guid
        self._remember_guid(guid)
        try:
            save_date = int(os.stat(path).st_ctime)
        except OSError:
            save_date = 0
        return index_record(msg, guid, info, save_date)

    def _expunged_guid(self, e: di.Expunge) -> str:
        if e.guid and e.guid != bytes(16):
            return self._guids.get(e.guid, e.guid.hex())
        # Dovecot's own expunges (doveadm expunge, IMAP) carry a zero GUID in sdbox.
        info = self._files.get(e.uid)
        return info.guid if info is not None else ""

    def open_body(self, uid: int) -> BinaryIO:
        st = self.index()
        msg = st.messages.get(uid)
        what = f"Message UID {uid} in mailbox {self.name}"
        if msg is None:
            raise NotFoundError(f"{what} doesn't exist")
        return open_dbox_body(self._paths(uid, msg), self._files.get(uid), what)  # type: ignore[no-any-return]

    # -- writing -----------------------------------------------------------------------
    def save(self, requests: Iterable[SaveRequest]) -> list[MessageRecord]:
        reqs = list(requests)
        if not reqs:
            return []
        self._check_wanted_uids([r.uid for r in reqs if r.uid is not None])
        fs = self.storage.fsync
        temps: list[str] = []
        guids: list[str] = []
        try:
            for r in reqs:
                guid = message_guid(r.guid, self.name)
                tmp = os.path.join(self.dir, temp_name())
                meta = {dbox.META_RECEIVED: f"{int(r.internaldate if r.internaldate is not None else time.time()):x}",
                        dbox.META_GUID: guid}
                try:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                except OSError as e:
                    raise StorageError(f"Cannot create {tmp}: {e.strerror}") from None
                temps.append(tmp)
                try:
                    self.storage.own(tmp)
                    dbox.write_message(fd, r.body, meta)
                except OSError as e:
                    raise StorageError(f"Cannot write {tmp}: {e.strerror}") from None
                finally:
                    os.close(fd)
                guids.append(guid)
            sync_files(temps, enabled=fs)
            placed_uids: list[int] = []

            def build(st: di.IndexState) -> tuple[lf.Transaction, list[int]]:
                uids = self._assign_uids(st, [r.uid for r in reqs])
                tx = lf.Transaction()
                order = self._append_records(st, tx, uids, reqs)
                self._keyword_records(st, tx, uids, reqs, order)
                placed_uids[:] = uids
                return tx, uids

            def place(st: di.IndexState, tx: lf.Transaction) -> None:
                for tmp, uid in zip(temps, placed_uids):
                    dest = os.path.join(self.dir, f"u.{uid}")
                    try:
                        os.link(tmp, dest)
                    except FileExistsError:
                        raise CorruptError(
                            f"Cannot save {dest}: the file already exists but the index does not know it; "
                            "run doveadm force-resync"
                        ) from None
                    os.unlink(tmp)
                fsync_dir(self.dir, enabled=fs)

            uids = self._commit(build, before_write=place)
        except BaseException:
            for tmp in temps:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            raise
        return self._read_back(uids, guids)

    def expunge(self, uids: Iterable[int]) -> list[ExpungeRecord]:
        wanted = sorted(set(uids))
        if not wanted:
            return []
        st0 = self.index()
        guids: dict[int, str] = {}
        for uid in wanted:
            msg = st0.messages.get(uid)
            if msg is None:
                continue
            found = self._file(uid, msg)
            guids[uid] = found[1].guid if found is not None else ""

        def build(st: di.IndexState) -> tuple[lf.Transaction, list[int]]:
            gone = [u for u in wanted if u in st.messages]
            for u in gone:
                if u not in guids:
                    found = self._file(u, st.messages[u])
                    guids[u] = found[1].guid if found is not None else ""
            tx = lf.Transaction()
            tx.expunge_guid([(u, di.guid_128(guids[u]) if guids[u] else bytes(16)) for u in gone])
            return tx, gone

        gone = self._commit(build)
        # Dovecot commits the expunge first and unlinks afterwards: a leftover file is
        # harmless, a missing file of an indexed UID would make it rebuild the mailbox.
        dirs = []
        for uid in gone:
            for path in self._paths(uid):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    dirs.append(os.path.dirname(path))
            self._files.pop(uid, None)
        fsync_dirs(dirs, enabled=self.storage.fsync)
        return self._expunged_records(gone, guids)

    def reset(self, uidvalidity: int) -> MailboxStatus:
        """Empty the mailbox and restart its UIDs at 1 under ``uidvalidity`` (same GUID).

        A transaction log cannot lower the next UID, so the mailbox's directories (files
        and index together, by default one directory) go in one rename and a new index is
        started; its HIGHESTMODSEQ is raised above the old one. Killed half-way, the mailbox
        is either as it was or empty with a fresh index."""
        if not 0 < uidvalidity < 2**32:
            raise UsageError(f"Invalid UIDVALIDITY {uidvalidity}: must be 1..4294967295")
        guid, highest = self.guid, self.index().highest_modseq
        st = self.storage
        with di.LogLock(self.log_path, LOCK_TIMEOUT):
            for d in dict.fromkeys([self.dir, self.alt, self.index_dir]):
                if d and os.path.isdir(d):
                    st._remove_dir(d)
        st._create_index(self.name, guid=guid, uidvalidity=uidvalidity)
        self._state = None
        self._files.clear()
        return self.update_status(min_highestmodseq=highest + 1)

    def close(self) -> None:
        super().close()
        self._files.clear()


SdboxStorage.mailbox_class = SdboxMailbox

__all__ = ["SdboxStorage", "SdboxMailbox", "new_mailbox_transaction"]
