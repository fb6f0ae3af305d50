"""mdbox round trips against a real Dovecot: we write and doveadm reads, and the other way
(helpers and the rules of comparison in ``dbox_helpers``)."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from dbox_helpers import (
    MSGS,
    check_against_dovecot,
    check_dovecot_changes,
    check_sample,
    compare,
    force_resync,
    norm_fetch,
    populate_with_dovecot,
    read_back_and_write,
    write_sample,
)

from dsync_core.api import open_storage
from dsync_core.model import MailboxLogType, SaveRequest
from dsync_core.settings import Settings


def _storage_files(root: str) -> list[str]:
    return sorted(n for n in os.listdir(os.path.join(root, "storage")) if n.startswith("m."))


def _refcounts(loc: str) -> dict[int, int]:
    st = open_storage(loc, Settings())
    try:
        return {r.map_uid: r.refcount for r in st.map.records()}  # type: ignore[attr-defined]
    finally:
        st.close()


def _deleted(doveadm, root: str) -> list:  # type: ignore[no-untyped-def, type-arg]
    """Messages with reference count 0, as Dovecot's ``mdbox_deleted:`` storage shows them."""
    return doveadm.json(f"mdbox_deleted:{root}", "fetch", "mailbox guid", "all")


def _dsync(*args: str, home: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "dsync_core", *args], capture_output=True, timeout=180,
                          env=dict(os.environ, HOME=home))


def test_dovecot_writes_we_read(doveadm) -> None:  # type: ignore[no-untyped-def]
    root = os.path.join(doveadm.base, "mdbox")
    loc = f"mdbox:{root}"
    os.makedirs(root)
    doveadm.chown(doveadm.base)
    bin_guid = populate_with_dovecot(doveadm, loc, copies=True)
    assert not os.path.exists(os.path.join(root, "storage", "dovecot.map.index"))
    got = check_against_dovecot(doveadm, loc)
    assert [e.uid for e in got["INBOX"][2]] == [3]
    inbox = {r.uid: r for r in got["INBOX"][1]}
    copies = {r.guid for r in got["Entwürfe"][1]}
    assert copies == {inbox[1].guid, inbox[2].guid}
    st = open_storage(loc, Settings())
    try:
        assert sorted(st.subscriptions()) == ["Archive/2024", "Entwürfe"]
        assert any(r.type == MailboxLogType.DELETE_MAILBOX and r.guid == bin_guid for r in st.mailbox_log())
        with st.open_mailbox("INBOX") as box:
            assert box.open_body(1).read() == MSGS[0]
            assert box.open_body(2).read() == MSGS[1]
        with st.open_mailbox("Entwürfe") as box:
            assert sorted(box.open_body(r.uid).read() for r in box.records()) == sorted(MSGS[:2])
        refs = sorted(st.map.records(), key=lambda r: r.map_uid)  # type: ignore[attr-defined]
    finally:
        st.close()
    # INBOX 1 and 2 are in two mailboxes, INBOX 3 was expunged, Archive's message in one.
    assert [r.refcount for r in refs] == [2, 2, 0, 1]


def test_dovecot_rotated_log_main_index_and_purge(doveadm) -> None:  # type: ignore[no-untyped-def]
    root = os.path.join(doveadm.base, "mdbox")
    loc = f"mdbox:{root}"
    os.makedirs(root)
    doveadm.chown(doveadm.base)
    populate_with_dovecot(doveadm, loc, copies=True)
    idx = os.path.join(root, "mailboxes", "INBOX", "dbox-Mails")
    log_path = os.path.join(idx, "dovecot.index.log")
    kws = " ".join(f"kw{i:03d}_" + "k" * 30 for i in range(100))
    for _ in range(2):  # each round logs ~12 KiB of keyword records
        doveadm.run(loc, "flags", "add", kws, "mailbox", "INBOX", "uid", "1:*")
        doveadm.run(loc, "flags", "remove", kws, "mailbox", "INBOX", "uid", "2:*")
    small = ("-o", "mail_index_log_rotate_max_size=8k")
    doveadm.run(loc, *small, "flags", "add", "\\Seen", "mailbox", "INBOX", "uid", "2")
    doveadm.run(loc, *small, "flags", "add", "Final", "mailbox", "INBOX", "uid", "1")
    assert os.path.exists(log_path + ".2"), "Dovecot did not rotate the log"
    assert os.path.exists(os.path.join(idx, "dovecot.index")), "Dovecot wrote no main index"
    check_against_dovecot(doveadm, loc)
    # Dovecot purges (a new m.* file, the map records moved) and rebuilds everything
    # (dovecot.map.index and every mailbox's dovecot.index written): we read the result.
    before = _storage_files(root)
    doveadm.run(loc, "purge")
    assert _storage_files(root) != before
    force_resync(doveadm, loc)
    assert os.path.exists(os.path.join(root, "storage", "dovecot.map.index"))
    check_against_dovecot(doveadm, loc)
    # We append to the rotated logs; Dovecot accepts it.
    st = open_storage(loc, Settings())
    try:
        with st.open_mailbox("INBOX") as box:
            box.save([SaveRequest(io.BytesIO(MSGS[0]), keywords=frozenset({"Ours"}))])
            box.expunge([2])
    finally:
        st.close()
    doveadm.chown(doveadm.base)
    fetched, _ = compare(doveadm, loc)
    assert ("INBOX", "2") not in {(m, u) for m, u, _, _ in fetched}
    force_resync(doveadm, loc)
    compare(doveadm, loc)


def test_we_write_dovecot_reads_and_modifies(doveadm) -> None:  # type: ignore[no-untyped-def]
    root = os.path.join(doveadm.base, "mdbox")
    loc = f"mdbox:{root}"
    doveadm.chown(doveadm.base)
    write_sample(loc, message_in_deleted_box=True)
    doveadm.chown(doveadm.base)
    # One new file per save batch; the expunged and the deleted mailbox's message have
    # reference count 0 (Dovecot's mdbox_deleted: storage shows them).
    assert _storage_files(root) == ["m.1", "m.2", "m.3"]
    assert sorted(_refcounts(loc).values()) == [0, 0, 1, 1, 1, 1]
    assert len(_deleted(doveadm, root)) == 2
    check_sample(doveadm, loc)
    with open(os.path.join(root, "storage", "m.1"), "rb") as f:
        raw = f.read()
    assert raw.startswith(b"2 M1e C") and b"G0123456789abcdef0123456789abcdef\nBINBOX\n" in raw

    # Dovecot changes the store: save (appending to our newest file), flag, copy, expunge,
    # purge, force-resync; no warnings.
    size = os.path.getsize(os.path.join(root, "storage", "m.3"))
    doveadm.run(loc, "save", "-m", "INBOX", input=MSGS[2])
    assert _storage_files(root) == ["m.1", "m.2", "m.3"], "Dovecot did not append to our file"
    assert os.path.getsize(os.path.join(root, "storage", "m.3")) > size
    doveadm.run(loc, "flags", "add", "\\Seen Dove", "mailbox", "INBOX", "uid", "5")
    doveadm.run(loc, "flags", "remove", "Work", "mailbox", "INBOX", "uid", "1")
    doveadm.run(loc, "copy", "Entwürfe", "mailbox", "INBOX", "uid", "5")
    doveadm.run(loc, "expunge", "mailbox", "INBOX", "uid", "2")
    doveadm.run(loc, "purge")
    assert _deleted(doveadm, root) == []
    inbox = check_dovecot_changes(doveadm, loc)
    fetched, _ = compare(doveadm, loc)
    assert ("Entwürfe", inbox["5"][0]) in {(m, g) for m, _, g, _ in fetched}

    # ... and we read its changes back, and keep writing after it.
    read_back_and_write(doveadm, loc, [1, 5])
    # UID 5's message is still in Entwürfe (its reference count went from 2 to 1).
    assert len(_deleted(doveadm, root)) == 1
    doveadm.run(loc, "purge")
    force_resync(doveadm, loc)
    fetched, _ = compare(doveadm, loc)
    assert len([1 for m, _, _, _ in fetched if m == "Entwürfe"]) == 1

def test_our_purge_dovecot_reads_it(doveadm) -> None:  # type: ignore[no-untyped-def]
    root = os.path.join(doveadm.base, "mdbox")
    loc = f"mdbox:{root}"
    os.makedirs(root)
    doveadm.chown(doveadm.base)
    for i in range(6):
        doveadm.run(loc, "save", "-m", "INBOX", input=MSGS[i % 3] + f"x{i}\n".encode())
    doveadm.run(loc, "mailbox", "create", "Keep")
    doveadm.run(loc, "copy", "Keep", "mailbox", "INBOX", "uid", "2")
    doveadm.run(loc, "flags", "add", "\\Seen kw", "mailbox", "INBOX", "uid", "4")
    doveadm.run(loc, "expunge", "mailbox", "INBOX", "uid", "1:3")
    assert len(_deleted(doveadm, root)) == 2  # UID 2 lives on in Keep
    before = fetch_bodies(loc)
    size_before = os.path.getsize(os.path.join(root, "storage", "m.1"))
    proc = _dsync("-o", f"mail_location={loc}", "purge", home=doveadm.base)
    assert proc.returncode == 0, proc.stderr.decode()
    doveadm.chown(doveadm.base)
    files = _storage_files(root)
    assert files == ["m.2"]
    assert os.path.getsize(os.path.join(root, "storage", "m.2")) < size_before
    assert _deleted(doveadm, root) == []
    assert fetch_bodies(loc) == before
    compare(doveadm, loc)
    # Dovecot keeps using the purged store: save, expunge, its own purge, force-resync.
    doveadm.run(loc, "save", "-m", "INBOX", input=MSGS[0])
    doveadm.run(loc, "expunge", "mailbox", "INBOX", "uid", "4")
    doveadm.run(loc, "purge")
    force_resync(doveadm, loc)
    compare(doveadm, loc)
    # A second purge with nothing to do changes nothing.
    files = _storage_files(root)
    assert _dsync("-o", f"mail_location={loc}", "purge", home=doveadm.base).returncode == 0
    assert _storage_files(root) == files


def fetch_bodies(loc: str) -> dict[tuple[str, int], bytes]:
    st = open_storage(loc, Settings())
    try:
        out = {}
        for info in st.list_mailboxes():
            if info.selectable:
                with st.open_mailbox(info.name) as box:
                    for r in box.records():
                        out[(info.name, r.uid)] = box.open_body(r.uid).read()
        return out
    finally:
        st.close()


def test_rotation_by_size(doveadm) -> None:  # type: ignore[no-untyped-def]
    """New files are rotated at mdbox_rotate_size; with dsync_mdbox_append we append to the
    newest file as Dovecot does."""
    root = os.path.join(doveadm.base, "mdbox")
    loc = f"mdbox:{root}"
    body = b"Subject: big\n\n" + b"x" * 3000 + b"\n"
    settings = Settings({"mdbox_rotate_size": "8k", "dsync_mdbox_append": "yes"})
    st = open_storage(loc, settings)
    try:
        with st.open_mailbox("INBOX") as box:
            box.save([SaveRequest(io.BytesIO(body)) for _ in range(5)])  # 2 + 2 + 1
            assert _storage_files(root) == ["m.1", "m.2", "m.3"]
            box.save([SaveRequest(io.BytesIO(body))])  # appended to m.3
            assert _storage_files(root) == ["m.1", "m.2", "m.3"]
            box.save([SaveRequest(io.BytesIO(body))])  # m.3 is full
            assert _storage_files(root) == ["m.1", "m.2", "m.3", "m.4"]
    finally:
        st.close()
    for name in _storage_files(root):
        assert os.path.getsize(os.path.join(root, "storage", name)) <= 8192
    doveadm.chown(doveadm.base)
    fetched, _ = compare(doveadm, loc)
    assert len(fetched) == 7
    # Dovecot with the same rotate size appends to the last file, then starts m.5.
    doveadm.run(loc, "-o", "mdbox_rotate_size=8k", "save", "-m", "INBOX", input=body)
    doveadm.run(loc, "-o", "mdbox_rotate_size=8k", "save", "-m", "INBOX", input=body)
    assert _storage_files(root) == ["m.1", "m.2", "m.3", "m.4", "m.5"]
    compare(doveadm, loc)
    assert all(b == body for b in fetch_bodies(loc).values())
    # Without dsync_mdbox_append each batch starts a file of its own.
    st = open_storage(loc, Settings({"mdbox_rotate_size": "8k"}))
    try:
        with st.open_mailbox("INBOX") as box:
            box.save([SaveRequest(io.BytesIO(b"Subject: small\n\n"))])
    finally:
        st.close()
    doveadm.chown(doveadm.base)
    assert _storage_files(root) == ["m.1", "m.2", "m.3", "m.4", "m.5", "m.6"]
    compare(doveadm, loc)


def test_backup_maildir_to_mdbox_and_back(doveadm) -> None:  # type: ignore[no-untyped-def]
    """``dsync backup`` Maildir -> mdbox: doveadm and dsync print the same for the copy, and
    its messages are the source's (GUIDs, flags, bodies); a second run copies nothing."""
    src, dst = os.path.join(doveadm.base, "Maildir"), os.path.join(doveadm.base, "mdbox")
    os.makedirs(src)
    doveadm.chown(doveadm.base)
    ls, ld = f"maildir:{src}", f"mdbox:{dst}"
    for m in MSGS:
        doveadm.run(ls, "save", "-m", "INBOX", input=m)
    doveadm.run(ls, "mailbox", "create", "Sub/Deeper")
    doveadm.run(ls, "save", "-m", "Sub/Deeper", input=MSGS[1])
    doveadm.run(ls, "flags", "add", "\\Seen $Forwarded", "mailbox", "INBOX", "uid", "2")
    proc = _dsync("-o", f"mail_location={ls}", "backup", ld, home=doveadm.base)
    assert proc.returncode == 0, proc.stderr.decode()
    doveadm.chown(doveadm.base)
    fetched, _ = compare(doveadm, ld)
    assert fetched == norm_fetch(doveadm.json(ls, "fetch", "mailbox uid guid flags", "all"))
    files = _storage_files(dst)
    log_size = os.path.getsize(os.path.join(dst, "storage", "dovecot.map.index.log"))
    proc = _dsync("-o", f"mail_location={ls}", "backup", ld, home=doveadm.base)
    assert proc.returncode == 0, proc.stderr.decode()
    assert _storage_files(dst) == files
    assert os.path.getsize(os.path.join(dst, "storage", "dovecot.map.index.log")) == log_size
    # A change at the source: an expunge and a new message; -P purges the copy afterwards.
    doveadm.run(ls, "expunge", "mailbox", "INBOX", "uid", "1")
    doveadm.run(ls, "save", "-m", "INBOX", input=b"Subject: new\n\nnew\n")
    proc = _dsync("-o", f"mail_location={ls}", "backup", "-P", ld, home=doveadm.base)
    assert proc.returncode == 0, proc.stderr.decode()
    doveadm.chown(doveadm.base)
    fetched, _ = compare(doveadm, ld)
    assert fetched == norm_fetch(doveadm.json(ls, "fetch", "mailbox uid guid flags", "all"))
    assert _deleted(doveadm, dst) == []


def test_backup_rebuilds_an_mdbox_inbox(doveadm) -> None:  # type: ignore[no-untyped-def]
    """A backup whose destination INBOX used UIDs the source has for other mail: INBOX is
    reset (references of its messages dropped, UIDs from 1 under the source's UIDVALIDITY,
    same GUID, HIGHESTMODSEQ higher) and filled; Dovecot reads, changes and purges it."""
    src, dst = os.path.join(doveadm.base, "Maildir"), os.path.join(doveadm.base, "mdbox")
    os.makedirs(src)
    doveadm.chown(doveadm.base)
    ls, ld = f"maildir:{src}", f"mdbox:{dst}"
    for m in MSGS[:2]:
        doveadm.run(ls, "save", "-m", "INBOX", input=m)
    assert _dsync("-o", f"mail_location={ls}", "backup", ld, home=doveadm.base).returncode == 0
    doveadm.chown(doveadm.base)
    doveadm.run(ld, "save", "-m", "INBOX", input=b"Subject: only on the copy\n\nx\n")
    doveadm.run(ls, "save", "-m", "INBOX", input=MSGS[2])
    doveadm.run(ls, "expunge", "mailbox", "INBOX", "uid", "1")
    old = doveadm.json(ld, "mailbox", "status", "highestmodseq guid", "INBOX")[0]
    proc = _dsync("-o", f"mail_location={ls}", "backup", ld, home=doveadm.base)
    assert proc.returncode == 0, proc.stderr.decode()
    doveadm.chown(doveadm.base)
    theirs_fetch, theirs_status = compare(doveadm, ld)
    assert theirs_fetch == norm_fetch(doveadm.json(ls, "fetch", "mailbox uid guid flags", "all"))
    (inbox,) = [r for r in theirs_status if r["mailbox"] == "INBOX"]
    src_status = doveadm.json(ls, "mailbox", "status", "uidvalidity", "INBOX")[0]
    assert inbox["uidvalidity"] == src_status["uidvalidity"] and inbox["guid"] == old["guid"]
    assert int(inbox["highestmodseq"]) > int(old["highestmodseq"])
    assert all(r == 1 or r == 0 for r in _refcounts(ld).values())
    doveadm.run(ld, "save", "-m", "INBOX", input=b"Subject: later\n\ny\n")
    doveadm.run(ld, "flags", "add", "\\Seen", "mailbox", "INBOX", "uid", "2")
    doveadm.run(ld, "expunge", "mailbox", "INBOX", "uid", "3")
    doveadm.run(ld, "purge")
    assert _deleted(doveadm, dst) == []
    compare(doveadm, ld)
