"""Dovecot's default conflict policy, as ``trylast`` hook implementations any plugin overrides."""

from __future__ import annotations

from .model import MessageRecord
from .plugin import hookimpl


@hookimpl(trylast=True)
def dsync_resolve_flag_conflict(
    mailbox: str, local: MessageRecord, remote: MessageRecord, prefer_remote: bool
) -> tuple[frozenset[str], frozenset[str]]:
    # Dovecot: the side with the higher modseq wins (the master, our source, on a tie).
    winner = remote if prefer_remote else local
    return winner.flags, winner.keywords


@hookimpl(trylast=True)
def dsync_resolve_name_conflict(name: str, local_guid: str, remote_guid: str) -> str:
    # The engine renames the mailbox whose GUID sorts lower; its GUID makes the name unique
    # and is the same whichever side computes it (Dovecot also uses the GUID as suffix).
    loser = min(local_guid, remote_guid)
    return f"{name}-{loser[:8]}"


@hookimpl(trylast=True)
def dsync_filter_message(mailbox: str, record: MessageRecord) -> bool:
    return True
