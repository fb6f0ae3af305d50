"""The wire codec: frames, strict JSON, value checks, handshake, and a fuzzed frame decoder."""

from __future__ import annotations

import json
import socket
import struct
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsync_core import protocol as p
from dsync_core.errors import NotFoundError, ProtocolError
from dsync_core.model import ExpungeRecord, FlagUpdate, MailboxStatus, MessageRecord
from dsync_core.protocol import Connection, FrameDecoder, SocketChannel
from dsync_core.replica import ImportBatch, NewMessage


def test_frame_round_trip_and_split_feeding() -> None:
    frames = [(p.REQUEST, b'{"op":"tree"}'), (p.DATA, b"x" * 1000), (p.END, b""), (p.KEEPALIVE, b"")]
    wire = b"".join(p.encode_frame(t, d) for t, d in frames)
    dec = FrameDecoder()
    got = []
    for i in range(len(wire)):  # one byte at a time
        dec.feed(wire[i : i + 1])
        while (f := dec.next_frame()) is not None:
            got.append(f)
    assert got == frames


def test_oversized_and_unknown_frames_are_refused_from_the_header() -> None:
    dec = FrameDecoder()
    dec.feed(struct.pack(">IB", p.MAX_FRAME + 1, p.ANSWER))
    with pytest.raises(ProtocolError, match="Oversized A frame"):
        dec.next_frame()
    dec = FrameDecoder()
    dec.feed(struct.pack(">IB", p.MAX_CHUNK + 1, p.DATA))
    with pytest.raises(ProtocolError, match="Oversized D frame"):
        dec.next_frame()
    dec = FrameDecoder()
    dec.feed(struct.pack(">IB", 3, ord("z")))
    with pytest.raises(ProtocolError, match="Unknown frame type z"):
        dec.next_frame()
    with pytest.raises(ProtocolError):
        p.encode_frame(p.DATA, b"x" * (p.MAX_CHUNK + 1))


@pytest.mark.parametrize(
    "payload",
    [b'{"a":NaN}', b'{"a":1,"a":2}', b"\xff\xfe", b"[" * 100000, b"{", b'{"a":Infinity}'],
)
def test_strict_json(payload: bytes) -> None:
    with pytest.raises(ProtocolError, match="Malformed"):
        p.decode_json(payload, "A")


def test_values_round_trip() -> None:
    r = MessageRecord(7, "g" * 32, frozenset({"\\Seen"}), frozenset({"$Work"}), 5, 1700000000, 10, 12, 3)
    assert p.record_from_wire(json.loads(json.dumps(p.record_to_wire(r)))) == r
    s = MailboxStatus("a" * 32, 1, 2, 3, 4)
    assert p.status_from_wire(p.status_to_wire(s)) == s
    e = ExpungeRecord(3, "x", 9)
    assert p.expunge_from_wire(p.expunge_to_wire(e)) == e
    u = FlagUpdate(4, frozenset({"\\Seen"}), remove_keywords=frozenset({"k"}))
    assert p.flag_update_from_wire(p.flag_update_to_wire(u)) == u
    b = ImportBatch(saves=(NewMessage(5, "g", frozenset({"\\Draft"}), internaldate=3),), expunges=(1, 2),
                    min_uidnext=9)
    head, lists = p.batch_to_wire("m" * 32, b)
    assert p.batch_from_wire(head, {k: v for k, v in lists}) == b


@pytest.mark.parametrize(
    ("obj", "why"),
    [
        ({"uid": 1, "guid": "g", "flags": [], "keywords": [], "modseq": 1, "internaldate": 0, "size": None,
          "vsize": None, "save_date": 0, "evil": 1}, "unknown field"),
        ({"uid": "1", "guid": "g", "flags": [], "keywords": [], "modseq": 1, "internaldate": 0, "size": None,
          "vsize": None, "save_date": 0}, "not a non-negative"),
        ({"uid": -1, "guid": "g", "flags": [], "keywords": [], "modseq": 1, "internaldate": 0, "size": None,
          "vsize": None, "save_date": 0}, "not a non-negative"),
        ({"uid": 1, "guid": "g", "flags": "\\Seen", "keywords": [], "modseq": 1, "internaldate": 0, "size": None,
          "vsize": None, "save_date": 0}, "list of at most"),
        ({"uid": 1, "guid": "g" * 70000, "flags": [], "keywords": [], "modseq": 1, "internaldate": 0,
          "size": None, "vsize": None, "save_date": 0}, "longer than"),
        ({"uid": True, "guid": "g", "flags": [], "keywords": [], "modseq": 1, "internaldate": 0, "size": None,
          "vsize": None, "save_date": 0}, "not a non-negative"),
        ({"uid": 1, "guid": "g", "flags": [], "keywords": [], "modseq": 1 << 64, "internaldate": 0, "size": None,
          "vsize": None, "save_date": 0}, "64-bit"),
        ({"uid": 1}, "lacks field"),
        ([1, 2], "not an object"),
    ],
)
def test_bad_values_are_rejected(obj: object, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        p.record_from_wire(obj)


def test_failure_frames_map_only_to_known_error_classes() -> None:
    e = p.failure_from_wire(p.failure_to_wire(NotFoundError("Mailbox gone")))
    assert isinstance(e, NotFoundError) and "Mailbox gone" in str(e)
    e = p.failure_from_wire({"error": "SystemExit", "message": "x", "exit_code": 1})
    assert type(e).__name__ == "DsyncError"
    e = p.failure_from_wire({"error": "__class__", "message": "x", "exit_code": 1})
    assert type(e).__name__ == "DsyncError"


def test_auth_macs_bind_role_nonces_and_user() -> None:
    base = p.auth_mac("pw", "client", "s", "c", "u")
    assert p.macs_equal(base, p.auth_mac("pw", "client", "s", "c", "u"))
    for other in (p.auth_mac("pw", "server", "s", "c", "u"), p.auth_mac("pw2", "client", "s", "c", "u"),
                  p.auth_mac("pw", "client", "s2", "c", "u"), p.auth_mac("pw", "client", "s", "c", "v")):
        assert not p.macs_equal(base, other)


def test_lists_span_several_item_frames() -> None:
    a, b = socket.socketpair()
    ca, cb = Connection(SocketChannel(a, 5)), Connection(SocketChannel(b, 5))
    items = [{"n": i, "pad": "x" * 300} for i in range(5000)]  # ~1.6 MB: several frames
    t = threading.Thread(target=ca.send_message, args=(p.ANSWER, {"k": 1}, [("things", items), ("none", [])]))
    t.start()
    ftype, payload = cb.recv()
    head = cb.recv_json(ftype, payload)
    lists = cb.recv_lists(head, ("things", "none"))
    t.join()
    assert head == {"k": 1} and lists["things"] == items and lists["none"] == []
    a.close()
    b.close()


def test_a_list_that_is_not_allowed_is_refused() -> None:
    a, b = socket.socketpair()
    ca, cb = Connection(SocketChannel(a, 5)), Connection(SocketChannel(b, 5))
    ca.send_message(p.ANSWER, {}, [("evil", [1])])
    ftype, payload = cb.recv()
    with pytest.raises(ProtocolError, match="unexpected list"):
        cb.recv_lists(cb.recv_json(ftype, payload), ("records",))
    assert cb.broken
    a.close()
    b.close()


def test_version_mismatch_is_a_clear_error() -> None:
    with pytest.raises(ProtocolError, match="Protocol version mismatch: the client speaks 2.0"):
        p.check_client_hello({"protocol": [2, 0], "user": "u", "hostname": "h", "io_timeout": 0})
    with pytest.raises(ProtocolError, match="Protocol version mismatch: the server speaks 9.1"):
        p.check_server_hello({"protocol": [9, 1], "hostname": "h", "auth": "none", "nonce": ""})
    # A newer minor version may add fields: ignored.
    h = p.check_client_hello({"protocol": [1, 7], "user": "u", "hostname": "h", "io_timeout": 0, "new": 1})
    assert h["user"] == "u"


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=4096), st.integers(min_value=1, max_value=64))
def test_fuzz_frame_decoder(data: bytes, step: int) -> None:
    """Random bytes fed in random pieces: frames within the limits, or a ProtocolError; never
    anything else, and never a buffered payload beyond the limits."""
    dec = FrameDecoder()
    try:
        for i in range(0, len(data), step):
            dec.feed(data[i : i + step])
            while (frame := dec.next_frame()) is not None:
                ftype, payload = frame
                assert len(payload) <= p.MAX_FRAME
                if ftype in (p.REQUEST, p.ANSWER, p.ITEMS, p.HELLO, p.FAIL, p.BODY, p.ABORT, p.AUTH):
                    try:
                        p.decode_json(payload, "x")
                    except ProtocolError:
                        pass
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([p.REQUEST, p.DATA, p.END, p.ITEMS, p.KEEPALIVE]),
                          st.binary(max_size=300)), max_size=20), st.binary(max_size=50))
def test_fuzz_valid_frames_then_garbage(frames: list[tuple[int, bytes]], tail: bytes) -> None:
    frames = [(t, b"" if t in (p.END, p.KEEPALIVE) else d) for t, d in frames]
    dec = FrameDecoder()
    dec.feed(b"".join(p.encode_frame(t, d) for t, d in frames) + tail)
    got = []
    try:
        while (f := dec.next_frame()) is not None:
            got.append(f)
    except ProtocolError:
        pass
    assert got[: len(frames)] == frames


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                    max_leaves=20))
def test_fuzz_value_decoders_only_raise_protocol_errors(obj: object) -> None:
    for conv in (p.record_from_wire, p.status_from_wire, p.node_from_wire, p.new_message_from_wire,
                 p.flag_update_from_wire, p.result_from_wire, p.tree_change_from_wire, p.info_from_wire,
                 p.log_from_wire, p.expunge_from_wire):
        try:
            conv(obj)
        except ProtocolError:
            pass


def test_tcp_channels_turn_nagle_off() -> None:
    """Frames are written back to back; over TCP each side sends them without waiting for
    the peer's delayed ACK. Unix socket pairs (no such option) work as before."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        client = socket.create_connection(srv.getsockname())
        server, _ = srv.accept()
        for s in (client, server):
            SocketChannel(s, 5)
            assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            s.close()
    a, b = socket.socketpair()
    SocketChannel(a, 5)
    a.close()
    b.close()
