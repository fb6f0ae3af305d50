"""Big bodies read in partial fetches, against a real Dovecot.

With worker connections the next chunk of a big body is fetched on one (and its line ends
counted there) while the writer writes the current one; with one connection every chunk
comes on the main connection. Either way the bytes, the physical size and the virtual
size are those of the server's message, whatever chunk boundary a CRLF falls on."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
from imapc_helpers import client, copy_view, dsync, running_server, server_view

from dsync_core.location import parse_location
from dsync_core.settings import Settings
from dsync_core.streams import BodySizes, counted_sizes, held_bytes

CHUNK = 4096  # the smallest imapc_fetch_chunk_size: many chunks from small messages


@pytest.fixture(scope="module")
def imap():  # type: ignore[no-untyped-def]
    for server in running_server():
        _populate(server)
        yield server


def _message(i: int, size: int) -> bytes:
    """A message of exactly ``size`` bytes whose lines end in CRLF, one of them split over
    the first chunk boundary (its CR is the chunk's last byte) when ``i`` is odd."""
    head = f"Message-ID: <big{i}@example.org>\r\nSubject: big {i}\r\n\r\n".encode()
    body = bytearray(head)
    line = 0
    while len(body) < size:
        text = f"line {line} of message {i} ".encode()
        if i % 2 and len(body) < CHUNK <= len(body) + len(text) + 2:
            text = b"x" * (CHUNK - 1 - len(body))  # the CR at CHUNK - 1, the LF at CHUNK
        body += text + b"\r\n"
        line += 1
    del body[size - 2 :]
    return bytes(body) + b"\r\n"


SIZES = [CHUNK - 10, CHUNK, 2 * CHUNK, 3 * CHUNK + 17, 5 * CHUNK + 1, 7 * CHUNK - 3]


def _populate(server: Any) -> None:
    c = client(server)
    try:
        c.create_folder("Big")
        for i, size in enumerate(SIZES):
            c.append("Big", _message(i, size), flags=[b"\\Seen"] if i % 2 else [])
    finally:
        c.logout()


def _storage(server: Any, connections: int) -> Any:
    from dsync_imapc.storage import ImapcStorage

    settings = Settings({"imapc_host": "127.0.0.1", "imapc_port": str(server.port), "imapc_user": server.user,
                         "imapc_password": server.password, "imapc_fetch_chunk_size": str(CHUNK),
                         "imapc_max_connections": str(connections)})
    return ImapcStorage(parse_location("imapc:"), settings)


def _pieces(monkeypatch: pytest.MonkeyPatch, st: Any) -> list[tuple[str, bool, str]]:
    """Record every partial fetch after a body's first chunk: (its item, on the main
    connection?, the thread that sent it)."""
    import dsync_imapc.storage as mod

    seen: list[tuple[str, bool, str]] = []
    real = mod.raw_fetch

    def spy(conn, uids, items, *a, **kw):  # type: ignore[no-untyped-def]
        seen.extend((item, conn is st.conn, threading.current_thread().name) for item in items
                    if item.startswith("BODY.PEEK[]<") and not item.startswith("BODY.PEEK[]<0."))
        return real(conn, uids, items, *a, **kw)

    monkeypatch.setattr(mod, "raw_fetch", spy)
    return seen


@pytest.mark.parametrize("connections", [3, 1])
def test_big_bodies_in_chunks_whole_and_counted(imap, monkeypatch, connections: int) -> None:  # type: ignore[no-untyped-def]
    want = [_message(i, size) for i, size in enumerate(SIZES)]
    st = _storage(imap, connections)
    try:
        pieces = _pieces(monkeypatch, st)
        with st.open_mailbox("Big") as mb:
            uids = [r.uid for r in mb.records()]
            got = []
            for _uid, body in mb.open_bodies(uids):
                assert 0 < held_bytes(body) <= CHUNK  # what a save batch is bounded by
                sizes = BodySizes(body)
                data = b""
                while chunk := body.read(65536):
                    sizes.feed(chunk)
                    data += chunk
                got.append((data, sizes.result(), counted_sizes(body)))
                body.close()
    finally:
        st.close()
    assert [g[0] for g in got] == want
    for data, result, counted in got:
        assert result == (len(data), len(data))  # Dovecot serves CRLF: no bare LF
        if len(data) >= CHUNK:
            assert counted == (len(data), len(data)), "a chunked body counts itself"
    # Every message from 2 x CHUNK up needs partial fetches beyond the first chunk.
    assert len(pieces) >= sum(s // CHUNK for s in SIZES if s > CHUNK) - 2
    on_main = [p for p in pieces if p[1]]
    if connections > 1:
        assert on_main == [], f"chunks read on the main connection: {on_main}"
        assert all(p[2].startswith("imapc") for p in pieces), pieces
    else:
        assert on_main == pieces


@pytest.mark.parametrize("connections", ["4", "1"])
def test_backup_of_big_bodies_names_their_sizes(imap, tmp_path: Path, connections: str) -> None:  # type: ignore[no-untyped-def]
    dest = tmp_path / "Maildir"
    p = dsync(imap, "backup", f"maildir:{dest}", extra=("-o", f"imapc_fetch_chunk_size={CHUNK}",
                                                          "-o", f"imapc_max_connections={connections}"))
    assert p.returncode == 0, p.stderr
    assert copy_view(f"maildir:{dest}")["Big"] == server_view(imap)["Big"]
    names = [(d, f) for d, _dirs, files in os.walk(dest / ".Big") if os.path.basename(d) in ("cur", "new")
             for f in files]
    assert len(names) == len(SIZES)
    for d, f in names:
        data = Path(d, f).read_bytes()
        fields = dict(x.split("=", 1) for x in f.split(":")[0].split(",")[1:])
        bare = data.count(b"\n") - data.count(b"\r\n")
        assert (int(fields["S"]), int(fields["W"])) == (len(data), len(data) + bare), f
