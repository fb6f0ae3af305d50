"""Bad input on a real Maildir: a clear one-line error or a logged skip, never a traceback,
never a write outside the mail root, and no damage to what is there."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def dsync(root: str, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "dsync_core", "-o", f"mail_location=maildir:{root}", *args],
        input=input, capture_output=True, timeout=60,
    )
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def _snapshot(top: str) -> dict[str, bytes]:
    out = {}
    for dirpath, _dirs, files in os.walk(top):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, top)] = fh.read()
    return out


@pytest.fixture
def box(tmp_path):  # type: ignore[no-untyped-def]
    root = str(tmp_path / "Maildir")
    assert dsync(root, "mailbox", "create", "Box").returncode == 0
    assert dsync(root, "save", "-m", "Box", input=b"Subject: a\n\nbody\n").returncode == 0
    # Touch INBOX once: like Dovecot, the first look at a never-used INBOX initialises it.
    assert dsync(root, "mailbox", "status", "messages", "*").returncode == 0
    return root


@pytest.mark.parametrize(
    "content, complaint",
    [
        (b"garbage\n", "line 1"),
        (b"3 V1 N5 G0123456789abcdef0123456789abcdef\n2 :a\n1 :b\n", "line 3"),
        (b"3 V1 N5 G0123456789abcdef0123456789abcdef\n0 :a\n", "line 2"),
        (b"3 V1 N5 G0123456789abcdef0123456789abcdef\n1 :a/b\n", "line 2"),
    ],
)
def test_broken_uidlist_is_a_clear_error_and_nothing_is_written(box, content, complaint) -> None:  # type: ignore[no-untyped-def]
    path = os.path.join(box, ".Box", "dovecot-uidlist")
    with open(path, "wb") as f:
        f.write(content)
    before = _snapshot(box)
    for args in (("fetch", "uid guid", "mailbox", "Box"), ("mailbox", "status", "messages", "Box"),
                 ("flags", "add", "\\Seen", "mailbox", "Box", "all")):
        r = dsync(box, *args)
        assert r.returncode == 65, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr
        assert "dovecot-uidlist" in lines[0] and complaint in lines[0]
    changed = {k for k in set(before) | set(_snapshot(box)) if before.get(k) != _snapshot(box).get(k)}
    assert not {k for k in changed if "changelog" not in k}, changed


def test_malformed_file_names_are_skipped_with_a_warning(box) -> None:  # type: ignore[no-untyped-def]
    cur = os.path.join(box, ".Box", "cur")
    for name in (":2,S", ".hidden", "bad\nname"):
        with open(os.path.join(cur, name), "wb") as f:
            f.write(b"Subject: x\n\nx\n")
    r = dsync(box, "-f", "json", "fetch", "uid", "mailbox", "Box")
    assert r.returncode == 0, r.stderr
    assert r.stdout == '[{"uid":"1"}]'
    assert "Warning:" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("name", ["../../etc", "/etc", "a/../../b", "..", "a\x01b", "a\nb", "x/", "a//b", ".", "a.b"])
def test_hostile_mailbox_names_touch_nothing(tmp_path, name) -> None:  # type: ignore[no-untyped-def]
    root = str(tmp_path / "mail" / "Maildir")
    assert dsync(root, "mailbox", "list").returncode == 0
    before = sorted(os.listdir(tmp_path))
    inside = _snapshot(str(tmp_path))
    for args in (("mailbox", "create", name), ("mailbox", "delete", name), ("mailbox", "rename", "INBOX", name),
                 ("save", "-m", name)):
        r = dsync(root, *args, input=b"Subject: x\n\nx\n")
        assert r.returncode in (65, 68), (args, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert sorted(os.listdir(tmp_path)) == before
    after = _snapshot(str(tmp_path))
    assert {k for k in after if "changelog" not in k} == {k for k in inside if "changelog" not in k}
