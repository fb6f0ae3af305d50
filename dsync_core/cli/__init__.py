"""The ``dsync`` command line: doveadm's global options, then a command.

``dsync [-Dv] [-c FILE] [-o key=value]... [-f FORMATTER] COMMAND ...``. Command families
live in their own modules (:mod:`dsync_core.cli.mail` for the doveadm mail commands);
plugins add more through the ``dsync_add_commands`` hook.
"""

from __future__ import annotations

import argparse
import contextvars
import logging
import os
import sys
from collections.abc import Sequence

from ..errors import EX_SOFTWARE, EX_USAGE, DsyncError, UsageError
from ..formatter import FORMATTERS
from ..plugin.manager import get_plugin_manager
from ..settings import load_settings
from . import mail, server, sync, user
from .context import CliContext

#: The user a command works for right now, named in ``dsync(USER):`` lines; unset = the invoking user.
current_user: contextvars.ContextVar[str | None] = contextvars.ContextVar("dsync_current_user", default=None)


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as :class:`UsageError` (exit 64, like doveadm)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        usage = " ".join(self.format_usage().split()).removeprefix("usage: ")
        raise UsageError(f"{message} (usage: {usage})")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dsync",
        description="Mailbox synchronisation and doveadm-style mail commands, compatible with Dovecot.",
    )
    parser.add_argument("-c", dest="config", metavar="FILE", help="read settings from this dovecot.conf-style file")
    parser.add_argument(
        "-o", dest="overrides", metavar="KEY=VALUE", action="append", default=[], help="override a setting"
    )
    parser.add_argument("-f", dest="formatter", metavar="FORMATTER", choices=FORMATTERS, help="output formatter: "
                        + ", ".join(FORMATTERS))
    parser.add_argument("-D", dest="debug", action="store_true", help="debug output")
    parser.add_argument("-v", dest="verbose", action="store_true", help="verbose output")
    parser.add_argument("-q", dest="quiet", action="store_true", help="no progress output")
    parser.add_argument("--version", action="version", version="dsync-py 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    mail.add_commands(sub)
    sync.add_commands(sub)
    user.add_commands(sub)
    server.add_commands(sub)
    get_plugin_manager().hook.dsync_add_commands(subparsers=sub)
    return parser


def _setup_logging(ctx: CliContext) -> None:
    level = logging.DEBUG if ctx.debug else logging.INFO if ctx.verbose else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_DoveadmLogFormatter())
    root = logging.getLogger("dsync")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


class _DoveadmLogFormatter(logging.Formatter):
    _LEVELS = {"DEBUG": "Debug", "INFO": "Info", "WARNING": "Warning", "ERROR": "Error", "CRITICAL": "Fatal"}

    def format(self, record: logging.LogRecord) -> str:
        level = self._LEVELS.get(record.levelname, record.levelname)
        return f"dsync({_user_tag()}): {level}: {one_line(record.getMessage())}"


def one_line(text: str) -> str:
    """Escape control characters so that a message stays one line on a terminal or in a log."""
    return "".join(ch if ch >= " " and ch != "\x7f" else repr(ch)[1:-1] for ch in text)


def _user_tag() -> str:
    """The user named in log lines, as doveadm's ``doveadm(user):`` prefix."""
    if current_user.get():
        return current_user.get()  # type: ignore[return-value]
    if os.environ.get("USER"):
        return os.environ["USER"]
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (KeyError, ImportError):
        return "dsync"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (``dsync`` exits with it)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    debug = "-D" in args_list[:1] or any(a.startswith("-") and "D" in a and not a.startswith("--") for a in args_list[:3])
    try:
        parser = build_parser()
        args = parser.parse_args(args_list)
        if not getattr(args, "func", None):
            parser.print_usage(sys.stderr)
            return EX_USAGE
        settings = load_settings(args.config, args.overrides)
        ctx = CliContext(
            settings=settings,
            formatter=args.formatter,
            debug=args.debug,
            verbose=args.verbose,
            quiet=args.quiet,
        )
        _setup_logging(ctx)
        return int(args.func(args, ctx) or 0)
    except DsyncError as e:
        sys.stderr.write(f"dsync({_user_tag()}): Error: {one_line(e.message)}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(f"dsync({_user_tag()}): Error: interrupted\n")
        return 130
    except BrokenPipeError:
        # The reader went away (dsync ... | head): not our failure. Point stdout at
        # /dev/null so the interpreter's final flush does not complain.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as e:  # the last line of defence: never a bare traceback for a user
        if debug:
            import traceback

            traceback.print_exc()
        sys.stderr.write(f"dsync({_user_tag()}): Fatal: internal error: {type(e).__name__}: {one_line(str(e))}\n")
        return EX_SOFTWARE


def run() -> None:
    sys.exit(main())


__all__ = ["main", "build_parser", "run"]
