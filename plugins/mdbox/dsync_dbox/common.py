"""What sdbox and mdbox share: the mailbox tree, the per-mailbox Dovecot index, flags.

Both formats keep UIDs, flags, keywords, modseqs, UIDVALIDITY, next UID and the mailbox
GUID in Dovecot's per-mailbox index (``dovecot.index`` + ``dovecot.index.log``), read by
replaying it and changed by appending transactions under Dovecot's fcntl lock. The
mailbox header extension differs only in name (``dbox-hdr`` / ``mdbox-hdr``): both keep a
u32 (sdbox: rebuild count, mdbox: the map's UIDVALIDITY) and then the 16-byte mailbox GUID.
Where the message data lives (``u.<uid>`` files or the shared ``m.<id>`` files) is the
subclasses' business: :meth:`DboxMailbox._record`, :meth:`open_body`, ``save``,
``expunge`` and ``reset``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

from dsync_core import dbox, mailboxlog
from dsync_core import dovecot_index as di
from dsync_core.dovecot_index import logfile as lf
from dsync_core.dovecot_index.state import OFF_FIRST_RECENT_UID, OFF_NEXT_UID, OFF_UID_VALIDITY
from dsync_core.durable import fsync_dirs, fsync_enabled
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
from dsync_core.lock import hostname
from dsync_core.model import (
    ExpungeRecord,
    FlagUpdate,
    MailboxInfo,
    MailboxLogType,
    MailboxStatus,
    MessageRecord,
    UserInfo,
    normalize_flag,
)
from dsync_core.settings import Settings
from dsync_core.storage import HIERARCHY_SEP, Mailbox, parent_names

from .layout import DboxLayout

log = logging.getLogger("dsync.dbox")

LOCK_TIMEOUT = 120.0
MAILBOX_HDR_SIZE = 24
INDEX_FILES = ("dovecot.index", "dovecot.index.log", "dovecot.index.log.2", "dovecot.index.cache",
               "dovecot.index.backup")
_temp_counter = 0


def is_guid128(value: str) -> bool:
    if len(value) != 32:
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True


def temp_name() -> str:
    """Dovecot's temp file name pattern: ``.temp.<secs>.P<pid>Q<n>M<usecs>.<host>``."""
    global _temp_counter
    _temp_counter += 1
    now = time.time()
    return f".temp.{int(now)}.P{os.getpid()}Q{_temp_counter}M{int(now % 1 * 1e6)}.{hostname()}"


def message_guid(guid: str | None, where: str) -> str:
    """The GUID string a saved message gets: the wanted one when a dbox file can hold it."""
    import secrets

    guid = guid or ""
    if not guid or "\n" in guid or "\r" in guid or guid.strip() != guid:
        if guid:
            log.warning("Cannot keep message GUID %r in %s: not a single-line string", guid, where)
        guid = secrets.token_hex(16)
    return guid


def check_status_args(uidvalidity: int | None = None, min_uidnext: int | None = None,
                      guid: str | None = None) -> None:
    if guid is not None and (not is_guid128(guid) or guid == "0" * 32):
        raise UsageError(f"Invalid mailbox GUID {guid!r}: expected 32 hex digits")
    if uidvalidity is not None and not (0 < uidvalidity < 2**32):
        raise UsageError(f"Invalid UIDVALIDITY {uidvalidity}: must be 1..4294967295")
    if min_uidnext is not None and not (0 < min_uidnext < 2**32):
        raise UsageError(f"Invalid UIDNEXT {min_uidnext}: must be 1..4294967295")


class DboxStorage(DirectoryStorage):
    """The mailbox tree of an sdbox or mdbox (Dovecot's ``fs`` layout under ``mailboxes/``)."""

    scheme: ClassVar[str] = ""
    have_guids = True
    have_save_guids = True
    have_only_guid128 = False
    have_modseqs = True
    mailbox_class: ClassVar[type[DboxMailbox]]

    def __init__(self, location: Location, settings: Settings | None = None, user: UserInfo | None = None) -> None:
        if not location.path:
            raise ConfigError(f"Mail location {location}: the {self.scheme} path is missing")
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
            raise StorageError(f"Cannot create {self.scheme} {self.root}: {e.strerror}") from None
        self.clear_trash()

    # -- hooks for the formats -----------------------------------------------------------
    def new_mailbox_transaction(self, guid: str, uidvalidity: int) -> lf.Transaction:
        """The first transaction of a new mailbox index (§6.10)."""
        raise NotImplementedError

    # -- mailbox tree ------------------------------------------------------------------
    def _exists(self, name: str) -> bool:
        return os.path.isdir(self.layout.mail_dir(name))

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
        check_status_args(uidvalidity=uidvalidity, guid=guid)
        if name == "INBOX" or self._exists(name):  # INBOX always exists (update_status changes it)
            raise ExistsError(f"Mailbox already exists: {name}")
        self._create_index(name, guid=guid, uidvalidity=uidvalidity)
        with self.open_mailbox(name) as box:
            st = box.index()
            return MailboxInfo(name=name, guid=box.guid, uidvalidity=st.uid_validity, uidnext=st.next_uid)

    def _create_index(self, name: str, *, guid: str | None = None, uidvalidity: int | None = None) -> None:
        import secrets

        from dsync_core.uidvalidity import allocate_uidvalidity

        mail_dir, index_dir = self.layout.mail_dir(name), self.layout.index_dir(name)
        try:
            self.makedirs(mail_dir)
            self.makedirs(index_dir)
        except OSError as e:
            raise StorageError(f"Cannot create mailbox {name}: {e.strerror}") from None
        uv = uidvalidity or allocate_uidvalidity(self.root, chown=self.own)
        tx = self.new_mailbox_transaction(guid or secrets.token_hex(16), uv)
        di.create_log(index_dir, tx, fsync=self.fsync, chown=self.own)
        fsync_dirs([os.path.dirname(mail_dir), index_dir], enabled=self.fsync)

    def _mailbox_write_lock(self, box: DboxMailbox) -> Any:  # type: ignore[override]
        # Dovecot's index lock: no writer appends while the files go.
        return di.LogLock(box.log_path, LOCK_TIMEOUT)

    def _remove_mailbox_files(self, name: str, *, has_children: bool) -> None:
        lay = self.layout
        dirs = [lay.mail_dir(name), lay.alt_dir(name)]
        if lay.index_root != lay.root:
            index_dir = lay.index_dir(name)
            for f in INDEX_FILES:
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
    def open_mailbox(self, name: str) -> DboxMailbox:
        name = self.layout.validate(name)
        if not self._exists(name):
            if name != "INBOX":
                raise NotFoundError(f"Mailbox doesn't exist: {name}")
        return self.mailbox_class(self, name)


class DboxMailbox(Mailbox):
    """A mailbox whose state is Dovecot's per-mailbox index."""

    storage: DboxStorage
    #: The index header extension holding the mailbox GUID at bytes 4..20.
    hdr_ext: ClassVar[str] = ""

    def __init__(self, storage: DboxStorage, name: str) -> None:
        super().__init__(storage, name)
        lay = storage.layout
        self.dir = lay.mail_dir(name)
        self.alt = lay.alt_dir(name)
        self.index_dir = lay.index_dir(name)
        self.log_path = os.path.join(self.index_dir, di.INDEX_PREFIX + di.LOG_SUFFIX)
        self._state: di.IndexState | None = None
        # 128-bit GUID -> the GUID string, for expunge records (the log keeps 128 bits).
        self._guids: dict[bytes, str] = {}
        if not os.path.exists(self.log_path):
            # Dovecot creates a missing index silently (an INBOX on first use, or a
            # mailbox directory without index files, which then looks empty).
            if self._has_orphan_files():
                log.warning("Mailbox %s has no index in %s: it looks empty until doveadm force-resync",
                            name, self.index_dir)
            with contextlib.suppress(ExistsError):
                storage._create_index(name)

    def _has_orphan_files(self) -> bool:
        return False

    # -- index -------------------------------------------------------------------------
    def index(self) -> di.IndexState:
        """The index state, brought up to date (incrementally when the log only grew)."""
        self._state = self._state.refresh() if self._state is not None else di.IndexState.load(self.index_dir)
        if not self._state.exists:
            raise NotFoundError(f"Mailbox doesn't exist: {self.name}")
        return self._state

    @property
    def guid(self) -> str:
        hdr = self.index().ext_header(self.hdr_ext)
        if hdr is None or len(hdr) < 20 or hdr[4:20] == bytes(16):
            raise CorruptError(
                f"Mailbox {self.name}: index has no mailbox GUID ({self.hdr_ext}); run doveadm force-resync")
        return hdr[4:20].hex()

    def _commit(self, build: Any, before_write: Any = None) -> Any:
        self._state, result = di.append_transaction(
            self.index_dir, build, state=self._state, fsync=self.storage.fsync, timeout=LOCK_TIMEOUT,
            before_write=before_write,
        )
        return result

    def _record(self, st: di.IndexState, msg: di.Message) -> MessageRecord | None:
        raise NotImplementedError

    def _read_back(self, uids: list[int], guids: list[str]) -> list[MessageRecord]:
        """The records of messages just saved, in order (their GUIDs remembered, as the
        index keeps only 128 bits of them)."""
        st = self.index()
        msgs = []
        for uid, guid in zip(uids, guids):
            self._remember_guid(guid)
            msg = st.messages.get(uid)
            if msg is None:
                raise StorageError(f"Saved UID {uid} in {self.name} but cannot read it back")
            msgs.append(msg)
        out = list(self._records(st, msgs))
        if len(out) != len(msgs):
            got = {r.uid for r in out}
            lost = next(m.uid for m in msgs if m.uid not in got)
            raise StorageError(f"Saved UID {lost} in {self.name} but cannot read it back")
        return out

    def _expunged_records(self, gone: list[int], guids: dict[int, str]) -> list[ExpungeRecord]:
        """Expunge records of UIDs just expunged, with the modseqs the index gave them."""
        st = self.index()
        modseqs = {e.uid: e.modseq for e in st.expunges}
        out = []
        for uid in gone:
            self._remember_guid(guids[uid])
            out.append(ExpungeRecord(uid, guids[uid], modseqs.get(uid, st.highest_modseq)))
        return out

    def _remember_guid(self, guid: str) -> None:
        if guid:
            self._guids.setdefault(di.guid_128(guid), guid)

    # -- reading -----------------------------------------------------------------------
    def status(self) -> MailboxStatus:
        st = self.index()
        unseen = st.messages.count_without_flag(di.state.FLAG_SEEN)
        recent = st.messages.count_from_uid(st.first_recent_uid)
        return MailboxStatus(
            guid=self.guid, uidvalidity=st.uid_validity, uidnext=st.next_uid, highestmodseq=st.highest_modseq,
            messages=len(st.messages), unseen=unseen, recent=recent,
        )

    def records(self, since_modseq: int = 0) -> Iterator[MessageRecord]:
        st = self.index()
        msgs = list(st.messages.values_since(since_modseq if since_modseq > 0 else -1))  # ascending UID
        return self._records(st, msgs)

    def records_by_uid(self, uids: Iterable[int]) -> Iterator[MessageRecord]:
        st = self.index()
        msgs = [st.messages[u] for u in sorted(set(uids)) if u in st.messages]
        return self._records(st, msgs)

    def _records(self, st: di.IndexState, msgs: list[di.Message]) -> Iterator[MessageRecord]:
        return (r for r in (self._record(st, m) for m in msgs) if r is not None)

    def expunges(self, since_modseq: int = 0) -> list[ExpungeRecord]:
        """Expunges the index log still remembers; see :meth:`expunges_complete_since`.

        The GUID is the message's GUID string when this object saw the message, else the
        32-hex form of Dovecot's 128-bit GUID (equal to the string for Dovecot's GUIDs), or
        "" when the record has none.
        """
        st = self.index()
        return [ExpungeRecord(e.uid, self._expunged_guid(e), e.modseq) for e in st.expunges_since(since_modseq)]

    def _expunged_guid(self, e: di.Expunge) -> str:
        if e.guid and e.guid != bytes(16):
            return self._guids.get(e.guid, e.guid.hex())
        return ""

    def expunges_complete_since(self) -> int:
        """The smallest ``since_modseq`` for which :meth:`expunges` is complete.

        Dovecot rotates its log and keeps only the previous file, so older expunges are
        forgotten. For a smaller ``since_modseq`` an engine must compare full UID lists.
        """
        return max(self.index().history_from - 1, 0)

    def keyword_order(self) -> list[str]:
        return list(self.index().keywords)

    # -- writing -----------------------------------------------------------------------
    @staticmethod
    def _spelling(st: di.IndexState, keyword: str) -> str:
        low = keyword.lower()
        for k in st.keywords:
            if k.lower() == low:
                return k
        return keyword

    def _check_wanted_uids(self, wanted: list[int]) -> None:
        if len(set(wanted)) != len(wanted):
            raise ExistsError(f"Cannot save to {self.name}: the same UID is wanted twice in one batch")
        if any(u < 1 or u >= 2**32 - 1 for u in wanted):
            raise UsageError(f"Cannot save to {self.name}: UIDs must be 1..4294967294")
        nxt = self.index().next_uid
        for u in wanted:
            if u < nxt:
                raise ExistsError(f"Cannot save UID {u} in mailbox {self.name}: below the next UID {nxt}")

    def _assign_uids(self, st: di.IndexState, wanted: list[int | None]) -> list[int]:
        """UIDs for a batch under the index lock: the wanted ones, others from next UID up."""
        nxt = st.next_uid
        for u in wanted:
            if u is not None and u < nxt:
                raise ExistsError(f"Cannot save UID {u} in mailbox {self.name}: below the next UID {nxt}")
        taken = {u for u in wanted if u is not None}
        uids: list[int] = []
        cand = nxt
        for u in wanted:
            if u is not None:
                uids.append(u)
                continue
            while cand in taken:
                cand += 1
            uids.append(cand)
            taken.add(cand)
        return uids

    def _append_records(self, st: di.IndexState, tx: lf.Transaction, uids: list[int], reqs: list[Any]) -> list[int]:
        """APPEND + KEYWORD_UPDATE records of a save; returns the request order by UID."""
        order = sorted(range(len(reqs)), key=lambda i: uids[i])
        tx.append([(uids[i], di.flags_to_bits(normalize_flag(f) for f in reqs[i].flags)) for i in order])
        return order

    def _keyword_records(self, st: di.IndexState, tx: lf.Transaction, uids: list[int], reqs: list[Any],
                         order: list[int]) -> None:
        by_kw: dict[str, list[int]] = {}
        for i in order:
            for k in reqs[i].keywords:
                by_kw.setdefault(self._spelling(st, k), []).append(uids[i])
        for k in sorted(by_kw, key=lambda k: (k not in st.keywords, k)):
            tx.keyword_update(k, True, by_kw[k])

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

    def update_status(
        self,
        *,
        uidvalidity: int | None = None,
        min_uidnext: int | None = None,
        min_highestmodseq: int | None = None,
        guid: str | None = None,
    ) -> MailboxStatus:
        check_status_args(uidvalidity=uidvalidity, min_uidnext=min_uidnext, guid=guid)
        name = self.hdr_ext

        def build(st: di.IndexState) -> tuple[lf.Transaction, None]:
            tx = lf.Transaction()
            if guid is not None:
                hdr = st.ext_header(name) or bytes(MAILBOX_HDR_SIZE)
                if hdr[4:20] != bytes.fromhex(guid):
                    tx.ext_intro(name, hdr_size=max(len(hdr), MAILBOX_HDR_SIZE),
                                 reset_id=st.extensions[name].reset_id if name in st.extensions else 0)
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

    def close(self) -> None:
        self._state = None


def index_record(msg: Any, guid: str, info: dbox.DboxMessage, save_date: int) -> MessageRecord:
    """A message's record from its index entry (flags, keywords, modseq) and its dbox
    metadata (dates, sizes)."""
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


def open_dbox_body(paths: list[str], msg: dbox.DboxMessage | None, what: str) -> Any:
    """The body stream of the first of ``paths`` that exists (primary, then ALT)."""
    for path in paths:
        try:
            return dbox.open_body(path, msg)
        except FileNotFoundError:
            continue
        except OSError as e:
            raise StorageError(f"Cannot read {path}: {e.strerror}") from None
    raise NotFoundError(f"{what} doesn't exist")


__all__ = ["DboxStorage", "DboxMailbox", "LOCK_TIMEOUT", "MAILBOX_HDR_SIZE", "INDEX_FILES", "is_guid128",
           "temp_name", "message_guid", "check_status_args", "index_record", "open_dbox_body"]
