"""doveadm's output formatters: ``flow``, ``pager``, ``tab``, ``table`` and ``json``.

Byte-for-byte what Dovecot 2.3 prints, so that scripts written against doveadm keep
working: ``json`` is one line of objects whose values are all strings, with no trailing
newline; ``flow`` is ``key=value`` pairs; ``tab`` has a header line; ``pager`` separates
records with a form-feed line; ``table`` pads columns to the terminal width.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from typing import BinaryIO

import attrs

from .errors import UsageError

FORMATTERS = ("flow", "pager", "tab", "table", "json")


@attrs.frozen
class Field:
    """A column. ``hide_title`` prints the bare value in flow/pager/table (``mailbox``)."""

    key: str
    title: str = ""
    hide_title: bool = False
    #: Streamed values (``hdr``, ``body``, ``text``): doveadm prints them differently.
    stream: bool = False

    @property
    def name(self) -> str:
        return self.title or self.key


def json_escape(value: str) -> str:
    """Dovecot's JSON string escaping (non-ASCII stays raw UTF-8; ``/`` is not escaped)."""
    out: list[str] = []
    for ch in value:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\b":
            out.append("\\b")
        elif ch == "\f":
            out.append("\\f")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif o < 0x20:
            out.append(f"\\u{o:04x}")
        elif o in (0x2028, 0x2029):
            out.append(f"\\u{o:04x}")
        elif 0xDC80 <= o <= 0xDCFF:  # an undecodable byte (surrogateescape)
            out.append("\ufffd")
        else:
            out.append(ch)
    return "".join(out)


def _width(text: str) -> int:
    # doveadm counts UTF-8 characters, not display cells.
    return len(text)


class Printer:
    """Collects rows and writes them in one formatter's syntax to a binary stream."""

    def __init__(self, fmt: str, fields: Sequence[Field], out: BinaryIO | None = None) -> None:
        if fmt not in FORMATTERS:
            raise UsageError(f"Unknown formatter: {fmt}")
        self.fmt = fmt
        self.fields = list(fields)
        self.out = out if out is not None else sys.stdout.buffer
        self.rows = 0
        self._table_rows: list[list[str]] = []
        self._started = False

    def _w(self, text: str) -> None:
        self.out.write(text.encode("utf-8", "surrogateescape"))

    def _header(self) -> None:
        if self._started:
            return
        self._started = True
        if self.fmt == "tab":
            self._w("\t".join(f.name for f in self.fields) + "\n")
        elif self.fmt == "json":
            self._w("[")

    def row(self, values: Sequence[str]) -> None:
        """Print one record; ``values`` line up with the fields."""
        self._header()
        values = list(values)
        fmt = self.fmt
        if fmt == "json":
            if self.rows:
                self._w(",")
            self._w(
                "{" + ",".join(f'"{json_escape(f.name)}":"{json_escape(v)}"' for f, v in zip(self.fields, values)) + "}"
            )
        elif fmt == "flow":
            parts = [v if f.hide_title else f"{f.name}={v}" for f, v in zip(self.fields, values)]
            self._w(" ".join(parts) + "\n")
        elif fmt == "pager":
            if self.rows:
                self._w("\f\n")
            for f, v in zip(self.fields, values):
                if f.hide_title:
                    self._w(v + "\n")
                elif f.stream:
                    self._w(f"{f.name}:\n{v}")
                else:
                    self._w(f"{f.name}: {v}\n")
        elif fmt == "tab":
            line = ""
            for i, (f, v) in enumerate(zip(self.fields, values)):
                if f.stream:
                    # doveadm 2.3 writes a streamed value as TAB + data + TAB.
                    line += "\t" + v + "\t"
                else:
                    line += ("\t" if i and not self.fields[i - 1].stream else "") + v
            self._w(line + "\n")
        elif fmt == "table":
            for v in values:
                if "\n" in v:
                    raise UsageError("table formatter doesn't support multi-line values")
            self._table_rows.append(values)
            if len(self._table_rows) >= 100:
                self._flush_table()
        self.rows += 1

    def _columns(self) -> int:
        try:
            return max(30, os.get_terminal_size(self.out.fileno()).columns)  # type: ignore[attr-defined]
        except (OSError, AttributeError, ValueError):
            return 80

    def _flush_table(self) -> None:
        rows = self._table_rows
        self._table_rows = []
        show_header = not all(f.hide_title for f in self.fields)
        if not hasattr(self, "_widths"):
            widths = [_width(f.name) if show_header else 0 for f in self.fields]
            for r in rows:
                for i, v in enumerate(r):
                    widths[i] = max(widths[i], _width(v))
            columns = self._columns()
            total = sum(widths) + len(widths) - 1
            if total < columns and widths:
                widths[-1] += (columns - total) // 2
            self._widths = widths
            if show_header:
                self._emit_table_row([f.name for f in self.fields])
        for r in rows:
            self._emit_table_row(r)

    def _emit_table_row(self, values: Sequence[str]) -> None:
        cells = []
        for i, v in enumerate(values):
            pad = self._widths[i] - _width(v)
            # doveadm pads by bytes of the UTF-8 text while measuring in characters.
            extra = len(v.encode("utf-8", "surrogateescape")) - len(v)
            cells.append(v + " " * max(0, pad + extra))
        self._w(" ".join(cells) + "\n")

    def finish(self) -> None:
        """Close the output (``]`` for json, the table's buffered rows)."""
        if self.fmt == "json":
            self._header()
            self._w("]")
        elif self.fmt == "tab":
            self._header()
        elif self.fmt == "table":
            if self._table_rows or not hasattr(self, "_widths"):
                self._flush_table()
        self.out.flush()


def terminal_width() -> int:
    return shutil.get_terminal_size((80, 24)).columns


__all__ = ["Field", "Printer", "FORMATTERS", "json_escape"]

