"""The formatters print exactly what doveadm 2.3.19 prints (samples taken from real runs)."""

from __future__ import annotations

import io

import pytest

from dsync_core.errors import UsageError
from dsync_core.formatter import Field, Printer, json_escape


def render(fmt: str, fields: list[Field], rows: list[list[str]]) -> bytes:
    buf = io.BytesIO()
    p = Printer(fmt, fields, out=buf)
    for r in rows:
        p.row(r)
    p.finish()
    return buf.getvalue()


FETCH = [Field("mailbox"), Field("uid"), Field("flags")]
ROWS = [["Entwürfe", "1", "\\Recent Work"], ["INBOX", "2", "\\Seen $Junk"]]


def test_json_is_one_line_of_string_values_without_newline() -> None:
    out = render("json", FETCH, ROWS)
    assert out == (
        '[{"mailbox":"Entwürfe","uid":"1","flags":"\\\\Recent Work"},'
        '{"mailbox":"INBOX","uid":"2","flags":"\\\\Seen $Junk"}]'
    ).encode()


def test_json_empty_result_is_empty_list() -> None:
    assert render("json", FETCH, []) == b"[]"


def test_json_escaping_matches_dovecot() -> None:
    assert json_escape('a"b\\c/d\n\t\x01\u2028ü') == 'a\\"b\\\\c/d\\n\\t\\u0001\\u2028ü'
    # An undecodable byte (kept as a surrogate escape) becomes U+FFFD.
    assert json_escape(b"x\xffy".decode("utf-8", "surrogateescape")) == "x\ufffdy"


def test_flow_hides_mailbox_title_in_mailbox_commands() -> None:
    fields = [Field("mailbox", hide_title=True), Field("messages"), Field("uidnext")]
    assert render("flow", fields, [["INBOX", "3", "4"]]) == b"INBOX messages=3 uidnext=4\n"


def test_flow_fetch() -> None:
    assert render("flow", FETCH, ROWS[1:]) == b"mailbox=INBOX uid=2 flags=\\Seen $Junk\n"


def test_pager_separates_records_with_form_feed_line() -> None:
    fields = [Field("uid"), Field("body", stream=True), Field("flags")]
    out = render("pager", fields, [["1", "Body\n", ""], ["2", "no newline", "\\Seen"]])
    assert out == b"uid: 1\nbody:\nBody\nflags: \n\fuid: 2\nbody:\nno newlineflags: \\Seen\n".replace(
        b"\n\fuid", b"\n\f\nuid"
    )


def test_tab_has_header_even_without_rows_and_streamed_quirk() -> None:
    assert render("tab", FETCH, []) == b"mailbox\tuid\tflags\n"
    fields = [Field("uid"), Field("body", stream=True), Field("hdr", stream=True)]
    # doveadm 2.3 writes TAB + data + TAB for each streamed value.
    assert render("tab", fields, [["1", "B\n", "H\n\n"]]) == b"uid\tbody\thdr\n1\tB\n\t\tH\n\n\t\n"


def test_table_pads_columns_and_refuses_multiline() -> None:
    fields = [Field("mailbox", hide_title=True)]
    out = render("table", fields, [["Work"], ["Archive/2024"], ["Entwürfe"]]).decode()
    lines = out.splitlines()
    # As doveadm printed it: no header when every column hides its title, the last
    # column widened by half the free space of 80 columns, padding counted in bytes.
    assert lines[0] == "Work" + " " * 42
    assert lines[1] == "Archive/2024" + " " * 34
    assert lines[2] == "Entwürfe" + " " * 39
    with pytest.raises(UsageError, match="multi-line"):
        render("table", FETCH, [["a\nb", "1", ""]])


def test_unknown_formatter() -> None:
    with pytest.raises(UsageError):
        Printer("xml", FETCH)
