"""Conversion through every format with ``dsync backup``: Maildir -> mdbox -> sdbox -> Maildir.

Dovecot writes the first Maildir and reads every stage (without a warning); each stage must
hold, per mailbox, the same messages as the first: compared by Message-ID, full text and
flags (keywords included).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

from dbox_helpers import compare


def _content(doveadm, loc: str) -> dict[str, Counter]:  # type: ignore[no-untyped-def, type-arg]
    rows = doveadm.json(loc, "fetch", "mailbox hdr.message-id flags text", "all")
    out: dict[str, Counter] = {}  # type: ignore[type-arg]
    for r in rows:
        flags = frozenset(r["flags"].split()) - {"\\Recent"}
        out.setdefault(r["mailbox"], Counter())[(r["hdr.message-id"], r["text"], flags)] += 1
    return out


def _backup(src: str, dst: str, home: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "dsync_core", "-o", f"mail_location={src}", "backup", dst],
                          capture_output=True, timeout=300, env=dict(os.environ, HOME=home))
    assert proc.returncode == 0, f"backup {src} -> {dst}: {proc.stderr.decode()}"


def test_maildir_mdbox_sdbox_maildir(doveadm) -> None:  # type: ignore[no-untyped-def]
    base = doveadm.base
    locs = [f"maildir:{base}/Maildir", f"mdbox:{base}/mdbox", f"sdbox:{base}/sdbox", f"maildir:{base}/Maildir2"]
    os.makedirs(f"{base}/Maildir")
    doveadm.chown(base)
    first = locs[0]
    doveadm.run(first, "mailbox", "create", "Archive/2024", "Entwürfe", "Empty")
    boxes = ["INBOX", "Archive/2024", "Entwürfe"]
    for i in range(24):
        box = boxes[i % 3]
        body = (f"From: sender{i}@example.org\nSubject: message {i}\nMessage-ID: <m{i}@example.org>\n\n"
                + f"line {i}\n" * (1 + i % 5)).encode()
        if i % 4 == 0:
            body = body.replace(b"\n", b"\r\n")  # Dovecot stores LF; the text must survive as it stores it
        doveadm.run(first, "save", "-m", box, input=body)
    doveadm.run(first, "flags", "add", "\\Seen", "mailbox", "INBOX", "uid", "1:4")
    doveadm.run(first, "flags", "add", "\\Flagged $Forwarded Later", "mailbox", "Archive/2024", "uid", "2")
    doveadm.run(first, "flags", "add", "\\Answered \\Draft work", "mailbox", "Entwürfe", "uid", "3:5")
    doveadm.run(first, "expunge", "mailbox", "INBOX", "uid", "5")
    want = _content(doveadm, first)
    assert sum(sum(c.values()) for c in want.values()) == 23
    for src, dst in zip(locs, locs[1:]):
        _backup(src, dst, base)
        doveadm.chown(base)
        if not dst.startswith("maildir:"):
            compare(doveadm, dst)  # doveadm, our CLI and our API agree on the stage
        assert _content(doveadm, dst) == want, f"{dst} differs from the first Maildir"
        names = {r["mailbox"] for r in doveadm.json(dst, "mailbox", "list")}
        assert {"INBOX", "Archive", "Archive/2024", "Entwürfe", "Empty"} <= names, dst
