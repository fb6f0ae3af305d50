"""doveadm's search query language (doveadm-search-query(7)), evaluated over a storage.

``mailbox INBOX uid 1:5 seen`` is an AND of its terms; ``or A B``, ``not A`` and
parentheses combine them. Mailbox terms (``mailbox``, ``mailbox-guid``) decide which
mailboxes are opened at all; message terms are checked per message, reading headers or
bodies only when a term needs them.
"""

from __future__ import annotations

import calendar
import email.parser
import email.policy
import functools
import re
import time
from collections.abc import Callable, Iterator
from email.utils import parsedate_tz
from typing import BinaryIO

import attrs

from .errors import EX_TEMPFAIL, UsageError
from .model import MailboxInfo, MailboxStatus, MessageRecord
from .storage import Mailbox, Storage

_FLAG_TERMS = {
    "answered": ("\\Answered", True),
    "unanswered": ("\\Answered", False),
    "deleted": ("\\Deleted", True),
    "undeleted": ("\\Deleted", False),
    "draft": ("\\Draft", True),
    "undraft": ("\\Draft", False),
    "flagged": ("\\Flagged", True),
    "unflagged": ("\\Flagged", False),
    "seen": ("\\Seen", True),
    "unseen": ("\\Seen", False),
}
_MONTHS = {m.lower(): i for i, m in enumerate(calendar.month_abbr) if m}
MAX_HEADER_BYTES = 1024 * 1024


class QueryError(UsageError):
    """A search query that does not parse (doveadm exits 75 for these, not 64)."""

    exit_code = EX_TEMPFAIL


class MessageContext:
    """One message as the search sees it; headers and body are read only on demand."""

    def __init__(self, mailbox: Mailbox, info: MailboxInfo, record: MessageRecord, seq: int,
                 status: Callable[[], MailboxStatus] | None = None) -> None:
        self.mailbox = mailbox
        self.info = info
        self.record = record
        self.seq = seq
        self._headers: email.message.Message | None = None
        self._status = status

    def status(self) -> MailboxStatus:
        """The mailbox's status, taken once per mailbox by the search (not once per message)."""
        return self._status() if self._status is not None else self.mailbox.status()

    def open_body(self) -> BinaryIO:
        return self.mailbox.open_body(self.record.uid)

    def header_bytes(self) -> bytes:
        """The header block including the empty line that ends it (bounded in size)."""
        out = bytearray()
        with self.open_body() as f:
            while len(out) < MAX_HEADER_BYTES:
                line = f.readline(65536)
                if not line:
                    break
                out += line
                if line in (b"\n", b"\r\n"):
                    break
        return bytes(out)

    def headers(self) -> email.message.Message:
        if self._headers is None:
            parser = email.parser.BytesHeaderParser(policy=email.policy.compat32)
            self._headers = parser.parsebytes(self.header_bytes())
        return self._headers

    def sent_date(self) -> tuple[int, int] | None:
        """(UTC UNIX time, offset seconds) of the Date: header, or None."""
        value = self.headers().get("Date")
        if not value:
            return None
        parsed = parsedate_tz(str(value))
        if not parsed:
            return None
        offset = parsed[9] or 0
        ts = calendar.timegm(parsed[:9]) - offset  # type: ignore[arg-type]
        return ts, offset


class Term:
    """A search term. ``mailbox_match`` is three-valued: True, False or None (depends on messages)."""

    def match(self, ctx: MessageContext) -> bool:
        raise NotImplementedError

    def mailbox_match(self, info: MailboxInfo) -> bool | None:
        return None


@attrs.define
class All(Term):
    def match(self, ctx: MessageContext) -> bool:
        return True

    def mailbox_match(self, info: MailboxInfo) -> bool | None:
        return True


@attrs.define
class And(Term):
    terms: list[Term]

    def match(self, ctx: MessageContext) -> bool:
        return all(t.match(ctx) for t in self.terms)

    def mailbox_match(self, info: MailboxInfo) -> bool | None:
        results = [t.mailbox_match(info) for t in self.terms]
        if False in results:
            return False
        if all(r is True for r in results):
            return True
        return None


@attrs.define
class Or(Term):
    terms: list[Term]

    def match(self, ctx: MessageContext) -> bool:
        return any(t.match(ctx) for t in self.terms)

    def mailbox_match(self, info: MailboxInfo) -> bool | None:
        results = [t.mailbox_match(info) for t in self.terms]
        if True in results:
            return True
        if all(r is False for r in results):
            return False
        return None


@attrs.define
class Not(Term):
    term: Term

    def match(self, ctx: MessageContext) -> bool:
        return not self.term.match(ctx)

    def mailbox_match(self, info: MailboxInfo) -> bool | None:
        r = self.term.mailbox_match(info)
        return None if r is None else not r


def _mask_regex(mask: str) -> re.Pattern[str]:
    # IMAP LIST wildcards: '*' matches anything, '%' anything but the separator.
    parts = []
    for ch in mask:
        if ch == "*":
            parts.append(".*")
        elif ch == "%":
            parts.append("[^/]*")
        else:
            parts.append(re.escape(ch))
    pattern = "".join(parts)
    if mask[:5].upper() == "INBOX":
        pattern = "INBOX" + pattern[5:]
    return re.compile(pattern + r"\Z")


def mailbox_mask_matches(mask: str, name: str) -> bool:
    """Does an IMAP LIST-style mask (``*``, ``%``) match a mailbox name?"""
    if mask.upper() == "INBOX":
        return name == "INBOX"
    return _mask_regex(mask).match(name) is not None


@attrs.define
class MailboxTerm(Term):
    mask: str

    def match(self, ctx: MessageContext) -> bool:
        return mailbox_mask_matches(self.mask, ctx.info.name)

    def mailbox_match(self, info: MailboxInfo) -> bool | None:
        return mailbox_mask_matches(self.mask, info.name)


@attrs.define
class MailboxGuidTerm(Term):
    guid: str

    def match(self, ctx: MessageContext) -> bool:
        return ctx.info.guid == self.guid

    def mailbox_match(self, info: MailboxInfo) -> bool | None:
        return info.guid == self.guid


def parse_set(text: str) -> list[tuple[int, int]]:
    """``1:5,7,10:*`` -> ranges; ``*`` is the largest value (2**32-1)."""
    ranges: list[tuple[int, int]] = []
    for part in text.split(","):
        lo_s, colon, hi_s = part.partition(":")
        try:
            lo = 2**32 - 1 if lo_s == "*" else int(lo_s)
            hi = lo if not colon else (2**32 - 1 if hi_s == "*" else int(hi_s))
        except ValueError:
            raise QueryError(f"Invalid UID/sequence set: {text}") from None
        if lo <= 0 or hi <= 0:
            raise QueryError(f"Invalid UID/sequence set: {text}")
        ranges.append((min(lo, hi), max(lo, hi)))
    return ranges


def _in_set(value: int, ranges: list[tuple[int, int]], last: Callable[[], int]) -> bool:
    for lo, hi in ranges:
        # '*' means the last existing value: a range n:* always includes the last one.
        # Looked up only for a '*'.
        if lo == 2**32 - 1:
            lo = last()
        if hi == 2**32 - 1:
            hi = max(last(), lo)
        if min(lo, hi) <= value <= max(lo, hi):
            return True
    return False


@attrs.define
class UidTerm(Term):
    ranges: list[tuple[int, int]]
    last_uid: Callable[[MessageContext], int] = attrs.field(
        default=lambda ctx: ctx.status().uidnext - 1, repr=False
    )

    def match(self, ctx: MessageContext) -> bool:
        return _in_set(ctx.record.uid, self.ranges, lambda: self.last_uid(ctx))


@attrs.define
class SeqTerm(Term):
    ranges: list[tuple[int, int]]

    def match(self, ctx: MessageContext) -> bool:
        return _in_set(ctx.seq, self.ranges, lambda: ctx.status().messages)


@attrs.define
class GuidTerm(Term):
    guid: str

    def match(self, ctx: MessageContext) -> bool:
        return ctx.record.guid == self.guid


@attrs.define
class FlagTerm(Term):
    flag: str
    present: bool

    def match(self, ctx: MessageContext) -> bool:
        return (self.flag in ctx.record.flags) == self.present


@attrs.define
class KeywordTerm(Term):
    keyword: str
    present: bool

    def match(self, ctx: MessageContext) -> bool:
        has = any(k.lower() == self.keyword.lower() for k in ctx.record.keywords)
        return has == self.present


@attrs.define
class SizeTerm(Term):
    size: int
    larger: bool

    def match(self, ctx: MessageContext) -> bool:
        vsize = ctx.record.vsize
        if vsize is None:
            vsize = ctx.record.size or 0
        return vsize > self.size if self.larger else vsize < self.size


@attrs.define
class DateTerm(Term):
    kind: str  # received, saved, sent
    op: str  # before, on, since
    day_start: int  # UTC midnight (or exact time for intervals)
    exact: bool = False

    def _value(self, ctx: MessageContext) -> int | None:
        if self.kind == "received":
            return ctx.record.internaldate
        if self.kind == "saved":
            return ctx.record.save_date or ctx.record.internaldate
        sent = ctx.sent_date()
        return None if sent is None else sent[0] + sent[1]

    def match(self, ctx: MessageContext) -> bool:
        v = self._value(ctx)
        if v is None:
            return False
        if self.exact:
            return v < self.day_start if self.op == "before" else v >= self.day_start
        if self.op == "before":
            return v < self.day_start
        if self.op == "since":
            return v >= self.day_start
        return self.day_start <= v < self.day_start + 86400


@attrs.define
class HeaderTerm(Term):
    name: str
    value: str

    def match(self, ctx: MessageContext) -> bool:
        values = ctx.headers().get_all(self.name) or []
        needle = self.value.lower()
        return any(needle in str(v).lower() for v in values)


@attrs.define
class TextTerm(Term):
    value: str
    body_only: bool

    def match(self, ctx: MessageContext) -> bool:
        needle = self.value.lower().encode("utf-8")
        tail = b""
        in_body = not self.body_only
        with ctx.open_body() as f:
            if self.body_only:
                while True:
                    line = f.readline(65536)
                    if not line or line in (b"\n", b"\r\n"):
                        break
            while True:
                chunk = f.read(65536)
                if not chunk:
                    return False
                hay = (tail + chunk).lower()
                if needle in hay:
                    return True
                tail = hay[-len(needle) :] if needle else b""
        return in_body  # pragma: no cover


def _parse_date(text: str) -> tuple[int, bool]:
    """A search date: ``2024-01-31``, ``31-Jan-2024``, a UNIX time, or an interval (``7d``)."""
    t = text.strip()
    m = re.fullmatch(r"(\d{4})-(\d{1,2})-(\d{1,2})", t)
    if m:
        return calendar.timegm((int(m[1]), int(m[2]), int(m[3]), 0, 0, 0)), False
    m = re.fullmatch(r"(\d{1,2})-([A-Za-z]{3})-(\d{4})", t)
    if m and m[2].lower() in _MONTHS:
        return calendar.timegm((int(m[3]), _MONTHS[m[2].lower()], int(m[1]), 0, 0, 0)), False
    if re.fullmatch(r"\d{9,}", t):
        return int(t), True
    m = re.fullmatch(r"(\d+)\s*(secs?|seconds?|mins?|minutes?|hours?|days?|weeks?|[smhdw])", t, re.I)
    if m:
        unit = m[2].lower()[0]
        mult = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
        if m[2].lower().startswith("mi"):
            mult = 60
        return int(time.time()) - int(m[1]) * mult, True
    raise QueryError(f"Invalid search date: {text}")


_SIZE_RE = re.compile(r"(\d+)([kKmMgG]?)")


def _parse_size(text: str) -> int:
    m = _SIZE_RE.fullmatch(text)
    if not m:
        raise QueryError(f"Invalid search size: {text}")
    return int(m[1]) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m[2].lower()]


class _Parser:
    def __init__(self, args: list[str]) -> None:
        self.args = args
        self.pos = 0

    def peek(self) -> str | None:
        return self.args[self.pos] if self.pos < len(self.args) else None

    def take(self, what: str) -> str:
        if self.pos >= len(self.args):
            raise QueryError(f"Search query: missing {what}")
        v = self.args[self.pos]
        self.pos += 1
        return v

    def parse_list(self, until_paren: bool = False) -> Term:
        terms: list[Term] = []
        while True:
            tok = self.peek()
            if tok is None:
                if until_paren:
                    raise QueryError("Search query: missing ')'")
                break
            if tok == ")":
                if not until_paren:
                    raise QueryError("Search query: unexpected ')'")
                self.pos += 1
                break
            terms.append(self.parse_one())
        if not terms:
            raise QueryError("Search query: empty")
        return terms[0] if len(terms) == 1 else And(terms)

    def parse_one(self) -> Term:
        tok = self.take("search term")
        if tok == "(":
            return self.parse_list(until_paren=True)
        # "(seen" and "flagged)" glued to parentheses, as shells pass them.
        if tok.startswith("(") and len(tok) > 1:
            self.args[self.pos - 1 : self.pos] = ["(", tok[1:]]
            self.pos -= 1
            return self.parse_one()
        if tok.endswith(")") and len(tok) > 1 and tok != ")":
            self.args[self.pos - 1 : self.pos] = [tok[:-1], ")"]
            self.pos -= 1
            return self.parse_one()
        key = tok.lower()
        if key == "all":
            return All()
        if key in _FLAG_TERMS:
            flag, present = _FLAG_TERMS[key]
            return FlagTerm(flag, present)
        if key in ("new", "recent"):
            return FlagTerm("\\Recent", True)
        if key == "old":
            return Not(FlagTerm("\\Recent", True))
        if key == "not":
            return Not(self.parse_one())
        if key == "or":
            return Or([self.parse_one(), self.parse_one()])
        if key == "mailbox":
            return MailboxTerm(self.take("mailbox name"))
        if key == "mailbox-guid":
            return MailboxGuidTerm(self.take("mailbox GUID").lower())
        if key == "uid":
            return UidTerm(parse_set(self.take("UID set")))
        if key == "guid":
            return GuidTerm(self.take("GUID"))
        if key in ("keyword", "unkeyword"):
            return KeywordTerm(self.take("keyword"), key == "keyword")
        if key in ("larger", "smaller"):
            return SizeTerm(_parse_size(self.take("size")), key == "larger")
        m = re.fullmatch(r"(sent|saved)?(before|on|since)", key)
        if m:
            day, exact = _parse_date(self.take("date"))
            return DateTerm(m[1] or "received", m[2], day, exact)
        if key == "header":
            name = self.take("header name")
            return HeaderTerm(name, self.take("header value"))
        if key in ("subject", "from", "to", "cc", "bcc"):
            return HeaderTerm(key, self.take(f"{key} value"))
        if key in ("body", "text"):
            return TextTerm(self.take(f"{key} value"), key == "body")
        if re.fullmatch(r"[0-9*][0-9*:,]*", tok):
            return SeqTerm(parse_set(tok))
        raise QueryError(f"Unknown search parameter: {tok}")


def names_mailbox_everywhere(term: Term) -> bool:
    """True when every branch of the query is limited to a mailbox (doveadm expunge's guard)."""
    if isinstance(term, (MailboxTerm, MailboxGuidTerm)):
        return True
    if isinstance(term, And):
        return any(names_mailbox_everywhere(t) for t in term.terms)
    if isinstance(term, Or):
        return all(names_mailbox_everywhere(t) for t in term.terms)
    return False


def parse_query(args: list[str]) -> Term:
    """Parse doveadm search arguments; an empty query is a usage error."""
    if not args:
        raise UsageError("Search query not given: use e.g. 'all' or 'mailbox INBOX uid 1:5'")
    return _Parser(list(args)).parse_list()


def search(storage: Storage, query: Term) -> Iterator[MessageContext]:
    """Every message matching the query, mailbox by mailbox in list order, by UID."""
    for info in storage.list_mailboxes():
        if not info.selectable:
            continue
        if query.mailbox_match(info) is False:
            continue
        with storage.open_mailbox(info.name) as box:
            if query.mailbox_match(attrs.evolve(info, guid=box.guid)) is False:
                continue
            info = attrs.evolve(info, guid=box.guid)
            status = functools.cache(box.status)  # as it was when the search reached the mailbox
            for seq, rec in enumerate(box.records(), start=1):
                ctx = MessageContext(box, info, rec, seq, status)
                if query.match(ctx):
                    yield ctx


__all__ = ["parse_query", "names_mailbox_everywhere", "search", "MessageContext", "parse_set", "mailbox_mask_matches", "Term"]
