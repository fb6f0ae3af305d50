"""dsync-transports: reach a remote ``dsync server`` for ``dsync sync|backup DESTINATION``.

Destinations (doveadm-sync(1)):

* ``remote:[login@]host[:port]`` — ssh through the built-in paramiko client (``~/.ssh/config``,
  ``~/.ssh/known_hosts``: an unknown or changed host key is refused), running the setting
  ``dsync_server_cmd`` (default ``dsync server -u%u``) there; or, when ``dsync_remote_cmd``
  is set, that local command (``%{login}``, ``%{host}``, ``%u`` expanded).
* ``remoteprefix:[login@]host[:port]`` — the same, but the user name is sent as the first
  line, for a trusted wrapper (an ``authorized_keys`` forced command).
* ``tcp:host[:port]``, ``tcps:host[:port]`` — a ``dsync server --listen`` (port default
  ``doveadm_port``), authenticated by ``doveadm_password`` (challenge-response); tcps
  verifies the server certificate against ``ssl_client_ca_file``/``ssl_client_ca_dir``
  (default: the system store) and the host name.
* ``[login@]host`` — like ``remote:``.
* a command line (several words, or one with a ``/``) — run it and speak the protocol on
  its stdin/stdout; ``dsync-server`` is appended unless the command already names
  ``server``/``dsync-server``.

Heavy modules (paramiko, ssl) are imported only when such a destination is opened.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dsync_core.plugin import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from dsync_core.model import UserInfo
    from dsync_core.settings import Settings


@hookimpl
def dsync_transport_open(destination: str, settings: Settings, user: UserInfo | None) -> Any:
    from .open import open_destination

    return open_destination(destination, settings, user)
