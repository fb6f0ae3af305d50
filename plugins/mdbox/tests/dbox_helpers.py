"""Helpers of the dbox interop tests (sdbox and mdbox): run our CLI and API and doveadm on
one store and compare what they print.

Every doveadm run fails the test if doveadm prints a ``Warning:`` or ``Error:`` (Dovecot's
way of saying it had to repair something we wrote), except the notices ``force-resync``
always prints. The comparisons use the same doveadm commands on both sides: ``fetch
'mailbox uid guid flags' all`` and ``mailbox status 'messages uidvalidity uidnext guid
highestmodseq' '*'``, ours through ``python -m dsync_core`` (``\\Recent`` is ignored: it is
per session).
"""

from __future__ import annotations

import json
import subprocess
import sys

from dsync_core.api import open_storage
from dsync_core.settings import Settings

MSGS = [
    b"From: Alice <alice@example.com>\nSubject: one\nMessage-ID: <1@x>\n\nBody line 1\nBody line 2\n",
    b"From: Bob <bob@example.com>\nSubject: two\n\nsecond body\n",
    b"From: carol@example.com\nSubject: three\n\n",
]
STATUS_FIELDS = "messages uidvalidity uidnext guid highestmodseq"


def norm_fetch(rows: list[dict[str, str]]) -> list[tuple[str, str, str, frozenset[str]]]:
    out = []
    for r in rows:
        flags = frozenset(r["flags"].split()) - {"\\Recent"}
        out.append((r["mailbox"], r["uid"], r["guid"], flags))
    return sorted(out)


def dsync_json(location: str, *args: str) -> list[dict[str, str]]:
    proc = subprocess.run(
        [sys.executable, "-m", "dsync_core", "-o", f"mail_location={location}", "-f", "json", *args],
        capture_output=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout or b"[]")


def api_json(location: str, *args: str) -> list[dict[str, str]]:
    """The rows ``fetch 'mailbox uid guid flags' all`` / ``mailbox status ... '*'`` print,
    built through the storage API (the library path; :func:`dsync_json` is the CLI path)."""
    st = open_storage(location, Settings())
    rows: list[dict[str, str]] = []
    try:
        for info in st.list_mailboxes():
            if not info.selectable:
                continue
            with st.open_mailbox(info.name) as box:
                if args[0] == "fetch":
                    for r in box.records():
                        flags = sorted(r.flags) + sorted(r.keywords)
                        rows.append({"mailbox": info.name, "uid": str(r.uid), "guid": r.guid, "flags": " ".join(flags)})
                else:
                    s = box.status()
                    rows.append({"mailbox": info.name, "messages": str(s.messages), "uidvalidity": str(s.uidvalidity),
                                 "uidnext": str(s.uidnext), "guid": s.guid, "highestmodseq": str(s.highestmodseq)})
    finally:
        st.close()
    return rows


def compare(doveadm, loc: str) -> tuple[list, list]:  # type: ignore[no-untyped-def]
    """Assert doveadm, the dsync CLI and the storage API show the same; return doveadm's."""
    theirs_fetch = norm_fetch(doveadm.json(loc, "fetch", "mailbox uid guid flags", "all"))
    theirs_status = sorted(doveadm.json(loc, "mailbox", "status", STATUS_FIELDS, "*"), key=lambda r: r["mailbox"])
    for ours in (api_json, dsync_json):
        ours_fetch = norm_fetch(ours(loc, "fetch", "mailbox uid guid flags", "all"))
        ours_status = sorted(ours(loc, "mailbox", "status", STATUS_FIELDS, "*"), key=lambda r: r["mailbox"])
        assert ours_fetch == theirs_fetch, ours.__name__
        assert ours_status == theirs_status, ours.__name__
    return theirs_fetch, theirs_status


def force_resync(doveadm, loc: str) -> None:  # type: ignore[no-untyped-def]
    """``doveadm force-resync '*'``: Dovecot warns "Rebuilding index" for every sdbox mailbox
    it rebuilds, and "fscking index file .../dovecot.map.index" and "mdbox ...: rebuilding
    indexes" for an mdbox (its own stores too); anything else it prints means it found a
    problem."""
    err = doveadm.run(loc, "force-resync", "*", allow_stderr=True).stderr.decode()
    for line in err.splitlines():
        if loc.startswith("mdbox:"):
            ok = (line.endswith("/storage/dovecot.map.index") and "Warning: fscking index file " in line) or \
                 (line.endswith("/storage: rebuilding indexes") and "Warning: mdbox " in line)
        else:
            ok = line.endswith(": Rebuilding index") and "Warning: sdbox " in line
        assert ok, err


def ours(loc: str) -> dict:  # type: ignore[type-arg]
    st = open_storage(loc, Settings())
    try:
        out = {}
        for info in st.list_mailboxes():
            if info.selectable:
                with st.open_mailbox(info.name) as box:
                    out[info.name] = (box.status(), list(box.records()), box.expunges())
        return out
    finally:
        st.close()


def theirs_modseqs(doveadm, loc: str) -> dict:  # type: ignore[no-untyped-def, type-arg]
    rows = doveadm.json(loc, "fetch", "mailbox uid guid flags modseq", "all")
    return {(r["mailbox"], int(r["uid"])): (r["guid"], frozenset(r["flags"].split()) - {"\\Recent"}, int(r["modseq"]))
            for r in rows}
