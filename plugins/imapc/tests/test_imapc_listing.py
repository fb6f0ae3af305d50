"""What a full listing of a folder saves, against a real Dovecot.

* The listing of the next mailbox read ahead on a worker connection (``prefetch_listing``):
  used only when the server says nothing changed since, and what changed is never hidden.
* Expunges asked right after a full listing: only by the gaps in its UIDs (none: no
  command), the same answer as asking for all UIDs."""

from __future__ import annotations

from typing import Any

import pytest
from imapc_helpers import client, copy_view, dsync, running_server, server_view

from dsync_core.location import parse_location
from dsync_core.settings import Settings


@pytest.fixture
def imap():  # type: ignore[no-untyped-def]
    yield from running_server()


def _populate(server: Any, folders: list[str], per_folder: int) -> None:
    c = client(server)
    try:
        for f in folders:
            if f != "INBOX":
                c.create_folder(f)
            for i in range(per_folder):
                body = (f"From: a{i}@example.org\r\nSubject: {f} {i}\r\nMessage-ID: <{i}.{f}@example.org>\r\n\r\n"
                        f"body {i}\r\n").encode()
                c.append(f, body, flags=[b"\\Seen"] if i % 2 else [])
    finally:
        c.logout()


def _storage(server: Any, tmp_path: Any, **extra: str) -> Any:
    from dsync_imapc.storage import ImapcStorage

    settings = Settings({"imapc_host": "127.0.0.1", "imapc_port": str(server.port), "imapc_user": server.user,
                         "imapc_password": server.password, **extra})
    return ImapcStorage(parse_location("imapc:"), settings)


def _listing(st: Any, name: str) -> list[tuple[int, str, frozenset[str], int]]:
    with st.open_mailbox(name) as mb:
        return [(r.uid, r.guid, r.flags, r.modseq) for r in mb.records()]


def _main_fetches(monkeypatch: pytest.MonkeyPatch, st: Any) -> list[str]:
    """Record the items of every UID FETCH the storage sends on its main connection."""
    import dsync_imapc.storage as mod

    seen: list[str] = []
    real = mod.raw_fetch

    def spy(conn, uids, items, *a, **kw):  # type: ignore[no-untyped-def]
        if conn is st.conn:
            seen.append(" ".join(items))
        return real(conn, uids, items, *a, **kw)

    monkeypatch.setattr(mod, "raw_fetch", spy)
    return seen


def test_read_ahead_listing_used_when_nothing_changed(imap, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _populate(imap, ["Next"], 12)
    truth_st = _storage(imap, tmp_path)
    try:
        truth = _listing(truth_st, "Next")
    finally:
        truth_st.close()
    st = _storage(imap, tmp_path)
    try:
        st.prefetch_listing("Next")
        st._ahead[st.folder("Next").raw].result(timeout=30)  # read ahead before we look
        fetches = _main_fetches(monkeypatch, st)
        assert _listing(st, "Next") == truth
        assert not [f for f in fetches if "FLAGS" in f], f"listed again on the main connection: {fetches}"
    finally:
        st.close()


@pytest.mark.parametrize("change", ["flag", "append", "expunge"])
def test_change_after_read_ahead_is_seen(imap, tmp_path, monkeypatch, change) -> None:  # type: ignore[no-untyped-def]
    _populate(imap, ["Next"], 8)
    st = _storage(imap, tmp_path)
    try:
        st.prefetch_listing("Next")
        early = st._ahead[st.folder("Next").raw].result(timeout=30)
        assert len(early.got) == 8
        c = client(imap)  # another client changes the folder after the read-ahead
        try:
            c.select_folder("Next")
            uids = sorted(c.search("ALL"))
            if change == "flag":
                c.add_flags([uids[0]], [b"\\Flagged"])
            elif change == "append":
                c.append("Next", b"From: late@example.org\r\nSubject: late\r\n\r\nlate\r\n")
            else:
                c.delete_messages([uids[1]])
                c.expunge()
        finally:
            c.logout()
        fetches = _main_fetches(monkeypatch, st)
        got = _listing(st, "Next")
        assert [f for f in fetches if "FLAGS" in f], "the stale read-ahead was used"
    finally:
        st.close()
    fresh_st = _storage(imap, tmp_path)
    try:
        assert got == _listing(fresh_st, "Next")  # what a listing from scratch sees
    finally:
        fresh_st.close()
    if change == "flag":
        assert "\\Flagged" in got[0][2]
    elif change == "append":
        assert len(got) == 9
    else:
        assert len(got) == 7


def test_migration_reads_the_next_folder_ahead(imap, tmp_path) -> None:  # type: ignore[no-untyped-def]
    folders = ["INBOX", "A", "B", "C/D"]
    _populate(imap, folders, 30)
    dest = tmp_path / "copy"
    proc = dsync(imap, "-D", "backup", f"maildir:{dest}")
    assert proc.returncode == 0, proc.stderr
    assert server_view(imap) == copy_view(f"maildir:{dest}")
    used = [line for line in proc.stderr.splitlines() if "using the listing read ahead" in line]
    # Every folder but the first is listed while the one before it is copied.
    assert len(used) == len(folders) - 1, proc.stderr
    # A re-run has nothing to copy: no folder is a first copy, nothing is read ahead.
    again = dsync(imap, "-D", "backup", f"maildir:{dest}")
    assert again.returncode == 0, again.stderr
    assert "read ahead" not in again.stderr
    assert server_view(imap) == copy_view(f"maildir:{dest}")


def test_no_read_ahead_with_one_connection(imap, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _populate(imap, ["INBOX", "A", "B"], 5)
    dest = tmp_path / "copy"
    proc = dsync(imap, "-D", "backup", f"maildir:{dest}", extra=("-o", "imapc_max_connections=1"))
    assert proc.returncode == 0, proc.stderr
    assert "read ahead" not in proc.stderr
    assert server_view(imap) == copy_view(f"maildir:{dest}")


def _expunge_on_server(server: Any, folder: str, positions: list[int]) -> list[int]:
    c = client(server)
    try:
        c.select_folder(folder)
        uids = sorted(c.search("ALL"))
        gone = [uids[i] for i in positions]
        c.delete_messages(gone)
        c.expunge()
        return gone
    finally:
        c.logout()


@pytest.mark.parametrize("positions", [[], [2, 3, 6], [0], [11]])
def test_expunges_after_a_full_listing_asked_by_its_gaps(imap, tmp_path, monkeypatch, positions) -> None:  # type: ignore[no-untyped-def]
    _populate(imap, ["Box"], 12)
    gone = _expunge_on_server(imap, "Box", positions)
    whole_st = _storage(imap, tmp_path)  # expunges asked without a listing: for 1:*
    try:
        with whole_st.open_mailbox("Box") as mb:
            whole = [e.uid for e in mb.expunges()]
    finally:
        whole_st.close()
    assert whole == gone
    st = _storage(imap, tmp_path)
    try:
        fetches = []
        import dsync_imapc.storage as mod

        real = mod.raw_fetch

        def spy(conn, uids, items, *a, **kw):  # type: ignore[no-untyped-def]
            fetches.append(uids)
            return real(conn, uids, items, *a, **kw)

        monkeypatch.setattr(mod, "raw_fetch", spy)
        with st.open_mailbox("Box") as mb:
            listed = [r.uid for r in mb.records()]
            asked = len(fetches)
            got = [e.uid for e in mb.expunges()]
    finally:
        st.close()
    assert got == gone
    assert sorted(set(listed) | set(gone)) == list(range(1, 13))
    vanished = fetches[asked:]
    if not gone:
        assert vanished == [], "a mailbox without gaps needs no command"
    elif gone == [12]:
        assert vanished == ["12"]  # the gap below UIDNEXT
    else:
        assert vanished and vanished[0] != "1:*" and all(str(u) in vanished[0] for u in gone), vanished
