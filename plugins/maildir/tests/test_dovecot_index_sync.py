"""Our writes keep Dovecot's own index of a Maildir in step: doveadm then reports the same
HIGHESTMODSEQ as we do, finds nothing to repair (no Warning:/Error:), and both stay equal
when doveadm and we keep writing in turn."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import threading

import pytest
from dsync_maildir import dovecot_index_sync as dis

from dsync_core import dovecot_index as di
from dsync_core.api import open_storage
from dsync_core.model import FlagUpdate, SaveRequest
from dsync_core.settings import Settings

LAYOUTS = pytest.mark.parametrize("opts", ["", ":LAYOUT=fs", ":INDEX=@/idx", ":LAYOUT=fs:INDEX=@/idx"],
                                  ids=["maildir++", "fs", "maildir++-index", "fs-index"])


def _req(subject: str, flags: frozenset[str] = frozenset(), keywords: frozenset[str] = frozenset(),
         uid: int | None = None) -> SaveRequest:
    return SaveRequest(body=io.BytesIO(f"Subject: {subject}\n\nbody\n".encode()), flags=flags, keywords=keywords,
                       uid=uid)


class Pair:
    """One Maildir, opened by us (fresh storage per step, as separate commands would) and by doveadm."""

    def __init__(self, doveadm, opts: str, name: str = "Maildir") -> None:  # type: ignore[no-untyped-def]
        self.dv = doveadm
        self.root = os.path.join(doveadm.base, name)
        os.makedirs(self.root)
        doveadm.chown(self.root)
        self.loc = f"maildir:{self.root}{opts.replace('@', self.root)}"

    def ours(self, box: str = "Box"):  # type: ignore[no-untyped-def]
        st = open_storage(self.loc, Settings())
        try:
            with st.open_mailbox(box) as b:
                s = b.status()
                msgs = {r.uid: frozenset(r.flags | r.keywords) for r in b.records()}
        finally:
            st.close()
        return {"highestmodseq": str(s.highestmodseq), "uidnext": str(s.uidnext),
                "uidvalidity": str(s.uidvalidity), "messages": str(s.messages)}, msgs

    def theirs(self, box: str = "Box"):  # type: ignore[no-untyped-def]
        row = self.dv.json(self.loc, "mailbox", "status", "highestmodseq uidnext uidvalidity messages", box)[0]
        del row["mailbox"]
        msgs = {}
        for r in self.dv.json(self.loc, "fetch", "uid flags", "mailbox", box):
            msgs[int(r["uid"])] = frozenset(r["flags"].split()) - {"\\Recent"}
        return row, msgs

    def write(self, fn, box: str = "Box"):  # type: ignore[no-untyped-def]
        st = open_storage(self.loc, Settings())
        try:
            if box != "INBOX" and box not in {i.name for i in st.list_mailboxes()}:
                st.create_mailbox(box)
            with st.open_mailbox(box) as b:
                return fn(b)
        finally:
            st.close()

    def assert_same(self, box: str = "Box", *, dovecot_first: bool = True) -> str:
        if dovecot_first:
            theirs = self.theirs(box)
            ours = self.ours(box)
        else:
            ours = self.ours(box)
            theirs = self.theirs(box)
        assert ours == theirs
        return ours[0]["highestmodseq"]


@LAYOUTS
def test_api_writes_keep_dovecot_modseq_in_step(doveadm, opts: str) -> None:  # type: ignore[no-untyped-def]
    p = Pair(doveadm, opts)
    steps = [
        lambda b: b.save([_req("a", frozenset({"\\Seen"}), frozenset({"k1", "k2"})), _req("b", keywords=frozenset({"k2"}))]),
        lambda b: b.save([_req("c")]),
        lambda b: b.update_flags([FlagUpdate(uid=1, add_flags=frozenset({"\\Flagged"}), remove_keywords=frozenset({"k1"})),
                                  FlagUpdate(uid=2, add_keywords=frozenset({"k3"})),
                                  FlagUpdate(uid=3, add_flags=frozenset({"\\Seen", "\\Answered"}))]),
        lambda b: b.update_status(min_uidnext=10),
        lambda b: b.save([_req("d", uid=12)]),
        lambda b: b.update_status(min_highestmodseq=40),
        lambda b: b.expunge([2, 10]),
        lambda b: b.update_flags([FlagUpdate(uid=1, remove_flags=frozenset({"\\Seen", "\\Flagged"}),
                                             remove_keywords=frozenset({"k2"}))]),
        lambda b: b.update_status(uidvalidity=12345),
    ]
    seen = []
    for i, step in enumerate(steps):
        p.write(step)
        # Alternate who reads first: Dovecot's sync of our index must change nothing either way.
        seen.append(int(p.assert_same(dovecot_first=i % 2 == 0)))
    assert seen == sorted(seen) and seen[-1] > 40
    assert p.theirs()[0]["uidvalidity"] == "12345"
    # Dovecot writes after ours, we read; then we write again and Dovecot reads.
    doveadm.run(p.loc, "flags", "add", "\\Deleted z1 z2", "mailbox", "Box", "all")
    doveadm.run(p.loc, "save", "-m", "Box", input=b"Subject: dv\n\nx\n")
    before = int(p.assert_same(dovecot_first=False))
    p.write(lambda b: b.update_flags([FlagUpdate(uid=1, remove_keywords=frozenset({"z1"}))]))
    doveadm.run(p.loc, "expunge", "mailbox", "Box", "uid", "3")
    assert int(p.assert_same()) > before


def test_mailbox_without_dovecot_index_gets_one_on_first_write(doveadm) -> None:  # type: ignore[no-untyped-def]
    p = Pair(doveadm, "")
    for i in range(3):
        p.write(lambda b, i=i: b.save([_req(str(i), keywords=frozenset({"q"}))]))
    p.write(lambda b: b.update_flags([FlagUpdate(uid=1, add_flags=frozenset({"\\Seen"}))]))
    # As if written by a dsync that did not keep Dovecot's index yet (and INBOX, never created).
    os.unlink(os.path.join(p.root, ".Box", "dovecot.index.log"))
    before = p.ours()[0]["highestmodseq"]
    assert int(before) > 2  # a fresh Dovecot index would say 2
    p.write(lambda b: b.update_flags([FlagUpdate(uid=2, add_flags=frozenset({"\\Seen"}))]))
    assert os.path.exists(os.path.join(p.root, ".Box", "dovecot.index.log"))
    assert int(p.assert_same()) == int(before) + 1
    p.write(lambda b: b.save([_req("inbox")]), box="INBOX")
    assert p.assert_same("INBOX") == "2"


def test_empty_mailbox_reports_what_dovecot_would(doveadm) -> None:  # type: ignore[no-untyped-def]
    p = Pair(doveadm, "")
    p.write(lambda b: None)
    assert p.ours()[0]["highestmodseq"] == "1"  # before Dovecot ever looked
    assert p.ours("INBOX")[0]["highestmodseq"] == "1"
    p.assert_same()
    p.assert_same("INBOX")


def test_many_messages_with_dovecot_snapshots(doveadm) -> None:  # type: ignore[no-untyped-def]
    p = Pair(doveadm, "")

    def save_all(b):  # type: ignore[no-untyped-def]
        for j in range(10):
            b.save([_req(f"{j}-{i}", keywords=frozenset({f"k{i % 5}"})) for i in range(100)])

    p.write(save_all)
    p.assert_same()
    assert os.path.exists(os.path.join(p.root, ".Box", "dovecot.index"))  # Dovecot wrote a snapshot
    doveadm.run(p.loc, "flags", "add", "\\Seen", "mailbox", "Box", "all")

    def flag_batches(b):  # type: ignore[no-untyped-def]
        for j in range(20):
            add = frozenset({"\\Flagged"}) if j % 2 else frozenset()
            b.update_flags([FlagUpdate(uid=u, add_flags=add, remove_flags=frozenset({"\\Flagged"}) - add,
                                       add_keywords=frozenset({f"z{j % 7}"})) for u in range(1 + j * 40, 41 + j * 40)])

    p.write(flag_batches)
    p.assert_same(dovecot_first=False)
    doveadm.run(p.loc, "expunge", "mailbox", "Box", "uid", "1:300")
    p.write(lambda b: b.expunge(range(300, 600)))
    p.assert_same()


def test_concurrent_doveadm_and_our_writes(doveadm) -> None:  # type: ignore[no-untyped-def]
    p = Pair(doveadm, "")
    doveadm.run(p.loc, "save", "-m", "INBOX", input=b"Subject: first\n\nx\n")
    errors: list[str] = []
    stop = threading.Event()

    def dovecot_loop() -> None:
        i = 0
        while not stop.is_set():
            try:
                args = [("save", "-m", "INBOX"), ("flags", "add", f"\\Seen d{i % 3}", "mailbox", "INBOX", "all"),
                        ("flags", "remove", "\\Seen", "mailbox", "INBOX", "all"),
                        ("expunge", "mailbox", "INBOX", "uid", str(i // 2))][i % 4]
                doveadm.run(p.loc, *args, input=b"Subject: dv\n\nx\n" if args[0] == "save" else None)
            except AssertionError as e:  # a Warning:/Error: from Dovecot
                errors.append(str(e))
            i += 1

    t = threading.Thread(target=dovecot_loop)
    t.start()
    try:
        for r in range(25):
            def step(b, r=r):  # type: ignore[no-untyped-def]
                b.save([_req("ours", keywords=frozenset({"o1"}))])
                uids = [m.uid for m in b.records()]
                add = frozenset({"\\Flagged"}) if r % 2 else frozenset()
                b.update_flags([FlagUpdate(uid=u, add_flags=add, remove_flags=frozenset({"\\Flagged"}) - add,
                                           add_keywords=frozenset({f"o{r % 4}"})) for u in uids[-5:]])
                if r % 3 == 0:
                    b.expunge(uids[:1])
            p.write(step, box="INBOX")
    finally:
        stop.set()
        t.join()
    assert errors == []
    # Same messages, UIDs, flags and keywords as Dovecot reads them, whoever looks first.
    ours, theirs = p.ours("INBOX"), p.theirs("INBOX")
    assert (ours[1], ours[0]["uidnext"], ours[0]["messages"]) == (theirs[1], theirs[0]["uidnext"],
                                                                  theirs[0]["messages"])
    # HIGHESTMODSEQ: a message we saved while Dovecot had handed out a UID it had not
    # indexed yet is left for Dovecot to index (announcing it first would make Dovecot
    # report "Expunged message reappeared"); Dovecot then gives it a modseq we learn at our
    # next change. So once Dovecot has looked, our next change brings both to the same value.
    p.write(lambda b: b.update_flags([FlagUpdate(uid=max(m.uid for m in b.records()),
                                                 add_flags=frozenset({"\\Answered"}))]), box="INBOX")
    p.assert_same("INBOX", dovecot_first=True)
    p.assert_same("INBOX", dovecot_first=False)


def _hold_lock(path: str) -> subprocess.Popen[bytes]:
    """Another process holding Dovecot's index lock (fcntl locks are per process)."""
    code = ("import fcntl,os,sys,time\nfd=os.open(sys.argv[1],os.O_RDWR)\nfcntl.lockf(fd,fcntl.LOCK_EX)\n"
            "print('locked',flush=True)\ntime.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, path], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"locked\n"
    return proc


def test_locked_dovecot_index_only_warns(open_maildir, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(dis, "LOCK_TIMEOUT", 0.2)
    st = open_maildir()
    st.create_mailbox("Box")
    log_path = os.path.join(st.root, ".Box", "dovecot.index.log")
    proc = _hold_lock(log_path)
    try:
        with st.open_mailbox("Box") as b, caplog.at_level(logging.WARNING, logger="dsync.maildir"):
            saved = b.save([_req("a")])
            assert [r.uid for r in saved] == [1]
            assert b.status().messages == 1
    finally:
        proc.kill()
        proc.wait()
    assert "could not update Dovecot's index" in caplog.text and "Timeout" in caplog.text
    # Next time the lock is free, but UID 1 looks like a message someone else is about to
    # index: ours is not announced past it (Dovecot's sync adds both); the modseqs still agree.
    with st.open_mailbox("Box") as b:
        b.save([_req("b")])
        state = di.IndexState.load(os.path.join(st.root, ".Box"))
        assert state.messages == {}
        assert b.status().highestmodseq == state.highest_modseq == 3


def test_corrupt_dovecot_log_only_warns(open_maildir, caplog) -> None:  # type: ignore[no-untyped-def]
    st = open_maildir()
    st.create_mailbox("Box")
    log_path = os.path.join(st.root, ".Box", "dovecot.index.log")
    with open(log_path, "r+b") as f:
        f.write(b"\x09")  # unknown major version
    with st.open_mailbox("Box") as b, caplog.at_level(logging.WARNING, logger="dsync.maildir"):
        b.save([_req("a")])
        b.update_flags([FlagUpdate(uid=1, add_flags=frozenset({"\\Seen"}))])
        b.expunge([1])
        assert b.status().messages == 0
    assert caplog.text.count("could not update Dovecot's index") == 3


def test_update_flags_never_appends_unindexed_messages(open_maildir) -> None:  # type: ignore[no-untyped-def]
    st = open_maildir()
    st.create_mailbox("Box")
    with st.open_mailbox("Box") as b:
        b.save([_req("a")])
        # A message Dovecot has not indexed yet (as if another writer just gave it a UID).
        index_dir = os.path.join(st.root, ".Box")
        os.unlink(os.path.join(index_dir, "dovecot.index.log"))
        b.dovecot.record(uidvalidity=b.header_uidvalidity, next_uid=1, at_least=0, everything=lambda: {})
        b.dovecot._state = None
        b.update_flags([FlagUpdate(uid=1, add_flags=frozenset({"\\Seen"}))])
        assert di.IndexState.load(index_dir).messages == {}
        # Saving a second one must not leapfrog UID 1 either: Dovecot's sync adds both.
        b.save([_req("b")])
        assert di.IndexState.load(index_dir).messages == {}


def test_modseq_increment_counts_like_dovecot() -> None:
    tx = di.Transaction()
    tx.append([(1, 0), (2, 8)])
    tx.keyword_update("a", True, [1, 2])
    tx.keyword_update("b", True, [1])
    tx.flag_update([(1, 1, 0x08, 0), (2, 2, 0, 0x08)])
    tx.flag_update([(1, 1, 0x80, 0)])  # dirty bit only: no modseq
    tx.header_u32(24, 5)
    assert dis.modseq_increment(tx) == 4


def test_fresh_log_describes_messages(tmp_path) -> None:  # type: ignore[no-untyped-def]
    sync = dis.DovecotIndexSync(str(tmp_path), "Box", fsync=False)
    msgs = {1: (frozenset({"\\Seen"}), frozenset({"x"})), 3: (frozenset(), frozenset({"x", "y"}))}
    assert sync.record(uidvalidity=77, next_uid=9, at_least=10, everything=lambda: msgs) == 10
    state = di.IndexState.load(str(tmp_path))
    assert (state.uid_validity, state.next_uid) == (77, 9)
    assert {u: (di.bits_to_flags(m.flags), frozenset(m.keywords)) for u, m in state.messages.items()} == msgs
    # A change: flags of 1, expunge of 3, append of 9 (at next_uid).
    got = sync.record(uidvalidity=77, next_uid=10, at_least=11, present={1: (frozenset(), frozenset()),
                      9: (frozenset({"\\Draft"}), frozenset())}, expunged=[(3, "somefile")], uidlist_uids=[9, 3, 1])
    state = di.IndexState.load(str(tmp_path))
    assert got == state.highest_modseq == 10 + 4  # FLAG_UPDATE, KEYWORD_UPDATE remove x, EXPUNGE_GUID, APPEND
    assert {u: di.bits_to_flags(m.flags) for u, m in state.messages.items()} == {1: frozenset(), 9: {"\\Draft"}}
    assert [e.guid for e in state.expunges] == [di.guid_128("somefile")]
