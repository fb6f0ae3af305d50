"""One test per sync rule, on the memory storage and on Maildir."""

from __future__ import annotations

import time

import pytest
from test_engine_helpers import deliver, expunge, messages, open_sides, reopen, set_flags, snapshot, status

from dsync_core import sync as _sync
from dsync_core.errors import ExistsError, SafetyError, StateError
from dsync_core.mailboxlog import name_hash
from dsync_core.model import MailboxLogRecord, MailboxLogType, SyncAlgorithm, SyncMode
from dsync_core.replica import LocalReplica
from dsync_core.state import decode_state, encode_state


@pytest.fixture(params=["memory", "maildir"])
def sides(request, tmp_path):  # type: ignore[no-untyped-def]
    """Two empty storages of one backend: (source, destination)."""
    yield from open_sides(tmp_path, request.param)


def sync(a, b, **kw):  # type: ignore[no-untyped-def]
    """Rule tests compare fully unless they ask otherwise: without fast-sync marks (the
    memstore) fast sync cannot see one change on each side (equal counters), the same
    blind spot as Dovecot's."""
    kw.setdefault("algorithm", SyncAlgorithm.FULL)
    return _sync(a, b, **kw)


def same(a, b) -> None:  # type: ignore[no-untyped-def]
    assert snapshot(a) == snapshot(b)


def test_new_mail_both_ways_and_second_run_is_noop(sides) -> None:  # type: ignore[no-untyped-def]
    a, b = sides
    deliver(a, "INBOX")
    sync(a, b)
    deliver(a, "INBOX")
    deliver(b, "INBOX", flags={"\\Flagged"})
    # One change on each side leaves equal counters. A storage that keeps fast-sync marks
    # (Maildir, sdbox) sees it anyway; one without (memstore) has Dovecot's blind spot.
    fast = sync(a, b, algorithm=SyncAlgorithm.FAST)
    assert fast.mailboxes_skipped == (1 if b.sync_marks("any") is None else 0)
    r = sync(a, b, algorithm=SyncAlgorithm.FULL)
    same(a, b)
    assert [m[0] for m in messages(a, "INBOX")] == [1, 3, 4]  # both UID 2s were renumbered
    r = sync(a, b, algorithm=SyncAlgorithm.FAST)
    assert r.mailboxes_skipped == 1 and r.messages_copied == 0
    assert status(a, "INBOX").highestmodseq == status(b, "INBOX").highestmodseq


def test_uid_conflict_renumbers_both_sides_in_guid_order(sides) -> None:  # type: ignore[no-untyped-def]
    a, b = sides
    deliver(a, "INBOX")
    sync(a, b)
    deliver(a, "INBOX")
    deliver(b, "INBOX")
    ga = messages(a, "INBOX")[1][1]
    gb = messages(b, "INBOX")[1][1]
    sync(a, b, algorithm=SyncAlgorithm.FULL)
    same(a, b)
    msgs = messages(a, "INBOX")
    assert [m[0] for m in msgs] == [1, 3, 4]
    assert [m[1] for m in msgs[1:]] == sorted([ga, gb])
    assert status(a, "INBOX").uidnext == status(b, "INBOX").uidnext == 5


def test_uid_kept_when_other_side_never_used_it(sides) -> None:  # type: ignore[no-untyped-def]
    a, b = sides
    deliver(a, "INBOX")
    deliver(a, "INBOX")
    sync(a, b)
    assert [m[0] for m in messages(b, "INBOX")] == [1, 2]


@pytest.mark.parametrize("mode", [SyncMode.TWOWAY, SyncMode.BACKUP, SyncMode.ONEWAY])
def test_first_run_into_an_empty_destination_has_no_conflicts(sides, mode: SyncMode) -> None:  # type: ignore[no-untyped-def]
    a, b = sides
    deliver(a, "INBOX")
    a.create_mailbox("Box")
    deliver(a, "Box")
    r = sync(a, b, mode=mode)
    assert (r.conflicts, r.messages_copied) == (0, 2)
    assert status(b, "INBOX").uidvalidity == status(a, "INBOX").uidvalidity


def test_flag_change_one_side_wins_without_conflict(sides) -> None:  # type: ignore[no-untyped-def]
    a, b = sides
    deliver(a, "INBOX")
    deliver(a, "INBOX")
    r = sync(a, b, algorithm=SyncAlgorithm.STATEFUL, state="")
    set_flags(b, "INBOX", 1, add={"\\Seen"}, add_kw={"work"})
    set_flags(a, "INBOX", 2, add={"\\Answered"})
    r = sync(a, b, algorithm=SyncAlgorithm.STATEFUL, state=r.state)
    same(a, b)
    msgs = messages(a, "INBOX")
    assert msgs[0][2] == {"\\Seen"} and msgs[0][3] == {"work"}
    assert msgs[1][2] == {"\\Answered"}
    assert r.conflicts == 0


def test_flag_conflict_higher_modseq_wins(sides) -> None:  # type: ignore[no-untyped-def]
    a, b = sides
    deliver(a, "INBOX")
    sync(a, b)
    set_flags(a, "INBOX", 1, add={"\\Seen"})
    set_flags(b, "INBOX", 1, add={"\\Flagged"})
    set_flags(b, "INBOX", 1, add={"\\Draft"})  # b changed later: higher modseq
    r = sync(a, b)
    same(a, b)
    assert messages(a, "INBOX")[0][2] == {"\\Flagged", "\\Draft"}
    assert r.conflicts == 1


def test_flag_conflict_hook_decides(sides) -> None:  # type: ignore[no-untyped-def]
    from dsync_core import hookimpl
    from dsync_core.plugin.manager import get_plugin_manager

    class Union:
        @hookimpl
        def dsync_resolve_flag_conflict(self, mailbox, local, remote, prefer_remote):  # type: ignore[no-untyped-def]
            return local.flags | remote.flags, local.keywords | remote.keywords

    a, b = sides
    deliver(a, "INBOX")
    sync(a, b)
    set_flags(a, "INBOX", 1, add={"\\Seen"})
    set_flags(b, "INBOX", 1, add={"\\Flagged"})
    plugin = Union()
    get_plugin_manager().register(plugin)
    try:
        sync(a, b)
    finally:
        get_plugin_manager().unregister(plugin)
    assert messages(a, "INBOX")[0][2] == messages(b, "INBOX")[0][2] == {"\\Seen", "\\Flagged"}


def test_expunge_beats_flag_change(sides) -> None:  # type: ignore[no-untyped-def]
    a, b = sides
    deliver(a, "INBOX")
    deliver(a, "INBOX")
    sync(a, b)
    expunge(a, "INBOX", 1)
    set_flags(b, "INBOX", 1, add={"\\Flagged"})
    r = sync(a, b)
    same(a, b)
    assert [m[0] for m in messages(b, "INBOX")] == [2]
    assert r.expunged == 1


def test_expunge_propagates_both_directions(sides) -> None:  # type: ignore[no-untyped-def]
    a, b = sides
    for _ in range(3):
        deliver(a, "INBOX")
    sync(a, b)
    expunge(a, "INBOX", 1)
    expunge(b, "INBOX", 3)
    sync(a, b)
    same(a, b)
    assert [m[0] for m in messages(a, "INBOX")] == [2]


def test_rename_both_directions_later_rename_wins(sides) -> None:  # type: ignore[no-untyped-def]
    a, b = sides
    a.create_mailbox("One")
    a.create_mailbox("Two")
    deliver(a, "One")
    sync(a, b)
    a.rename_mailbox("One", "Uno")
    b.rename_mailbox("Two", "Dos")
    r = sync(a, b)
    same(a, b)
    assert {"Uno", "Dos"} <= set(snapshot(a)["boxes"])  # type: ignore[arg-type]
    assert r.mailboxes_renamed == 2


def test_rename_conflict_newer_timestamp_wins(sides) -> None:  # type: ignore[no-untyped-def]
    a, b = sides
    a.create_mailbox("Box")
    sync(a, b)
    a.rename_mailbox("Box", "FromA")
    b.rename_mailbox("Box", "FromB")
    # Make b's rename clearly later by logging it with a future timestamp.
    _log(b, MailboxLogRecord(MailboxLogType.RENAME, name_hash("FromB"), int(time.time()) + 100))
    sync(a, b)
    same(a, b)
    assert "FromB" in snapshot(a)["boxes"] and "FromA" not in snapshot(a)["boxes"]  # type: ignore[operator]


def _log(st, rec) -> None:  # type: ignore[no-untyped-def]
    if st.scheme == "memory":
        st.state.changelog.append_mailbox_log([rec])
    else:
        import os

        from dsync_core import mailboxlog

        mailboxlog.append_log(os.path.join(st.layout.index_root, mailboxlog.FILENAME), [rec])


def test_delete_both_directions_not_recreated(sides) -> None:  # type: ignore[no-untyped-def]
    a, b = sides
    for n in ("X", "Y"):
        a.create_mailbox(n)
        deliver(a, n)
    sync(a, b)
    a.delete_mailbox("X")
    b.delete_mailbox("Y")
    deliver(b, "X")  # a deletion wins over new mail on the other side (Dovecot)
    r = sync(a, b)
    same(a, b)
    assert set(snapshot(a)["boxes"]) == {"INBOX"}  # type: ignore[arg-type]
    assert r.mailboxes_deleted == 2


def test_subscriptions_latest_change_wins(sides) -> None:  # type: ignore[no-untyped-def]
    a, b = sides
    a.set_subscribed("S1", True)
    a.set_subscribed("S2", True)
    sync(a, b)
    assert sorted(b.subscriptions()) == ["S1", "S2"]
    b.set_subscribed("S1", False)
    _log(b, MailboxLogRecord(MailboxLogType.UNSUBSCRIBE, name_hash("S1"), int(time.time()) + 100))
    a.set_subscribed("S3", True)
    sync(a, b)
    same(a, b)
    assert sorted(a.subscriptions()) == ["S2", "S3"]


def test_same_name_created_independently_is_merged(sides) -> None:  # type: ignore[no-untyped-def]
    a, b = sides
    a.create_mailbox("Trash")
    b.create_mailbox("Trash")
    deliver(a, "Trash")
    deliver(b, "Trash")
    sync(a, b)
    same(a, b)
    assert len(messages(a, "Trash")) == 2


def test_same_name_different_guid_conflict_hook(sides) -> None:  # type: ignore[no-untyped-def]
    a, b = sides
    a.create_mailbox("Old")
    sync(a, b)
    b.create_mailbox("Work")
    deliver(b, "Work")
    a.rename_mailbox("Old", "Work")  # a known mailbox renamed onto b's new one
    deliver(a, "Work")
    r = sync(a, b)
    same(a, b)
    names = set(snapshot(a)["boxes"])  # type: ignore[arg-type]
    assert "Work" in names and len(names) == 3
    other = (names - {"INBOX", "Work"}).pop()
    assert other.startswith("Work-")
    assert r.conflicts >= 1
    assert len(messages(a, "Work")) == len(messages(a, other)) == 1


def test_uidvalidity_conflict_more_messages_wins(sides) -> None:  # type: ignore[no-untyped-def]
    a, b = sides
    a.create_mailbox("Box", guid="0123456789abcdef0123456789abcdef", uidvalidity=100)
    b.create_mailbox("Box", guid="0123456789abcdef0123456789abcdef", uidvalidity=200)
    deliver(a, "Box")
    deliver(a, "Box")
    deliver(b, "Box")
    sync(a, b)
    same(a, b)
    assert status(a, "Box").uidvalidity == status(b, "Box").uidvalidity == 100


def test_backup_discards_destination_changes(sides) -> None:  # type: ignore[no-untyped-def]
    a, b = sides
    a.create_mailbox("Box")
    for _ in range(3):
        deliver(a, "Box")
    deliver(a, "INBOX")
    sync(a, b, mode=SyncMode.BACKUP)
    same(a, b)
    before = snapshot(a)
    set_flags(b, "Box", 1, add={"\\Deleted"})
    expunge(b, "Box", 2)
    b.create_mailbox("Extra")
    deliver(b, "Box")  # destination UIDNEXT now above the source's: rebuild
    b.set_subscribed("Extra", True)
    r = sync(a, b, mode=SyncMode.BACKUP)
    assert snapshot(a) == before  # source untouched
    same(a, b)
    assert r.exit_code == 0


def test_backup_reverse(sides) -> None:  # type: ignore[no-untyped-def]
    a, b = sides
    deliver(b, "INBOX")
    b.create_mailbox("FromB")
    deliver(b, "FromB")
    a.create_mailbox("FromB")
    deliver(a, "FromB")
    deliver(a, "FromB")  # the destination's UIDNEXT is above the source's: rebuilt
    r = sync(a, b, mode=SyncMode.BACKUP, reverse=True)
    same(a, b)
    assert r.exit_code == 0


def test_backup_into_inbox_with_other_uids_makes_it_identical(sides) -> None:  # type: ignore[no-untyped-def]
    a, b = sides
    deliver(a, "INBOX")
    deliver(b, "INBOX")
    deliver(b, "INBOX", flags={"\\Seen"})
    before = snapshot(a)
    r = sync(a, b, mode=SyncMode.BACKUP)
    assert r.exit_code == 0, r.unapplied
    assert snapshot(a) == before
    same(a, b)  # same GUIDs, same UIDs: the destination INBOX was reset
    assert status(b, "INBOX").uidvalidity == status(a, "INBOX").uidvalidity
    assert status(b, "INBOX").uidnext == status(a, "INBOX").uidnext == 2
    r = sync(a, b, mode=SyncMode.BACKUP)
    assert r.exit_code == 0 and r.messages_copied == r.expunged == 0


def test_mailbox_reset_restarts_uids(sides) -> None:  # type: ignore[no-untyped-def]
    a, _b = sides
    deliver(a, "INBOX")
    deliver(a, "INBOX", flags={"\\Seen"})
    before = status(a, "INBOX")
    with a.open_mailbox("INBOX") as mb:
        st = mb.reset(before.uidvalidity + 7)
    assert (st.guid, st.uidvalidity, st.uidnext, st.messages) == (before.guid, before.uidvalidity + 7, 1, 0)
    assert st.highestmodseq > before.highestmodseq
    fresh = reopen(a)
    assert messages(fresh, "INBOX") == []
    with fresh.open_mailbox("INBOX") as mb:
        assert mb.expunges() == []
        assert mb.status().uidnext == 1
    assert deliver(fresh, "INBOX") == 1


def test_mailbox_reset_default_refuses() -> None:
    from dsync_core.errors import StorageError
    from dsync_core.storage import Mailbox

    class Bare(Mailbox):
        guid = "0" * 32
        status = records = expunges = open_body = save = update_flags = expunge = update_status = None  # type: ignore

    Bare.__abstractmethods__ = frozenset()
    with pytest.raises(StorageError, match="can't reset"):
        Bare(None, "INBOX").reset(5)  # type: ignore[arg-type]


def test_oneway_never_deletes_and_leaves_source_alone(sides) -> None:  # type: ignore[no-untyped-def]
    a, b = sides
    a.create_mailbox("Box")
    deliver(a, "Box")
    deliver(a, "Box")
    sync(a, b)
    expunge(a, "Box", 1)
    a.delete_mailbox("Box") if False else None
    deliver(b, "Box")
    b.create_mailbox("Mine")
    deliver(a, "Box")
    src = snapshot(a)
    sync(a, b, mode=SyncMode.ONEWAY)
    assert snapshot(a) == src
    got = {m[1] for m in messages(b, "Box")}
    assert {m[1] for m in messages(a, "Box")} <= got
    assert len(got) == 4  # the expunged one stays, b's own stays, the new one arrived
    assert "Mine" in snapshot(b)["boxes"]  # type: ignore[operator]
    # A second run changes nothing (no endless renumbering).
    before = snapshot(b)
    sync(a, b, mode=SyncMode.ONEWAY)
    assert snapshot(b) == before


def test_oneway_reverse_flows_destination_to_source(sides) -> None:  # type: ignore[no-untyped-def]
    a, b = sides
    deliver(b, "INBOX")
    dst = snapshot(b)
    sync(a, b, mode=SyncMode.ONEWAY, reverse=True)
    assert snapshot(b) == dst
    assert len(messages(a, "INBOX")) == 1


def test_local_copy_when_guid_exists_elsewhere(sides) -> None:  # type: ignore[no-untyped-def]
    a, b = sides
    a.create_mailbox("Archive")
    deliver(a, "INBOX")
    sync(a, b)
    guid = messages(a, "INBOX")[0][1]
    with a.open_mailbox("INBOX") as src, a.open_mailbox("Archive") as dst:
        from dsync_core.model import SaveRequest

        dst.save([SaveRequest(src.open_body(1), guid=guid)])
    r = sync(a, b)
    same(a, b)
    assert r.messages_copied_locally == 1 and r.messages_copied == 0


class CountingReplica(LocalReplica):
    opened = 0

    def bodies(self, guid, uids):  # type: ignore[no-untyped-def]
        for uid, body in super().bodies(guid, uids):
            CountingReplica.opened += 1
            yield uid, body


def _count_body_opens(st):  # type: ignore[no-untyped-def]
    """Wrap open_body of every mailbox the storage opens."""
    calls = []
    orig = st.open_mailbox

    def open_mailbox(name):  # type: ignore[no-untyped-def]
        mb = orig(name)
        inner = mb.open_body

        def counted(uid):  # type: ignore[no-untyped-def]
            calls.append(uid)
            return inner(uid)

        mb.open_body = counted
        return mb

    st.open_mailbox = open_mailbox
    return calls


@pytest.mark.parametrize("algorithm", [SyncAlgorithm.FAST, SyncAlgorithm.STATEFUL])
def test_no_change_run_reads_no_message(sides, algorithm) -> None:  # type: ignore[no-untyped-def]
    a, b = sides
    a.create_mailbox("Box")
    for _ in range(3):
        deliver(a, "Box")
        deliver(b, "INBOX")
    r = sync(a, b, algorithm=algorithm, state="")
    calls = _count_body_opens(a) + []
    ca, cb = _count_body_opens(a), _count_body_opens(b)
    r2 = sync(a, b, algorithm=algorithm, state=r.state)
    assert ca == [] and cb == [] and calls == []
    assert r2.mailboxes_skipped == r2.mailboxes == 2


def test_stateful_incremental(sides) -> None:  # type: ignore[no-untyped-def]
    a, b = sides
    for _ in range(3):
        deliver(a, "INBOX")
    r = sync(a, b, algorithm=SyncAlgorithm.STATEFUL, state="")
    assert decode_state(r.state)
    set_flags(b, "INBOX", 2, add={"\\Seen"})
    expunge(a, "INBOX", 1)
    deliver(b, "INBOX")
    r = sync(a, b, algorithm=SyncAlgorithm.STATEFUL, state=r.state)
    same(a, b)
    assert r.mailboxes_skipped == 0 and r.expunged == 1 and r.messages_copied == 1
    r = sync(a, b, algorithm=SyncAlgorithm.STATEFUL, state=r.state)
    assert r.mailboxes_skipped == 1


def test_stateful_sees_changes_on_either_side(sides) -> None:  # type: ignore[no-untyped-def]
    a, b = sides
    deliver(a, "INBOX")
    r = sync(a, b, algorithm=SyncAlgorithm.STATEFUL, state="")
    set_flags(b, "INBOX", 1, add={"\\Flagged"})
    sync(a, b, algorithm=SyncAlgorithm.STATEFUL, state=r.state)
    assert messages(a, "INBOX")[0][2] == {"\\Flagged"}


def test_state_string_roundtrip_and_errors() -> None:
    from dsync_core.brain import StateEntry

    e = StateEntry("0123456789abcdef0123456789abcdef", 7, 42, 100, 101, 40)
    text = encode_state([e])
    assert "=" not in text and "+" not in text and "/" not in text
    assert decode_state(text) == {e.guid: e}
    assert decode_state("") == {}
    bad = text[:-3] + ("A" if text[-3] != "A" else "B") + text[-2:]
    with pytest.raises(StateError):
        decode_state(bad)
    with pytest.raises(StateError):
        decode_state("not base64 !!")


def test_bad_state_raises(sides) -> None:  # type: ignore[no-untyped-def]
    a, b = sides
    with pytest.raises(StateError):
        sync(a, b, algorithm=SyncAlgorithm.STATEFUL, state="AQAAAHm4+Jk=")


def test_stale_state_falls_back_to_full_compare(sides) -> None:  # type: ignore[no-untyped-def]
    a, b = sides
    deliver(a, "INBOX")
    r = sync(a, b, algorithm=SyncAlgorithm.STATEFUL, state="")
    with b.open_mailbox("INBOX") as mb:
        mb.update_status(uidvalidity=status(b, "INBOX").uidvalidity + 5)
    deliver(a, "INBOX")
    r = sync(a, b, algorithm=SyncAlgorithm.STATEFUL, state=r.state)
    same(a, b)
    assert len(messages(b, "INBOX")) == 2


def test_safety_refuses_wiped_side_unless_forced(sides) -> None:  # type: ignore[no-untyped-def]
    a, b = sides
    for _ in range(12):
        deliver(a, "INBOX")
    r = sync(a, b, algorithm=SyncAlgorithm.STATEFUL, state="")
    expunge(b, "INBOX", *range(1, 11))
    with pytest.raises(SafetyError, match="destination has only 2 of the 12"):
        sync(a, b, algorithm=SyncAlgorithm.STATEFUL, state=r.state)
    assert len(messages(a, "INBOX")) == 12  # nothing happened
    sync(a, b, algorithm=SyncAlgorithm.STATEFUL, state=r.state, force=True)
    assert len(messages(a, "INBOX")) == 2


def test_filters_apply_to_new_mail_only(sides) -> None:  # type: ignore[no-untyped-def]
    a, b = sides
    deliver(a, "INBOX", internaldate=1000)
    deliver(a, "INBOX", internaldate=5000)
    sync(a, b, since=2000)
    assert len(messages(b, "INBOX")) == 1


def test_mailbox_filter_and_tree_only(sides) -> None:  # type: ignore[no-untyped-def]
    a, b = sides
    a.create_mailbox("One")
    a.create_mailbox("Two")
    deliver(a, "One")
    deliver(a, "Two")
    sync(a, b, mailbox="")
    assert messages(b, "One") == [] and messages(b, "Two") == []
    sync(a, b, mailbox="One")
    assert len(messages(b, "One")) == 1 and messages(b, "Two") == []


def test_hooks_and_progress(sides) -> None:  # type: ignore[no-untyped-def]
    from dsync_core import hookimpl
    from dsync_core.plugin.manager import get_plugin_manager

    seen: list[str] = []

    class P:
        @hookimpl
        def dsync_sync_started(self, request):  # type: ignore[no-untyped-def]
            seen.append("started")

        @hookimpl
        def dsync_sync_finished(self, request, report):  # type: ignore[no-untyped-def]
            seen.append(f"finished {report.messages_copied}")

        @hookimpl
        def dsync_filter_message(self, mailbox, record):  # type: ignore[no-untyped-def]
            return record.internaldate != 1234

    a, b = sides
    deliver(a, "INBOX", internaldate=1234)
    deliver(a, "INBOX", internaldate=99)
    events = []
    p = P()
    get_plugin_manager().register(p)
    try:
        sync(a, b, progress=events.append)
    finally:
        get_plugin_manager().unregister(p)
    assert seen == ["started", "finished 1"]
    assert [e.kind for e in events][0] == "run_start" and events[-1].kind == "run_done"


def test_notify_hook_fires_only_with_notify(sides) -> None:  # type: ignore[no-untyped-def]
    from dsync_core import hookimpl
    from dsync_core.plugin.manager import get_plugin_manager

    seen: list[int] = []

    class P:
        @hookimpl
        def dsync_notify(self, request, report):  # type: ignore[no-untyped-def]
            assert request.notify
            seen.append(report.messages_copied)

    a, b = sides
    deliver(a, "INBOX")
    p = P()
    get_plugin_manager().register(p)
    try:
        sync(a, b)
        assert seen == []
        deliver(a, "INBOX")
        sync(a, b, notify=True)
    finally:
        get_plugin_manager().unregister(p)
    assert seen == [1]


def test_lock_timeout(sides) -> None:  # type: ignore[no-untyped-def]
    from dsync_core.errors import LockTimeoutError

    a, b = sides
    with b.lock(1):
        import multiprocessing  # noqa: F401

        # fcntl locks are per process: take it from a child to make it conflict.
    r = sync(a, b, lock_timeout=1)
    assert r.exit_code == 0
    assert LockTimeoutError.exit_code == 75


def test_interrupted_renumber_converges(sides) -> None:  # type: ignore[no-untyped-def]
    a, b = sides
    deliver(a, "INBOX")
    sync(a, b)
    deliver(a, "INBOX")
    deliver(b, "INBOX")
    # Simulate a run killed after the saves, before the expunges.
    from dsync_core import brain

    real = brain.apply_plan

    def saves_only(guid, plan, x, y, mode):  # type: ignore[no-untyped-def]
        plan.a.flag_updates.clear(), plan.b.flag_updates.clear()
        plan.a.expunge_local.clear(), plan.b.expunge_local.clear()
        plan.a.expunge_peer.clear(), plan.b.expunge_peer.clear()
        return real(guid, plan, x, y, mode)

    import dsync_core.sync as syncmod

    syncmod.apply_plan = saves_only
    try:
        sync(a, b, algorithm=SyncAlgorithm.FULL)
    finally:
        syncmod.apply_plan = real
    sync(a, b, algorithm=SyncAlgorithm.FULL)
    same(a, b)
    guids = [m[1] for m in messages(a, "INBOX")]
    assert len(guids) == len(set(guids)) == 3


def test_backup_reset_inbox_dovecot_agrees(doveadm, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """After a backup reset the destination INBOX, Dovecot (which had indexed the old
    messages under the same UIDVALIDITY) sees exactly our UIDs and GUIDs, without repairs."""
    import os

    from dsync_core.api import open_storage
    from dsync_core.settings import Settings

    src = open_storage(f"maildir:{tmp_path / 'src'}:LAYOUT=fs", Settings())
    root = os.path.join(doveadm.base, "Maildir")
    loc = f"maildir:{root}:LAYOUT=fs"
    os.makedirs(root)
    doveadm.chown(doveadm.base)
    for i in range(3):
        doveadm.run(loc, "save", "-m", "INBOX", input=f"Subject: d{i}\nMessage-ID: <d{i}@x>\n\nx\n".encode())
    doveadm.run(loc, "flags", "add", "\\Seen", "mailbox", "INBOX", "uid", "2")
    dst = open_storage(loc, Settings())
    with src.open_mailbox("INBOX") as mb:  # same UIDVALIDITY: only the UIDs tell them apart
        mb.update_status(uidvalidity=status(dst, "INBOX").uidvalidity)
    deliver(src, "INBOX", flags={"\\Flagged"})
    deliver(src, "INBOX")
    r = sync(src, dst, mode=SyncMode.BACKUP)
    assert r.exit_code == 0, r.unapplied
    same(src, dst)
    doveadm.chown(doveadm.base)
    theirs = doveadm.fetch(loc)
    assert {(u, g, f) for (_m, u), (g, f) in theirs.items()} == {(u, g, f) for u, g, f, _k in messages(src, "INBOX")}
    st = doveadm.status(loc)["INBOX"]
    mine = status(dst, "INBOX")
    assert (int(st["uidvalidity"]), int(st["uidnext"]), int(st["messages"])) == (mine.uidvalidity, 3, 2)


def test_rename_onto_name_held_only_by_a_directory(sides) -> None:  # type: ignore[no-untyped-def]
    a, b = sides
    a.create_mailbox("A/Sub")
    deliver(a, "A/Sub")
    a.create_mailbox("C/Other")
    a.rename_mailbox("A/Sub", "C")  # C exists only as the directory above C/Other
    names = {i.name: i.selectable for i in a.list_mailboxes()}
    assert names["C"] is True and names["C/Other"] is True
    assert len(messages(a, "C")) == 1
    with pytest.raises(ExistsError, match="already exists"):
        a.rename_mailbox("C/Other", "C")  # a real mailbox holds the name now


def test_rename_child_onto_parent_directory_both_sides(sides) -> None:  # type: ignore[no-untyped-def]
    """One side renames A/Sub -> C, the other renames the directory A -> C (C/Sub)."""
    a, b = sides
    a.create_mailbox("A/Sub")
    deliver(a, "A/Sub")
    sync(a, b)
    a.rename_mailbox("A/Sub", "C")
    b.rename_mailbox("A", "C")
    r = sync(a, b)
    assert r.exit_code == 0, r.unapplied
    same(a, b)
    r = sync(a, b)
    assert r.exit_code == 0 and r.mailboxes_renamed == 0
    same(a, b)


def test_same_message_at_other_uid_gets_one_flag_state(sides) -> None:  # type: ignore[no-untyped-def]
    """-1 leaves the source's message at another UID on the destination; a flag change
    on one copy must not need a second two-way run to converge."""
    a, b = sides
    deliver(a, "INBOX")
    deliver(b, "INBOX")
    sync(a, b, mode=SyncMode.ONEWAY)
    set_flags(a, "INBOX", 1, add_kw={"work"})
    sync(a, b)
    same(a, b)
    r = sync(a, b)
    assert r.messages_copied == r.flags_changed == r.expunged == 0
    assert {m[3] for m in messages(a, "INBOX")} == {frozenset(), frozenset({"work"})}


def test_stateful_after_oneway_still_sees_destination_changes(sides) -> None:  # type: ignore[no-untyped-def]
    a, b = sides
    deliver(a, "INBOX")
    r = sync(a, b, algorithm=SyncAlgorithm.STATEFUL, state="")
    set_flags(b, "INBOX", 1, add={"\\Flagged"})
    deliver(b, "INBOX")
    r = sync(a, b, mode=SyncMode.ONEWAY, algorithm=SyncAlgorithm.STATEFUL, state=r.state)
    assert len(messages(a, "INBOX")) == 1  # -1 leaves the source alone
    r = sync(a, b, algorithm=SyncAlgorithm.STATEFUL, state=r.state)
    same(a, b)
    assert len(messages(a, "INBOX")) == 2 and messages(a, "INBOX")[0][2] == {"\\Flagged"}


def test_fast_sync_sees_one_change_on_each_side(sides) -> None:  # type: ignore[no-untyped-def]
    """Equal counters after one change on each side: the marks the last run left on the
    destination tell that both changed (Maildir); a second run then skips the mailbox."""
    a, b = sides
    for _ in range(3):
        deliver(a, "INBOX")
    a.create_mailbox("Other")
    deliver(a, "Other")
    _sync(a, b)  # fast (the default)
    set_flags(a, "INBOX", 1, add={"\\Seen"})
    set_flags(b, "INBOX", 2, add={"\\Flagged"})
    assert status(a, "INBOX").highestmodseq == status(b, "INBOX").highestmodseq  # the blind spot's setup
    r = _sync(a, b)
    if b.sync_marks("any") is None:
        # No marks (memstore): Dovecot's rule, blind to it.
        assert (r.mailboxes, r.mailboxes_skipped, r.flags_changed) == (2, 2, 0)
        return
    assert (r.mailboxes, r.mailboxes_skipped, r.flags_changed) == (2, 1, 2)
    same(a, b)
    assert messages(a, "INBOX")[0][2] == {"\\Seen"} and messages(a, "INBOX")[1][2] == {"\\Flagged"}
    assert _sync(a, b).mailboxes_skipped == 2
    # Backup keeps its own marks: the destination's own change is seen too.
    assert _sync(a, b, mode=SyncMode.BACKUP).mailboxes_skipped == 0  # first backup: no marks yet
    set_flags(b, "INBOX", 3, add={"\\Draft"})
    set_flags(a, "INBOX", 1, add={"\\Answered"})
    r = _sync(a, b, mode=SyncMode.BACKUP)
    assert r.mailboxes_skipped == 1
    same(a, b)


def test_a_save_batch_holds_a_bounded_amount_of_bodies(sides, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Bodies held whole in memory (fetched ahead) are saved in batches of at most about
    SAVE_BATCH_BYTES, not SAVE_BATCH bodies whatever their sizes; small ones still go 200
    to a batch."""
    import dsync_core.replica as replica
    from dsync_core.replica import ImportBatch, NewMessage
    from dsync_core.streams import CountedBody

    _a, b = sides
    b.create_mailbox("Box")
    with b.open_mailbox("Box") as mb:
        guid = mb.guid
    monkeypatch.setattr(replica, "SAVE_BATCH_BYTES", 64 * 1024)
    batches: list[int] = []
    orig = b.open_mailbox

    def open_mailbox(name):  # type: ignore[no-untyped-def]
        mb = orig(name)
        inner = mb.save

        def save(reqs):  # type: ignore[no-untyped-def]
            reqs = list(reqs)
            batches.append(len(reqs))
            return inner(reqs)

        mb.save = save
        return mb

    b.open_mailbox = open_mailbox

    def body(i: int, size: int) -> bytes:
        head = f"Message-ID: <held{i}@example.org>\r\n\r\n".encode()
        return head + b"x" * (size - len(head))

    sizes = [10 * 1024] * 20 + [100] * 250
    saves = tuple(NewMessage(uid=i + 1, guid="") for i in range(len(sizes)))
    bodies = iter((i + 1, CountedBody(body(i, s))) for i, s in enumerate(sizes))
    result = LocalReplica(b).import_batch(guid, ImportBatch(saves=saves), bodies)
    assert result.errors == () and result.saved == len(sizes)
    # 64 KiB hold 7 bodies of 10 KiB (the 7th passes the bound); the third batch ends
    # with small ones once the bound is passed, the rest go SAVE_BATCH to a batch.
    assert batches == [7, 7, 6 + 41, 200, 9]
    assert [m[0] for m in messages(b, "Box")] == list(range(1, len(sizes) + 1))


def test_a_failed_body_read_saves_the_batches_before_it(sides, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The next save batch is gathered (and staged) while the current one is saved: when
    reading a body of the next batch fails, the current batch is still saved, the error
    names the failed batch's UIDs, and nothing of it is left behind (no tmp file)."""
    import os

    import dsync_core.replica as replica
    from dsync_core.errors import ProtocolError
    from dsync_core.replica import ImportBatch, NewMessage
    from dsync_core.streams import CountedBody

    _a, b = sides
    b.create_mailbox("Box")
    with b.open_mailbox("Box") as mb:
        guid = mb.guid
    monkeypatch.setattr(replica, "SAVE_BATCH", 10)

    def bodies():  # type: ignore[no-untyped-def]
        for i in range(25):
            if i == 14:
                raise ProtocolError("server connection lost mid-FETCH")
            yield i + 1, CountedBody(f"Message-ID: <p{i}@example.org>\r\n\r\nbody {i}\r\n".encode())

    saves = tuple(NewMessage(uid=i + 1, guid="") for i in range(25))
    result = LocalReplica(b).import_batch(guid, ImportBatch(saves=saves), bodies())
    assert [m[0] for m in messages(b, "Box")] == list(range(1, 11))
    assert result.saved == 10
    assert result.errors == ("Box: saving UIDs 11..15 failed: server connection lost mid-FETCH",)
    root = getattr(b, "root", None)
    if root is not None:
        assert [f for d, _s, fs in os.walk(root) if os.path.basename(d) == "tmp" for f in fs] == []
