"""The ``imapc_*`` settings, read once into one value (Dovecot's names where Dovecot has one)."""

from __future__ import annotations

import shlex
import subprocess

import attrs

from dsync_core.errors import ConfigError
from dsync_core.settings import Settings

SSL_MODES = ("no", "imaps", "starttls")

#: Headers whose lines make a message's hash (see ``headerhash``); a setting can replace them.
DEFAULT_HASHED_HEADERS = ("Message-ID", "Date", "From", "To", "Cc", "Subject", "In-Reply-To", "Received")


@attrs.frozen
class ImapcConfig:
    host: str
    port: int
    user: str
    password: str = attrs.field(repr=False, default="")
    master_user: str = ""
    ssl: str = "no"
    ssl_verify: bool = True
    ca_file: str = ""
    ca_dir: str = ""
    features: frozenset[str] = frozenset()
    sasl_mechanisms: tuple[str, ...] = ()
    connections: int = 4
    timeout: float = 300.0
    list_prefix: str = ""
    hashed_headers: tuple[str, ...] = DEFAULT_HASHED_HEADERS
    skip_special_use: frozenset[str] = frozenset()
    fetch_batch: int = 500
    chunk_size: int = 1024 * 1024
    alt_char: str = "_"
    special_use_names: bool = False
    max_line: int = 16 * 1024 * 1024
    max_response: int = 256 * 1024 * 1024

    @property
    def server(self) -> str:
        return f"{self.host}:{self.port}"


def _password(settings: Settings) -> str:
    cmd = settings.get("imapc_password_command", "").strip()
    if not cmd:
        return settings.get_str("imapc_password")
    # The token (XOAUTH2 / OAUTHBEARER) or password comes from a command the user names,
    # e.g. an OAuth helper that refreshes it: its first line of output is used.
    try:
        proc = subprocess.run(shlex.split(cmd), capture_output=True, timeout=120, check=False)
    except (OSError, ValueError, subprocess.TimeoutExpired) as e:
        raise ConfigError(f"imapc_password_command {cmd!r} failed: {e}") from None
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ConfigError(
            f"imapc_password_command {cmd!r} exited with {proc.returncode}" + (f": {err[-1]}" if err else "")
        )
    lines = proc.stdout.decode("utf-8", "replace").splitlines()
    return lines[0].strip() if lines else ""


def load_config(settings: Settings) -> ImapcConfig:
    host = settings.get("imapc_host", "").strip()
    if not host:
        raise ConfigError("imapc: no server given: set imapc_host (e.g. -o imapc_host=imap.example.org)")
    ssl = settings.get("imapc_ssl", "no").strip().lower() or "no"
    if ssl not in SSL_MODES:
        raise ConfigError(f"Setting imapc_ssl: expected no, imaps or starttls, got {ssl!r}")
    port = settings.get_int("imapc_port", 993 if ssl == "imaps" else 143)
    if not 0 < port < 65536:
        raise ConfigError(f"Setting imapc_port: {port} is not a TCP port")
    user = settings.get("imapc_user", "").strip()
    if not user:
        raise ConfigError("imapc: no user given: set imapc_user")
    features = frozenset(settings.get("imapc_features", "").lower().split())
    mechs = tuple(m.upper() for m in settings.get("imapc_sasl_mechanisms", "").replace(",", " ").split())
    for m in mechs:
        if m not in ("PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER"):
            raise ConfigError(f"Setting imapc_sasl_mechanisms: unsupported mechanism {m!r}")
    connections = settings.get_int("imapc_max_connections", 4)
    if connections < 1:
        raise ConfigError("Setting imapc_max_connections: must be at least 1")
    headers = tuple(
        settings.get("imapc_hashed_headers", "").split()
        or settings.get("dsync_hashed_headers_imapc", "").split()
        or DEFAULT_HASHED_HEADERS
    )
    skip = settings.get("imapc_skip_special_use")
    return ImapcConfig(
        host=host,
        port=port,
        user=user,
        password=_password(settings),
        master_user=settings.get("imapc_master_user", "").strip(),
        ssl=ssl,
        ssl_verify=settings.get_bool("imapc_ssl_verify", True),
        ca_file=settings.get("ssl_client_ca_file", "").strip(),
        ca_dir=settings.get("ssl_client_ca_dir", "").strip(),
        features=features,
        sasl_mechanisms=mechs,
        connections=connections,
        timeout=settings.get_seconds("imapc_cmd_timeout", 300.0) or 300.0,
        list_prefix=settings.get("imapc_list_prefix", "").strip(),
        hashed_headers=headers,
        skip_special_use=frozenset(
            s.lower() for s in (skip.split() if skip is not None else ["\\Flagged", "\\Important"])
        ),
        fetch_batch=max(1, settings.get_int("imapc_fetch_batch", 500)),
        chunk_size=max(4096, settings.get_size("imapc_fetch_chunk_size", 1024 * 1024)),
        alt_char=(settings.get("dsync_alt_char", "_") or "_")[:1],
        special_use_names=settings.get_bool("imapc_special_use_names", False),
        max_line=max(64 * 1024, settings.get_size("imapc_max_line_length", 16 * 1024 * 1024)),
        max_response=max(1024 * 1024, settings.get_size("imapc_max_response_size", 256 * 1024 * 1024)),
    )
