"""Mail location strings in Dovecot's syntax: ``driver:path[:KEY=value]...``.

``maildir:~/Maildir:LAYOUT=fs:INDEX=/var/index/%u`` names the driver (``maildir``), the
root path and options. ``::`` inside a path stands for a literal colon, as in Dovecot.
``~`` at the start of a path is the user's home; ``%u``, ``%n``, ``%d``, ``%h`` and their
``%{user}`` long forms expand as Dovecot's variables do.
"""

from __future__ import annotations

import os
import re

import attrs

from .errors import ConfigError

# Options whose value is a path (so ~ and variables expand in them too).
PATH_OPTIONS = frozenset({"INBOX", "INDEX", "CONTROL", "ALT", "VOLATILEDIR", "INDEXPVT", "SUBSCRIPTIONS"})

_LONG_NAMES = {"user": "u", "username": "n", "domain": "d", "home": "h", "login": "login", "host": "host"}
_VAR_RE = re.compile(r"%(?:\{([A-Za-z_]+)\}|([A-Za-z%]))")


def expand_vars(template: str, variables: dict[str, str]) -> str:
    """Expand Dovecot ``%`` variables (``%u``, ``%{user}``, ``%%``) in ``template``.

    ``variables`` maps short names (``u``, ``n``, ``d``, ``h``) or long names to values.
    An unknown variable is a :class:`ConfigError`, never left in a path unexpanded.
    """

    def repl(m: re.Match[str]) -> str:
        long, short = m.group(1), m.group(2)
        if short == "%":
            return "%"
        key = short if short else _LONG_NAMES.get(long, long)
        if key in variables:
            return variables[key]
        if long and long in variables:
            return variables[long]
        raise ConfigError(f"Unknown variable {m.group(0)!r} in {template!r}")

    return _VAR_RE.sub(repl, template)


def user_variables(user: str | None, home: str | None) -> dict[str, str]:
    """The ``%`` variables for a user name like ``jane@example.org``."""
    variables: dict[str, str] = {}
    if user:
        local, _, domain = user.partition("@")
        variables.update(u=user, n=local, d=domain)
    if home:
        variables["h"] = home
    return variables


def _split_unescaped(text: str) -> list[str]:
    """Split on ``:`` but keep ``::`` as a literal colon."""
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == ":":
            if i + 1 < len(text) and text[i + 1] == ":":
                cur.append(":")
                i += 2
                continue
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


@attrs.frozen
class Location:
    """A parsed mail location. ``path`` and path options are already expanded."""

    scheme: str
    path: str
    options: dict[str, str] = attrs.field(factory=dict, hash=False)
    raw: str = ""

    def option(self, key: str, default: str | None = None) -> str | None:
        return self.options.get(key.upper(), default)

    def __str__(self) -> str:
        return self.raw or f"{self.scheme}:{self.path}"


def _expand_path(path: str, home: str | None, variables: dict[str, str], raw: str) -> str:
    if path.startswith("~"):
        rest = path[1:]
        if rest and not rest.startswith("/"):
            raise ConfigError(f"Mail location {raw!r}: only '~/' (the user's home) is supported, not {path!r}")
        if not home:
            raise ConfigError(f"Mail location {raw!r} uses '~' but the user has no home directory")
        path = home.rstrip("/") + rest if rest else home
    return expand_vars(path, variables)


def parse_location(
    text: str,
    *,
    user: str | None = None,
    home: str | None = None,
) -> Location:
    """Parse ``driver:path[:KEY=value]...`` and expand ``~`` and ``%`` variables.

    With no user and no home given, ``~`` means the current process's ``$HOME``.
    """
    text = text.strip()
    scheme, sep, rest = text.partition(":")
    if not sep or not scheme or not re.fullmatch(r"[a-z][a-z0-9_+-]*", scheme):
        raise ConfigError(
            f"Invalid mail location {text!r}: expected DRIVER:PATH, e.g. maildir:~/Maildir"
        )
    if home is None and user is None:
        home = os.environ.get("HOME")
    variables = user_variables(user, home)
    parts = _split_unescaped(rest)
    path = parts[0]
    options: dict[str, str] = {}
    for part in parts[1:]:
        if not part:
            continue
        key, eq, value = part.partition("=")
        key = key.upper()
        if not eq:
            options[key] = ""
            continue
        if key in PATH_OPTIONS and value:
            value = _expand_path(value, home, variables, text)
        options[key] = value
    if path:
        path = _expand_path(path, home, variables, text)
    return Location(scheme=scheme, path=path, options=options, raw=text)


__all__ = ["Location", "parse_location", "expand_vars", "user_variables", "PATH_OPTIONS"]
