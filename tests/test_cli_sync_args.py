"""``dsync sync|backup``: option parsing, request building, sides, users and exit codes.

The engine is replaced by a recording fake here, so that what the command line hands the
engine (and what it does with the report) is tested on its own; the end-to-end runs with
the real engine are in test_cli_sync_e2e.py.
"""

from __future__ import annotations

import calendar
import io
import json
import sys
import time
import types
import uuid
from collections.abc import Iterator

import pytest

from dsync_core import hookimpl
from dsync_core.cli import main
from dsync_core.cli import sync as cli_sync
from dsync_core.cli.sync import parse_date, parse_sync_argv, resolve_sides, select_users
from dsync_core.errors import StateError, UsageError
from dsync_core.model import SyncAlgorithm, SyncMode, SyncReport, UserInfo
from dsync_core.plugin.manager import get_plugin_manager
from dsync_core.settings import Settings

NOW = 1_700_000_000


@pytest.fixture
def src(memory_location: str) -> str:
    return memory_location


@pytest.fixture
def dst(memstore_plugin) -> str:  # type: ignore[no-untyped-def]
    name = f"test-{uuid.uuid4().hex}"
    yield f"memory:{name}"
    memstore_plugin.drop(name)


def plan(*argv: str):  # type: ignore[no-untyped-def]
    cmd, _settings = parse_sync_argv(list(argv))
    return cmd


# -- request building -------------------------------------------------------------------------


def test_defaults_two_way_fast(src: str, dst: str) -> None:
    cmd = plan("-o", f"mail_location={src}", "sync", dst)
    r = cmd.request
    assert cmd.command == "sync" and cmd.destination == (dst,) and cmd.source is None
    assert (r.mode, r.algorithm, r.reverse, r.state, r.purge, r.notify, r.force) == (
        SyncMode.TWOWAY, SyncAlgorithm.FAST, False, None, False, False, False,
    )
    assert (r.mailbox, r.mailbox_guid, r.excludes, r.since, r.until, r.lock_timeout) == (None, None, (), None, None, None)


def test_mirror_is_sync_and_backup_mode(src: str, dst: str) -> None:
    assert plan("mirror", dst).command == "sync"
    assert plan("mirror", dst).request.mode is SyncMode.TWOWAY
    b = plan("backup", "-R", dst)
    assert b.command == "backup" and b.request.mode is SyncMode.BACKUP and b.request.reverse


def test_every_flag(src: str, dst: str) -> None:
    guid = "0123456789ABCDEF0123456789abcdef"
    cmd = plan(
        "sync", "-1fPRU", "-l", "30", "-r", "/tmp/raw", "-m", "Archive/2024", "-g", guid, "-n", "",
        "-x", "Trash", "-x", "Spam*", "-T", "120", "-t", "2024-01-15", "-e", "1800000000", "--force", "--json",
        "-q", dst,
    )
    r = cmd.request
    assert r.mode is SyncMode.ONEWAY and r.algorithm is SyncAlgorithm.FULL
    assert r.reverse and r.purge and r.notify and r.force
    assert r.lock_timeout == 30 and r.mailbox == "Archive/2024" and r.mailbox_guid == guid.lower()
    assert r.excludes == ("Trash", "Spam*")
    assert r.since == int(time.mktime((2024, 1, 15, 0, 0, 0, 0, 0, -1))) and r.until == 1_800_000_000
    assert cmd.io_timeout == 120 and cmd.rawlog == "/tmp/raw" and cmd.namespaces == ("",)
    assert cmd.json and cmd.quiet


def test_state_and_full(dst: str) -> None:
    s = plan("sync", "-s", "", dst).request
    assert s.algorithm is SyncAlgorithm.STATEFUL and s.state == ""
    s = plan("sync", "-s", "AbC+/=", dst).request
    assert s.state == "AbC+/="
    # -f wins the algorithm, the state is still passed (doveadm prints a new one)
    s = plan("sync", "-f", "-s", "xyz", dst).request
    assert s.algorithm is SyncAlgorithm.FULL and s.state == "xyz"


def test_empty_mailbox_and_guid_mean_tree_only(dst: str) -> None:
    r = plan("sync", "-m", "", "-g", "", dst).request
    assert r.mailbox == "" and r.mailbox_guid == ""
    assert plan("sync", "-m", "\\Sent", dst).request.mailbox == "\\Sent"


def test_users_selection(tmp_path, dst: str) -> None:  # type: ignore[no-untyped-def]
    assert plan("sync", "-u", "jane", dst).users.kind == "user"
    assert plan("sync", "-A", dst).users.kind == "all"
    f = plan("sync", "-F", "/x/users", dst).users
    assert (f.kind, f.value) == ("file", "/x/users")
    assert plan("sync", dst).users.kind == "self"
    users_file = tmp_path / "names"
    users_file.write_text("alice\n\n  bob \ncarol\textra\n", encoding="utf-8")
    cmd = plan("sync", "-F", str(users_file), dst)
    assert select_users(cmd, Settings()) == ["alice", "bob", "carol"]


def test_destination_forms(src: str, dst: str) -> None:
    two = plan("sync", src, dst)
    assert two.source == src and two.destination == (dst,)
    assert plan("sync", "remote:backup.example.org").destination == ("remote:backup.example.org",)
    cmdline = plan("sync", "ssh", "-i", "key", "host", "doveadm", "dsync-server")
    assert cmdline.source is None and cmdline.destination == ("ssh", "-i", "key", "host", "doveadm", "dsync-server")
    assert plan("sync", "-d").use_replica and plan("sync", "-d").destination == ()


# -- usage errors (exit 64) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sync"], "sync: no destination given (DESTINATION or -d)"),
        (["backup"], "backup: no destination given"),
        (["sync", "-d", "memory:x"], "-d takes the destination from the userdb's mail_replica"),
        (["backup", "-1", "memory:x"], "-1 can only be used with sync"),
        (["sync", "-l", "soon", "memory:x"], "Invalid -l parameter: 'soon'"),
        (["sync", "-T", "forever", "memory:x"], "Invalid -T parameter: 'forever'"),
        (["sync", "-t", "yesterday-ish", "memory:x"], "Invalid -t parameter: 'yesterday-ish'"),
        (["sync", "-e", "2024-13-45", "memory:x"], "Invalid -e parameter"),
        (["sync", "-t", "2024-02-01", "-e", "2024-01-01", "memory:x"], "Start date is later than end date"),
        (["sync", "-g", "not-a-guid", "memory:x"], "Invalid -g parameter: 'not-a-guid'"),
        (["sync", "-u", "a", "-A", "memory:x"], "not allowed with argument"),
        (["sync", "-n", "x", "-N", "memory:x"], "not allowed with argument"),
        (["sync", "-m", "a/../b", "memory:x"], "Invalid -m parameter"),
        (["sync", "-x", "", "memory:x"], "-x needs a mailbox mask"),
        (["sync", "--bogus", "memory:x"], "unrecognized arguments"),
        (["sync", "memory:x", "-f"], "options must come before the destination"),
    ],
)
def test_usage_errors(argv: list[str], message: str, memstore_plugin, capfd) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError) as err:
        parse_sync_argv(argv)
    assert message in err.value.message
    code = main(argv)
    _out, errout = capfd.readouterr()
    assert code == 64
    assert message in errout and "Traceback" not in errout
    assert errout.count("Error:") == 1


def test_parse_date_forms() -> None:
    assert parse_date("1700000000") == 1_700_000_000
    assert parse_date("2024-01-15 10:30") == int(time.mktime((2024, 1, 15, 10, 30, 0, 0, 0, -1)))
    assert parse_date("2024-01-15T10:30:05") == int(time.mktime((2024, 1, 15, 10, 30, 5, 0, 0, -1)))
    assert parse_date("15-Jan-2024") == int(time.mktime((2024, 1, 15, 0, 0, 0, 0, 0, -1)))
    assert parse_date("Mon, 15 Jan 2024 10:30:00 +0100") == calendar.timegm((2024, 1, 15, 9, 30, 0))
    assert parse_date("Mon, 15 Jan 2024 10:30:00 -0000") == calendar.timegm((2024, 1, 15, 10, 30, 0))
    assert parse_date("7d", now=NOW) == NOW - 7 * 86400
    assert parse_date("2 weeks", now=NOW) == NOW - 14 * 86400
    assert parse_date("36 hours ago", now=NOW) == NOW - 36 * 3600
    with pytest.raises(UsageError, match="Invalid -e parameter: '3 fortnights'"):
        parse_date("3 fortnights", "e")


# -- sides -------------------------------------------------------------------------------------


def test_sides_expand_per_user_and_refuse_same_directory(tmp_path, memstore_plugin) -> None:  # type: ignore[no-untyped-def]
    cmd = plan("-o", "mail_location=maildir:~/Maildir", "sync", f"maildir:{tmp_path}/backup/%u")
    user = UserInfo(name="jane", home=str(tmp_path / "jane"))
    sides = resolve_sides(cmd, Settings({"mail_location": "maildir:~/Maildir"}), user)
    assert sides.source.path == str(tmp_path / "jane" / "Maildir")
    assert sides.destination is not None and sides.destination.path == f"{tmp_path}/backup/jane"
    same = plan("sync", f"maildir:{tmp_path}/jane/Maildir/")
    with pytest.raises(Exception, match="Both source and destination mail_location point to the same directory"):
        resolve_sides(same, Settings({"mail_location": "maildir:~/Maildir"}), user)


def test_mail_location_wins_over_userdb_mail() -> None:
    cmd = plan("sync", "remote:host")
    user = UserInfo(name="u", home="/h", fields={"mail": "maildir:~/FromUserdb"})
    assert resolve_sides(cmd, Settings(), user).source.path == "/h/FromUserdb"
    assert resolve_sides(cmd, Settings({"mail_location": "maildir:~/Explicit"}), user).source.path == "/h/Explicit"


def test_replica_resolution() -> None:
    cmd = plan("sync", "-d")
    user = UserInfo(name="u@example.org", home="/h", fields={"mail": "maildir:~/M", "mail_replica": "remote:%n@b"})
    sides = resolve_sides(cmd, Settings(), user)
    assert sides.destination is None and sides.remote == "remote:u@b"
    with pytest.raises(Exception, match="User has no mail_replica in userdb"):
        resolve_sides(cmd, Settings(), UserInfo(name="u", home="/h", fields={"mail": "maildir:~/M"}))
    sides = resolve_sides(cmd, Settings({"plugin/mail_replica": "tcp:b:12345"}), UserInfo(name="u", home="/h",
                                                                                      fields={"mail": "maildir:~/M"}))
    assert sides.remote == "tcp:b:12345"


# -- runs with a fake engine --------------------------------------------------------------------


class FakeEngine:
    def __init__(self) -> None:
        self.calls: list[tuple[object, object, object]] = []
        self.reports: dict[str, SyncReport | Exception] = {}

    def sync(self, source, destination, request, *, progress=None):  # type: ignore[no-untyped-def]
        self.calls.append((source, destination, request))
        key = getattr(source, "root", "") or ""
        result = self.reports.get(key.partition(":")[2], SyncReport(mailboxes=1, state="STATE1"))
        if isinstance(result, Exception):
            raise result
        return result


@pytest.fixture
def engine(monkeypatch) -> FakeEngine:  # type: ignore[no-untyped-def]
    fake = FakeEngine()
    monkeypatch.setattr(cli_sync, "_engine", lambda: types.SimpleNamespace(sync=fake.sync))
    return fake


@pytest.fixture
def run(capfd, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("USER", "tester")

    def go(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capfd.readouterr()
        return code, out, err

    return go


def test_state_printed_and_request_passed(engine: FakeEngine, run, src: str, dst: str) -> None:  # type: ignore[no-untyped-def]
    code, out, err = run("-o", f"mail_location={src}", "sync", "-s", "", dst)
    assert (code, out, err) == (0, "STATE1\n", "")
    (source, destination, request), = engine.calls
    assert request.state == "" and request.algorithm is SyncAlgorithm.STATEFUL
    # Without -s nothing is printed on stdout
    code, out, _ = run("-o", f"mail_location={src}", "sync", dst)
    assert (code, out) == (0, "")


def test_exit_2_prints_each_reason_and_the_desync_warning(engine: FakeEngine, run, src: str, dst: str) -> None:  # type: ignore[no-untyped-def]
    engine.reports[src.split(":", 1)[1]] = SyncReport(unapplied=["Mailbox Archive: already exists", "box X lost"])
    code, out, err = run("-o", f"mail_location={src}", "sync", dst)
    assert code == 2 and out == ""
    assert err.splitlines() == [
        "dsync(tester): Warning: Mailbox Archive: already exists",
        "dsync(tester): Warning: box X lost",
        "dsync(tester): Warning: Mailbox changes caused a desync. You may want to run dsync again.",
    ]


def test_engine_error_is_exit_1_one_line(engine: FakeEngine, run, src: str, dst: str) -> None:  # type: ignore[no-untyped-def]
    engine.reports[src.split(":", 1)[1]] = StateError("Invalid state: bad base64\nsecond line")
    code, out, err = run("-o", f"mail_location={src}", "sync", "-s", "zz", dst)
    assert code == 1 and out == ""
    assert err == "dsync(tester): Error: Invalid state: bad base64\\nsecond line\n"


def test_json_report(engine: FakeEngine, run, src: str, dst: str) -> None:  # type: ignore[no-untyped-def]
    engine.reports[src.split(":", 1)[1]] = SyncReport(mailboxes=3, messages_copied=5, bytes=1234, unapplied=["x"])
    code, out, err = run("-o", f"mail_location={src}", "backup", "--json", dst)
    assert code == 2
    obj = json.loads(out)
    assert obj["mailboxes"] == 3 and obj["messages_copied"] == 5 and obj["bytes"] == 1234
    assert obj["exit_code"] == 2 and obj["unapplied"] == ["x"] and obj["destination"] == dst
    assert obj["user"] == "tester" and obj["source"] == src
    for key in ("flags_changed", "expunged", "conflicts", "seconds"):
        assert key in obj


def test_same_location_refused(engine: FakeEngine, run, src: str) -> None:  # type: ignore[no-untyped-def]
    code, out, err = run("sync", src, src)
    assert code == 1 and engine.calls == []
    assert "Error: Both source and destination mail_location point to the same directory" in err


@pytest.fixture
def no_transports() -> Iterator[None]:
    """The run as it is without dsync-transports installed."""
    from dsync_core.plugin.manager import get_plugin_manager

    pm = get_plugin_manager()
    plugin = pm.unregister(name="transports") if pm.has_plugin("transports") else None
    try:
        yield
    finally:
        if plugin is not None:
            pm.register(plugin, name="transports")


def test_no_transport_plugin(engine: FakeEngine, run, src: str, no_transports: None) -> None:  # type: ignore[no-untyped-def]
    for dest in (["remote:backup.example.org"], ["tcp:127.0.0.1:12345"], ["jane@127.0.0.1"],
                 ["ssh", "127.0.0.1", "doveadm", "dsync-server"]):
        code, out, err = run("-o", f"mail_location={src}", "sync", *dest)
        assert code == 1, dest
        assert err == (
            f"dsync(tester): Error: no transport plugin handles destination {' '.join(dest)} (install dsync-transports)\n"
        )
    code, _, err = run("-o", f"mail_location={src}", "sync", "nosuchdriver:/x")
    assert code == 1 and "Unknown mail storage driver 'nosuchdriver'" in err
    assert engine.calls == []


class _Channel:
    """A bare byte channel: not something the engine can sync with."""

    closed = False

    def read(self, n: int) -> bytes:
        return b""

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class _Transport:
    def __init__(self, peer: object) -> None:
        self.seen: list[tuple[str, Settings, UserInfo | None]] = []
        self.peer = peer

    @hookimpl
    def dsync_transport_open(self, destination, settings, user):  # type: ignore[no-untyped-def]
        self.seen.append((destination, settings, user))
        return self.peer


def _with_transport(peer, run, *argv: str):  # type: ignore[no-untyped-def]
    transport = _Transport(peer)
    pm = get_plugin_manager()
    pm.register(transport)
    try:
        return transport, run(*argv)
    finally:
        pm.unregister(transport)


def test_transport_hook_gets_destination_and_remote_options(engine: FakeEngine, run, src: str, dst: str) -> None:  # type: ignore[no-untyped-def]
    from dsync_core.api import open_storage

    peer = open_storage(dst)
    closed = []
    peer.close = lambda: closed.append(True)  # type: ignore[method-assign]
    transport, (code, _, err) = _with_transport(
        peer, run, "-o", f"mail_location={src}", "sync", "-T", "90", "-r", "/tmp/raw.log", "-N", "remote:vmail@127.0.0.1"
    )
    assert code == 0, err
    (dest, settings, user), = transport.seen
    assert dest == "remote:vmail@127.0.0.1" and user is not None and user.name == "tester"
    assert settings["dsync_io_timeout"] == "90" and settings["dsync_rawlog"] == "/tmp/raw.log"
    assert settings["dsync_all_namespaces"] == "yes"
    assert engine.calls[0][1] is peer and closed == [True]


def test_command_destination_keeps_its_words(engine: FakeEngine, run, src: str, dst: str, no_transports: None) -> None:  # type: ignore[no-untyped-def]
    """A plain command line reaches the transport as one string that splits back into the
    same words (an argument with a space stays one argument)."""
    import shlex

    from dsync_core.api import open_storage

    words = ["ssh", "-i", "/keys/my key", "127.0.0.1", "dsync", "server", "-u", "jane"]
    transport, (code, _, err) = _with_transport(open_storage(dst), run, "-o", f"mail_location={src}", "sync", *words)
    assert code == 0, err
    (dest, _settings, _user), = transport.seen
    assert shlex.split(dest) == words


def test_transport_returning_a_bare_channel(engine: FakeEngine, run, src: str) -> None:  # type: ignore[no-untyped-def]
    channel = _Channel()
    _, (code, _, err) = _with_transport(channel, run, "-o", f"mail_location={src}", "sync", "remote:h")
    assert code == 1 and engine.calls == [] and channel.closed
    assert "Error: destination remote:h: the transport plugin returned a _Channel" in err


def test_unknown_namespace(engine: FakeEngine, run, src: str, dst: str) -> None:  # type: ignore[no-untyped-def]
    code, _, err = run("-o", f"mail_location={src}", "sync", "-n", "Shared/", dst)
    assert code == 1 and "Error: Namespace not found: 'Shared/'" in err and engine.calls == []
    code, _, err = run("-o", f"mail_location={src}", "-o", "namespace/inbox/prefix=", "sync", "-n", "", dst)
    assert code == 0, err


def _passwd(tmp_path, lines: list[str]) -> str:  # type: ignore[no-untyped-def]
    path = tmp_path / "users"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_d_without_replica_and_unknown_user(engine: FakeEngine, run, tmp_path, src: str) -> None:  # type: ignore[no-untyped-def]
    users = _passwd(tmp_path, [f"jane:x:::::: mail={src}"])
    code, _, err = run("-o", f"userdb=passwd-file:{users}", "sync", "-u", "jane", "-d")
    assert (code, err) == (1, "dsync(jane): Error: User has no mail_replica in userdb\n")
    code, _, err = run("-o", f"userdb=passwd-file:{users}", "sync", "-u", "nobody", "memory:x")
    assert code == 1 and err == "dsync(nobody): Error: User doesn't exist: nobody\n"
    assert engine.calls == []


def test_several_users_continue_after_failure_worst_code(engine: FakeEngine, run, tmp_path, memstore_plugin) -> None:  # type: ignore[no-untyped-def]
    tag = uuid.uuid4().hex
    users = _passwd(tmp_path, [
        f"u1:x:::::: mail=memory:{tag}-u1 mail_replica=memory:{tag}-r1",
        f"u2:x:::::: mail=memory:{tag}-u2 mail_replica=memory:{tag}-r2",
        f"u3:x:::::: mail=memory:{tag}-u3",  # no replica: fails
        f"u4:x:::::: mail=memory:{tag}-u4 mail_replica=memory:{tag}-r4 noreplicate",
    ])
    engine.reports[f"{tag}-u1"] = SyncReport(unapplied=["u1 conflict"])
    engine.reports[f"{tag}-u2"] = StateError("broken")
    try:
        code, out, err = run("-o", f"userdb=passwd-file:{users}", "sync", "-A", "-U", "--json", "-d")
        assert code == 1
        lines = [json.loads(line) for line in out.splitlines()]
        assert [(o["user"], o["exit_code"]) for o in lines] == [("u1", 2), ("u2", 1), ("u3", 1)]
        assert "dsync(u1): Warning: u1 conflict" in err and "dsync(u2): Error: broken" in err
        assert "dsync(u3): Error: User has no mail_replica in userdb" in err
        # -U: the noreplicate user is skipped, not synced
        assert len(engine.calls) == 2
        # -F with only a user that ends with exit 2: exit 2
        names = tmp_path / "names"
        names.write_text("u1\n", encoding="utf-8")
        code, _, _ = run("-o", f"userdb=passwd-file:{users}", "sync", "-F", str(names), "-d")
        assert code == 2
        code, _, err = run("-o", f"userdb=passwd-file:{users}", "sync", "-u", "zz*", "-d")
        assert code == 1 and "No users match zz*" in err
    finally:
        for n in ("u1", "u2", "u3", "u4", "r1", "r2", "r4"):
            memstore_plugin.drop(f"{tag}-{n}")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _progress_engine(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from dsync_core.model import ProgressEvent

    def fake_sync(source, destination, request, *, progress=None):  # type: ignore[no-untyped-def]
        assert progress is not None
        progress(ProgressEvent("run_start", mailboxes_total=1))
        progress(ProgressEvent("mailbox_start", mailbox="INBOX", total=2, mailboxes_total=1))
        progress(ProgressEvent("messages", mailbox="INBOX", done=2, total=2, mailboxes_total=1))
        progress(ProgressEvent("mailbox_done", mailbox="INBOX", done=2, total=2, mailboxes_done=1, mailboxes_total=1))
        progress(ProgressEvent("run_done", mailboxes_done=1, mailboxes_total=1))
        return SyncReport(mailboxes=1, messages_copied=2)

    monkeypatch.setattr(cli_sync, "_engine", lambda: types.SimpleNamespace(sync=fake_sync))


@pytest.mark.parametrize("quiet", [[], ["-q"], ["--json"]])
def test_progress_on_a_terminal_only_without_q(monkeypatch, src: str, dst: str, quiet: list[str]) -> None:  # type: ignore[no-untyped-def]
    _progress_engine(monkeypatch)
    tty = _Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert main(["-o", f"mail_location={src}", "sync", *quiet, dst]) == 0
    if quiet:
        assert tty.getvalue() == ""
    else:
        assert "\rINBOX [####################] 2/2 msgs  mailbox 1/1" in tty.getvalue()
        assert tty.getvalue().endswith("\r\x1b[K")


def test_verbose_info_lines(monkeypatch, run, src: str, dst: str) -> None:  # type: ignore[no-untyped-def]
    _progress_engine(monkeypatch)
    code, out, err = run("-v", "-o", f"mail_location={src}", "sync", dst)
    assert code == 0 and out == ""
    lines = err.splitlines()
    assert lines[0] == "dsync(tester): Info: INBOX: synced, 2/2 messages handled"
    assert lines[1].startswith("dsync(tester): Info: sync done: 1 mailboxes (0 unchanged), 2 messages copied")
    assert "\r" not in err  # stderr is not a terminal here: no progress line
    code, _, err = run("-D", "-o", f"mail_location={src}", "sync", dst)
    assert "Debug: progress: mailbox_start mailbox=INBOX" in err and "Debug: source memory:" in err
