"""APPEND to an IMAP server streams the message: never whole in memory, line ends made
CRLF, with LITERAL+ when offered and with a synchronising literal when not."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from dsync_imapc.storage import spool_crlf
from imapc_helpers import _RSS, client, peak_rss_kib, running_server
from imapc_proxy import HostileProxy

from dsync_core.api import open_storage
from dsync_core.model import SaveRequest


@pytest.fixture
def imap():  # type: ignore[no-untyped-def]
    yield from running_server()


class Trickle(io.RawIOBase):
    """A body that gives at most ``step`` bytes per read (chunk boundaries anywhere)."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data = data
        self.step = step
        self.pos = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        n = self.step if n < 0 else min(n, self.step)
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1 << 20])
def test_spool_crlf(step: int) -> None:
    data = b"Subject: x\nTo: y\r\n\nline\rlone cr\r\nok\n\n\r"
    spool, head, size = spool_crlf(Trickle(data, step), 1 << 20)  # type: ignore[arg-type]
    with spool:
        got = spool.read()
    assert got == b"Subject: x\r\nTo: y\r\n\r\nline\r\nlone cr\r\nok\r\n\r\n\r\n"
    assert size == len(got)
    assert head == b"Subject: x\r\nTo: y\r\n\r\n"


def test_spool_crlf_cr_at_chunk_boundary() -> None:
    data = b"H: v\r\n\r\n" + b"a" * (1024 * 1024 - 9) + b"\r\nb\n"
    spool, _head, size = spool_crlf(io.BytesIO(data), 1 << 20)  # type: ignore[arg-type]
    with spool:
        got = spool.read()
    assert got == data[:-1] + b"\r\n" and size == len(data) + 1


def _backup_to_server(imap, src: str, cache: str, port: int | None = None):  # type: ignore[no-untyped-def]
    cmd = [sys.executable, "-c", _RSS, sys.executable, "-m", "dsync_core", "-o", f"mail_location=maildir:{src}",
           "-o", "imapc_host=127.0.0.1", "-o", f"imapc_port={port or imap.port}", "-o", f"imapc_user={imap.user}",
           "-o", f"imapc_password={imap.password}", "backup", f"imapc:{cache}"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return p


def _server_bodies(imap, folder: str = "INBOX") -> list[bytes]:  # type: ignore[no-untyped-def]
    c = client(imap)
    try:
        c.select_folder(folder, readonly=True)
        uids = c.search("ALL")
        return [d[b"BODY[]"] for _u, d in sorted(c.fetch(uids, ["BODY.PEEK[]"]).items())] if uids else []
    finally:
        c.logout()


def _save(src: str, bodies: list[bytes]) -> None:
    st = open_storage(f"maildir:{src}")
    try:
        with st.open_mailbox("INBOX") as mb:
            mb.save([SaveRequest(body=io.BytesIO(b), flags=frozenset({"\\Seen"})) for b in bodies])
    finally:
        st.close()


def test_append_20mb_streamed(imap, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    small = b"From: a@example.org\nMessage-ID: <small@example.org>\nSubject: small\n\nhello\n"
    src = str(tmp_path / "src")
    _save(src, [small])
    base = peak_rss_kib(_backup_to_server(imap, src, str(tmp_path / "cache1")))
    # A 21 MB message with bare LF line ends (as Maildir often has them).
    big = b"From: b@example.org\nMessage-ID: <big@example.org>\nSubject: big\n\n" + (b"y" * 998 + b"\n") * 21_000
    _save(src, [big])
    p = _backup_to_server(imap, src, str(tmp_path / "cache1"))
    assert peak_rss_kib(p) < base + 12 * 1024, (peak_rss_kib(p), base)
    assert _server_bodies(imap) == [small.replace(b"\n", b"\r\n"), big.replace(b"\n", b"\r\n")]


@pytest.mark.parametrize("mode", ["no-literal-plus", "literal-plus"])
def test_append_literal_kinds(imap, tmp_path: Path, mode: str) -> None:  # type: ignore[no-untyped-def]
    bodies = [f"Message-ID: <m{i}@example.org>\r\nSubject: {i}\r\n\r\n".encode() + b"z" * (3000 * i)
              for i in range(5)]
    src = str(tmp_path / "src")
    _save(src, bodies)
    proxy = HostileProxy(imap.port, mode if mode == "no-literal-plus" else "pass")
    try:
        _backup_to_server(imap, src, str(tmp_path / "cache"), port=proxy.port)
    finally:
        proxy.close()
    assert len(proxy.appends) == 5
    if mode == "no-literal-plus":
        assert proxy.fired.is_set()  # the capability was hidden
        assert all(line.rstrip().endswith(b"}") and not line.rstrip().endswith(b"+}") for line in proxy.appends)
    else:
        assert all(line.rstrip().endswith(b"+}") for line in proxy.appends)
    assert _server_bodies(imap) == bodies


def test_connections_send_without_nagle_delay(imap) -> None:  # type: ignore[no-untyped-def]
    """imaplib writes a command's last piece (AUTHENTICATE's answer, an APPEND literal's
    CRLF) separately; with Nagle's algorithm on, it waits for the server's delayed ACK
    (40 ms per login and per APPEND), so every connection turns it off."""
    import socket

    from dsync_imapc.client import Connection
    from dsync_imapc.config import load_config

    from dsync_core.settings import Settings

    cfg = load_config(Settings({"imapc_host": "127.0.0.1", "imapc_port": str(imap.port), "imapc_user": imap.user,
                                "imapc_password": imap.password}))
    conn = Connection(cfg)
    try:
        sock = conn.client._imap.sock
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert conn.client.noop()  # a connection that logged in and still answers
    finally:
        conn.close()
