"""Behaviour of MaildirStorage / MaildirMailbox on their own."""

from __future__ import annotations

import io
import os
import time

import pytest
from dsync_maildir.keywords import TooManyKeywordsError
from dsync_maildir.storage import MaildirStorage

from dsync_core.errors import CorruptError, ExistsError, InvalidNameError, NotFoundError, StorageError
from dsync_core.model import FlagUpdate, MailboxLogType, SaveRequest

MSG = b"From: a@example.com\nSubject: hi\n\nline one\nline two\n"


def req(body: bytes = MSG, **kw) -> SaveRequest:  # type: ignore[no-untyped-def]
    return SaveRequest(io.BytesIO(body), **kw)


def age(path: str, seconds: int = 10) -> None:
    """Move mtimes out of the racy window so the next scan may be trusted."""
    t = time.time() - seconds
    for p in ("cur", "new", "dovecot-uidlist", "dovecot-keywords"):
        full = os.path.join(path, p)
        if os.path.exists(full):
            os.utime(full, (t, t))


def test_root_and_inbox_created(open_maildir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    st = open_maildir()
    assert isinstance(st, MaildirStorage)
    for sub in ("cur", "new", "tmp"):
        assert (tmp_path / "Maildir" / sub).is_dir()
    assert [m.name for m in st.list_mailboxes()] == ["INBOX"]


def test_save_sizes_names_and_records(open_maildir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    st = open_maildir()
    box = st.open_mailbox("INBOX")
    recs = box.save([
        req(internaldate=1_600_000_000),
        req(b"a\r\nb\nc", flags=frozenset({"\\Seen", "\\Flagged"}), keywords=frozenset({"$Junk"})),
    ])
    assert [r.uid for r in recs] == [1, 2]
    assert recs[0].size == len(MSG) and recs[0].vsize == len(MSG) + MSG.count(b"\n")
    assert (recs[1].size, recs[1].vsize) == (6, 7)
    new = os.listdir(tmp_path / "Maildir" / "new")
    cur = os.listdir(tmp_path / "Maildir" / "cur")
    assert new == [recs[0].guid]  # flagless mail in new/ without an info part
    assert cur == [recs[1].guid + ":2,FSa"]
    assert os.stat(tmp_path / "Maildir" / "new" / new[0]).st_mtime == 1_600_000_000
    assert os.listdir(tmp_path / "Maildir" / "tmp") == []
    assert (tmp_path / "Maildir" / "dovecot-keywords").read_text() == "0 $Junk\n"
    got = list(box.records())
    assert [(r.uid, r.guid, r.flags, r.keywords) for r in got] == [
        (1, recs[0].guid, frozenset(), frozenset()),
        (2, recs[1].guid, frozenset({"\\Seen", "\\Flagged"}), frozenset({"$Junk"})),
    ]
    assert got[0].internaldate == 1_600_000_000
    assert box.open_body(2).read() == b"a\r\nb\nc"
    s = box.status()
    assert (s.messages, s.unseen, s.uidnext) == (2, 1, 3)


def test_wanted_uids_and_guids(open_maildir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    box = open_maildir().open_mailbox("INBOX")
    vsize = len(MSG) + MSG.count(b"\n")
    guid_name = f"1700000000.M1P1.h,S={len(MSG)},W={vsize}"
    recs = box.save([
        req(uid=5, guid="0123456789abcdef0123456789abcdef"),
        req(uid=7, guid=guid_name),
        req(guid="1700000000.M2P1.h,S=1,W=1"),  # wrong sizes: generated name + G field
    ])
    assert [r.uid for r in recs] == [5, 7, 1]
    assert [r.guid for r in recs] == ["0123456789abcdef0123456789abcdef", guid_name, "1700000000.M2P1.h,S=1,W=1"]
    assert guid_name in os.listdir(tmp_path / "Maildir" / "new")
    text = (tmp_path / "Maildir" / "dovecot-uidlist").read_text()
    assert "5 G0123456789abcdef0123456789abcdef :" in text
    assert f"7 :{guid_name}\n" in text
    assert box.status().uidnext == 8
    with pytest.raises(ExistsError, match="below the next UID 8"):
        box.save([req(uid=6)])
    # a GUID already used as a file name is not reused as a name
    again = box.save([req(guid=guid_name)])
    assert again[0].guid == guid_name and again[0].uid == 8
    assert len([n for n in os.listdir(tmp_path / "Maildir" / "new") if n.startswith("1700000000.M1P1")]) == 1


def test_flags_keywords_expunge_modseqs(open_maildir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    box = open_maildir().open_mailbox("INBOX")
    saved = box.save([req(), req()])
    m0 = box.status().highestmodseq
    # an unknown letter and P survive flag changes
    cur = tmp_path / "Maildir" / "cur"
    new = tmp_path / "Maildir" / "new"
    name = saved[0].guid  # uid 1's file: the GUID is the base name
    os.rename(new / name, cur / (name + ":2,PX"))
    recs = box.update_flags([FlagUpdate(1, add_flags=frozenset({"\\seen"}), add_keywords=frozenset({"Work"}))])
    rec = next(r for r in box.records() if r.uid == 1)
    assert rec.flags == {"\\Seen"} and rec.keywords == {"Work"} and rec.modseq > m0
    assert recs and recs[0].modseq == rec.modseq
    assert name + ":2,PSXa" in os.listdir(cur)
    box.update_flags([FlagUpdate(1, remove_keywords=frozenset({"work"}))])
    assert next(r for r in box.records() if r.uid == 1).keywords == frozenset()
    exp = box.expunge([2, 99])
    assert [(e.uid, e.guid) for e in exp] == [(2, exp[0].guid)] and exp[0].guid
    assert [e.uid for e in box.expunges()] == [2]
    assert [r.uid for r in box.records()] == [1]
    assert box.records_by_uid([1, 2]).__next__().uid == 1


def test_too_many_keywords_fails_before_writing(open_maildir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    box = open_maildir().open_mailbox("INBOX")
    with pytest.raises(TooManyKeywordsError, match="k26"):
        box.save([req(keywords=frozenset(f"k{i:02d}" for i in range(27)))])
    assert os.listdir(tmp_path / "Maildir" / "new") == [] and os.listdir(tmp_path / "Maildir" / "tmp") == []


def test_external_changes_detected(open_maildir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    box = open_maildir().open_mailbox("INBOX")
    box.save([req()])
    root = tmp_path / "Maildir"
    age(str(root))
    box.status()
    m1 = box.status().highestmodseq
    # a delivery by another program (no uidlist entry), a flag rename and an expunge
    (root / "new" / "1600000001.M5P9.other").write_bytes(b"x\n")
    (root / "new" / "1600000000.M9P9.other").write_bytes(b"y\n")
    first = os.listdir(root / "new")
    mine = next(n for n in first if not n.endswith("other"))
    os.rename(root / "new" / mine, root / "cur" / (mine + ":2,S"))
    s = box.status()
    assert s.messages == 3 and s.uidnext == 4 and s.highestmodseq > m1
    recs = {r.guid: r for r in box.records()}
    assert recs["1600000000.M9P9.other"].uid == 2 and recs["1600000001.M5P9.other"].uid == 3
    assert recs[mine].flags == {"\\Seen"}
    os.unlink(root / "new" / "1600000000.M9P9.other")
    assert [(e.uid, e.guid) for e in box.expunges(s.highestmodseq)] == [(2, "1600000000.M9P9.other")]


def test_unchanged_mailbox_is_answered_from_the_change_log(open_maildir, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    st = open_maildir()
    box = st.open_mailbox("INBOX")
    box.save([req(), req(flags=frozenset({"\\Seen"}))])
    age(str(tmp_path / "Maildir"))
    before = box.status()
    calls: list[str] = []
    real_open, real_scandir, real_listdir = open, os.scandir, os.listdir

    def spy_open(path, *a, **k):  # type: ignore[no-untyped-def]
        calls.append(f"open {path}")
        return real_open(path, *a, **k)

    def spy_scandir(path=".", *a, **k):  # type: ignore[no-untyped-def]
        calls.append(f"scandir {path}")
        return real_scandir(path, *a, **k)

    def spy_listdir(path=".", *a, **k):  # type: ignore[no-untyped-def]
        calls.append(f"listdir {path}")
        return real_listdir(path, *a, **k)

    monkeypatch.setattr("builtins.open", spy_open)
    monkeypatch.setattr(os, "scandir", spy_scandir)
    monkeypatch.setattr(os, "listdir", spy_listdir)
    real_osopen = os.open

    def spy_osopen(path, *a, **k):  # type: ignore[no-untyped-def]
        calls.append(f"os.open {path}")
        return real_osopen(path, *a, **k)

    monkeypatch.setattr(os, "open", spy_osopen)
    again = box.status()
    recs = list(box.records())
    assert box.expunges() == []
    monkeypatch.undo()
    assert again == before and len(recs) == 2
    assert [c for c in calls if "sqlite" not in c] == []


def test_uidlist_garbled_raises_and_writes_nothing(open_maildir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    st = open_maildir()
    box = st.open_mailbox("INBOX")
    box.save([req()])
    p = tmp_path / "Maildir" / "dovecot-uidlist"
    garbled = p.read_bytes().replace(b"\n1 ", b"\n0 ")
    p.write_bytes(garbled)
    with pytest.raises(CorruptError, match=r"dovecot-uidlist line 2"):
        st.open_mailbox("INBOX").status()
    assert p.read_bytes() == garbled


def test_missing_mailbox_guid_is_generated(open_maildir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "Maildir"
    (root / "cur").mkdir(parents=True)
    (root / "cur" / "1600000000.M1P1.h:2,S").write_bytes(b"x\n")
    (root / "dovecot-uidlist").write_bytes(b"3 V42 N5\n4 :1600000000.M1P1.h\n")
    box = open_maildir().open_mailbox("INBOX")
    assert len(box.guid) == 32
    s = box.status()
    assert (s.uidvalidity, s.uidnext, s.messages) == (42, 5, 1)
    assert (root / "dovecot-uidlist").read_text().startswith(f"3 V42 N5 G{box.guid}\n")


@pytest.mark.parametrize("options", ["", ":LAYOUT=fs"])
def test_mailbox_tree(open_maildir, tmp_path, options: str) -> None:  # type: ignore[no-untyped-def]
    st = open_maildir(options)
    info = st.create_mailbox("Archive/2024", guid="ab" * 16, uidvalidity=1234)
    assert (info.guid, info.uidvalidity) == ("ab" * 16, 1234)
    st.create_mailbox("Entwürfe")
    with pytest.raises(ExistsError, match="Mailbox already exists: Entwürfe"):
        st.create_mailbox("Entwürfe")
    names = [(m.name, m.selectable) for m in st.list_mailboxes()]
    assert names == [("INBOX", True), ("Archive", False), ("Archive/2024", True), ("Entwürfe", True)]
    with st.open_mailbox("Archive/2024") as box:
        box.save([req()])
        assert box.status().uidvalidity == 1234
    st.rename_mailbox("Archive", "Old")
    assert [m.name for m in st.list_mailboxes()] == ["INBOX", "Entwürfe", "Old", "Old/2024"]
    with st.open_mailbox("Old/2024") as box:
        assert box.guid == "ab" * 16 and box.status().messages == 1
    assert st.mailbox_log()[-1].type == MailboxLogType.RENAME
    with pytest.raises(NotFoundError, match="Mailbox doesn't exist: Nope"):
        st.rename_mailbox("Nope", "X")
    with pytest.raises(ExistsError):
        st.rename_mailbox("Old/2024", "Entwürfe")
    with pytest.raises(StorageError, match="Renaming INBOX isn't supported"):
        st.rename_mailbox("INBOX", "X")
    st.delete_mailbox("Old/2024")
    assert st.mailbox_log()[-1].type == MailboxLogType.DELETE_MAILBOX
    assert st.mailbox_log()[-1].guid == "ab" * 16
    with pytest.raises(NotFoundError, match="Mailbox doesn't exist: Old/2024"):
        st.open_mailbox("Old/2024")
    assert "Old/2024" not in [m.name for m in st.list_mailboxes()]


def test_delete_parent_with_children_fs(open_maildir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    st = open_maildir(":LAYOUT=fs")
    st.create_mailbox("A")
    st.create_mailbox("A/B")
    st.open_mailbox("A").save([req()])
    st.delete_mailbox("A")
    assert [(m.name, m.selectable) for m in st.list_mailboxes()] == [("INBOX", True), ("A", False), ("A/B", True)]
    assert not (tmp_path / "Maildir" / "A" / "cur").exists()
    assert (tmp_path / "Maildir" / "A" / "B" / "cur").is_dir()


def test_names_never_escape_the_root(open_maildir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    st = open_maildir()
    before = sorted(os.listdir(tmp_path))
    for bad in ("../../etc", "/etc", "a\nb", "x.y", "a/../b"):
        with pytest.raises(InvalidNameError):
            st.create_mailbox(bad)
    assert sorted(os.listdir(tmp_path)) == before


def test_subscriptions(open_maildir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    st = open_maildir()
    st.set_subscribed("Entwürfe", True)
    st.set_subscribed("Archive/2024", True)
    st.set_subscribed("Archive/2024", False)
    st.set_subscribed("INBOX", True)
    assert st.subscriptions() == ["Entwürfe", "INBOX"]
    assert (tmp_path / "Maildir" / "subscriptions").read_bytes() == b"V\t2\n\nEntw&APw-rfe\nINBOX\n"
    types = [r.type for r in st.mailbox_log()]
    assert types == [MailboxLogType.SUBSCRIBE, MailboxLogType.SUBSCRIBE, MailboxLogType.UNSUBSCRIBE,
                     MailboxLogType.SUBSCRIBE]


def test_update_status(open_maildir) -> None:  # type: ignore[no-untyped-def]
    st = open_maildir()
    box = st.open_mailbox("INBOX")
    box.save([req()])
    s = box.update_status(min_uidnext=50, min_highestmodseq=100, guid="cd" * 16)
    assert (s.uidnext, s.guid, s.messages) == (50, "cd" * 16, 1) and s.highestmodseq >= 100
    s = box.update_status(uidvalidity=777)
    assert s.uidvalidity == 777 and s.messages == 1
    assert st.open_mailbox("INBOX").guid == "cd" * 16


def test_control_and_index_dirs(open_maildir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ctl, idx = tmp_path / "ctl", tmp_path / "idx"
    st = open_maildir(f":CONTROL={ctl}:INDEX={idx}")
    st.create_mailbox("Sub")
    st.open_mailbox("Sub").save([req(keywords=frozenset({"K"}))])
    assert (ctl / ".Sub" / "dovecot-uidlist").exists() and (ctl / ".Sub" / "dovecot-keywords").exists()
    assert not (tmp_path / "Maildir" / ".Sub" / "dovecot-uidlist").exists()
    assert (idx / "dsync-changelog.sqlite").exists()
    st.rename_mailbox("Sub", "Sub2")
    assert (ctl / ".Sub2" / "dovecot-uidlist").exists()
    assert st.open_mailbox("Sub2").status().messages == 1


def test_plugin_hooks() -> None:
    import dsync_maildir

    from dsync_core.location import parse_location
    from dsync_core.settings import Settings

    assert dsync_maildir.dsync_storage_schemes() == ["maildir"]
    assert dsync_maildir.dsync_storage_open(parse_location("sdbox:/x"), Settings(), None) is None


def test_interrupted_save_never_forgets_a_kept_guid(open_maildir, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A save stopped after the uidlist got its records but before the files were renamed
    into place leaves records without files (ignored), never a file whose wanted GUID is
    lost (which a re-sync would copy a second time)."""
    st = open_maildir()
    box = st.open_mailbox("INBOX")
    calls = {"n": 0}

    def flaky(real):  # type: ignore[no-untyped-def]
        def move(src, dst, *a, **kw):  # type: ignore[no-untyped-def]
            # Only the moves that put message files in place count (locks link too).
            if os.path.basename(os.path.dirname(str(dst))) in ("new", "cur"):
                calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt  # as abrupt as a kill, from Python's point of view
            return real(src, dst, *a, **kw)
        return move

    # Generated names are renamed into place, adopted ones linked: stop whichever comes.
    monkeypatch.setattr(os, "link", flaky(os.link))
    monkeypatch.setattr(os, "rename", flaky(os.rename))
    guids = ["0123456789abcdef0123456789abcde" + c for c in "012"]
    with pytest.raises(KeyboardInterrupt):
        box.save([req(guid=g) for g in guids])
    monkeypatch.undo()
    assert os.listdir(os.path.join(box.dir, "tmp")) == []
    recs = list(st.open_mailbox("INBOX").records())
    assert [(r.uid, r.guid) for r in recs] == [(1, guids[0])]
    # The interrupted UIDs are used up; the next save goes above them, with its GUID kept.
    again = st.open_mailbox("INBOX").save([req(guid=guids[1])])
    assert again[0].uid == 4 and again[0].guid == guids[1]


def test_consecutive_own_saves_do_not_rescan(open_maildir, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A run of our own saves checks cur/ and new/ against what it knows instead of
    rescanning the whole mailbox after each batch (which made big syncs quadratic)."""
    st = open_maildir()
    box = st.open_mailbox("INBOX")
    box.save([req() for _ in range(3)])
    rescans = []
    real = box._rescan
    monkeypatch.setattr(box, "_rescan", lambda: rescans.append(1) or real())
    for _ in range(4):
        box.save([req() for _ in range(5)])
    assert rescans == []
    assert [r.uid for r in box.records()] == list(range(1, 24))
    assert [r.uid for r in st.open_mailbox("INBOX").records()] == list(range(1, 24))


@pytest.mark.parametrize("when", ["between", "during"])
def test_delivery_by_someone_else_around_our_saves_is_found(open_maildir, tmp_path, monkeypatch, when: str) -> None:  # type: ignore[no-untyped-def]
    """A message another program (Dovecot's LDA) puts into new/ between or during our save
    batches, without our lock, is found and gets its UID; nothing is counted twice."""
    st = open_maildir()
    box = st.open_mailbox("INBOX")
    box.save([req() for _ in range(2)])
    foreign = os.path.join(box.dir, "new", "1700000000.M1P1.elsewhere")

    def deliver() -> None:
        with open(foreign, "wb") as f:
            f.write(b"Subject: from the LDA\n\nhello\n")

    if when == "between":
        deliver()
    else:
        real_link = box._link_into_place
        done = []

        def link_and_deliver(p):  # type: ignore[no-untyped-def]
            real_link(p)
            if not done:
                done.append(1)
                deliver()

        monkeypatch.setattr(box, "_link_into_place", link_and_deliver)
    box.save([req() for _ in range(2)])
    monkeypatch.undo()
    box.save([req()])
    for b in (box, st.open_mailbox("INBOX")):
        recs = list(b.records())
        assert len(recs) == 6 and len({r.uid for r in recs}) == 6
        assert sum(1 for r in recs if r.guid == "1700000000.M1P1.elsewhere") == 1


def test_a_body_with_counted_sizes_is_not_scanned_again(open_maildir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from dsync_core.streams import CountedBody

    class Claimed(io.BytesIO):
        counted = (len(MSG), 4242)  # scanning the bytes would give len(MSG) + 5

    box = open_maildir().open_mailbox("INBOX")
    partly = CountedBody(b"x\n" + MSG)
    partly.read(2)  # read before the save: its counted sizes no longer fit, so it is scanned
    recs = box.save([SaveRequest(Claimed(MSG)), SaveRequest(partly), SaveRequest(CountedBody(b"a\r\nb\nc"))])
    assert [(r.size, r.vsize) for r in recs] == [(len(MSG), 4242), (len(MSG), len(MSG) + 5), (6, 7)]
    assert sorted(os.listdir(tmp_path / "Maildir" / "new")) == sorted(r.guid for r in recs)
    assert recs[0].guid.endswith(f",S={len(MSG)},W=4242")


def test_an_adopted_name_that_appears_meanwhile_is_not_overwritten(open_maildir, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import dsync_maildir.storage as ms

    box = open_maildir().open_mailbox("INBOX")
    vsize = len(MSG) + MSG.count(b"\n")
    adopted = f"1700000000.M9P9.h,S={len(MSG)},W={vsize}"
    real_sync = ms.sync_files

    def deliver_meanwhile(files, **kw):  # type: ignore[no-untyped-def]
        (tmp_path / "Maildir" / "new" / adopted).write_bytes(b"someone else's message\n")
        return real_sync(files, **kw)

    monkeypatch.setattr(ms, "sync_files", deliver_meanwhile)
    rec = box.save([req(guid=adopted)])[0]
    assert rec.guid == adopted  # the GUID is kept, in a G field of a new name
    names = os.listdir(tmp_path / "Maildir" / "new")
    assert len(names) == 2 and adopted in names
    (ours,) = [n for n in names if n != adopted]
    assert (tmp_path / "Maildir" / "new" / ours).read_bytes() == MSG
    assert (tmp_path / "Maildir" / "new" / adopted).read_bytes() == b"someone else's message\n"
    assert f"G{adopted} :{ours}" in (tmp_path / "Maildir" / "dovecot-uidlist").read_text()


def test_writing_keeps_the_uidlist_lock_between_writes(open_maildir, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Inside ``writing()`` the lock file is made once for a run of saves (each lock is a
    file created and removed), taken anew after LINGER_SECONDS, and gone at the end."""
    import dsync_maildir.storage as mod

    st = open_maildir()
    box = st.open_mailbox("INBOX")
    lock = box.uidlist_path + ".lock"
    takes = {"n": 0}
    real = box._lock.acquire

    def counting(*a, **kw):  # type: ignore[no-untyped-def]
        takes["n"] += 1
        return real(*a, **kw)

    monkeypatch.setattr(box._lock, "acquire", counting)
    with box.writing():
        for i in range(3):
            box.save([req(body=f"Subject: {i}\n\nbody {i}\n".encode())])
            assert os.path.exists(lock), "released between two writes"
        box.update_flags([FlagUpdate(1, add_flags=frozenset({"\\Seen"}))])
    assert not os.path.exists(lock)
    assert takes["n"] == 1
    monkeypatch.setattr(mod, "LINGER_SECONDS", 0.0)
    with box.writing():
        box.save([req(body=b"Subject: late\n\nlate\n")])
        assert not os.path.exists(lock), "kept longer than LINGER_SECONDS"
        box.save([req(body=b"Subject: later\n\nlater\n")])
    assert takes["n"] == 3
    # Without writing() every write takes and drops the lock, as before.
    box.save([req(body=b"Subject: alone\n\nalone\n")])
    assert not os.path.exists(lock) and takes["n"] == 4
    assert [r.uid for r in st.open_mailbox("INBOX").records()] == [1, 2, 3, 4, 5, 6]


def test_a_failed_write_inside_writing_releases_the_lock(open_maildir) -> None:  # type: ignore[no-untyped-def]
    st = open_maildir()
    box = st.open_mailbox("INBOX")
    with pytest.raises(StorageError), box.writing():
        box.save([req(body=b"Subject: a\n\na\n")])
        raise StorageError("stop")
    assert not os.path.exists(box.uidlist_path + ".lock")
    other = st.open_mailbox("INBOX")  # another object takes the lock at once
    other.save([req(body=b"Subject: b\n\nb\n")])
    assert [r.uid for r in other.records()] == [1, 2]


def _writer_threads(box, monkeypatch) -> dict[bytes, str]:  # type: ignore[no-untyped-def]
    """Record which thread wrote each tmp file of ``box`` (by the file's bytes)."""
    import threading

    where: dict[bytes, str] = {}
    real = box._write_tmp

    def spy(path, body, mtime):  # type: ignore[no-untyped-def]
        got = real(path, body, mtime)
        with open(path, "rb") as f:
            where[f.read()] = threading.current_thread().name
        return got

    monkeypatch.setattr(box, "_write_tmp", spy)
    return where


@pytest.mark.parametrize("writers", [2, 0])
def test_in_memory_bodies_are_written_by_helper_threads(open_maildir, monkeypatch, writers: int) -> None:  # type: ignore[no-untyped-def]
    """Bodies held in memory (CountedBody) get their tmp files written on the storage's
    helper threads, streamed ones on the caller's; the result is the same either way: the
    UIDs in the order given, each file byte for byte, S= and W= right."""
    import dsync_maildir.storage as mod

    from dsync_core.streams import CountedBody

    monkeypatch.setattr(mod, "TMP_WRITERS", writers)
    st = open_maildir()
    box = st.open_mailbox("INBOX")
    where = _writer_threads(box, monkeypatch)
    bodies = [f"Subject: {i}\r\n\r\n".encode() + (b"crlf line\r\n" if i % 3 else b"bare lf\n") * (i + 1)
              for i in range(12)]
    reqs = [SaveRequest(CountedBody(b) if i % 4 else io.BytesIO(b)) for i, b in enumerate(bodies)]
    saved = box.save(reqs)
    assert [r.uid for r in saved] == list(range(1, 13))
    for i, b in enumerate(bodies):
        helper = where[b].startswith("maildir-tmp")
        assert helper == (writers > 0 and i % 4 != 0), (i, where[b])
    fresh = st.open_mailbox("INBOX")
    files = {}
    for sub in ("new", "cur"):
        for name in os.listdir(os.path.join(box.dir, sub)):
            with open(os.path.join(box.dir, sub, name), "rb") as f:
                files[f.read()] = name
    for rec, b in zip(fresh.records(), bodies):
        vsize = len(b) + b.count(b"\n") - b.count(b"\r\n")
        assert fresh.open_body(rec.uid).read() == b
        assert (rec.size, rec.vsize) == (len(b), vsize)
        assert f",S={len(b)},W={vsize}" in files[b]
    assert os.listdir(os.path.join(box.dir, "tmp")) == []


def test_a_failed_helper_write_leaves_nothing(open_maildir, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A tmp file that cannot be written on a helper thread fails the whole save with the
    file named: no tmp file left (not even one another helper was still creating when the
    first failed), no record, the lock free, and the next save fine."""
    import errno
    import threading

    from dsync_core.streams import CountedBody

    st = open_maildir()
    box = st.open_mailbox("INBOX")
    real_open, real_write = os.open, os.write
    opens = {"n": 0}
    lock = threading.Lock()
    slow_started, failed = threading.Event(), threading.Event()

    def helper() -> bool:
        return threading.current_thread().name.startswith("maildir-tmp")

    def slow_open(path, *a, **kw):  # type: ignore[no-untyped-def]
        if helper():
            with lock:
                opens["n"] += 1
                n = opens["n"]
            if n == 4:  # this file is created only after the other helper failed
                slow_started.set()
                failed.wait(5)
                time.sleep(0.2)
        return real_open(path, *a, **kw)

    def failing_write(fd, data):  # type: ignore[no-untyped-def]
        if helper() and slow_started.is_set() and not failed.is_set():
            failed.set()
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "open", slow_open)
    monkeypatch.setattr(os, "write", failing_write)
    reqs = [SaveRequest(CountedBody(f"Subject: {i}\n\n{i}\n".encode())) for i in range(20)]
    with pytest.raises(StorageError, match=r"Cannot write .*/tmp/.*: No space left on device"):
        box.save(reqs)
    monkeypatch.undo()
    assert failed.is_set()
    time.sleep(0.5)  # a helper the save had not waited for would have made its file by now
    assert os.listdir(os.path.join(box.dir, "tmp")) == []
    assert os.listdir(os.path.join(box.dir, "new")) == [] and os.listdir(os.path.join(box.dir, "cur")) == []
    assert not os.path.exists(box.uidlist_path + ".lock")
    other = st.open_mailbox("INBOX")
    assert list(other.records()) == []
    assert [r.uid for r in other.save([req()])] == [1]


def test_staged_bodies_are_written_ahead_and_saved_as_given(open_maildir) -> None:  # type: ignore[no-untyped-def]
    """stage() starts the tmp files of bodies held in memory on the helper threads before
    any lock; the save that takes them names and numbers them as if it had written them.
    Streamed bodies are left for save() to read, in order."""
    from dsync_core.streams import CountedBody

    st = open_maildir()
    box = st.open_mailbox("INBOX")
    bodies = [f"Subject: {i}\r\n\r\n".encode() + (b"crlf\r\n" if i % 2 else b"bare\n") * (i + 1) for i in range(8)]
    reqs = [SaveRequest(CountedBody(b) if i % 3 else io.BytesIO(b), flags={"\\Seen"} if i == 5 else ())
            for i, b in enumerate(bodies)]
    staged = box.stage(reqs)
    assert [type(r.body).__name__ == "_StagedBody" for r in staged] == [i % 3 != 0 for i in range(8)]
    for r in staged:
        if type(r.body).__name__ == "_StagedBody":
            r.body.future.result(timeout=10)
            assert os.path.exists(r.body.tmp)  # written before save() was called
    saved = box.save(staged)
    assert [r.uid for r in saved] == list(range(1, 9))
    fresh = st.open_mailbox("INBOX")
    for rec, b in zip(fresh.records(), bodies):
        assert fresh.open_body(rec.uid).read() == b
        assert (rec.size, rec.vsize) == (len(b), len(b) + b.count(b"\n") - b.count(b"\r\n"))
    assert list(fresh.records())[5].flags == frozenset({"\\Seen"})
    assert os.listdir(os.path.join(box.dir, "tmp")) == []
    for r in staged:
        r.body.close()  # closing after the save leaves what the save made
    assert [r.uid for r in st.open_mailbox("INBOX").records()] == list(range(1, 9))


def test_staged_bodies_closed_unsaved_leave_nothing(open_maildir) -> None:  # type: ignore[no-untyped-def]
    """A staged batch whose save never comes (or fails before it takes the bodies) is
    undone by closing its bodies: no tmp file left; and a staged body only goes to the
    mailbox that staged it."""
    from dsync_core.errors import ExistsError, UsageError
    from dsync_core.streams import CountedBody

    st = open_maildir()
    box = st.open_mailbox("INBOX")
    box.save([req(), req()])
    st.create_mailbox("Other")
    other = st.open_mailbox("Other")
    tmp = os.path.join(box.dir, "tmp")
    staged = box.stage([SaveRequest(CountedBody(f"Subject: {i}\n\n{i}\n".encode())) for i in range(6)])
    with pytest.raises(UsageError, match="staged"):
        other.save(staged[:1])
    with pytest.raises(ExistsError, match="UID 1"):
        box.save([SaveRequest(staged[1].body, uid=1)])  # below UIDNEXT: refused before writing
    assert len(os.listdir(tmp)) == 6
    for r in staged:
        r.body.close()
    assert os.listdir(tmp) == [] and os.listdir(os.path.join(other.dir, "tmp")) == []
    assert [r.uid for r in st.open_mailbox("INBOX").records()] == [1, 2]
    assert list(st.open_mailbox("Other").records()) == []


def test_streams_any_thread_may_read_are_written_by_helpers(open_maildir, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A streamed body that says any thread may read it (``any_thread``, as imapc's big
    bodies read through worker connections do) is written on a helper thread, staged or
    not; one that does not say so is read by the caller, in order."""
    st = open_maildir()
    box = st.open_mailbox("INBOX")
    where = _writer_threads(box, monkeypatch)

    class Free(io.BytesIO):
        any_thread = True

    bodies = [f"Subject: {i}\r\n\r\n{i}\r\n".encode() for i in range(6)]
    reqs = [SaveRequest(Free(b) if i % 2 else io.BytesIO(b)) for i, b in enumerate(bodies)]
    saved = box.save(box.stage(reqs[:3]) + reqs[3:])
    assert [r.uid for r in saved] == list(range(1, 7))
    assert [where[b].startswith("maildir-tmp") for b in bodies] == [i % 2 == 1 for i in range(6)]
    assert [box.open_body(r.uid).read() for r in saved] == bodies
