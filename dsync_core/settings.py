"""Settings in Dovecot's vocabulary: ``-c FILE`` in dovecot.conf syntax plus ``-o key=value``.

Sections flatten the way ``doveconf`` prints them: ``namespace inbox { separator = / }``
becomes ``namespace/inbox/separator``. A value written ``<path`` is read from that file
when first asked for (Dovecot's form for ``ssl_cert = </etc/ssl/cert.pem``).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable, Iterator, Mapping

from .errors import ConfigError

_TIME_UNITS = {
    "": 1, "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
}
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2, "g": 1024**3, "gb": 1024**3}
_MAX_INCLUDE_DEPTH = 20


class Settings(Mapping[str, str]):
    """An immutable-ish mapping of setting name to string value."""

    def __init__(self, values: Mapping[str, str] | None = None, *, source: str = "") -> None:
        self._values: dict[str, str] = dict(values or {})
        self.source = source

    # Mapping protocol
    def __getitem__(self, key: str) -> str:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Settings({self._values!r})"

    def with_overrides(self, overrides: Mapping[str, str]) -> Settings:
        merged = dict(self._values)
        merged.update(overrides)
        return Settings(merged, source=self.source)

    def get_str(self, key: str, default: str = "") -> str:
        value = self._values.get(key, default)
        if value.startswith("<"):
            path = value[1:].strip()
            try:
                with open(path, encoding="utf-8") as f:
                    return f.read()
            except OSError as e:
                raise ConfigError(f"Setting {key}: cannot read {path}: {e.strerror}") from None
        return value

    def get_bool(self, key: str, default: bool = False) -> bool:
        value = self._values.get(key)
        if value is None or value == "":
            return default
        v = value.strip().lower()
        if v in ("yes", "y", "true", "1", "on"):
            return True
        if v in ("no", "n", "false", "0", "off"):
            return False
        raise ConfigError(f"Setting {key}: expected yes or no, got {value!r}")

    def get_int(self, key: str, default: int = 0) -> int:
        value = self._values.get(key)
        if value is None or value.strip() == "":
            return default
        try:
            return int(value.strip())
        except ValueError:
            raise ConfigError(f"Setting {key}: expected a number, got {value!r}") from None

    def get_seconds(self, key: str, default: float = 0) -> float:
        value = self._values.get(key)
        if value is None or value.strip() == "":
            return default
        return parse_interval(value, key)

    def get_size(self, key: str, default: int = 0) -> int:
        value = self._values.get(key)
        if value is None or value.strip() == "":
            return default
        m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", value)
        if not m or m.group(2).lower() not in _SIZE_UNITS:
            raise ConfigError(f"Setting {key}: expected a size like 10M, got {value!r}")
        return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]

    def section(self, prefix: str) -> dict[str, str]:
        """Settings under ``prefix/`` with the prefix removed."""
        p = prefix.rstrip("/") + "/"
        return {k[len(p):]: v for k, v in self._values.items() if k.startswith(p)}


def parse_interval(value: str, key: str = "time") -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", value)
    if not m or m.group(2).lower() not in _TIME_UNITS:
        raise ConfigError(f"Setting {key}: expected a time like 30s or 5 mins, got {value!r}")
    return float(m.group(1)) * _TIME_UNITS[m.group(2).lower()]


def _strip_comment(line: str) -> str:
    # '#' starts a comment unless inside quotes.
    out: list[str] = []
    quote = ""
    for c in line:
        if quote:
            out.append(c)
            if c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
            out.append(c)
        elif c == "#":
            break
        else:
            out.append(c)
    return "".join(out).strip()


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1].replace('\\"', '"')
    return value


def parse_config_text(text: str, *, path: str = "<string>", _depth: int = 0) -> dict[str, str]:
    """Parse dovecot.conf syntax into flat ``section/name/key`` settings."""
    if _depth > _MAX_INCLUDE_DEPTH:
        raise ConfigError(f"{path}: !include nested too deeply")
    values: dict[str, str] = {}
    stack: list[str] = []
    base = os.path.dirname(path) if path != "<string>" else "."
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        lineno = i + 1
        raw = lines[i]
        i += 1
        # Backslash continuation.
        while raw.endswith("\\") and i < len(lines):
            raw = raw[:-1] + lines[i]
            i += 1
        line = _strip_comment(raw)
        if not line:
            continue
        where = f"{path}:{lineno}"
        if line.startswith("!include"):
            word, _, target = line.partition(" ")
            target = _unquote(target)
            if not target:
                raise ConfigError(f"{where}: !include needs a file name")
            if not os.path.isabs(target):
                target = os.path.join(base, target)
            matches = sorted(glob.glob(target))
            if not matches and word == "!include" and not glob.has_magic(target):
                raise ConfigError(f"{where}: cannot include {target}: no such file")
            for inc in matches:
                for k, v in load_config_file(inc, _depth=_depth + 1).items():
                    values["/".join([*stack, k])] = v
            continue
        if line == "}":
            if not stack:
                raise ConfigError(f"{where}: '}}' without an open section")
            stack.pop()
            # Named sections push two levels ("namespace", "inbox").
            if stack and stack[-1].startswith("\0"):
                stack.pop()
            continue
        if line.endswith("{"):
            head = line[:-1].strip().split()
            if not head or len(head) > 2:
                raise ConfigError(f"{where}: cannot parse section header {line!r}")
            if len(head) == 2:
                stack.append("\0" + head[0])
                stack.append(_unquote(head[1]))
            else:
                stack.append(head[0])
            continue
        key, eq, value = line.partition("=")
        key = key.strip()
        if not eq or not key or not re.fullmatch(r"[A-Za-z0-9_./-]+", key):
            raise ConfigError(f"{where}: expected 'key = value', got {line!r}")
        full = "/".join([s.lstrip("\0") for s in stack] + [key])
        values[full] = _unquote(value)
    if stack:
        raise ConfigError(f"{path}: missing '}}' at end of file")
    return values


def read_text_file(path: str, what: str) -> str:
    """A whole UTF-8 text file (configs, user lists); failures are one-line ConfigErrors."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"Cannot read {what} {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what[:1].upper()}{what[1:]} {path} is not UTF-8 text") from None


def load_config_file(path: str, *, _depth: int = 0) -> dict[str, str]:
    return parse_config_text(read_text_file(path, "config file"), path=path, _depth=_depth)


def parse_overrides(pairs: Iterable[str]) -> dict[str, str]:
    """Turn ``-o key=value`` arguments into a dict; a missing ``=`` is a usage error."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"-o {pair!r}: expected key=value")
        out[key.strip()] = value
    return out


def load_settings(config_file: str | None = None, overrides: Iterable[str] = ()) -> Settings:
    """Settings from an optional config file, then ``-o`` overrides on top."""
    values: dict[str, str] = {}
    source = ""
    if config_file:
        values = load_config_file(config_file)
        source = config_file
    values.update(parse_overrides(overrides))
    return Settings(values, source=source)


__all__ = ["Settings", "load_settings", "parse_config_text", "parse_overrides", "parse_interval"]
