"""Per-mailbox message sync (dsync-algorithm.md §4): plan, then apply to both replicas.

Design notes: where and why we decide differently from Dovecot
---------------------------------------------------------------
* **One engine, two replicas.** Dovecot runs two symmetric brains that each decide for
  their own storage and must reach the same result independently. We run one engine that
  sees both sides (through :class:`~dsync_core.replica.Replica`) and plans the changes of
  both; no tie-break has to be mirrored, only be deterministic. The source (doveadm's
  local side) plays Dovecot's master: it wins ties.
* **Finding the last common UID** follows §4.4 with both lists side by side: same UID and
  GUID is common; a message only one side lists, below the other side's UIDNEXT, is common
  when the other side's expunge log has that UID with that GUID, undecided when it has
  nothing (then a later common UID makes it "expunged over there", Dovecot's rule), and
  ends the common range otherwise.
* **Flag merge.** Dovecot merges per flag using add/remove records of its transaction log.
  Our change logs keep the current flags and one modseq per message, not a history, so:
  a message changed on one side only since the last sync (modseq above the state's
  last-common modseq of that side) takes that side's flags; changed on both sides, or no
  state, with different flags is a conflict decided by ``dsync_resolve_flag_conflict``
  (default: the higher modseq wins wholesale, the source on a tie, Dovecot's preference
  rule). After every run both sides' HIGHESTMODSEQ is raised to the same value, so "higher
  modseq" means "changed later" at the next run.
* **New mail** follows §4.5: a message keeps its UID if the other side never used it,
  otherwise both sides get a new UID above both UIDNEXTs, in GUID order. A message both
  sides have above the common UID (e.g. left at another UID by ``-1``) gets one flag state,
  decided as a flag conflict, in the same run. One message per
  GUID per mailbox: extra instances of a GUID above the common UID (left by an interrupted
  renumbering) are expunged rather than copied, so an interrupted run never duplicates.
* **Stateful sync** keeps a last-common modseq *per side* (ours are not comparable across
  sides) and skips a mailbox only when *both* sides are unchanged (Dovecot looks at the
  master only and misses changes made on the slave). A message changed on one side at a
  UID at or below the common UID that the other side neither has nor expunged is treated as
  new mail (safe) rather than forcing a full resync.
* **Fast sync** skips a mailbox only when neither side changed since the last run with the
  same peer and mode: the destination keeps "marks" (both sides' UIDVALIDITY, UIDNEXT,
  message count and HIGHESTMODSEQ at the end of that run; ``Storage.sync_marks``). Dovecot
  compares the two sides' counters with each other, which one change on each side can
  leave equal; a storage without marks gets that rule.
* **Backup rebuild** (§4.8): where Dovecot deletes the destination mailbox and fails the
  run so that the next run re-creates it, we delete and re-create it (same GUID, the
  source's UIDVALIDITY) and fill it in the same run. INBOX cannot be deleted: it is reset
  instead (``Mailbox.reset``: emptied, UIDs restart at 1 under the source's UIDVALIDITY) and
  filled; only a storage without ``reset`` gets it as close as possible, reported as
  unapplied. A UIDVALIDITY mismatch in
  backup mode is fixed by setting the destination's UIDVALIDITY (messages with the same UID
  and GUID stay), not by deleting the mailbox.
* **-1 (one-way)**: nothing is deleted on the destination: the source's expunges do not
  reach it (Dovecot's ``-1`` runs the two-way importer there, so they do; "a one-way merge"
  is what users ask of ``-1``, and the final ``-1`` of a migration must not lose mail that
  was expunged on the old server after the last backup); the destination's own messages
  never move or disappear (Dovecot
  renumbers them on UID conflicts, which makes repeated ``-1`` runs renumber forever); the
  source's new mail gets a fresh UID there when its UID is taken.
* **Order of operations** for crash safety: saves of both sides (copies, renumbered copies,
  transfers) before any expunge of either side; a side whose saves failed does not expunge
  the originals of its renumbered messages.
* Header-hash matching for storages without GUIDs (issue 5) is not done: records with an
  empty GUID are matched by UID only (``_identity``).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from .model import FlagUpdate, MessageRecord, SyncMode, same_guid
from .replica import ChangeSet, ImportBatch, ImportResult, NewMessage, Replica


@attrs.frozen
class StateEntry:
    """What the last run left for one mailbox (see :mod:`dsync_core.state`)."""

    guid: str
    uidvalidity: int
    last_common_uid: int
    modseq_a: int
    modseq_b: int
    messages: int


@attrs.define
class SidePlan:
    saves: list[NewMessage] = attrs.Factory(list)
    flag_updates: list[FlagUpdate] = attrs.Factory(list)
    expunge_peer: list[int] = attrs.Factory(list)  # the other side expunged these
    expunge_local: list[int] = attrs.Factory(list)  # renumbered originals, extra instances

    def peer_uids(self) -> list[int]:
        return [s.from_uid for s in sorted(self.saves, key=lambda s: s.uid) if s.source == "peer"]

    def empty(self) -> bool:
        return not (self.saves or self.flag_updates or self.expunge_peer or self.expunge_local)


@attrs.define
class MailboxPlan:
    a: SidePlan = attrs.Factory(SidePlan)
    b: SidePlan = attrs.Factory(SidePlan)
    next_uid: int = 1
    conflicts: int = 0
    rebuild_b: bool = False
    notes: list[str] = attrs.Factory(list)


class NeedFullSync(Exception):
    """The state cannot be trusted for this mailbox: compare it fully instead."""


@attrs.frozen
class View:
    """What the planner knows of one side's mailbox."""

    uidnext: int
    records: dict[int, MessageRecord]
    expunged: dict[int, str]  # UID -> GUID from the expunge log

    @classmethod
    def of(cls, ch: ChangeSet) -> View:
        return cls(ch.status.uidnext, {r.uid: r for r in ch.records}, {e.uid: e.guid for e in ch.expunges})


@attrs.frozen
class Policy:
    """Hooks and filters the planner consults."""

    mailbox: str
    resolve_flags: Callable[[str, MessageRecord, MessageRecord, bool], tuple[frozenset[str], frozenset[str]]]
    accept_new: Callable[[str, MessageRecord], bool]
    locate_a: Callable[[list[str]], dict[str, tuple[str, int]]]
    locate_b: Callable[[list[str]], dict[str, tuple[str, int]]]


def _identity(r: MessageRecord) -> str:
    return r.guid or f"uid:{r.uid}"


def _same(ra: MessageRecord, rb: MessageRecord) -> bool:
    return _identity(ra) == _identity(rb) if (ra.guid and rb.guid) else ra.uid == rb.uid


def _flag_update(uid: int, have: MessageRecord, flags: frozenset[str], keywords: frozenset[str]) -> FlagUpdate | None:
    if (have.flags, have.keywords) == (flags, keywords):
        return None
    return FlagUpdate(
        uid,
        add_flags=flags - have.flags,
        remove_flags=have.flags - flags,
        add_keywords=keywords - have.keywords,
        remove_keywords=have.keywords - keywords,
    )


def _merge_flags(
    plan: MailboxPlan,
    ra: MessageRecord,
    rb: MessageRecord,
    changed_a: bool | None,
    changed_b: bool | None,
    mode: SyncMode,
    policy: Policy,
) -> None:
    if (ra.flags, ra.keywords) == (rb.flags, rb.keywords):
        return
    if mode is SyncMode.BACKUP:
        final = (ra.flags, ra.keywords)
    elif changed_a and not changed_b:
        final = (ra.flags, ra.keywords)
    elif changed_b and not changed_a:
        final = (rb.flags, rb.keywords)
    else:
        plan.conflicts += 1
        final = policy.resolve_flags(policy.mailbox, ra, rb, rb.modseq > ra.modseq)
    if mode is SyncMode.TWOWAY:
        up = _flag_update(ra.uid, ra, *final)
        if up is not None:
            plan.a.flag_updates.append(up)
    up = _flag_update(rb.uid, rb, *final)
    if up is not None:
        plan.b.flag_updates.append(up)


def last_common_uid(a: View, b: View) -> int:
    """§4.4 without state: the highest UID up to which both sides agree."""
    common = 0
    for u in sorted(set(a.records) | set(b.records)):
        ra, rb = a.records.get(u), b.records.get(u)
        if ra is not None and rb is not None:
            if _same(ra, rb):
                common = u
                continue
            break
        r, other = (ra, b) if ra is not None else (rb, a)
        assert r is not None
        if u >= other.uidnext:
            break  # new mail on r's side
        gone = other.expunged.get(u)
        if gone is None:
            continue  # undecided: a later common UID makes it "expunged over there"
        if not gone or not r.guid or same_guid(gone, r.guid):
            common = u
            continue
        break
    return common


def _new_mail(
    plan: MailboxPlan,
    a: View,
    b: View,
    high_a: dict[int, MessageRecord],
    high_b: dict[int, MessageRecord],
    mode: SyncMode,
    policy: Policy,
) -> None:
    """§4.5: UIDs for every message above the common UID, and how each side gets it."""
    groups: dict[str, tuple[list[MessageRecord], list[MessageRecord]]] = {}
    for r in high_a.values():
        groups.setdefault(_identity(r), ([], []))[0].append(r)
    for r in high_b.values():
        groups.setdefault(_identity(r), ([], []))[1].append(r)
    nxt = max(a.uidnext, b.uidnext, plan.next_uid)
    finals: list[tuple[str, int, list[MessageRecord], list[MessageRecord]]] = []
    for key in sorted(groups):
        ra_list, rb_list = (sorted(x, key=lambda r: r.uid) for x in groups[key])
        if not ra_list or not rb_list:
            # New on one side only: the filters decide whether it is copied at all.
            sender = ra_list[0] if ra_list else rb_list[0]
            if not policy.accept_new(policy.mailbox, sender):
                continue
        if mode is SyncMode.ONEWAY:
            if rb_list or not ra_list:
                continue  # the destination has it (or it is the destination's own)
            u = ra_list[0].uid
            final = u if u >= b.uidnext else nxt
            if final == nxt:
                nxt += 1
            finals.append((key, final, ra_list, []))
            continue
        common = sorted({r.uid for r in ra_list} & {r.uid for r in rb_list})
        if common:
            final = common[0]
        else:
            final = 0
            cands = sorted([(r.uid, 0) for r in ra_list] + [(r.uid, 1) for r in rb_list])
            for u, side in cands:
                if u >= (b.uidnext if side == 0 else a.uidnext):
                    final = u
                    break
            if not final:
                final = nxt
                nxt += 1
        finals.append((key, final, ra_list, rb_list))
    plan.next_uid = nxt
    need_a = [k for k, _f, ra_list, _ in finals if not ra_list and mode is SyncMode.TWOWAY]
    need_b = [k for k, _f, _, rb_list in finals if not rb_list]
    where_a = policy.locate_a([k for k in need_a if not k.startswith("uid:")]) if need_a else {}
    where_b = policy.locate_b([k for k in need_b if not k.startswith("uid:")]) if need_b else {}
    for key, final, ra_list, rb_list in finals:
        want = None
        if ra_list and rb_list:
            # Both sides have it (at different UIDs, or both new at one UID): one flag state
            # for both, decided as for a message both sides changed.
            ra = next((r for r in ra_list if r.uid == final), ra_list[0])
            rb = next((r for r in rb_list if r.uid == final), rb_list[0])
            if (ra.flags, ra.keywords) != (rb.flags, rb.keywords):
                plan.conflicts += 1
                want = policy.resolve_flags(policy.mailbox, ra, rb, rb.modseq > ra.modseq)
        if mode is SyncMode.TWOWAY:
            _realize(plan.a, key, final, ra_list, rb_list, where_a, want)
        _realize(plan.b, key, final, rb_list, ra_list, where_b, want)


def _realize(
    side: SidePlan,
    key: str,
    final: int,
    mine: list[MessageRecord],
    peer: list[MessageRecord],
    where: dict[str, tuple[str, int]],
    want: tuple[frozenset[str], frozenset[str]] | None = None,
) -> None:
    """How one side gets message ``key`` at UID ``final``; ``want`` overrides its flags."""
    mine_uids = [r.uid for r in mine]
    if final in mine_uids:
        side.expunge_local.extend(u for u in mine_uids if u != final)
        kept = next(r for r in mine if r.uid == final)
        up = _flag_update(final, kept, *want) if want is not None else None
        if up is not None:
            side.flag_updates.append(up)
        return
    if mine:
        src = mine[0]
        flags, keywords = want if want is not None else (src.flags, src.keywords)
        side.saves.append(
            NewMessage(final, src.guid, flags, keywords, src.internaldate or None,
                       src.save_date or None, "renumber", from_uid=src.uid)
        )
        side.expunge_local.extend(mine_uids)
        return
    src = next((r for r in peer if r.uid == final), peer[0])
    loc = where.get(key)
    if loc is not None:
        side.saves.append(
            NewMessage(final, src.guid, src.flags, src.keywords, src.internaldate or None,
                       src.save_date or None, "local", from_mailbox=loc[0], from_uid=loc[1])
        )
    else:
        side.saves.append(
            NewMessage(final, src.guid, src.flags, src.keywords, src.internaldate or None,
                       src.save_date or None, "peer", from_uid=src.uid)
        )


def plan_full(a: View, b: View, mode: SyncMode, policy: Policy) -> MailboxPlan:
    """TWOWAY / ONEWAY without (usable) state: compare every message."""
    plan = MailboxPlan(next_uid=max(a.uidnext, b.uidnext))
    common = last_common_uid(a, b)
    for u in sorted(set(a.records) | set(b.records)):
        if u > common:
            break
        ra, rb = a.records.get(u), b.records.get(u)
        if ra is not None and rb is not None:
            _merge_flags(plan, ra, rb, None, None, mode, policy)
        elif mode is SyncMode.TWOWAY:
            # Listed on one side only, at or below the common UID: expunged on the other.
            (plan.a if ra is not None else plan.b).expunge_peer.append(u)
    high_a = {u: r for u, r in a.records.items() if u > common}
    high_b = {u: r for u, r in b.records.items() if u > common}
    _new_mail(plan, a, b, high_a, high_b, mode, policy)
    return plan


def plan_incremental(
    a: View,
    b: View,
    entry: StateEntry,
    fetch_a: Callable[[list[int]], list[MessageRecord]],
    fetch_b: Callable[[list[int]], list[MessageRecord]],
    mode: SyncMode,
    policy: Policy,
) -> MailboxPlan:
    """TWOWAY / ONEWAY from a state: ``a``/``b`` hold only what changed since it."""
    L = entry.last_common_uid
    plan = MailboxPlan(next_uid=max(a.uidnext, b.uidnext))
    low_a = {u: r for u, r in a.records.items() if u <= L}
    low_b = {u: r for u, r in b.records.items() if u <= L}
    exp_a = {u: g for u, g in a.expunged.items() if u <= L}
    exp_b = {u: g for u, g in b.expunged.items() if u <= L}
    rec_a = dict(low_a)
    rec_b = dict(low_b)
    rec_a.update({r.uid: r for r in fetch_a(sorted((set(low_b) | set(exp_b)) - set(low_a)))})
    rec_b.update({r.uid: r for r in fetch_b(sorted((set(low_a) | set(exp_a)) - set(low_b)))})
    high_a = {u: r for u, r in a.records.items() if u > L}
    high_b = {u: r for u, r in b.records.items() if u > L}
    for u in sorted(set(low_a) | set(low_b) | set(exp_a) | set(exp_b)):
        ra, rb = rec_a.get(u), rec_b.get(u)
        if ra is not None and rb is not None:
            if not _same(ra, rb):
                raise NeedFullSync(f"UID {u} differs between the sides")
            _merge_flags(plan, ra, rb, u in low_a, u in low_b, mode, policy)
        elif ra is not None:
            gone = exp_b.get(u)
            if gone is not None and (not gone or same_guid(gone, ra.guid)):
                if mode is SyncMode.TWOWAY:
                    plan.a.expunge_peer.append(u)
            elif gone is not None:
                raise NeedFullSync(f"UID {u} was a different message on the other side")
            elif u in low_a:
                high_a[u] = ra  # appeared below the common UID meanwhile: treat as new
        elif rb is not None:
            gone = exp_a.get(u)
            if gone is not None and (not gone or same_guid(gone, rb.guid)):
                if mode is SyncMode.TWOWAY:  # -1 deletes nothing on the destination
                    plan.b.expunge_peer.append(u)
            elif gone is not None:
                raise NeedFullSync(f"UID {u} was a different message on the other side")
            elif u in low_b:
                high_b[u] = rb
    _new_mail(plan, a, b, high_a, high_b, mode, policy)
    return plan


def plan_backup(a: View, b: View, policy: Policy) -> MailboxPlan:
    """Make ``b`` identical to ``a`` (full compare). Sets ``rebuild_b`` when UIDs can't match."""
    plan = MailboxPlan(next_uid=a.uidnext)
    if b.uidnext > a.uidnext:
        plan.rebuild_b = True
    for u, rb in sorted(b.records.items()):
        ra = a.records.get(u)
        if ra is not None and _same(ra, rb):
            up = _flag_update(u, rb, ra.flags, ra.keywords)
            if up is not None:
                plan.b.flag_updates.append(up)
        else:
            plan.b.expunge_peer.append(u)
    missing = [r for u, r in sorted(a.records.items()) if not (u in b.records and _same(r, b.records[u]))]
    missing = [r for r in missing if policy.accept_new(policy.mailbox, r)]
    if any(r.uid < b.uidnext for r in missing):
        plan.rebuild_b = True
    where = policy.locate_b([r.guid for r in missing if r.guid]) if missing else {}
    for r in missing:
        if r.uid < b.uidnext:
            continue
        _realize(plan.b, _identity(r), r.uid, [], [r], where)
    return plan


@attrs.define
class ApplyResult:
    errors: list[str] = attrs.Factory(list)
    transferred: int = 0
    copied_locally: int = 0
    bytes: int = 0
    flags_changed: int = 0
    expunged: int = 0
    status_a: object = None
    status_b: object = None


def _add(res: ApplyResult, r: ImportResult) -> None:
    res.errors.extend(r.errors)
    res.transferred += r.saved
    res.copied_locally += r.copied_locally
    res.bytes += r.bytes
    res.flags_changed += r.flags_changed
    res.expunged += r.expunged


def apply_plan(guid: str, plan: MailboxPlan, a: Replica, b: Replica, mode: SyncMode) -> ApplyResult:
    """Saves on both sides, then flags and expunges, then raise UIDNEXT/HIGHESTMODSEQ so
    that both sides report the same values (what the next fast sync compares)."""
    res = ApplyResult()
    ok_a = ok_b = True
    if plan.a.saves:
        r = a.import_batch(guid, ImportBatch(saves=tuple(plan.a.saves)), b.bodies(guid, plan.a.peer_uids()))
        _add(res, r)
        ok_a = not r.errors
    if plan.b.saves:
        r = b.import_batch(guid, ImportBatch(saves=tuple(plan.b.saves)), a.bodies(guid, plan.b.peer_uids()))
        _add(res, r)
        ok_b = not r.errors
    statuses = {}
    for key, side, sp, ok in (("a", a, plan.a, ok_a), ("b", b, plan.b, ok_b)):
        expunges = sorted(set(sp.expunge_peer) | (set(sp.expunge_local) if ok else set()))
        if sp.flag_updates or expunges:
            r = side.import_batch(guid, ImportBatch(flag_updates=tuple(sp.flag_updates), expunges=tuple(expunges)))
            _add(res, r)
            statuses[key] = r.status
        else:
            statuses[key] = side.statuses([guid]).get(guid)
    sa, sb = statuses["a"], statuses["b"]
    if sa is None or sb is None:
        res.errors.append("mailbox vanished during the sync")
        return res
    if mode is SyncMode.BACKUP:
        targets = {"b": (plan.next_uid, sa.highestmodseq)}
    else:
        top = (plan.next_uid, max(sa.highestmodseq, sb.highestmodseq))
        targets = {"b": top} if mode is SyncMode.ONEWAY else {"a": top, "b": top}
    for key, side, st in (("a", a, sa), ("b", b, sb)):
        want = targets.get(key)
        if want is None:
            continue
        if st.uidnext < want[0] or st.highestmodseq < want[1]:
            r = side.import_batch(guid, ImportBatch(min_uidnext=want[0], min_highestmodseq=want[1]))
            _add(res, r)
            st = r.status
        statuses[key] = st
    res.status_a, res.status_b = statuses["a"], statuses["b"]
    return res


__all__ = [
    "StateEntry",
    "MailboxPlan",
    "SidePlan",
    "View",
    "Policy",
    "NeedFullSync",
    "last_common_uid",
    "plan_full",
    "plan_incremental",
    "plan_backup",
    "apply_plan",
]
