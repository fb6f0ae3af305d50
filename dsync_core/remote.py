"""A :class:`~dsync_core.replica.Replica` served over a byte channel, and the server side.

:class:`RemoteReplica` turns every Replica method into one request and one answer on a
:class:`~dsync_core.protocol.Connection` (bodies as one stream), so a sync costs a small
constant number of turnarounds per mailbox; it counts them in ``turnarounds``.
:func:`serve` is the far side (``dsync server``): it checks the handshake, authenticates
when a secret is set, opens the user's replica and answers requests until the client quits.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

from .errors import DsyncError, ProtocolError
from .model import MailboxStatus, MessageRecord
from .protocol import (
    ANSWER,
    AUTH,
    AUTH_HMAC,
    AUTH_NONE,
    FAIL,
    HELLO,
    MAGIC,
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    REQUEST,
    Channel,
    Connection,
    RawLog,
    _bool,
    _number,
    _opt_int,
    _str,
    _uint,
    auth_mac,
    batch_from_wire,
    batch_to_wire,
    changeset_from_wire,
    changeset_to_wire,
    check_client_hello,
    check_fields,
    check_server_hello,
    client_hello,
    encode_frame,
    encode_json,
    failure_from_wire,
    failure_to_wire,
    guid_from_wire,
    info_from_wire,
    info_to_wire,
    keepalive_interval,
    macs_equal,
    marks_from_wire,
    marks_to_wire,
    new_nonce,
    record_from_wire,
    record_to_wire,
    result_from_wire,
    result_to_wire,
    status_from_wire,
    status_to_wire,
    tree_change_from_wire,
    tree_change_to_wire,
    tree_from_wire,
    tree_to_wire,
    type_name,
    uid_from_wire,
)
from .replica import ChangeSet, ImportBatch, ImportResult, Replica, ReplicaInfo, TreeChange, TreeSnapshot

log = logging.getLogger("dsync.remote")

#: Bodies up to this size stay in memory while spooled; larger ones go to a temporary file.
SPOOL_MEMORY = 256 * 1024  # times SAVE_BATCH bodies held at once: 50 MiB at most


def _spool() -> BinaryIO:
    return tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # type: ignore[return-value]


class _Discard:
    """A spool that throws the bytes away (draining a stream nobody reads)."""

    def write(self, data: bytes) -> int:
        return len(data)

    def seek(self, pos: int) -> int:
        return 0

    def close(self) -> None:
        pass


def _discard() -> BinaryIO:
    return _Discard()  # type: ignore[return-value]


class _Stream:
    """How many bodies of a stream are still on the wire."""

    def __init__(self, left: int) -> None:
        self.left = left


# -- the client side -------------------------------------------------------------------------


class RemoteReplica(Replica):
    """A replica on the far side of ``channel`` (which already reaches a ``dsync server``).

    :param user: the user name sent in the handshake (the server may fix its own with -u).
    :param password: the shared secret (``doveadm_password``) for servers that ask for it.
    :param require_auth: refuse a server that does not authenticate (tcp/tcps).
    :param io_timeout: only used for messages; the channel itself enforces it.
    :param on_close: called after the channel is closed (waits for a child process).
    """

    def __init__(
        self,
        channel: Channel,
        *,
        user: str,
        password: str | None = None,
        require_auth: bool = False,
        io_timeout: float | None = None,
        rawlog: str | None = None,
        peer: str = "the remote dsync server",
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.turnarounds = 0
        self.peer = peer
        self._on_close = on_close
        self._closed = False
        self._stream: _Stream | None = None
        self._rawlog = RawLog(rawlog) if rawlog else None
        self.conn = Connection(channel, io_timeout=io_timeout, rawlog=self._rawlog, peer=peer)
        try:
            self._info = self._handshake(user, password, require_auth, io_timeout)
        except BaseException:
            self._shutdown()
            raise

    # -- handshake --
    def _handshake(self, user: str, password: str | None, require_auth: bool, io_timeout: float | None) -> ReplicaInfo:
        conn = self.conn
        # One write: a peer that answers garbage and hangs up must not turn into "broken pipe".
        hello = encode_json(client_hello(user, socket.gethostname(), io_timeout))
        if self._rawlog:
            self._rawlog.frame(">", HELLO, hello)
        conn.write_raw(MAGIC + encode_frame(HELLO, hello))
        self.turnarounds += 1
        try:
            magic = conn.read_exact(len(MAGIC))
        except ProtocolError as e:
            if "closed" in e.message:
                raise ProtocolError(
                    f"{self.peer} closed the connection before the handshake (does it run `dsync server`?)"
                ) from None
            raise
        if magic != MAGIC:
            raise conn.protocol_error(
                f"{self.peer} does not speak the dsync-py protocol (it began with {magic!r}; "
                "a login banner, or not a dsync server?)"
            )
        ftype, payload = conn.recv()
        if ftype == FAIL:
            raise failure_from_wire(conn.recv_json(ftype, payload))
        if ftype != HELLO:
            raise conn.protocol_error(f"Expected the server's hello, got a {type_name(ftype)} frame")
        try:
            hello = check_server_hello(conn.recv_json(ftype, payload))
        except ProtocolError as e:
            raise conn.protocol_error(e.message) from None
        self.server_hostname = hello["hostname"]
        cnonce = ""
        if hello["auth"] == AUTH_HMAC:
            if not password:
                raise ProtocolError(f"{self.peer} requires a password: set doveadm_password")
            cnonce = new_nonce()
            conn.send_json(AUTH, {"cnonce": cnonce, "mac": auth_mac(password, "client", hello["nonce"], cnonce, user)})
            self.turnarounds += 1
        elif hello["auth"] != AUTH_NONE:
            raise conn.protocol_error(f"{self.peer} wants unknown authentication {hello['auth'][:40]!r}")
        elif require_auth:
            raise conn.protocol_error(
                f"{self.peer} does not authenticate itself (no doveadm_password on the server?): refusing"
            )
        ftype, payload = conn.recv()
        if ftype == FAIL:
            raise failure_from_wire(conn.recv_json(ftype, payload))
        if ftype != ANSWER:
            raise conn.protocol_error(f"Expected the server's ready answer, got a {type_name(ftype)} frame")
        ready = conn.recv_json(ftype, payload)
        try:
            fields = check_fields(ready, {"info": lambda v, w: info_from_wire(v), "mac": lambda v, w: v}, "ready")
        except ProtocolError as e:
            raise conn.protocol_error(e.message) from None
        if cnonce:
            proof = fields["mac"]
            if not isinstance(proof, str) or not macs_equal(
                proof, auth_mac(password or "", "server", hello["nonce"], cnonce, user)
            ):
                raise conn.protocol_error(f"{self.peer} failed to prove it knows doveadm_password: refusing")
        return fields["info"]

    # -- plumbing --
    def _prepare(self) -> None:
        if self._closed:
            raise ProtocolError("The connection to the remote dsync server is closed")
        st = self._stream
        if st is not None:
            # A body stream the consumer did not read to the end: drain it so the next
            # answer is in step.
            while st.left > 0:
                self.conn.recv_body(_discard)
                st.left -= 1
            self._stream = None

    def _answer(self, allowed: Iterable[str] = ()) -> tuple[dict[str, Any], dict[str, list[Any]]]:
        conn = self.conn
        ftype, payload = conn.recv()
        if ftype == FAIL:
            raise failure_from_wire(conn.recv_json(ftype, payload))
        if ftype != ANSWER:
            raise conn.protocol_error(f"Expected an answer, got a {type_name(ftype)} frame")
        head = conn.recv_json(ftype, payload)
        if not isinstance(head, dict):
            raise conn.protocol_error("Malformed answer: not an object")
        lists = conn.recv_lists(head, allowed)
        return head, lists

    def _call(
        self, op: str, head: dict[str, Any] | None = None, lists: list[tuple[str, Any]] | None = None,
        allowed: Iterable[str] = (),
    ) -> tuple[dict[str, Any], dict[str, list[Any]]]:
        self._prepare()
        self.conn.send_message(REQUEST, {"op": op, **(head or {})}, lists or [])
        self.turnarounds += 1
        return self._answer(allowed)

    @staticmethod
    def _decode(fn: Callable[[], Any], conn: Connection) -> Any:
        try:
            return fn()
        except ProtocolError as e:
            raise conn.protocol_error(e.message) from None

    # -- Replica --
    def info(self) -> ReplicaInfo:
        return self._info

    def tree(self) -> TreeSnapshot:
        _, lists = self._call("tree", allowed=("mailboxes", "subscriptions", "log"))
        return self._decode(lambda: tree_from_wire(lists), self.conn)  # type: ignore[no-any-return]

    def apply_tree(self, changes: Iterable[TreeChange]) -> list[str]:
        _, lists = self._call("apply_tree", lists=[("changes", [tree_change_to_wire(c) for c in changes])],
                              allowed=("errors",))
        return self._decode(lambda: [_str(x, "error") for x in lists["errors"]], self.conn)  # type: ignore[no-any-return]

    def statuses(self, guids: Iterable[str]) -> dict[str, MailboxStatus]:
        _, lists = self._call("statuses", lists=[("guids", list(guids))], allowed=("statuses",))

        def conv() -> dict[str, MailboxStatus]:
            out = {}
            for item in lists["statuses"]:
                f = check_fields(item, {"guid": _str, "status": lambda v, w: status_from_wire(v)}, "statuses")
                out[f["guid"]] = f["status"]
            return out

        return self._decode(conv, self.conn)  # type: ignore[no-any-return]

    def changes(self, guid: str, since_modseq: int = 0, since_uid: int = 0) -> ChangeSet:
        head, lists = self._call("changes", {"guid": guid, "since_modseq": since_modseq, "since_uid": since_uid},
                                 allowed=("records", "expunges"))
        return self._decode(lambda: changeset_from_wire(head, lists), self.conn)  # type: ignore[no-any-return]

    def records(self, guid: str, uids: Iterable[int]) -> list[MessageRecord]:
        uids = list(uids)
        if not uids:
            return []
        _, lists = self._call("records", {"guid": guid}, [("uids", uids)], allowed=("records",))
        return self._decode(lambda: [record_from_wire(x) for x in lists["records"]], self.conn)  # type: ignore[no-any-return]

    def locate(self, guids: Iterable[str]) -> dict[str, tuple[str, int]]:
        guids = list(guids)
        if not guids:
            return {}
        _, lists = self._call("locate", lists=[("guids", guids)], allowed=("found",))

        def conv() -> dict[str, tuple[str, int]]:
            out = {}
            for item in lists["found"]:
                f = check_fields(item, {"guid": _str, "mailbox": _str, "uid": _uint}, "located message")
                out[f["guid"]] = (f["mailbox"], f["uid"])
            return out

        return self._decode(conv, self.conn)  # type: ignore[no-any-return]

    def bodies(self, guid: str, uids: list[int]) -> Iterator[tuple[int, BinaryIO | None]]:
        uids = list(uids)
        if not uids:
            return iter(())
        return self._bodies(guid, uids)

    def _bodies(self, guid: str, uids: list[int]) -> Iterator[tuple[int, BinaryIO | None]]:
        self._prepare()
        self.conn.send_message(REQUEST, {"op": "bodies", "guid": guid}, [("uids", uids)])
        self.turnarounds += 1
        st = _Stream(len(uids))
        self._stream = st
        for expected in uids:
            try:
                uid, body, reason = self.conn.recv_body(_spool)
            except DsyncError:
                st.left = 0  # a FAIL frame ends the stream (or the connection is broken)
                raise
            st.left -= 1
            if uid != expected:
                if body is not None:
                    body.close()
                raise self.conn.protocol_error(f"Body stream out of order: expected UID {expected}, got {uid}")
            if body is None:
                log.debug("remote body of UID %d not available: %s", uid, reason)
            yield uid, body

    def import_batch(
        self, guid: str, batch: ImportBatch, bodies: Iterator[tuple[int, BinaryIO | None]] | None = None
    ) -> ImportResult:
        peer_saves = [s for s in batch.saves if s.source == "peer"]
        head, lists = batch_to_wire(guid, batch)
        head["bodies"] = len(peer_saves)
        self._prepare()
        conn = self.conn
        conn.send_message(REQUEST, head, lists)
        it = bodies
        sent = 0
        for s in peer_saves:
            item: tuple[int, BinaryIO | None] | None = None
            if it is not None:
                try:
                    item = next(it)
                except StopIteration:
                    it = None
                except DsyncError as e:
                    log.debug("local body stream failed: %s", e.message)
                    it = None
            if item is None:
                conn.send_body(s.from_uid or s.uid, None)
            else:
                sent += conn.send_body(item[0], item[1])
        self.turnarounds += 1
        ans, _ = self._answer()
        return self._decode(lambda: result_from_wire(ans.get("result")), conn)  # type: ignore[no-any-return]

    @contextlib.contextmanager
    def _locked(self, timeout: float) -> Iterator[object]:
        self._call("lock", {"timeout": float(timeout)})
        try:
            yield self
        finally:
            if not self._closed and self.conn.broken is None:
                self._call("unlock")

    def lock(self, timeout: float) -> contextlib.AbstractContextManager[object]:
        return self._locked(timeout)

    def purge(self) -> None:
        self._call("purge")

    def sync_marks(self, peer: str) -> dict[str, tuple[int, ...]] | None:
        head, lists = self._call("sync_marks", {"peer": peer}, allowed=("marks",))
        if not self._decode(lambda: _bool(head.get("supported"), "supported"), self.conn):
            return None
        return self._decode(lambda: marks_from_wire(lists["marks"]), self.conn)  # type: ignore[no-any-return]

    def set_sync_marks(self, peer: str, marks: dict[str, tuple[int, ...]]) -> None:
        self._call("set_sync_marks", {"peer": peer}, [("marks", marks_to_wire(marks))])

    def close(self) -> None:
        if self._closed:
            return
        if self.conn.broken is None:
            try:
                self._call("quit")
            except DsyncError as e:
                log.debug("quit failed: %s", e.message)
        self._shutdown()

    def _shutdown(self) -> None:
        self._closed = True
        self.conn.close()
        if self._rawlog:
            self._rawlog.close()
        if self._on_close is not None:
            cb, self._on_close = self._on_close, None
            cb()


# -- the server side -------------------------------------------------------------------------

ReplicaOpener = Callable[[str], contextlib.AbstractContextManager[Replica]]


def _send_fail(conn: Connection, e: BaseException) -> None:
    try:
        conn.send_json(FAIL, failure_to_wire(e))
    except ProtocolError:
        pass


def serve(
    channel: Channel,
    open_replica: ReplicaOpener,
    *,
    fixed_user: str | None = None,
    secret: str | None = None,
    rawlog: str | None = None,
    io_timeout: float | None = None,
    peer: str = "the client",
) -> int:
    """Serve one client on ``channel`` until it quits; returns an exit status (0 or 1).

    ``open_replica(user)`` opens the user's replica (a context manager: the listener
    holds the user's lock in it). With ``fixed_user`` (``dsync server -u``) the hello's
    user name is ignored. With ``secret`` the client must prove it knows it.
    """
    rl = RawLog(rawlog) if rawlog else None
    conn = Connection(channel, io_timeout=io_timeout, rawlog=rl, peer=peer)
    try:
        return _serve(conn, open_replica, fixed_user, secret)
    except ProtocolError as e:
        log.error("%s", e.message)
        return 1
    finally:
        conn.close()
        if rl:
            rl.close()


def _serve(conn: Connection, open_replica: ReplicaOpener, fixed_user: str | None, secret: str | None) -> int:
    magic = conn.read_exact(len(MAGIC))
    if magic != MAGIC:
        raise conn.protocol_error(f"{conn.peer} does not speak the dsync-py protocol (it began with {magic!r})")
    conn.write_raw(MAGIC)
    ftype, payload = conn.recv()
    if ftype != HELLO:
        raise conn.protocol_error(f"Expected the client's hello, got a {type_name(ftype)} frame")
    nonce = new_nonce()
    conn.send_json(HELLO, {"protocol": [PROTOCOL_MAJOR, PROTOCOL_MINOR], "hostname": socket.gethostname(),
                           "auth": AUTH_HMAC if secret else AUTH_NONE, "nonce": nonce})
    try:
        hello = check_client_hello(conn.recv_json(ftype, payload))
    except ProtocolError as e:
        _send_fail(conn, e)
        log.error("%s", e.message)
        return 1
    claimed = hello["user"]
    proof = None
    if secret:
        ftype, payload = conn.recv()
        if ftype != AUTH:
            raise conn.protocol_error(f"Expected the client's authentication, got a {type_name(ftype)} frame")
        try:
            auth = check_fields(conn.recv_json(ftype, payload), {"cnonce": _str, "mac": _str}, "authentication")
        except ProtocolError as e:
            raise conn.protocol_error(e.message) from None
        if not macs_equal(auth["mac"], auth_mac(secret, "client", nonce, auth["cnonce"], claimed)):
            err = DsyncError("Authentication failed (wrong doveadm_password?)", exit_code=1)
            _send_fail(conn, err)
            log.error("%s: authentication failed for user %s", conn.peer, claimed)
            return 1
        proof = auth_mac(secret, "server", nonce, auth["cnonce"], claimed)
    user = fixed_user or claimed
    interval = keepalive_interval(hello["io_timeout"] or None)
    try:
        with contextlib.ExitStack() as stack:
            try:
                with conn.keepalive(interval):
                    replica = stack.enter_context(open_replica(user))
                    info = replica.info()
            except DsyncError as e:
                _send_fail(conn, e)
                log.error("%s", e.message)
                return 1
            conn.send_json(ANSWER, {"info": info_to_wire(info), "mac": proof})
            return _Handler(conn, replica, interval, stack).loop()
    except DsyncError as e:
        if isinstance(e, ProtocolError):
            raise
        log.error("%s", e.message)
        return 1


_HEADS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "tree": ({}, ()),
    "apply_tree": ({}, ("changes",)),
    "statuses": ({}, ("guids",)),
    "changes": ({"guid": _str, "since_modseq": _uint, "since_uid": _uint}, ()),
    "records": ({"guid": _str}, ("uids",)),
    "locate": ({}, ("guids",)),
    "bodies": ({"guid": _str}, ("uids",)),
    "import_batch": ({"guid": _str, "min_uidnext": _opt_int, "min_highestmodseq": _opt_int, "bodies": _uint},
                     ("saves", "flag_updates", "expunges")),
    "lock": ({"timeout": _number}, ()),
    "unlock": ({}, ()),
    "purge": ({}, ()),
    "sync_marks": ({"peer": _str}, ()),
    "set_sync_marks": ({"peer": _str}, ("marks",)),
    "quit": ({}, ()),
}


class _Handler:
    def __init__(self, conn: Connection, replica: Replica, interval: float, stack: contextlib.ExitStack) -> None:
        self.conn = conn
        self.replica = replica
        self.interval = interval
        self.stack = stack
        self.lock: contextlib.ExitStack | None = None

    def loop(self) -> int:
        conn = self.conn
        try:
            while True:
                ftype, payload = conn.recv()
                if ftype != REQUEST:
                    raise conn.protocol_error(f"Expected a request, got a {type_name(ftype)} frame")
                head = conn.recv_json(ftype, payload)
                if not isinstance(head, dict) or not isinstance(head.get("op"), str) or head["op"] not in _HEADS:
                    op = head.get("op") if isinstance(head, dict) else None
                    raise conn.protocol_error(f"Unknown request {str(op)[:40]!r}")
                op = head.pop("op")
                spec, list_names = _HEADS[op]
                lists = conn.recv_lists(head, list_names)
                try:
                    args = check_fields(head, spec, op)
                except ProtocolError as e:
                    if op in ("import_batch", "bodies"):
                        raise conn.protocol_error(e.message) from None  # can't tell what follows
                    _send_fail(conn, e)  # the whole request was read: stay in step
                    continue
                if op == "quit":
                    conn.send_json(ANSWER, {})
                    return 0
                self.dispatch(op, args, lists)
        finally:
            if self.lock is not None:
                self.lock.close()

    def dispatch(self, op: str, args: dict[str, Any], lists: dict[str, list[Any]]) -> None:
        conn, rep = self.conn, self.replica
        stream: _Stream | None = None
        try:
            with conn.keepalive(self.interval):
                if op == "bodies":
                    self.send_bodies(args["guid"], [uid_from_wire(u) for u in lists["uids"]])
                    return
                if op == "import_batch":
                    stream = _Stream(args["bodies"])
                    batch = batch_from_wire(args, lists)
                    if sum(1 for s in batch.saves if s.source == "peer") != stream.left:
                        raise conn.protocol_error("import_batch: the body count does not match the peer saves")
                    result = rep.import_batch(args["guid"], batch, self._incoming(stream))
                    self._drain(stream)
                    conn.send_json(ANSWER, {"result": result_to_wire(result)})
                    return
                head, out = self.answer(op, args, lists)
            conn.send_message(ANSWER, head, out)
        except ProtocolError as e:
            if conn.broken is not None:
                raise
            # A malformed value inside a well-formed request: refuse it, stay in step.
            if stream is not None:
                self._drain(stream)
            _send_fail(conn, e)
        except DsyncError as e:
            if stream is not None:
                self._drain(stream)
            _send_fail(conn, e)
        except Exception as e:  # noqa: BLE001 - a bug must not kill the connection silently
            log.exception("internal error in %s", op)
            if stream is not None:
                self._drain(stream)
            _send_fail(conn, e)

    def answer(self, op: str, args: dict[str, Any], lists: dict[str, list[Any]]) -> tuple[dict[str, Any], list[Any]]:
        rep = self.replica
        if op == "tree":
            return {}, tree_to_wire(rep.tree())
        if op == "apply_tree":
            errors = rep.apply_tree([tree_change_from_wire(c) for c in lists["changes"]])
            return {}, [("errors", errors)]
        if op == "statuses":
            st = rep.statuses([guid_from_wire(g) for g in lists["guids"]])
            return {}, [("statuses", [{"guid": g, "status": status_to_wire(s)} for g, s in st.items()])]
        if op == "changes":
            return changeset_to_wire(rep.changes(args["guid"], args["since_modseq"], args["since_uid"]))
        if op == "records":
            recs = rep.records(args["guid"], [uid_from_wire(u) for u in lists["uids"]])
            return {}, [("records", [record_to_wire(r) for r in recs])]
        if op == "locate":
            found = rep.locate([guid_from_wire(g) for g in lists["guids"]])
            return {}, [("found", [{"guid": g, "mailbox": m, "uid": u} for g, (m, u) in found.items()])]
        if op == "lock":
            if self.lock is None:
                stack = contextlib.ExitStack()
                stack.enter_context(rep.lock(args["timeout"]))
                self.lock = stack
            return {}, []
        if op == "unlock":
            if self.lock is not None:
                self.lock.close()
                self.lock = None
            return {}, []
        if op == "purge":
            rep.purge()
            return {}, []
        if op == "sync_marks":
            marks = rep.sync_marks(args["peer"])
            return {"supported": marks is not None}, [("marks", marks_to_wire(marks or {}))]
        if op == "set_sync_marks":
            rep.set_sync_marks(args["peer"], marks_from_wire(lists["marks"]))
            return {}, []
        raise self.conn.protocol_error(f"Unknown request {op!r}")  # pragma: no cover - _HEADS guards

    def send_bodies(self, guid: str, uids: list[int]) -> None:
        conn = self.conn
        sent = 0
        try:
            for uid, body in self.replica.bodies(guid, uids):
                if sent >= len(uids):
                    break
                conn.send_body(uid, body)
                sent += 1
        except ProtocolError:
            raise
        except DsyncError as e:
            _send_fail(conn, e)  # ends the stream; the client stops reading it
            return
        for uid in uids[sent:]:  # a replica that yielded fewer: the rest vanished
            conn.send_body(uid, None)

    def _incoming(self, stream: _Stream) -> Iterator[tuple[int, BinaryIO | None]]:
        while stream.left > 0:
            uid, body, _reason = self.conn.recv_body(_spool)
            stream.left -= 1
            yield uid, body

    def _drain(self, stream: _Stream) -> None:
        while stream.left > 0:
            _uid, body, _ = self.conn.recv_body(_discard)
            stream.left -= 1


__all__ = ["RemoteReplica", "serve", "SPOOL_MEMORY"]
