"""A fast sync after a complete one reads only what changed since (the marks it left on
the destination work as a state), and falls back to a full compare whenever they can't
be trusted. Maildir on both sides (the memstore keeps no marks)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_engine_helpers import deliver, messages, open_sides, set_flags, snapshot, status

from dsync_core import sync
from dsync_core.model import SyncAlgorithm, SyncMode
from dsync_core.replica import ChangeSet, LocalReplica

N = 40


class Counting(LocalReplica):
    """Counts the message records the engine asked for."""

    def __init__(self, storage) -> None:  # type: ignore[no-untyped-def]
        super().__init__(storage)
        self.read = 0

    def changes(self, guid: str, since_modseq: int = 0, since_uid: int = 0) -> ChangeSet:
        ch = super().changes(guid, since_modseq, since_uid)
        self.read += len(ch.records)
        return ch


@pytest.fixture
def pair(tmp_path) -> Iterator[tuple]:  # type: ignore[type-arg]
    for a, b in open_sides(tmp_path, "maildir"):
        for _ in range(N):
            deliver(a, "INBOX")
        yield a, b


def run(a, b, mode: SyncMode = SyncMode.TWOWAY, **kw) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    ra, rb = Counting(a), Counting(b)
    report = sync(ra, rb, mode=mode, algorithm=SyncAlgorithm.FAST, **kw)
    assert not report.unapplied
    return ra.read, rb.read


@pytest.mark.parametrize("mode", [SyncMode.TWOWAY, SyncMode.BACKUP])
def test_fast_sync_after_a_complete_one_reads_only_the_changes(pair, mode: SyncMode) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    assert run(a, b, mode) == (N, 0)  # the first run compares everything
    set_flags(a, "INBOX", 7, add={"\\Seen"}, add_kw={"work"})
    deliver(a, "INBOX")
    read_a, read_b = run(a, b, mode)
    assert read_a <= 2 and read_b <= 2, (read_a, read_b)
    assert snapshot(a) == snapshot(b)
    assert messages(b, "INBOX")[6][2:] == ({"\\Seen"}, {"work"})
    assert [m[0] for m in messages(b, "INBOX")][-1] == N + 1  # new mail kept its UID
    # And a two-way change in the other direction too.
    if mode is SyncMode.TWOWAY:
        set_flags(b, "INBOX", 3, add={"\\Flagged"})
        read_a, read_b = run(a, b, mode)
        assert read_a <= 2 and read_b <= 2
        assert snapshot(a) == snapshot(b)


def test_backup_after_the_destination_changed_compares_fully(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    run(a, b, SyncMode.BACKUP)
    set_flags(b, "INBOX", 5, add={"\\Deleted"})  # the destination's own change: discarded
    deliver(b, "INBOX")
    read_a, _ = run(a, b, SyncMode.BACKUP)
    assert read_a == N
    assert snapshot(a) == snapshot(b)


def test_one_way_runs_never_plan_from_marks(pair) -> None:  # type: ignore[no-untyped-def]
    """-1 leaves the destination's own mail unsynced: a mark can't say "equal"."""
    a, b = pair
    run(a, b, SyncMode.ONEWAY)
    deliver(b, "INBOX")
    set_flags(a, "INBOX", 2, add={"\\Seen"})
    read_a, read_b = run(a, b, SyncMode.ONEWAY)
    assert read_a == N and read_b == N + 1
    assert len(messages(b, "INBOX")) == N + 1


def test_a_filtered_run_leaves_no_equal_mark(pair) -> None:  # type: ignore[no-untyped-def]
    """Mail held back by -t/-e (or a filter hook) makes the sides differ: the next
    unfiltered run must compare fully and copy it."""
    a, b = pair
    far_future = 4_000_000_000
    run(a, b, since=far_future)
    assert messages(b, "INBOX") == []
    set_flags(a, "INBOX", 1, add={"\\Seen"})
    read_a, _ = run(a, b)
    assert read_a == N
    assert snapshot(a) == snapshot(b)


def test_marks_from_a_destination_rolled_back_are_not_trusted(pair, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A destination whose counters went backwards (restored from an old copy) is
    compared fully, never planned from the newer marks."""
    a, b = pair
    run(a, b)
    deliver(a, "INBOX")
    run(a, b)
    # Forge the marks to claim a higher destination modseq than it has.
    key, marks = _only_marks(b)
    forged = {g: (*m[:7], m[7] + 1000, m[8]) for g, m in marks.items()}
    b.set_sync_marks(key, forged)
    set_flags(a, "INBOX", 3, add={"\\Answered"})
    read_a, _ = run(a, b)
    assert read_a == N + 1
    assert snapshot(a) == snapshot(b)
    assert status(a, "INBOX").messages == status(b, "INBOX").messages == N + 1


def _peers(storage) -> list[str]:  # type: ignore[no-untyped-def]
    import json
    import os

    path = os.path.join(storage.layout.index_root, "dsync.sync-marks")
    with open(path) as f:
        return list(json.load(f)["peers"])


def _only_marks(storage) -> tuple[str, dict[str, tuple[int, ...]]]:  # type: ignore[no-untyped-def]
    (key,) = _peers(storage)
    marks = storage.sync_marks(key)
    assert marks is not None
    return key, marks


@pytest.mark.parametrize("mode", [SyncMode.TWOWAY, SyncMode.BACKUP, SyncMode.ONEWAY])
def test_first_copy_of_a_big_mailbox_goes_window_by_window(pair, mode: SyncMode, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Into an empty mailbox, records are read and copied a window at a time (memory
    flat in the mailbox size); the result is what a whole-mailbox plan gives."""
    import importlib

    from test_engine_helpers import expunge

    sync_module = importlib.import_module("dsync_core.sync")  # the module, not the function
    a, b = pair
    monkeypatch.setattr(sync_module, "COPY_WINDOW", 7)
    set_flags(a, "INBOX", 3, add={"\\Seen"}, add_kw={"work"})
    expunge(a, "INBOX", 8, 9, 10, 11, 12, 13, 14, 15, N)  # a whole window without messages, and the last UID
    ra, rb = Counting(a), Counting(b)
    windows: list[int] = []
    orig = LocalReplica.records

    def records(self, guid, uids):  # type: ignore[no-untyped-def]
        uids = list(uids)
        windows.append(len(uids))
        return orig(self, guid, uids)

    monkeypatch.setattr(LocalReplica, "records", records)
    report = sync(ra, rb, mode=mode)
    assert not report.unapplied and report.messages_copied == N - 9
    assert ra.read == 0 and max(windows) <= 7  # never the whole mailbox at once
    assert snapshot(a) == snapshot(b)
    assert status(b, "INBOX").uidnext == status(a, "INBOX").uidnext == N + 1
    assert messages(b, "INBOX")[2][2:] == ({"\\Seen"}, {"work"})
    again = sync(a, b, mode=mode)
    assert again.messages_copied == 0 and not again.unapplied


def test_no_incremental_plan_when_a_side_forgot_its_expunges(pair, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A storage whose expunge history does not reach back to the mark (a rotated log, an
    IMAP server without QRESYNC) could hide an expunge: the run compares fully, so the
    expunge still wins and nothing comes back."""
    from dsync_maildir.storage import MaildirMailbox
    from test_engine_helpers import expunge

    a, b = pair
    run(a, b)
    expunge(b, "INBOX", 5)
    set_flags(a, "INBOX", 5, add={"\\Seen"})  # changed on the other side since
    monkeypatch.setattr(MaildirMailbox, "expunges", lambda self, since_modseq=0: [])
    monkeypatch.setattr(MaildirMailbox, "expunges_complete_since", lambda self: 10**9)
    read_a, read_b = run(a, b)
    assert read_a >= N  # a full compare
    assert 5 not in [m[0] for m in messages(a, "INBOX")]
    assert snapshot(a) == snapshot(b) and len(messages(b, "INBOX")) == N - 1
