"""The doveadm-style mail commands, run in-process against the example memory storage."""

from __future__ import annotations

import io
import json
import sys

import pytest

from dsync_core.cli import main

MSG1 = (
    b"From: Alice <alice@example.com>\nTo: Bob <bob@example.com>\nSubject: Hello one\n"
    b"Date: Mon, 15 Jan 2024 10:30:00 +0100\nMessage-ID: <msg1@example.com>\n"
    b"X-Long: first part\n  continued\n\nBody line 1\nBody line 2\n"
)
MSG2 = b"From: bob@example.com\r\nSubject: Two\r\nMessage-ID: <msg2@example.com>\r\n\r\nCRLF body\r\n"


@pytest.fixture
def dsync(memory_location, capfdbinary, monkeypatch):  # type: ignore[no-untyped-def]
    """Run ``dsync -o mail_location=memory:... ARGS``; returns (exit code, stdout, stderr)."""
    monkeypatch.setenv("TZ", "UTC")
    import time

    time.tzset()

    def run(*args: str, stdin: bytes | None = None, fmt: str | None = None) -> tuple[int, bytes, str]:
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        argv = ["-o", f"mail_location={memory_location}"]
        if fmt:
            argv += ["-f", fmt]
        code = main(argv + list(args))
        out, err = capfdbinary.readouterr()
        return code, out, err.decode()

    return run


def jrun(dsync, *args: str) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    code, out, err = dsync(*args, fmt="json")
    assert code == 0, err
    data = json.loads(out)
    assert all(isinstance(v, str) for row in data for v in row.values()), "doveadm JSON values are strings"
    return data


def test_create_list_status_and_json_shape(dsync) -> None:  # type: ignore[no-untyped-def]
    assert dsync("mailbox", "create", "Entwürfe", "Archive/2024")[0] == 0
    names = {r["mailbox"] for r in jrun(dsync, "mailbox", "list")}
    assert {"INBOX", "Entwürfe", "Archive/2024"} <= names
    assert dsync("save", "-m", "Archive/2024", stdin=MSG1)[0] == 0
    rows = jrun(dsync, "mailbox", "status", "guid uidnext messages unseen uidvalidity highestmodseq", "*")
    by_name = {r["mailbox"]: r for r in rows}
    row = by_name["Archive/2024"]
    # Fixed field order, whatever order they were asked in (as doveadm).
    assert list(row) == ["mailbox", "messages", "uidnext", "uidvalidity", "unseen", "highestmodseq", "guid"]
    assert row["messages"] == "1" and row["uidnext"] == "2" and row["unseen"] == "1"
    assert len(row["guid"]) == 32


def test_flow_default_for_status(dsync) -> None:  # type: ignore[no-untyped-def]
    dsync("save", stdin=MSG1)
    code, out, _ = dsync("mailbox", "status", "messages uidnext", "INBOX")
    assert code == 0
    assert out == b"INBOX messages=1 uidnext=2\n"


def test_fetch_fields_like_doveadm(dsync) -> None:  # type: ignore[no-untyped-def]
    dsync("save", stdin=MSG1)
    dsync("save", stdin=MSG2)
    rows = jrun(
        dsync, "fetch", "mailbox uid flags size.virtual size.physical date.sent hdr.subject hdr.x-long body", "all"
    )
    assert [r["uid"] for r in rows] == ["1", "2"]
    first, second = rows
    assert first["mailbox"] == "INBOX"
    assert first["flags"] == ""
    assert first["size.physical"] == str(len(MSG1))
    assert first["size.virtual"] == str(len(MSG1) + MSG1.count(b"\n"))
    assert first["date.sent"] == "2024-01-15 09:30:00 (+0100)"
    assert first["hdr.subject"] == "Hello one"
    assert first["hdr.x-long"] == "first part\n  continued"
    assert first["body"] == "Body line 1\nBody line 2\n"
    # save converts CRLF to LF, as doveadm save does.
    assert second["body"] == "CRLF body\n"
    assert second["date.sent"] == "1970-01-01 00:00:00 (+0000)"


def test_flags_add_remove_replace_and_search(dsync) -> None:  # type: ignore[no-untyped-def]
    for _ in range(3):
        dsync("save", stdin=MSG1)
    assert dsync("flags", "add", "\\Seen $Junk Work", "mailbox", "INBOX", "uid", "1:2")[0] == 0
    assert dsync("flags", "remove", "$Junk", "uid", "2")[0] == 0
    assert dsync("flags", "replace", "\\Flagged", "uid", "3")[0] == 0
    rows = {r["uid"]: r["flags"] for r in jrun(dsync, "fetch", "uid flags", "all")}
    assert rows["1"].split()[0] == "\\Seen" and set(rows["1"].split()) == {"\\Seen", "$Junk", "Work"}
    assert set(rows["2"].split()) == {"\\Seen", "Work"}
    assert rows["3"] == "\\Flagged"
    assert [r["uid"] for r in jrun(dsync, "fetch", "uid", "seen")] == ["1", "2"]
    assert [r["uid"] for r in jrun(dsync, "fetch", "uid", "keyword", "$Junk")] == ["1"]
    assert [r["uid"] for r in jrun(dsync, "fetch", "uid", "or", "uid", "1", "flagged")] == ["1", "3"]
    assert [r["uid"] for r in jrun(dsync, "fetch", "uid", "not", "seen")] == ["3"]


def test_expunge_and_guid_search(dsync) -> None:  # type: ignore[no-untyped-def]
    dsync("save", stdin=MSG1)
    dsync("save", stdin=MSG2)
    guid = jrun(dsync, "fetch", "guid", "uid", "2")[0]["guid"]
    assert dsync("expunge", "mailbox", "INBOX", "guid", guid)[0] == 0
    assert [r["uid"] for r in jrun(dsync, "fetch", "uid", "all")] == ["1"]
    # Nothing matched: exit 0, as doveadm.
    assert dsync("expunge", "mailbox", "INBOX", "uid", "99")[0] == 0
    # doveadm's guard against accidents: every branch must name a mailbox.
    code, _, err = dsync("expunge", "uid", "1")
    assert code == 64 and "must contain MAILBOX in all search branches" in err
    code, _, err = dsync("expunge", "or", "mailbox", "INBOX", "uid", "1")
    assert code == 64
    assert [r["uid"] for r in jrun(dsync, "fetch", "uid", "all")] == ["1"]


def test_errors_are_one_line_with_doveadm_exit_codes(dsync) -> None:  # type: ignore[no-untyped-def]
    dsync("mailbox", "create", "Work")
    code, _, err = dsync("mailbox", "create", "Work")
    assert code == 65 and "Can't create mailbox Work: " in err and err.count("\n") == 1
    code, _, err = dsync("mailbox", "delete", "Missing")
    assert code == 68 and "Mailbox doesn't exist: Missing" in err
    code, _, err = dsync("mailbox", "status", "messages", "Missing")
    assert code == 68 and "Failed to lookup mailbox status" in err
    code, _, err = dsync("save", "-m", "Missing", stdin=MSG1)
    assert code == 68 and "Failed to open mailbox Missing" in err
    code, _, err = dsync("mailbox", "status", "nosuchfield", "INBOX")
    assert code == 64 and "Unknown status field: nosuchfield" in err
    code, _, err = dsync("fetch", "nosuch", "all")
    assert code == 75 and "Unknown fetch field: nosuch" in err
    code, _, err = dsync("fetch", "uid")
    assert code == 64
    code, _, err = dsync("mailbox", "delete", "INBOX")
    assert code == 65 and "INBOX can't be deleted." in err
    for bad in ("../../etc", "/abs", "a\x01b", "a//b"):
        code, _, err = dsync("mailbox", "create", bad)
        assert code == 65, (bad, err)
        assert "Traceback" not in err and err.count("\n") == 1


def test_delete_recursive_rename_subscribe(dsync) -> None:  # type: ignore[no-untyped-def]
    dsync("mailbox", "create", "A", "A/B", "A/B/C")
    assert dsync("mailbox", "rename", "A", "Z")[0] == 0
    names = {r["mailbox"] for r in jrun(dsync, "mailbox", "list")}
    assert {"Z", "Z/B", "Z/B/C"} <= names and "A" not in names
    assert dsync("mailbox", "subscribe", "Z/B")[0] == 0
    assert [r["mailbox"] for r in jrun(dsync, "mailbox", "list", "-s")] == ["Z/B"]
    assert dsync("mailbox", "unsubscribe", "Z/B")[0] == 0
    assert jrun(dsync, "mailbox", "list", "-s") == []
    assert dsync("mailbox", "delete", "-r", "Z")[0] == 0
    names = {r["mailbox"] for r in jrun(dsync, "mailbox", "list")}
    assert not any(n.startswith("Z") for n in names)


def test_commands_that_print_nothing_print_empty_json_list(dsync) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = dsync("mailbox", "create", "X", fmt="json")
    assert code == 0 and out == b"[]"


def test_no_mail_location_is_a_config_error(capfdbinary) -> None:  # type: ignore[no-untyped-def]
    code = main(["mailbox", "list"])
    _, err = capfdbinary.readouterr()
    assert code == 78 and b"mail_location" in err


def test_unknown_driver(capfdbinary) -> None:  # type: ignore[no-untyped-def]
    code = main(["-o", "mail_location=nosuch:/x", "mailbox", "list"])
    _, err = capfdbinary.readouterr()
    assert code == 78 and b"Unknown mail storage driver 'nosuch'" in err
