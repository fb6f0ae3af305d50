"""Round trips against a real Dovecot: doveadm writes and we read, we write and doveadm reads.

Every doveadm run fails the test if doveadm prints a ``Warning:`` or ``Error:`` (Dovecot's
way of saying it had to repair something we wrote).
"""

from __future__ import annotations

import io
import os

import pytest

from dsync_core.api import open_storage
from dsync_core.model import FlagUpdate, MailboxLogType, SaveRequest
from dsync_core.settings import Settings

MSGS = [
    b"From: Alice <alice@example.com>\nSubject: one\nMessage-ID: <1@x>\n\nBody line 1\nBody line 2\n",
    b"From: Bob <bob@example.com>\r\nSubject: two\r\n\r\nCRLF body\r\n",
    b"From: carol@example.com\nSubject: three\n\n",
]

LAYOUTS = pytest.mark.parametrize("opts", ["", ":LAYOUT=fs"], ids=["maildir++", "fs"])


def ours(storage) -> tuple[dict, dict]:  # type: ignore[no-untyped-def]
    """(status by mailbox, (mailbox, uid) -> (guid, flags+keywords)) as our storage sees it."""
    status, msgs = {}, {}
    for info in storage.list_mailboxes():
        if not info.selectable:
            continue
        with storage.open_mailbox(info.name) as box:
            s = box.status()
            status[info.name] = {"messages": str(s.messages), "uidvalidity": str(s.uidvalidity),
                                 "uidnext": str(s.uidnext), "guid": s.guid}
            for r in box.records():
                msgs[(info.name, r.uid)] = (r.guid, frozenset(r.flags | r.keywords))
    return status, msgs


def theirs_status(doveadm, loc: str) -> dict:  # type: ignore[no-untyped-def]
    return {name: {k: v for k, v in row.items() if k != "mailbox"} for name, row in doveadm.status(loc).items()}


@LAYOUTS
def test_dovecot_writes_we_read(doveadm, opts: str) -> None:  # type: ignore[no-untyped-def]
    root = os.path.join(doveadm.base, "Maildir")
    loc = f"maildir:{root}{opts}"
    os.makedirs(root)
    doveadm.chown(doveadm.base)
    for m in MSGS:
        doveadm.run(loc, "save", "-m", "INBOX", input=m)
    doveadm.run(loc, "mailbox", "create", "Entwürfe", "Archive/2024", "Trash")
    doveadm.run(loc, "save", "-m", "Entwürfe", input=MSGS[0])
    doveadm.run(loc, "save", "-m", "Archive/2024", input=MSGS[1])
    doveadm.run(loc, "flags", "add", "\\Seen $Junk Work", "mailbox", "INBOX", "uid", "1")
    doveadm.run(loc, "flags", "add", "\\Flagged \\Answered", "mailbox", "INBOX", "uid", "2")
    doveadm.run(loc, "flags", "add", "\\Draft Later", "mailbox", "Archive/2024", "uid", "1")
    doveadm.run(loc, "expunge", "mailbox", "INBOX", "uid", "3")
    doveadm.run(loc, "mailbox", "rename", "Trash", "Bin")
    bin_guid = doveadm.status(loc)["Bin"]["guid"]
    doveadm.run(loc, "mailbox", "delete", "Bin")
    doveadm.run(loc, "mailbox", "subscribe", "Entwürfe", "Archive/2024")

    want_status = theirs_status(doveadm, loc)
    want_msgs = doveadm.fetch(loc)
    st = open_storage(loc, Settings())
    try:
        got_status, got_msgs = ours(st)
        assert got_status == want_status
        assert got_msgs == want_msgs
        assert want_msgs[("INBOX", 1)][1] == {"\\Seen", "$Junk", "Work"}
        assert sorted(st.subscriptions()) == sorted(["Entwürfe", "Archive/2024"])
        log = st.mailbox_log()
        assert any(r.type == MailboxLogType.DELETE_MAILBOX and r.guid == bin_guid for r in log)
        with st.open_mailbox("INBOX") as box:
            assert box.open_body(1).read() == MSGS[0]
            # Expunged before we ever looked: known from Dovecot's log (which keeps no GUID for Maildir).
            assert [(e.uid, e.guid) for e in box.expunges()] == [(3, "")]
    finally:
        st.close()
    # reading through us changed nothing Dovecot cares about
    assert theirs_status(doveadm, loc) == want_status
    assert doveadm.fetch(loc) == want_msgs


@LAYOUTS
def test_we_write_dovecot_reads(doveadm, opts: str) -> None:  # type: ignore[no-untyped-def]
    root = os.path.join(doveadm.base, "Maildir")
    loc = f"maildir:{root}{opts}"
    doveadm.chown(doveadm.base)
    st = open_storage(loc, Settings())
    try:
        st.create_mailbox("Entwürfe")
        st.create_mailbox("Archive/2024", guid="0f" * 16, uidvalidity=1700000000)
        st.create_mailbox("Tmp")
        inbox = st.open_mailbox("INBOX")
        size0 = len(MSGS[0])
        vsize0 = size0 + MSGS[0].count(b"\n")
        inbox.save([
            SaveRequest(io.BytesIO(MSGS[0]), flags=frozenset({"\\Seen"}), keywords=frozenset({"$Junk", "Work"}),
                        internaldate=1_600_000_000),
            SaveRequest(io.BytesIO(MSGS[1]), uid=5, guid="0123456789abcdef0123456789abcdef"),
            SaveRequest(io.BytesIO(MSGS[0]), uid=9, guid=f"1600000000.M1P1.peer,S={size0},W={vsize0}"),
            SaveRequest(io.BytesIO(MSGS[2]), flags=frozenset({"\\Answered", "\\Draft"})),
        ])
        inbox.update_flags([FlagUpdate(5, add_flags=frozenset({"\\Flagged"}), add_keywords=frozenset({"Later"}))])
        inbox.expunge([9])
        with st.open_mailbox("Archive/2024") as box:
            box.save([SaveRequest(io.BytesIO(MSGS[1]), uid=3, flags=frozenset({"\\Deleted"}))])
        st.rename_mailbox("Tmp", "Tmp2")
        st.delete_mailbox("Tmp2")
        st.set_subscribed("Entwürfe", True)
        st.set_subscribed("Archive/2024", True)
        got_status, got_msgs = ours(st)
    finally:
        st.close()

    want_status = theirs_status(doveadm, loc)
    want_msgs = doveadm.fetch(loc)
    assert got_status == want_status
    assert got_msgs == want_msgs
    assert want_status["Archive/2024"]["guid"] == "0f" * 16
    assert want_status["Archive/2024"]["uidvalidity"] == "1700000000"
    assert want_msgs[("INBOX", 5)] == ("0123456789abcdef0123456789abcdef", {"\\Flagged", "Later"})
    assert want_msgs[("INBOX", 1)][1] == {"\\Seen", "$Junk", "Work"}
    assert ("INBOX", 9) not in want_msgs
    listed = doveadm.run(loc, "mailbox", "list", "-s").stdout.decode().split("\n")
    assert sorted(x for x in listed if x) == ["Archive/2024", "Entwürfe"]
    body = doveadm.json(loc, "fetch", "text", "mailbox", "INBOX", "uid", "1")
    assert body[0]["text"] == MSGS[0].decode()
    date = doveadm.json(loc, "fetch", "date.received.unixtime", "mailbox", "INBOX", "uid", "1")
    assert date[0]["date.received.unixtime"] == "1600000000"
    sizes = doveadm.json(loc, "fetch", "size.physical size.virtual", "mailbox", "INBOX", "uid", "5")
    assert sizes[0] == {"size.physical": str(len(MSGS[1])), "size.virtual": str(len(MSGS[1]))}

    # Dovecot changes things; we notice with higher modseqs and keep the expunged GUID.
    st = open_storage(loc, Settings())
    try:
        with st.open_mailbox("INBOX") as box:
            before = box.status().highestmodseq
        doveadm.run(loc, "flags", "add", "\\Seen", "mailbox", "INBOX", "uid", "5")
        doveadm.run(loc, "expunge", "mailbox", "INBOX", "uid", "1")
        doveadm.run(loc, "save", "-m", "INBOX", input=MSGS[2])
        with st.open_mailbox("INBOX") as box:
            changed = {r.uid: r for r in box.records(before)}
            assert changed[5].flags == {"\\Seen", "\\Flagged"}
            assert 10 in changed  # the next UID after ours (1, 2, 5, 9)
            assert [e.uid for e in box.expunges(before)] == [1]
            assert box.expunges(before)[0].guid == want_msgs[("INBOX", 1)][0]
        got_status, got_msgs = ours(st)
    finally:
        st.close()
    assert got_status == theirs_status(doveadm, loc)
    assert got_msgs == doveadm.fetch(loc)


def test_first_look_takes_dovecots_per_message_modseqs(doveadm) -> None:  # type: ignore[no-untyped-def]
    """Changes Dovecot made before we looked keep Dovecot's order: a message it changed later
    has the higher modseq (not one modseq for everything the rescan found)."""
    root = os.path.join(doveadm.base, "Maildir")
    loc = f"maildir:{root}"
    os.makedirs(root)
    doveadm.chown(doveadm.base)
    for m in MSGS:
        doveadm.run(loc, "save", "-m", "INBOX", input=m)
    doveadm.json(loc, "fetch", "modseq", "mailbox", "INBOX")  # CONDSTORE: per-message modseqs from here on
    doveadm.run(loc, "flags", "add", "\\Seen", "mailbox", "INBOX", "uid", "3")
    for _ in range(3):
        doveadm.run(loc, "flags", "add", "Tmp", "mailbox", "INBOX", "uid", "2")
        doveadm.run(loc, "flags", "remove", "Tmp", "mailbox", "INBOX", "uid", "2")
    theirs = {int(r["uid"]): int(r["modseq"]) for r in doveadm.json(loc, "fetch", "uid modseq", "mailbox", "INBOX")}
    st = open_storage(loc, Settings())
    try:
        with st.open_mailbox("INBOX") as box:
            got = {r.uid: r.modseq for r in box.records()}
    finally:
        st.close()
    assert got == theirs
    assert got[2] > got[3] > got[1]


@LAYOUTS
@pytest.mark.parametrize("children", [False, True], ids=["leaf", "with-children"])
def test_delete_killed_half_way_leaves_no_half_mailbox(doveadm, opts: str, children: bool, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A delete stopped after its rename, while the files are still being removed, leaves
    no mailbox at all (not one whose messages look expunged), for us and for Dovecot; the
    next delete clears what was left."""
    import shutil

    import dsync_core.fsstorage as fsstorage

    root = os.path.join(doveadm.base, "Maildir")
    loc = f"maildir:{root}{opts}"
    os.makedirs(root)
    doveadm.chown(doveadm.base)
    for box in ("Box", "Other", *(["Box/Child"] if children else [])):
        doveadm.run(loc, "mailbox", "create", box)
        for m in MSGS:
            doveadm.run(loc, "save", "-m", box, input=m)
    real = shutil.rmtree
    calls = []

    def killed_rmtree(path, *a, **kw):  # type: ignore[no-untyped-def]
        calls.append(path)
        if os.path.basename(str(path)) in ("..DOVECOT-TrasH", "DOVECOT-TRASHED") and os.path.isdir(path):
            # Half the files gone, then the process dies.
            for dirpath, _dirs, files in os.walk(path):
                for f in files[: len(files) // 2]:
                    os.unlink(os.path.join(dirpath, f))
            raise KeyboardInterrupt
        return real(path, *a, **kw)

    st = open_storage(loc, Settings())
    try:
        monkeypatch.setattr(fsstorage.shutil, "rmtree", killed_rmtree)
        with pytest.raises(KeyboardInterrupt):
            st.delete_mailbox("Box")
        monkeypatch.setattr(fsstorage.shutil, "rmtree", real)
    finally:
        st.close()
    want = {"INBOX", "Other", *(["Box", "Box/Child"] if children else [])}
    leftovers = [os.path.join(d, n) for d, dirs, _f in os.walk(root) for n in dirs if "DOVECOT-T" in n.upper()]
    assert len(leftovers) == 1
    # Dovecot, reading in that state, sees no mailbox Box (and no warning).
    assert {r["mailbox"] for r in doveadm.json(loc, "mailbox", "list")} == want
    for box in want - {"Box"}:
        got = doveadm.json(loc, "mailbox", "status", "messages", box)
        assert got == [{"mailbox": box, "messages": "0" if box == "INBOX" else str(len(MSGS))}]
    fail = doveadm.run(loc, "mailbox", "status", "messages", "Box", check=False, allow_stderr=True)
    assert fail.returncode != 0 and b"doesn't exist" in fail.stderr
    # Neither do we; opening the store finishes the removal.
    st = open_storage(loc, Settings())
    try:
        assert not os.path.exists(leftovers[0])
        assert {i.name for i in st.list_mailboxes()} == want
        assert {i.name for i in st.list_mailboxes() if i.selectable} == want - {"Box"}
    finally:
        st.close()
