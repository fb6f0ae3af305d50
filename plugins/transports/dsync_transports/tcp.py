"""``tcp:`` and ``tcps:``: a ``dsync server --listen``, authenticated with doveadm_password."""

from __future__ import annotations

import socket
from typing import Any

from dsync_core.errors import ConfigError, DsyncError
from dsync_core.protocol import SocketChannel
from dsync_core.remote import RemoteReplica
from dsync_core.settings import Settings

from .open import Target


def _path(settings: Settings, key: str) -> str | None:
    value = settings.get(key, "").strip()
    return value[1:].strip() if value.startswith("<") else (value or None)


def client_ssl_context(settings: Settings) -> Any:
    import ssl

    cafile, capath = _path(settings, "ssl_client_ca_file"), _path(settings, "ssl_client_ca_dir")
    try:
        # Without a CA setting: the system's trust store.
        context = ssl.create_default_context(cafile=cafile, capath=capath)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"Cannot load ssl_client_ca_file/ssl_client_ca_dir ({cafile or capath}): {e}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    return context


def open_tcp(target: Target, settings: Settings, user: str, timeout: float, rawlog: str | None) -> Any:
    port = target.port or settings.get_int("doveadm_port", 0)
    where = f"{target.kind}:{target.host}:{port}"
    if not port:
        raise ConfigError(f"{target.kind}:{target.host}: no port given and doveadm_port is not set")
    password = settings.get_str("doveadm_password")
    if not password:
        raise ConfigError(f"{where}: doveadm_password is not set (the server authenticates clients with it)")
    context = client_ssl_context(settings) if target.kind == "tcps" else None
    try:
        sock = socket.create_connection((target.host, port), timeout=min(timeout, 60))
    except OSError as e:
        raise DsyncError(f"Cannot connect to {where}: {e.strerror or e}", exit_code=1) from None
    if context is not None:
        import ssl

        try:
            sock = context.wrap_socket(sock, server_hostname=target.host)
        except ssl.SSLCertVerificationError as e:
            sock.close()
            raise DsyncError(
                f"{where}: the server's TLS certificate is not trusted: {e.verify_message or e}", exit_code=1
            ) from None
        except (OSError, ssl.SSLError) as e:
            sock.close()
            raise DsyncError(f"{where}: TLS handshake failed: {e}", exit_code=1) from None
    channel = SocketChannel(sock, timeout)
    try:
        return RemoteReplica(channel, user=user, password=password, require_auth=True, io_timeout=timeout,
                             rawlog=rawlog, peer=f"the dsync server at {where}")
    except BaseException:
        channel.close()
        raise
