"""Unit tests: file names, dovecot-uidlist, dovecot-keywords, layouts and name checks."""

from __future__ import annotations

import logging
import os

import pytest
from dsync_maildir import filename as fn
from dsync_maildir import keywords as kwmod
from dsync_maildir import uidlist as ulmod
from dsync_maildir.layout import Layout

from dsync_core.errors import CorruptError, InvalidNameError
from dsync_core.uidvalidity import allocate_uidvalidity


# -- file names ---------------------------------------------------------------------------
def test_parse_name_with_sizes_and_flags() -> None:
    mn = fn.parse_name("1700000123.M456789P4242.mx1,S=4120,W=4201:2,FRSac")
    assert mn is not None
    assert mn.base == "1700000123.M456789P4242.mx1,S=4120,W=4201"
    assert (mn.size, mn.vsize) == (4120, 4201)
    assert mn.letters == "FRSac"
    assert fn.flags_from_letters(mn.letters) == {"\\Flagged", "\\Answered", "\\Seen"}
    assert fn.keyword_indexes(mn.letters) == [0, 2]


def test_parse_name_without_info_and_with_old_info() -> None:
    mn = fn.parse_name("123.M1P1.h")
    assert mn is not None and mn.info is None and mn.letters == "" and mn.size is None
    mn = fn.parse_name("123.M1P1.h:1,xyz")
    assert mn is not None and mn.letters == ""


@pytest.mark.parametrize("name", [".hidden", "", ":2,S", "a\nb", "a\rb"])
def test_malformed_names_are_skipped(name: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dsync.maildir"):
        assert fn.parse_name(name) is None
    if name not in ("", ".hidden"):
        assert any("Ignoring Maildir file" in r.getMessage() for r in caplog.records)


def test_with_letters_keeps_unknown_letters_and_p() -> None:
    mn = fn.parse_name("b,S=3:2,PSXa,extra")
    assert mn is not None
    assert fn.with_letters(mn, fn.letters_for(frozenset({"\\Draft", "\\Deleted"}), [1])) == "b,S=3:2,DPTXb,extra"
    mn = fn.parse_name("b")
    assert mn is not None
    assert fn.with_letters(mn, "S") == "b:2,S"
    assert fn.with_letters(mn, "") == "b"


def test_letters_in_ascii_order() -> None:
    assert fn.letters_for(frozenset({"\\Seen", "\\Answered", "\\Draft", "\\Flagged", "\\Deleted"}), [3, 0]) == "DFRSTad"


def test_generated_base_names_are_unique_and_sortable() -> None:
    names = [fn.generate_base() for _ in range(200)]
    assert len(set(names)) == 200
    assert all(fn.valid_base(n) for n in names)
    assert sorted(names, key=fn.new_file_sort_key) == names


def test_sort_key_order() -> None:
    names = ["20.M5P1.h", "10.M99P1.h", "10.M100P1.h", "10.M100P1.a", "9.x"]
    assert sorted(names, key=fn.new_file_sort_key) == ["9.x", "10.M99P1.h", "10.M100P1.a", "10.M100P1.h", "20.M5P1.h"]


@pytest.mark.parametrize("base", ["", ".x", "a/b", "a:b", "a\nb", "a\x00b"])
def test_invalid_bases(base: str) -> None:
    assert not fn.valid_base(base)


# -- dovecot-uidlist -------------------------------------------------------------------------
GOOD = (
    b"3 V1700000000 N43 G3f2a9c01e5b24d6f8a1b2c3d4e5f6071 Pfoo\n"
    b"10 :1700000123.M456789P4242.mx1,S=4120,W=4201\n"
    b"42 G9b1d0e7c55aa4e2f9c0d1e2f3a4b5c6d W2210 :1700000999.M1P77.mx1\n"
)


def test_uidlist_parse_v3() -> None:
    ul = ulmod.parse(GOOD)
    assert (ul.uidvalidity, ul.next_uid, ul.guid) == (1700000000, 43, "3f2a9c01e5b24d6f8a1b2c3d4e5f6071")
    assert [r.uid for r in ul.records] == [10, 42]
    assert ul.records[1].guid == "9b1d0e7c55aa4e2f9c0d1e2f3a4b5c6d"
    assert ul.records[1].fields["W"] == "2210"
    assert ul.effective_next_uid == 43
    assert ul.format() == GOOD


def test_uidlist_stale_next_uid_and_partial_last_line() -> None:
    ul = ulmod.parse(b"3 V5 N1 G" + b"a" * 32 + b"\n1 :x\n2 :y\n3 :partial")
    assert [r.uid for r in ul.records] == [1, 2]
    assert ul.effective_next_uid == 3


def test_uidlist_v1_read() -> None:
    ul = ulmod.parse(b"1 123 7\n5 1700.M1P1.h:2,S\n")
    assert ul.uidvalidity == 123 and ul.records[0].base == "1700.M1P1.h" and ul.needs_rewrite


def test_uidlist_old_full_name_is_stripped() -> None:
    ul = ulmod.parse(b"3 V5 N1 G" + b"a" * 32 + b"\n1 :base:2,S\n")
    assert ul.records[0].base == "base"


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (b"3 V0 N1\n", 1),
        (b"garbage\n", 1),
        (b"3 Vx N1\n", 1),
        (b"3 V1 N1\n2 :a\n2 :b\n", 3),
        (b"3 V1 N1\n0 :a\n", 2),
        (b"3 V1 N1\n1 :a/b\n", 2),
        (b"3 V1 N1\n1 a\n", 2),
        (b"3 V1 N1\nx :a\n", 2),
        (b"", 1),
    ],
)
def test_uidlist_broken(data: bytes, line: int) -> None:
    with pytest.raises(CorruptError, match=rf"dovecot-uidlist line {line}:"):
        ulmod.parse(data, "/m/dovecot-uidlist")


def test_uidlist_duplicate_base_later_wins() -> None:
    ul = ulmod.parse(b"3 V1 N1 G" + b"b" * 32 + b"\n1 :a\n2 :a\n")
    assert [(r.uid, r.base) for r in ul.records] == [(2, "a")] and ul.needs_rewrite


def test_uidlist_append_and_rewrite(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = str(tmp_path / "dovecot-uidlist")
    ul = ulmod.Uidlist(uidvalidity=7, next_uid=1, guid="c" * 32)
    ulmod.rewrite(p, ul, None)
    ulmod.append(p, ul, [ulmod.UidlistRecord(1, "x"), ulmod.UidlistRecord(5, "y", {"G": "g1"})])
    with pytest.raises(ValueError):
        ulmod.append(p, ul, [ulmod.UidlistRecord(3, "z")])
    back, st = ulmod.read(p)
    assert back is not None and [r.uid for r in back.records] == [1, 5] and back.records[1].guid == "g1"
    before = os.stat(p)
    ulmod.rewrite(p, back, st)
    after = os.stat(p)
    assert (after.st_ino, after.st_mtime_ns) != (before.st_ino, before.st_mtime_ns)
    assert not os.path.exists(p + ".tmp")


# -- dovecot-keywords ------------------------------------------------------------------------
def test_keywords_parse_skips_bad_lines() -> None:
    kw = kwmod.Keywords.parse(b"0 $Junk\n1 Work\nbad\n30 X\n2 \n3 work\n4 Later\n")
    assert kw.names[:5] == ["$Junk", "Work", None, None, "Later"]
    assert kw.name(3) == "unknown-3"


def test_keywords_assign_first_free_slot_and_never_reassign(tmp_path) -> None:  # type: ignore[no-untyped-def]
    kw = kwmod.Keywords.parse(b"0 $Junk\n2 Work\n")
    idx = kw.assign({"work", "New"})
    assert idx["work"] == 2 and idx["New"] == 1 and kw.changed
    p = str(tmp_path / "dovecot-keywords")
    kwmod.write(p, kw, None)
    back, st = kwmod.read(p)
    assert back.names[:3] == ["$Junk", "New", "Work"]
    # the mtime must move on even within the same second
    kw.assign({"Third"})
    kwmod.write(p, kw, st)
    assert int(os.stat(p).st_mtime) > int(st.st_mtime)


def test_too_many_keywords_lists_what_does_not_fit() -> None:
    kw = kwmod.Keywords()
    kw.assign({f"k{i:02d}" for i in range(25)})
    with pytest.raises(kwmod.TooManyKeywordsError) as ei:
        kw.assign({"k00", "zz1", "zz2", "zz3"})
    assert "zz2, zz3" in ei.value.message
    assert "zz1" not in ei.value.message.split(":", 1)[1]


# -- layouts and names -------------------------------------------------------------------------
def test_maildirpp_paths(tmp_path) -> None:  # type: ignore[no-untyped-def]
    lay = Layout(str(tmp_path))
    assert lay.mail_dir("INBOX") == str(tmp_path)
    assert lay.mail_dir("Archive/2024") == str(tmp_path / ".Archive.2024")
    assert lay.mail_dir("Entwürfe") == str(tmp_path / ".Entw&APw-rfe")
    lay = Layout(str(tmp_path), utf8=True, control=str(tmp_path / "ctl"))
    assert lay.mail_dir("Entwürfe") == str(tmp_path / ".Entwürfe")
    assert lay.control_dir("A/b") == str(tmp_path / "ctl" / ".A.b")
    assert lay.control_dir("INBOX") == str(tmp_path / "ctl")


def test_fs_paths(tmp_path) -> None:  # type: ignore[no-untyped-def]
    lay = Layout(str(tmp_path), fs=True, index=str(tmp_path / "idx"))
    assert lay.mail_dir("Archive/2024") == str(tmp_path / "Archive" / "2024")
    assert lay.index_dir("Archive/2024") == str(tmp_path / "idx" / "Archive" / "2024")


@pytest.mark.parametrize(
    "name", ["a.b", "x/y.z", "../../etc", "/abs", "a//b", "a/", "ctl\x01x", "tab\tname", "..", ".", ""]
)
def test_bad_names_refused_maildirpp(tmp_path, name: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidNameError):
        Layout(str(tmp_path)).validate(name)
    assert os.listdir(tmp_path) == []


def test_dot_message_like_doveadm(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidNameError, match=r"Character not allowed in mailbox name: '\.'"):
        Layout(str(tmp_path)).validate("a.b")


@pytest.mark.parametrize("name", ["a.b", "Archive/2024", "inbox/x"])
def test_fs_accepts_dots(tmp_path, name: str) -> None:  # type: ignore[no-untyped-def]
    assert Layout(str(tmp_path), fs=True).validate(name) in ("a.b", "Archive/2024", "INBOX/x")


@pytest.mark.parametrize("name", ["cur", "a/new", ".hidden"])
def test_fs_reserved_levels(tmp_path, name: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidNameError):
        Layout(str(tmp_path), fs=True).validate(name)


def test_listing_decodes_and_skips_garbage(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    for d in (".Archive.2024", ".Entw&APw-rfe", ".bad&", "..x", "plain"):
        os.mkdir(tmp_path / d)
    (tmp_path / ".file").write_text("")
    with caplog.at_level(logging.WARNING, logger="dsync.maildir"):
        found = Layout(str(tmp_path)).existing()
    assert found == {"Archive/2024": True, "Entwürfe": True}


# -- uidvalidity allocator ------------------------------------------------------------------
def test_uidvalidity_allocator(tmp_path) -> None:  # type: ignore[no-untyped-def]
    a = allocate_uidvalidity(str(tmp_path))
    b = allocate_uidvalidity(str(tmp_path))
    assert b == a + 1
    assert (tmp_path / "dovecot-uidvalidity").read_text() == f"{b:08x}"
    assert os.path.exists(tmp_path / f"dovecot-uidvalidity.{b:08x}")
    assert not os.path.exists(tmp_path / f"dovecot-uidvalidity.{a:08x}")
