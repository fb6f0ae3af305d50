"""Helpers shared by the imapc tests: an IMAP client as the user, the dsync CLI, and views
of both sides for comparison (per folder: Message-ID, body digest and flags)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from imapc_server import DOVECOT, DovecotServer

from dsync_core.api import open_storage
from dsync_core.settings import Settings

# No conftest.py here: test modules import these by a unique module name, so this plugin's
# tests can run in one pytest call with other plugins' (a second "conftest" module would
# shadow theirs).


def running_server(**kw: Any) -> Iterator[DovecotServer]:
    """Body of an ``imap`` fixture: a private Dovecot IMAP server on 127.0.0.1 with one
    passwd-file user, stopped afterwards."""
    if DOVECOT is None:
        if os.environ.get("CI"):
            pytest.fail("dovecot is not installed, but CI is set: the imapc tests must run in CI")
        pytest.skip("dovecot (dovecot-imapd) is not installed")
    server = DovecotServer(**kw)
    try:
        yield server
    finally:
        server.stop()


def client(server: DovecotServer, port: int | None = None) -> Any:
    import imapclient

    c = imapclient.IMAPClient("127.0.0.1", port=port or server.port, ssl=False, timeout=30)
    c.login(server.user, server.password)
    return c


_RSS = (
    "import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]);"
    "sys.stderr.write('maxrss=%d\\n' % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(p.returncode)"
)


def peak_rss_kib(proc: subprocess.CompletedProcess[str]) -> int:
    """The peak RSS of a ``dsync(..., measure=True)`` run, in KiB."""
    return int(proc.stderr.rsplit("maxrss=", 1)[1].split()[0])


def dsync(server: DovecotServer, *args: str, port: int | None = None, extra: tuple[str, ...] = (),
          timeout: float = 300, measure: bool = False) -> subprocess.CompletedProcess[str]:
    """``dsync -o mail_location=imapc: -o imapc_host=... ARGS`` as the command line runs it."""
    cmd = [
        *([sys.executable, "-c", _RSS] if measure else []),
        sys.executable, "-m", "dsync_core",
        "-o", "mail_location=imapc:",
        "-o", "imapc_host=127.0.0.1",
        "-o", f"imapc_port={port or server.port}",
        "-o", f"imapc_user={server.user}",
        "-o", f"imapc_password={server.password}",
        *extra,
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _mid(body: bytes) -> str:
    for line in body.split(b"\r\n\r\n", 1)[0].replace(b"\r\n", b"\n").split(b"\n"):
        if line.lower().startswith(b"message-id:"):
            return line.split(b":", 1)[1].strip().decode()
    return ""


def server_view(server: DovecotServer) -> dict[str, list[tuple[str, str, frozenset[str]]]]:
    """Per folder: sorted (Message-ID, body sha256, flags) of every message on the server."""
    c = client(server)
    out: dict[str, list[tuple[str, str, frozenset[str]]]] = {}
    try:
        for flags, _sep, name in c.list_folders():
            if b"\\Noselect" in flags or b"\\NonExistent" in flags:
                continue
            c.select_folder(name, readonly=True)
            uids = c.search("ALL")
            got = c.fetch(uids, ["FLAGS", "BODY.PEEK[]"]) if uids else {}
            rows = []
            for d in got.values():
                body = d[b"BODY[]"]
                flags_ = frozenset(f.decode() for f in d[b"FLAGS"]) - {"\\Recent"}
                rows.append((_mid(body), hashlib.sha256(body).hexdigest(), flags_))
            out[name] = sorted(rows, key=repr)
    finally:
        c.logout()
    return out


def copy_view(location: str) -> dict[str, list[tuple[str, str, frozenset[str]]]]:
    """The same view of a local copy, read through its dsync storage."""
    st = open_storage(location, Settings())
    out: dict[str, list[tuple[str, str, frozenset[str]]]] = {}
    try:
        for info in st.list_mailboxes():
            if not info.selectable:
                continue
            rows = []
            with st.open_mailbox(info.name) as mb:
                for r in mb.records():
                    h = hashlib.sha256()
                    head = b""
                    with mb.open_body(r.uid) as f:
                        while chunk := f.read(1 << 20):
                            if len(head) < 65536:
                                head += chunk[:65536]
                            h.update(chunk)
                    rows.append((_mid(head), h.hexdigest(), frozenset(r.flags | r.keywords)))
            out[info.name] = sorted(rows, key=repr)
    finally:
        st.close()
    return out
