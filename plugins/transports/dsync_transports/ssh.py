"""``remote:`` / ``remoteprefix:`` through the built-in ssh client (paramiko).

Honours ``~/.ssh/config`` (Host, HostName, Port, User, IdentityFile, UserKnownHostsFile)
and verifies the host key against ``~/.ssh/known_hosts``: an unknown or changed key is
refused, never learned. The settings ``dsync_ssh_config`` and ``dsync_ssh_known_hosts``
point elsewhere. On the far side it runs ``dsync_server_cmd`` (default ``dsync server -u%u``).
"""

from __future__ import annotations

import getpass
import os
import sys
import threading
from typing import Any

from dsync_core.errors import DsyncError
from dsync_core.remote import RemoteReplica
from dsync_core.settings import Settings

from .open import DEFAULT_SERVER_CMD, Target, expand_command, variables_for

#: How long to wait for the remote command's exit status after the conversation.
EXIT_WAIT = 30.0


def _fail(text: str) -> DsyncError:
    return DsyncError(text, exit_code=1)


class ParamikoChannel:
    """A channel over an ssh session running the remote command; its stderr is copied to ours."""

    def __init__(self, client: Any, chan: Any, timeout: float | None) -> None:
        self.client = client
        self.chan = chan
        chan.settimeout(timeout or None)
        self._closing = False
        self._pump = threading.Thread(target=self._copy_stderr, name="dsync-ssh-stderr", daemon=True)
        self._pump.start()

    def _copy_stderr(self) -> None:
        while True:
            try:
                data = self.chan.recv_stderr(4096)
            except TimeoutError:
                if self._closing:
                    return
                continue
            except (OSError, EOFError):
                return
            if not data:
                return
            try:
                sys.stderr.write(data.decode("utf-8", errors="replace"))
                sys.stderr.flush()
            except (OSError, ValueError):
                return

    def read(self, n: int) -> bytes:
        return self.chan.recv(n)  # type: ignore[no-any-return]

    def write(self, data: bytes) -> None:
        self.chan.sendall(data)

    def close(self) -> None:
        self._closing = True
        try:
            self.chan.shutdown_write()
            self.chan.status_event.wait(EXIT_WAIT)
        except (OSError, EOFError):
            pass
        self._pump.join(2)
        try:
            self.chan.close()
        finally:
            self.client.close()


def _ssh_config(settings: Settings, host: str) -> dict[str, Any]:
    import paramiko

    path = os.path.expanduser(settings.get("dsync_ssh_config") or "~/.ssh/config")
    if not os.path.exists(path):
        return {}
    try:
        return dict(paramiko.SSHConfig.from_path(path).lookup(host))
    except (OSError, ValueError, paramiko.SSHException) as e:
        raise _fail(f"Cannot read ssh config {path}: {e}") from None


def open_ssh(target: Target, settings: Settings, user: str, timeout: float, rawlog: str | None, *,
             prefix: bytes) -> Any:
    import paramiko

    cfg = _ssh_config(settings, target.host)
    hostname = cfg.get("hostname") or target.host
    try:
        port = target.port or int(cfg.get("port") or 22)
    except ValueError:
        raise _fail(f"Bad Port in ssh config for {target.host}: {cfg.get('port')!r}") from None
    login = target.login or cfg.get("user") or getpass.getuser()
    identities = [os.path.expanduser(p) for p in cfg.get("identityfile", [])]
    identities = [p for p in identities if os.path.exists(p)]
    known_setting = settings.get("dsync_ssh_known_hosts")
    known_cfg = cfg.get("userknownhostsfile")
    known = os.path.expanduser(known_setting or (known_cfg.split()[0] if known_cfg else "~/.ssh/known_hosts"))
    where = f"{login}@{hostname}" + (f":{port}" if port != 22 else "")

    client = paramiko.SSHClient()
    if os.path.exists(known):
        try:
            client.load_system_host_keys(known)
        except (OSError, paramiko.SSHException) as e:
            raise _fail(f"Cannot read known hosts file {known}: {e}") from None
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(
            hostname,
            port,
            username=login,
            key_filename=identities or None,
            look_for_keys=not identities,
            allow_agent=True,
            timeout=min(timeout, 60),
            banner_timeout=min(timeout, 60),
            auth_timeout=min(timeout, 60),
        )
    except paramiko.BadHostKeyException:
        client.close()
        raise _fail(
            f"ssh {where}: the host key has CHANGED (it does not match {known}): refusing to connect"
        ) from None
    except paramiko.AuthenticationException as e:
        client.close()
        raise _fail(f"ssh {where}: authentication failed: {e}") from None
    except paramiko.SSHException as e:
        client.close()
        if "known_hosts" in str(e):
            raise _fail(f"ssh {where}: the host key is unknown (not in {known}): refusing to connect") from None
        raise _fail(f"ssh {where}: {e}") from None
    except (OSError, EOFError) as e:
        client.close()
        raise _fail(f"ssh {where}: cannot connect: {getattr(e, 'strerror', None) or e}") from None

    template = settings.get("dsync_server_cmd") or DEFAULT_SERVER_CMD
    command = expand_command(template, variables_for(user, login, hostname), quote=True)
    assert isinstance(command, str)
    try:
        transport = client.get_transport()
        assert transport is not None
        chan = transport.open_session(timeout=min(timeout, 60))
        chan.exec_command(command)
    except (paramiko.SSHException, OSError, EOFError) as e:
        client.close()
        raise _fail(f"ssh {where}: cannot run {command!r}: {e}") from None
    channel = ParamikoChannel(client, chan, timeout)
    try:
        if prefix:
            channel.write(prefix)
        return RemoteReplica(channel, user=user, io_timeout=timeout, rawlog=rawlog,
                             peer=f"the remote dsync server ({where}: {command})")
    except OSError as e:
        channel.close()
        raise _fail(f"ssh {where}: {e}") from None
    except BaseException:
        channel.close()
        raise
