"""Our own changes spare the next run a rescan, and nobody else's change is missed.

After we rename or deliver files, an inotify watch (started before our change) tells
whether anything but our own entries moved; the stamp of cur/ and new/ is then kept for
the next process once the directories' timestamp tick is over (two coarse-clock ticks, a
few milliseconds), instead of after RACY_SECONDS. A change by anybody else, during our
change or right after it, must still be found by the next run."""

from __future__ import annotations

import io
import os
import time

import pytest
from dsync_maildir import storage as maildir_storage
from dsync_maildir.racy import RACY_SECONDS, RacyRule, filesystem_type, tick_ns
from dsync_maildir.watch import Watcher
from test_incremental_rescan import MSG, snapshot
from test_storage import age

from dsync_core.api import open_storage
from dsync_core.model import FlagUpdate, SaveRequest
from dsync_core.settings import Settings

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:35 / /srv/mail rw,relatime shared:2 - nfs4 server:/export/mail rw,vers=4.2
41 40 0:36 / /srv/mail/local\\040disk rw,relatime shared:3 - xfs /dev/sdb1 rw
42 22 0:37 / /srv/mailbox rw - tmpfs tmpfs rw
"""


def test_filesystem_type_takes_the_deepest_mount(tmp_path) -> None:  # type: ignore[no-untyped-def]
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    assert filesystem_type("/srv/mail/user/Maildir", str(info)) == "nfs4"
    assert filesystem_type("/srv/mail/local disk/Maildir", str(info)) == "xfs"  # \040 is a space
    assert filesystem_type("/srv/mailbox/x", str(info)) == "tmpfs"  # not /srv/mail: a name prefix only
    assert filesystem_type("/home/u/Maildir", str(info)) == "ext4"
    assert filesystem_type("/x", str(tmp_path / "missing")) is None


def test_racy_rule(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    rule = RacyRule(str(tmp_path))
    now = time.time_ns()
    old = now - int(RACY_SECONDS * 1e9) - 1
    assert not rule.racy(old, now)  # old enough for anybody's clock
    assert rule.racy(now - 1_000_000, now)  # fresh, and no listing time: racy
    rule.fine = True
    assert not rule.racy(now - 50_000_000, now, listed_at=now)  # the listing came 50 ms after the mtime
    assert rule.racy(now - 1, now, listed_at=now)  # the same tick
    assert rule.racy(now + 10**9, now, listed_at=now)  # an mtime in the future: clocks disagree
    rule.fine = False
    assert rule.racy(now - 50_000_000, now, listed_at=now)  # a network filesystem: the long rule only
    assert rule.settle([now]) is None


def test_settle_waits_out_the_tick(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rule = RacyRule(str(tmp_path))
    rule.fine = True
    mtime = time.time_ns()
    at = rule.settle([mtime])
    assert at is not None and at - mtime >= rule.settle_ns
    assert rule.settle_ns >= 2 * tick_ns()
    # An mtime in the future is not waited for (that would be the clock skew's length).
    t0 = time.monotonic()
    rule.settle([time.time_ns() + 10**10])
    assert time.monotonic() - t0 < 1


def test_watch_tells_our_entries_from_others(tmp_path) -> None:  # type: ignore[no-untyped-def]
    boxes = {}
    for box in ("a", "b"):
        for sub in ("cur", "new"):
            (tmp_path / box / sub).mkdir(parents=True)
        boxes[box] = {sub: str(tmp_path / box / sub) for sub in ("cur", "new")}
    (tmp_path / "a" / "cur" / "m:2,").write_bytes(b"x")
    w = Watcher.start()
    if w is None:
        pytest.skip("no inotify here")  # pragma: no cover - CI runs on Linux
    with w:
        assert w.watch("a", boxes["a"]) and w.watch("b", boxes["b"])
        os.rename(tmp_path / "a" / "cur" / "m:2,", tmp_path / "a" / "cur" / "m:2,S")
        (tmp_path / "b" / "new" / "other").write_bytes(b"y")  # another mailbox's business
        assert w.only("a", {"cur/m:2,S"}, {"cur/m:2,"})
        assert not w.only("b", set(), set())  # somebody else's delivery
        assert w.only("b", set(), set())  # nothing since
        os.rename(tmp_path / "a" / "cur" / "m:2,S", tmp_path / "a" / "cur" / "m:2,FS")
        assert not w.only("a", {"cur/m:2,S"}, {"cur/m:2,"})  # not the names we moved
        os.rename(tmp_path / "a" / "cur", tmp_path / "a" / "moved")
        assert not w.only("a", set(), set())
        assert not w.only("a", set(), set())  # broken for good
        assert not w.only("unknown", set(), set())
        assert w.only("b", set(), set())


@pytest.fixture(autouse=True)
def watch_small_mailboxes(monkeypatch):  # type: ignore[no-untyped-def]
    """These mailboxes are small; watch them as if they were big."""
    monkeypatch.setattr(maildir_storage, "WATCH_MIN_MESSAGES", 0)


def _inbox(root: str, n: int = 20) -> None:
    st = open_storage(f"maildir:{root}", Settings())
    with st.open_mailbox("INBOX") as mb:
        mb.save([SaveRequest(io.BytesIO(MSG % (i, i, i))) for i in range(n)])
    st.close()
    age(root)
    snapshot(root)


@pytest.fixture
def rescans(monkeypatch):  # type: ignore[no-untyped-def]
    calls = {"n": 0}
    orig = maildir_storage.MaildirMailbox._rescan

    def counted(self):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        return orig(self)

    monkeypatch.setattr(maildir_storage.MaildirMailbox, "_rescan", counted)
    return calls


def _flag(root: str, uids: list[int], flag: str = "\\Flagged", settings: Settings | None = None) -> None:
    st = open_storage(f"maildir:{root}", settings or Settings())
    with st.open_mailbox("INBOX") as mb:
        mb.update_flags([FlagUpdate(uid, add_flags=frozenset({flag})) for uid in uids])
    st.close()


def _local(root: str) -> None:
    if not RacyRule(root).fine:
        pytest.skip(f"{root} is not on a local filesystem")  # pragma: no cover - CI's tmp is local


def test_own_flag_change_spares_the_next_run_a_rescan(tmp_path, rescans) -> None:  # type: ignore[no-untyped-def]
    root = str(tmp_path / "Maildir")
    _inbox(root)
    _local(root)
    rescans["n"] = 0
    _flag(root, [3])
    _flag(root, [4], "\\Seen")  # right after: the first change's stamp is trusted already
    got = snapshot(root)
    assert rescans["n"] == 0
    assert got == snapshot(root, str(tmp_path / "fresh"))
    assert {u: f for u, _g, f, _k in got}[3] == frozenset({"\\Flagged"})


def test_own_delivery_spares_the_next_run_a_rescan(tmp_path, rescans) -> None:  # type: ignore[no-untyped-def]
    root = str(tmp_path / "Maildir")
    _inbox(root)
    _local(root)
    rescans["n"] = 0
    st = open_storage(f"maildir:{root}", Settings())
    with st.open_mailbox("INBOX") as mb:
        mb.save([SaveRequest(io.BytesIO(MSG % (99, 99, 99)))])
    st.close()
    got = snapshot(root)
    assert rescans["n"] == 0
    assert len(got) == 21 and got == snapshot(root, str(tmp_path / "fresh"))


def test_a_change_right_after_ours_is_found(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An MUA renaming a file the moment our run ends: its mtime is a later tick."""
    root = str(tmp_path / "Maildir")
    _inbox(root, 40)
    for i in range(15):
        _flag(root, [i + 1])
        new = os.path.join(root, "new")
        name = next(n for n in sorted(os.listdir(new)) if ":2," not in n)
        os.rename(os.path.join(new, name), os.path.join(root, "cur", name + ":2,T"))  # by somebody else
        got = snapshot(root)
        assert got == snapshot(root, str(tmp_path / f"fresh{i}")), i
        assert sum(1 for _u, _g, f, _k in got if "\\Deleted" in f) == i + 1


def test_a_change_during_ours_is_found(tmp_path, monkeypatch, rescans) -> None:  # type: ignore[no-untyped-def]
    """Somebody delivers while we rename: the watch sees an entry that is not ours."""
    root = str(tmp_path / "Maildir")
    _inbox(root)
    real = maildir_storage.fsync_dirs

    def deliver_meanwhile(paths, enabled=True):  # type: ignore[no-untyped-def]
        name = f"{time.time_ns()}.M1P1.mda.example.org"
        with open(os.path.join(root, "tmp", name), "wb") as f:
            f.write(MSG % (77, 77, 77))
        os.rename(os.path.join(root, "tmp", name), os.path.join(root, "new", name))
        return real(paths, enabled=enabled)

    monkeypatch.setattr(maildir_storage, "fsync_dirs", deliver_meanwhile)
    _flag(root, [2])
    monkeypatch.setattr(maildir_storage, "fsync_dirs", real)
    rescans["n"] = 0
    got = snapshot(root)
    assert rescans["n"] == 1
    assert len(got) == 21 and got == snapshot(root, str(tmp_path / "fresh"))


def test_network_filesystem_keeps_the_long_rule(tmp_path, rescans) -> None:  # type: ignore[no-untyped-def]
    """With mail_nfs_storage=yes no watch is trusted: a fresh own change means a rescan."""
    root = str(tmp_path / "Maildir")
    _inbox(root)
    nfs = Settings({"mail_nfs_storage": "yes"})
    _flag(root, [5], settings=nfs)
    rescans["n"] = 0
    st = open_storage(f"maildir:{root}", nfs)
    with st.open_mailbox("INBOX") as mb:
        flags = {r.uid: r.flags for r in mb.records()}
    st.close()
    assert rescans["n"] == 1
    assert flags[5] == frozenset({"\\Flagged"})


def test_a_small_mailbox_is_not_watched(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Closing an inotify instance costs more than rescanning a small mailbox."""
    monkeypatch.setattr(maildir_storage, "WATCH_MIN_MESSAGES", 100)
    root = str(tmp_path / "Maildir")
    _inbox(root)
    st = open_storage(f"maildir:{root}", Settings())
    with st.open_mailbox("INBOX") as mb:
        mb.update_flags([FlagUpdate(1, add_flags=frozenset({"\\Seen"}))])
    assert st._watcher is None and not st._watcher_tried  # type: ignore[attr-defined]
    st.close()
    assert {u: f for u, _g, f, _k in snapshot(root)}[1] == frozenset({"\\Seen"})
