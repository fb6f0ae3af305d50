"""``dsync user [-f FIELD] [-u] USER|MASK...``: what the userdb says about users, as ``doveadm user``.

For user names: a ``field``/``value`` list per user (``tab`` formatter by default, a blank
line between users): ``uid``, ``gid``, ``home``, ``mail``, then the other userdb fields
(``mail_replica``, ...). Without ``-u``, a missing ``mail`` is filled from the
``mail_location`` setting, as doveadm does. ``-f FIELD`` prints only that field's value.
With ``*`` or ``?`` in an argument: the matching user names, one per line.
An unknown user prints ``userdb lookup: user X doesn't exist`` and exits 67.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import EX_NOUSER, DsyncError
from ..formatter import Field, Printer
from ..model import UserInfo
from ..plugin.manager import get_plugin_manager
from ..userdb import iter_users, wildcard_match
from .context import CliContext


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("user", help="show users' userdb fields, or list users matching a mask")
    p.add_argument("-f", dest="field", metavar="FIELD", help="print only this field's value")
    p.add_argument("-u", dest="userdb_only", action="store_true", help="only values from the userdb, no defaults")
    p.add_argument("users", nargs="+", metavar="USER")
    p.set_defaults(func=cmd_user)


def user_fields(info: UserInfo, mail_location: str = "") -> list[tuple[str, str]]:
    """``(field, value)`` pairs in doveadm's order: uid, gid, home, mail, then the rest."""
    out: list[tuple[str, str]] = []
    if info.uid is not None:
        out.append(("uid", str(info.uid)))
    if info.gid is not None:
        out.append(("gid", str(info.gid)))
    if info.home:
        out.append(("home", info.home))
    mail = info.fields.get("mail") or mail_location
    if mail:
        out.append(("mail", mail))
    for key, value in info.fields.items():
        if key not in ("uid", "gid", "home", "mail"):
            out.append((key, value))
    return out


def cmd_user(args: argparse.Namespace, ctx: CliContext) -> int:
    settings = ctx.settings
    if any("*" in u or "?" in u for u in args.users):
        names = [u.name for u in iter_users(settings) if any(wildcard_match(m, u.name) for m in args.users)]
        printer = Printer(ctx.output_format("flow"), [Field("username", hide_title=True)])
        for name in names:
            printer.row([name])
        if names or ctx.formatter == "json":
            printer.finish()
        return 0

    code = 0
    default_mail = "" if args.userdb_only else settings.get("mail_location", "")
    printer = None if args.field else Printer(ctx.output_format("tab"), [Field("field"), Field("value")])
    for i, name in enumerate(args.users):
        if i and printer is not None and printer.fmt != "json":
            printer.out.write(b"\n")  # doveadm separates users with an empty line
        try:
            info = get_plugin_manager().hook.dsync_userdb_lookup(user=name, settings=settings)
        except DsyncError as e:
            from . import _user_tag, one_line

            sys.stderr.write(f"dsync({_user_tag()}): Error: userdb lookup failed for {name}: {one_line(e.message)}\n")
            code = e.exit_code
            continue
        if info is None:
            stream = sys.stderr if args.field else sys.stdout
            stream.write(f"userdb lookup: user {name} doesn't exist\n")
            stream.flush()
            code = EX_NOUSER
            continue
        pairs = user_fields(info, default_mail)
        if args.field:
            for key, value in pairs:
                if key == args.field:
                    sys.stdout.write(value + "\n")
            sys.stdout.flush()
            continue
        assert printer is not None
        for key, value in pairs:
            printer.row([key, value])
    if printer is not None and (printer.rows or printer.fmt == "json"):
        printer.finish()
    return code


__all__ = ["add_commands", "cmd_user", "user_fields"]
