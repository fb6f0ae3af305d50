"""dsync_core.changelog: modseqs, expunge records and the mailbox log in SQLite."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsync_core.changelog import Entry, SqliteChangeLog
from dsync_core.errors import CorruptError
from dsync_core.model import ExpungeRecord, MailboxLogRecord, MailboxLogType

G = "11111111111111111111111111111111"
SEEN = frozenset({"\\Seen"})


@pytest.fixture
def log():  # type: ignore[no-untyped-def]
    cl = SqliteChangeLog(":memory:")
    yield cl
    cl.close()


def e(uid: int, **kw: object) -> Entry:
    return Entry(uid=uid, guid=kw.pop("guid", f"guid{uid}"), **kw)  # type: ignore[arg-type]


def test_one_modseq_per_commit(log) -> None:  # type: ignore[no-untyped-def]
    mb = log.mailbox(G)
    assert mb.meta().highestmodseq == 0
    assert mb.commit(upserts=[e(1), e(2)]) == 1
    assert mb.commit(upserts=[e(3)]) == 2
    assert [(x.uid, x.modseq) for x in mb.entries()] == [(1, 1), (2, 1), (3, 2)]
    assert mb.meta().highestmodseq == 2


def test_unchanged_upsert_keeps_modseq(log) -> None:  # type: ignore[no-untyped-def]
    mb = log.mailbox(G)
    mb.commit(upserts=[e(1, flags=SEEN, keywords=frozenset({"k"}))])
    assert mb.commit(upserts=[e(1, flags=SEEN, keywords=frozenset({"k"}), extra="renamed-file")]) == 1
    (x,) = mb.entries()
    assert (x.modseq, x.extra) == (1, "renamed-file"), "extra is stored even when the modseq stays"
    assert mb.commit(upserts=[e(1, keywords=frozenset({"k"}))]) == 2
    assert next(iter(mb.entries())).modseq == 2


def test_entries_since(log) -> None:  # type: ignore[no-untyped-def]
    mb = log.mailbox(G)
    mb.commit(upserts=[e(u) for u in (5, 1, 3)])
    mb.commit(upserts=[e(3, flags=SEEN)])
    mb.commit(upserts=[e(1, flags=SEEN)])
    assert [x.uid for x in mb.entries(0)] == [1, 3, 5]
    assert [x.uid for x in mb.entries(1)] == [1, 3], "ascending UID, not modseq order"
    assert [x.uid for x in mb.entries(2)] == [1]
    assert list(mb.entries(3)) == []
    assert [x.uid for x in mb.entries_by_uid([5, 9, 1])] == [1, 5]


def test_expunge_keeps_guid(log) -> None:  # type: ignore[no-untyped-def]
    mb = log.mailbox(G)
    mb.commit(upserts=[e(1), e(2), e(3)])
    assert mb.commit(expunged=[2, 3, 99]) == 2
    assert mb.expunges(0) == [ExpungeRecord(2, "guid2", 2), ExpungeRecord(3, "guid3", 2)]
    assert mb.expunges(2) == []
    assert [x.uid for x in mb.entries()] == [1]
    assert mb.commit(expunged=[99]) == 2, "expunging nothing is no change"


def test_known_expunges_are_added_once_with_their_modseq(log) -> None:  # type: ignore[no-untyped-def]
    mb = log.mailbox(G)
    mb.commit(upserts=[e(1), e(2)])
    mb.commit(expunged=[2])
    # UID 2 is already known (our own expunge), UID 1 is listed: only UID 5 is news.
    learnt = [ExpungeRecord(5, "", 7), ExpungeRecord(2, "x", 9), ExpungeRecord(1, "y", 9)]
    assert mb.commit(known_expunges=learnt, min_modseq=7) == 7
    assert mb.expunges(0) == [ExpungeRecord(2, "guid2", 2), ExpungeRecord(5, "", 7)]
    assert mb.commit(known_expunges=learnt) == 7, "already known: no change"
    assert len(mb.expunges(0)) == 2


def test_entry_modseq_above_the_next_is_kept(log) -> None:  # type: ignore[no-untyped-def]
    mb = log.mailbox(G)
    mb.commit(upserts=[e(1), e(2)])
    # A backend that knows better per-message modseqs (Dovecot's) passes them; never lower
    # than the commit's own modseq, so entries(since) still finds every change.
    assert mb.commit(upserts=[e(1, flags=SEEN, modseq=9), e(2, flags=SEEN, modseq=1)]) == 9
    assert [(x.uid, x.modseq) for x in mb.entries()] == [(1, 9), (2, 2)]
    assert [x.uid for x in mb.entries(1)] == [1, 2]


def test_meta_counts_and_stamp(log) -> None:  # type: ignore[no-untyped-def]
    mb = log.mailbox(G)
    mb.commit(upserts=[e(1, flags=SEEN), e(2), e(3, flags=frozenset({"\\Flagged"}))], stamp="scan-1")
    m = mb.meta()
    assert (m.messages, m.unseen, m.stamp) == (3, 2, "scan-1")
    mb.commit(expunged=[2])
    assert (mb.meta().messages, mb.meta().unseen, mb.meta().stamp) == (2, 1, "scan-1")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.lists(st.tuples(st.integers(1, 12), st.booleans()), max_size=6),
                          st.lists(st.integers(1, 14), max_size=4), st.booleans()), max_size=12))
def test_stored_counts_follow_every_commit(script: list) -> None:  # type: ignore[type-arg]
    """messages/unseen are kept in step by commits (not counted per status): after any
    sequence of upserts (a UID twice in one commit too), expunges and resets they equal a
    count of the rows, also as read by another connection and after an older writer that
    did not keep them (counts whose modseq is stale are counted again)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "log.sqlite")
        cl = SqliteChangeLog(path)
        mb = cl.mailbox(G)
        try:
            for upserts, expunged, reset in script:
                mb.commit(upserts=[e(u, flags=SEEN if seen else frozenset()) for u, seen in upserts],
                          expunged=expunged)
                if reset:
                    mb.reset()
                real = cl.db.execute("SELECT count(*), coalesce(sum(1 - seen), 0) FROM msg").fetchone()
                assert (mb.meta().messages, mb.meta().unseen) == tuple(real)
                other = SqliteChangeLog(path)
                assert (other.mailbox(G).meta().messages, other.mailbox(G).meta().unseen) == tuple(real)
                other.close()
            # A writer that changed rows without keeping the counts: its modseq gives it away.
            cl.db.execute("INSERT OR REPLACE INTO msg VALUES (?, 99, 'g', '', '', 1, 0, 1, 1, 'x', 0)", (G,))
            cl.db.execute("UPDATE mailbox SET highestmodseq = highestmodseq + 1 WHERE guid=?", (G,))
            fresh = SqliteChangeLog(path)
            real = fresh.db.execute("SELECT count(*), coalesce(sum(1 - seen), 0) FROM msg").fetchone()
            assert (fresh.mailbox(G).meta().messages, fresh.mailbox(G).meta().unseen) == tuple(real)
            fresh.mailbox(G).commit(upserts=[e(100)])
            assert fresh.mailbox(G).meta().messages == real[0] + 1
            fresh.close()
        finally:
            cl.close()


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text("abc/", min_size=1, max_size=4), st.integers(1, 10**6), max_size=40),
       st.sets(st.text("abc/", min_size=1, max_size=4), max_size=40))
def test_compare_extras_is_two_set_differences(stored: dict, listed: set) -> None:  # type: ignore[type-arg]
    """A listing against the entries' names: the entries not listed come back with their
    UIDs, the names no entry has stay in the listing; as the generic implementation does."""
    from dsync_core.changelog import MailboxChanges

    cl = SqliteChangeLog(":memory:")
    mb = cl.mailbox(G)
    try:
        uids = {extra: n for n, extra in enumerate(sorted(stored), 1)}
        mb.commit(upserts=[e(uid, extra=extra) for extra, uid in uids.items()])
        left = set(listed)
        gone = mb.compare_extras(left)
        assert gone == {x: u for x, u in uids.items() if x not in listed}
        assert left == listed - uids.keys()
        generic = set(listed)
        assert MailboxChanges.compare_extras(mb, generic) == gone and generic == left
    finally:
        cl.close()


def test_compare_extras_over_many_chunks(log) -> None:  # type: ignore[no-untyped-def]
    mb = log.mailbox(G)
    mb.commit(upserts=[e(uid, extra=f"cur/{uid}:2,") for uid in range(1, 20001)])
    listed = {f"cur/{uid}:2," for uid in range(2, 20001)} | {"cur/1:2,S", "new/20001"}
    assert mb.compare_extras(listed) == {"cur/1:2,": 1}
    assert listed == {"cur/1:2,S", "new/20001"}


def test_min_modseq_and_reset(log) -> None:  # type: ignore[no-untyped-def]
    mb = log.mailbox(G)
    assert mb.commit(min_modseq=100) == 100
    assert mb.commit(upserts=[e(1)]) == 101
    mb.reset()
    assert list(mb.entries()) == [] and mb.expunges() == []
    assert mb.meta().highestmodseq == 101, "a reset never lowers HIGHESTMODSEQ"
    assert mb.commit(upserts=[e(1)]) == 102


def test_mailboxes_are_separate(log) -> None:  # type: ignore[no-untyped-def]
    a, b = log.mailbox(G), log.mailbox("2" * 32)
    a.commit(upserts=[e(1)])
    a.commit(upserts=[e(2)])
    assert b.commit(upserts=[e(1)]) == 1
    log.forget_mailbox(G)
    assert list(log.mailbox(G).entries()) == [] and log.mailbox(G).meta().highestmodseq == 0
    assert [x.uid for x in b.entries()] == [1]


def test_mailbox_log(log) -> None:  # type: ignore[no-untyped-def]
    recs = [
        MailboxLogRecord(MailboxLogType.DELETE_MAILBOX, G, 10),
        MailboxLogRecord(MailboxLogType.RENAME, "ab" * 16, 5),
    ]
    log.append_mailbox_log(recs[:1])
    log.append_mailbox_log(recs[1:])
    assert log.mailbox_log() == recs, "oldest first, in append order"


def test_persists_in_file(tmp_path: Path) -> None:
    path = str(tmp_path / "sub" / "dsync.changelog")
    cl = SqliteChangeLog(path)
    cl.mailbox(G).commit(upserts=[e(1, flags=SEEN, size=10, vsize=11, internaldate=7, extra="x")])
    cl.close()
    cl = SqliteChangeLog(path)
    (x,) = cl.mailbox(G).entries()
    assert x == Entry(1, "guid1", SEEN, frozenset(), 1, 7, 10, 11, "x")
    assert x.record().flags == SEEN
    cl.close()


def test_garbage_file_is_corrupt(tmp_path: Path) -> None:
    p = tmp_path / "log.db"
    p.write_bytes(b"this is not a database" * 100)
    with pytest.raises(CorruptError, match="remove it to rebuild"):
        SqliteChangeLog(str(p))


def _plan_of(log: SqliteChangeLog, call) -> list[str]:  # type: ignore[no-untyped-def]
    sqls: list[str] = []
    log.db.set_trace_callback(sqls.append)
    try:
        call()
    finally:
        log.db.set_trace_callback(None)
    selects = [s for s in sqls if s.lstrip().upper().startswith("SELECT")]
    assert selects, sqls
    return [row[3] for s in selects for row in log.db.execute("EXPLAIN QUERY PLAN " + s)]


def _ops(log: SqliteChangeLog, call) -> int:  # type: ignore[no-untyped-def]
    n = [0]

    def tick() -> int:
        n[0] += 1
        return 0

    log.db.set_progress_handler(tick, 10)
    try:
        call()
    finally:
        log.db.set_progress_handler(None, 0)
    return n[0]


def test_queries_since_use_modseq_index(log) -> None:  # type: ignore[no-untyped-def]
    mb = log.mailbox(G)
    mb.commit(upserts=[e(u) for u in range(1, 20001)])
    mb.commit(upserts=[e(777, flags=SEEN)], expunged=[778])
    plan = _plan_of(log, lambda: list(mb.entries(1)))
    assert any("msg_modseq" in p for p in plan), f"entries(since) does not use the (mbox, modseq) index: {plan}"
    plan = _plan_of(log, lambda: mb.expunges(1))
    assert any("expunge_modseq" in p for p in plan), f"expunges(since) does not use its index: {plan}"
    # The work done follows the changes, not the mailbox size.
    since = _ops(log, lambda: list(mb.entries(1)))
    full = _ops(log, lambda: list(mb.entries(0)))
    assert since * 100 < full, (since, full)


_CRASHER = r"""
import sys, time
from dsync_core.changelog import Entry, SqliteChangeLog
path, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
log = SqliteChangeLog(path)
mb = log.mailbox("m" * 32)
if mb.meta().highestmodseq == 0:
    mb.commit(upserts=[Entry(uid=i, guid=f"base{i}") for i in range(1, 101)])
count = 0
def trace(sql):
    global count
    if sql.startswith("INSERT OR REPLACE"):
        count += 1
        if mode == "pause" and count == n // 2:
            print("mid", flush=True)
            time.sleep(60)
log.db.set_trace_callback(trace)
print("start", flush=True)
mb.commit(upserts=[Entry(uid=i, guid=f"new{i}", flags=frozenset({"\\Seen"})) for i in range(1, n + 1)],
          expunged=range(n + 1, n + 50))
print("done", flush=True)
time.sleep(60)
"""


def _crash(path: str, mode: str, n: int, delay: float = 0.0) -> str:
    p = subprocess.Popen([sys.executable, "-c", _CRASHER, path, mode, str(n)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "start"
        if mode == "pause":
            assert p.stdout.readline().strip() == "mid"
        else:
            time.sleep(delay)
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
        return p.stdout.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def _all_or_nothing(path: str, n: int) -> str:
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT uid, guid, modseq FROM msg ORDER BY uid").fetchall()
        (hm,) = db.execute("SELECT highestmodseq FROM mailbox").fetchone()
    finally:
        db.close()
    if hm == 1:
        assert rows == [(i, f"base{i}", 1) for i in range(1, 101)], "a killed commit left part of itself behind"
        return "nothing"
    assert hm == 2
    assert rows == [(i, f"new{i}", 2) for i in range(1, n + 1)], "a committed batch is incomplete"
    return "all"


def test_killed_mid_commit_leaves_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "log.db")
    _crash(path, "pause", 20000)
    assert _all_or_nothing(path, 20000) == "nothing"
    cl = SqliteChangeLog(path)  # and the log is usable afterwards
    assert cl.mailbox("m" * 32).commit(upserts=[e(1)]) == 2
    cl.close()


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.15, 0.4])
def test_killed_at_any_time_all_or_nothing(tmp_path: Path, delay: float) -> None:
    path = str(tmp_path / "log.db")
    _crash(path, "run", 30000, delay)
    _all_or_nothing(path, 30000)
