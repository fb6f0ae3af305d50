"""``dovecot-uidlist``: the UID <-> base name map of a Maildir (version 3; version 1 read).

Version 3::

    3 V<uidvalidity> N<nextuid> G<mailbox guid> [other header fields]
    <uid> [<K><value>]... :<base name>

Writers either append records with UIDs above every existing one (under the uidlist
lock) or rewrite the whole file through ``dovecot-uidlist.tmp`` and ``rename()``. A
broken file is never guessed at: reading raises :class:`CorruptError` naming the line.
"""

from __future__ import annotations

import bisect
import os
import re
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType

import attrs

from dsync_core.durable import fsync_dir
from dsync_core.errors import CorruptError, StorageError

FILENAME = "dovecot-uidlist"


#: The fields of a record that has none, shared: most records have none, and an empty
#: dict each is 6 MiB at 100k messages.
NO_FIELDS: Mapping[str, str] = MappingProxyType({})


@attrs.define
class UidlistRecord:
    uid: int
    base: str
    fields: Mapping[str, str] = NO_FIELDS

    @property
    def guid(self) -> str | None:
        g = self.fields.get("G")
        return g or None

    def line(self) -> str:
        parts = [str(self.uid)]
        parts.extend(f"{k}{v}" for k, v in self.fields.items())
        parts.append(":" + self.base)
        return " ".join(parts) + "\n"


@attrs.define
class Uidlist:
    uidvalidity: int = 0
    next_uid: int = 1
    guid: str = ""
    version: int = 3
    extra_header: list[tuple[str, str]] = attrs.field(factory=list)
    records: list[UidlistRecord] = attrs.field(factory=list)
    #: set when reading found something Dovecot would rewrite (duplicates, v1, no GUID)
    needs_rewrite: bool = False

    @property
    def highest_uid(self) -> int:
        return self.records[-1].uid if self.records else 0

    @property
    def effective_next_uid(self) -> int:
        return max(self.next_uid, self.highest_uid + 1)

    def by_base(self) -> dict[str, UidlistRecord]:
        return {r.base: r for r in self.records}

    def note_appended(self, records: list[UidlistRecord]) -> None:
        self.records.extend(records)

    def header_line(self) -> str:
        parts = ["3", f"V{self.uidvalidity}", f"N{self.next_uid}"]
        if self.guid:
            parts.append(f"G{self.guid}")
        parts.extend(f"{k}{v}" for k, v in self.extra_header)
        return " ".join(parts) + "\n"

    def format(self) -> bytes:
        return (self.header_line() + "".join(r.line() for r in self.records)).encode("utf-8", "surrogateescape")


class UidlistSummary:
    """What a save needs of a dovecot-uidlist, without an object per record: the header,
    the highest UID, and answers read from the file only when asked (newest UIDs first;
    whether a base name is taken). A save of one message into a 100k-message mailbox reads
    the header and the last line; a first copy builds, once, arrays of the UIDs and of a
    hash of each base name (about 12 bytes a message where the parsed list takes 150) and
    keeps them up to date through our own appends. A hash collision only makes a new name
    avoid a free one.

    ``key`` is the (inode, size, mtime) of the file it describes; :func:`append` keeps it
    describing the file after our own appends. Use it under the uidlist lock."""

    #: Up to this many names, :meth:`taken` searches the file instead of building the hashes.
    SEARCH_LIMIT = 16

    def __init__(self, path: str, header: Uidlist, highest_uid: int) -> None:
        self.path = path
        self.header = header
        self.highest_uid = highest_uid
        self.key: tuple[int, int, int] | None = None
        self.stat: os.stat_result | None = None
        self._hashes: array[int] | None = None  # sorted, once built
        self._recent: set[int] = set()  # hashes of names appended since

    @property
    def uidvalidity(self) -> int:
        return self.header.uidvalidity

    @property
    def guid(self) -> str:
        return self.header.guid

    @property
    def effective_next_uid(self) -> int:
        return max(self.header.next_uid, self.highest_uid + 1)

    def _read(self) -> bytes:
        try:
            with open(self.path, "rb") as f:
                return f.read()
        except OSError as e:
            raise StorageError(f"Cannot read {self.path}: {e.strerror}") from None

    def _build(self) -> None:
        data = self._read()
        text = data.decode("utf-8", "surrogateescape")
        matches = list(_PLAIN_RECORD.finditer(text, text.find("\n") + 1, text.rfind("\n") + 1))
        uids = [int(m.group(1)) for m in matches]
        if len(matches) != text.count("\n") - 1 or any(a >= b for a, b in zip(uids, uids[1:])):
            # A line that is not plain, or UIDs out of order: the full parser knows (or says) it.
            hashes = [hash(r.base) for r in parse(data, self.path).records]
        else:
            hashes = [hash(m.group(3).partition(":")[0]) for m in matches]
        del matches, uids
        hashes.extend(self._recent)
        hashes.sort()
        self._hashes = array("q", hashes)
        self._recent = set()

    def taken(self, bases: list[str]) -> set[str]:
        """Which of ``bases`` a record may name (never leaves out one that does)."""
        if not bases:
            return set()
        if self._hashes is None and len(bases) <= self.SEARCH_LIMIT:
            data = self._read()
            return {b for b in bases if hash(b) in self._recent or names(data, b)}
        if self._hashes is None:
            self._build()
        assert self._hashes is not None
        out = set()
        for b in bases:
            h = hash(b)
            at = bisect.bisect_left(self._hashes, h)
            if h in self._recent or (at < len(self._hashes) and self._hashes[at] == h):
                out.add(b)
        return out

    def uids_newest_first(self) -> Iterable[int]:
        """:meth:`uids_descending`, as something that can be iterated more than once."""
        return _NewestFirst(self)

    def uids_descending(self) -> Iterator[int]:
        """The records' UIDs, newest first, read from the end of the file in 64 KiB steps as
        far as asked (a save asks for the few above Dovecot's next UID)."""
        try:
            f = open(self.path, "rb")
        except OSError as e:
            raise StorageError(f"Cannot read {self.path}: {e.strerror}") from None
        with f:
            lo = len(f.readline())
            hi = os.fstat(f.fileno()).st_size
            carry = b""  # the start of a line whose beginning is further up
            last = True
            while hi > lo:
                start = max(lo, hi - 65536)
                f.seek(start)
                block = f.read(hi - start) + carry
                hi = start
                if last:  # what follows the last LF is an append in progress
                    block = block[: block.rfind(b"\n") + 1]
                    last = False
                carry = b""
                if start > lo:
                    nl = block.find(b"\n")
                    if nl < 0:
                        carry = block
                        continue
                    carry, block = block[: nl + 1], block[nl + 1:]
                for line in reversed(block.split(b"\n")[:-1]):
                    head = line.split(b" ", 1)[0]
                    if head.isdigit():
                        yield int(head)

    def note_appended(self, records: list[UidlistRecord]) -> None:
        if records:
            self.highest_uid = records[-1].uid
        if self._hashes is not None:
            self._recent.update(hash(r.base) for r in records)
            if len(self._recent) > 4096:  # fold into the sorted array now and then
                merged = self._hashes.tolist() + list(self._recent)
                merged.sort()
                self._hashes = array("q", merged)
                self._recent = set()

    def described(self, st: os.stat_result) -> None:
        self.key, self.stat = (st.st_ino, st.st_size, st.st_mtime_ns), st


class _NewestFirst:
    def __init__(self, summary: UidlistSummary) -> None:
        self.summary = summary

    def __iter__(self) -> Iterator[int]:
        return self.summary.uids_descending()


def names(data: bytes, base: str) -> bool:
    """Whether a record line in ``data`` (uidlist bytes) names ``base``: a byte search, so
    that a few names need not cost a parse of the whole list."""
    needle = b":" + base.encode("utf-8", "surrogateescape")
    at = data.find(needle)
    while at >= 0:
        end = at + len(needle)
        if data[at - 1:at] == b" " and data[end:end + 1] in (b"\n", b":"):
            return True
        at = data.find(needle, at + 1)
    return False


def read_summary(path: str) -> tuple[UidlistSummary | None, os.stat_result | None]:
    """A :class:`UidlistSummary` of the file (None when it does not exist): its header
    and last line only."""
    got = _read_ends(path, 65536)
    if got is None:
        return None, None
    st, first, tail_from, tail = got
    header = parse(first, path)
    highest: int | None = 0
    end = tail.rfind(b"\n")  # what follows the last LF is an append in progress: ignored
    if end >= 0:
        start = tail.rfind(b"\n", 0, end) + 1
        if start == 0 and tail_from > len(first):
            highest = None  # the last line began before what was read
        else:
            m = _PLAIN_RECORD.match(tail[start:end].decode("utf-8", "surrogateescape"))
            highest = int(m.group(1)) if m else None
    elif tail_from > len(first):
        highest = None
    if highest is None or header.version != 3:  # the slow way: parse it all, keep the header
        ul, st = read(path)
        assert ul is not None and st is not None
        summary = UidlistSummary(path, attrs.evolve(ul, records=[]), ul.highest_uid)
    else:
        summary = UidlistSummary(path, header, highest)
    summary.described(st)
    return summary, st


def _bad(path: str, lineno: int, why: str) -> CorruptError:
    return CorruptError(f"Broken file {path} line {lineno}: {why}")


def parse(data: bytes, path: str = FILENAME) -> Uidlist:
    """Parse the file content. A last line without LF is ignored (an append in progress)."""
    text = data.decode("utf-8", "surrogateescape")
    lines = text.split("\n")
    lines.pop()  # text after the last LF: empty or incomplete
    if not lines:
        raise _bad(path, 1, "missing header")
    ul = Uidlist()
    header = lines[0].split(" ")
    if header[0] == "3":
        ul.version = 3
        for field in header[1:]:
            if not field:
                continue
            key, value = field[0], field[1:]
            if key in "VN":
                if not value.isdigit():
                    raise _bad(path, 1, f"invalid header field {field!r}")
                if key == "V":
                    ul.uidvalidity = int(value)
                else:
                    ul.next_uid = int(value)
            elif key == "G":
                try:
                    if len(value) != 32:
                        raise ValueError
                    bytes.fromhex(value)
                except ValueError:
                    raise _bad(path, 1, f"invalid mailbox GUID {value!r}") from None
                ul.guid = value.lower()
            else:
                ul.extra_header.append((key, value))
    elif header[0] in ("1", "2") and len(header) >= 3 and header[1].isdigit() and header[2].isdigit():
        ul.version = int(header[0])
        ul.uidvalidity, ul.next_uid = int(header[1]), int(header[2])
        ul.needs_rewrite = True
    else:
        raise _bad(path, 1, f"unsupported header {lines[0][:40]!r}")
    if ul.uidvalidity == 0 or ul.next_uid == 0:
        raise _bad(path, 1, f"broken header (uidvalidity={ul.uidvalidity}, next_uid={ul.next_uid})")
    if not ul.guid:
        ul.needs_rewrite = True

    if not (ul.version == 3 and _parse_plain_records(ul, text, len(lines) - 1)):
        ul.records = []
        _parse_records(ul, lines[1:], path, 2, 0)
    return ul


# A well-formed version 3 record: "<uid>[ <K><value>]... :<name>". Big lists are nearly
# always all well-formed: one regex pass reads them several times faster than the
# line-by-line parser, which still handles (and reports) everything else.
_PLAIN_RECORD = re.compile(r"^([1-9][0-9]*)((?: [A-Z][^ \n]*)*) :([^:/\n][^/\n]*)$", re.M)


def _parse_plain_records(ul: Uidlist, text: str, expected: int) -> bool:
    """Fill ``ul.records`` from ``text`` (the whole file) when every record line is plain
    and in order; False (records left partial) at the first thing needing the full parser."""
    pos = text.find("\n") + 1
    end = text.rfind("\n") + 1  # text after the last LF: an append in progress, ignored
    records: list[UidlistRecord] = []
    seen: set[str] = set()
    last = 0
    for m in _PLAIN_RECORD.finditer(text, pos, end):
        if m.start() != pos:
            return False  # a line the regex skipped: not plain
        pos = m.end() + 1
        uid = int(m.group(1))
        base = m.group(3).partition(":")[0]
        if uid <= last or base in seen:
            return False
        fstr = m.group(2)
        fields = {f[0]: f[1:] for f in fstr[1:].split(" ")} if fstr else NO_FIELDS
        if "G" in fields and not fields["G"]:
            return False
        seen.add(base)
        records.append(UidlistRecord(uid, base, fields))
        last = uid
    if pos != end or len(records) != expected:
        return False
    ul.records = records
    return True


def parse_tail(data: bytes, version: int, last_uid: int, path: str = FILENAME) -> list[UidlistRecord] | None:
    """Records appended after a known point (``data``: the file from there on, whole lines).

    Appends never touch the header, so a reader that knew the file up to some size reads
    only what grew. ``None`` when the text is not plain appended records above ``last_uid``
    (the caller then reads the whole file)."""
    text = data.decode("utf-8", "surrogateescape")
    lines = text.split("\n")
    lines.pop()
    ul = Uidlist(version=version)
    try:
        _parse_records(ul, lines, path, 0, last_uid)
    except CorruptError:
        return None
    return None if ul.needs_rewrite else ul.records


def _parse_records(ul: Uidlist, lines: list[str], path: str, first_lineno: int, last: int) -> None:
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines, start=first_lineno):
        if not line:
            raise _bad(path, lineno, "empty line")
        uid_s, sp, rest = line.partition(" ")
        if not uid_s.isdigit() or not sp:
            raise _bad(path, lineno, f"invalid record {line[:60]!r}")
        uid = int(uid_s)
        if uid == 0:
            raise _bad(path, lineno, "UID 0")
        if uid <= last:
            raise _bad(path, lineno, f"UIDs not ordered ({uid} after {last})")
        fields: dict[str, str] = {}
        if ul.version == 3:
            while rest and not rest.startswith(":"):
                field, _, rest = rest.partition(" ")
                if field:
                    if not ("A" <= field[0] <= "Z"):
                        raise _bad(path, lineno, f"invalid record field {field[:40]!r}")
                    fields[field[0]] = field[1:]
            if not rest.startswith(":"):
                raise _bad(path, lineno, "record without ':' before the file name")
            name = rest[1:]
        else:
            name = rest
        base = name.split(":", 1)[0]
        if not base or "/" in base:
            raise _bad(path, lineno, f"broken file name {name[:60]!r}")
        if "G" in fields and not fields["G"]:
            del fields["G"]  # Dovecot treats an empty GUID as missing
            ul.needs_rewrite = True
        if base in seen:
            # The later record wins, as in Dovecot, and the file gets rewritten.
            ul.records = [r for r in ul.records if r.base != base]
            ul.needs_rewrite = True
        seen[base] = uid
        ul.records.append(UidlistRecord(uid, base, fields or NO_FIELDS))
        last = uid


def read(path: str) -> tuple[Uidlist | None, os.stat_result | None]:
    """The parsed file and its stat, or ``(None, None)`` when there is none."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except FileNotFoundError:
        return None, None
    except OSError as e:
        raise StorageError(f"Cannot read {path}: {e.strerror}") from None
    return parse(data, path), st


def _read_ends(path: str, tail: int) -> tuple[os.stat_result, bytes, int, bytes] | None:
    """The file's stat, its header line, and up to ``tail`` bytes from its end (never from
    the header) with their offset; None when there is no file."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            first = f.readline()
            start = max(len(first), st.st_size - tail)
            f.seek(start)
            data = f.read(st.st_size - start) if tail else b""
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StorageError(f"Cannot read {path}: {e.strerror}") from None
    if not first.endswith(b"\n"):
        raise _bad(path, 1, "missing header")
    return st, first, start, data


def read_header(path: str) -> tuple[Uidlist | None, os.stat_result | None]:
    """Only the header line (cheap): records stay empty."""
    got = _read_ends(path, 0)
    if got is None:
        return None, None
    return parse(got[1], path), got[0]


def _bump_mtime(path: str, old: os.stat_result | None) -> None:
    """Make sure a reader comparing (inode, size, mtime) notices the change."""
    if old is None:
        return
    st = os.stat(path)
    if (st.st_mtime_ns // 1_000_000_000) <= (old.st_mtime_ns // 1_000_000_000) and st.st_size == old.st_size:
        sec = old.st_mtime_ns // 1_000_000_000 + 1
        os.utime(path, ns=(st.st_atime_ns, sec * 1_000_000_000))


def rewrite(path: str, ul: Uidlist, old_stat: os.stat_result | None, *, fsync: bool = True,
            chown: Callable[[str], None] | None = None) -> None:
    """Replace the file via ``dovecot-uidlist.tmp`` + rename (hold the uidlist lock)."""
    ul.version = 3
    tmp = path + ".tmp"
    data = ul.format()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if fsync:
                os.fdatasync(fd)
        finally:
            os.close(fd)
        if chown:
            chown(tmp)
        os.replace(tmp, path)
        _bump_mtime(path, old_stat)
    except OSError as e:
        raise StorageError(f"Cannot write {path}: {e.strerror}") from None
    fsync_dir(os.path.dirname(path), enabled=fsync)
    ul.needs_rewrite = False


def append(path: str, ul: Uidlist | UidlistSummary, records: Iterable[UidlistRecord], *, fsync: bool = True) -> None:
    """Append records with UIDs above every existing one (hold the uidlist lock)."""
    new = list(records)
    if not new:
        return
    last = ul.highest_uid
    for r in new:
        if r.uid <= last:
            raise ValueError(f"uidlist append out of order: {r.uid} after {last}")
        last = r.uid
    data = "".join(r.line() for r in new).encode("utf-8", "surrogateescape")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, data)
            if fsync:
                os.fdatasync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise StorageError(f"Cannot append to {path}: {e.strerror}") from None
    ul.note_appended(new)


__all__ = ["Uidlist", "UidlistRecord", "UidlistSummary", "read_summary", "parse", "parse_tail", "read", "read_header", "rewrite", "append", "FILENAME"]
