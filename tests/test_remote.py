"""The engine over a RemoteReplica: same results as a local sync, few turnarounds, and
clear failures on a broken, hostile or stalled peer. Uses Maildir (dsync-maildir)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("dsync_maildir")

from dsync_core import protocol as p  # noqa: E402
from dsync_core.api import open_storage  # noqa: E402
from dsync_core.errors import ProtocolError  # noqa: E402
from dsync_core.model import FlagUpdate, SaveRequest, SyncMode  # noqa: E402
from dsync_core.protocol import FdChannel, SocketChannel  # noqa: E402
from dsync_core.remote import RemoteReplica, serve  # noqa: E402
from dsync_core.replica import LocalReplica, Replica  # noqa: E402
from dsync_core.sync import sync  # noqa: E402


def _msg(subject: str, size: int = 0) -> bytes:
    pad = ("x" * 70 + "\n") * (size // 71)
    return f"From: a@example.org\nSubject: {subject}\nMessage-ID: <{subject}@t>\n\nbody {subject}\n{pad}".encode()


def put(loc: str, mailbox: str, *subjects: str, size: int = 0) -> None:
    with open_storage(loc) as st:
        if mailbox not in {i.name for i in st.list_mailboxes()}:
            st.create_mailbox(mailbox)
        with st.open_mailbox(mailbox) as box:
            box.save([SaveRequest(body=io.BytesIO(_msg(s, size)), internaldate=1_705_314_600) for s in subjects])


def content(loc: str) -> dict[str, list[tuple[str, tuple[str, ...]]]]:
    """Mailbox -> sorted (body digest, flags+keywords) of its messages."""
    out: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
    with open_storage(loc) as st:
        for info in st.list_mailboxes():
            if not info.selectable:
                continue
            with st.open_mailbox(info.name) as box:
                items = []
                for r in box.records():
                    with box.open_body(r.uid) as f:
                        digest = hashlib.sha1(f.read()).hexdigest()[:12]
                    items.append((digest, tuple(sorted(r.flags | r.keywords))))
                out[info.name] = sorted(items)
    return out


@contextlib.contextmanager
def served(location: str, io_timeout: float = 20) -> Iterator[RemoteReplica]:
    """A RemoteReplica talking to serve() on a LocalReplica, over a socketpair."""
    a, b = socket.socketpair()

    @contextlib.contextmanager
    def opener(_user: str) -> Iterator[Replica]:
        st = open_storage(location)
        try:
            yield LocalReplica(st)
        finally:
            st.close()

    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(serve(SocketChannel(b), opener, fixed_user="u")), daemon=True)
    t.start()
    r = RemoteReplica(SocketChannel(a, io_timeout), user="u", io_timeout=io_timeout)
    try:
        yield r
    finally:
        r.close()
        t.join(10)
        assert result == [0]


def scenario(root: Path) -> tuple[str, str]:
    """Two Maildirs that were synced once and then changed on both sides."""
    a, b = f"maildir:{root}/a", f"maildir:{root}/b"
    put(a, "INBOX", "a1", "a2", "a3")
    put(a, "Sent", "s1", "s2")
    put(b, "INBOX", "b1", "b2")
    put(b, "Trash", "t1")
    with open_storage(a) as sa, open_storage(b) as sb:
        sync(sa, sb)
    put(a, "INBOX", "a4", size=300_000)  # several chunks
    put(b, "INBOX", "b3")
    put(b, "Archive", "ar1", "ar2")
    with open_storage(a) as sa, sa.open_mailbox("INBOX") as box:
        first = min(r.uid for r in box.records())
        box.update_flags([FlagUpdate(first, frozenset({"\\Seen"}), add_keywords=frozenset({"$Work"}))])
    with open_storage(b) as sb, sb.open_mailbox("Sent") as box:
        box.expunge([min(r.uid for r in box.records())])
    return a, b


MODES = [
    pytest.param({}, id="sync"),
    pytest.param({"mode": SyncMode.BACKUP}, id="backup"),
    pytest.param({"mode": SyncMode.ONEWAY}, id="oneway"),
    pytest.param({"mode": SyncMode.BACKUP, "reverse": True}, id="backup-R"),
    pytest.param({"mode": SyncMode.ONEWAY, "reverse": True}, id="oneway-R"),
    pytest.param({"state": ""}, id="stateful"),
    pytest.param({"mode": SyncMode.BACKUP, "full": True}, id="backup-full"),
]


@pytest.mark.parametrize("opts", MODES)
@pytest.mark.parametrize("remote_side", ["destination", "source"])
def test_remote_gives_the_same_result_as_local(tmp_path: Path, opts: dict, remote_side: str) -> None:
    opts = dict(opts)
    if opts.pop("full", False):
        from dsync_core.model import SyncAlgorithm

        opts["algorithm"] = SyncAlgorithm.FULL
    a1, b1 = scenario(tmp_path / "local")
    shutil.copytree(tmp_path / "local", tmp_path / "remote", symlinks=True)
    a2, b2 = f"maildir:{tmp_path}/remote/a", f"maildir:{tmp_path}/remote/b"
    with open_storage(a1) as sa, open_storage(b1) as sb:
        local_report = sync(sa, sb, **opts)
    if remote_side == "destination":
        with open_storage(a2) as sa, served(b2) as rb:
            report = sync(sa, rb, **opts)
    else:
        with served(a2) as ra, open_storage(b2) as sb:
            report = sync(ra, sb, **opts)
    assert report.unapplied == local_report.unapplied == []
    assert (report.messages_copied, report.expunged, report.flags_changed) == (
        local_report.messages_copied, local_report.expunged, local_report.flags_changed)
    assert content(a2) == content(a1)
    assert content(b2) == content(b1)
    if not opts or "state" in opts:
        assert content(a2) == content(b2)


def test_no_change_stateful_sync_needs_few_turnarounds(tmp_path: Path) -> None:
    a, b = f"maildir:{tmp_path}/a", f"maildir:{tmp_path}/b"
    for i in range(8):
        put(a, f"box{i}", *[f"m{i}-{j}" for j in range(20)])
    with open_storage(a) as sa, served(b) as rb:
        state = sync(sa, rb, state="").state
        before = rb.turnarounds
        report = sync(sa, rb, state=state)
        no_change = rb.turnarounds - before
        boxes = len(rb.tree().mailboxes)  # the 8 and INBOX
        assert report.mailboxes_skipped == boxes == 9
        # Stateful, no changes: at most (mailboxes + 5), in fact a small constant.
        assert no_change <= boxes + 5
        assert no_change <= 3
        # One mailbox with 200 new messages costs as few turnarounds as one with 2.
        put(a, "box0", *[f"n{j}" for j in range(2)])
        before = rb.turnarounds
        state = sync(sa, rb, state=report.state).state
        small = rb.turnarounds - before
        put(a, "box1", *[f"n{j}" for j in range(200)])
        before = rb.turnarounds
        sync(sa, rb, state=state)
        big = rb.turnarounds - before
    assert big == small <= 12
    assert content(a) == content(b)


def test_cli_server_subprocess_and_rawlog(tmp_path: Path) -> None:
    """`dsync server` on stdin/stdout, as ssh would run it (mail_location with ~ and %u, a
    passwd-file userdb: never a real user's home)."""
    home = tmp_path / "homes" / "tester"
    (tmp_path / "users").write_text(f"tester:x::::{home}::\n")
    a, b = f"maildir:{tmp_path}/a", f"maildir:{home}/mail-tester"
    put(a, "INBOX", "one", "two")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dsync_core", "-o", f"userdb=passwd-file:{tmp_path}/users",
         "-o", "mail_location=maildir:~/mail-%u", "server", "-u", "tester", "-r", str(tmp_path / "server.rawlog")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    r = RemoteReplica(FdChannel(proc.stdout.fileno(), proc.stdin.fileno(), 30), user="tester", io_timeout=30,
                      rawlog=str(tmp_path / "client.rawlog"))
    try:
        with open_storage(a) as sa:
            rep = sync(sa, r)
    finally:
        r.close()
        proc.stdin.close()
        assert proc.wait(30) == 0
    assert rep.messages_copied == 2
    assert content(a) == content(b)
    client_log = (tmp_path / "client.rawlog").read_text()
    assert '> Q {"op":"tree"}' in client_log and "> D <" in client_log
    assert '< Q {"op":"quit"}' in (tmp_path / "server.rawlog").read_text()


# -- hostile and broken peers -------------------------------------------------------------------


def _fake_server(script: bytes, hold: float = 0.3) -> tuple[socket.socket, threading.Thread]:
    """A peer that reads the client's greeting and answers with ``script``."""
    a, b = socket.socketpair()

    def run() -> None:
        try:
            b.recv(65536)
            b.sendall(script)
            if hold:
                threading.Event().wait(hold)
        except OSError:
            pass
        finally:
            b.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return a, t


def _hello() -> bytes:
    return p.MAGIC + p.encode_frame(p.HELLO, p.encode_json(
        {"protocol": [1, 0], "hostname": "h", "auth": "none", "nonce": "n"}))


@pytest.mark.parametrize(
    ("script", "message"),
    [
        (b"Welcome to our server!\r\n", "does not speak the dsync-py protocol"),
        (p.MAGIC + b"\x00\x00\x00\x05Zhello", "Unknown frame type Z"),
        (p.MAGIC + struct.pack(">IB", 1 << 30, p.HELLO), "Oversized H frame"),
        (_hello() + struct.pack(">IB", 50 << 20, p.ANSWER), "Oversized A frame"),
        (_hello() + p.encode_frame(p.ANSWER, b"{not json"), "Malformed A frame"),
        (_hello() + p.encode_frame(p.ANSWER, b'{"info":{"hostname":1}}'), "Malformed value"),
        (p.MAGIC + p.encode_frame(p.HELLO, p.encode_json({"protocol": [2, 0], "hostname": "h", "auth": "none",
                                                          "nonce": ""})), "Protocol version mismatch"),
        (_hello()[:20], "Connection closed by"),
    ],
)
def test_garbage_from_the_server_is_a_clear_protocol_error(script: bytes, message: str) -> None:
    sock, t = _fake_server(script)
    with pytest.raises(ProtocolError, match=message):
        RemoteReplica(SocketChannel(sock, 5), user="u", io_timeout=5)
    t.join(5)


def test_stalled_server_ends_with_the_io_timeout() -> None:
    sock, t = _fake_server(_hello(), hold=5)
    with pytest.raises(ProtocolError, match="I/O has stalled, no activity for 0.5 seconds"):
        RemoteReplica(SocketChannel(sock, 0.5), user="u", io_timeout=0.5)
    sock.close()


@pytest.mark.parametrize(
    "client_bytes",
    [b"GET / HTTP/1.0\r\n\r\n", p.MAGIC + struct.pack(">IB", 1 << 31, p.HELLO),
     p.MAGIC + p.encode_frame(p.REQUEST, b"{}")],
)
def test_server_refuses_garbage_without_touching_mail(tmp_path: Path, client_bytes: bytes) -> None:
    a, b = socket.socketpair()
    opened: list[str] = []

    @contextlib.contextmanager
    def opener(user: str) -> Iterator[Replica]:
        opened.append(user)
        yield None  # type: ignore[misc]

    b.sendall(client_bytes)
    b.shutdown(socket.SHUT_WR)
    assert serve(SocketChannel(a, 5), opener) == 1
    assert opened == []
    b.close()


def test_server_answers_a_bad_request_with_an_error_and_stays_in_step(tmp_path: Path) -> None:
    loc = f"maildir:{tmp_path}/m"
    put(loc, "INBOX", "x")
    with served(loc) as r:
        with pytest.raises(ProtocolError, match="Malformed value"):
            r._call("changes", {"guid": "g", "since_modseq": -4, "since_uid": 0})
        assert r.conn.broken is None
        from dsync_core.errors import NotFoundError

        with pytest.raises(NotFoundError, match="remote: "):
            r.changes("0" * 32)
        assert [n.name for n in r.tree().mailboxes] == ["INBOX"]


def test_body_stream_not_read_to_the_end_is_drained(tmp_path: Path) -> None:
    loc = f"maildir:{tmp_path}/m"
    put(loc, "INBOX", "a", "b", "c")
    with served(loc) as r:
        node = r.tree().mailboxes[0]
        uids = [rec.uid for rec in r.changes(node.guid).records]
        it = r.bodies(node.guid, uids)
        uid, body = next(it)
        assert body is not None and b"body a" in body.read()
        del it  # the consumer gave up after one body
        assert len(r.changes(node.guid).records) == 3
        got = [(u, b.read() if b else None) for u, b in r.bodies(node.guid, [uids[2], 999])]
        assert got[0][0] == uids[2] and b"body c" in got[0][1] and got[1] == (999, None)


def test_lock_and_purge_over_the_wire(tmp_path: Path) -> None:
    a, b = f"maildir:{tmp_path}/a", f"maildir:{tmp_path}/b"
    put(a, "INBOX", "one")
    with open_storage(a) as sa, served(b) as rb:
        report = sync(sa, rb, lock_timeout=5, purge=True)
        assert report.messages_copied == 1
        # The server really holds the user's lock between lock and unlock.
        with rb.lock(5):
            assert os.path.exists(f"{tmp_path}/b/.dovecot-sync.lock")
    assert content(a) == content(b)


def test_fast_sync_marks_travel_over_the_wire(tmp_path: Path) -> None:
    """The destination's fast-sync marks are read and written through the protocol, so a
    fast run over a transport sees one change on each side (equal counters) too, and a
    no-change fast run writes nothing (no extra turnaround)."""
    a, b = f"maildir:{tmp_path}/a", f"maildir:{tmp_path}/b"
    put(a, "INBOX", "one", "two")
    put(a, "Other", "three")
    with open_storage(a) as sa, served(b) as rb:
        assert rb.sync_marks("nobody") == {}
        sync(sa, rb)
        with open_storage(b) as sb:
            with sa.open_mailbox("INBOX") as ma, sb.open_mailbox("INBOX") as mb:
                ma.update_flags([FlagUpdate(1, add_flags=frozenset({"\\Seen"}))])
                mb.update_flags([FlagUpdate(2, add_flags=frozenset({"\\Flagged"}))])
                assert ma.status().highestmodseq == mb.status().highestmodseq
        r = sync(sa, rb)
        assert (r.mailboxes_skipped, r.flags_changed) == (1, 2)
        before = rb.turnarounds
        r = sync(sa, rb)
        assert r.mailboxes_skipped == 2
        quiet = rb.turnarounds - before
        with pytest.raises(ProtocolError):
            p.marks_from_wire([{"guid": "g", "counters": [1] * (p.MAX_MARK + 1)}])
    assert content(a) == content(b)
    assert quiet <= 4  # tree, marks, statuses of both... never one per mailbox or message
