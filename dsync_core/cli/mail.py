"""doveadm's mail commands: ``mailbox ...``, ``save``, ``fetch``, ``flags``, ``expunge``, ``purge``.

Each works on the mail of one user (``-u USER``, default the invoking user) at the
location ``-o mail_location=...`` names, and prints through doveadm's formatters.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from ..errors import EX_TEMPFAIL, DsyncError, ExistsError, NotFoundError, UsageError
from ..formatter import Field, Printer
from ..model import SYSTEM_FLAGS, FlagUpdate, MailboxInfo, MessageRecord, SaveRequest, normalize_flag
from ..storage import Mailbox, Storage, normalize_mailbox_name
from ..streams import CrlfToLf, virtual_size
from .context import CliContext

if TYPE_CHECKING:
    from ..search import MessageContext

# dsync_core.search (and the email package it needs) is imported by the commands that
# search: a sync run never loads it.

# `mailbox status` prints its fields in this order whatever order they were asked in.
STATUS_FIELDS = ("messages", "recent", "uidnext", "uidvalidity", "unseen", "highestmodseq", "vsize", "guid", "firstsaved")


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    mailbox = sub.add_parser("mailbox", help="mailbox list, status, create, delete, rename, subscribe")
    msub = mailbox.add_subparsers(dest="mailbox_command", metavar="SUBCOMMAND", parser_class=type(mailbox))

    p = msub.add_parser("list", help="list mailboxes")
    _user_opts(p)
    p.add_argument("-s", dest="subscribed", action="store_true", help="list subscribed mailboxes")
    p.add_argument("masks", nargs="*", metavar="MASK")
    p.set_defaults(func=cmd_mailbox_list)

    p = msub.add_parser("status", help="show mailbox status fields")
    _user_opts(p)
    p.add_argument("-t", dest="total", action="store_true", help="sum the values over all mailboxes")
    p.add_argument("fields", metavar="FIELDS")
    p.add_argument("masks", nargs="+", metavar="MAILBOX-MASK")
    p.set_defaults(func=cmd_mailbox_status)

    p = msub.add_parser("create", help="create mailboxes")
    _user_opts(p)
    p.add_argument("-s", dest="subscribe", action="store_true", help="subscribe too")
    p.add_argument("-g", dest="guid", metavar="GUID", help="mailbox GUID for the new mailbox")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(func=cmd_mailbox_create)

    p = msub.add_parser("delete", help="delete mailboxes")
    _user_opts(p)
    p.add_argument("-r", dest="recursive", action="store_true", help="delete children too")
    p.add_argument("-s", dest="unsubscribe", action="store_true", help="unsubscribe too")
    p.add_argument("-e", dest="require_empty", action="store_true", help="only delete empty mailboxes")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(func=cmd_mailbox_delete)

    p = msub.add_parser("rename", help="rename a mailbox and its children")
    _user_opts(p)
    p.add_argument("-s", dest="subscribe", action="store_true", help="move the subscription too")
    p.add_argument("old", metavar="OLD")
    p.add_argument("new", metavar="NEW")
    p.set_defaults(func=cmd_mailbox_rename)

    for name, subscribed in (("subscribe", True), ("unsubscribe", False)):
        p = msub.add_parser(name, help=f"{name} mailboxes")
        _user_opts(p)
        p.add_argument("names", nargs="+", metavar="NAME")
        p.set_defaults(func=cmd_mailbox_subscribe, subscribed=subscribed)

    p = sub.add_parser("save", help="save a message read from stdin")
    _user_opts(p)
    p.add_argument("-m", dest="mailbox", default="INBOX", metavar="MAILBOX", help="mailbox to save to (INBOX)")
    p.set_defaults(func=cmd_save)

    p = sub.add_parser("fetch", help="print fields of messages matching a search query")
    _user_opts(p)
    p.add_argument("fields", metavar="FIELDS")
    p.add_argument("query", nargs=argparse.REMAINDER, metavar="SEARCH")
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("flags", help="add, remove or replace flags of messages")
    fsub = p.add_subparsers(dest="flags_command", metavar="add|remove|replace", parser_class=type(p))
    for action in ("add", "remove", "replace"):
        fp = fsub.add_parser(action, help=f"{action} flags")
        _user_opts(fp)
        fp.add_argument("flags", metavar="FLAGS")
        fp.add_argument("query", nargs=argparse.REMAINDER, metavar="SEARCH")
        fp.set_defaults(func=cmd_flags, action=action)

    p = sub.add_parser("expunge", help="expunge messages matching a search query")
    _user_opts(p)
    p.add_argument("-d", dest="delete_empty", action="store_true", help="delete mailboxes left empty")
    p.add_argument("query", nargs=argparse.REMAINDER, metavar="SEARCH")
    p.set_defaults(func=cmd_expunge)

    p = sub.add_parser("purge", help="reclaim the space of expunged messages (mdbox; nothing to do elsewhere)")
    _user_opts(p)
    p.set_defaults(func=cmd_purge)


def _user_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("-u", dest="user", metavar="USER", help="the user whose mail to use")


# -- helpers ----------------------------------------------------------------------------


def _report(prefix: str, err: DsyncError) -> int:
    """Print a per-item error the way doveadm does and return its exit code."""
    from . import _user_tag, one_line

    sys.stderr.write(f"dsync({_user_tag()}): Error: {one_line(prefix + err.message)}\n")
    return err.exit_code


def _empty_output(ctx: CliContext) -> None:
    # doveadm prints an empty JSON list for commands that print nothing.
    if ctx.formatter == "json":
        Printer("json", []).finish()


def format_flags(rec: MessageRecord, keyword_order: list[str] | None = None) -> str:
    """Flags as doveadm prints them: system flags in fixed order, then keywords."""
    parts = [f for f in SYSTEM_FLAGS if f in rec.flags]
    order = {k: i for i, k in enumerate(keyword_order or [])}
    parts.extend(sorted(rec.keywords, key=lambda k: (order.get(k, len(order)), k)))
    return " ".join(parts)


def split_flags(text: str) -> tuple[frozenset[str], frozenset[str]]:
    """``'\\Seen $Junk'`` -> (system flags, keywords). ``\\Recent`` is ignored, as doveadm does."""
    flags: set[str] = set()
    keywords: set[str] = set()
    for word in text.split():
        if word.startswith("\\"):
            f = normalize_flag(word)
            if f == "\\Recent" or f.lower() == "\\recent":
                continue
            if f not in SYSTEM_FLAGS:
                raise UsageError(f"Invalid system flag: {word}")
            flags.add(f)
        else:
            if any(c in word for c in '(){%*"\\]') or any(ord(c) < 0x21 or ord(c) > 0x7E for c in word):
                raise UsageError(f"Invalid keyword: {word}")
            keywords.add(word)
    return frozenset(flags), frozenset(keywords)


def _masked(storage: Storage, masks: list[str]) -> list[MailboxInfo]:
    from ..search import mailbox_mask_matches

    infos = storage.list_mailboxes()
    if not masks:
        return infos
    return [i for i in infos if any(mailbox_mask_matches(m, i.name) for m in masks)]


def _ts(value: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))


# -- mailbox commands -------------------------------------------------------------------


def cmd_mailbox_list(args: argparse.Namespace, ctx: CliContext) -> int:
    from ..search import mailbox_mask_matches

    with ctx.open_user_storage(args.user) as storage:
        if args.subscribed:
            names = storage.subscriptions()
            if args.masks:
                names = [n for n in names if any(mailbox_mask_matches(m, n) for m in args.masks)]
        else:
            names = [i.name for i in _masked(storage, args.masks)]
        out = Printer(ctx.output_format("flow"), [Field("mailbox", hide_title=True)])
        for n in names:
            out.row([n])
        out.finish()
    return 0


def cmd_mailbox_status(args: argparse.Namespace, ctx: CliContext) -> int:
    from ..search import mailbox_mask_matches

    wanted = set(args.fields.split())
    if "all" in wanted:
        wanted = set(STATUS_FIELDS)
    unknown = sorted(wanted - set(STATUS_FIELDS))
    if unknown:
        raise UsageError(f"Unknown status field: {unknown[0]}")
    if not wanted:
        raise UsageError("No status fields given")
    fields = [f for f in STATUS_FIELDS if f in wanted]
    totals: dict[str, int] = dict.fromkeys(fields, 0)
    exit_code = 0
    with ctx.open_user_storage(args.user) as storage:
        infos = [i for i in _masked(storage, args.masks) if i.selectable]
        for mask in args.masks:
            if not any(c in mask for c in "*%") and not any(mailbox_mask_matches(mask, i.name) for i in infos):
                exit_code = _report(
                    f"Mailbox {mask}: Failed to lookup mailbox status: ", NotFoundError(f"Mailbox doesn't exist: {mask}")
                )
        printer = None if args.total else Printer(
            ctx.output_format("flow"), [Field("mailbox", hide_title=True)] + [Field(f) for f in fields]
        )
        for info in infos:
            with storage.open_mailbox(info.name) as box:
                values = _status_values(box, fields)
            if printer:
                printer.row([info.name] + [values[f] for f in fields])
            else:
                for f in fields:
                    if f not in ("guid", "firstsaved"):
                        totals[f] += int(values[f])
        if printer:
            if printer.rows or ctx.formatter in ("json", "tab", "table"):
                printer.finish()
        else:
            out = Printer(ctx.output_format("flow"), [Field(f) for f in fields if f not in ("guid", "firstsaved")])
            out.row([str(totals[f]) for f in fields if f not in ("guid", "firstsaved")])
            out.finish()
    return exit_code


def _status_values(box: Mailbox, fields: list[str]) -> dict[str, str]:
    st = box.status()
    values = {
        "messages": str(st.messages),
        "recent": str(st.recent),
        "uidnext": str(st.uidnext),
        "uidvalidity": str(st.uidvalidity),
        "unseen": str(st.unseen),
        "highestmodseq": str(st.highestmodseq),
        "guid": st.guid,
    }
    if "vsize" in fields or "firstsaved" in fields:
        vsize = 0
        first = 0
        for rec in box.records():
            if not first:
                first = rec.save_date or rec.internaldate or 0
            if "vsize" in fields:
                vsize += _vsize(box, rec)
        values["vsize"] = str(vsize)
        values["firstsaved"] = str(first) if first else "never"
    return values


def _vsize(box: Mailbox, rec: MessageRecord) -> int:
    if rec.vsize is not None:
        return rec.vsize
    with box.open_body(rec.uid) as f:
        return virtual_size(f)[1]


def cmd_mailbox_create(args: argparse.Namespace, ctx: CliContext) -> int:
    code = 0
    with ctx.open_user_storage(args.user) as storage:
        for name in args.names:
            try:
                name = normalize_mailbox_name(name)
                storage.create_mailbox(name, guid=args.guid.lower() if args.guid else None)
                if args.subscribe:
                    storage.set_subscribed(name, True)
            except ExistsError:
                # doveadm's exact wording, which scripts match on.
                code = _report(f"Can't create mailbox {name}: ", ExistsError("Mailbox already exists"))
            except DsyncError as e:
                code = _report(f"Can't create mailbox {name}: ", e)
    _empty_output(ctx)
    return code


def cmd_mailbox_delete(args: argparse.Namespace, ctx: CliContext) -> int:
    code = 0
    with ctx.open_user_storage(args.user) as storage:
        for name in args.names:
            try:
                name = normalize_mailbox_name(name)
            except DsyncError as e:
                code = _report(f"Can't delete mailbox {name}: ", e)
                continue
            existing = {i.name: i for i in storage.list_mailboxes()}
            children = sorted((n for n in existing if n.startswith(name + "/")), key=lambda n: -n.count("/"))
            targets = (children if args.recursive else []) + [name]
            for target in targets:
                try:
                    if target == "INBOX":
                        raise ExistsError("INBOX can't be deleted.")
                    if target not in existing:
                        raise NotFoundError(f"Mailbox doesn't exist: {target}")
                    if args.require_empty and existing[target].selectable:
                        with storage.open_mailbox(target) as box:
                            if box.status().messages:
                                raise ExistsError("Mailbox isn't empty")
                    storage.delete_mailbox(target)
                    if args.unsubscribe:
                        storage.set_subscribed(target, False)
                except DsyncError as e:
                    code = _report(f"Can't delete mailbox {target}: ", e)
    _empty_output(ctx)
    return code


def cmd_mailbox_rename(args: argparse.Namespace, ctx: CliContext) -> int:
    old = normalize_mailbox_name(args.old)
    new = normalize_mailbox_name(args.new)
    with ctx.open_user_storage(args.user) as storage:
        try:
            storage.rename_mailbox(old, new)
        except ExistsError as e:
            reason = "Target mailbox already exists" if "already exists" in e.message else e.message
            return _report(f"Can't rename mailbox {old} to {new}: ", ExistsError(reason))
        except DsyncError as e:
            return _report(f"Can't rename mailbox {old} to {new}: ", e)
        if args.subscribe:
            storage.set_subscribed(old, False)
            storage.set_subscribed(new, True)
    _empty_output(ctx)
    return 0


def cmd_mailbox_subscribe(args: argparse.Namespace, ctx: CliContext) -> int:
    code = 0
    with ctx.open_user_storage(args.user) as storage:
        for name in args.names:
            try:
                storage.set_subscribed(normalize_mailbox_name(name), args.subscribed)
            except DsyncError as e:
                code = _report(f"Mailbox {name}: ", e)
    _empty_output(ctx)
    return code


# -- messages ---------------------------------------------------------------------------


def cmd_save(args: argparse.Namespace, ctx: CliContext) -> int:
    name = normalize_mailbox_name(args.mailbox)
    with ctx.open_user_storage(args.user) as storage:
        try:
            box = storage.open_mailbox(name)
        except DsyncError as e:
            return _report(f"Failed to open mailbox {name}: ", e)
        with box:
            body = CrlfToLf(sys.stdin.buffer)
            box.save([SaveRequest(body=body, internaldate=int(time.time()))])  # type: ignore[arg-type]
    _empty_output(ctx)
    return 0


def _header_values(header_block: bytes, name: str) -> str:
    """Raw values of every ``name:`` header, folding kept, joined by LF (doveadm's hdr.NAME)."""
    values: list[str] = []
    current: list[str] | None = None
    lname = name.lower()
    for raw in header_block.split(b"\n"):
        line = raw.rstrip(b"\r").decode("utf-8", "surrogateescape")
        if line == "":
            break
        if line[0] in " \t":
            if current is not None:
                current.append(line)
            continue
        if current is not None:
            values.append("\n".join(current))
            current = None
        key, colon, value = line.partition(":")
        if colon and key.strip().lower() == lname:
            current = [value.lstrip(" \t")]
    if current is not None:
        values.append("\n".join(current))
    return "\n".join(values)


def _read_parts(ctx_msg: MessageContext) -> tuple[bytes, bytes]:
    with ctx_msg.open_body() as f:
        data = f.read()
    for sep in (b"\r\n\r\n", b"\n\n"):
        idx = data.find(sep)
        if idx >= 0 and (sep == b"\n\n" or data.find(b"\n\n") < 0 or idx < data.find(b"\n\n")):
            cut = idx + len(sep)
            return data[:cut], data[cut:]
    return data, b""


FetchGetter = Callable[["MessageContext", str], str]


def _date_sent(m: MessageContext) -> str:
    sent = m.sent_date()
    ts, offset = sent if sent else (0, 0)
    sign = "+" if offset >= 0 else "-"
    off = abs(offset) // 60
    return f"{_ts(ts)} ({sign}{off // 60:02d}{off % 60:02d})"


def _fetch_value(m: MessageContext, field: str, user: str) -> str:
    rec = m.record
    if field == "mailbox":
        return m.info.name
    if field == "mailbox-guid":
        return m.info.guid
    if field == "seq":
        return str(m.seq)
    if field == "uid":
        return str(rec.uid)
    if field == "guid":
        return rec.guid
    if field == "modseq":
        return str(rec.modseq)
    if field == "flags":
        return format_flags(rec, m.mailbox.keyword_order())
    if field == "user":
        return user
    if field == "size.physical":
        if rec.size is not None:
            return str(rec.size)
        with m.open_body() as f:
            return str(virtual_size(f)[0])
    if field == "size.virtual":
        return str(_vsize(m.mailbox, rec))
    if field == "date.received":
        return _ts(rec.internaldate)
    if field == "date.received.unixtime":
        return str(rec.internaldate)
    if field == "date.saved":
        return _ts(rec.save_date or rec.internaldate)
    if field == "date.saved.unixtime":
        return str(rec.save_date or rec.internaldate)
    if field == "date.sent":
        return _date_sent(m)
    if field == "date.sent.unixtime":
        sent = m.sent_date()
        return str(sent[0] if sent else 0)
    if field in ("hdr", "body", "text"):
        hdr, body = _read_parts(m)
        data = {"hdr": hdr, "body": body, "text": hdr + body}[field]
        return data.decode("utf-8", "surrogateescape")
    if field.startswith("hdr."):
        return _header_values(m.header_bytes(), field[4:])
    raise UsageError(f"Unknown fetch field: {field}")


_SIMPLE_FETCH = {
    "mailbox", "mailbox-guid", "seq", "uid", "guid", "modseq", "flags", "user", "size.physical", "size.virtual",
    "date.received", "date.received.unixtime", "date.saved", "date.saved.unixtime", "date.sent",
    "date.sent.unixtime", "hdr", "body", "text",
}
_STREAM_FIELDS = {"hdr", "body", "text"}


def cmd_fetch(args: argparse.Namespace, ctx: CliContext) -> int:
    from ..search import parse_query, search

    fields = [f.lower() for f in args.fields.split()]
    if not fields:
        raise UsageError("fetch: no fields given")
    for f in fields:
        if f not in _SIMPLE_FETCH and not (f.startswith("hdr.") and len(f) > 4):
            sys.stderr.write("Available fetch fields: " + " ".join(sorted(_SIMPLE_FETCH)) + " hdr.<name>\n")
            raise DsyncError(f"Unknown fetch field: {f}", exit_code=EX_TEMPFAIL)
    query = parse_query(args.query)
    user = (ctx.lookup_user(args.user) or None)
    user_name = user.name if user else ""
    printer = Printer(ctx.output_format("pager"), [Field(f, stream=f in _STREAM_FIELDS) for f in fields])
    with ctx.open_user_storage(args.user) as storage:
        for m in search(storage, query):
            printer.row([_fetch_value(m, f, user_name) for f in fields])
    printer.finish()
    return 0


def _group_by_mailbox(storage: Storage, query_args: list[str]) -> Iterable[tuple[str, list[MessageRecord]]]:
    from ..search import parse_query, search

    query = parse_query(query_args)
    current: str | None = None
    recs: list[MessageRecord] = []
    for m in search(storage, query):
        if m.info.name != current:
            if current is not None:
                yield current, recs
            current, recs = m.info.name, []
        recs.append(m.record)
    if current is not None:
        yield current, recs


def cmd_flags(args: argparse.Namespace, ctx: CliContext) -> int:
    flags, keywords = split_flags(args.flags)
    if not flags and not keywords and args.action != "replace":
        raise UsageError("flags: no flags given")
    with ctx.open_user_storage(args.user) as storage:
        # Collect first, then change: changing while iterating a mailbox would move files under the scan.
        groups = list(_group_by_mailbox(storage, args.query))
        for name, recs in groups:
            updates = []
            for rec in recs:
                if args.action == "add":
                    updates.append(FlagUpdate(rec.uid, add_flags=flags, add_keywords=keywords))
                elif args.action == "remove":
                    updates.append(FlagUpdate(rec.uid, remove_flags=flags, remove_keywords=keywords))
                else:
                    updates.append(
                        FlagUpdate(
                            rec.uid,
                            add_flags=flags,
                            remove_flags=rec.flags - flags,
                            add_keywords=keywords,
                            remove_keywords=rec.keywords - keywords,
                        )
                    )
            with storage.open_mailbox(name) as box:
                box.update_flags(updates)
    _empty_output(ctx)
    return 0


def cmd_expunge(args: argparse.Namespace, ctx: CliContext) -> int:
    from ..search import names_mailbox_everywhere, parse_query

    if not names_mailbox_everywhere(parse_query(args.query)):
        raise UsageError("expunge: To avoid accidents, search query must contain MAILBOX in all search branches")
    with ctx.open_user_storage(args.user) as storage:
        groups = list(_group_by_mailbox(storage, args.query))
        for name, recs in groups:
            with storage.open_mailbox(name) as box:
                box.expunge(r.uid for r in recs)
                empty = box.status().messages == 0
            if args.delete_empty and empty and name != "INBOX":
                storage.delete_mailbox(name)
    _empty_output(ctx)
    return 0


def cmd_purge(args: argparse.Namespace, ctx: CliContext) -> int:
    """doveadm purge: let the storage reclaim space (mdbox rewrites files of expunged mail)."""
    with ctx.open_user_storage(args.user) as storage:
        storage.purge()
    _empty_output(ctx)
    return 0
