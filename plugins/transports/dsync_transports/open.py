"""Which transport a destination string names, and the common options of all of them."""

from __future__ import annotations

import getpass
import re
import shlex
from typing import Any

import attrs

from dsync_core.errors import DsyncError, UsageError
from dsync_core.location import expand_vars, user_variables
from dsync_core.model import UserInfo
from dsync_core.protocol import DEFAULT_IO_TIMEOUT
from dsync_core.settings import Settings

EX_FAILED = 1
DEFAULT_SERVER_CMD = "dsync server -u%u"
_VAR_RE = re.compile(r"%(?:\{[A-Za-z_]+\}|[A-Za-z%])")


@attrs.frozen
class Target:
    """A parsed destination: ``kind`` is remote, remoteprefix, tcp, tcps or command."""

    kind: str
    host: str = ""
    port: int | None = None
    login: str = ""
    argv: tuple[str, ...] = ()


_HOST_RE = re.compile(r"(?:(?P<login>[^@\s]+)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^:@\s\[\]]+)(?::(?P<port>\d{1,5}))?")


def _host_port(text: str, what: str) -> tuple[str, str, int | None]:
    m = _HOST_RE.fullmatch(text)
    if not m:
        raise UsageError(f"Invalid {what} destination {text!r} (expected [login@]host[:port])")
    port = int(m.group("port")) if m.group("port") else None
    if port is not None and not 0 < port < 65536:
        raise UsageError(f"Invalid port in destination {text!r}")
    return m.group("login") or "", m.group("host").strip("[]"), port


def parse_destination(destination: str) -> Target | None:
    """The transport for a destination string, or None when it is not one of ours."""
    text = destination.strip()
    m = re.match(r"([a-z][a-z0-9_+-]*):(.*)", text, re.S)
    if m and m.group(1) in ("remote", "remoteprefix", "tcp", "tcps"):
        kind, rest = m.group(1), m.group(2)
        login, host, port = _host_port(rest, kind)
        if kind in ("tcp", "tcps") and login:
            raise UsageError(f"{kind}: destinations take no login ({destination!r}); the user is -u")
        return Target(kind, host, port, login)
    try:
        words = shlex.split(text)
    except ValueError as e:
        raise UsageError(f"Cannot parse destination command {text!r}: {e}") from None
    if not words:
        return None
    if len(words) == 1 and m:  # driver:path of a storage no plugin serves: not ours
        return None
    if len(words) == 1 and "/" not in words[0]:
        login, host, port = _host_port(words[0], "ssh")
        return Target("remote", host, port, login)
    if not any(w in ("server", "dsync-server") for w in words):
        words.append("dsync-server")
    return Target("command", argv=tuple(words))


def user_name(user: UserInfo | None) -> str:
    return user.name if user is not None and user.name else getpass.getuser()


def io_timeout(settings: Settings) -> float:
    return settings.get_seconds("dsync_io_timeout", DEFAULT_IO_TIMEOUT) or DEFAULT_IO_TIMEOUT


def expand_command(template: str, variables: dict[str, str], *, quote: bool) -> list[str] | str:
    """Expand %-variables in a command template. As a word list (``quote=False``), a word
    whose variables all expand to nothing is dropped (Dovecot's rule for dsync_remote_cmd);
    as a shell string (``quote=True``) values are shell-quoted."""
    if quote:
        return expand_vars(template, {k: shlex.quote(v) if v else v for k, v in variables.items()})
    out = []
    for word in shlex.split(template):
        values = [expand_vars(m.group(0), variables) for m in _VAR_RE.finditer(word) if m.group(0) != "%%"]
        if values and all(v == "" for v in values):
            continue
        out.append(expand_vars(word, variables))
    return out


def variables_for(user: str, login: str, host: str) -> dict[str, str]:
    v = user_variables(user, None)
    v.update(login=login, host=host)
    return v


def open_destination(destination: str, settings: Settings, user: UserInfo | None) -> Any:
    target = parse_destination(destination)
    if target is None:
        return None
    name = user_name(user)
    timeout = io_timeout(settings)
    rawlog = settings.get("dsync_rawlog") or None
    if target.kind in ("tcp", "tcps"):
        from .tcp import open_tcp

        return open_tcp(target, settings, name, timeout, rawlog)
    prefix = (name + "\n").encode("utf-8") if target.kind == "remoteprefix" else b""
    if target.kind == "command":
        from .command import open_command

        return open_command(list(target.argv), name, timeout, rawlog, prefix=b"", what="command")
    remote_cmd = settings.get("dsync_remote_cmd", "")
    if remote_cmd:
        from .command import open_command

        argv = expand_command(remote_cmd, variables_for(name, target.login, target.host), quote=False)
        assert isinstance(argv, list)
        if not argv:
            raise DsyncError(f"dsync_remote_cmd {remote_cmd!r} expands to nothing", exit_code=EX_FAILED)
        return open_command(argv, name, timeout, rawlog, prefix=prefix, what="dsync_remote_cmd")
    from .ssh import open_ssh

    return open_ssh(target, settings, name, timeout, rawlog, prefix=prefix)
