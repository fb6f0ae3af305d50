"""Loopback servers for the imapc tests: :class:`Listener` (accept loop on a free port),
and a proxy in front of the test Dovecot that misbehaves on purpose (for the
hostile-server and APPEND tests): answers the first body fetch itself, resets the
connection, rewrites sizes or capabilities."""

from __future__ import annotations

import re
import socket
import struct
import threading

HUGE = b"* 1 FETCH (UID 1 BODY[]<0> {99999999999}\r\n"


def reset_close(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashing server or middlebox does. The
    last close sends it: SHUT_RD wakes a thread reading the socket, which then closes."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    sock.close()


def send_until_closed(sock: socket.socket, head: bytes, unit: bytes, cap: int) -> None:
    """Send ``head`` then ``unit`` over and over until the peer gives up (or ``cap`` bytes)."""
    sent = 0
    try:
        sock.sendall(head)
        while sent < cap:
            sock.sendall(unit)
            sent += len(unit)
    except OSError:
        pass


class Listener:
    """A TCP listener on a free 127.0.0.1 port that hands each connection to
    :meth:`handle` on a thread of its own; :meth:`close` stops it. Subclasses set their
    attributes before calling ``super().__init__()``: a connection may come at once."""

    def __init__(self, backlog: int = 8) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        self.threads: list[threading.Thread] = []
        self.start_thread(self._accept)

    def start_thread(self, target, *args) -> None:  # type: ignore[no-untyped-def]
        t = threading.Thread(target=target, args=args, daemon=True)
        t.start()
        self.threads.append(t)

    def _accept(self) -> None:
        while True:
            try:
                cl, _ = self.sock.accept()
            except OSError:
                return
            self.start_thread(self.handle, cl)

    def handle(self, cl: socket.socket) -> None:
        raise NotImplementedError

    def close(self, join: bool = False) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread in accept(); close alone does not
        except OSError:
            pass
        self.sock.close()
        if join:
            for t in self.threads:
                t.join(timeout=10)


class HostileProxy(Listener):
    """Forwards to Dovecot; the first command fetching bodies gets ``mode``'s answer
    (``huge-literal``, ``endless-line``, ``flood``, ``garbage``, ``reset``), or every answer
    is rewritten (``small-sizes``: RFC822.SIZE 100; ``no-literal-plus``: no LITERAL+), or
    nothing is done (``pass``: only APPEND lines are recorded)."""

    REWRITES = {
        "small-sizes": (re.compile(rb"RFC822\.SIZE \d+"), b"RFC822.SIZE 100"),
        "no-literal-plus": (re.compile(rb" LITERAL[+-]"), b""),
    }

    def __init__(self, port: int, mode: str) -> None:
        self.target = port
        self.mode = mode
        self.fired = threading.Event()
        self.appends: list[bytes] = []  # APPEND command lines seen
        self.lock = threading.Lock()
        super().__init__(16)

    def handle(self, cl: socket.socket) -> None:
        up = socket.create_connection(("127.0.0.1", self.target))
        state = {"hostile": False, "reset_after": -1}
        self.start_thread(self._commands, cl, up, state)
        self._answers(up, cl, state)

    def _commands(self, cl: socket.socket, up: socket.socket, state: dict) -> None:  # type: ignore[type-arg]
        f = cl.makefile("rb")
        try:
            while line := f.readline():
                with self.lock:
                    if b" APPEND " in line:
                        self.appends.append(line)
                    trigger = (b"BODY.PEEK[]" in line and not self.fired.is_set()
                               and self.mode not in (*self.REWRITES, "pass"))
                    if trigger:
                        self.fired.set()
                if not trigger:
                    up.sendall(line)
                    continue
                if self.mode == "reset":
                    state["reset_after"] = 3000  # some real answer bytes, then a reset
                    up.sendall(line)
                    continue
                state["hostile"] = True  # Dovecot never sees this command
                self._hostile(cl)
                return
        except OSError:
            pass
        finally:
            f.close()  # the socket's last reference: now it really closes
            for s in (cl, up):
                try:
                    s.close()
                except OSError:
                    pass

    def _hostile(self, cl: socket.socket) -> None:
        if self.mode == "huge-literal":
            cl.sendall(HUGE + b"x" * 1000)
            cl.settimeout(60)
            try:
                while cl.recv(65536):  # until the client hangs up
                    pass
            except OSError:
                pass
        elif self.mode == "endless-line":
            send_until_closed(cl, b"* 1 FETCH (UID 1 FLAGS (", b"x" * 65536, 200 * 1024 * 1024)
        elif self.mode == "flood":
            send_until_closed(cl, b"", b"* 1 FETCH (UID 1 FLAGS (\\Seen))\r\n" * 2000, 2 * 1024**3)
        elif self.mode == "garbage":
            cl.sendall(b")(*&^%$ no IMAP here\r\n")
            cl.settimeout(60)
            try:
                while cl.recv(65536):
                    pass
            except OSError:
                pass
        else:
            raise AssertionError(self.mode)

    def _answers(self, up: socket.socket, cl: socket.socket, state: dict) -> None:  # type: ignore[type-arg]
        carry = b""
        try:
            while data := up.recv(65536):
                if self.mode in self.REWRITES:
                    # Rewritten on whole lines (a pattern may straddle two reads).
                    data, carry = carry + data, b""
                    cut = data.rfind(b"\r\n") + 2  # 1 when there is no line end yet
                    if cut == 1:
                        carry = data
                        continue
                    data, carry = data[:cut], data[cut:]
                    pattern, repl = self.REWRITES[self.mode]
                    data, n = pattern.subn(repl, data)
                    if n:
                        self.fired.set()
                if state["hostile"]:
                    continue
                left = state["reset_after"]
                if left >= 0:
                    if len(data) >= left:
                        cl.sendall(data[:left])
                        reset_close(cl)
                        return
                    state["reset_after"] = left - len(data)
                cl.sendall(data)
        except OSError:
            pass
        for s in (up, cl):
            try:
                s.close()
            except OSError:
                pass

    def close(self, join: bool = True) -> None:
        super().close(join)
