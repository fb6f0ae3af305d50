"""Shared helpers for the engine tests (no tests here): two sides, deliveries, snapshots."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable, Iterator

from dsync_core.api import open_storage
from dsync_core.model import SaveRequest
from dsync_core.settings import Settings
from dsync_core.storage import Storage

Opener = Callable[[str], Storage]


def deliver(st: Storage, mailbox: str, body: bytes | None = None, flags=(), keywords=(), internaldate=None) -> int:
    """Save one message (as an MDA would) and return its UID."""
    if body is None:
        body = f"Subject: test\nMessage-ID: <{uuid.uuid4().hex}@x>\n\nhello\n".encode()
    with st.open_mailbox(mailbox) as mb:
        rec = mb.save([SaveRequest(io.BytesIO(body), flags=frozenset(flags), keywords=frozenset(keywords),
                                   internaldate=internaldate)])[0]
    return rec.uid


def messages(st: Storage, mailbox: str) -> list[tuple[int, str, frozenset[str], frozenset[str]]]:
    with st.open_mailbox(mailbox) as mb:
        return [(r.uid, r.guid, r.flags, frozenset(k.lower() for k in r.keywords)) for r in mb.records()]


def snapshot(st: Storage, *, uids: bool = True) -> dict[str, object]:
    """Everything a client could tell apart, per mailbox name; plus subscriptions."""
    boxes: dict[str, object] = {}
    for info in st.list_mailboxes():
        if not info.selectable:
            continue
        msgs = messages(st, info.name)
        if not uids:
            msgs = sorted((g, f, k) for _u, g, f, k in msgs)  # type: ignore[misc]
        boxes[info.name] = (info.guid, msgs)
    return {"boxes": boxes, "subs": sorted(st.subscriptions())}


def status(st: Storage, mailbox: str):  # type: ignore[no-untyped-def]
    with st.open_mailbox(mailbox) as mb:
        return mb.status()


def set_flags(st: Storage, mailbox: str, uid: int, add=(), remove=(), add_kw=(), remove_kw=()) -> None:
    from dsync_core.model import FlagUpdate

    with st.open_mailbox(mailbox) as mb:
        mb.update_flags([FlagUpdate(uid, frozenset(add), frozenset(remove), frozenset(add_kw), frozenset(remove_kw))])


def expunge(st: Storage, mailbox: str, *uids: int) -> None:
    with st.open_mailbox(mailbox) as mb:
        mb.expunge(uids)


def open_sides(tmp_path, kind: str) -> Iterator[tuple[Storage, Storage]]:  # type: ignore[no-untyped-def]
    """Two empty storages of one backend, (source, destination), for a fixture to yield from."""
    opened: list[Storage] = []
    if kind == "memory":
        import memstore

        from dsync_core.plugin.manager import get_plugin_manager

        pm = get_plugin_manager()
        if not pm.is_registered(memstore):
            pm.register(memstore)
        names = [f"eng-{uuid.uuid4().hex}" for _ in range(2)]
        opened = [open_storage(f"memory:{n}", Settings()) for n in names]
        try:
            yield opened[0], opened[1]
        finally:
            for n in names:
                memstore.drop(n)
            pm.unregister(memstore)
    else:
        opened = [open_storage(f"maildir:{tmp_path / n}:LAYOUT=fs", Settings()) for n in ("src", "dst")]
        try:
            yield opened[0], opened[1]
        finally:
            for st in opened:
                st.close()


def reopen(st: Storage) -> Storage:
    """The same mail opened afresh (Maildir: a new process would see this)."""
    if st.scheme == "memory":
        return st
    return open_storage(f"maildir:{st.root}:LAYOUT=fs", Settings())
