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

import io
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


# -- the "we write, Dovecot reads and modifies" scenario, shared by sdbox and mdbox ---------

def write_sample(loc: str, *, message_in_deleted_box: bool = False) -> None:
    """Our writes: mailboxes (non-ASCII, nested, given GUID and UIDVALIDITY), saves with
    flags, keywords, dates, wanted UIDs and GUIDs, flag changes, an expunge, raised
    counters, a rename and a delete, a subscription."""
    from dsync_core.model import FlagUpdate, SaveRequest

    st = open_storage(loc, Settings())
    try:
        st.create_mailbox("Entwürfe")
        st.create_mailbox("Archive/2024", guid="0f" * 16, uidvalidity=1700000000)
        st.create_mailbox("Tmp")
        with st.open_mailbox("INBOX") as inbox:
            inbox.save([
                SaveRequest(io.BytesIO(MSGS[0]), flags=frozenset({"\\Seen"}), keywords=frozenset({"$Junk", "Work"}),
                            internaldate=1_600_000_000),
                SaveRequest(io.BytesIO(MSGS[1]), uid=5, guid="0123456789abcdef0123456789abcdef"),
                SaveRequest(io.BytesIO(MSGS[0]), uid=9, guid="not-a-hex-guid@example.org"),
                SaveRequest(io.BytesIO(MSGS[2]), flags=frozenset({"\\Answered", "\\Draft"})),
            ])
            inbox.update_flags([FlagUpdate(5, add_flags=frozenset({"\\Flagged"}), add_keywords=frozenset({"Later"})),
                                FlagUpdate(1, remove_keywords=frozenset({"$Junk"}))])
            inbox.expunge([9])
        with st.open_mailbox("Archive/2024") as box:
            box.save([SaveRequest(io.BytesIO(MSGS[1]), uid=3, flags=frozenset({"\\Deleted"}))])
            box.update_status(min_uidnext=20, min_highestmodseq=100)
        if message_in_deleted_box:
            with st.open_mailbox("Tmp") as box:
                box.save([SaveRequest(io.BytesIO(MSGS[2]))])
        st.rename_mailbox("Tmp", "Tmp2")
        st.delete_mailbox("Tmp2")
        st.set_subscribed("Entwürfe", True)
    finally:
        st.close()


def check_sample(doveadm, loc: str) -> None:  # type: ignore[no-untyped-def]
    """doveadm reads what ``write_sample`` wrote exactly as we do, with its values."""
    fetched, status = compare(doveadm, loc)
    assert ("INBOX", "5", "0123456789abcdef0123456789abcdef", frozenset({"\\Flagged", "Later"})) in fetched
    assert ("INBOX", "1") in {(m, u) for m, u, _, f in fetched if f == {"\\Seen", "Work"}}
    archive = next(r for r in status if r["mailbox"] == "Archive/2024")
    assert (archive["uidvalidity"], archive["uidnext"], archive["guid"]) == ("1700000000", "20", "0f" * 16)
    assert int(archive["highestmodseq"]) >= 100
    assert "Tmp2" not in [r["mailbox"] for r in status]


def check_dovecot_changes(doveadm, loc: str) -> dict[str, tuple[str, frozenset[str]]]:  # type: ignore[no-untyped-def]
    """After Dovecot's changes (and its purge and force-resync): INBOX as doveadm prints it."""
    force_resync(doveadm, loc)
    fetched, _ = compare(doveadm, loc)
    inbox = {u: (g, f) for m, u, g, f in fetched if m == "INBOX"}
    assert inbox["5"][1] == {"\\Flagged", "\\Seen", "Later", "Dove"}
    assert inbox["1"][1] == {"\\Seen"}
    assert "2" not in inbox and "10" in inbox
    return inbox


def read_back_and_write(doveadm, loc: str, expunge: list[int]) -> None:  # type: ignore[no-untyped-def]
    """We read Dovecot's changes back and keep writing after them (a flag on UID 10, the
    ``expunge`` UIDs), and doveadm reads that."""
    from dsync_core.model import FlagUpdate

    st = open_storage(loc, Settings())
    try:
        with st.open_mailbox("INBOX") as box:
            recs = {r.uid: r for r in box.records()}
            assert recs[5].keywords == {"Later", "Dove"} and recs[5].flags == {"\\Flagged", "\\Seen"}
            assert box.open_body(10).read() == MSGS[2]
            assert box.open_body(5).read() == MSGS[1]
            hm = box.status().highestmodseq
            box.update_flags([FlagUpdate(10, add_flags=frozenset({"\\Answered"}))])
            box.expunge(expunge)
            assert [(e.uid, e.modseq > hm) for e in box.expunges(hm)] == [(u, True) for u in expunge]
            assert [r.uid for r in box.records(hm)] == [10]
    finally:
        st.close()
    doveadm.chown(doveadm.base)
    fetched, _ = compare(doveadm, loc)
    assert ("INBOX", "10") in {(m, u) for m, u, _, f in fetched if "\\Answered" in f}


# -- the "Dovecot writes, we read" scenario ---------------------------------------------

def populate_with_dovecot(doveadm, loc: str, *, flag_rounds: int = 0, copies: bool = False) -> str:  # type: ignore[no-untyped-def]
    """Dovecot writes a store: saves, mailboxes (non-ASCII, nested), flags and keywords,
    per-message modseqs, an expunge, a rename and a delete, subscriptions; ``copies``
    copies INBOX 1:2 to Entwürfe (a map reference count of 2 in mdbox), ``flag_rounds``
    more flag changes on INBOX 2. Returns the deleted mailbox's GUID."""
    for m in MSGS:
        doveadm.run(loc, "save", "-m", "INBOX", input=m)
    doveadm.run(loc, "mailbox", "create", "Entwürfe", "Archive/2024", "Trash")
    doveadm.run(loc, "save", "-m", "Archive/2024", input=MSGS[1])
    doveadm.run(loc, "flags", "add", "\\Seen $Junk Work", "mailbox", "INBOX", "uid", "1")
    doveadm.run(loc, "flags", "add", "\\Flagged \\Answered", "mailbox", "INBOX", "uid", "2")
    doveadm.run(loc, "fetch", "modseq", "mailbox", "INBOX", "all")  # turns on per-message modseqs
    if copies:
        doveadm.run(loc, "copy", "Entwürfe", "mailbox", "INBOX", "uid", "1:2")
    doveadm.run(loc, "flags", "add", "\\Draft Later", "mailbox", "Archive/2024", "uid", "1")
    doveadm.run(loc, "expunge", "mailbox", "INBOX", "uid", "3")
    doveadm.run(loc, "mailbox", "rename", "Trash", "Bin")
    bin_guid = doveadm.status(loc)["Bin"]["guid"]
    doveadm.run(loc, "mailbox", "delete", "Bin")
    doveadm.run(loc, "mailbox", "subscribe", "Entwürfe", "Archive/2024")
    for i in range(flag_rounds):
        doveadm.run(loc, "flags", "replace", f"kw{i % 7} \\Seen", "mailbox", "INBOX", "uid", "2")
    return bin_guid  # type: ignore[no-any-return]


def check_against_dovecot(doveadm, loc: str) -> dict:  # type: ignore[no-untyped-def, type-arg]
    """What we read equals what doveadm prints, per message modseqs included; returns ours."""
    compare(doveadm, loc)
    want = theirs_modseqs(doveadm, loc)
    got = ours(loc)
    assert sum(len(v[1]) for v in got.values()) == len(want)
    for (mbox, uid), (guid, flags, modseq) in want.items():
        rec = next(r for r in got[mbox][1] if r.uid == uid)
        assert (rec.guid, rec.flags | rec.keywords, rec.modseq) == (guid, flags, modseq), (mbox, uid)
    return got
