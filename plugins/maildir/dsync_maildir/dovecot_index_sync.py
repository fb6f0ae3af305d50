"""Keep Dovecot's own index of a Maildir mailbox in step with what we write.

Dovecot's ``dovecot.index.log`` of a Maildir mailbox is only a cache plus modseqs
(storage-formats §2.9), but its modseqs are what ``doveadm mailbox status highestmodseq``
prints. After each of our writes we append one transaction that describes exactly what
we did (APPEND, FLAG_UPDATE, KEYWORD_UPDATE, EXPUNGE_GUID, HEADER_UPDATE), so that when
Dovecot next syncs the mailbox against the files it finds nothing to change and its
HIGHESTMODSEQ is the one we report. A mailbox without a Dovecot index gets a log-only
index describing all its messages (§6.10). We never write the ``maildir`` extension
header (its new/cur/uidlist stamps): without matching stamps Dovecot always re-checks
the index against the files, so a wrong record of ours could never be served.

Parity of the two counters: Dovecot counts one modseq per log record (§6.8), we count one
per commit. Each transaction ends with a MODSEQ_UPDATE (UID 0) when Dovecot's count
would stay below ours, and our commit is raised to Dovecot's value when it is above.

Dovecot's index is not ours: any failure here (lock timeout, a log we cannot read) is a
warning, never a failed user operation. The mail is right; only the modseqs may differ.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence

from dsync_core import dovecot_index as di
from dsync_core.dovecot_index import logfile as lf
from dsync_core.dovecot_index.state import USER_FLAG_MASK
from dsync_core.errors import DsyncError, ExistsError

log = logging.getLogger("dsync.maildir")

LOCK_TIMEOUT = 10.0  # Dovecot holds its index lock briefly; do not stall the user for minutes
OFF_UID_VALIDITY = 24
OFF_NEXT_UID = 28
_COUNTED = (lf.T_APPEND, lf.T_KEYWORD_UPDATE, lf.T_KEYWORD_RESET, lf.T_EXPUNGE_GUID, lf.T_ATTRIBUTE_UPDATE)

# uid -> (system flags, keywords) as they are on disk after our change
Messages = Mapping[int, tuple[frozenset[str], frozenset[str]]]


def modseq_increment(tx: lf.Transaction) -> int:
    """How much Dovecot's HIGHESTMODSEQ grows when it replays ``tx`` (§6.8)."""
    n = 0
    for kind, payload in tx.records:
        if kind in _COUNTED or (kind == lf.T_FLAG_UPDATE and lf.flag_update_counts(payload)):
            n += 1
    return n


def _describe(
    tx: lf.Transaction,
    known: Mapping[int, di.Message] | None,
    next_uid: int,
    present: Messages,
    expunged: Sequence[tuple[int, str]],
    *,
    may_append: bool = True,
    keyword_order: Sequence[str] = (),
) -> int:
    """Add to ``tx`` the records that take Dovecot's view (``known``) to ``present`` and
    ``expunged``; return the last UID appended (0 if none). Messages Dovecot does not
    know are appended only with ``may_append`` and at or above its next UID; otherwise
    they are left to Dovecot's own sync."""
    known = known or {}
    appends: list[tuple[int, int]] = []
    flag_ups: list[tuple[int, int, int, int]] = []
    kw_add: dict[str, list[int]] = {}
    kw_remove: dict[str, list[int]] = {}
    for uid in sorted(present):
        flags, keywords = present[uid]
        bits = di.flags_to_bits(flags)
        old = known.get(uid)
        if old is None:
            if uid < next_uid or not may_append:
                continue
            appends.append((uid, bits))
            next_uid = uid + 1
            old_keywords: set[str] | frozenset[str] = frozenset()
        else:
            old_bits = old.flags & USER_FLAG_MASK
            if old_bits != bits:
                flag_ups.append((uid, uid, bits & ~old_bits, old_bits & ~bits))
            old_keywords = old.keywords
        for k in keywords:
            if k not in old_keywords:
                kw_add.setdefault(k, []).append(uid)
        for k in old_keywords:
            if k not in keywords:
                kw_remove.setdefault(k, []).append(uid)
    tx.append(appends)
    tx.flag_update(_merge_flag_ranges(flag_ups))
    # New keywords enter Dovecot's index in this order, which doveadm prints flags in.
    rank = {k: i for i, k in enumerate(keyword_order)}
    for name in sorted(kw_add, key=lambda k: (rank.get(k, len(rank)), k)):
        tx.keyword_update(name, True, kw_add[name])
    for name in sorted(kw_remove):
        tx.keyword_update(name, False, kw_remove[name])
    tx.expunge_guid([(uid, di.guid_128(guid)) for uid, guid in sorted(expunged) if uid in known])
    return appends[-1][0] if appends else 0


def _pending(uidlist_uids: Iterable[int], state: di.IndexState, ours: Messages) -> bool:
    """Whether the uidlist holds a UID, not one of ``ours``, that Dovecot has yet to index
    (``uidlist_uids`` newest first: only the ones above Dovecot's next UID are looked at)."""
    for uid in uidlist_uids:
        if uid < state.next_uid:
            return False
        if uid not in ours and uid not in state.messages:
            return True
    return False


def _merge_flag_ranges(items: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Join neighbouring UIDs with the same change into one range (a smaller record)."""
    out: list[tuple[int, int, int, int]] = []
    for u1, u2, add, rem in items:
        if out and out[-1][1] + 1 == u1 and out[-1][2:] == (add, rem):
            out[-1] = (out[-1][0], u2, add, rem)
        else:
            out.append((u1, u2, add, rem))
    return out


class DovecotIndexSync:
    """Dovecot's index of one Maildir mailbox, as far as our writes concern it."""

    def __init__(self, index_dir: str, mailbox: str, *, fsync: bool = True,
                 chown: Callable[[str], None] | None = None, timeout: float | None = None) -> None:
        self.dir = index_dir
        self.mailbox = mailbox
        self.fsync = fsync
        self.chown = chown
        self.timeout = timeout
        self._state: di.IndexState | None = None  # kept so later appends only read what grew

    @property
    def log_path(self) -> str:
        return os.path.join(self.dir, di.INDEX_PREFIX + di.LOG_SUFFIX)

    def exists(self) -> bool:
        return os.path.exists(self.log_path)

    def record(
        self,
        *,
        uidvalidity: int,
        next_uid: int,
        at_least: int,
        present: Messages | None = None,
        expunged: Iterable[tuple[int, str]] = (),
        everything: Callable[[], Messages] | None = None,
        uidlist_uids: Iterable[int] | None = None,
        keyword_order: Sequence[str] = (),
    ) -> int:
        """Describe one change of ours in Dovecot's log; return Dovecot's HIGHESTMODSEQ after
        it (0 when Dovecot's index was left alone).

        ``present`` holds the messages we added or changed (their state on disk now),
        ``expunged`` (UID, GUID) pairs we removed, ``at_least`` our own HIGHESTMODSEQ after
        this change. Without a Dovecot index, one is created from ``everything()`` (all
        messages of the mailbox); with ``everything`` None the mailbox is left without one.

        ``uidlist_uids`` (the UIDs of ``dovecot-uidlist`` newest first, re-iterable, read
        under its lock) allows appending messages and raising the next UID. Both are skipped
        when the uidlist holds
        a UID that Dovecot's index does not have yet and we are not appending: Dovecot gave
        it out and will index it in a moment; announcing a higher UID first would make
        Dovecot take it for an expunged message ("Expunged message reappeared").
        """
        gone = list(expunged)
        try:
            if not self.exists():
                if everything is None:
                    return 0
                try:
                    return self._create(uidvalidity, next_uid, at_least, everything(), keyword_order)
                except ExistsError:
                    pass  # Dovecot created its index meanwhile: describe the change in it
            return self._append(uidvalidity, next_uid, at_least, present or {}, gone, uidlist_uids, keyword_order)
        except (DsyncError, OSError) as e:
            msg = e.message if isinstance(e, DsyncError) else str(e)
            log.warning("Mailbox %s: could not update Dovecot's index in %s (its modseqs may differ "
                        "from ours until it resyncs): %s", self.mailbox, self.dir, msg)
            self._state = None
            return 0

    def _create(self, uidvalidity: int, next_uid: int, at_least: int, messages: Messages,
                keyword_order: Sequence[str]) -> int:
        tx = lf.Transaction()
        tx.header_u32(OFF_UID_VALIDITY, uidvalidity)
        last = _describe(tx, None, 1, messages, (), keyword_order=keyword_order)
        if next_uid > last + 1:
            tx.header_u32(OFF_NEXT_UID, next_uid)
        if 1 + modseq_increment(tx) < at_least:
            tx.modseq_update([(0, at_least)])
        di.create_log(self.dir, tx, fsync=self.fsync, chown=self.chown)
        self._state = di.IndexState.load(self.dir)
        return self._state.highest_modseq

    def _append(self, uidvalidity: int, next_uid: int, at_least: int, present: Messages,
                expunged: list[tuple[int, str]], uidlist_uids: Iterable[int] | None,
                keyword_order: Sequence[str]) -> int:
        def build(state: di.IndexState) -> tuple[lf.Transaction | None, None]:
            tx = lf.Transaction()
            if state.uid_validity != uidvalidity:
                tx.header_u32(OFF_UID_VALIDITY, uidvalidity)
            may_append = uidlist_uids is not None and not _pending(uidlist_uids, state, present)
            last = _describe(tx, state.messages, state.next_uid, present, expunged, may_append=may_append,
                             keyword_order=keyword_order)
            if may_append and next_uid > max(state.next_uid, last + 1):
                tx.header_u32(OFF_NEXT_UID, next_uid)
            if state.highest_modseq + modseq_increment(tx) < at_least:
                tx.modseq_update([(0, at_least)])
            return (tx or None), None

        state, _ = di.append_transaction(self.dir, build, state=self._state, fsync=self.fsync,
                                         timeout=LOCK_TIMEOUT if self.timeout is None else self.timeout)
        self._state = state
        return state.highest_modseq


__all__ = ["DovecotIndexSync", "modseq_increment"]
