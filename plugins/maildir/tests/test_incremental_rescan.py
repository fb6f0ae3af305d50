"""A rescan after a change reads what changed: it compares one listing of cur/ and new/
with the change log and reads only what was appended to dovecot-uidlist. These tests
change a Maildir behind the storage's back (as an MUA or MDA would) and check that the
result equals what a full rescan from nothing finds, and that the cheap path was taken."""

from __future__ import annotations

import io
import json
import os

import pytest
from dsync_maildir import storage as maildir_storage
from dsync_maildir import uidlist as ulmod
from hypothesis import given
from hypothesis import strategies as hs
from test_storage import age

from dsync_core.api import open_storage
from dsync_core.model import SaveRequest
from dsync_core.settings import Settings

MSG = b"From: a@example.com\nSubject: %d\nMessage-ID: <%d@example.com>\n\nbody %d\n"


def snapshot(root: str, fresh_index: str | None = None) -> list[tuple[int, str, frozenset[str], frozenset[str]]]:
    """(uid, guid, flags, keywords) of INBOX, read by a new storage object (own index dir
    when ``fresh_index`` is given: a full scan from nothing)."""
    loc = f"maildir:{root}" + (f":INDEX={fresh_index}" if fresh_index else "")
    st = open_storage(loc, Settings())
    try:
        with st.open_mailbox("INBOX") as mb:
            return [(r.uid, r.guid, r.flags, r.keywords) for r in mb.records()]
    finally:
        st.close()


@pytest.fixture
def filled(tmp_path):  # type: ignore[no-untyped-def]
    root = str(tmp_path / "Maildir")
    st = open_storage(f"maildir:{root}", Settings())
    with st.open_mailbox("INBOX") as mb:
        mb.save([SaveRequest(io.BytesIO(MSG % (i, i, i))) for i in range(30)])
        mb.status()
    st.close()
    age(root)
    snapshot(root)  # a scan outside the racy window: its stamp is kept
    return root


@pytest.fixture
def count_paths(monkeypatch):  # type: ignore[no-untyped-def]
    """Counts full and incremental rescans."""
    calls = {"full": 0, "quick": 0}
    orig_read = maildir_storage.MaildirMailbox._read_uidlist
    orig_quick = maildir_storage.MaildirMailbox._rescan_changed

    def read(self):  # type: ignore[no-untyped-def]
        calls["full"] += 1
        return orig_read(self)

    def quick(self, disk, racy, listed_at=None):  # type: ignore[no-untyped-def]
        out = orig_quick(self, disk, racy, listed_at)
        if out is not None:
            calls["quick"] += 1
        return out

    monkeypatch.setattr(maildir_storage.MaildirMailbox, "_read_uidlist", read)
    monkeypatch.setattr(maildir_storage.MaildirMailbox, "_rescan_changed", quick)
    return calls


def _mua_changes(root: str) -> tuple[str, str]:
    """Flag one message, move one from new/ to cur/, delete one, deliver one."""
    new = sorted(os.listdir(os.path.join(root, "new")))
    os.rename(os.path.join(root, "new", new[0]), os.path.join(root, "cur", new[0] + ":2,S"))
    os.rename(os.path.join(root, "new", new[1]), os.path.join(root, "cur", new[1] + ":2,FT"))
    os.unlink(os.path.join(root, "new", new[2]))
    name = "1700000000.M1P1.mda.example.org"
    with open(os.path.join(root, "tmp", name), "wb") as f:
        f.write(MSG % (99, 99, 99))
    os.rename(os.path.join(root, "tmp", name), os.path.join(root, "new", name))
    return new[2], name


def test_outside_changes_found_without_a_full_rescan(filled, tmp_path, count_paths) -> None:  # type: ignore[no-untyped-def]
    gone, delivered = _mua_changes(filled)
    got = snapshot(filled)
    assert count_paths == {"full": 0, "quick": 1}
    assert got == snapshot(filled, str(tmp_path / "fresh-index"))  # what a scan from nothing finds
    by_guid = {g: (u, f) for u, g, f, _k in got}
    assert gone not in by_guid and len(got) == 30
    assert by_guid[delivered][0] == 31  # the next UID, appended to dovecot-uidlist
    assert sum(1 for _u, _g, f, _k in got if f == frozenset({"\\Seen"})) == 1
    with open(os.path.join(filled, "dovecot-uidlist")) as f:
        assert f.read().splitlines()[-1].endswith(":" + delivered)


def test_uids_dovecot_appended_are_taken(filled, count_paths) -> None:  # type: ignore[no-untyped-def]
    """A file Dovecot gave a UID (appended to the uidlist) keeps that UID."""
    name = "1700000001.M2P2.dovecot.example.org"
    with open(os.path.join(filled, "tmp", name), "wb") as f:
        f.write(MSG % (7, 7, 7))
    with open(os.path.join(filled, "dovecot-uidlist"), "a") as f:
        f.write(f"40 G0123456789abcdef0123456789abcdef :{name}\n")
    os.rename(os.path.join(filled, "tmp", name), os.path.join(filled, "new", name))
    got = {g: u for u, g, _f, _k in snapshot(filled)}
    assert got["0123456789abcdef0123456789abcdef"] == 40
    assert count_paths["full"] == 0


def test_unknown_file_the_uidlist_lists_forces_a_full_rescan(filled, count_paths) -> None:  # type: ignore[no-untyped-def]
    """A file the change log has never seen but the uidlist already lists (e.g. it was
    away during the last scan) must keep its UID: the cheap path gives way."""
    with open(os.path.join(filled, "dovecot-uidlist")) as f:
        first = f.read().splitlines()[1]
    base = first.rsplit(":", 1)[1]
    path = os.path.join(filled, "new", base)
    os.rename(path, path + ".away")
    age(filled, 20)
    before = {g: u for u, g, _f, _k in snapshot(filled)}
    assert base not in before
    os.rename(path + ".away", path)
    count_paths.update(full=0, quick=0)
    after = {g: u for u, g, _f, _k in snapshot(filled)}
    assert after[base] == int(first.split(" ", 1)[0])
    assert count_paths["full"] == 1


def test_rewritten_uidlist_means_a_full_rescan(filled, count_paths) -> None:  # type: ignore[no-untyped-def]
    path = os.path.join(filled, "dovecot-uidlist")
    with open(path) as f:
        text = f.read()
    os.unlink(path)
    with open(path, "w") as f:  # a new inode, as Dovecot's rewrite through .tmp gives
        f.write(text)
    os.rename(os.path.join(filled, "new", sorted(os.listdir(os.path.join(filled, "new")))[0]),
              os.path.join(filled, "cur", sorted(os.listdir(os.path.join(filled, "new")))[0] + ":2,S"))
    got = snapshot(filled)
    assert count_paths["full"] == 1 and count_paths["quick"] == 0
    assert len(got) == 30 and sum(1 for g in got if "\\Seen" in g[2]) == 1


def test_stamp_records_the_uidlist_and_dovecot_log(filled) -> None:  # type: ignore[no-untyped-def]
    st = open_storage(f"maildir:{filled}", Settings())
    try:
        with st.open_mailbox("INBOX") as mb:
            mb.status()
            stamp = json.loads(mb.changes.meta().stamp)  # type: ignore[union-attr]
    finally:
        st.close()
    s = os.stat(os.path.join(filled, "dovecot-uidlist"))
    assert stamp["ul"] == [s.st_ino, s.st_size]


# -- dovecot-uidlist: the one-pass parser agrees with the line parser ---------------------

_line = hs.tuples(
    hs.integers(0, 60),
    hs.lists(hs.sampled_from(["G0123456789abcdef0123456789abcdef", "G", "K1", "x", "", "W12"]), max_size=2),
    hs.sampled_from(["1.M1P1.h", "2.M2P2.h", "3.M3P3.h:2,S", "a/b", ":x", "4.M4.h", "5.M5.h\r"]),
)


@given(hs.lists(_line, max_size=12), hs.booleans())
def test_fast_uidlist_parse_equals_the_line_parser(lines, torn) -> None:  # type: ignore[no-untyped-def]
    text = "3 V5 N9 G0123456789abcdef0123456789abcdef\n" + "".join(
        f"{uid}{''.join(' ' + f for f in fields)} :{name}\n" for uid, fields, name in lines
    ) + ("7 :torn" if torn else "")
    data = text.encode()
    try:
        fast = ulmod.parse(data)
    except Exception as e:  # noqa: BLE001
        fast = type(e).__name__ + str(e)
    slow_ul = ulmod.Uidlist()
    try:
        head = ulmod.parse(text.split("\n", 1)[0].encode() + b"\n")
        slow_ul = head
        body = text.split("\n")[1:]
        body.pop()
        ulmod._parse_records(slow_ul, body, ulmod.FILENAME, 2, 0)
        slow: object = slow_ul
    except Exception as e:  # noqa: BLE001
        slow = type(e).__name__ + str(e)
    assert fast == slow


@given(hs.lists(_line, max_size=12), hs.booleans(),
       hs.lists(hs.sampled_from(["9.M9.h", "1.M1P1.h", "2.M2P2.h", "new"]), max_size=3),
       hs.sampled_from([0, 1, 16]))
def test_uidlist_summary_agrees_with_the_parse(tmp_path_factory, lines, torn, probes, search) -> None:  # type: ignore[no-untyped-def]
    """What saves ask of the list (the newest UIDs, whether a name is taken, the header) is
    what the full parse says, whether names are searched in the file or hashed."""
    text = "3 V5 N9 G0123456789abcdef0123456789abcdef\n" + "".join(
        f"{uid}{''.join(' ' + f for f in fields)} :{name}\n" for uid, fields, name in lines
    ) + ("7 :torn" if torn else "")
    path = str(tmp_path_factory.mktemp("ul") / "dovecot-uidlist")
    with open(path, "wb") as f:
        f.write(text.encode())
    try:
        full = ulmod.parse(text.encode())
    except Exception as e:  # noqa: BLE001
        with pytest.raises(type(e)):  # at the latest when the names are hashed
            summary, _ = ulmod.read_summary(path)
            assert summary is not None
            summary.SEARCH_LIMIT = 0
            summary.taken(["x"])
        return
    summary, _ = ulmod.read_summary(path)
    assert summary is not None
    summary.SEARCH_LIMIT = search
    # Every record line's UID, newest first (a duplicate name's earlier line too: harmless
    # for its one use, telling whether Dovecot has yet to index a UID).
    assert list(summary.uids_descending()) == [int(x.split(" ", 1)[0]) for x in text.split("\n")[1:-1]][::-1]
    assert list(summary.uids_newest_first()) == list(summary.uids_newest_first())  # again
    assert summary.effective_next_uid == full.effective_next_uid
    assert (summary.uidvalidity, summary.guid) == (full.uidvalidity, full.guid)
    bases = [r.base for r in full.records]
    assert summary.taken(bases) == set(bases)
    assert summary.taken(probes) == {p for p in probes if p in bases}  # hash(str) has no collisions here
    extra = [ulmod.UidlistRecord(full.effective_next_uid + i, f"{i}.Mnew.h") for i in range(3)]
    if not torn:
        ulmod.append(path, summary, extra, fsync=False)
        assert summary.highest_uid == extra[-1].uid
        assert summary.taken([r.base for r in extra]) == {r.base for r in extra}
        assert list(summary.uids_descending())[:3] == [r.uid for r in reversed(extra)]


def test_a_save_batch_does_not_hold_the_parsed_uidlist(filled) -> None:  # type: ignore[no-untyped-def]
    """Between batches of saves the mailbox keeps a summary, updated by our own appends,
    not the list parsed again or kept whole."""
    body = MSG % (51, 51, 51)
    vsize = len(body) + body.count(b"\n")  # every LF counts as CRLF
    reused = f"1.M1P1.reused,S={len(body)},W={vsize}"  # a GUID fit to be a base name
    st = open_storage(f"maildir:{filled}", Settings())
    try:
        with st.open_mailbox("INBOX") as mb:
            mb.save([SaveRequest(io.BytesIO(MSG % (50, 50, 50)))])
            first = mb._mem.summary
            mb.save([SaveRequest(io.BytesIO(body), guid=reused)])
            assert mb._mem.summary is first  # followed our append, not read again
            assert list(first.uids_descending()) == list(range(32, 0, -1))
            assert first.taken([reused]) == {reused}
            uidlist = ulmod.read(os.path.join(filled, "dovecot-uidlist"))[0]
            assert uidlist.records[-1].base == reused
            # A name the list already holds is not given to a new file again.
            mb.save([SaveRequest(io.BytesIO(body), guid=reused)])
            uidlist = ulmod.read(os.path.join(filled, "dovecot-uidlist"))[0]
            assert uidlist.records[-1].base != reused
            assert uidlist.records[-1].fields.get("G") == reused
    finally:
        st.close()


def test_uidlist_summary_reads_a_big_list_from_its_end(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Newest UIDs across 64 KiB steps, lines longer than a step, a last line too long for
    the tail read, and an append in progress."""
    path = str(tmp_path / "dovecot-uidlist")
    lines, uid = ["3 V5 N9 G0123456789abcdef0123456789abcdef\n"], 0
    for i in range(20000):
        uid += 1 + i % 3
        lines.append(f"{uid} :{i}.M{i}P1.{'h' * (70000 if i % 4999 == 0 else 20)}\n")
    for last_long in (False, True):
        body = "".join(lines) + (f"{uid + 1} :{'l' * 70000}\n" if last_long else "") + "99999999 :torn"
        with open(path, "w") as f:
            f.write(body)
        summary, _ = ulmod.read_summary(path)
        full, _ = ulmod.read(path)
        assert summary is not None and full is not None
        assert list(summary.uids_descending()) == [r.uid for r in reversed(full.records)]
        assert summary.highest_uid == full.highest_uid
