"""Crash safety: ``dsync sync|backup`` SIGKILLed at random points, then run again.

Two Maildirs share history (a first sync), then both change: new mail on both sides into
the same mailboxes (so UIDs collide and must be renumbered), flag and keyword changes,
expunges and a rename on one side. Each case starts from a copy of that setup, runs the
command as a subprocess, kills it with SIGKILL after a random delay (seeded; spread over
the measured length of an uninterrupted run), then runs the same command again until it
exits 0 (2 means "run again"). Afterwards the usual invariants must hold: two-way sync
leaves both sides identical (mailbox names and GUIDs, UIDs, message GUIDs, flags,
keywords); backup leaves the destination equal to the source; no message is lost or
duplicated (counted by message GUID per mailbox), and the outcome equals the one of an
uninterrupted run. When doveadm is installed, Dovecot must read the result without a
warning.

``DSYNC_CRASH_RUNS`` (default 7) is the number of kills per case; ``DSYNC_CRASH_SEED``
changes the seed.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from dsync_core.api import open_storage
from dsync_core.model import FlagUpdate, SaveRequest
from dsync_core.settings import Settings
from dsync_core.storage import Storage

RUNS = int(os.environ.get("DSYNC_CRASH_RUNS") or 7)
SEED = int(os.environ.get("DSYNC_CRASH_SEED") or 20241124)

# Mailbox -> number of messages saved on side A before the first sync.
BEFORE = {"INBOX": 12, "Archive": 2, "Archive/2024": 10, "Entwürfe": 8, "Old": 6, "Listen/Ölung": 5}
SYSTEM = ["\\Seen", "\\Flagged", "\\Answered", "\\Draft"]
KEYWORDS = ["$Forwarded", "work", "Später"]


def _body(tag: str, n: int) -> bytes:
    return (
        f"From: {tag}@example.org\nTo: user@example.org\nSubject: {tag} {n}\n"
        f"Message-ID: <{tag}-{n}@example.org>\nDate: Mon, 15 Jan 2024 10:30:00 +0000\n\n"
        + f"body of {tag} {n}\n" * (1 + n % 7)
    ).encode()


def _save(st: Storage, box: str, tag: str, count: int, rng: random.Random) -> list[str]:
    if box not in {i.name for i in st.list_mailboxes() if i.selectable}:
        st.create_mailbox(box)
    reqs = []
    for n in range(count):
        flags = frozenset(f for f in SYSTEM if rng.random() < 0.3)
        kws = frozenset(k for k in KEYWORDS if rng.random() < 0.2)
        reqs.append(SaveRequest(io.BytesIO(_body(f"{tag}-{box}", n)), flags=flags, keywords=kws,
                                internaldate=1_705_314_600 + n))
    with st.open_mailbox(box) as mb:
        return [r.guid for r in mb.save(reqs)]


def _change(st: Storage, box: str, rng: random.Random, *, flags: list[int], expunge: list[int]) -> set[str]:
    """Flag changes on the messages at the positions ``flags``, expunge those at ``expunge``;
    returns the GUIDs expunged."""
    with st.open_mailbox(box) as mb:
        recs = list(mb.records())
        mb.update_flags([
            FlagUpdate(recs[i].uid, add_flags=frozenset({rng.choice(SYSTEM)}),
                       remove_flags=frozenset({rng.choice(SYSTEM)}) - {"\\Seen"},
                       add_keywords=frozenset({rng.choice(KEYWORDS)}))
            for i in flags
        ])
        gone = {recs[i].guid for i in expunge}
        mb.expunge([recs[i].uid for i in expunge])
    return gone


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dsync_core", *args]


def _env(home: Path) -> dict[str, str]:
    return dict(os.environ, HOME=str(home), TZ="UTC", USER="tester")


def _run(cmd: list[str], home: Path, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(cmd, capture_output=True, env=_env(home), timeout=timeout)


def loc(root: Path, side: str) -> str:
    return f"sdbox:{root / side}" if side == "c" else f"maildir:{root / side}:LAYOUT=fs"


def build(root: Path) -> tuple[dict[str, set[str]], set[str]]:
    """Side A (``root/a``) and B (``root/b``) after a first sync and changes on both sides.

    Also C (``root/c``, sdbox): a backup of A taken right after the first sync.
    Returns what must survive a two-way sync (mailbox -> the message GUIDs expected there)
    and the GUIDs B expunged since the first sync.
    """
    rng = random.Random(SEED)
    a_loc, b_loc, c_loc = (loc(root, side) for side in "abc")
    expected: dict[str, set[str]] = {}
    with open_storage(a_loc, Settings()) as a:
        for box, count in BEFORE.items():
            expected[box] = set(_save(a, box, "first", count, rng))
        a.set_subscribed("Entwürfe", True)
    for cmd in ("sync", "backup"):  # the first sync; a first backup into sdbox
        proc = _run(_cli("-o", f"mail_location={a_loc}", cmd, b_loc if cmd == "sync" else c_loc), root)
        assert proc.returncode == 0, proc.stderr.decode()
    with open_storage(a_loc, Settings()) as a, open_storage(b_loc, Settings()) as b:
        # New mail on both sides in the same mailboxes: the same UIDs taken twice.
        for box in ("INBOX", "Archive/2024", "Entwürfe"):
            expected[box] |= set(_save(a, box, "new-a", 5, rng))
            expected[box] |= set(_save(b, box, "new-b", 4, rng))
        # Mailboxes only one side has.
        expected["Nur B/Ünter"] = set(_save(b, "Nur B/Ünter", "only-b", 6, rng))
        expected["Projekte/Ä"] = set(_save(a, "Projekte/Ä", "only-a", 5, rng))
        # Flags on A and B on different messages (no conflicts: the outcome is defined).
        _change(a, "INBOX", rng, flags=[0, 2, 4], expunge=[])
        _change(b, "INBOX", rng, flags=[1, 3, 5], expunge=[])
        # Expunges on one side each.
        expected["INBOX"] -= _change(a, "INBOX", rng, flags=[], expunge=[6, 7])
        expunged_on_b = _change(b, "Archive/2024", rng, flags=[8], expunge=[1, 2, 3])
        expected["Archive/2024"] -= expunged_on_b
        expected["Entwürfe"] -= _change(a, "Entwürfe", rng, flags=[0], expunge=[5])
        # A rename on B.
        b.rename_mailbox("Old", "Renamed/Älter")
        expected["Renamed/Älter"] = expected.pop("Old")
    return expected, expunged_on_b


Message = tuple[int, str, frozenset[str], frozenset[str]]


def snapshot(location: str) -> dict[str, tuple[str, list[Message]]]:
    """Mailbox name -> (mailbox GUID, [(UID, message GUID, flags, keywords)])."""
    out: dict[str, tuple[str, list[Message]]] = {}
    with open_storage(location, Settings()) as st:
        for info in st.list_mailboxes():
            if not info.selectable:
                continue
            with st.open_mailbox(info.name) as mb:
                msgs = [(r.uid, r.guid, r.flags - {"\\Recent"}, frozenset(k.lower() for k in r.keywords))
                        for r in mb.records()]
                out[info.name] = (mb.guid, msgs)
    return out


def without_uids(snap: dict[str, tuple[str, list[Message]]]) -> dict[str, tuple[str, list[tuple[object, ...]]]]:
    return {name: (guid, sorted(m[1:] for m in msgs)) for name, (guid, msgs) in snap.items()}


# name -> (arguments after the source's mail_location, destination side)
CASES = {
    "sync": (("sync",), "b"),
    "sync-1": (("sync", "-1"), "b"),
    "backup": (("backup",), "b"),
    "backup-sdbox": (("backup",), "c"),
}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, set[str]], set[str]]:
    root = tmp_path_factory.mktemp("crash-template")
    return (root, *build(root))


def _command(root: Path, case: str) -> list[str]:
    args, dest = CASES[case]
    return _cli("-o", f"mail_location={loc(root, 'a')}", *args, loc(root, dest))


def _to_completion(cmd: list[str], root: Path, what: str, timeout: float = 60) -> float:
    """Run ``cmd`` until it exits 0 (2 means: run again); returns the first run's seconds."""
    first = 0.0
    for _attempt in range(3):
        start = time.monotonic()
        try:
            proc = _run(cmd, root, timeout)
        except subprocess.TimeoutExpired:
            locks = {str(p.relative_to(root)): p.read_bytes()[:64] for p in root.rglob("*.lock")}
            pytest.fail(f"{what}: the re-run did not finish within {timeout:g}s; lock files left: {locks}")
        first = first or time.monotonic() - start
        err = proc.stderr.decode("utf-8", "replace")
        assert "Traceback" not in err, f"{what}: {err}"
        if proc.returncode == 0:
            return first
        assert proc.returncode == 2, f"{what}: exit {proc.returncode}: {err}"
    pytest.fail(f"{what}: still exit 2 after 3 runs: {err}")


def _killed(cmd: list[str], root: Path, delay: float) -> bool:
    """Start ``cmd``, SIGKILL it after ``delay`` seconds; False if it had already finished."""
    proc = subprocess.Popen(cmd, env=_env(root), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


def check(root: Path, case: str, before: dict[str, dict], expected: dict[str, set[str]], what: str) -> dict:
    """The case's invariants; returns the outcome without UIDs (to compare runs)."""
    _args, dest = CASES[case]
    src, dst = snapshot(loc(root, "a")), snapshot(loc(root, dest))
    for side, snap in (("source", src), ("destination", dst)):
        for name, (_guid, msgs) in snap.items():
            dups = [g for g, n in Counter(m[1] for m in msgs).items() if n > 1]
            assert not dups, f"{what}: {side} {name}: duplicated messages {dups}"
            uids = [m[0] for m in msgs]
            assert len(set(uids)) == len(uids), f"{what}: {side} {name}: duplicate UIDs"
    if case == "sync":
        assert src == dst, f"{what}: the two sides differ after a two-way sync"
        got = {name: {m[1] for m in msgs} for name, (_g, msgs) in src.items()}
        assert got == expected, f"{what}: messages lost or misplaced"
    elif case == "sync-1":
        assert src == before["a"], f"{what}: sync -1 changed the source"
        by_guid = {guid: msgs for guid, msgs in dst.values()}
        for name, (guid, msgs) in src.items():
            assert guid in by_guid, f"{what}: mailbox {name} missing on the destination"
            missing = {m[1] for m in msgs} - {m[1] for m in by_guid[guid]}
            # What the destination expunged itself may stay expunged there; nothing else.
            assert not missing - before["expunged_on_b"], f"{what}: {name}: messages lost {missing}"
    else:
        assert src == before["a"], f"{what}: backup changed the source"
        assert dst == src, f"{what}: the destination is not equal to the source"
    return {"src": without_uids(src), "dst": without_uids(dst)}


def _dovecot_reads(request: pytest.FixtureRequest, root: Path, sides: str, what: str) -> None:
    """Dovecot reads each side without a warning and sees what we see."""
    from dsync_core.testing.dovecot import DOVEADM

    if DOVEADM is None and not os.environ.get("CI"):
        return  # this half needs doveadm; without it in CI, the fixture fails the test
    doveadm = request.getfixturevalue("doveadm")
    for side in sides:
        copy = Path(doveadm.base) / f"{root.name}-{side}"  # a mail root the mail user can read
        shutil.copytree(root / side, copy, symlinks=True)
        doveadm.chown(str(copy))
        location = f"sdbox:{copy}" if side == "c" else f"maildir:{copy}:LAYOUT=fs"
        ours = {
            (name, uid): (guid, frozenset(f.lower() for f in flags | kws))
            for name, (_g, msgs) in snapshot(location).items()
            for uid, guid, flags, kws in msgs
        }
        assert ours, f"{what}: side {side} is empty"
        theirs = {k: (g, frozenset(f.lower() for f in fl)) for k, (g, fl) in doveadm.fetch(location).items()}
        assert theirs == ours, f"{what}: Dovecot reads side {side} differently"


@pytest.mark.parametrize("case", list(CASES))
def test_killed_run_then_rerun_keeps_invariants(case: str, template, tmp_path: Path,
                                                request: pytest.FixtureRequest) -> None:
    troot, expected, expunged_on_b = template
    seed = SEED + list(CASES).index(case)
    rng = random.Random(seed)

    def fresh(name: str) -> Path:
        root = tmp_path / name
        shutil.copytree(troot, root, symlinks=True)
        return root

    # An uninterrupted run: how long a run takes, and the outcome every killed one must reach.
    root = fresh("reference")
    before = {"a": snapshot(loc(root, "a")), "expunged_on_b": expunged_on_b}
    duration = _to_completion(_command(root, case), root, f"{case}: uninterrupted run")
    reference = check(root, case, before, expected, f"{case}: uninterrupted run")
    root = fresh("timing")  # the first run also wrote .pyc files: time a second one too
    duration = min(duration, _to_completion(_command(root, case), root, f"{case}: uninterrupted run"))

    kills = 0
    for i in range(RUNS):
        root = fresh(f"run{i}")
        cmd = _command(root, case)
        # Spread over the run; Python's start-up (the first ~third) changes nothing on disk.
        delay = rng.uniform(0.3, 0.97) * duration
        what = f"{case}: seed {seed}, kill {i} after {delay:.3f}s (uninterrupted run {duration:.3f}s)"
        kills += _killed(cmd, root, delay)
        _to_completion(cmd, root, what)
        assert check(root, case, before, expected, what) == reference, f"{what}: outcome differs from an uninterrupted run"
    _dovecot_reads(request, root, "a" + CASES[case][1], what)
    # Most delays must land inside the run, or this test tests nothing.
    assert kills >= RUNS // 2, f"{case}: only {kills} of {RUNS} kills hit a running process"


def test_rerun_after_kill_while_creating_a_dotlock(template, tmp_path: Path) -> None:
    # The kill point the random runs hit now and then, made certain: a process killed
    # between creating its dotlock (O_EXCL) and writing "<pid>:<host>" into it leaves an
    # empty lock file. Nobody owns it; the next run must not stall on it until its mtime
    # is 120 s old.
    troot, expected, _ = template
    root = tmp_path / "root"
    shutil.copytree(troot, root, symlinks=True)
    (root / "a" / "Archive" / "2024" / "dovecot-uidlist.lock").touch()
    what = "sync after a kill that left an empty Archive/2024/dovecot-uidlist.lock"
    _to_completion(_command(root, "sync"), root, what, timeout=10)
    check(root, "sync", {}, expected, what)


@pytest.mark.parametrize("case", ["backup", "sync"])
def test_mailbox_directory_gone_but_its_change_log_kept(case: str, template, tmp_path: Path,
                                                         request: pytest.FixtureRequest) -> None:
    # A kill between removing a mailbox's directory and dropping its change log (or a
    # mailbox deleted by Dovecot behind our back) leaves a log for a GUID that has no
    # mailbox. When the mailbox comes back with that GUID (backup re-creates it from the
    # source), the stale log must not describe the new one: Dovecot's index built from it
    # would list messages that aren't there and call the ones that are "expunged, reappeared".
    troot, expected, expunged_on_b = template
    root = tmp_path / "root"
    shutil.copytree(troot, root, symlinks=True)
    before = {"a": snapshot(loc(root, "a")), "expunged_on_b": expunged_on_b}
    shutil.rmtree(root / "b" / "Archive" / "2024")
    what = f"{case} after B's Archive/2024 directory went without its change log"
    _to_completion(_command(root, case), root, what)
    if case == "sync":
        # B's deletion wasn't logged (its new mail went with the directory): two-way sync
        # brings A's mailbox back to B as it is on A.
        expected = {**expected, "Archive/2024": {m[1] for m in before["a"]["Archive/2024"][1]}}
    check(root, case, before, expected, what)
    _dovecot_reads(request, root, "ab", what)
