"""sdbox round trips against a real Dovecot: we write and doveadm reads, and the other way
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


def test_we_write_dovecot_reads_and_modifies(doveadm) -> None:  # type: ignore[no-untyped-def]
    root = os.path.join(doveadm.base, "sdbox")
    loc = f"sdbox:{root}"
    doveadm.chown(doveadm.base)
    write_sample(loc)
    doveadm.chown(doveadm.base)
    check_sample(doveadm, loc)
    with open(os.path.join(root, "mailboxes", "INBOX", "dbox-Mails", "u.5"), "rb") as f:
        raw = f.read()
    assert raw.startswith(b"2 M1e C") and b"\n\x01\x03\n" in raw and b"G0123456789abcdef0123456789abcdef\n" in raw

    # Dovecot changes the mailbox: save, flag, expunge, purge, force-resync; no warnings.
    doveadm.run(loc, "save", "-m", "INBOX", input=MSGS[2])
    doveadm.run(loc, "flags", "add", "\\Seen Dove", "mailbox", "INBOX", "uid", "5")
    doveadm.run(loc, "flags", "remove", "Work", "mailbox", "INBOX", "uid", "1")
    doveadm.run(loc, "expunge", "mailbox", "INBOX", "uid", "2")
    doveadm.run(loc, "purge")
    check_dovecot_changes(doveadm, loc)

    # ... and we read its changes back, and keep writing after it.
    read_back_and_write(doveadm, loc, [1])


def test_dovecot_writes_we_read(doveadm) -> None:  # type: ignore[no-untyped-def]
    root = os.path.join(doveadm.base, "sdbox")
    loc = f"sdbox:{root}"
    os.makedirs(root)
    doveadm.chown(doveadm.base)
    bin_guid = populate_with_dovecot(doveadm, loc, flag_rounds=3)
    idx = os.path.join(root, "mailboxes", "INBOX", "dbox-Mails")
    assert not os.path.exists(os.path.join(idx, "dovecot.index.log.2"))
    got = check_against_dovecot(doveadm, loc)
    assert [e.uid for e in got["INBOX"][2]] == [3]
    st = open_storage(loc, Settings())
    try:
        assert sorted(st.subscriptions()) == ["Archive/2024", "Entwürfe"]
        assert any(r.type == MailboxLogType.DELETE_MAILBOX and r.guid == bin_guid for r in st.mailbox_log())
        with st.open_mailbox("INBOX") as box:
            assert box.open_body(1).read() == MSGS[0]
    finally:
        st.close()


def test_dovecot_rotated_log_and_main_index(doveadm) -> None:  # type: ignore[no-untyped-def]
    root = os.path.join(doveadm.base, "sdbox")
    loc = f"sdbox:{root}"
    os.makedirs(root)
    doveadm.chown(doveadm.base)
    populate_with_dovecot(doveadm, loc, flag_rounds=0)
    idx = os.path.join(root, "mailboxes", "INBOX", "dbox-Mails")
    # Dovecot rotates a log over mail_index_log_rotate_max_size (1M) at its next sync, or
    # over the min size once older than 5 minutes; a small max size makes it rotate now.
    log_path = os.path.join(idx, "dovecot.index.log")
    kws = " ".join(f"kw{i:03d}_" + "k" * 30 for i in range(100))
    for _ in range(2):  # each round logs ~12 KiB of keyword records
        doveadm.run(loc, "flags", "add", kws, "mailbox", "INBOX", "uid", "1:*")
        doveadm.run(loc, "flags", "remove", kws, "mailbox", "INBOX", "uid", "2:*")
    assert not os.path.exists(log_path + ".2")
    small = ("-o", "mail_index_log_rotate_max_size=8k")
    doveadm.run(loc, *small, "flags", "add", "\\Seen", "mailbox", "INBOX", "uid", "2")
    doveadm.run(loc, *small, "flags", "add", "Final", "mailbox", "INBOX", "uid", "1")
    assert os.path.exists(log_path + ".2"), "Dovecot did not rotate the log"
    assert os.path.exists(os.path.join(idx, "dovecot.index")), "Dovecot wrote no main index"
    check_against_dovecot(doveadm, loc)
    # We append to the rotated log; Dovecot accepts it.
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


def test_backup_rebuilds_an_sdbox_inbox_dovecot_reads_it(doveadm) -> None:  # type: ignore[no-untyped-def]
    """A backup whose destination INBOX used UIDs the source has for other mail: INBOX can't
    be deleted, so it is reset (emptied, UIDs from 1 under the source's UIDVALIDITY, same
    GUID, HIGHESTMODSEQ higher) and filled; Dovecot reads the result without a warning."""
    src, dst = os.path.join(doveadm.base, "Maildir"), os.path.join(doveadm.base, "sdbox")
    os.makedirs(src)
    doveadm.chown(doveadm.base)
    ls, ld = f"maildir:{src}", f"sdbox:{dst}"
    for m in MSGS[:2]:
        doveadm.run(ls, "save", "-m", "INBOX", input=m)
    env = dict(os.environ, HOME=doveadm.base)

    def backup() -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "dsync_core", "-o", f"mail_location={ls}", "backup", ld],
                              capture_output=True, timeout=120, env=env)

    assert backup().returncode == 0
    doveadm.chown(doveadm.base)
    # The destination gets mail of its own at UID 3, the source other mail at UID 3.
    doveadm.run(ld, "save", "-m", "INBOX", input=b"Subject: only on the copy\n\nx\n")
    doveadm.run(ls, "save", "-m", "INBOX", input=MSGS[2])
    doveadm.run(ls, "expunge", "mailbox", "INBOX", "uid", "1")  # and a gap below it
    old_modseq = int(doveadm.json(ld, "mailbox", "status", "highestmodseq", "INBOX")[0]["highestmodseq"])
    old_guid = doveadm.json(ld, "mailbox", "status", "guid", "INBOX")[0]["guid"]
    proc = backup()
    assert proc.returncode == 0, proc.stderr.decode()
    doveadm.chown(doveadm.base)
    theirs_fetch, theirs_status = compare(doveadm, ld)
    want = [(m, u, g, f) for m, u, g, f in norm_fetch(doveadm.json(ls, "fetch", "mailbox uid guid flags", "all"))]
    assert theirs_fetch == want
    (inbox,) = [r for r in theirs_status if r["mailbox"] == "INBOX"]
    src_status = doveadm.json(ls, "mailbox", "status", "uidvalidity uidnext", "INBOX")[0]
    assert inbox["uidvalidity"] == src_status["uidvalidity"] and inbox["guid"] == old_guid
    assert int(inbox["highestmodseq"]) > old_modseq
    # Dovecot goes on using it: save, flag, expunge, without a warning; and we read that.
    doveadm.run(ld, "save", "-m", "INBOX", input=b"Subject: later\n\ny\n")
    doveadm.run(ld, "flags", "add", "\\Seen", "mailbox", "INBOX", "uid", "2")
    doveadm.run(ld, "expunge", "mailbox", "INBOX", "uid", "3")
    compare(doveadm, ld)
