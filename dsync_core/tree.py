"""Mailbox tree sync (dsync-algorithm.md §3): decide the folder changes of both sides.

Unlike Dovecot, which mutates two trees with a rename loop until they are equal, we
compute the *target* tree (mailbox GUID -> final name) from both snapshots and derive each
side's changes from it: deletes first (they free names), then renames (parents first,
through a temporary name when two mailboxes swap names), then creates (parents first),
then GUID changes. The decisions themselves are Dovecot's:

* mailboxes are matched by GUID; a GUID with two names was renamed: the side whose name
  (or one of its parents) has the later RENAME record in its mailbox log wins, the source
  on a tie;
* a DELETE_MAILBOX record for a GUID a side no longer has deletes that GUID on the other
  side (two-way): deletion always wins, as in Dovecot;
* a mailbox missing on one side is created there with the same GUID and UIDVALIDITY;
* two different GUIDs with the same final name: if neither side knows the other's GUID
  (both created it, e.g. INBOX or Trash), they are merged: both end with the larger GUID
  (a ``-1`` destination adopts the source's) and the message sync merges the contents;
  otherwise the name-conflict hook names the one with the lower GUID anew;
* subscriptions by name: the later SUBSCRIBE/UNSUBSCRIBE record wins, subscribed on a tie;
  a side's subscription moves with a mailbox the plan renames there.

Directories without a mailbox are not synced: they are implicit, names only (the storage
interface cannot create one; parents appear by themselves when a child is created). A name
held only by such a directory counts as free: a storage renames or creates a mailbox onto
it (the directory's children stay where they are).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import attrs

from .mailboxlog import name_hash
from .model import MailboxLogType, SyncMode
from .replica import MailboxNode, TreeChange, TreeSnapshot
from .storage import HIERARCHY_SEP, parent_names

NameConflict = Callable[[str, str, str], str]


@attrs.define
class TreePlan:
    """Changes for the source (``a``) and the destination (``b``) side."""

    a: list[TreeChange] = attrs.Factory(list)
    b: list[TreeChange] = attrs.Factory(list)
    renamed: int = 0
    created: int = 0
    deleted: int = 0
    conflicts: int = 0
    # GUIDs deleted on a side because the other side deleted them (for the safety check).
    deleted_guids_a: set[str] = attrs.Factory(set)
    deleted_guids_b: set[str] = attrs.Factory(set)


def _rename_times(snap: TreeSnapshot) -> dict[str, int]:
    out: dict[str, int] = {}
    for rec in snap.log:
        if rec.type == MailboxLogType.RENAME:
            out[rec.guid] = max(out.get(rec.guid, 0), rec.timestamp)
    return out


def _renamed_at(name: str, times: dict[str, int]) -> int:
    # A child moves with its renamed parent; Dovecot propagates the parent's timestamp.
    return max((times.get(name_hash(n), 0) for n in (*parent_names(name), name)), default=0)


def _sub_times(snap: TreeSnapshot) -> dict[str, int]:
    out: dict[str, int] = {}
    for rec in snap.log:
        if rec.type in (MailboxLogType.SUBSCRIBE, MailboxLogType.UNSUBSCRIBE):
            out[rec.guid] = max(out.get(rec.guid, 0), rec.timestamp)
    return out


def _moved_names(by_guid: dict[str, MailboxNode], final: dict[str, str]) -> dict[str, str]:
    """Old name -> new name of this side's mailboxes that the plan renames."""
    return {n.name: final[g] for g, n in by_guid.items() if g in final and final[g] != n.name}


def _after_moves(subs: Iterable[str], moves: dict[str, str]) -> set[str]:
    return {moves.get(n, n) for n in subs}


def _after_moves_times(times: dict[str, int], moves: dict[str, str]) -> dict[str, int]:
    out = dict(times)
    for old, new in moves.items():
        out[name_hash(new)] = times.get(name_hash(old), 0)
    return out


def _deleted(snap: TreeSnapshot, present: dict[str, MailboxNode]) -> set[str]:
    return {r.guid for r in snap.log if r.type == MailboxLogType.DELETE_MAILBOX and r.guid not in present}


def _depth(name: str) -> int:
    return name.count(HIERARCHY_SEP)


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + HIERARCHY_SEP)


def _rename_ops(current: dict[str, str], target: dict[str, str], fixed: set[str]) -> list[TreeChange]:
    """Renames turning ``current`` (GUID -> name) into ``target`` on one side.

    ``fixed`` holds names that stay occupied (other mailboxes kept as they are)."""
    cur = dict(current)
    ops: list[TreeChange] = []
    limit = 3 * len(cur) + 10
    temp_n = 0
    for _ in range(limit):
        pending = sorted(
            (g for g in cur if g in target and cur[g] != target[g] and cur[g] != "INBOX"),
            key=lambda g: (_depth(target[g]), target[g]),
        )
        if not pending:
            break
        occupied = set(cur.values()) | fixed
        done = False
        for g in pending:
            src, dst = cur[g], target[g]
            if dst in occupied or _under(dst, src) or dst == "INBOX":
                continue
            ops.append(TreeChange("rename", src, new_name=dst, guid=g))
            for h, n in list(cur.items()):
                if _under(n, src):
                    cur[h] = dst + n[len(src) :]
            done = True
            break
        if done:
            continue
        # Every pending target is taken (a swap or a cycle): move one blocker aside.
        g = pending[0]
        src, dst = cur[g], target[g]
        blocker = next((h for h, n in cur.items() if n == dst and h != g), None)
        mover, name = (blocker, dst) if blocker is not None and dst != "INBOX" else (g, src)
        temp_n += 1
        tmp = f"{name}-temp-{temp_n}"
        while tmp in occupied:
            temp_n += 1
            tmp = f"{name}-temp-{temp_n}"
        if _under(tmp, cur[mover]) or cur[mover] == "INBOX":
            break  # nothing sensible left to try; reported as unapplied by the caller
        ops.append(TreeChange("rename", cur[mover], new_name=tmp, guid=mover))
        old = cur[mover]
        for h, n in list(cur.items()):
            if _under(n, old):
                cur[h] = tmp + n[len(old) :]
    return ops


def plan_tree(a: TreeSnapshot, b: TreeSnapshot, mode: SyncMode, name_conflict: NameConflict) -> TreePlan:
    """Folder changes for ``a`` (source) and ``b`` (destination) in ``mode``.

    For BACKUP and ONEWAY the caller passes the side data flows from as ``a``."""
    plan = TreePlan()
    ga, gb = a.by_guid(), b.by_guid()
    del_a, del_b = _deleted(a, ga), _deleted(b, gb)
    ren_a, ren_b = _rename_times(a), _rename_times(b)

    # -- the target: GUID -> (name, uidvalidity) ---------------------------------------------
    target: dict[str, tuple[str, int]] = {}
    set_guid_a: dict[str, str] = {}  # current name -> new GUID
    set_guid_b: dict[str, str] = {}
    delete_a: set[str] = set()
    delete_b: set[str] = set()
    for g in sorted(set(ga) | set(gb)):
        na, nb = ga.get(g), gb.get(g)
        if mode is SyncMode.BACKUP:
            if na is None and nb is not None and nb.name == "INBOX":
                # INBOX can't be deleted: it takes the source INBOX's GUID instead.
                src_inbox = next((n for n in ga.values() if n.name == "INBOX"), None)
                if src_inbox is not None and src_inbox.guid not in gb:
                    set_guid_b["INBOX"] = src_inbox.guid
                continue
            if na is not None:
                target[g] = (na.name, na.status.uidvalidity if na.status else 0)
            else:
                delete_b.add(g)
            continue
        if na is not None and nb is not None:
            name = na.name if _renamed_at(na.name, ren_a) >= _renamed_at(nb.name, ren_b) else nb.name
            target[g] = (name, 0)
        elif na is not None:
            if g in del_b:
                if mode is SyncMode.TWOWAY:
                    delete_a.add(g)
                    plan.deleted_guids_a.add(g)
                # ONEWAY: the destination deleted it; it is not brought back.
                continue
            target[g] = (na.name, na.status.uidvalidity if na.status else 0)
        else:
            assert nb is not None
            if g in del_a and mode is SyncMode.TWOWAY:
                delete_b.add(g)
                plan.deleted_guids_b.add(g)
                continue
            target[g] = (nb.name, nb.status.uidvalidity if nb.status else 0)

    # -- same final name, different GUIDs ---------------------------------------------------
    if mode is not SyncMode.BACKUP:
        for _ in range(len(target) + 1):
            by_name: dict[str, list[str]] = {}
            for g, (n, _uv) in target.items():
                by_name.setdefault(n, []).append(g)
            clash = next(((n, gs) for n, gs in sorted(by_name.items()) if len(gs) > 1), None)
            if clash is None:
                break
            name, gs = clash
            gs = sorted(gs)
            lo, hi = gs[0], gs[-1]
            only_a = [g for g in gs if g in ga and g not in gb]
            only_b = [g for g in gs if g in gb and g not in ga]
            if len(gs) == 2 and len(only_a) == 1 and len(only_b) == 1 and (
                name == "INBOX" or (only_a[0] not in del_b and only_b[0] not in del_a)
            ):
                # Both sides created it independently: merge into one GUID.
                ga_, gb_ = only_a[0], only_b[0]
                keep = ga_ if mode is SyncMode.ONEWAY else max(ga_, gb_)
                if keep == ga_:
                    set_guid_b[gb.get(gb_).name] = keep  # type: ignore[union-attr]
                else:
                    set_guid_a[ga.get(ga_).name] = keep  # type: ignore[union-attr]
                target[keep] = (name, 0)
                del target[gb_ if keep == ga_ else ga_]
                continue
            plan.conflicts += 1
            loser = lo
            a_guid = next((g for g in gs if g in ga and ga[g].name == name), lo)
            b_guid = next((g for g in gs if g in gb and gb[g].name == name), hi)
            new = name_conflict(name, a_guid, b_guid)
            taken = {n for n, _ in target.values()}
            base, i = new, 1
            while new in taken:
                i += 1
                new = f"{base}-{i}"
            target[loser] = (new, target[loser][1])
        if mode is SyncMode.ONEWAY:
            set_guid_a.clear()  # never modify the source

    # -- per-side changes -------------------------------------------------------------------
    def side_changes(snap_by_guid: dict[str, MailboxNode], deletes: set[str], set_guid: dict[str, str]) -> list[TreeChange]:
        ch: list[TreeChange] = []
        keep = {g: n for g, n in snap_by_guid.items() if g not in deletes}
        for g in sorted(deletes, key=lambda g: -_depth(snap_by_guid[g].name)):
            if snap_by_guid[g].name == "INBOX":
                continue
            ch.append(TreeChange("delete", snap_by_guid[g].name, guid=g))
        current = {g: n.name for g, n in keep.items() if g in target}
        fixed = {n.name for g, n in keep.items() if g not in target and n.name not in set_guid}
        # A mailbox whose GUID changes is the target's mailbox under its new GUID.
        for name, new_guid in set_guid.items():
            old = next(g for g, n in keep.items() if n.name == name)
            current.pop(old, None)
            current[new_guid] = name
        renames = _rename_ops(current, {g: n for g, (n, _) in target.items()}, fixed)
        ch.extend(renames)
        have = set(current)
        for g, (n, uv) in sorted(target.items(), key=lambda kv: (_depth(kv[1][0]), kv[1][0])):
            if g not in have:
                ch.append(TreeChange("create", n, guid=g, uidvalidity=uv))
        for name, new_guid in set_guid.items():
            final = target[new_guid][0]
            ch.append(TreeChange("set_guid", final if final else name, guid=new_guid))
        return ch

    if mode is not SyncMode.BACKUP and mode is not SyncMode.ONEWAY:
        plan.a = side_changes(ga, delete_a, set_guid_a)
    plan.b = side_changes(gb, delete_b, set_guid_b)
    plan.renamed = sum(1 for ch in (*plan.a, *plan.b) if ch.kind == "rename" and "-temp-" not in ch.new_name)
    plan.created = sum(1 for ch in (*plan.a, *plan.b) if ch.kind == "create")
    plan.deleted = sum(1 for ch in (*plan.a, *plan.b) if ch.kind == "delete")

    # -- subscriptions ----------------------------------------------------------------------
    # A subscription moves with its renamed mailbox (Dovecot renames the tree node that holds
    # it), so a side that renames Old to New here takes its "Old" subscription to "New".
    final_names = {g: n for g, (n, _uv) in target.items()}
    moves_b = _moved_names(gb, final_names)
    moves_a = _moved_names(ga, final_names) if mode is SyncMode.TWOWAY else {}
    subs_a, subs_b = _after_moves(a.subscriptions, moves_a), _after_moves(b.subscriptions, moves_b)
    ts_a, ts_b = _after_moves_times(_sub_times(a), moves_a), _after_moves_times(_sub_times(b), moves_b)
    want_a, want_b = set(subs_a), set(subs_b)
    for name in sorted(subs_a ^ subs_b):
        in_a = name in subs_a
        if mode is SyncMode.BACKUP:
            want = in_a
        else:
            ta, tb = ts_a.get(name_hash(name), 0), ts_b.get(name_hash(name), 0)
            want = in_a if ta > tb else (name in subs_b) if tb > ta else True
        for wanted in (want_a, want_b):
            if want:
                wanted.add(name)
            else:
                wanted.discard(name)
    for changes, have, wanted, applies in (
        (plan.a, set(a.subscriptions), want_a, mode is SyncMode.TWOWAY),
        (plan.b, set(b.subscriptions), want_b, True),
    ):
        if not applies:
            continue
        for name in sorted(have ^ wanted):
            changes.append(TreeChange("subscribe" if name in wanted else "unsubscribe", name))
    return plan


__all__ = ["TreePlan", "plan_tree"]
