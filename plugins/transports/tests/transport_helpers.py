"""Shared helpers of the transport tests: Maildirs for a passwd-file user, running the dsync
CLI, a `dsync server --listen` (a module with a name of its own: several test folders have a
conftest.py, and ``from conftest import`` would take whichever was loaded last).

Every server a test starts runs with a passwd-file userdb in the test's directory (never
a real user's home) and is stopped by its pid.
"""

from __future__ import annotations

import hashlib
import io
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

pytest.importorskip("dsync_maildir")

from dsync_core.api import open_storage  # noqa: E402
from dsync_core.model import SaveRequest  # noqa: E402

USER = "tester"


def msg(subject: str, size: int = 0) -> bytes:
    pad = ("y" * 70 + "\n") * (size // 71)
    return f"From: a@example.org\nSubject: {subject}\nMessage-ID: <{subject}@t>\n\nbody {subject}\n{pad}".encode()


def put(loc: str, mailbox: str, *subjects: str, size: int = 0) -> None:
    with open_storage(loc) as st:
        if mailbox not in {i.name for i in st.list_mailboxes()}:
            st.create_mailbox(mailbox)
        with st.open_mailbox(mailbox) as box:
            box.save([SaveRequest(body=io.BytesIO(msg(s, size)), internaldate=1_705_314_600) for s in subjects])


def content(loc: str) -> dict[str, list[str]]:
    """Mailbox -> sorted body digests (with flags) of its messages; {} if nothing there."""
    path = loc.split(":", 1)[1]
    if not os.path.isdir(path):
        return {}
    out: dict[str, list[str]] = {}
    with open_storage(loc) as st:
        for info in st.list_mailboxes():
            if not info.selectable:
                continue
            with st.open_mailbox(info.name) as box:
                items = []
                for r in box.records():
                    with box.open_body(r.uid) as f:
                        items.append(hashlib.sha1(f.read()).hexdigest()[:12] + "/" + ",".join(sorted(r.flags)))
                out[info.name] = sorted(items)
    return out


def subjects(loc: str) -> set[str]:
    path = loc.split(":", 1)[1]
    if not os.path.isdir(path):
        return set()
    out = set()
    with open_storage(loc) as st:
        for info in st.list_mailboxes():
            if not info.selectable:
                continue
            with st.open_mailbox(info.name) as box:
                for r in box.records():
                    with box.open_body(r.uid) as f:
                        for line in f.read().decode().splitlines():
                            if line.startswith("Subject: "):
                                out.add(f"{info.name}/{line[9:]}")
    return out


@attrs.define
class Env:
    """A passwd-file user with a home; ``local`` and ``remote`` Maildir locations in it."""

    root: Path
    users: Path
    home: Path
    local: str
    remote: str

    def base_args(self) -> list[str]:
        return ["-o", f"userdb=passwd-file:{self.users}"]

    def server_argv(self, *extra: str) -> list[str]:
        """The `dsync server` command for this user (the remote side's own configuration)."""
        return [sys.executable, "-m", "dsync_core", *self.base_args(), "-o", "mail_location=maildir:%h/remote",
                *extra, "server"]

    def dsync(self, *argv: str, timeout: float = 120, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        cmd = [sys.executable, "-m", "dsync_core", *self.base_args(), "-o", f"mail_location={self.local}", *argv]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        return p.returncode, p.stdout, p.stderr


@pytest.fixture
def env(tmp_path: Path) -> Env:
    home = tmp_path / "home"
    home.mkdir()
    users = tmp_path / "users"
    users.write_text(f"{USER}:x::::{home}::\n")
    return Env(tmp_path, users, home, f"maildir:{home}/local", f"maildir:{home}/remote")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


class Listener:
    """`dsync server --listen 127.0.0.1:0` as a child process."""

    def __init__(self, env: Env, *settings: str) -> None:
        argv = [*env.server_argv(*settings), "--listen", "127.0.0.1:0"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        if "listening on" not in line:
            self.stop()
            raise AssertionError(f"dsync server --listen did not start: {line}")
        self.port = int(line.split("listening on ", 1)[1].split()[0].rsplit(":", 1)[1])

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()  # by its pid
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        assert self.proc.stderr is not None
        return self.proc.stderr.read()


@pytest.fixture
def listener(env: Env) -> Iterator[Any]:
    started: list[Listener] = []

    def start(*settings: str) -> Listener:
        lst = Listener(env, *settings)
        started.append(lst)
        return lst

    yield start
    for lst in started:
        lst.stop()


def shell_join(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)
