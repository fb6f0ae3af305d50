"""Unit tests: names, header hashes, UID sets, settings."""

from __future__ import annotations

from datetime import datetime

import pytest
from dsync_imapc.config import load_config
from dsync_imapc.headerhash import disambiguate, header_hash, normalize
from dsync_imapc.names import to_name, to_raw
from dsync_imapc.storage import _flags, _gmail_labelled, parse_uid_set, uid_set
from hypothesis import given
from hypothesis import strategies as st

from dsync_core.errors import ConfigError, InvalidNameError
from dsync_core.settings import Settings


@pytest.mark.parametrize(
    ("raw", "sep", "prefix", "name"),
    [
        ("INBOX", ".", "", "INBOX"),
        ("inbox", "/", "", "INBOX"),
        ("Entw&APw-rfe.Sub", ".", "", "Entwürfe/Sub"),
        ("INBOX.Archiv.2024", ".", "INBOX", "Archiv/2024"),
        ("Other.Thing", ".", "INBOX", None),
        ("a/b.c", ".", "", "a_b/c"),
        ("&ZeVnLIqe-/&U,BTFw-", "/", "", "日本語/台北"),
        ("[Gmail]/Sent Mail", "/", "", "[Gmail]/Sent Mail"),
        ("a&-b", "/", "", "a&b"),
    ],
)
def test_server_names(raw: str, sep: str, prefix: str, name: str | None) -> None:
    assert to_name(raw, sep, prefix, "_") == name
    if name is not None and "_" not in name and raw.upper() != "INBOX":
        assert to_raw(name, sep, prefix) == raw


def test_name_with_server_separator_refused() -> None:
    with pytest.raises(InvalidNameError):
        to_raw("a.b/c", ".", "")


def test_header_hash_normalisation_and_size() -> None:
    a = b"Subject: Hi there\r\nMessage-ID: <1@x>\r\n\r\n"
    b = b"Subject:   Hi  there\nMessage-ID: <1@x>\n\n"
    assert normalize(a) == normalize(b)
    assert header_hash(a, 100) == header_hash(b, 100)
    assert header_hash(a, 100) != header_hash(a, 101)
    assert normalize(b"S: \xc3\xa4\xc3\xb6?x\r\n") == b"S:?x\n"
    h = header_hash(b"", None)
    assert len(h) == 32 and int(h, 16) >= 0


def test_duplicates_numbered_in_uid_order() -> None:
    got = disambiguate([(7, "aa"), (3, "aa"), (5, "bb"), (9, "aa")])
    assert got[3] == "aa" and got[5] == "bb"
    assert len({got[3], got[7], got[9]}) == 3
    assert disambiguate([(7, "aa"), (9, "aa")])[9] == got[7]  # the n-th occurrence is stable


def test_uid_sets() -> None:
    assert uid_set([5, 1, 2, 3, 9, 10]) == "1:3,5,9:10"
    assert parse_uid_set("1:3,5,10:9") == [1, 2, 3, 5, 9, 10]
    assert uid_set([]) == ""


def test_flags_split() -> None:
    flags, kws = _flags([b"\\Seen", b"\\recent", b"\\FLAGGED", b"$Label1", b"\\Unknown", "work"])
    assert flags == {"\\Seen", "\\Flagged"} and kws == {"$Label1", "work"}


def test_gmail_all_mail_keeps_only_unlabelled() -> None:
    assert not _gmail_labelled({b"X-GM-LABELS": ()})
    assert not _gmail_labelled({b"X-GM-LABELS": (b"\\Important", b"\\Starred")})
    assert _gmail_labelled({b"X-GM-LABELS": (b"\\Inbox",)})
    assert _gmail_labelled({b"X-GM-LABELS": (b"Work",)})


def test_settings() -> None:
    base = {"imapc_host": "h", "imapc_user": "u"}
    cfg = load_config(Settings(base))
    assert (cfg.port, cfg.ssl, cfg.connections) == (143, "no", 4)
    assert load_config(Settings({**base, "imapc_ssl": "imaps"})).port == 993
    for bad, what in (({"imapc_user": "u"}, "imapc_host"), ({**base, "imapc_ssl": "tls"}, "imapc_ssl"),
                      ({**base, "imapc_port": "70000"}, "imapc_port"),
                      ({**base, "imapc_sasl_mechanisms": "gssapi"}, "imapc_sasl_mechanisms"),
                      ({**base, "imapc_password_command": "false"}, "imapc_password_command")):
        with pytest.raises(ConfigError, match=what):
            load_config(Settings(bad))


def test_bound_settings() -> None:
    base = {"imapc_host": "h", "imapc_user": "u"}
    cfg = load_config(Settings(base))
    assert (cfg.max_line, cfg.max_response, cfg.chunk_size) == (16 << 20, 256 << 20, 1 << 20)
    cfg = load_config(Settings({**base, "imapc_max_line_length": "1M", "imapc_max_response_size": "2G"}))
    assert (cfg.max_line, cfg.max_response) == (1 << 20, 2 << 30)
    # Floors: a bound too small to read a greeting or a listing is raised to the floor.
    cfg = load_config(Settings({**base, "imapc_max_line_length": "10", "imapc_max_response_size": "10"}))
    assert (cfg.max_line, cfg.max_response) == (64 << 10, 1 << 20)
    with pytest.raises(ConfigError, match="imapc_max_line_length"):
        load_config(Settings({**base, "imapc_max_line_length": "lots"}))


def test_fast_fetch_parser_matches_imapclient() -> None:
    from dsync_imapc.storage import _fast_parse
    from imapclient.response_parser import parse_fetch_response

    data = [
        b'1 (UID 7 FLAGS (\\Seen $Label1) INTERNALDATE " 1-Jan-2020 12:00:00 +0100" RFC822.SIZE 120 MODSEQ (42))',
        (b"2 (UID 9 RFC822.SIZE 33 BODY[HEADER.FIELDS (MESSAGE-ID DATE)] {21}", b"Message-ID: <a@b>\r\n\r\n"),
        b")",
        (b"3 (UID 11 BODY[]<0> {5}", b"hello"),
        b" FLAGS ())",
        b"4 (FLAGS (\\Deleted))",  # unsolicited: no UID
    ]
    fast = _fast_parse(data)
    assert fast is not None
    slow = dict(parse_fetch_response(data[:5], False, True))
    for uid in (7, 9, 11):
        for k, v in slow[uid].items():
            if k == b"SEQ":
                continue
            assert fast[uid][k] == v, (uid, k)
    assert set(fast) == {7, 9, 11}
    assert _fast_parse([b'1 (UID 3 X-GM-LABELS ("a b"))']) is None


def test_plugin_import_is_light() -> None:
    """Loading the plugin (as every dsync run does) must not import imapclient."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from dsync_core.plugin.manager import get_plugin_manager\n"
        "from dsync_core.api import known_schemes\n"
        "get_plugin_manager()\n"
        "assert 'imapc' in known_schemes(), known_schemes()\n"
        "assert 'imapclient' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@given(st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 31)),
       st.integers(-23 * 60 - 59, 23 * 60 + 59), st.booleans(), st.booleans())
def test_internaldate_reads_what_strptime_reads(when, offset_min, pad, lower) -> None:  # type: ignore[no-untyped-def]
    """The hand-made INTERNALDATE parser agrees with strptime on every date-time IMAP can
    send (space-padded days, any month case, offsets up to 23:59)."""
    from datetime import timedelta, timezone

    from dsync_imapc.storage import internaldate

    tz = timezone(timedelta(minutes=offset_min))
    sign = "-" if offset_min < 0 else "+"
    text = (f"{when.day:2d}" if pad else f"{when.day:02d}") + when.strftime("-%b-%Y %H:%M:%S ") \
        + f"{sign}{abs(offset_min) // 60:02d}{abs(offset_min) % 60:02d}"
    if lower:
        text = text.lower()
    expected = datetime.strptime(text.strip(), "%d-%b-%Y %H:%M:%S %z")
    assert internaldate(text.encode()) == expected == when.replace(microsecond=0, tzinfo=tz)


def test_internaldate_rejects_what_is_not_a_date() -> None:
    from dsync_imapc.storage import internaldate

    for bad in (b"31-Feb-2024 00:00:00 +0000", b"01-Xyz-2024 00:00:00 +0000", b"01-Jan-2024 00:00:00 +2400",
                b"01-Jan-2024 25:00:00 +0000", b"01-Jan-2024", b"", b"01-Jan-2024 00:00:00 0000"):
        assert internaldate(bad) is None, bad
