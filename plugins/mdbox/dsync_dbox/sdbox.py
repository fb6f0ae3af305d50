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
import secrets
import socket
import struct
import time
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

from dsync_core import dbox, mailboxlog
from dsync_core import dovecot_index as di
from dsync_core.dovecot_index import logfile as lf
from dsync_core.dovecot_index.state import OFF_FIRST_RECENT_UID, OFF_NEXT_UID, OFF_UID_VALIDITY
from dsync_core.durable import fsync_dir, fsync_dirs, fsync_enabled, sync_files
from dsync_core.errors import (
    EX_DATAERR,
    ConfigError,
    CorruptError,
    ExistsError,
    InvalidNameError,
    NotFoundError,
    StorageError,
    UsageError,
)
from dsync_core.fsstorage import DirectoryStorage
from dsync_core.location import Location
from dsync_core.model import (
    ExpungeRecord,
    FlagUpdate,
    MailboxInfo,
    MailboxLogType,
    MailboxStatus,
    MessageRecord,
    SaveRequest,
    UserInfo,
    normalize_flag,
)
from dsync_core.settings import Settings
from dsync_core.storage import HIERARCHY_SEP, Mailbox, parent_names
from dsync_core.uidvalidity import allocate_uidvalidity

from .layout import DboxLayout

log = logging.getLogger("dsync.dbox")

DBOX_HDR = "dbox-hdr"
DBOX_HDR_SIZE = 24
LOCK_TIMEOUT = 120.0
_INDEX_FILES = ("dovecot.index", "dovecot.index.log", "dovecot.index.log.2", "dovecot.index.cache",
                "dovecot.index.backup")
_temp_counter = 0


def _is_guid128(value: str) -> bool:
    if len(value) != 32:
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True


def _temp_name() -> str:
    """Dovecot's temp file name pattern: ``.temp.<secs>.P<pid>Q<n>M<usecs>.<host>``."""
    global _temp_counter
    _temp_counter += 1
    now = time.time()
    return f".temp.{int(now)}.P{os.getpid()}Q{_temp_counter}M{int(now % 1 * 1e6)}.{socket.gethostname()}"


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


class SdboxStorage(DirectoryStorage):
    scheme = "sdbox"
    have_guids = True
    have_save_guids = True
    have_only_guid128 = False
    have_modseqs = True

    def __init__(self, location: Location, settings: Settings | None = None, user: UserInfo | None = None) -> None:
        if not location.path:
            raise ConfigError(f"Mail location {location}: the sdbox path is missing")
        super().__init__(os.path.abspath(location.path))
        self.settings = settings if settings is not None else Settings()
        self.user = user
        opts = location.options
        self.layout = DboxLayout(
            self.root,
            index=opts.get("INDEX") or None,
            alt=opts.get("ALT") or None,
            utf8="UTF-8" in opts,
            dirname=opts.get("DIRNAME") or "dbox-Mails",
            mailboxdir=opts.get("MAILBOXDIR") or "mailboxes",
        )
        self.fsync = fsync_enabled(self.settings)
        try:
            self._adopt_owner()
            self.makedirs(os.path.join(self.root, self.layout.mailboxdir))
            self.makedirs(self.layout.index_root)
        except OSError as e:
            raise StorageError(f"Cannot create sdbox {self.root}: {e.strerror}") from None
        self.clear_trash()

    # -- filesystem helpers ------------------------------------------------------------
    def _exists(self, name: str) -> bool:
        return os.path.isdir(self.layout.mail_dir(name))

    # -- mailbox tree ------------------------------------------------------------------
    def list_mailboxes(self) -> list[MailboxInfo]:
        found = self.layout.existing()
        found["INBOX"] = True
        for name in list(found):
            for parent in parent_names(name):
                found.setdefault(parent, False)
        out: list[MailboxInfo] = []
        for name in sorted(found, key=lambda n: (n != "INBOX", n.split(HIERARCHY_SEP))):
            if not found[name]:
                out.append(MailboxInfo(name=name, selectable=False))
                continue
            with self.open_mailbox(name) as box:
                st = box.index()
                out.append(MailboxInfo(name=name, guid=box.guid, uidvalidity=st.uid_validity, uidnext=st.next_uid))
        return out

    def create_mailbox(self, name: str, *, guid: str | None = None, uidvalidity: int | None = None) -> MailboxInfo:
        name = self.layout.validate(name)
        if guid is not None and (not _is_guid128(guid) or guid == "0" * 32):
            raise UsageError(f"Invalid mailbox GUID {guid!r}: expected 32 hex digits")
        if uidvalidity is not None and not (0 < uidvalidity < 2**32):
            raise UsageError(f"Invalid UIDVALIDITY {uidvalidity}: must be 1..4294967295")
        if name == "INBOX" or self._exists(name):  # INBOX always exists (update_status changes it)
            raise ExistsError(f"Mailbox already exists: {name}")
        self._create_index(name, guid=guid, uidvalidity=uidvalidity)
        with self.open_mailbox(name) as box:
            st = box.index()
            return MailboxInfo(name=name, guid=box.guid, uidvalidity=st.uid_validity, uidnext=st.next_uid)

    def _create_index(self, name: str, *, guid: str | None = None, uidvalidity: int | None = None) -> None:
        mail_dir, index_dir = self.layout.mail_dir(name), self.layout.index_dir(name)
        try:
            self.makedirs(mail_dir)
            self.makedirs(index_dir)
        except OSError as e:
            raise StorageError(f"Cannot create mailbox {name}: {e.strerror}") from None
        uv = uidvalidity or allocate_uidvalidity(self.root, chown=self.own)
        tx = new_mailbox_transaction(guid or secrets.token_hex(16), uv)
        di.create_log(index_dir, tx, fsync=self.fsync, chown=self.own)
        fsync_dirs([os.path.dirname(mail_dir), index_dir], enabled=self.fsync)

    def _mailbox_write_lock(self, box: SdboxMailbox) -> di.LogLock:  # type: ignore[override]
        # Dovecot's index lock: no writer appends while the files go.
        return di.LogLock(box.log_path, LOCK_TIMEOUT)

    def _remove_mailbox_files(self, name: str, *, has_children: bool) -> None:
        lay = self.layout
        dirs = [lay.mail_dir(name), lay.alt_dir(name)]
        if lay.index_root != lay.root:
            index_dir = lay.index_dir(name)
            for f in _INDEX_FILES:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(index_dir, f))
            if not has_children:
                dirs.append(index_dir)
        for d in dirs:
            if d and os.path.isdir(d):
                self._remove_dir(d)  # one rename: never a half-deleted mailbox
        if not has_children:
            for root in (lay.root, lay.alt_root):
                if root:
                    with contextlib.suppress(OSError):
                        os.rmdir(lay._under(root, name))

    def rename_mailbox(self, old: str, new: str) -> None:
        old = self.layout.validate(old)
        new = self.layout.validate(new)
        if old == "INBOX":
            raise StorageError("Renaming INBOX isn't supported.", exit_code=EX_DATAERR)
        if new == old or new.startswith(old + HIERARCHY_SEP):
            raise InvalidNameError(f"Can't rename mailbox {old} to {new}: can't rename mailbox under itself")
        existing = self.layout.existing()
        if old not in existing:
            raise NotFoundError(f"Mailbox doesn't exist: {old}")
        if new == "INBOX" or new in existing:
            raise ExistsError(f"Mailbox already exists: {new}")
        lay = self.layout
        moved: list[str] = []
        try:
            for root in dict.fromkeys(r for r in (lay.root, lay.index_root, lay.alt_root) if r):
                src, dst = lay._under(root, old), lay._under(root, new)
                if not os.path.isdir(src):
                    continue
                if os.path.exists(dst):
                    raise ExistsError(f"Mailbox already exists: {new}")
                self.makedirs(os.path.dirname(dst))
                os.rename(src, dst)
                moved.append(os.path.dirname(src))
                moved.append(os.path.dirname(dst))
        except OSError as e:
            raise StorageError(f"Can't rename mailbox {old} to {new}: {e.strerror}") from None
        fsync_dirs(moved, enabled=self.fsync)
        self._log(MailboxLogType.RENAME, mailboxlog.name_hash(new))

    # -- mailboxes ---------------------------------------------------------------------
    def open_mailbox(self, name: str) -> SdboxMailbox:
        name = self.layout.validate(name)
        if not self._exists(name):
            if name != "INBOX":
                raise NotFoundError(f"Mailbox doesn't exist: {name}")
        return SdboxMailbox(self, name)


class SdboxMailbox(Mailbox):
    storage: SdboxStorage

    def __init__(self, storage: SdboxStorage, name: str) -> None:
        super().__init__(storage, name)
        lay = storage.layout
        self.dir = lay.mail_dir(name)
        self.alt = lay.alt_dir(name)
        self.index_dir = lay.index_dir(name)
        self.log_path = os.path.join(self.index_dir, di.INDEX_PREFIX + di.LOG_SUFFIX)
        self._state: di.IndexState | None = None
        # Files never change once written: what we learnt from one stays true.
        self._files: dict[int, dbox.DboxMessage] = {}
        self._guids: dict[bytes, str] = {}
        if not os.path.exists(self.log_path):
            # Dovecot creates a missing index silently (an INBOX on first use, or a
            # mailbox directory without index files, which then looks empty).
            if os.listdir(self.dir) if os.path.isdir(self.dir) else False:
                log.warning("Mailbox %s has no index in %s: it looks empty until doveadm force-resync",
                            name, self.index_dir)
            with contextlib.suppress(ExistsError):
                storage._create_index(name)

    # -- index -------------------------------------------------------------------------
    def index(self) -> di.IndexState:
        """The index state, brought up to date (incrementally when the log only grew)."""
        self._state = self._state.refresh() if self._state is not None else di.IndexState.load(self.index_dir)
        if not self._state.exists:
            raise NotFoundError(f"Mailbox doesn't exist: {self.name}")
        return self._state

    @property
    def guid(self) -> str:
        hdr = self.index().ext_header(DBOX_HDR)
        if hdr is None or len(hdr) < 20 or hdr[4:20] == bytes(16):
            raise CorruptError(f"Mailbox {self.name}: index has no mailbox GUID (dbox-hdr); run doveadm force-resync")
        return hdr[4:20].hex()

    def _commit(self, build: Any, before_write: Any = None) -> Any:
        self._state, result = di.append_transaction(
            self.index_dir, build, state=self._state, fsync=self.storage.fsync, timeout=LOCK_TIMEOUT,
            before_write=before_write,
        )
        return result

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
        if guid:
            self._guids.setdefault(di.guid_128(guid), guid)
        try:
            save_date = int(os.stat(path).st_ctime)
        except OSError:
            save_date = 0
        return MessageRecord(
            uid=msg.uid,
            guid=guid,
            flags=di.bits_to_flags(msg.flags),
            keywords=frozenset(msg.keywords),
            modseq=msg.modseq,
            internaldate=info.received if info.received is not None else save_date,
            size=info.body_size,
            vsize=info.vsize,
            save_date=save_date,
        )

    # -- reading -----------------------------------------------------------------------
    def status(self) -> MailboxStatus:
        st = self.index()
        unseen = sum(1 for m in st.messages.values() if not m.flags & di.state.FLAG_SEEN)
        recent = sum(1 for u in st.messages if u >= st.first_recent_uid)
        return MailboxStatus(
            guid=self.guid, uidvalidity=st.uid_validity, uidnext=st.next_uid, highestmodseq=st.highest_modseq,
            messages=len(st.messages), unseen=unseen, recent=recent,
        )

    def records(self, since_modseq: int = 0) -> Iterator[MessageRecord]:
        st = self.index()
        msgs = sorted((m for m in st.messages.values() if m.modseq > since_modseq or since_modseq == 0),
                      key=lambda m: m.uid)
        return (r for r in (self._record(st, m) for m in msgs) if r is not None)

    def records_by_uid(self, uids: Iterable[int]) -> Iterator[MessageRecord]:
        st = self.index()
        msgs = [st.messages[u] for u in sorted(set(uids)) if u in st.messages]
        return (r for r in (self._record(st, m) for m in msgs) if r is not None)

    def expunges(self, since_modseq: int = 0) -> list[ExpungeRecord]:
        """Expunges the index log still remembers; see :meth:`expunges_complete_since`.

        The GUID is the message's GUID string when this object saw the message, else the
        32-hex form of Dovecot's 128-bit GUID (equal to the string for Dovecot's GUIDs), or
        "" when the record has none (Dovecot's own sdbox expunges carry a zero GUID).
        """
        st = self.index()
        return [ExpungeRecord(e.uid, self._expunged_guid(e), e.modseq) for e in st.expunges_since(since_modseq)]

    def _expunged_guid(self, e: di.Expunge) -> str:
        if e.guid and e.guid != bytes(16):
            return self._guids.get(e.guid, e.guid.hex())
        # Dovecot's own expunges (doveadm expunge, IMAP) carry a zero GUID in sdbox.
        info = self._files.get(e.uid)
        return info.guid if info is not None else ""

    def expunges_complete_since(self) -> int:
        """The smallest ``since_modseq`` for which :meth:`expunges` is complete.

        Dovecot rotates its log and keeps only the previous file, so older expunges are
        forgotten. For a smaller ``since_modseq`` an engine must compare full UID lists.
        """
        return max(self.index().history_from - 1, 0)

    def open_body(self, uid: int) -> BinaryIO:
        st = self.index()
        msg = st.messages.get(uid)
        if msg is not None:
            for path in self._paths(uid, msg):
                try:
                    return dbox.open_body(path, self._files.get(uid))
                except FileNotFoundError:
                    continue
                except OSError as e:
                    raise StorageError(f"Cannot read {path}: {e.strerror}") from None
        raise NotFoundError(f"Message UID {uid} doesn't exist in mailbox {self.name}")

    def keyword_order(self) -> list[str]:
        return list(self.index().keywords)

    # -- writing -----------------------------------------------------------------------
    def save(self, requests: Iterable[SaveRequest]) -> list[MessageRecord]:
        reqs = list(requests)
        if not reqs:
            return []
        wanted = [r.uid for r in reqs if r.uid is not None]
        if len(set(wanted)) != len(wanted):
            raise ExistsError(f"Cannot save to {self.name}: the same UID is wanted twice in one batch")
        if any(u < 1 or u >= 2**32 - 1 for u in wanted):
            raise UsageError(f"Cannot save to {self.name}: UIDs must be 1..4294967294")
        st0 = self.index()
        for u in wanted:
            if u < st0.next_uid:
                raise ExistsError(f"Cannot save UID {u} in mailbox {self.name}: below the next UID {st0.next_uid}")
        fs = self.storage.fsync
        temps: list[str] = []
        guids: list[str] = []
        try:
            for r in reqs:
                guid = r.guid or ""
                if not guid or "\n" in guid or "\r" in guid or guid.strip() != guid:
                    if guid:
                        log.warning("Cannot keep message GUID %r in %s: not a single-line string", guid, self.name)
                    guid = secrets.token_hex(16)
                tmp = os.path.join(self.dir, _temp_name())
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

            def build(st: di.IndexState) -> tuple[lf.Transaction, list[int]]:
                nxt = st.next_uid
                for u in wanted:
                    if u < nxt:
                        raise ExistsError(f"Cannot save UID {u} in mailbox {self.name}: below the next UID {nxt}")
                taken = set(wanted)
                uids: list[int] = []
                cand = nxt
                for r in reqs:
                    if r.uid is not None:
                        uids.append(r.uid)
                        continue
                    while cand in taken:
                        cand += 1
                    uids.append(cand)
                    taken.add(cand)
                tx = lf.Transaction()
                order = sorted(range(len(reqs)), key=lambda i: uids[i])
                tx.append([(uids[i], di.flags_to_bits(normalize_flag(f) for f in reqs[i].flags)) for i in order])
                by_kw: dict[str, list[int]] = {}
                for i in order:
                    for k in reqs[i].keywords:
                        by_kw.setdefault(self._spelling(st, k), []).append(uids[i])
                for k in sorted(by_kw, key=lambda k: (k not in st.keywords, k)):
                    tx.keyword_update(k, True, by_kw[k])
                return tx, uids

            placed_uids: list[int] = []

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

            def build_and_remember(st: di.IndexState) -> tuple[lf.Transaction, list[int]]:
                tx, uids = build(st)
                placed_uids[:] = uids
                return tx, uids

            uids = self._commit(build_and_remember, before_write=place)
        except BaseException:
            for tmp in temps:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            raise
        st = self.index()
        out: list[MessageRecord] = []
        for uid, guid in zip(uids, guids):
            self._guids.setdefault(di.guid_128(guid), guid)
            msg = st.messages.get(uid)
            rec = self._record(st, msg) if msg is not None else None
            if rec is None:
                raise StorageError(f"Saved UID {uid} in {self.name} but cannot read it back")
            out.append(rec)
        return out

    @staticmethod
    def _spelling(st: di.IndexState, keyword: str) -> str:
        low = keyword.lower()
        for k in st.keywords:
            if k.lower() == low:
                return k
        return keyword

    def update_flags(self, updates: Iterable[FlagUpdate]) -> list[MessageRecord]:
        ups = list(updates)
        if not ups:
            return []

        def build(st: di.IndexState) -> tuple[lf.Transaction, list[int]]:
            targets: dict[int, tuple[int, set[str]]] = {}
            for u in ups:
                m = st.messages.get(u.uid)
                if m is None:
                    continue
                bits, kws = targets.get(u.uid, (m.flags & di.state.USER_FLAG_MASK, set(m.keywords)))
                add = di.flags_to_bits(normalize_flag(f) for f in u.add_flags)
                rem = di.flags_to_bits(normalize_flag(f) for f in u.remove_flags)
                bits = (bits & ~rem) | add
                low_rem = {k.lower() for k in u.remove_keywords}
                kws = {k for k in kws if k.lower() not in low_rem} | {self._spelling(st, k) for k in u.add_keywords}
                targets[u.uid] = (bits, kws)
            tx = lf.Transaction()
            flag_items = []
            kw_add: dict[str, list[int]] = {}
            kw_rem: dict[str, list[int]] = {}
            changed: list[int] = []
            for uid in sorted(targets):
                m = st.messages[uid]
                bits, kws = targets[uid]
                old = m.flags & di.state.USER_FLAG_MASK
                if bits != old:
                    flag_items.append((uid, uid, bits & ~old, old & ~bits))
                for k in kws - m.keywords:
                    kw_add.setdefault(k, []).append(uid)
                for k in m.keywords - kws:
                    kw_rem.setdefault(k, []).append(uid)
                if bits != old or kws != m.keywords:
                    changed.append(uid)
            tx.flag_update(flag_items)
            for k in sorted(kw_add, key=lambda k: (k not in st.keywords, k)):
                tx.keyword_update(k, True, kw_add[k])
            for k in sorted(kw_rem):
                tx.keyword_update(k, False, kw_rem[k])
            return tx, changed

        changed = self._commit(build)
        return list(self.records_by_uid(changed))

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
        st = self.index()
        modseqs = {e.uid: e.modseq for e in st.expunges}
        out = []
        for uid in gone:
            if guids[uid]:
                self._guids.setdefault(di.guid_128(guids[uid]), guids[uid])
            out.append(ExpungeRecord(uid, guids[uid], modseqs.get(uid, st.highest_modseq)))
        return out

    def update_status(
        self,
        *,
        uidvalidity: int | None = None,
        min_uidnext: int | None = None,
        min_highestmodseq: int | None = None,
        guid: str | None = None,
    ) -> MailboxStatus:
        if guid is not None and (not _is_guid128(guid) or guid == "0" * 32):
            raise UsageError(f"Invalid mailbox GUID {guid!r}: expected 32 hex digits")
        if uidvalidity is not None and not (0 < uidvalidity < 2**32):
            raise UsageError(f"Invalid UIDVALIDITY {uidvalidity}: must be 1..4294967295")
        if min_uidnext is not None and not (0 < min_uidnext < 2**32):
            raise UsageError(f"Invalid UIDNEXT {min_uidnext}: must be 1..4294967295")

        def build(st: di.IndexState) -> tuple[lf.Transaction, None]:
            tx = lf.Transaction()
            if guid is not None:
                hdr = st.ext_header(DBOX_HDR) or bytes(DBOX_HDR_SIZE)
                if hdr[4:20] != bytes.fromhex(guid):
                    tx.ext_intro(DBOX_HDR, hdr_size=max(len(hdr), DBOX_HDR_SIZE),
                                 reset_id=st.extensions[DBOX_HDR].reset_id if DBOX_HDR in st.extensions else 0)
                    tx.ext_hdr_update(4, bytes.fromhex(guid))
            if uidvalidity is not None and uidvalidity != st.uid_validity:
                tx.header_u32(OFF_UID_VALIDITY, uidvalidity)
            if min_uidnext is not None and min_uidnext > st.next_uid:
                tx.header_u32(OFF_NEXT_UID, min_uidnext)
                if st.first_recent_uid < min_uidnext and not st.messages:
                    tx.header_u32(OFF_FIRST_RECENT_UID, min_uidnext)
            if min_highestmodseq is not None and min_highestmodseq > st.highest_modseq:
                tx.modseq_update([(0, min_highestmodseq)])
            return tx, None

        self._commit(build)
        return self.status()

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
        self._state = None
        self._files.clear()


__all__ = ["SdboxStorage", "SdboxMailbox", "new_mailbox_transaction"]
