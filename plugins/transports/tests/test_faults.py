"""Faults over tcp:: a proxy that cuts the connection at random points (many runs), a peer
that stalls (-T), and peers that send garbage or oversized frames. Every failed run exits
1 with a clear message, loses nothing, and the next run converges."""

from __future__ import annotations

import os
import random
import socket
import struct
import threading
from collections.abc import Iterator

import pytest
from transport_helpers import USER, Env, content, put, subjects

from dsync_core import protocol as p

PW = "pw-faults"


class Proxy:
    """Forwards 127.0.0.1:port to the upstream; after ``limit`` bytes (both directions
    together) it either cuts both connections or stalls them (keeps them open, forwards
    nothing more, closes both once either side hangs up)."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.limit: int | None = None
        self.mode = "cut"
        self.cuts = 0
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            u = socket.create_connection(("127.0.0.1", self.upstream))
            state = {"n": 0, "dead": False}
            lock = threading.Lock()
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pump, args=(a, b, c, u, state, lock), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, c: socket.socket, u: socket.socket,
              state: dict, lock: threading.Lock) -> None:
        def close_both() -> None:
            state["dead"] = True
            for s in (c, u):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            with lock:
                if state["dead"]:
                    return
                if not data:
                    close_both()
                    return
                limit = self.limit
                if limit is not None and state["n"] + len(data) >= limit:
                    if state["n"] < limit:
                        keep = limit - state["n"]
                        state["n"] = limit
                        try:
                            dst.sendall(data[:keep])
                        except OSError:
                            pass
                        self.cuts += 1
                    if self.mode == "cut":
                        close_both()
                        return
                    continue  # stall: swallow everything from now on
                state["n"] += len(data)
                try:
                    dst.sendall(data)
                except OSError:
                    close_both()
                    return

    def close(self) -> None:
        self._stop = True
        self.srv.close()


@pytest.fixture
def proxied(env: Env, listener) -> Iterator[tuple[int, Proxy]]:  # type: ignore[no-untyped-def]
    srv = listener("-o", f"doveadm_password={PW}", "-o", "dsync_server_user_lock_timeout=60")
    proxy = Proxy(srv.port)
    yield srv.port, proxy
    proxy.close()


def _sync(env: Env, port: int, *extra: str) -> tuple[int, str, str]:
    return env.dsync("-o", f"doveadm_password={PW}", "sync", *extra, "-u", USER, f"tcp:127.0.0.1:{port}")


RUNS = int(os.environ.get("DSYNC_FAULT_RUNS", "12"))


def test_connection_cut_at_random_points(env: Env, proxied: tuple[int, Proxy]) -> None:
    direct, proxy = proxied
    rng = random.Random(4)
    wanted: set[str] = set()
    failures = 0
    for i in range(RUNS):
        put(env.local, "INBOX", f"l{i}a", f"l{i}b", size=rng.choice([0, 0, 400_000]))
        put(env.remote, f"Box{i % 3}", f"r{i}", size=rng.choice([0, 300_000]))
        wanted |= {f"INBOX/l{i}a", f"INBOX/l{i}b", f"Box{i % 3}/r{i}"}
        before_l, before_r = subjects(env.local), subjects(env.remote)
        proxy.limit = rng.randrange(20, 600_000)
        cuts = proxy.cuts
        rc, out, err = _sync(env, proxy.port, "-T", "20")
        assert "Traceback" not in err and "internal error" not in err, err
        if proxy.cuts > cuts:
            assert rc == 1, err
            assert "Error:" in err and ("Connection" in err or "closed" in err), err
            failures += 1
        else:
            assert rc in (0, 2), err
        # Nothing lost: a two-way sync without expunges never removes a message.
        assert subjects(env.local) >= before_l
        assert subjects(env.remote) >= before_r
    assert failures >= RUNS // 2  # the proxy really cut most runs
    proxy.limit = None
    for _ in range(3):
        rc, out, err = _sync(env, direct)
        if rc == 0:
            break
    assert rc == 0, err
    assert content(env.local) == content(env.remote)
    assert subjects(env.local) == wanted
    rc, out, err = _sync(env, direct, "-f")
    assert rc == 0 and content(env.local) == content(env.remote)


def test_stalled_peer_ends_with_T(env: Env, proxied: tuple[int, Proxy]) -> None:
    direct, proxy = proxied
    put(env.local, "INBOX", *[f"m{i}" for i in range(20)], size=100_000)
    put(env.remote, "Other", "o1")
    proxy.mode = "stall"
    proxy.limit = 30_000
    rc, out, err = _sync(env, proxy.port, "-T", "1.5")
    assert rc == 1
    assert "I/O has stalled, no activity for 1.5 seconds" in err
    proxy.limit = None
    rc, out, err = _sync(env, direct)
    assert rc == 0, err
    assert content(env.local) == content(env.remote)
    assert len(content(env.remote)["INBOX"]) == 20


def _bad_peer(reply: bytes) -> tuple[int, threading.Thread]:
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def run() -> None:
        c, _ = srv.accept()
        try:
            c.recv(65536)
            c.sendall(reply)
            c.recv(65536)  # until the client hangs up
        except OSError:
            pass
        finally:
            c.close()
            srv.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return port, t


HELLO = p.MAGIC + p.encode_frame(p.HELLO, p.encode_json({"protocol": [1, 0], "hostname": "h",
                                                           "auth": "hmac-sha256", "nonce": "n"}))


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n", "does not speak the dsync-py protocol"),
        (p.MAGIC + struct.pack(">IB", 0x7FFFFFFF, p.HELLO), "Oversized H frame"),
        (HELLO + struct.pack(">IB", 64 << 20, p.ITEMS) + os.urandom(100), "Oversized I frame"),
        (HELLO + os.urandom(64), "frame"),
        (p.MAGIC + p.encode_frame(p.HELLO, p.encode_json({"protocol": [1, 0], "hostname": "h", "auth": "none",
                                                          "nonce": "n"})), "does not authenticate itself"),
        (HELLO + p.encode_frame(p.ANSWER, p.encode_json({"info": {"hostname": "h", "location": "x",
            "have_guids": True, "have_save_guids": True, "have_only_guid128": False, "have_modseqs": True,
            "read_only": False}, "mac": "00"})), "failed to prove it knows doveadm_password"),
    ],
)
def test_garbage_from_the_peer_exits_1(env: Env, reply: bytes, message: str) -> None:
    put(env.local, "INBOX", "x")
    before = content(env.local)
    port, t = _bad_peer(reply)
    rc, out, err = _sync(env, port, "-T", "5")
    assert rc == 1, err
    assert message in err and "Traceback" not in err
    assert content(env.local) == before
    t.join(5)
