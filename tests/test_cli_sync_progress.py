"""Progress output: drawn in place on a terminal, silent on pipes and with -q, Info lines with -v."""

from __future__ import annotations

import io
import logging
import os
import pty
import select

import pytest

from dsync_core.model import ProgressEvent
from dsync_core.progress import ProgressPrinter, render_line


@pytest.fixture(autouse=True)
def _quiet_dsync_logger():  # type: ignore[no-untyped-def]
    # An earlier `dsync -D` in this process leaves the "dsync" logger at DEBUG; with debug
    # logging the printer clears its line for every event, which these tests do not expect.
    logger = logging.getLogger("dsync")
    old = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(old)


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _events() -> list[ProgressEvent]:
    return [
        ProgressEvent("run_start", mailboxes_total=2),
        ProgressEvent("mailbox_start", mailbox="INBOX", total=4, mailboxes_total=2),
        ProgressEvent("messages", mailbox="INBOX", done=2, total=4, mailboxes_total=2),
        ProgressEvent("messages", mailbox="INBOX", done=4, total=4, mailboxes_total=2),
        ProgressEvent("mailbox_done", mailbox="INBOX", done=4, total=4, mailboxes_done=1, mailboxes_total=2),
        ProgressEvent("mailbox_start", mailbox="Archive/2024", total=0, mailboxes_done=1, mailboxes_total=2),
        ProgressEvent("mailbox_done", mailbox="Archive/2024", mailboxes_done=2, mailboxes_total=2),
        ProgressEvent("run_done", mailboxes_done=2, mailboxes_total=2),
    ]


def test_render_line() -> None:
    assert render_line("INBOX", 5, 10, 1, 3) == "INBOX [##########..........] 5/10 msgs  mailbox 1/3"
    assert render_line("X", 0, 0, 0, 1) == "X [....................] 0 msgs  mailbox 0/1"
    long = render_line("a/" * 60 + "end", 1, 2, 1, 1, width=60)
    assert len(long) <= 59 and long.startswith("…") and "end [" in long
    assert "\x1b" not in render_line("evil\x1b[2Jname", 0, 1, 0, 1)


def test_tty_draws_in_place_and_clears_at_end() -> None:
    out = FakeTty()
    p = ProgressPrinter(out, width=80, interval=0)
    for e in _events():
        p(e)
    text = out.getvalue()
    assert "\rINBOX [##########..........] 2/4 msgs  mailbox 0/2" in text
    assert "\rINBOX [####################] 4/4 msgs  mailbox 1/2" in text
    assert "\rArchive/2024 [" in text and "mailbox 2/2" in text
    assert "\n" not in text  # one line, redrawn with \r
    assert text.endswith("\r\x1b[K")  # the line is gone when the run is done


def test_redraws_are_throttled() -> None:
    now = [0.0]
    out = FakeTty()
    p = ProgressPrinter(out, width=80, interval=1.0, clock=lambda: now[0])
    p(ProgressEvent("mailbox_start", mailbox="INBOX", total=1000, mailboxes_total=1))
    for i in range(1, 500):
        p(ProgressEvent("messages", mailbox="INBOX", done=i, total=1000, mailboxes_total=1))
    assert out.getvalue().count("\r") == 1
    now[0] = 2.0
    p(ProgressEvent("messages", mailbox="INBOX", done=500, total=1000, mailboxes_total=1))
    assert out.getvalue().count("\r") == 2 and "500/1000" in out.getvalue()


@pytest.mark.parametrize("stream", [io.StringIO(), FakeTty()])
def test_silent_when_not_a_tty_or_quiet(stream: io.StringIO) -> None:
    p = ProgressPrinter(stream, quiet=isinstance(stream, FakeTty), interval=0)
    for e in _events():
        p(e)
    assert stream.getvalue() == ""


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_verbose_logs_a_line_per_mailbox() -> None:
    out = FakeTty()
    p = ProgressPrinter(out, verbose=True, width=80, interval=0)
    # The CLI's "dsync" logger does not propagate to the root, so listen on it directly.
    logger = logging.getLogger("dsync.progress")
    handler = _Records()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        for e in _events():
            p(e)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    infos = [r.getMessage() for r in handler.records if r.levelno == logging.INFO]
    assert infos == ["INBOX: synced, 4/4 messages handled", "Archive/2024: synced, 0/0 messages handled"]
    assert "\r\x1b[K" in out.getvalue()  # the bar was cleared before each log line


def test_real_pseudo_terminal() -> None:
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as stream:
            p = ProgressPrinter(stream, interval=0)
            assert p.draw
            for e in _events()[:3]:
                p(e)
        data = ""
        while select.select([master], [], [], 0.5)[0]:
            chunk = os.read(master, 4096)
            if not chunk:
                break
            data += chunk.decode()
            if "2/4 msgs" in data:
                break
        assert "\r(mailbox list) [....................] 0 msgs  mailbox 0/2" in data
        assert "INBOX [##########..........] 2/4 msgs" in data
    finally:
        os.close(master)
        os.close(slave)
    with open(os.devnull, "w") as devnull:
        assert not ProgressPrinter(devnull).draw
