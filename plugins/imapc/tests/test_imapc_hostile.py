"""A hostile or broken IMAP server must not make us allocate without bound or hang.

A loopback proxy in front of the real Dovecot lets everything through until the first body
``UID FETCH``, then answers it itself: a literal of 99999999999 bytes, an endless line, a
flood of answers, garbage, or a reset after some real bytes. Each run must end with exit 1
and one clear error line naming the server and what was wrong, the destination Maildir
must be as before (no half-written message), and a re-run against the sane server must
complete. A tiny fake server (no Dovecot behind it) does the same at the greeting.
"""

from __future__ import annotations

import os
import re
import socket
import time
import types
from pathlib import Path

import pytest
from imapc_helpers import client, copy_view, dsync, running_server, server_view
from imapc_proxy import HostileProxy, Listener, reset_close, send_until_closed


@pytest.fixture(scope="module")
def imap():  # type: ignore[no-untyped-def]
    yield from running_server()


def _populate(server, folder: str, n: int, start: int = 0) -> None:  # type: ignore[no-untyped-def]
    c = client(server)
    try:
        if folder not in {f[2] for f in c.list_folders()}:
            c.create_folder(folder)
        for i in range(start, start + n):
            body = (f"body line {i}\r\n" * (50 + i)).encode()
            c.append(folder, f"From: a{i}@example.org\r\nSubject: m {i}\r\nMessage-ID: <h{i}.{folder}@example.org>\r\n"
                     f"Date: Mon, 1 Jan 2024 10:00:{i % 60:02d} +0000\r\n\r\n".encode() + body,
                     flags=[b"\\Seen"] if i % 2 else [])
    finally:
        c.logout()


def _tmp_files(dest: str) -> list[str]:
    return [os.path.join(d, f) for d, _dirs, files in os.walk(dest) if os.path.basename(d) == "tmp" for f in files]


MESSAGES = {
    "huge-literal": r"refused the server's answer to UID FETCH bodies: the server announced a literal of "
                    r"99999999999 bytes \(at most 1048576 accepted here: imapc_fetch_chunk_size\)",
    "endless-line": r"refused the server's answer to UID FETCH bodies: the server sent a line longer than "
                    r"16777216 bytes \(imapc_max_line_length\)",
    "flood": r"refused the server's answer to UID FETCH bodies: the server's answer exceeds \d+ bytes "
             r"\(twice the RFC822.SIZEs the server announced\)",
    "garbage": r"refused the server's answer to UID FETCH bodies: it is not IMAP: unexpected response: "
               r"b'\)\(\*&\^%\$ no IMAP here'",
    "reset": r"connection lost during UID FETCH bodies",
}


@pytest.mark.parametrize(
    ("mode", "conns"),
    [("huge-literal", "1"), ("huge-literal", "4"), ("endless-line", "1"), ("flood", "1"), ("garbage", "1"),
     ("reset", "1"), ("reset", "4")],
)
def test_hostile_answer_to_body_fetch(imap, tmp_path: Path, mode: str, conns: str) -> None:  # type: ignore[no-untyped-def]
    folder = f"H-{mode}-{conns}"
    _populate(imap, folder, 20)
    dest = str(tmp_path / "Maildir")
    first = dsync(imap, "backup", f"maildir:{dest}")
    assert first.returncode == 0, first.stderr
    _populate(imap, folder, 30, start=20)  # new mail the next run must fetch
    before = copy_view(f"maildir:{dest}")

    proxy = HostileProxy(imap.port, mode)
    t0 = time.monotonic()
    try:
        p = dsync(imap, "backup", f"maildir:{dest}", port=proxy.port, timeout=240,
                  extra=("-o", f"imapc_max_connections={conns}", "-o", "imapc_fetch_batch=10"))
    finally:
        proxy.close()
    elapsed = time.monotonic() - t0
    assert proxy.fired.is_set()
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    errors = [ln for ln in p.stderr.splitlines() if "Error:" in ln]
    assert errors, p.stderr
    assert re.search(rf"imapc\(127\.0\.0\.1:{proxy.port}\): " + MESSAGES[mode], p.stderr), p.stderr
    assert elapsed < 120, elapsed  # no hang (the command timeout is 300 s)
    # Nothing half written: the copy holds what it held, no message left in tmp/.
    assert copy_view(f"maildir:{dest}") == before
    assert _tmp_files(dest) == []

    again = dsync(imap, "backup", f"maildir:{dest}")
    assert again.returncode == 0, again.stderr
    assert server_view(imap) == copy_view(f"maildir:{dest}")


def test_server_claiming_too_small_sizes(imap, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Bodies fetched in a batch are asked as their first chunk only: a message far bigger
    than its RFC822.SIZE claims is completed by partial fetches, bounded and whole."""
    c = client(imap)
    c.create_folder("Sizes")
    for i in range(12):
        c.append("Sizes", f"Message-ID: <s{i}@example.org>\r\nSubject: s{i}\r\n\r\n".encode()
                 + (f"{i:04d}" * 20 + "\r\n").encode() * (300 * i))
    c.logout()
    dest = str(tmp_path / "Maildir")
    proxy = HostileProxy(imap.port, "small-sizes")
    try:
        p = dsync(imap, "backup", f"maildir:{dest}", port=proxy.port,
                  extra=("-o", "imapc_fetch_chunk_size=64K", "-o", "imapc_max_connections=2"))
    finally:
        proxy.close()
    assert proxy.fired.is_set()
    assert p.returncode == 0, p.stderr
    assert copy_view(f"maildir:{dest}")["Sizes"] == server_view(imap)["Sizes"]


def test_hostile_first_run_leaves_nothing_half_written(imap, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _populate(imap, "Fresh", 25)
    dest = str(tmp_path / "Maildir")
    proxy = HostileProxy(imap.port, "huge-literal")
    try:
        p = dsync(imap, "backup", f"maildir:{dest}", port=proxy.port, timeout=240,
                  extra=("-o", "imapc_max_connections=1", "-o", "imapc_fetch_batch=10"))
    finally:
        proxy.close()
    assert p.returncode == 1 and "99999999999" in p.stderr, p.stderr
    assert _tmp_files(dest) == []
    if os.path.isdir(dest):
        assert all(rows == [] for rows in copy_view(f"maildir:{dest}").values())
    again = dsync(imap, "backup", f"maildir:{dest}")
    assert again.returncode == 0, again.stderr
    assert server_view(imap) == copy_view(f"maildir:{dest}")


class FakeServer(Listener):
    """A fake IMAP server: sends ``greeting`` to each connection, then hangs up (or
    resets) when the client does."""

    def __init__(self, greeting: bytes, *, endless: bytes = b"", reset: bool = False) -> None:
        self.greeting = greeting
        self.endless = endless
        self.reset = reset
        super().__init__(4)

    def handle(self, conn: socket.socket) -> None:
        if self.endless:
            send_until_closed(conn, self.greeting, self.endless, 200 * 1024 * 1024)
        else:
            try:
                conn.sendall(self.greeting)
            except OSError:
                pass
        if self.reset:
            reset_close(conn)
            return
        conn.settimeout(60)
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass
        conn.close()

    def close(self, join: bool = True) -> None:
        super().close(join)


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"greeting": b"* OK {99999999999}\r\n"},
         r"refused the server's greeting: the server announced a literal of 99999999999 bytes "
         r"\(at most 16777216 accepted here: imapc_max_line_length\)"),
        ({"greeting": b"* OK ", "endless": b"A" * 65536},
         r"refused the server's greeting: the server sent a line longer than 16777216 bytes"),
        ({"greeting": b"HTTP/1.1 400 Bad Request\r\n"},
         r"unexpected response: b'HTTP/1.1 400 Bad Request'"),
        ({"greeting": b"* OK hi", "reset": True}, r"Connection reset|EOF|unterminated line"),
    ],
    ids=["huge-literal", "endless-line", "garbage", "reset"],
)
def test_hostile_greeting(tmp_path: Path, kw: dict, expected: str) -> None:  # type: ignore[type-arg]
    fake = FakeServer(**kw)
    dest = tmp_path / "Maildir"
    t0 = time.monotonic()
    try:
        who = types.SimpleNamespace(user="jane", password="pw", port=fake.port)
        p = dsync(who, "backup", f"maildir:{dest}", timeout=120)  # type: ignore[arg-type]
    finally:
        fake.close()
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    assert time.monotonic() - t0 < 60
    line = [ln for ln in p.stderr.splitlines() if "Error:" in ln]
    assert len(line) == 1, p.stderr
    assert re.search(rf"imapc\(127\.0\.0\.1:{fake.port}\): .*" + expected, line[0]), line[0]
    assert not dest.exists() or _tmp_files(str(dest)) == []
