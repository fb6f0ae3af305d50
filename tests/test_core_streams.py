"""Line-end counting and counted bodies (dsync_core.streams)."""

from __future__ import annotations

import io
import os

from hypothesis import given
from hypothesis import strategies as st

from dsync_core import dbox
from dsync_core.streams import (
    BodySizes,
    CountedBody,
    CrlfToLf,
    LineEnds,
    chunk_line_ends,
    counted_sizes,
    virtual_size,
)


def _bare_lf(data: bytes) -> int:
    return sum(1 for i, b in enumerate(data) if b == 0x0A and (i == 0 or data[i - 1] != 0x0D))


line_bytes = st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b"bc"]), max_size=60).map(b"".join)


@given(line_bytes, st.lists(st.integers(min_value=0, max_value=60), max_size=6))
def test_line_ends_count_bare_lf_across_any_chunking(data: bytes, cuts: list[int]) -> None:
    ends = LineEnds()
    pos = 0
    for cut in sorted(c for c in cuts if c <= len(data)):
        ends.feed(data[pos:cut])
        pos = cut
    ends.feed(data[pos:])
    assert ends.bare_lf == _bare_lf(data)


@given(line_bytes)
def test_counted_body_and_virtual_size_agree(data: bytes) -> None:
    body = CountedBody(data)
    assert body.counted == (len(data), len(data) + _bare_lf(data))
    assert virtual_size(io.BytesIO(data)) == body.counted
    assert body.read() == data  # still an ordinary stream


def test_counted_sizes_only_from_a_tuple() -> None:
    assert counted_sizes(io.BytesIO(b"x")) is None
    assert counted_sizes(CountedBody(b"a\nb\r\n")) == (5, 6)

    class Odd(io.BytesIO):
        counted = "not sizes"

    assert counted_sizes(Odd(b"")) is None


def test_crlf_to_lf_then_counted() -> None:
    data = b"a\r\nb\r\n\r\nc"
    lf = CrlfToLf(io.BytesIO(data)).read()
    assert lf == b"a\nb\n\nc"
    assert CountedBody(lf).counted == (len(lf), len(data))


def test_dbox_writer_takes_the_counted_size(tmp_path) -> None:
    class Claimed(io.BytesIO):
        counted = (3, 99)  # a writer that scanned the bytes would find 4

    fd = os.open(tmp_path / "m", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert dbox.write_message(fd, Claimed(b"a\nb"), {}) == (3, 99)
    finally:
        os.close(fd)


def test_dbox_writer_counts_a_body_read_before(tmp_path) -> None:
    body = CountedBody(b"x\ny\nz\r\n")
    body.read(2)  # the counted sizes no longer describe what is left
    fd = os.open(tmp_path / "m", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert dbox.write_message(fd, body, {}) == (5, 6)  # "y\nz\r\n": one bare LF
    finally:
        os.close(fd)


@given(line_bytes, st.lists(st.integers(min_value=0, max_value=60), max_size=6))
def test_chunks_counted_apart_add_up_in_order(data: bytes, cuts: list[int]) -> None:
    """What a fetching thread counts of each chunk on its own, added in order, is the
    count of the whole (a CRLF split over two chunks is not a bare LF)."""
    bounds = [0, *sorted(c for c in cuts if c <= len(data)), len(data)]
    pieces = [chunk_line_ends(data[a:b]) for a, b in zip(bounds, bounds[1:])]
    ends = LineEnds()
    for piece in pieces:
        ends.add(piece)
    assert ends.bare_lf == _bare_lf(data)


def test_chunk_line_ends_of_a_split_crlf() -> None:
    assert chunk_line_ends(b"") is None
    assert chunk_line_ends(b"a\r") == (0, False, True)
    assert chunk_line_ends(b"\nb\n") == (2, True, False)
    ends = LineEnds()
    ends.add(chunk_line_ends(b"a\r"))
    ends.add(chunk_line_ends(b"\nb\n"))
    assert ends.bare_lf == 1


class _SelfCounting(io.BytesIO):
    """A stream that counts as it is read: its sizes are known at its end only."""

    counts_as_read = True

    def __init__(self, data: bytes, claimed: tuple[int, int]) -> None:
        super().__init__(data)
        self.claimed = claimed

    @property
    def counted(self) -> tuple[int, int] | None:
        return self.claimed if self.tell() == len(self.getvalue()) else None


def _copy(body: io.BytesIO, sizes: BodySizes) -> None:
    while chunk := body.read(4):
        sizes.feed(chunk)


def test_body_sizes_takes_a_self_counted_body_at_its_end() -> None:
    body = _SelfCounting(b"a\nb\r\nc", claimed=(6, 70))  # 70: proves the bytes were not scanned
    sizes = BodySizes(body)
    _copy(body, sizes)
    assert sizes.result() == (6, 70)


def test_body_sizes_of_a_body_read_before_is_unknown() -> None:
    body = _SelfCounting(b"a\nb\r\nc", claimed=(6, 7))
    body.read(2)
    sizes = BodySizes(body)
    _copy(body, sizes)
    assert sizes.result() is None  # the writer must count its copy


def test_body_sizes_counts_a_plain_stream_and_can_skip_counting() -> None:
    for count, want in ((True, (6, 7)), (False, (6, 6))):
        body = io.BytesIO(b"a\nb\r\nc")
        sizes = BodySizes(body, count=count)
        _copy(body, sizes)
        assert sizes.result() == want
