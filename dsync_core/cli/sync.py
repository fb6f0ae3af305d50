"""``dsync sync|backup`` (and the legacy name ``mirror``): doveadm-sync(1) on the command line.

``dsync [-Dv] [-c FILE] [-o k=v]... sync|backup [-u USER|-A|-F FILE] [-1fPRU] [-l SECS]
[-r RAWLOG] [-m MAILBOX] [-g GUID] [-n NS|-N] [-x MASK]... [-s STATE] [-T SECS] [-t START]
[-e END] [--force] [--json] [-q] -d|DESTINATION``

Sides: the source is the user's mail (``-o mail_location=...``, else the userdb's ``mail``),
or the first of two locations (``dsync sync maildir:~/Maildir memory:x``). A destination
that is not a local ``driver:path`` location (``remote:host``, ``tcp:host``, ``user@host``,
a command line) goes to the ``dsync_transport_open`` hook. The transport gets the
remote-only options as settings: ``dsync_io_timeout`` (``-T``), ``dsync_rawlog`` (``-r``),
``dsync_namespaces`` (``-n``, space-separated) and ``dsync_all_namespaces`` (``-N``).

Exit status: 0 done; 2 done but some changes could not be applied (run again); 1 failed.
With several users (``-A``, ``-F``, a ``-u`` mask) every user is tried, and the worst
status wins.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import attrs

from ..api import known_schemes, open_storage
from ..errors import EX_FAILED, ConfigError, DsyncError, UsageError
from ..location import Location, expand_vars, parse_location, user_variables
from ..model import SyncAlgorithm, SyncMode, SyncReport, SyncRequest, UserInfo
from ..plugin.manager import get_plugin_manager
from ..progress import ProgressPrinter
from ..settings import Settings, parse_interval, read_text_file
from ..storage import Storage
from ..userdb import iter_users, wildcard_match
from .context import CliContext

log = logging.getLogger("dsync.sync")

#: Destination prefixes that always mean a remote peer (doveadm-sync(1) "Destination").
TRANSPORT_SCHEMES = ("remote", "remoteprefix", "tcp", "tcps")

DESYNC_WARNING = "Mailbox changes caused a desync. You may want to run dsync again."

_GUID_RE = re.compile(r"[0-9a-fA-F]{32}")


# -- the parsed command ----------------------------------------------------------------------


@attrs.frozen
class UserSelection:
    """Whose mail: the invoking user, ``-u NAME`` (may be a ``*``/``?`` mask), ``-A`` or ``-F FILE``."""

    kind: str = "self"  # self | user | all | file
    value: str = ""


@attrs.frozen
class SyncCommand:
    """A ``dsync sync|backup`` command line, parsed and checked, before any user is looked up."""

    command: str  # "sync" or "backup"
    request: SyncRequest
    users: UserSelection = UserSelection()
    source: str | None = None  # SRC of the two-location form
    destination: tuple[str, ...] = ()  # DEST words; empty with -d
    use_replica: bool = False  # -d
    json: bool = False
    quiet: bool = False
    io_timeout: float | None = None  # -T
    rawlog: str | None = None  # -r
    namespaces: tuple[str, ...] = ()  # -n
    all_namespaces: bool = False  # -N

    def transport_settings(self, settings: Settings) -> Settings:
        """The settings a transport plugin sees: the remote-only options added."""
        extra: dict[str, str] = {}
        if self.io_timeout is not None:
            extra["dsync_io_timeout"] = f"{self.io_timeout:g}"
        if self.rawlog:
            extra["dsync_rawlog"] = self.rawlog
        if self.namespaces:
            extra["dsync_namespaces"] = " ".join(self.namespaces)
        if self.all_namespaces:
            extra["dsync_all_namespaces"] = "yes"
        return settings.with_overrides(extra) if extra else settings


# -- argument parsing ------------------------------------------------------------------------


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    for name, help_text in (
        ("sync", "two-way synchronisation with another location or a remote dsync"),
        ("mirror", "old name of sync"),
        ("backup", "make the destination identical to the source"),
    ):
        p = sub.add_parser(name, help=help_text)
        _add_options(p, backup=name == "backup")
        p.set_defaults(func=cmd_sync, sync_command="backup" if name == "backup" else "sync")


def _add_options(p: argparse.ArgumentParser, *, backup: bool) -> None:
    who = p.add_mutually_exclusive_group()
    who.add_argument("-u", dest="user", metavar="USER", help="sync this user (a mask with * and ? for several)")
    who.add_argument("-A", dest="all_users", action="store_true", help="sync every user of the userdb")
    who.add_argument("-F", dest="user_file", metavar="FILE", help="sync the users named in FILE, one per line")
    p.add_argument("-1", dest="oneway", action="store_true",
                   help="one-way: the destination merges the source's changes; nothing deleted there")
    p.add_argument("-f", dest="full", action="store_true", help="full sync (compare every mailbox)")
    p.add_argument("-P", dest="purge", action="store_true", help="purge the destination's storage afterwards")
    p.add_argument("-R", dest="reverse", action="store_true", help="reverse the direction of backup/-1")
    p.add_argument("-U", dest="notify", action="store_true", help="replicator mode (skips noreplicate users)")
    p.add_argument("-l", dest="lock_timeout", metavar="SECS", help="lock the user for the run, waiting up to SECS")
    p.add_argument("-r", dest="rawlog", metavar="RAWLOG", help="write the remote protocol traffic to RAWLOG")
    p.add_argument("-m", dest="mailbox", metavar="MAILBOX", help="only this mailbox ('' = folder tree only)")
    p.add_argument("-g", dest="mailbox_guid", metavar="GUID", help="only the mailbox with this GUID")
    ns = p.add_mutually_exclusive_group()
    ns.add_argument("-n", dest="namespaces", metavar="NS", action="append", default=[],
                    help="only this namespace prefix (repeatable)")
    ns.add_argument("-N", dest="all_namespaces", action="store_true", help="all visible namespaces")
    p.add_argument("-x", dest="excludes", metavar="MASK", action="append", default=[],
                   help="exclude mailboxes matching MASK (* and ?; repeatable)")
    p.add_argument("-s", dest="state", metavar="STATE", help="stateful sync from STATE ('' to start); prints the new state")
    p.add_argument("-T", dest="io_timeout", metavar="SECS", help="give up when the remote side stalls this long")
    p.add_argument("-t", dest="since", metavar="START", help="only copy new mail received at/after START")
    p.add_argument("-e", dest="until", metavar="END", help="only copy new mail received at/before END")
    p.add_argument("-d", dest="use_replica", action="store_true", help="the destination is the user's mail_replica")
    p.add_argument("--force", action="store_true", help="sync even when the destination looks wiped")
    p.add_argument("--json", action="store_true", help="print what was done as one JSON object per user")
    p.add_argument("-q", dest="sync_quiet", action="store_true", help="no progress output")
    p.add_argument("destination", nargs=argparse.REMAINDER, metavar="[SOURCE] DESTINATION")


def _seconds(value: str | None, opt: str) -> float | None:
    if value is None:
        return None
    try:
        secs = parse_interval(value)
    except ConfigError:
        raise UsageError(f"Invalid -{opt} parameter: {value!r} (expected seconds)") from None
    return secs


_RELATIVE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]+)\s*(?:ago)?\s*")
_ISO_RE = re.compile(r"\s*(\d{4})-(\d{2})-(\d{2})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}))?)?\s*")
_IMAP_RE = re.compile(r"\s*(\d{1,2})-([A-Za-z]{3})-(\d{4})\s*")
_MONTHS = {m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}


def parse_date(value: str, opt: str = "t", now: float | None = None) -> int:
    """A ``-t``/``-e`` date as UNIX seconds.

    Accepts UNIX times (``1700000000``), ``YYYY-MM-DD`` and ``YYYY-MM-DD HH:MM[:SS]`` (local
    time), IMAP dates (``15-Jan-2024``), RFC 2822 dates, and intervals back from now
    (``7d``, ``2 weeks``, ``36 hours ago``).
    """
    now = time.time() if now is None else now
    text = value.strip()
    if re.fullmatch(r"\d+", text):
        return int(text)
    m = _ISO_RE.fullmatch(text)
    if m:
        y, mo, d, hh, mm, ss = (int(g or 0) for g in m.groups())
        import datetime  # only for -t/-e dates

        try:
            datetime.datetime(y, mo, d, hh, mm, ss)  # rejects 2024-13-45 that mktime would roll over
            return int(time.mktime((y, mo, d, hh, mm, ss, 0, 0, -1)))
        except (OverflowError, ValueError):
            raise UsageError(f"Invalid -{opt} parameter: {value!r} (no such date)") from None
    m = _IMAP_RE.fullmatch(text)
    if m and m.group(2).lower() in _MONTHS:
        return int(time.mktime((int(m.group(3)), _MONTHS[m.group(2).lower()], int(m.group(1)), 0, 0, 0, 0, 0, -1)))
    m = _RELATIVE_RE.fullmatch(text)
    if m:
        try:
            return int(now - parse_interval(f"{m.group(1)} {m.group(2)}"))
        except ConfigError:
            pass
    import calendar  # only for -t/-e dates
    import email.utils

    try:
        parsed = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        parsed = None
    if parsed is not None:
        if parsed.tzinfo is None:  # "-0000": UTC by RFC 2822
            return calendar.timegm(parsed.timetuple())
        return int(parsed.timestamp())
    raise UsageError(
        f"Invalid -{opt} parameter: {value!r} (expected YYYY-MM-DD, a UNIX time, an RFC 2822 date or an interval like 7d)"
    )


def sync_command_from_args(args: argparse.Namespace) -> SyncCommand:
    """Check the parsed options and build the :class:`SyncRequest`; usage errors exit 64."""
    command = args.sync_command
    if args.oneway and command == "backup":
        raise UsageError("-1 can only be used with sync (backup is one-way already)")
    if args.oneway:
        mode = SyncMode.ONEWAY
    elif command == "backup":
        mode = SyncMode.BACKUP
    else:
        mode = SyncMode.TWOWAY
    if args.full:
        algorithm = SyncAlgorithm.FULL
    elif args.state is not None:
        algorithm = SyncAlgorithm.STATEFUL
    else:
        algorithm = SyncAlgorithm.FAST
    lock_timeout = _seconds(args.lock_timeout, "l")
    io_timeout = _seconds(args.io_timeout, "T")
    guid = args.mailbox_guid
    if guid:
        if not _GUID_RE.fullmatch(guid):
            raise UsageError(f"Invalid -g parameter: {guid!r} (expected a 32-digit hex mailbox GUID)")
        guid = guid.lower()
    since = parse_date(args.since, "t") if args.since is not None else None
    until = parse_date(args.until, "e") if args.until is not None else None
    if since is not None and until is not None and since > until:
        raise UsageError("Start date is later than end date")
    for mask in args.excludes:
        if not mask:
            raise UsageError("-x needs a mailbox mask")
    mailbox = args.mailbox
    if mailbox:
        from ..storage import normalize_mailbox_name

        if not mailbox.startswith("\\"):  # '\Sent': by special-use
            try:
                mailbox = normalize_mailbox_name(mailbox)
            except DsyncError as e:
                raise UsageError(f"Invalid -m parameter: {e.message}") from None
    request = SyncRequest(
        mode=mode,
        algorithm=algorithm,
        reverse=args.reverse,
        state=args.state,
        mailbox=mailbox,
        mailbox_guid=guid,
        excludes=tuple(args.excludes),
        since=since,
        until=until,
        lock_timeout=lock_timeout,
        purge=args.purge,
        notify=args.notify,
        force=args.force,
    )
    if args.user_file:
        users = UserSelection("file", args.user_file)
    elif args.all_users:
        users = UserSelection("all")
    elif args.user:
        users = UserSelection("user", args.user)
    else:
        users = UserSelection()

    words = list(args.destination)
    if words and words[0] == "--":
        words = words[1:]
    source: str | None = None
    if args.use_replica:
        if words:
            raise UsageError("-d takes the destination from the userdb's mail_replica: give no DESTINATION")
    else:
        if not words:
            raise UsageError(f"{command}: no destination given (DESTINATION or -d)")
        if words[0].startswith("-") and words[0] != "-":
            raise UsageError(f"{command}: options must come before the destination: {words[0]}")
        if len(words) >= 2 and is_local_location(words[0]):
            if words[1].startswith("-"):
                raise UsageError(f"{command}: options must come before the destination: {words[1]}")
            source, words = words[0], words[1:]
    return SyncCommand(
        command=command,
        request=request,
        users=users,
        source=source,
        destination=tuple(words),
        use_replica=args.use_replica,
        json=args.json,
        quiet=args.sync_quiet,
        io_timeout=io_timeout,
        rawlog=args.rawlog,
        namespaces=tuple(args.namespaces),
        all_namespaces=args.all_namespaces,
    )


def parse_sync_argv(argv: Sequence[str]) -> tuple[SyncCommand, Settings]:
    """The whole ``dsync ... sync ...`` command line -> (command, settings); for tests and embedding."""
    from ..settings import load_settings
    from . import build_parser

    args = build_parser().parse_args(list(argv))
    if getattr(args, "func", None) is not cmd_sync:
        raise UsageError("not a sync, mirror or backup command line")
    settings = load_settings(args.config, args.overrides)
    return sync_command_from_args(args), settings


# -- the two sides ---------------------------------------------------------------------------


def _scheme(text: str) -> str | None:
    m = re.match(r"([a-z][a-z0-9_+-]*):", text)
    return m.group(1) if m else None


def is_local_location(text: str) -> bool:
    """``driver:path`` with a driver some installed storage plugin serves."""
    scheme = _scheme(text)
    return bool(scheme) and scheme not in TRANSPORT_SCHEMES and scheme in known_schemes()


@attrs.frozen
class Sides:
    """Where one user's run reads and writes: two local locations, or a local one and a remote string."""

    source: Location
    destination: Location | None  # None: remote, see ``remote``
    remote: str = ""


def resolve_sides(cmd: SyncCommand, settings: Settings, user: UserInfo) -> Sides:
    """Turn the command's locations into this user's (``~`` and ``%u`` expanded)."""
    home = user.home or None
    src_text = cmd.source or settings.get("mail_location") or user.fields.get("mail", "")
    if not src_text:
        raise ConfigError(
            "No mail location: give one with -o mail_location=maildir:~/Maildir, as SOURCE, or as the userdb's mail"
        )
    source = parse_location(src_text, user=user.name, home=home)
    if cmd.use_replica:
        replica = (
            user.fields.get("mail_replica") or settings.get("plugin/mail_replica") or settings.get("mail_replica")
        )
        if not replica:
            raise DsyncError("User has no mail_replica in userdb", exit_code=EX_FAILED)
        if "%" in replica:  # like Dovecot's plugin settings: %u, %n, %d expand per user
            replica = expand_vars(replica, user_variables(user.name, home))
        words: tuple[str, ...] = (replica,)
    else:
        words = cmd.destination
    if len(words) == 1 and is_local_location(words[0]):
        destination = parse_location(words[0], user=user.name, home=home)
        if _same_directory(source, destination):
            raise DsyncError(
                f"Both source and destination mail_location point to the same directory: {destination.path}",
                exit_code=EX_FAILED,
            )
        return Sides(source, destination)
    # A command line travels as one string: quoted so that the transport's split gives
    # back exactly these words (an argument with a space stays one argument).
    return Sides(source, None, shlex.join(words) if len(words) > 1 else words[0])


def _same_directory(a: Location, b: Location) -> bool:
    pa, pb = a.path or a.raw, b.path or b.raw
    if a.scheme == b.scheme and pa == pb:
        return True
    if os.path.isabs(pa) and os.path.isabs(pb):
        return os.path.realpath(pa) == os.path.realpath(pb)
    return False


def _open_remote(cmd: SyncCommand, sides: Sides, settings: Settings, user: UserInfo) -> Any:
    channel = get_plugin_manager().hook.dsync_transport_open(
        destination=sides.remote, settings=cmd.transport_settings(settings), user=user
    )
    if channel is None:
        scheme = _scheme(sides.remote)
        if scheme and scheme not in TRANSPORT_SCHEMES and " " not in sides.remote:
            known = ", ".join(known_schemes()) or "none installed"
            raise DsyncError(
                f"Unknown mail storage driver {scheme!r} (known: {known}) and no transport plugin handles "
                f"destination {sides.remote}",
                exit_code=EX_FAILED,
            )
        raise DsyncError(
            f"no transport plugin handles destination {sides.remote} (install dsync-transports)", exit_code=EX_FAILED
        )
    return channel


def _peer(channel: Any, destination: str) -> Any:
    """What the engine syncs with: a transport plugin returns a Storage or a Replica.

    A bare byte channel needs the dsync wire protocol on top, which the transport plugin
    provides (it wraps its channel in a :class:`dsync_core.replica.Replica`).
    """
    from ..replica import Replica

    if isinstance(channel, (Storage, Replica)):
        return channel
    raise DsyncError(
        f"destination {destination}: the transport plugin returned a {type(channel).__name__}, "
        "not a Storage or Replica the engine can sync with (update dsync-transports)",
        exit_code=EX_FAILED,
    )


def _engine() -> Any:
    # By module path: the package re-exports the function sync() under the same name.
    try:
        return importlib.import_module("dsync_core.sync")
    except ImportError as e:
        raise DsyncError(f"the sync engine is not available: {e}", exit_code=EX_FAILED) from None


# -- users -----------------------------------------------------------------------------------


def _read_user_file(path: str) -> list[str]:
    text = sys.stdin.read() if path == "-" else read_text_file(path, "user list")
    names = []
    for line in text.splitlines():
        name = line.split("\t", 1)[0].strip()
        if name:
            names.append(name)
    return names


def select_users(cmd: SyncCommand, settings: Settings) -> list[str | None]:
    """The user names to sync, in order; ``[None]`` for the invoking user."""
    sel = cmd.users
    if sel.kind == "self":
        return [None]
    if sel.kind == "file":
        return list(_read_user_file(sel.value))
    if sel.kind == "all":
        return [u.name for u in iter_users(settings)]
    if "*" in sel.value or "?" in sel.value:
        return [u.name for u in iter_users(settings) if wildcard_match(sel.value, u.name)]
    return [sel.value]


# -- running ---------------------------------------------------------------------------------


@contextmanager
def _as_user(name: str) -> Iterator[None]:
    from . import current_user

    token = current_user.set(name)
    try:
        yield
    finally:
        current_user.reset(token)


def _say(level: str, text: str) -> None:
    from . import _user_tag, one_line

    sys.stderr.write(f"dsync({_user_tag()}): {level}: {one_line(text)}\n")


def _worse(a: int, b: int) -> int:
    """The worse of two exit codes: any failure beats 2, 2 beats 0; the first failure stays."""
    if a not in (0, 2):
        return a
    if b not in (0, 2):
        return b
    return max(a, b)


def run_one(
    cmd: SyncCommand,
    ctx: CliContext,
    user_name: str | None,
    *,
    emit: Callable[[dict[str, Any]], None],
) -> int:
    """Sync one user; prints errors/warnings, returns the exit code (never raises DsyncError)."""
    try:
        user = ctx.lookup_user(user_name)
    except DsyncError as e:
        name = user_name or ""
        with _as_user(name or "dsync"):
            _say("Error", e.message)
        if cmd.json:
            emit({"user": name, "exit_code": EX_FAILED, "error": e.message})
        return EX_FAILED
    assert user is not None
    with _as_user(user.name):
        if cmd.request.notify and "noreplicate" in user.fields:
            log.info("User has noreplicate set in userdb: not syncing")
            return 0
        try:
            report, sides = _run_sync(cmd, ctx, user)
        except DsyncError as e:
            _say("Error", e.message)
            if cmd.json:
                emit({"user": user.name, "exit_code": EX_FAILED, "error": e.message})
            return EX_FAILED
        except (KeyboardInterrupt, BrokenPipeError):
            raise
        except Exception as e:  # a bug or an unwrapped OS error: report it, go on with the next user
            if ctx.debug:
                import traceback

                traceback.print_exc()
            _say("Error", f"internal error: {type(e).__name__}: {e}")
            if cmd.json:
                emit({"user": user.name, "exit_code": EX_FAILED, "error": f"internal error: {e}"})
            return EX_FAILED
        for reason in report.unapplied:
            _say("Warning", reason)
        if report.unapplied:
            _say("Warning", DESYNC_WARNING)
        log.info(
            "%s done: %d mailboxes (%d unchanged), %d messages copied, %d flag changes, %d expunged, "
            "%d conflicts, %d bytes in %.1fs",
            cmd.command, report.mailboxes, report.mailboxes_skipped, report.messages_copied, report.flags_changed,
            report.expunged, report.conflicts, report.bytes, report.seconds,
        )
        if cmd.json:
            dest = str(sides.destination) if sides.destination is not None else sides.remote
            emit({"user": user.name, "source": str(sides.source), "destination": dest, **report.as_dict()})
        elif cmd.request.state is not None:
            sys.stdout.write(report.state + "\n")
            sys.stdout.flush()
        return report.exit_code


def _check_namespaces(cmd: SyncCommand, settings: Settings) -> None:
    if not cmd.namespaces:
        return
    prefixes = {""} | {v for k, v in settings.items() if re.fullmatch(r"namespace/[^/]+/prefix", k)}
    for ns in cmd.namespaces:
        if ns not in prefixes and ns.rstrip("/") not in {p.rstrip("/") for p in prefixes}:
            raise DsyncError(f"Namespace not found: '{ns}'", exit_code=EX_FAILED)


def _run_sync(cmd: SyncCommand, ctx: CliContext, user: UserInfo) -> tuple[SyncReport, Sides]:
    settings = ctx.settings
    sides = resolve_sides(cmd, settings, user)
    printer = ProgressPrinter(
        sys.stderr, quiet=ctx.quiet or cmd.quiet or cmd.json, verbose=ctx.verbose or ctx.debug, user=user.name
    )
    log.debug("source %s, destination %s, request %r", sides.source, sides.destination or sides.remote, cmd.request)
    try:
        with open_storage(sides.source, settings, user) as source:
            if sides.destination is not None:
                with open_storage(sides.destination, settings, user) as destination:
                    report = _engine().sync(source, destination, cmd.request, progress=printer)
            else:
                channel = _open_remote(cmd, sides, settings, user)
                try:
                    report = _engine().sync(source, _peer(channel, sides.remote), cmd.request, progress=printer)
                finally:
                    close = getattr(channel, "close", None)
                    if callable(close):
                        close()
    finally:
        printer.clear()
    return report, sides


def cmd_sync(args: argparse.Namespace, ctx: CliContext) -> int:
    cmd = sync_command_from_args(args)
    _check_namespaces(cmd, ctx.settings)
    names = select_users(cmd, ctx.settings)
    if not names:
        if cmd.users.kind == "user":
            raise DsyncError(f"No users match {cmd.users.value}", exit_code=EX_FAILED)
        log.info("No users to sync")
        return 0

    def emit(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")
        sys.stdout.flush()

    code = 0
    for name in names:
        code = _worse(code, run_one(cmd, ctx, name, emit=emit))
    return code


__all__ = [
    "SyncCommand",
    "UserSelection",
    "Sides",
    "add_commands",
    "cmd_sync",
    "parse_date",
    "parse_sync_argv",
    "resolve_sides",
    "select_users",
    "sync_command_from_args",
    "is_local_location",
]
