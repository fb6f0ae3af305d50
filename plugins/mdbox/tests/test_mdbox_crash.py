"""mdbox under crashes and concurrency, judged by a real Dovecot.

* ``dsync backup maildir -> mdbox`` SIGKILLed at seeded points while it writes (once a
  random share of the message data is on disk): each time Dovecot opens the store without a warning, and the next run completes
  with the destination equal to the source (no message lost or duplicated).
* ``dsync sync maildir <-> mdbox`` while Dovecot delivers into the mdbox INBOX
  (``doveadm save`` in a loop, Dovecot's own map and mailbox locking against ours): every
  delivered message ends up on both sides exactly once.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

from dbox_helpers import compare

from dsync_core.api import open_storage
from dsync_core.model import SaveRequest
from dsync_core.settings import Settings

BOXES = {"INBOX": 400, "Archive/2024": 250, "Entwürfe": 150}
SEED = int(os.environ.get("DSYNC_CRASH_SEED") or 20241124)
RUNS = int(os.environ.get("DSYNC_CRASH_RUNS") or 5)


def _body(box: str, n: int) -> bytes:
    return (f"From: x@example.org\nSubject: {box} {n}\nMessage-ID: <{n}.{len(box)}@example.org>\n\n"
            + f"body {n}\n" * (20 + n % 50)).encode()


def _make_source(root: str) -> str:
    loc = f"maildir:{root}:LAYOUT=fs"
    st = open_storage(loc, Settings())
    try:
        for box, count in BOXES.items():
            if box != "INBOX":
                st.create_mailbox(box)
            with st.open_mailbox(box) as m:
                m.save([SaveRequest(io.BytesIO(_body(box, n)), flags=frozenset({"\\Seen"} if n % 3 else set()),
                                    keywords=frozenset({"work"} if n % 5 == 0 else set()))
                        for n in range(count)])
    finally:
        st.close()
    return loc


def _cmd(src: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "dsync_core", "-o", f"mail_location={src}", *args]


def _run_to_end(cmd: list[str], home: str) -> None:
    for _ in range(4):
        proc = subprocess.run(cmd, capture_output=True, timeout=300, env=dict(os.environ, HOME=home))
        if proc.returncode == 0:
            return
        assert proc.returncode == 2, proc.stderr.decode()
    raise AssertionError(f"{cmd}: still exit 2 after 4 runs")


def _by_mailbox(doveadm, loc: str) -> dict[str, Counter]:  # type: ignore[no-untyped-def, type-arg]
    out: dict[str, Counter] = {}  # type: ignore[type-arg]
    for r in doveadm.json(loc, "fetch", "mailbox hdr.message-id flags", "all"):
        flags = frozenset(r["flags"].split()) - {"\\Recent"}
        out.setdefault(r["mailbox"], Counter())[(r["hdr.message-id"], flags)] += 1
    return out


def _data_size(root: str) -> int:
    """Bytes of message data written so far (``m.*`` files and their temporary names)."""
    try:
        names = os.listdir(os.path.join(root, "storage"))
    except FileNotFoundError:
        return 0
    size = 0
    for n in names:
        if n.startswith(("m.", ".temp.")):
            with contextlib.suppress(FileNotFoundError):
                size += os.path.getsize(os.path.join(root, "storage", n))
    return size


def test_backup_killed_then_completed(doveadm) -> None:  # type: ignore[no-untyped-def]
    base = doveadm.base
    doveadm.chown(base)
    src = _make_source(os.path.join(base, "Maildir"))
    doveadm.chown(base)
    want = _by_mailbox(doveadm, src)
    rng = random.Random(SEED)
    env = dict(os.environ, HOME=base)
    # An uninterrupted run tells how many bytes of m.* files a complete copy has.
    _run_to_end(_cmd(src, "backup", f"mdbox:{base}/timing"), base)
    total = _data_size(f"{base}/timing")
    dst = f"mdbox:{base}/mdbox"
    killed = 0
    for i in range(RUNS):
        # Killed once the run has written a random share of what is still missing: always
        # in the middle of writing message data, index or map records.
        start = _data_size(f"{base}/mdbox")
        target = start + rng.uniform(0.05, 0.9) * max(total - start, 0)
        proc = subprocess.Popen(_cmd(src, "backup", dst), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while proc.poll() is None and _data_size(f"{base}/mdbox") <= target and time.monotonic() < deadline:
            time.sleep(0.002)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            killed += 1
        proc.wait()
        if not os.path.isdir(f"{base}/mdbox"):
            continue
        doveadm.chown(base)
        # Dovecot opens what the killed run left without a warning (doveadm.run checks).
        doveadm.json(dst, "mailbox", "status", "messages uidnext guid", "*")
        doveadm.json(dst, "fetch", "mailbox uid guid flags", "all")
        if i % 2:
            # Dovecot's own writes in between: a delivery and a purge.
            doveadm.run(dst, "save", "-m", "INBOX", input=b"Subject: in between\n\nx\n")
            doveadm.run(dst, "purge")
    assert killed, "no run was killed: the delays are too long"
    _run_to_end(_cmd(src, "backup", dst), base)
    doveadm.chown(base)
    assert _by_mailbox(doveadm, dst) == want
    compare(doveadm, dst)
    doveadm.run(dst, "purge")
    assert doveadm.json(f"mdbox_deleted:{base}/mdbox", "fetch", "mailbox guid", "all") == []
    assert _by_mailbox(doveadm, dst) == want


def test_sync_while_dovecot_delivers(doveadm) -> None:  # type: ignore[no-untyped-def]
    base = doveadm.base
    doveadm.chown(base)
    src = _make_source(os.path.join(base, "Maildir"))
    dst = f"mdbox:{base}/mdbox"
    doveadm.chown(base)
    _run_to_end(_cmd(src, "sync", dst), base)
    doveadm.chown(base)
    # More mail at the source, so that the next sync has work to do while Dovecot delivers.
    st = open_storage(src, Settings())
    try:
        with st.open_mailbox("INBOX") as m:
            m.save([SaveRequest(io.BytesIO(_body("more", n))) for n in range(100, 200)])
    finally:
        st.close()
    doveadm.chown(base)
    delivered: list[str] = []
    errors: list[BaseException] = []

    def deliver() -> None:
        try:
            for n in range(15):
                mid = f"<delivered-{n}@example.org>"
                doveadm.run(dst, "save", "-m", "INBOX",
                            input=f"Subject: delivery {n}\nMessage-ID: {mid}\n\nhello\n".encode())
                delivered.append(mid)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    t = threading.Thread(target=deliver)
    t.start()
    try:
        runs = 0
        while t.is_alive() or runs < 2:  # syncs for as long as Dovecot delivers
            _run_to_end(_cmd(src, "sync", dst), base)
            doveadm.chown(base)
            runs += 1
    finally:
        t.join(timeout=300)
    assert not errors, errors[0]
    assert len(delivered) == 15
    _run_to_end(_cmd(src, "sync", dst), base)
    doveadm.chown(base)
    compare(doveadm, dst)
    for loc in (src, dst):
        inbox = Counter(r["hdr.message-id"] for r in doveadm.json(loc, "fetch", "mailbox hdr.message-id", "all")
                        if r["mailbox"] == "INBOX")
        assert all(inbox[mid] == 1 for mid in delivered), (loc, inbox)
        assert max(inbox.values()) == 1, loc
    assert _by_mailbox(doveadm, src) == _by_mailbox(doveadm, dst)
    uids = [r["uid"] for r in doveadm.json(dst, "fetch", "mailbox uid", "all") if r["mailbox"] == "INBOX"]
    assert len(uids) == len(set(uids))
