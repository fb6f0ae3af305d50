"""Every hook a dsync plugin can implement, grouped by phase.

Each hook's docstring says what it is for, its arguments and its result. ``firstresult``
hooks stop at the first implementation that returns something other than ``None``;
the others collect a list of every non-``None`` result. ``docs/hooks.md`` lists every
hook with an example; a test keeps the two in step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import hookspec

if TYPE_CHECKING:  # pragma: no cover
    import argparse

    from ..changelog import ChangeLog
    from ..location import Location
    from ..model import MessageRecord, UserInfo
    from ..settings import Settings
    from ..storage import Storage


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


@hookspec
def dsync_add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add commands to the ``dsync`` command line.

    :param subparsers: the ``argparse`` sub-parser collection of the top-level parser.
        Add a parser with ``subparsers.add_parser(NAME)`` and set ``func`` as its default:
        ``parser.set_defaults(func=run)``; ``run(args, ctx)`` returns the exit status.
    :returns: nothing.

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def dsync_storage_open(location: Location, settings: Settings, user: UserInfo | None) -> Storage | None:
    """Open the mail storage a location names.

    :param location: the parsed location (``location.scheme`` is ``maildir`` for
        ``maildir:~/Maildir``); ``~`` and ``%`` variables are already expanded.
    :param settings: the effective settings (config file and ``-o`` overrides).
    :param user: the user the storage belongs to, or ``None`` when unknown.
    :returns: an opened :class:`dsync_core.storage.Storage`, or ``None`` when this
        plugin does not serve ``location.scheme``. Stops at the first non-``None`` result.

    .. versionadded:: 0.1
    """


@hookspec
def dsync_storage_schemes() -> list[str]:
    """Name the location schemes this plugin serves (for help and error messages).

    :returns: a list of scheme names such as ``["maildir"]``.

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------------------
# Change log
# ---------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def dsync_changelog_open(path: str, settings: Settings) -> ChangeLog | None:
    """Open the change log a storage without native modseqs keeps beside its mail.

    :param path: where the storage wants its change log (a file path, or ``:memory:``).
    :param settings: the effective settings.
    :returns: a :class:`dsync_core.changelog.ChangeLog`. The core's SQLite change log is
        the ``trylast`` default; return your own to replace it.

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------------------
# Users
# ---------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def dsync_userdb_lookup(user: str, settings: Settings) -> UserInfo | None:
    """Look up a user: home directory, uid/gid and extra fields (``mail``, ``mail_replica``).

    :param user: the user name as given to ``-u``.
    :param settings: the effective settings.
    :returns: a :class:`dsync_core.model.UserInfo`, or ``None`` if this userdb does not
        know the user. The system's user database is the ``trylast`` default.

    .. versionadded:: 0.1
    """


@hookspec
def dsync_userdb_iter(settings: Settings) -> list[UserInfo]:
    """List the users this userdb knows (``-A``, ``dsync user '*'``).

    :param settings: the effective settings.
    :returns: a list of :class:`dsync_core.model.UserInfo`; lists of every plugin are
        joined, the first entry for a name wins.

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------------------
# Transport
# ---------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def dsync_transport_open(destination: str, settings: Settings, user: UserInfo | None) -> Any:
    """Open a byte channel to a remote ``dsync server`` for a destination string.

    :param destination: what the user wrote: ``remote:login@host``, ``tcp:host:port``,
        ``tcps:host``, or a command line.
    :param settings: the effective settings (``dsync_remote_cmd``, ``doveadm_port``, ...).
    :param user: the user being synced.
    :returns: what the engine syncs with: a :class:`dsync_core.replica.Replica` (a
        transport wraps its byte channel in :class:`dsync_core.remote.RemoteReplica`, see
        docs/protocol.md) or a :class:`dsync_core.storage.Storage`; ``None`` when this
        plugin does not handle the destination.

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------------------
# Conflict resolution (the engine asks; the default is Dovecot's policy, trylast)
# ---------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def dsync_resolve_flag_conflict(
    mailbox: str,
    local: MessageRecord,
    remote: MessageRecord,
    prefer_remote: bool,
) -> tuple[frozenset[str], frozenset[str]] | None:
    """Decide the flags and keywords of a message changed on both sides since the last sync.

    :param mailbox: the mailbox name.
    :param local: the local record (current flags, keywords, modseq).
    :param remote: the remote record.
    :param prefer_remote: what Dovecot's rule says (the remote modseq is higher, or equal
        and this side is the slave).
    :returns: ``(flags, keywords)`` both sides end with, or ``None`` to leave it to the
        next implementation.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def dsync_resolve_name_conflict(name: str, local_guid: str, remote_guid: str) -> str | None:
    """Choose the new name for one of two different mailboxes that have the same name.

    :param name: the contested name.
    :param local_guid: GUID of the local mailbox with that name.
    :param remote_guid: GUID of the remote one.
    :returns: the name the mailbox that loses is renamed to, or ``None``.

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------------------
# Pipeline
# ---------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def dsync_filter_message(mailbox: str, record: MessageRecord) -> bool | None:
    """Decide whether a new message is copied at all.

    :param mailbox: the mailbox name on the source side.
    :param record: the message's record.
    :returns: ``False`` to skip the message, ``True`` to copy it, ``None`` to let the
        next implementation decide (the default copies).

    .. versionadded:: 0.1
    """


@hookspec
def dsync_sync_started(request: Any) -> None:
    """Called when a sync run starts, with the request describing it.

    .. versionadded:: 0.1
    """


@hookspec
def dsync_sync_finished(request: Any, report: Any) -> None:
    """Called when a sync run ends, with its request and report (metrics, replication).

    .. versionadded:: 0.1
    """


@hookspec
def dsync_notify(request: Any, report: Any) -> None:
    """Called after a sync run made with ``-U`` (``SyncRequest.notify``): the replicator's
    way of hearing that a user is in sync. ``request`` and ``report`` are the run's
    :class:`~dsync_core.model.SyncRequest` and :class:`~dsync_core.model.SyncReport`
    (``report.unapplied`` non-empty means the user needs another run). Not called for a
    run that failed.

    .. versionadded:: 0.1
    """
