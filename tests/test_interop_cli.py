"""Acceptance: ``dsync`` mail commands and real ``doveadm`` agree on the same Maildir.

Both directions, both layouts, non-ASCII and nested names: what one tool writes, the
other reads back with the same UIDs, GUIDs, flags and status (``\\Recent`` aside: it is a
per-session flag).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dsync_core.testing.dovecot import Doveadm

MESSAGES = [
    b"From: a@example.org\nSubject: one\nMessage-ID: <one@example.org>\n\nbody one\n",
    b"From: b@example.org\nSubject: two\nMessage-ID: <two@example.org>\n\nbody two\n",
    b"From: c@example.org\nSubject: =?UTF-8?Q?dr=C3=A9i?=\nMessage-ID: <three@example.org>\n\nbody three\n",
]


class Dsync:
    """Runs the installed ``dsync`` command (``python -m dsync_core``) as a user would."""

    def __init__(self, doveadm: Doveadm) -> None:
        self.doveadm = doveadm

    def run(self, location: str, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        env = dict(os.environ, TZ="UTC", HOME=self.doveadm.base)
        proc = subprocess.run(
            [sys.executable, "-m", "dsync_core", "-o", f"mail_location={location}", *args],
            input=input, capture_output=True, env=env, timeout=60,
        )
        assert proc.returncode == 0, f"dsync {' '.join(args)}: {proc.stderr.decode()}"
        assert b"Traceback" not in proc.stderr
        return proc

    def json(self, location: str, *args: str) -> list[dict[str, str]]:
        return json.loads(self.run(location, "-f", "json", *args).stdout)


def _fetch(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    out = []
    for r in rows:
        r = dict(r)
        r["flags"] = " ".join(f for f in r["flags"].split() if f != "\\Recent")
        out.append(r)
    return sorted(out, key=lambda r: (r["mailbox"], int(r["uid"])))


def _status(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return sorted(rows, key=lambda r: r["mailbox"])


FETCH = ("fetch", "mailbox uid guid flags", "all")
STATUS = ("mailbox", "status", "messages uidvalidity uidnext guid unseen", "*")
STATUS_MODSEQ = ("mailbox", "status", "messages uidvalidity uidnext guid unseen highestmodseq", "*")


def _mailroot(doveadm: Doveadm, name: str) -> str:
    root = os.path.join(doveadm.base, name)
    os.makedirs(root)
    doveadm.chown(root)
    return root


@pytest.mark.parametrize("layout", ["", ":LAYOUT=fs"])
def test_dovecot_writes_dsync_reads_identically(doveadm: Doveadm, layout: str) -> None:
    loc = f"maildir:{_mailroot(doveadm, 'Maildir')}{layout}"
    dv = doveadm
    dv.run(loc, "mailbox", "create", "-s", "Entwürfe", "Archive/2024", "Old", "Gone")
    for i, msg in enumerate(MESSAGES):
        dv.run(loc, "save", "-m", "INBOX", input=msg)
        dv.run(loc, "save", "-m", ["Entwürfe", "Archive/2024", "Old"][i], input=msg)
    dv.run(loc, "flags", "add", "\\Seen $Junk Work", "mailbox", "INBOX", "uid", "1:2")
    dv.run(loc, "flags", "add", "\\Flagged Zeta", "mailbox", "Entwürfe", "all")
    dv.run(loc, "flags", "remove", "Work", "mailbox", "INBOX", "uid", "2")
    dv.run(loc, "expunge", "mailbox", "INBOX", "uid", "3")
    dv.run(loc, "mailbox", "rename", "Old", "Renamed/Ünter")
    dv.run(loc, "mailbox", "delete", "Gone")
    dv.run(loc, "mailbox", "unsubscribe", "Archive/2024")

    ds = Dsync(dv)
    assert _fetch(ds.json(loc, *FETCH)) == _fetch(dv.json(loc, *FETCH))
    # HIGHESTMODSEQ too: we read it from Dovecot's own index where Dovecot has one.
    assert _status(ds.json(loc, *STATUS_MODSEQ)) == _status(dv.json(loc, *STATUS_MODSEQ))
    assert sorted(r["mailbox"] for r in ds.json(loc, "mailbox", "list", "-s")) == sorted(
        r["mailbox"] for r in dv.json(loc, "mailbox", "list", "-s")
    )
    ours = {r["mailbox"] for r in ds.json(loc, "mailbox", "list")}
    assert ours == {r["mailbox"] for r in dv.json(loc, "mailbox", "list")}
    assert "Renamed/Ünter" in ours and "Gone" not in ours
    # Flags print in doveadm's order: system flags fixed, keywords in dovecot-keywords order.
    flags = {(r["mailbox"], r["uid"]): r["flags"] for r in ds.json(loc, *FETCH)}
    assert flags[("INBOX", "1")] == "\\Seen $Junk Work"


@pytest.mark.parametrize("layout", ["", ":LAYOUT=fs"])
def test_dsync_writes_dovecot_reads_identically(doveadm: Doveadm, layout: str) -> None:
    loc = f"maildir:{_mailroot(doveadm, 'Maildir')}{layout}"
    ds = Dsync(doveadm)
    ds.run(loc, "mailbox", "create", "-s", "Entwürfe", "Archive/2024", "Old", "Gone")
    for i, msg in enumerate(MESSAGES):
        ds.run(loc, "save", "-m", "INBOX", input=msg)
        ds.run(loc, "save", "-m", ["Entwürfe", "Archive/2024", "Old"][i], input=msg.replace(b"\n", b"\r\n"))
    ds.run(loc, "flags", "add", "\\Seen $Junk Work", "mailbox", "INBOX", "uid", "1:2")
    ds.run(loc, "flags", "add", "\\Flagged Zeta", "mailbox", "Entwürfe", "all")
    ds.run(loc, "flags", "remove", "Work", "mailbox", "INBOX", "uid", "2")
    ds.run(loc, "expunge", "mailbox", "INBOX", "uid", "3")
    ds.run(loc, "mailbox", "rename", "Old", "Renamed/Ünter")
    ds.run(loc, "mailbox", "delete", "Gone")
    ds.run(loc, "mailbox", "unsubscribe", "Archive/2024")

    dv = doveadm  # Doveadm.run fails on any Warning:/Error: line: our files must be clean.
    assert _fetch(dv.json(loc, *FETCH)) == _fetch(ds.json(loc, *FETCH))
    # HIGHESTMODSEQ too: we keep Dovecot's own index in step with our writes.
    assert _status(dv.json(loc, *STATUS_MODSEQ)) == _status(ds.json(loc, *STATUS_MODSEQ))
    assert sorted(r["mailbox"] for r in dv.json(loc, "mailbox", "list", "-s")) == sorted(
        r["mailbox"] for r in ds.json(loc, "mailbox", "list", "-s")
    )
    # Bodies: doveadm serves exactly what we stored (CRLF converted to LF by save, as doveadm does).
    bodies = dv.json(loc, "fetch", "mailbox text", "mailbox", "Archive/2024")
    assert bodies == [{"mailbox": "Archive/2024", "text": MESSAGES[1].decode()}]
    # More writes by each tool in turn; the other reads the same status, modseqs included.
    dv.run(loc, "flags", "add", "\\Answered Later", "mailbox", "Entwürfe", "uid", "1")
    dv.run(loc, "save", "-m", "INBOX", input=MESSAGES[2])
    assert _status(ds.json(loc, *STATUS_MODSEQ)) == _status(dv.json(loc, *STATUS_MODSEQ))
    ds.run(loc, "flags", "replace", "\\Seen Other", "mailbox", "INBOX", "all")
    ds.run(loc, "expunge", "mailbox", "Entwürfe", "uid", "2")
    assert _status(dv.json(loc, *STATUS_MODSEQ)) == _status(ds.json(loc, *STATUS_MODSEQ))
    assert _fetch(dv.json(loc, *FETCH)) == _fetch(ds.json(loc, *FETCH))


def test_dovecot_changes_after_our_writes_are_seen(doveadm: Doveadm) -> None:
    loc = f"maildir:{_mailroot(doveadm, 'Maildir')}"
    ds = Dsync(doveadm)
    for msg in MESSAGES:
        ds.run(loc, "save", input=msg)
    before = ds.json(loc, "mailbox", "status", "highestmodseq", "INBOX")[0]["highestmodseq"]
    doveadm.run(loc, "flags", "add", "\\Answered", "mailbox", "INBOX", "uid", "1")
    doveadm.run(loc, "expunge", "mailbox", "INBOX", "uid", "2")
    doveadm.run(loc, "save", input=b"Subject: four\n\nfour\n")
    assert _fetch(ds.json(loc, *FETCH)) == _fetch(doveadm.json(loc, *FETCH))
    after = ds.json(loc, "mailbox", "status", "highestmodseq", "INBOX")[0]["highestmodseq"]
    assert int(after) > int(before)
