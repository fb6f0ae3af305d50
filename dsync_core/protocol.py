"""The dsync-py wire protocol: frames, the value codec and the handshake (docs/protocol.md).

A byte channel carries *frames*: a 4-byte big-endian payload length, one type byte, then
the payload. Metadata payloads are strict UTF-8 JSON objects or arrays (never pickled or
evaluated), at most :data:`MAX_FRAME` bytes; message bodies travel as a sequence of data
frames of at most :data:`MAX_CHUNK` bytes. A frame longer than its type allows is refused
before its payload is read, so a hostile peer cannot make us allocate more than that.

Every value that crosses the wire has an explicit ``*_to_wire`` / ``*_from_wire`` pair
here that checks field names, types and sizes; anything else is a :class:`ProtocolError`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, BinaryIO, Protocol

from .errors import ProtocolError
from .model import (
    ExpungeRecord,
    FlagUpdate,
    MailboxLogRecord,
    MailboxLogType,
    MailboxStatus,
    MessageRecord,
)
from .replica import (
    ChangeSet,
    ImportBatch,
    ImportResult,
    MailboxNode,
    NewMessage,
    ReplicaInfo,
    TreeChange,
    TreeSnapshot,
)

#: Sent first by both sides, before any frame: catches a peer that is not a dsync-py
#: (a login banner on stdout, an HTTP server on the port) at the first bytes.
MAGIC = b"dsync-py\n"
PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 0

MAX_FRAME = 1 << 20  # JSON frames
MAX_CHUNK = 256 * 1024  # one data frame of a body
MAX_BODY = 1 << 31  # one message body, in total
MAX_LIST = 10_000_000  # items in one list of one message
ITEMS_FRAME_BYTES = 512 * 1024  # the sender starts a new item frame beyond this
MAX_STR = 64 * 1024  # a string field (mailbox names, error text)
MAX_FLAGS = 1000  # flags or keywords of one message
MAX_INT = (1 << 63) - 1

HEADER = struct.Struct(">IB")

# Frame types (one ASCII byte each).
HELLO = ord("H")  # handshake, JSON object
AUTH = ord("U")  # client's authentication answer, JSON object
REQUEST = ord("Q")  # a request, JSON object
ANSWER = ord("A")  # a successful answer, JSON object
FAIL = ord("F")  # a failed request: {"error": class, "message": text, "exit_code": n}
ITEMS = ord("I")  # items of the lists a request or answer announced: JSON array
BODY = ord("S")  # start of a body: {"uid": n, "present": bool}
DATA = ord("D")  # body bytes
END = ord("E")  # end of a body (empty)
ABORT = ord("B")  # a body that could not be read completely: {"reason": text}
KEEPALIVE = ord("K")  # "still working" (empty); skipped by every reader

_JSON_TYPES = {HELLO, AUTH, REQUEST, ANSWER, FAIL, ITEMS, BODY, ABORT}
_LIMITS = {t: MAX_FRAME for t in _JSON_TYPES} | {DATA: MAX_CHUNK, END: 0, KEEPALIVE: 0}

DEFAULT_IO_TIMEOUT = 600.0


class Channel(Protocol):
    """A byte channel: what a transport yields. ``read`` returns b"" at end of file and
    raises :class:`TimeoutError` when the peer stalls longer than the channel's timeout."""

    def read(self, n: int) -> bytes: ...

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


def type_name(ftype: int) -> str:
    return chr(ftype) if 32 < ftype < 127 else f"0x{ftype:02x}"


# -- JSON ------------------------------------------------------------------------------------


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _no_dup(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def decode_json(payload: bytes, what: str) -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity, no duplicate keys, bounded nesting."""
    try:
        text = payload.decode("utf-8", errors="strict")
        return json.loads(text, parse_constant=_no_constant, object_pairs_hook=_no_dup)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ProtocolError(f"Malformed {what} frame from the peer: {str(e)[:200]}") from None


def encode_json(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


# -- frames ----------------------------------------------------------------------------------


class RawLog:
    """``-r RAWLOG``: every frame in both directions, one line each, timestamped.
    JSON frames are written in full, body data frames as their length only."""

    def __init__(self, path: str) -> None:
        try:
            self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        except OSError as e:
            raise ProtocolError(f"Cannot open rawlog {path}: {e.strerror}") from None
        self._lock = threading.Lock()

    def frame(self, direction: str, ftype: int, payload: bytes) -> None:
        if ftype in _JSON_TYPES:
            shown = payload.decode("utf-8", errors="backslashreplace")
        elif ftype == DATA:
            shown = f"<{len(payload)} bytes>"
        else:
            shown = ""
        with self._lock:
            self._f.write(f"{time.time():.6f} {direction} {type_name(ftype)} {shown}\n")

    def note(self, text: str) -> None:
        with self._lock:
            self._f.write(f"{time.time():.6f} * {text}\n")

    def close(self) -> None:
        with self._lock:
            self._f.close()


class FrameDecoder:
    """Incremental frame decoder (used by :class:`Connection` and fuzzed by the tests):
    feed bytes, take complete ``(type, payload)`` frames. Rejects unknown types and
    oversized lengths as soon as the 5-byte header is seen."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def needed(self) -> int:
        """How many more bytes the next frame needs at least (0 = one is complete)."""
        if len(self._buf) < HEADER.size:
            return HEADER.size - len(self._buf)
        length, ftype = HEADER.unpack_from(self._buf)
        check_header(length, ftype)
        return max(0, HEADER.size + length - len(self._buf))

    def next_frame(self) -> tuple[int, bytes] | None:
        if self.needed():
            return None
        length, ftype = HEADER.unpack_from(self._buf)
        payload = bytes(self._buf[HEADER.size : HEADER.size + length])
        del self._buf[: HEADER.size + length]
        return ftype, payload


def check_header(length: int, ftype: int) -> None:
    limit = _LIMITS.get(ftype)
    if limit is None:
        raise ProtocolError(f"Unknown frame type {type_name(ftype)} from the peer (garbage on the connection?)")
    if length > limit:
        raise ProtocolError(
            f"Oversized {type_name(ftype)} frame from the peer: {length} bytes (at most {limit} allowed)"
        )


def encode_frame(ftype: int, payload: bytes = b"") -> bytes:
    check_header(len(payload), ftype)
    return HEADER.pack(len(payload), ftype) + payload


class Connection:
    """Frames over a :class:`Channel`: thread-safe writes (for keepalives), strict reads.

    Any transport failure (end of file, timeout, OS error) becomes a :class:`ProtocolError`
    and marks the connection broken: every later call fails at once.
    """

    def __init__(self, channel: Channel, *, io_timeout: float | None = None, rawlog: RawLog | None = None,
                 peer: str = "the peer") -> None:
        self.channel = channel
        self.io_timeout = io_timeout
        self.rawlog = rawlog
        self.peer = peer
        self._decoder = FrameDecoder()
        self._wlock = threading.Lock()
        self.broken: str | None = None
        self.bytes_in = 0
        self.bytes_out = 0

    # -- low level --
    def _fail(self, message: str) -> ProtocolError:
        if self.broken is None:
            self.broken = message
            if self.rawlog:
                self.rawlog.note(message)
        return ProtocolError(message)

    def _check(self) -> None:
        if self.broken is not None:
            raise ProtocolError(self.broken)

    def _transport_error(self, e: BaseException) -> ProtocolError:
        if isinstance(e, TimeoutError):
            secs = f"{self.io_timeout:g}" if self.io_timeout else "?"
            return self._fail(f"I/O has stalled, no activity for {secs} seconds ({self.peer})")
        if isinstance(e, ProtocolError):
            return self._fail(e.message)
        return self._fail(f"Connection to {self.peer} failed: {e}")

    def write_raw(self, data: bytes) -> None:
        self._check()
        with self._wlock:
            try:
                self.channel.write(data)
            except (OSError, EOFError, TimeoutError, ProtocolError) as e:
                raise self._transport_error(e) from None
            self.bytes_out += len(data)

    def send(self, ftype: int, payload: bytes = b"") -> None:
        data = encode_frame(ftype, payload)
        if self.rawlog:
            self.rawlog.frame(">", ftype, payload)
        self.write_raw(data)

    def send_json(self, ftype: int, obj: Any) -> None:
        payload = encode_json(obj)
        if len(payload) > MAX_FRAME:
            raise ProtocolError(f"Internal limit: a {type_name(ftype)} frame of {len(payload)} bytes is too big")
        self.send(ftype, payload)

    def _fill(self, n: int) -> None:
        while n > 0:
            try:
                data = self.channel.read(max(n, 65536))
            except (OSError, EOFError, TimeoutError, ProtocolError) as e:
                raise self._transport_error(e) from None
            if not data:
                raise self._fail(f"Connection closed by {self.peer} in the middle of the conversation")
            self.bytes_in += len(data)
            self._decoder.feed(data)
            n -= len(data)

    def read_exact(self, n: int) -> bytes:
        """Bytes outside frames (the magic), from whatever the decoder has buffered first."""
        self._check()
        buf = self._decoder._buf
        if len(buf) < n:
            self._fill(n - len(buf))
        out = bytes(buf[:n])
        del buf[:n]
        return out

    def recv(self) -> tuple[int, bytes]:
        """The next frame that is not a keepalive."""
        self._check()
        while True:
            try:
                need = self._decoder.needed()
                while need:
                    self._fill(need)
                    need = self._decoder.needed()
            except ProtocolError as e:
                raise self._fail(e.message) from None
            frame = self._decoder.next_frame()
            assert frame is not None
            ftype, payload = frame
            if self.rawlog:
                self.rawlog.frame("<", ftype, payload)
            if ftype != KEEPALIVE:
                return ftype, payload

    def recv_json(self, ftype: int, payload: bytes) -> Any:
        try:
            return decode_json(payload, type_name(ftype))
        except ProtocolError as e:
            raise self._fail(e.message) from None

    def protocol_error(self, message: str) -> ProtocolError:
        """Mark the connection broken (the stream is out of step) and return the error."""
        return self._fail(message)

    def close(self) -> None:
        try:
            self.channel.close()
        except OSError:
            pass

    # -- messages: a JSON head plus announced lists of items --
    def send_message(self, ftype: int, head: dict[str, Any], lists: Sequence[tuple[str, Sequence[Any]]] = ()) -> None:
        head = dict(head)
        if lists:
            head["lists"] = [[name, len(items)] for name, items in lists]
        self.send_json(ftype, head)
        for _name, items in lists:
            batch: list[bytes] = []
            size = 2
            for item in items:
                enc = encode_json(item)
                if batch and size + len(enc) + 1 > ITEMS_FRAME_BYTES:
                    self.send(ITEMS, b"[" + b",".join(batch) + b"]")
                    batch, size = [], 2
                batch.append(enc)
                size += len(enc) + 1
            if batch:
                self.send(ITEMS, b"[" + b",".join(batch) + b"]")

    def recv_lists(self, head: dict[str, Any], allowed: Iterable[str]) -> dict[str, list[Any]]:
        """Read the items of the lists ``head`` announced; only ``allowed`` names."""
        allowed = set(allowed)
        announced = head.pop("lists", [])
        out: dict[str, list[Any]] = {name: [] for name in allowed}
        if not isinstance(announced, list):
            raise self._fail("Malformed message: 'lists' is not a list")
        seen: set[str] = set()
        for entry in announced:
            if (
                not isinstance(entry, list)
                or len(entry) != 2
                or not isinstance(entry[0], str)
                or type(entry[1]) is not int
            ):
                raise self._fail("Malformed message: bad 'lists' entry")
            name, count = entry
            if name not in allowed or name in seen:
                raise self._fail(f"Malformed message: unexpected list {name[:40]!r}")
            if not 0 <= count <= MAX_LIST:
                raise self._fail(f"Malformed message: list {name} announces {count} items (at most {MAX_LIST})")
            seen.add(name)
            items = out[name]
            while len(items) < count:
                ftype, payload = self.recv()
                if ftype != ITEMS:
                    raise self._fail(f"Expected items of list {name}, got a {type_name(ftype)} frame")
                chunk = self.recv_json(ftype, payload)
                if not isinstance(chunk, list) or not chunk or len(items) + len(chunk) > count:
                    raise self._fail(f"Malformed items frame for list {name}")
                items.extend(chunk)
        return out

    # -- bodies --
    def send_body(self, uid: int, body: BinaryIO | None) -> int:
        """Send one body (or its absence); returns the bytes sent. A read error in the
        middle becomes an ABORT frame, so the stream stays in step."""
        if body is None:
            self.send_json(BODY, {"uid": uid, "present": False})
            return 0
        self.send_json(BODY, {"uid": uid, "present": True})
        total = 0
        try:
            while True:
                try:
                    chunk = body.read(MAX_CHUNK)
                except Exception as e:  # noqa: BLE001 - any read failure aborts just this body
                    reason = getattr(e, "message", None) or str(e) or type(e).__name__
                    self.send_json(ABORT, {"reason": str(reason)[:MAX_STR // 4]})
                    return total
                if not chunk:
                    break
                self.send(DATA, chunk)
                total += len(chunk)
        finally:
            try:
                body.close()
            except OSError:
                pass
        self.send(END)
        return total

    def recv_body(self, spool: Callable[[], BinaryIO]) -> tuple[int, BinaryIO | None, str]:
        """Receive one body into a fresh spool file (rewound). Returns ``(uid, file or
        None, reason)``: None with a reason when the peer aborted it or had none."""
        ftype, payload = self.recv()
        if ftype == FAIL:
            raise failure_from_wire(self.recv_json(ftype, payload))
        if ftype != BODY:
            raise self._fail(f"Expected a body, got a {type_name(ftype)} frame")
        head = self.recv_json(ftype, payload)
        try:
            check_fields(head, {"uid": _int, "present": _bool}, "body")
        except ProtocolError as e:
            raise self._fail(e.message) from None
        uid = head["uid"]
        if not head["present"]:
            return uid, None, "no such message"
        f = spool()
        total = 0
        try:
            while True:
                ftype, payload = self.recv()
                if ftype == DATA:
                    total += len(payload)
                    if total > MAX_BODY:
                        raise self._fail(f"Body of UID {uid} is larger than {MAX_BODY} bytes")
                    f.write(payload)
                elif ftype == END:
                    f.seek(0)
                    return uid, f, ""
                elif ftype == ABORT:
                    info = self.recv_json(ftype, payload)
                    f.close()
                    reason = info.get("reason") if isinstance(info, dict) else None
                    return uid, None, str(reason)[:500] if reason else "read error"
                else:
                    raise self._fail(f"Expected body data of UID {uid}, got a {type_name(ftype)} frame")
        except BaseException:
            f.close()
            raise

    def keepalive(self, interval: float) -> _Keepalive:
        return _Keepalive(self, interval)


class _Keepalive:
    """While a slow request runs, send KEEPALIVE frames so the peer's -T does not fire."""

    def __init__(self, conn: Connection, interval: float) -> None:
        self.conn = conn
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.conn.send(KEEPALIVE)
            except ProtocolError:
                return

    def __enter__(self) -> _Keepalive:
        if self.interval > 0:
            self._thread = threading.Thread(target=self._run, name="dsync-keepalive", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def keepalive_interval(io_timeout: float | None) -> float:
    if not io_timeout:
        return 30.0
    return max(0.2, min(30.0, io_timeout / 3))


# -- errors on the wire ----------------------------------------------------------------------


def failure_to_wire(e: BaseException) -> dict[str, Any]:
    from .errors import DsyncError

    if isinstance(e, DsyncError):
        return {"error": type(e).__name__, "message": e.message[:MAX_STR // 4], "exit_code": int(e.exit_code)}
    return {"error": "DsyncError", "message": f"internal error on the server: {type(e).__name__}: {e}"[:4000],
            "exit_code": 75}


def failure_from_wire(obj: Any) -> Exception:
    """The exception a FAIL frame stands for; only known classes of :mod:`dsync_core.errors`."""
    from . import errors

    if not isinstance(obj, dict):
        return ProtocolError("Malformed failure frame from the peer")
    check_fields(obj, {"error": _str, "message": _str, "exit_code": _int}, "failure")
    cls = getattr(errors, obj["error"], None)
    if not (isinstance(cls, type) and issubclass(cls, errors.DsyncError)):
        cls = errors.DsyncError
    return cls(f"remote: {obj['message']}", exit_code=obj["exit_code"])


# -- value checks ----------------------------------------------------------------------------

Check = Callable[[Any, str], Any]


def _bad(what: str, why: str) -> ProtocolError:
    return ProtocolError(f"Malformed value from the peer: {what} {why}")


def _int(v: Any, what: str) -> int:
    if type(v) is not int or not -MAX_INT - 1 <= v <= MAX_INT:
        raise _bad(what, "is not a 64-bit integer")
    return v


def _uint(v: Any, what: str) -> int:
    if type(v) is not int or not 0 <= v <= MAX_INT:
        raise _bad(what, "is not a non-negative 64-bit integer")
    return v


def _opt_int(v: Any, what: str) -> int | None:
    return None if v is None else _int(v, what)


def _bool(v: Any, what: str) -> bool:
    if type(v) is not bool:
        raise _bad(what, "is not a boolean")
    return v


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str):
        raise _bad(what, "is not a string")
    if len(v) > MAX_STR:
        raise _bad(what, f"is longer than {MAX_STR} characters")
    return v


def _number(v: Any, what: str) -> float:
    if type(v) not in (int, float):
        raise _bad(what, "is not a number")
    return float(v)


def _strset(v: Any, what: str) -> frozenset[str]:
    if not isinstance(v, list) or len(v) > MAX_FLAGS:
        raise _bad(what, f"is not a list of at most {MAX_FLAGS} strings")
    out = frozenset(_str(x, what) for x in v)
    if any(len(x) > 1024 for x in out):
        raise _bad(what, "has a flag longer than 1024 characters")
    return out


def check_fields(obj: Any, spec: dict[str, Check], what: str, optional: Iterable[str] = ()) -> dict[str, Any]:
    """Check that ``obj`` is a dict with exactly the fields of ``spec`` (``optional`` ones
    may be missing); return the checked values."""
    if not isinstance(obj, dict):
        raise _bad(what, "is not an object")
    unknown = set(obj) - set(spec)
    if unknown:
        raise _bad(what, f"has unknown field {sorted(unknown)[0][:40]!r}")
    opt = set(optional)
    out: dict[str, Any] = {}
    for key, check in spec.items():
        if key not in obj:
            if key in opt:
                continue
            raise _bad(what, f"lacks field {key!r}")
        out[key] = check(obj[key], f"{what}.{key}")
    return out


def _flags_out(s: frozenset[str]) -> list[str]:
    return sorted(s)


# MailboxStatus
_STATUS = {"guid": _str, "uidvalidity": _uint, "uidnext": _uint, "highestmodseq": _uint, "messages": _uint,
           "unseen": _uint, "recent": _uint, "vsize": _uint, "first_unseen_seq": _uint}


def status_to_wire(s: MailboxStatus) -> dict[str, Any]:
    return {k: getattr(s, k) for k in _STATUS}


def status_from_wire(obj: Any) -> MailboxStatus:
    return MailboxStatus(**check_fields(obj, _STATUS, "status", optional=("unseen", "recent", "vsize",
                                                                           "first_unseen_seq")))


# MessageRecord
_RECORD = {"uid": _uint, "guid": _str, "flags": _strset, "keywords": _strset, "modseq": _uint,
           "internaldate": _int, "size": _opt_int, "vsize": _opt_int, "save_date": _int}


def record_to_wire(r: MessageRecord) -> dict[str, Any]:
    return {"uid": r.uid, "guid": r.guid, "flags": _flags_out(r.flags), "keywords": _flags_out(r.keywords),
            "modseq": r.modseq, "internaldate": r.internaldate, "size": r.size, "vsize": r.vsize,
            "save_date": r.save_date}


def record_from_wire(obj: Any) -> MessageRecord:
    return MessageRecord(**check_fields(obj, _RECORD, "record"))


# ExpungeRecord
_EXPUNGE = {"uid": _uint, "guid": _str, "modseq": _uint}


def expunge_to_wire(e: ExpungeRecord) -> dict[str, Any]:
    return {"uid": e.uid, "guid": e.guid, "modseq": e.modseq}


def expunge_from_wire(obj: Any) -> ExpungeRecord:
    return ExpungeRecord(**check_fields(obj, _EXPUNGE, "expunge"))


# MailboxLogRecord
def _logtype(v: Any, what: str) -> MailboxLogType:
    try:
        return MailboxLogType(_int(v, what))
    except ValueError:
        raise _bad(what, "is not a mailbox log record type") from None


_LOG = {"type": _logtype, "guid": _str, "timestamp": _int}


def log_to_wire(r: MailboxLogRecord) -> dict[str, Any]:
    return {"type": int(r.type), "guid": r.guid, "timestamp": r.timestamp}


def log_from_wire(obj: Any) -> MailboxLogRecord:
    return MailboxLogRecord(**check_fields(obj, _LOG, "mailbox log record"))


# MailboxNode
def _opt_status(v: Any, what: str) -> MailboxStatus | None:
    return None if v is None else status_from_wire(v)


_NODE = {"name": _str, "guid": _str, "selectable": _bool, "status": _opt_status}


def node_to_wire(n: MailboxNode) -> dict[str, Any]:
    return {"name": n.name, "guid": n.guid, "selectable": n.selectable,
            "status": status_to_wire(n.status) if n.status is not None else None}


def node_from_wire(obj: Any) -> MailboxNode:
    return MailboxNode(**check_fields(obj, _NODE, "mailbox"))


# ReplicaInfo
_INFO = {"hostname": _str, "location": _str, "have_guids": _bool, "have_save_guids": _bool,
         "have_only_guid128": _bool, "have_modseqs": _bool, "read_only": _bool}


def info_to_wire(i: ReplicaInfo) -> dict[str, Any]:
    return {k: getattr(i, k) for k in _INFO}


def info_from_wire(obj: Any) -> ReplicaInfo:
    return ReplicaInfo(**check_fields(obj, _INFO, "replica info"))


# TreeChange
_TREE_KINDS = {"create", "delete", "rename", "subscribe", "unsubscribe", "set_guid", "set_uidvalidity", "reset"}


def _tree_kind(v: Any, what: str) -> str:
    if v not in _TREE_KINDS:
        raise _bad(what, "is not a known tree change")
    return str(v)


_TREE_CHANGE = {"kind": _tree_kind, "name": _str, "new_name": _str, "guid": _str, "uidvalidity": _uint}


def tree_change_to_wire(c: TreeChange) -> dict[str, Any]:
    return {k: getattr(c, k) for k in _TREE_CHANGE}


def tree_change_from_wire(obj: Any) -> TreeChange:
    return TreeChange(**check_fields(obj, _TREE_CHANGE, "tree change"))


# NewMessage
def _source(v: Any, what: str) -> str:
    if v not in ("peer", "local", "renumber"):
        raise _bad(what, "is not peer, local or renumber")
    return str(v)


_NEW = {"uid": _uint, "guid": _str, "flags": _strset, "keywords": _strset, "internaldate": _opt_int,
        "save_date": _opt_int, "source": _source, "from_mailbox": _str, "from_uid": _uint}


def new_message_to_wire(m: NewMessage) -> dict[str, Any]:
    return {"uid": m.uid, "guid": m.guid, "flags": _flags_out(m.flags), "keywords": _flags_out(m.keywords),
            "internaldate": m.internaldate, "save_date": m.save_date, "source": m.source,
            "from_mailbox": m.from_mailbox, "from_uid": m.from_uid}


def new_message_from_wire(obj: Any) -> NewMessage:
    return NewMessage(**check_fields(obj, _NEW, "save"))


# FlagUpdate
_FLAG_UPDATE = {"uid": _uint, "add_flags": _strset, "remove_flags": _strset, "add_keywords": _strset,
                "remove_keywords": _strset}


def flag_update_to_wire(u: FlagUpdate) -> dict[str, Any]:
    return {"uid": u.uid, "add_flags": _flags_out(u.add_flags), "remove_flags": _flags_out(u.remove_flags),
            "add_keywords": _flags_out(u.add_keywords), "remove_keywords": _flags_out(u.remove_keywords)}


def flag_update_from_wire(obj: Any) -> FlagUpdate:
    return FlagUpdate(**check_fields(obj, _FLAG_UPDATE, "flag update"))


# ImportResult
def _str_tuple(v: Any, what: str) -> tuple[str, ...]:
    if not isinstance(v, list) or len(v) > 100_000:
        raise _bad(what, "is not a list of strings")
    return tuple(_str(x, what) for x in v)


_RESULT = {"saved": _uint, "copied_locally": _uint, "bytes": _uint, "flags_changed": _uint, "expunged": _uint,
           "errors": _str_tuple, "status": _opt_status}


def result_to_wire(r: ImportResult) -> dict[str, Any]:
    return {"saved": r.saved, "copied_locally": r.copied_locally, "bytes": r.bytes,
            "flags_changed": r.flags_changed, "expunged": r.expunged, "errors": list(r.errors),
            "status": status_to_wire(r.status) if r.status is not None else None}


def result_from_wire(obj: Any) -> ImportResult:
    return ImportResult(**check_fields(obj, _RESULT, "import result"))


def uid_from_wire(v: Any) -> int:
    return _uint(v, "uid")


def guid_from_wire(v: Any) -> str:
    return _str(v, "guid")


MAX_MARK = 16  # counters in one fast-sync mark


def marks_to_wire(marks: dict[str, tuple[int, ...]]) -> list[Any]:
    return [{"guid": g, "counters": list(m)} for g, m in sorted(marks.items())]


def marks_from_wire(items: list[Any]) -> dict[str, tuple[int, ...]]:
    """Fast-sync marks (``Storage.sync_marks``): mailbox GUID -> a few counters."""
    out: dict[str, tuple[int, ...]] = {}
    for item in items:
        f = check_fields(item, {"guid": _str, "counters": lambda v, w: v}, "sync mark")
        counters = f["counters"]
        if not isinstance(counters, list) or len(counters) > MAX_MARK:
            raise _bad("sync mark", f"is not a list of at most {MAX_MARK} integers")
        out[f["guid"]] = tuple(_uint(n, "sync mark counter") for n in counters)
    return out


def tree_from_wire(lists: dict[str, list[Any]]) -> TreeSnapshot:
    return TreeSnapshot(
        tuple(node_from_wire(x) for x in lists["mailboxes"]),
        tuple(_str(x, "subscription") for x in lists["subscriptions"]),
        tuple(log_from_wire(x) for x in lists["log"]),
    )


def tree_to_wire(t: TreeSnapshot) -> list[tuple[str, Sequence[Any]]]:
    return [
        ("mailboxes", [node_to_wire(n) for n in t.mailboxes]),
        ("subscriptions", list(t.subscriptions)),
        ("log", [log_to_wire(r) for r in t.log]),
    ]


def changeset_to_wire(c: ChangeSet) -> tuple[dict[str, Any], list[tuple[str, Sequence[Any]]]]:
    return {"status": status_to_wire(c.status), "expunges_complete": c.expunges_complete}, [
        ("records", [record_to_wire(r) for r in c.records]),
        ("expunges", [expunge_to_wire(e) for e in c.expunges]),
    ]


def changeset_from_wire(head: dict[str, Any], lists: dict[str, list[Any]]) -> ChangeSet:
    status = status_from_wire(head.get("status"))
    complete = _bool(head.get("expunges_complete", True), "expunges_complete")
    return ChangeSet(status, tuple(record_from_wire(x) for x in lists["records"]),
                     tuple(expunge_from_wire(x) for x in lists["expunges"]), complete)


def batch_to_wire(guid: str, b: ImportBatch) -> tuple[dict[str, Any], list[tuple[str, Sequence[Any]]]]:
    head = {"op": "import_batch", "guid": guid, "min_uidnext": b.min_uidnext,
            "min_highestmodseq": b.min_highestmodseq}
    return head, [
        ("saves", [new_message_to_wire(m) for m in b.saves]),
        ("flag_updates", [flag_update_to_wire(u) for u in b.flag_updates]),
        ("expunges", list(b.expunges)),
    ]


def batch_from_wire(head: dict[str, Any], lists: dict[str, list[Any]]) -> ImportBatch:
    return ImportBatch(
        saves=tuple(new_message_from_wire(x) for x in lists["saves"]),
        flag_updates=tuple(flag_update_from_wire(x) for x in lists["flag_updates"]),
        expunges=tuple(uid_from_wire(x) for x in lists["expunges"]),
        min_uidnext=_opt_int(head.get("min_uidnext"), "min_uidnext"),
        min_highestmodseq=_opt_int(head.get("min_highestmodseq"), "min_highestmodseq"),
    )


# -- handshake and authentication ------------------------------------------------------------

_HELLO_CLIENT = {"protocol": lambda v, w: _version(v, w), "user": _str, "hostname": _str, "io_timeout": _number}
_HELLO_SERVER = {"protocol": lambda v, w: _version(v, w), "hostname": _str, "auth": _str, "nonce": _str}


def _version(v: Any, what: str) -> tuple[int, int]:
    if not isinstance(v, list) or len(v) != 2 or not all(type(x) is int and 0 <= x < 1 << 16 for x in v):
        raise _bad(what, "is not a [major, minor] version")
    return v[0], v[1]


def client_hello(user: str, hostname: str, io_timeout: float | None) -> dict[str, Any]:
    return {"protocol": [PROTOCOL_MAJOR, PROTOCOL_MINOR], "user": user, "hostname": hostname,
            "io_timeout": io_timeout or 0}


def check_client_hello(obj: Any) -> dict[str, Any]:
    """The client's hello, checked; the version is returned as ``protocol`` (major, minor).
    Unknown fields are ignored here on purpose: a newer minor version may add some."""
    if not isinstance(obj, dict):
        raise ProtocolError("Malformed hello from the client")
    if "protocol" not in obj:
        raise ProtocolError("Malformed hello from the client: no protocol version")
    version = _version(obj["protocol"], "hello.protocol")
    if version[0] != PROTOCOL_MAJOR:
        raise ProtocolError(
            f"Protocol version mismatch: the client speaks {version[0]}.{version[1]}, "
            f"this server {PROTOCOL_MAJOR}.{PROTOCOL_MINOR}"
        )
    known = {k: v for k, v in obj.items() if k in _HELLO_CLIENT}
    return check_fields(known, _HELLO_CLIENT, "hello")


def check_server_hello(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict) or "protocol" not in obj:
        raise ProtocolError("Malformed hello from the server")
    version = _version(obj["protocol"], "hello.protocol")
    if version[0] != PROTOCOL_MAJOR:
        raise ProtocolError(
            f"Protocol version mismatch: the server speaks {version[0]}.{version[1]}, "
            f"this client {PROTOCOL_MAJOR}.{PROTOCOL_MINOR}"
        )
    known = {k: v for k, v in obj.items() if k in _HELLO_SERVER}
    return check_fields(known, _HELLO_SERVER, "hello")


AUTH_NONE = "none"
AUTH_HMAC = "hmac-sha256"


def new_nonce() -> str:
    return os.urandom(32).hex()


def auth_mac(secret: str, role: str, server_nonce: str, client_nonce: str, user: str) -> str:
    """HMAC-SHA256 keyed with the shared secret over both nonces and the user name; the
    ``role`` ("client"/"server") keeps one side's proof from being replayed as the other's."""
    msg = b"\0".join([b"dsync-py-auth", role.encode(), server_nonce.encode(), client_nonce.encode(),
                      user.encode("utf-8")])
    return hmac.new(secret.encode("utf-8"), msg, hashlib.sha256).hexdigest()


def macs_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("ascii", "replace"), b.encode("ascii", "replace"))


def iter_list(items: Iterable[Any], conv: Callable[[Any], Any]) -> Iterator[Any]:
    for x in items:
        yield conv(x)


__all__ = [
    "marks_to_wire",
    "marks_from_wire",
    "MAGIC",
    "PROTOCOL_MAJOR",
    "PROTOCOL_MINOR",
    "MAX_FRAME",
    "MAX_CHUNK",
    "Channel",
    "Connection",
    "FrameDecoder",
    "RawLog",
    "encode_frame",
    "decode_json",
    "encode_json",
    "keepalive_interval",
    "auth_mac",
]


# -- channels over file descriptors and sockets ----------------------------------------------


class FdChannel:
    """A channel over a pair of file descriptors (a child's pipes, or stdin/stdout).

    With a ``timeout``, reads and writes wait at most that long for progress, then raise
    :class:`TimeoutError`; the write side is made non-blocking for that."""

    def __init__(self, rfd: int, wfd: int, timeout: float | None = None, *, owned: bool = False) -> None:
        self.rfd, self.wfd = rfd, wfd
        self.timeout = timeout or None
        self.owned = owned
        if self.timeout:
            os.set_blocking(wfd, False)

    def read(self, n: int) -> bytes:
        if self.timeout:
            import select

            r, _, _ = select.select([self.rfd], [], [], self.timeout)
            if not r:
                raise TimeoutError("read timed out")
        return os.read(self.rfd, n)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.timeout:
                import select

                _, w, _ = select.select([], [self.wfd], [], self.timeout)
                if not w:
                    raise TimeoutError("write timed out")
            try:
                n = os.write(self.wfd, view)
            except BlockingIOError:
                continue
            view = view[n:]

    def close(self) -> None:
        if self.owned:
            for fd in {self.rfd, self.wfd}:
                try:
                    os.close(fd)
                except OSError:
                    pass


class SocketChannel:
    """A channel over a connected (possibly TLS-wrapped) socket."""

    def __init__(self, sock: Any, timeout: float | None = None) -> None:
        import socket

        self.sock = sock
        sock.settimeout(timeout or None)
        # Requests and answers are small frames written back to back: with Nagle's
        # algorithm the second would wait for the peer's delayed ACK (40 ms a turnaround).
        if getattr(sock, "family", None) in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def read(self, n: int) -> bytes:
        return self.sock.recv(n)

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        import socket

        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass
