"""Progress of a sync run for people: an in-place line on a terminal, log lines with ``-v``.

:class:`ProgressPrinter` is a callable taking :class:`~dsync_core.model.ProgressEvent`, so
it plugs straight into ``sync(..., progress=printer)``. On a terminal it redraws one line
with ``\\r``; when the stream is not a terminal (a pipe, a log file, cron) or with ``-q`` it
draws nothing, so no control characters end up in logs. ``-v`` adds an Info line per
mailbox through the ``dsync`` logger; ``-D`` a Debug line per event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TextIO

from .model import ProgressEvent

log = logging.getLogger("dsync.progress")

_BAR = 20


def is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def render_line(mailbox: str, done: int, total: int, boxes_done: int, boxes_total: int, width: int = 80) -> str:
    """``INBOX [#####.....] 12/40 msgs  mailbox 3/10``, cut to ``width`` columns."""
    if total > 0:
        filled = min(_BAR, done * _BAR // total)
        bar = "[" + "#" * filled + "." * (_BAR - filled) + "]"
        msgs = f"{done}/{total} msgs"
    else:
        bar = "[" + "." * _BAR + "]"
        msgs = f"{done} msgs"
    mailbox = mailbox or "(mailbox list)"  # before the first mailbox: the folder tree is being synced
    tail = f" {bar} {msgs}  mailbox {boxes_done}/{boxes_total}"
    room = max(8, width - 1 - len(tail))
    name = mailbox if len(mailbox) <= room else "…" + mailbox[-(room - 1):]
    # Control characters in a name must not move the cursor.
    name = "".join(c if c >= " " and c != "\x7f" else "?" for c in name)
    return name + tail


class ProgressPrinter:
    """Draws progress on ``stream`` (normally stderr) when it is a terminal.

    ``tty`` overrides the terminal check (tests); ``quiet`` turns drawing off;
    ``verbose`` logs a line per finished mailbox; ``interval`` limits redraws per second.
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        quiet: bool = False,
        verbose: bool = False,
        tty: bool | None = None,
        width: int | None = None,
        interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        user: str = "",
    ) -> None:
        self.stream = stream
        self.draw = (is_tty(stream) if tty is None else tty) and not quiet
        self.verbose = verbose
        self.width = width
        self.interval = interval
        self.clock = clock
        self.user = user
        self._last_draw = -1e9
        self._shown = False
        self._mailbox = ""
        self._done = 0
        self._total = 0
        self._boxes_done = 0
        self._boxes_total = 0
        self._box_messages = 0

    def _columns(self) -> int:
        if self.width:
            return self.width
        try:
            import os

            return os.get_terminal_size(self.stream.fileno()).columns or 80  # a fresh pty says 0
        except (OSError, AttributeError, ValueError):
            return 80

    def clear(self) -> None:
        """Remove the progress line (before a log line is printed, and at the end)."""
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False

    def _redraw(self, force: bool = False) -> None:
        if not self.draw:
            return
        now = self.clock()
        if not force and now - self._last_draw < self.interval:
            return
        self._last_draw = now
        line = render_line(self._mailbox, self._done, self._total, self._boxes_done, self._boxes_total,
                           self._columns())
        self.stream.write("\r" + line + "\x1b[K")
        self.stream.flush()
        self._shown = True

    def _log(self, level: int, msg: str, *args: object) -> None:
        if not log.isEnabledFor(level):
            return
        self.clear()
        log.log(level, msg, *args)

    def __call__(self, event: ProgressEvent) -> None:
        self._log(logging.DEBUG, "progress: %s mailbox=%s %d/%d mailboxes %d/%d", event.kind, event.mailbox,
                  event.done, event.total, event.mailboxes_done, event.mailboxes_total)
        if event.mailboxes_total:
            self._boxes_total = event.mailboxes_total
        self._boxes_done = max(self._boxes_done, event.mailboxes_done)
        kind = event.kind
        if kind == "run_start":
            self._redraw(force=True)
        elif kind == "mailbox_start":
            self._mailbox, self._done, self._total = event.mailbox, 0, event.total
            self._box_messages = 0
            self._redraw(force=True)
        elif kind == "messages":
            self._mailbox = event.mailbox or self._mailbox
            self._done, self._total = event.done, event.total
            self._box_messages = max(self._box_messages, event.done)
            self._redraw()
        elif kind == "mailbox_done":
            name = event.mailbox or self._mailbox
            done = max(event.done, self._box_messages)
            total = event.total or self._total
            if self.verbose:
                self._log(logging.INFO, "%s: synced, %d/%d messages handled", name, done, total)
            self._redraw(force=True)
        elif kind == "run_done":
            self.clear()


__all__ = ["ProgressPrinter", "render_line", "is_tty"]
