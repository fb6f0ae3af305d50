"""``sync()``: one run of the engine over two replicas (the public entry point).

Order of a run: lock, read both trees (one call each), refuse a run that looks like mass
deletion, merge the trees (:mod:`dsync_core.tree`) and apply the folder changes, then sync
each mailbox pair by mailbox GUID (:mod:`dsync_core.brain`), then encode the new state.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import time
from collections.abc import Callable
from typing import Any

import attrs

from .brain import (
    ApplyResult,
    MailboxPlan,
    NeedFullSync,
    Policy,
    StateEntry,
    View,
    apply_plan,
    plan_backup,
    plan_full,
    plan_incremental,
)
from .errors import NotFoundError, SafetyError, UsageError
from .model import MailboxStatus, ProgressEvent, SyncAlgorithm, SyncMode, SyncReport, SyncRequest
from .plugin.manager import get_plugin_manager
from .replica import ImportBatch, MailboxNode, Replica, TreeChange, TreeSnapshot, as_replica
from .state import decode_state, encode_state
from .storage import Storage
from .tree import plan_tree

#: A two-way run refuses (without ``force``) when a side kept less than this share of the
#: messages the last state saw, provided the state saw at least SAFETY_MIN_MESSAGES.
SAFETY_KEEP_RATIO = 0.5
SAFETY_MIN_MESSAGES = 10

#: A mailbox copied into an empty one is planned and copied this many UIDs at a time, so
#: that memory stays flat however big the mailbox is (one round trip more per window).
COPY_WINDOW = 5000


def _status_equal(a: MailboxStatus, b: MailboxStatus) -> bool:
    return (a.uidvalidity, a.uidnext, a.messages, a.highestmodseq) == (
        b.uidvalidity,
        b.uidnext,
        b.messages,
        b.highestmodseq,
    )


def _mark(sx: MailboxStatus, sy: MailboxStatus, common: int | None = None) -> tuple[int, ...]:
    """Both sides' counters: equal to the last run's mark means neither side changed.

    A run that compared the mailbox and left both sides equal appends the last common UID:
    such a mark is as good as a state entry, so the next fast run asks each side only for
    what changed since (a mark from equal counters alone proves nothing and has 8 items)."""
    base = (sx.uidvalidity, sx.uidnext, sx.messages, sx.highestmodseq,
            sy.uidvalidity, sy.uidnext, sy.messages, sy.highestmodseq)
    return base if common is None else (*base, common)


def _entry_from_mark(g: str, mark: tuple[int, ...] | None) -> StateEntry | None:
    if mark is None or len(mark) != 9 or mark[0] != mark[4]:
        return None
    return StateEntry(g, mark[0], mark[8], mark[3], mark[7], mark[2])


class _Run:
    def __init__(self, x: Replica, y: Replica, request: SyncRequest, swapped: bool,
                 progress: Callable[[ProgressEvent], None] | None) -> None:
        self.x, self.y = x, y  # x: data flows from it in BACKUP/ONEWAY; the source in TWOWAY
        self.req = request
        self.mode = request.mode
        self.swapped = swapped
        self.progress = progress or (lambda ev: None)
        self.pm = get_plugin_manager()
        self.report = SyncReport()
        self.entries: dict[str, StateEntry] = {}
        self.new_entries: dict[str, StateEntry] = {}
        self._dropped: set[str] = set()  # mailboxes whose old state entry must not be kept
        self._touched: set[str] = set()
        # Fast-sync marks kept on y for this (x, mode): None when y keeps none.
        self._mark_key = hashlib.sha1(
            f"{request.mode.value}\0{x.info().hostname}\0{x.info().location}".encode()
        ).hexdigest()
        self._marks: dict[str, tuple[int, ...]] | None = None
        self._new_marks: dict[str, tuple[int, ...]] = {}
        self._looked_at: set[str] = set()
        self._filtered: set[str] = set()  # mailbox names where a filter held back new mail

    # -- state, seen from x/y ---------------------------------------------------------------
    def _xy(self, e: StateEntry) -> StateEntry:
        return attrs.evolve(e, modseq_a=e.modseq_b, modseq_b=e.modseq_a) if self.swapped else e

    def _keep(self, e: StateEntry) -> None:
        self.new_entries[e.guid] = self._xy(e)  # _xy is its own inverse

    # -- selection --------------------------------------------------------------------------
    def _selected(self, node: MailboxNode) -> bool:
        req = self.req
        if any(fnmatch.fnmatchcase(node.name, pat) for pat in req.excludes):
            return False
        if req.mailbox:
            return fnmatch.fnmatchcase(node.name, req.mailbox)
        if req.mailbox_guid:
            return node.guid == req.mailbox_guid
        return True

    def _filter(self, snap: TreeSnapshot) -> TreeSnapshot:
        req = self.req
        if not (req.excludes or req.mailbox or req.mailbox_guid):
            return snap
        subs = snap.subscriptions if not (req.mailbox or req.mailbox_guid) else ()
        return attrs.evolve(snap, mailboxes=tuple(m for m in snap.mailboxes if self._selected(m)), subscriptions=subs)

    # -- hooks ------------------------------------------------------------------------------
    def _resolve_flags(self, mailbox: str, local: Any, remote: Any, prefer_remote: bool) -> Any:
        return self.pm.hook.dsync_resolve_flag_conflict(
            mailbox=mailbox, local=local, remote=remote, prefer_remote=prefer_remote
        )

    def _name_conflict(self, name: str, a_guid: str, b_guid: str) -> str:
        if self.swapped:
            a_guid, b_guid = b_guid, a_guid
        new = self.pm.hook.dsync_resolve_name_conflict(name=name, local_guid=a_guid, remote_guid=b_guid)
        return new or f"{name}-{min(a_guid, b_guid)[:8]}"

    def _accept_new(self, mailbox: str, record: Any) -> bool:
        req = self.req
        ok = not (req.since is not None and record.internaldate < req.since) and not (
            req.until is not None and record.internaldate > req.until
        ) and self.pm.hook.dsync_filter_message(mailbox=mailbox, record=record) is not False
        if not ok:
            self._filtered.add(mailbox)  # the sides stay different: no mark may say "equal"
        return ok

    # -- safety -----------------------------------------------------------------------------
    def _check_safety(self, tx: TreeSnapshot, ty: TreeSnapshot) -> None:
        if self.mode is not SyncMode.TWOWAY or self.req.force or not self.entries:
            return
        known = sum(e.messages for e in self.entries.values())
        for label, snap in (("source", tx), ("destination", ty)):
            if self.swapped:
                label = "destination" if label == "source" else "source"
            have_boxes = snap.by_guid()
            present = [g for g in self.entries if g in have_boxes]
            if not present and any(e.messages for e in self.entries.values()):
                raise SafetyError(
                    f"Refusing to sync: the {label} has none of the {len(self.entries)} mailboxes the last "
                    "sync saw (wiped or a wrong location?); use --force to sync anyway"
                )
            have = sum(
                have_boxes[g].status.messages  # type: ignore[union-attr]
                for g in present
            )
            if known >= SAFETY_MIN_MESSAGES and have < known * SAFETY_KEEP_RATIO:
                raise SafetyError(
                    f"Refusing to sync: the {label} has only {have} of the {known} messages the last sync saw "
                    "(lost mail?); use --force to sync anyway"
                )

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> SyncReport:
        req = self.req
        if req.algorithm is SyncAlgorithm.STATEFUL or req.state:
            self.entries = {g: self._xy(e) for g, e in decode_state(req.state).items()}
        tx, ty = self._filter(self.x.tree()), self._filter(self.y.tree())
        self._check_safety(tx, ty)
        tplan = plan_tree(tx, ty, self.mode, self._name_conflict)
        rep = self.report
        rep.conflicts += tplan.conflicts
        if not req.dry_run:
            errors = self.x.apply_tree(tplan.a) if tplan.a else []
            errors += self.y.apply_tree(tplan.b) if tplan.b else []
            rep.unapplied.extend(errors)
            # Read again only what changed (a round trip each over a transport).
            if tplan.a:
                tx = self._filter(self.x.tree())
            if tplan.b:
                ty = self._filter(self.y.tree())
        # A mailbox a tree change touched (new GUID, created) is compared fully, never skipped.
        self._touched = {ch.guid for ch in (*tplan.a, *tplan.b) if ch.guid}
        rep.mailboxes_created = tplan.created
        rep.mailboxes_deleted = tplan.deleted
        rep.mailboxes_renamed = tplan.renamed
        if not req.dry_run and req.algorithm is SyncAlgorithm.FAST:
            # Only fast runs use them (and keep them up to date: counters only grow, so a
            # mark a full or stateful run left behind can only cause a full comparison).
            self._marks = self.y.sync_marks(self._mark_key)
        if req.mailbox == "" or req.mailbox_guid == "":
            return self._finish(tx, ty)
        bx, by = tx.by_guid(), ty.by_guid()
        pairs = sorted((g for g in bx if g in by), key=lambda g: bx[g].name)
        self.progress(ProgressEvent("run_start", mailboxes_total=len(pairs)))
        for i, g in enumerate(pairs):
            name = bx[g].name
            self._looked_at.add(g)
            if i + 1 < len(pairs) and self._first_copy(bx[pairs[i + 1]], by[pairs[i + 1]]):
                # The next mailbox will be listed whole: the source may start on it while
                # this one is copied (an IMAP source lists it on another connection).
                self.x.prefetch(pairs[i + 1])
            self.progress(ProgressEvent("mailbox_start", mailbox=name, mailboxes_done=i, mailboxes_total=len(pairs)))
            try:
                self._sync_mailbox(g, bx[g], by[g])
            except NotFoundError as e:
                # Deleted or renamed away by someone else during the run: the next run sees it.
                self.report.unapplied.append(f"{bx[g].name}: mailbox lost during the sync: {e.message}")
            self.progress(ProgressEvent("mailbox_done", mailbox=name, mailboxes_done=i + 1, mailboxes_total=len(pairs)))
        self.progress(ProgressEvent("run_done", mailboxes_done=len(pairs), mailboxes_total=len(pairs)))
        return self._finish(tx, ty)

    def _finish(self, tx: TreeSnapshot, ty: TreeSnapshot) -> SyncReport:
        # Mailboxes not looked at this time keep their entry while they exist on both sides.
        bx, by = tx.by_guid(), ty.by_guid()
        for g, e in self.entries.items():
            if g not in self.new_entries and g in bx and g in by and g not in self._dropped:
                self._keep(e)
        if self.req.algorithm is SyncAlgorithm.STATEFUL or self.req.state is not None:
            self.report.state = encode_state(self.new_entries.values())
        if self._marks is not None:
            # Mailboxes this run did not look at (-m, -x) keep their marks.
            marks = {g: m for g, m in self._marks.items() if g not in self._looked_at and g in bx and g in by}
            marks.update(self._new_marks)
            if marks != self._marks:  # a run that changed nothing costs no write (nor round trip)
                self.y.set_sync_marks(self._mark_key, marks)
        return self.report

    def _unchanged(self, g: str, sx: MailboxStatus, sy: MailboxStatus) -> bool:
        """Fast sync: may this mailbox be skipped? With marks: neither side changed since the
        last run with this peer. Without (Dovecot's rule): equal counters on both sides,
        blind to one change on each side."""
        if self._marks is None:
            return _status_equal(sx, sy)
        mark = self._marks.get(g)
        return mark is not None and mark[:8] == _mark(sx, sy)

    def _sync_mailbox(self, g: str, nx: MailboxNode, ny: MailboxNode) -> None:
        rep, req, mode = self.report, self.req, self.mode
        sx, sy = nx.status, ny.status
        assert sx is not None and sy is not None
        rep.mailboxes += 1
        entry = self.entries.get(g)
        if sx.uidvalidity != sy.uidvalidity:
            self._fix_uidvalidity(g, nx, ny, sx, sy)
            st_x, st_y = self.x.statuses([g]).get(g), self.y.statuses([g]).get(g)
            if st_x is None or st_y is None:
                rep.unapplied.append(f"{nx.name}: mailbox vanished during the sync")
                return
            sx, sy = st_x, st_y
            entry = None
            self._dropped.add(g)
            self._touched.add(g)
        if entry is not None and entry.uidvalidity != sx.uidvalidity:
            entry = None
        algo = req.algorithm
        if algo is not SyncAlgorithm.STATEFUL:
            entry = None  # -f -s / fast -s: compare as asked, still print a state
        if entry is not None:
            if (
                sx.uidvalidity == sy.uidvalidity == entry.uidvalidity
                and sx.highestmodseq == entry.modseq_a
                and sy.highestmodseq == entry.modseq_b
                and min(sx.uidnext, sy.uidnext) == entry.last_common_uid + 1
                and sx.messages == entry.messages
            ):
                rep.mailboxes_skipped += 1
                self._keep(entry)
                if self._unchanged(g, sx, sy) and self._marks is not None:
                    self._new_marks[g] = self._marks[g]
                return
            entry = self._usable(entry, sx, sy)
        # Equal counters mean "unchanged" only to a fast sync; a stateful run without a usable
        # entry for this mailbox compares it fully (one change on each side can leave them equal).
        if algo is SyncAlgorithm.FAST and entry is None and g not in self._touched and self._unchanged(g, sx, sy):
            rep.mailboxes_skipped += 1
            old = self._marks.get(g) if self._marks is not None else None
            self._new_marks[g] = old if old is not None and old[:8] == _mark(sx, sy) else _mark(sx, sy)
            self._keep(StateEntry(g, sx.uidvalidity, sx.uidnext - 1, sx.highestmodseq, sy.highestmodseq, sx.messages))
            return
        if algo is SyncAlgorithm.FAST and g not in self._touched and self._marks is not None and mode is not SyncMode.ONEWAY:
            # What the last complete run left, as a state: only the changes since are read.
            # Not for -1: it leaves the destination's own mail unsynced, which a state hides.
            entry = self._usable(_entry_from_mark(g, self._marks.get(g)), sx, sy)
        policy = Policy(
            mailbox=nx.name,
            resolve_flags=self._resolve_flags,
            accept_new=self._accept_new,
            locate_a=self.x.locate,
            locate_b=self.y.locate,
        )
        if self._into_empty(sx, sy):
            plan, res = self._copy_in_windows(g, nx, sx, policy)
        else:
            plan, res = self._plan(g, nx, ny, entry, policy, sy), None
        if plan is None:
            return
        rep.conflicts += plan.conflicts
        rep.unapplied.extend(plan.notes)
        total = len(plan.a.saves) + len(plan.b.saves)
        if req.dry_run:
            rep.messages_copied += total
            rep.flags_changed += len(plan.a.flag_updates) + len(plan.b.flag_updates)
            rep.expunged += len(plan.a.expunge_peer) + len(plan.b.expunge_peer)
            return
        if res is None:
            res = apply_plan(g, plan, self.x, self.y, mode)
            self.progress(ProgressEvent("messages", mailbox=nx.name, done=total, total=total))
        rep.messages_copied += res.transferred
        rep.messages_copied_locally += res.copied_locally
        rep.bytes += res.bytes
        rep.flags_changed += res.flags_changed
        rep.expunged += res.expunged
        rep.unapplied.extend(res.errors)
        if not (res.errors or plan.notes) and res.status_a is not None and res.status_b is not None:
            fa, fb = res.status_a, res.status_b
            equal = mode is not SyncMode.ONEWAY and nx.name not in self._filtered
            self._new_marks[g] = _mark(fa, fb, min(plan.next_uid, fa.uidnext, fb.uidnext) - 1 if equal else None)
        if res.errors or plan.notes or mode is SyncMode.ONEWAY:
            # No state entry: the next run compares this mailbox fully. A -1 run leaves the
            # destination's own messages and flag changes unsynced, so an entry (which says
            # "both sides equal up to here") would hide them from a later two-way run.
            self._dropped.add(g)
            return
        fx, fy = res.status_a, res.status_b
        assert isinstance(fx, MailboxStatus) and isinstance(fy, MailboxStatus)
        common = min(plan.next_uid, fx.uidnext, fy.uidnext) - 1
        self._keep(StateEntry(g, fx.uidvalidity, common, fx.highestmodseq, fy.highestmodseq, fx.messages))

    def _first_copy(self, nx: MailboxNode, ny: MailboxNode) -> bool:
        """Will this mailbox be listed whole on the source (``changes()`` with no state)?
        True for a first copy into an empty mailbox that is not copied in windows."""
        sx, sy = nx.status, ny.status
        return (sx is not None and sy is not None and not self.req.dry_run and 0 < sx.messages <= COPY_WINDOW
                and sy.messages == 0 and sy.uidnext == 1)

    def _into_empty(self, sx: MailboxStatus, sy: MailboxStatus) -> bool:
        """A big mailbox going into one that never held a message (a first copy)."""
        return (not self.req.dry_run and sy.messages == 0 and sy.uidnext == 1 and sx.uidvalidity == sy.uidvalidity
                and sx.messages > COPY_WINDOW)

    def _copy_in_windows(self, g: str, nx: MailboxNode, sx: MailboxStatus,
                         policy: Policy) -> tuple[MailboxPlan, ApplyResult]:
        """The first copy of a big mailbox, a window of UIDs at a time: each window's records
        are read, planned and copied before the next is read. The destination never used a
        UID, so every message keeps its UID and nothing flows back; the last step raises
        UIDNEXT/HIGHESTMODSEQ as a whole-mailbox plan would."""
        x, y, mode = self.x, self.y, self.mode
        empty = View(1, {}, {})
        whole = MailboxPlan(next_uid=sx.uidnext)
        res = ApplyResult()
        done = 0
        for lo in range(1, sx.uidnext, COPY_WINDOW):
            recs = x.records(g, range(lo, min(lo + COPY_WINDOW, sx.uidnext)))
            if not recs:
                continue
            view = View(sx.uidnext, {r.uid: r for r in recs}, {})
            plan = plan_backup(view, empty, policy) if mode is SyncMode.BACKUP else plan_full(view, empty, mode, policy)
            whole.notes.extend(plan.notes)
            whole.conflicts += plan.conflicts
            if plan.b.saves:
                r = y.import_batch(g, ImportBatch(saves=tuple(plan.b.saves)), x.bodies(g, plan.b.peer_uids()))
                res.errors.extend(r.errors)
                res.transferred += r.saved
                res.copied_locally += r.copied_locally
                res.bytes += r.bytes
                done += len(plan.b.saves)
                self.progress(ProgressEvent("messages", mailbox=nx.name, done=done, total=sx.messages))
                if r.errors:
                    break
            if plan.a.saves or plan.a.flag_updates or plan.b.flag_updates or plan.b.expunge_peer:
                # Not expected into an empty mailbox; never half-handled: the next run compares fully.
                whole.notes.append(f"{nx.name}: unexpected changes while copying into an empty mailbox")
                break
        final = apply_plan(g, whole, x, y, mode)  # statuses, UIDNEXT and HIGHESTMODSEQ
        res.errors.extend(final.errors)
        res.status_a, res.status_b = final.status_a, final.status_b
        return whole, res

    @staticmethod
    def _usable(entry: StateEntry | None, sx: MailboxStatus, sy: MailboxStatus) -> StateEntry | None:
        """The entry, unless the mailbox went backwards since (stale: compare it fully)."""
        if entry is None or not (sx.uidvalidity == sy.uidvalidity == entry.uidvalidity):
            return None
        if sx.highestmodseq < entry.modseq_a or sy.highestmodseq < entry.modseq_b or min(
            sx.uidnext, sy.uidnext
        ) <= entry.last_common_uid:
            return None
        return entry

    def _fix_uidvalidity(self, g: str, nx: MailboxNode, ny: MailboxNode, sx: MailboxStatus, sy: MailboxStatus) -> None:
        """§4.2: more messages wins, then the higher UIDVALIDITY (backup: the source's)."""
        if self.mode is SyncMode.BACKUP:
            x_wins = True
        else:
            x_wins = (sx.messages, sx.uidvalidity) > (sy.messages, sy.uidvalidity)
        if x_wins:
            errs = self.y.apply_tree([TreeChange("set_uidvalidity", ny.name, uidvalidity=sx.uidvalidity)])
        elif self.mode is SyncMode.TWOWAY:
            errs = self.x.apply_tree([TreeChange("set_uidvalidity", nx.name, uidvalidity=sy.uidvalidity)])
        else:
            errs = []
        if sx.messages and sy.messages:  # an empty side (a new INBOX) just adopts the other's
            self.report.conflicts += 1
        self.report.unapplied.extend(errs)

    def _plan(self, g: str, nx: MailboxNode, ny: MailboxNode, entry: StateEntry | None, policy: Policy,
              sy: MailboxStatus) -> MailboxPlan | None:
        x, y, mode = self.x, self.y, self.mode
        if mode is SyncMode.BACKUP:
            if entry is not None and (sy.highestmodseq, sy.uidnext, sy.messages) == (
                    entry.modseq_b, entry.last_common_uid + 1, entry.messages):
                # The destination did not change since it was last made equal: the source's
                # changes since then are the whole difference (a two-way merge of them
                # touches only the destination; anything else means: compare fully).
                plan = self._incremental(g, entry, SyncMode.TWOWAY, policy)
                if plan is not None and plan.a.empty() and not plan.conflicts and plan.next_uid >= sy.uidnext:
                    return plan
            vx, vy = View.of(x.changes(g)), View.of(y.changes(g))
            plan = plan_backup(vx, vy, policy)
            if plan.rebuild_b:
                if self.req.dry_run:
                    return plan
                uv = x.statuses([g])[g].uidvalidity
                if ny.name == "INBOX":
                    # INBOX can't be deleted: empty it and restart its UIDs under the source's
                    # UIDVALIDITY instead (Mailbox.reset).
                    errs = y.apply_tree([TreeChange("reset", ny.name, guid=g, uidvalidity=uv)])
                    if errs:
                        plan.notes.append(
                            "INBOX: the destination's UIDs can't be made identical to the source's "
                            f"({'; '.join(errs)}); its messages were synced at other UIDs where needed"
                        )
                        self._inbox_best_effort(plan, vx, vy)
                        return plan
                else:
                    errs = y.apply_tree(
                        [TreeChange("delete", ny.name, guid=g), TreeChange("create", ny.name, guid=g, uidvalidity=uv)]
                    )
                    if errs:
                        self.report.unapplied.extend(errs)
                        return None
                    self.report.mailboxes_deleted += 1
                    self.report.mailboxes_created += 1
                vy = View.of(y.changes(g))
                plan = plan_backup(vx, vy, policy)
            return plan
        if entry is not None:
            plan = self._incremental(g, entry, mode, policy)
            if plan is not None:
                return plan
        return plan_full(View.of(x.changes(g)), View.of(y.changes(g)), mode, policy)

    def _incremental(self, g: str, entry: StateEntry, mode: SyncMode, policy: Policy) -> MailboxPlan | None:
        x, y = self.x, self.y
        cx = x.changes(g, entry.modseq_a, entry.last_common_uid)
        cy = y.changes(g, entry.modseq_b, entry.last_common_uid)
        if not (cx.expunges_complete and cy.expunges_complete):
            return None  # an expunge could be missing: only a full compare is safe
        try:
            return plan_incremental(
                View.of(cx),
                View.of(cy),
                entry,
                lambda uids: x.records(g, uids),
                lambda uids: y.records(g, uids),
                mode,
                policy,
            )
        except NeedFullSync:
            return None

    @staticmethod
    def _inbox_best_effort(plan: MailboxPlan, vx: View, vy: View) -> None:
        from .replica import NewMessage

        have = {r.guid for r in vy.records.values()} | {s.guid for s in plan.b.saves}
        gone = set(plan.b.expunge_peer)
        kept = {vy.records[u].guid for u in vy.records if u not in gone}
        nxt = max(vx.uidnext, vy.uidnext)
        for u, r in sorted(vx.records.items()):
            if r.guid in kept or (r.guid in have and any(s.guid == r.guid for s in plan.b.saves)):
                continue
            plan.b.saves.append(
                NewMessage(nxt, r.guid, r.flags, r.keywords, r.internaldate or None, None, "peer", from_uid=u)
            )
            nxt += 1
        plan.next_uid = nxt


def sync(
    source: Storage | Replica,
    destination: Storage | Replica,
    request: SyncRequest | None = None,
    *,
    progress: Callable[[ProgressEvent], None] | None = None,
    **overrides: Any,
) -> SyncReport:
    """Synchronise ``source`` and ``destination`` as ``request`` says; see the module doc."""
    req = request or SyncRequest()
    if overrides:
        try:
            req = attrs.evolve(req, **overrides)
        except TypeError as e:
            raise UsageError(f"Unknown sync option: {e}") from None
    if req.since is not None and req.until is not None and req.since > req.until:
        raise UsageError("Start date is later than end date")
    a, b = as_replica(source), as_replica(destination)
    swapped = req.reverse and req.mode is not SyncMode.TWOWAY
    x, y = (b, a) if swapped else (a, b)
    pm = get_plugin_manager()
    started = time.monotonic()
    pm.hook.dsync_sync_started(request=req)
    with contextlib.ExitStack() as stack:
        if req.lock_timeout is not None:
            for side in sorted((a, b), key=lambda s: s.info().location):
                stack.enter_context(side.lock(req.lock_timeout))
        run = _Run(x, y, req, swapped, progress)
        report = run.run()
        if req.purge and not req.dry_run:
            b.purge()
    report.seconds = time.monotonic() - started
    pm.hook.dsync_sync_finished(request=req, report=report)
    if req.notify:
        pm.hook.dsync_notify(request=req, report=report)
    return report


__all__ = ["sync", "SAFETY_KEEP_RATIO", "SAFETY_MIN_MESSAGES"]
