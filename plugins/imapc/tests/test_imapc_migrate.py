"""End to end: the issue's migration workflow against a real Dovecot IMAP server.

``dsync -o mail_location=imapc: -o imapc_host=... backup maildir:DEST`` repeatedly, changes
made on the server by an IMAP client, a UIDVALIDITY reset, a connection cut mid-FETCH, then
``sync -1``. Every check compares, per folder, Message-ID, body and flags on both sides.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import socket
import threading

import pytest
from imapc_helpers import client, copy_view, dsync, peak_rss_kib, running_server, server_view
from imapc_proxy import Listener


@pytest.fixture
def imap():  # type: ignore[no-untyped-def]
    yield from running_server()


FOLDERS = ["INBOX", "Entwürfe", "Archiv/2024/Q1", "日本語/台北", "Sent", "a&b"]


def msg(i: int, folder: str = "", size: int = 0) -> bytes:
    body = (f"line {i} of {folder}\r\n" * 5).encode()
    if size:
        body = (b"x" * 998 + b"\r\n") * (size // 1000)
    return (
        f"From: Sender {i} <s{i}@example.org>\r\nTo: rcpt@example.org\r\n"
        f"Subject: message {i} in {folder}\r\nDate: Mon, 1 Jan 2024 10:{i % 60:02d}:00 +0000\r\n"
        f"Message-ID: <{i}.{abs(hash(folder))}@example.org>\r\n\r\n"
    ).encode() + body


def populate(server, per_folder: int = 6) -> None:  # type: ignore[no-untyped-def]
    c = client(server)
    try:
        n = 0
        for f in FOLDERS:
            if f != "INBOX":
                c.create_folder(f)
            for i in range(per_folder):
                n += 1
                flags = [[], [b"\\Seen"], [b"\\Seen", b"\\Flagged", b"$Label1"], [b"\\Answered", b"work"]][i % 4]
                when = datetime.datetime(2020, 1, 1 + i, 12, 0, tzinfo=datetime.UTC)
                c.append(f, msg(n, f), flags=flags, msg_time=when)
    finally:
        c.logout()


def report(proc) -> dict:  # type: ignore[no-untyped-def]
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def backup(server, dest: str, *opts: str, **kw) -> dict:  # type: ignore[no-untyped-def]
    return report(dsync(server, "backup", *opts, "--json", f"maildir:{dest}", **kw))


def oneway(server, dest: str, **kw) -> dict:  # type: ignore[no-untyped-def]
    return report(dsync(server, "sync", "-1", "--json", f"maildir:{dest}", **kw))


def assert_same(server, dest: str) -> None:  # type: ignore[no-untyped-def]
    srv = server_view(server)
    cp = copy_view(f"maildir:{dest}")
    assert srv == cp


def test_backup_migrates_everything_and_rerun_changes_nothing(imap, tmp_path) -> None:  # type: ignore[no-untyped-def]
    populate(imap)
    dest = str(tmp_path / "Maildir")
    r = backup(imap, dest)
    assert r["messages_copied"] == 6 * len(FOLDERS)
    srv = server_view(imap)
    assert set(FOLDERS) <= set(srv)
    assert_same(imap, dest)
    # Internal dates came along.
    from dsync_core.api import open_storage

    st = open_storage(f"maildir:{dest}")
    with st.open_mailbox("Archiv/2024/Q1") as mb:
        dates = sorted(r.internaldate for r in mb.records())
    st.close()
    assert dates[0] == int(datetime.datetime(2020, 1, 1, 12, tzinfo=datetime.UTC).timestamp())
    before = sorted(os.path.relpath(os.path.join(d, f), dest) for d, _, fs in os.walk(dest) for f in fs
                    if "dovecot" not in f and "sqlite" not in f)
    for run in (lambda: backup(imap, dest), lambda: oneway(imap, dest)):
        again = run()
        assert (again["messages_copied"], again["flags_changed"], again["expunged"]) == (0, 0, 0), again
    after = sorted(os.path.relpath(os.path.join(d, f), dest) for d, _, fs in os.walk(dest) for f in fs
                   if "dovecot" not in f and "sqlite" not in f)
    assert before == after
    assert_same(imap, dest)


@pytest.mark.parametrize(("mode", "features"), [("backup", ""), ("sync-1", ""), ("backup", "no-condstore"),
                                               ("sync-1", "no-condstore")])
def test_server_changes_reach_the_copy(imap, tmp_path, mode, features) -> None:  # type: ignore[no-untyped-def]
    """New mail, flag changes and expunges made by an IMAP client reach the copy; also as
    with a server without CONDSTORE (every folder is then compared on every run)."""
    populate(imap, per_folder=4)
    dest = str(tmp_path / "Maildir")
    opts = ("-o", f"imapc_features={features}")

    def run(server, dest):  # type: ignore[no-untyped-def]
        return (backup if mode == "backup" else oneway)(server, dest, extra=opts)

    run(imap, dest)
    c = client(imap)
    c.append("INBOX", msg(900, "INBOX"), flags=[b"\\Seen"])
    c.append("Entwürfe", msg(901, "Entwürfe"))
    c.select_folder("Archiv/2024/Q1")
    uids = sorted(c.search("ALL"))
    c.add_flags(uids[:2], [b"\\Flagged", b"newkw"])
    c.remove_flags(uids[1:3], [b"\\Seen"])
    c.select_folder("日本語/台北")
    gone_uid = sorted(c.search("ALL"))[0]
    gone_body = c.fetch([gone_uid], ["BODY.PEEK[]"])[gone_uid][b"BODY[]"]
    c.add_flags([gone_uid], [b"\\Deleted"])
    c.expunge()
    c.logout()
    r = run(imap, dest)
    assert r["messages_copied"] == 2
    assert r["flags_changed"] >= 2
    if mode == "backup":
        assert_same(imap, dest)
    else:
        # sync -1 deletes nothing on the destination: the expunged message stays there,
        # everything else is as on the server.
        srv, cp = server_view(imap), copy_view(f"maildir:{dest}")
        kept = [row for row in cp["日本語/台北"] if row not in srv["日本語/台北"]]
        assert len(kept) == 1 and kept[0][1] == __import__("hashlib").sha256(gone_body).hexdigest()
        cp["日本語/台北"].remove(kept[0])
        assert srv == cp
    again = run(imap, dest)
    assert (again["messages_copied"], again["flags_changed"], again["expunged"]) == (0, 0, 0), again


def _reset_uidvalidity(server, folder_dir: str) -> None:  # type: ignore[no-untyped-def]
    """Give a server folder a new UIDVALIDITY and new UIDs, as a server rebuild does."""
    path = os.path.join(folder_dir, "dovecot-uidlist")
    with open(path) as f:
        lines = f.read().splitlines()
    head = lines[0].split()
    out = []
    for tok in head:
        if tok.startswith("V"):
            tok = f"V{int(tok[1:]) + 1000}"
        elif tok.startswith("N"):
            tok = f"N{int(tok[1:]) + 100}"
        out.append(tok)
    new = [" ".join(out)]
    for line in lines[1:]:
        uid, rest = line.split(" ", 1)
        new.append(f"{int(uid) + 100} {rest}")
    with open(path, "w") as f:  # rewritten in place: keeps the mail user's ownership
        f.write("\n".join(new) + "\n")
    for name in os.listdir(folder_dir):
        if name.startswith("dovecot.index"):
            os.unlink(os.path.join(folder_dir, name))


@pytest.mark.parametrize("mode", ["backup", "sync-1"])
def test_uidvalidity_reset_on_server(imap, tmp_path, mode) -> None:  # type: ignore[no-untyped-def]
    populate(imap, per_folder=5)
    dest = str(tmp_path / "Maildir")
    run = backup if mode == "backup" else oneway
    run(imap, dest)
    c = client(imap)
    old = c.folder_status("Entwürfe", ["UIDVALIDITY"])[b"UIDVALIDITY"]
    c.logout()
    _reset_uidvalidity(imap, os.path.join(imap.maildir(), ".Entw&APw-rfe"))
    _reset_uidvalidity(imap, imap.maildir())  # INBOX too: it can't be deleted on the copy
    c = client(imap)
    assert c.folder_status("Entwürfe", ["UIDVALIDITY"])[b"UIDVALIDITY"] != old
    c.append("Entwürfe", msg(950, "Entwürfe"))
    c.logout()
    r = run(imap, dest)
    assert r["messages_copied"] >= 1
    if mode == "backup":
        assert_same(imap, dest)
    else:
        assert server_view(imap) == copy_view(f"maildir:{dest}")  # nothing duplicated
    again = run(imap, dest)
    assert (again["messages_copied"], again["expunged"]) == (0, 0), again
    assert server_view(imap) == copy_view(f"maildir:{dest}")


class CuttingProxy(Listener):
    """A loopback TCP proxy that closes both sockets after ``limit`` bytes from the server."""

    def __init__(self, port: int, limit: int) -> None:
        self.target = port
        self.limit = limit
        self.sent = 0
        self.cut = threading.Event()
        self.lock = threading.Lock()
        super().__init__()

    def handle(self, cl: socket.socket) -> None:
        up = socket.create_connection(("127.0.0.1", self.target))
        self.start_thread(self._pump, cl, up, False)
        self._pump(up, cl, True)

    def _pump(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        try:
            while data := src.recv(65536):
                if counted:
                    with self.lock:
                        room = self.limit - self.sent
                        self.sent += len(data)
                    if room <= len(data):
                        dst.sendall(data[: max(room, 0)])
                        self.cut.set()
                        raise OSError("cut")
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


@pytest.mark.parametrize(("big", "conns"), [(False, "1"), (True, "1"), (False, "4")])
def test_connection_cut_mid_fetch(imap, tmp_path, big, conns) -> None:  # type: ignore[no-untyped-def]
    c = client(imap)
    c.create_folder("Bulk")
    for i in range(60):
        c.append("Bulk", msg(i, "Bulk", size=3_000_000 if (big and i == 30) else 20_000))
    c.logout()
    dest = str(tmp_path / "Maildir")
    proxy = CuttingProxy(imap.port, limit=3_500_000 if big else 700_000)
    try:
        p = dsync(imap, "backup", f"maildir:{dest}", port=proxy.port, extra=("-o", f"imapc_max_connections={conns}", "-o", "imapc_fetch_batch=10"))
    finally:
        proxy.close()
    assert proxy.cut.is_set()
    assert p.returncode == 1, (p.returncode, p.stderr)
    errors = [ln for ln in p.stderr.splitlines() if "Error:" in ln]
    assert errors and "Traceback" not in p.stderr, p.stderr
    assert re.search(r"connection lost", p.stderr), p.stderr
    r = backup(imap, dest)
    assert r["messages_copied"] > 0
    assert_same(imap, dest)
    cp = copy_view(f"maildir:{dest}")
    assert len(cp["Bulk"]) == 60 and len({row[1] for row in cp["Bulk"]}) == 60


def test_20mb_message(imap, tmp_path) -> None:  # type: ignore[no-untyped-def]
    c = client(imap)
    c.append("INBOX", msg(2, "INBOX"))
    c.logout()
    small = dsync(imap, "backup", f"maildir:{tmp_path / 'small'}", measure=True)
    assert small.returncode == 0, small.stderr
    c = client(imap)
    c.append("INBOX", msg(1, "INBOX", size=21 * 1024 * 1024), flags=[b"\\Seen"])
    c.logout()
    dest = str(tmp_path / "Maildir")
    p = dsync(imap, "backup", "--json", f"maildir:{dest}", measure=True)
    r = report(p)
    assert r["messages_copied"] == 2 and r["bytes"] > 20 * 1024 * 1024
    # Streamed: the run's peak memory grows by far less than the message's size.
    assert peak_rss_kib(p) < peak_rss_kib(small) + 12 * 1024, (peak_rss_kib(p), peak_rss_kib(small))
    assert_same(imap, dest)
    assert oneway(imap, dest)["messages_copied"] == 0


def test_parallel_connections_same_result(imap, tmp_path) -> None:  # type: ignore[no-untyped-def]
    c = client(imap)
    c.create_folder("Many")
    for i in range(300):
        c.append("Many", msg(i, "Many", size=40_000 if i % 7 == 0 else 0))
    c.logout()
    for n in ("1", "4"):
        dest = str(tmp_path / f"Maildir{n}")
        r = backup(imap, dest, extra=("-o", f"imapc_max_connections={n}", "-o", "imapc_fetch_batch=50"))
        assert r["messages_copied"] == 300
        assert_same(imap, dest)


def test_bad_password_and_no_server(imap, tmp_path) -> None:  # type: ignore[no-untyped-def]
    dest = str(tmp_path / "Maildir")
    p = dsync(imap, "backup", f"maildir:{dest}", extra=("-o", "imapc_password=wrong"))
    assert p.returncode == 1
    assert "login as" in p.stderr and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    p = dsync(imap, "backup", f"maildir:{dest}", port=dead)
    assert p.returncode == 1
    assert "cannot connect" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_stateful_incremental_and_twoway(imap, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``sync -s STATE``: CONDSTORE CHANGEDSINCE for changes, QRESYNC VANISHED for expunges;
    changes on the copy reach the server (STORE, APPEND, EXPUNGE)."""
    import io

    from dsync_core.api import open_storage
    from dsync_core.model import FlagUpdate, SaveRequest

    populate(imap, per_folder=4)
    dest = str(tmp_path / "Maildir")
    cache = str(tmp_path / "imapc-cache")
    loc = ("-o", f"mail_location=imapc:{cache}")
    r = report(dsync(imap, "sync", "-s", "", "--json", f"maildir:{dest}", extra=loc))
    state = r["state"]
    assert state and r["messages_copied"] == 4 * len(FOLDERS)
    assert_same(imap, dest)
    # Server side: new mail, flag change, expunge.
    c = client(imap)
    c.append("Entwürfe", msg(700, "Entwürfe"))
    c.select_folder("Sent")
    uids = sorted(c.search("ALL"))
    c.add_flags(uids[0], [b"\\Flagged"])
    c.add_flags(uids[-1], [b"\\Deleted"])
    c.expunge()
    c.logout()
    r = report(dsync(imap, "sync", "-s", state, "--json", f"maildir:{dest}", extra=loc))
    state = r["state"]
    assert (r["messages_copied"], r["expunged"]) == (1, 1), r
    assert_same(imap, dest)
    # Copy side: a flag change, a new message, an expunge.
    st = open_storage(f"maildir:{dest}")
    with st.open_mailbox("a&b") as mb:
        recs = list(mb.records())
        mb.update_flags([FlagUpdate(recs[0].uid, add_flags={"\\Seen", "\\Draft"}, add_keywords={"copyside"})])
        mb.expunge([recs[-1].uid])
        mb.save([SaveRequest(body=io.BytesIO(msg(800, "a&b")), flags={"\\Seen"})])
    st.close()
    r = report(dsync(imap, "sync", "-s", state, "--json", f"maildir:{dest}", extra=loc))
    assert (r["messages_copied"], r["expunged"]) == (1, 1), r
    assert_same(imap, dest)
    for _ in range(2):
        r = report(dsync(imap, "sync", "-s", r["state"], "--json", f"maildir:{dest}", extra=loc))
        assert (r["messages_copied"], r["flags_changed"], r["expunged"]) == (0, 0, 0), r
        r2 = report(dsync(imap, "sync", "--json", f"maildir:{dest}", extra=loc))
        assert (r2["messages_copied"], r2["flags_changed"], r2["expunged"]) == (0, 0, 0), r2
    assert_same(imap, dest)


def _imapc_opts(server) -> tuple[str, ...]:  # type: ignore[no-untyped-def]
    return ("-o", "imapc_host=127.0.0.1", "-o", f"imapc_port={server.port}", "-o", f"imapc_user={server.user}",
            "-o", f"imapc_password={server.password}")


@pytest.mark.parametrize("mode", ["backup", "sync-1"])
def test_imap_server_as_destination(imap, tmp_path, mode) -> None:  # type: ignore[no-untyped-def]
    """Maildir -> IMAP: APPEND with flags, keywords and internal date; re-runs add nothing."""
    import io
    import subprocess
    import sys

    from dsync_core.api import open_storage
    from dsync_core.model import SaveRequest

    src = str(tmp_path / "src")
    st = open_storage(f"maildir:{src}")
    for f in ("Entwürfe", "Archiv/2024"):
        st.create_mailbox(f)
    n = 0
    for f in ("INBOX", "Entwürfe", "Archiv/2024"):
        with st.open_mailbox(f) as mb:
            reqs = []
            for i in range(5):
                n += 1
                reqs.append(SaveRequest(body=io.BytesIO(msg(n, f)), flags={"\\Seen"} if i % 2 else set(),
                                        keywords={"$Label2"} if i == 3 else set(), internaldate=1_600_000_000 + n))
            mb.save(reqs)
    st.close()
    cache = str(tmp_path / "imapc-cache")
    args = ["backup"] if mode == "backup" else ["sync", "-1"]

    def run() -> dict:
        p = subprocess.run([sys.executable, "-m", "dsync_core", "-o", f"mail_location=maildir:{src}",
                            *_imapc_opts(imap), *args, "--json", f"imapc:{cache}"],
                           capture_output=True, text=True, timeout=120)
        return report(p)

    r = run()
    assert r["messages_copied"] == 15
    assert server_view(imap) == copy_view(f"maildir:{src}")
    c = client(imap)
    c.select_folder("Entwürfe", readonly=True)
    dates = sorted(d[b"INTERNALDATE"] for d in c.fetch(c.search("ALL"), ["INTERNALDATE"]).values())
    c.logout()
    assert int(dates[0].timestamp()) == 1_600_000_006
    for _ in range(2):
        again = run()
        assert (again["messages_copied"], again["expunged"]) == (0, 0), again
    assert server_view(imap) == copy_view(f"maildir:{src}")


def test_special_use_folders(imap, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """\\Flagged views are skipped by default; imapc_special_use_names=yes gives special-use
    folders the usual names where those are free."""
    c = client(imap)
    for i, f in enumerate(["Junk-E-Mail", "Gesendet", "Sent", "Starred"]):
        c.create_folder(f)
        c.append(f, msg(600 + i, f))
    c.logout()
    dest = str(tmp_path / "Maildir")
    r = backup(imap, dest, extra=("-o", "imapc_special_use_names=yes"))
    assert r["messages_copied"] == 3
    cp = copy_view(f"maildir:{dest}")
    srv = server_view(imap)
    assert "Starred" not in cp and "Junk-E-Mail" not in cp
    assert cp["Junk"] == srv["Junk-E-Mail"] and cp["Gesendet"] == srv["Gesendet"] and cp["Sent"] == srv["Sent"]
    again = backup(imap, dest, extra=("-o", "imapc_special_use_names=yes"))
    assert (again["messages_copied"], again["expunged"], again["mailboxes_created"]) == (0, 0, 0), again
    # Without the name mapping and with no folder skipped, everything comes as it is named.
    dest2 = str(tmp_path / "Maildir2")
    r = backup(imap, dest2, extra=("-o", "imapc_skip_special_use="))
    assert r["messages_copied"] == 4
    assert copy_view(f"maildir:{dest2}") == server_view(imap)


def test_saving_to_server_without_cache_refused(imap, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Without a cache directory a message's GUID could not be remembered on the server, and
    the next run would copy it again: such saves are refused (exit 2), nothing duplicates."""
    import io
    import subprocess
    import sys

    from dsync_core.api import open_storage
    from dsync_core.model import SaveRequest

    src = str(tmp_path / "src")
    st = open_storage(f"maildir:{src}")
    with st.open_mailbox("INBOX") as mb:
        mb.save([SaveRequest(body=io.BytesIO(msg(1, "x")))])
    st.close()
    cmd = [sys.executable, "-m", "dsync_core", "-o", f"mail_location=maildir:{src}", *_imapc_opts(imap),
           "sync", "-1", "imapc:"]
    for _ in range(2):
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert p.returncode == 2, p.stderr
        assert "cache directory" in p.stderr
        assert server_view(imap)["INBOX"] == []


@pytest.mark.parametrize("cached", [True, False])
def test_twoway_fast_sync_server_expunge_not_resurrected(imap, tmp_path, cached) -> None:  # type: ignore[no-untyped-def]
    """Plain two-way ``sync`` (no state): a message expunged on the server (the folder's last
    one, which no later common UID vouches for) goes from the copy too."""
    populate(imap, per_folder=3)
    dest = str(tmp_path / "Maildir")
    loc = ("-o", f"mail_location=imapc:{tmp_path / 'cache'}") if cached else ()
    report(dsync(imap, "sync", "--json", f"maildir:{dest}", extra=loc))
    c = client(imap)
    c.select_folder("Entwürfe")
    last = sorted(c.search("ALL"))[-1]
    c.add_flags([last], [b"\\Deleted"])
    c.expunge()
    c.logout()
    r = report(dsync(imap, "sync", "--json", f"maildir:{dest}", extra=loc))
    assert r["expunged"] == 1 and r["messages_copied"] == 0, r
    assert_same(imap, dest)


def test_twoway_server_folder_emptied(imap, tmp_path) -> None:  # type: ignore[no-untyped-def]
    populate(imap, per_folder=2)
    dest = str(tmp_path / "Maildir")
    report(dsync(imap, "sync", "--json", f"maildir:{dest}"))
    c = client(imap)
    c.select_folder("a&b")
    c.add_flags(c.search("ALL"), [b"\\Deleted"])
    c.expunge()
    c.logout()
    r = report(dsync(imap, "sync", "--json", f"maildir:{dest}"))
    assert r["expunged"] == 2 and r["messages_copied"] == 0, r
    assert_same(imap, dest)
    assert copy_view(f"maildir:{dest}")["a&b"] == []


def test_server_with_dot_separator(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A server whose hierarchy separator is '.': its folders arrive as '/'-separated names."""
    from imapc_server import DOVECOT, DovecotServer

    if DOVECOT is None:
        pytest.skip("dovecot (dovecot-imapd) is not installed")
    server = DovecotServer(separator=".")
    try:
        c = client(server)
        for f in ("Archiv.2024.Q1", "Entwürfe.Alt", "INBOX.Sub"):
            c.create_folder(f)
            c.append(f, msg(len(f), f), flags=[b"\\Seen"])
        c.logout()
        dest = str(tmp_path / "Maildir")
        r = backup(server, dest)
        assert r["messages_copied"] == 3
        cp = copy_view(f"maildir:{dest}")
        srv = server_view(server)
        assert cp["Archiv/2024/Q1"] == srv["Archiv.2024.Q1"]
        assert cp["Entwürfe/Alt"] == srv["Entwürfe.Alt"]
        assert cp["INBOX/Sub"] == srv["INBOX.Sub"]
        again = backup(server, dest)
        assert (again["messages_copied"], again["mailboxes_created"]) == (0, 0), again
    finally:
        server.stop()


def test_migration_workflow_final_oneway(imap, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """backup, backup again, delivery switched (the copy gets its own new mail while the old
    server still gets some), then ``sync -1``: both kinds of new mail end up in the copy,
    nothing is lost or duplicated, and a further ``sync -1`` does nothing."""
    import io

    from dsync_core.api import open_storage
    from dsync_core.model import SaveRequest

    populate(imap, per_folder=3)
    dest = str(tmp_path / "Maildir")
    backup(imap, dest)
    c = client(imap)
    c.append("INBOX", msg(501, "INBOX"))
    c.logout()
    assert backup(imap, dest)["messages_copied"] == 1
    st = open_storage(f"maildir:{dest}")
    with st.open_mailbox("INBOX") as mb:
        mb.save([SaveRequest(body=io.BytesIO(msg(502, "new server")))])
    st.close()
    c = client(imap)
    c.append("INBOX", msg(503, "INBOX"), flags=[b"\\Flagged"])
    c.append("Entwürfe", msg(504, "Entwürfe"))
    c.logout()
    r = oneway(imap, dest)
    assert r["messages_copied"] == 2, r
    srv, cp = server_view(imap), copy_view(f"maildir:{dest}")
    own = [row for row in cp["INBOX"] if row not in srv["INBOX"]]
    assert len(own) == 1 and own[0][0] == f"<502.{abs(hash('new server'))}@example.org>"
    cp["INBOX"].remove(own[0])
    assert srv == cp
    again = oneway(imap, dest)
    assert (again["messages_copied"], again["flags_changed"], again["expunged"]) == (0, 0, 0), again
