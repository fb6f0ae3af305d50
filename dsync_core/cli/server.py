"""``dsync server``: Dovecot's ``doveadm dsync-server``, the far side of a remote sync.

``dsync [-c FILE] [-o k=v]... server [-u USER] [-r RAWLOG]`` speaks the dsync-py protocol
(docs/protocol.md) on stdin/stdout, for ssh or any command transport, with this host's
own configuration: the user's mail is ``mail_location`` (``%u`` and ``~`` expanded) or the
userdb's ``mail``. Run as root for a user with a uid, it drops to that uid first.

``dsync server --listen ADDR:PORT`` serves ``tcp:``/``tcps:`` clients, many at once (one
thread each; a user is served by one connection at a time). Clients authenticate with
``doveadm_password`` by challenge-response (the secret never crosses the wire); with
``ssl_cert`` and ``ssl_key`` set (``<file`` or a path) every connection is TLS. The port
defaults to ``doveadm_port``; ``:0`` picks a free one. The listening address is printed
on stderr as ``dsync-server: listening on ADDR:PORT``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

from ..errors import ConfigError, DsyncError, LockTimeoutError, UsageError
from ..model import UserInfo
from ..replica import LocalReplica, Replica
from ..settings import Settings
from .context import CliContext

log = logging.getLogger("dsync.server")

DEFAULT_IDLE_TIMEOUT = 1800.0
DEFAULT_USER_LOCK_TIMEOUT = 30.0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("server", aliases=["dsync-server"],
                       help="serve a remote dsync on stdin/stdout, or on a TCP port with --listen")
    p.add_argument("-u", dest="user", metavar="USER", help="the user whose mail is served (stdin/stdout mode)")
    p.add_argument("-U", dest="notify", action="store_true", help="accepted for doveadm compatibility")
    p.add_argument("-r", dest="rawlog", metavar="RAWLOG", help="write the protocol traffic to RAWLOG")
    p.add_argument("-l", dest="lock_timeout", metavar="SECS", help="accepted for doveadm compatibility")
    p.add_argument("--listen", metavar="ADDR:PORT", help="serve tcp:/tcps: clients on this address")
    p.set_defaults(func=cmd_server)


# -- opening a user's replica ----------------------------------------------------------------


def _drop_privileges(user: UserInfo) -> None:
    """Run as the mail user, as doveadm does (only from root, only to a non-root uid)."""
    if os.geteuid() != 0 or user.uid is None or user.uid == 0:
        return
    gid = user.gid if user.gid is not None else user.uid
    try:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(user.uid)
    except OSError as e:
        raise DsyncError(f"Cannot switch to uid {user.uid} for user {user.name}: {e.strerror}", exit_code=1) from None
    if user.home:
        os.environ["HOME"] = user.home
    os.environ["USER"] = user.name


@contextlib.contextmanager
def _open_replica(ctx: CliContext, name: str, *, drop: bool) -> Iterator[Replica]:
    user = ctx.lookup_user(name)
    if drop and user is not None:
        _drop_privileges(user)
    storage = ctx.open_user_storage(name)
    try:
        yield LocalReplica(storage)
    finally:
        storage.close()


# -- stdin/stdout ----------------------------------------------------------------------------


def _serve_stdio(args: argparse.Namespace, ctx: CliContext) -> int:
    from ..protocol import FdChannel
    from ..remote import serve

    # The protocol owns the original stdout; anything printed by mistake goes to stderr.
    rfd = os.dup(0)
    wfd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    name = args.user
    if not name:
        user = ctx.lookup_user(None)
        name = user.name if user else ""
    channel = FdChannel(rfd, wfd, owned=True)
    return serve(
        channel,
        lambda _claimed: _open_replica(ctx, name, drop=True),
        fixed_user=name,
        rawlog=args.rawlog,
        peer="the client on stdin",
    )


# -- TCP / TLS listener ----------------------------------------------------------------------


def parse_listen(text: str, default_port: int) -> tuple[str, int]:
    host, port_s = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_s = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_s = text.partition(":")
    try:
        port = int(port_s) if port_s else default_port
    except ValueError:
        raise UsageError(f"Invalid --listen address {text!r} (expected ADDR:PORT)") from None
    if not host or not 0 <= port < 65536 or (not port_s and not default_port):
        raise UsageError(f"Invalid --listen address {text!r} (expected ADDR:PORT, or set doveadm_port)")
    return host, port


def _pem_path(settings: Settings, key: str, tmpdir: str) -> str:
    """A PEM setting as a file path: Dovecot's ``<file`` form, a path, or inline PEM text."""
    raw = settings.get(key, "").strip()
    if raw.startswith("<"):
        return raw[1:].strip()
    if raw.startswith("-----BEGIN"):
        path = os.path.join(tmpdir, key + ".pem")
        with open(path, "w", encoding="ascii") as f:
            f.write(raw + "\n")
        return path
    return raw


def server_ssl_context(settings: Settings, tmpdir: str) -> Any:
    """A TLS context when ``ssl_cert`` and ``ssl_key`` are set, else None."""
    if not settings.get("ssl_cert") or not settings.get("ssl_key"):
        if settings.get("ssl_cert") or settings.get("ssl_key"):
            raise ConfigError("ssl_cert and ssl_key must be set together")
        return None
    import ssl

    cert, key = _pem_path(settings, "ssl_cert", tmpdir), _pem_path(settings, "ssl_key", tmpdir)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"Cannot load ssl_cert {cert} / ssl_key {key}: {e}") from None
    return context


class _UserLocks:
    """One connection per user at a time (the listener's "user locked while it syncs")."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    @contextlib.contextmanager
    def hold(self, user: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(user, threading.Lock())
        if not lock.acquire(timeout=self.timeout):
            raise LockTimeoutError(f"User {user} is being synced by another connection (waited {self.timeout:g}s)")
        try:
            yield
        finally:
            lock.release()


def _listen(args: argparse.Namespace, ctx: CliContext) -> int:
    # The listener's modules load here: every other command (and the stdio server) starts faster.
    import signal
    import socket
    import socketserver
    import tempfile

    from ..protocol import SocketChannel
    from ..remote import serve

    settings = ctx.settings
    host, port = parse_listen(args.listen, settings.get_int("doveadm_port", 0))
    secret = settings.get_str("doveadm_password")
    if not secret:
        raise ConfigError("dsync server --listen needs doveadm_password (clients authenticate with it)")
    idle = settings.get_seconds("dsync_server_timeout", DEFAULT_IDLE_TIMEOUT) or None
    locks = _UserLocks(settings.get_seconds("dsync_server_user_lock_timeout", DEFAULT_USER_LOCK_TIMEOUT))
    tmpdir = tempfile.mkdtemp(prefix="dsync-server-")
    try:
        tls = server_ssl_context(settings, tmpdir)

        @contextlib.contextmanager
        def open_locked(user: str) -> Iterator[Replica]:
            with locks.hold(user), _open_replica(ctx, user, drop=False) as rep:
                yield rep

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: Any = self.request
                peer = f"{self.client_address[0]}:{self.client_address[1]}"
                if tls is not None:
                    sock.settimeout(60)
                    try:
                        sock = tls.wrap_socket(sock, server_side=True)
                    except (OSError, ValueError) as e:
                        log.warning("TLS handshake with %s failed: %s", peer, e)
                        return
                code = serve(SocketChannel(sock, idle), open_locked, secret=secret, rawlog=args.rawlog,
                             io_timeout=idle, peer=f"client {peer}")
                log.info("connection from %s done (%s)", peer, "ok" if code == 0 else "failed")

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        try:
            srv = Server((host, port), Handler)
        except OSError as e:
            raise DsyncError(f"Cannot listen on {args.listen}: {e.strerror}", exit_code=1) from None
        bound = srv.server_address
        sys.stderr.write(f"dsync-server: listening on {bound[0]}:{bound[1]}{' (TLS)' if tls else ''}\n")
        sys.stderr.flush()

        def stop(signum: int, frame: Any) -> None:
            threading.Thread(target=srv.shutdown, daemon=True).start()

        signal.signal(signal.SIGTERM, stop)
        try:
            srv.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            pass
        finally:
            srv.server_close()
        return 0
    finally:
        import shutil

        shutil.rmtree(tmpdir, ignore_errors=True)


def cmd_server(args: argparse.Namespace, ctx: CliContext) -> int:
    if args.listen:
        if args.user:
            raise UsageError("server: -u and --listen exclude each other (tcp clients name their user)")
        return _listen(args, ctx)
    try:
        return _serve_stdio(args, ctx)
    except DsyncError:
        raise


__all__ = ["add_commands", "cmd_server", "parse_listen"]
