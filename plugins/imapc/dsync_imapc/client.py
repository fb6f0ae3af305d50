"""One authenticated IMAP connection (imapclient), with every failure turned into a one-line
:class:`~dsync_core.errors.DsyncError`.

A connection that broke (reset, EOF, timeout, TLS error) is dead for the rest of the run:
the storage does not reconnect behind the engine's back, so a sync whose server went away
fails (exit 1) and the next run starts from a clean state.
"""

from __future__ import annotations

import contextlib
import functools
import imaplib
import socket
import ssl
from collections.abc import Iterator
from datetime import datetime
from typing import Any, BinaryIO

import attrs

from dsync_core.errors import ConfigError, DsyncError, NotFoundError, StorageError

from .config import ImapcConfig


class AuthError(DsyncError):
    """The server refused the login (wrong password, token expired)."""

    exit_code = 77  # EX_NOPERM


class ConnectionLost(StorageError):
    """The connection to the server broke; nothing more can be done on it."""


class ServerViolation(imaplib.IMAP4.abort):
    """The server sent more than we accept (a line, a literal or an answer too long): the
    stream can't be trusted after that, so the connection is given up."""


@attrs.define
class Limits:
    """What one connection reads at most (a hostile or broken server must not make us
    allocate without bound): any line; any literal (for the current command); all bytes
    read since we last sent something (one command's answer, which imaplib keeps whole)."""

    line: int
    literal: int
    literal_why: str
    response: int
    response_why: str


class _Bounded:
    """Mixed into imaplib.IMAP4 (under imapclient): ``read``/``readline``/``send`` are where
    imaplib touches the socket, so they are where sizes are checked, before allocating."""

    limits: Limits
    violation: str = ""
    _got = 0

    def _refuse(self, why: str) -> None:
        self.violation = why  # imaplib re-raises aborts with a new message: keep ours
        raise ServerViolation(why)

    def _count(self, n: int) -> None:
        self._got += n
        if self._got > self.limits.response:
            self._refuse(f"the server's answer exceeds {self.limits.response} bytes ({self.limits.response_why})")

    def read(self, size: int) -> bytes:
        lim = self.limits
        if size > lim.literal:
            self._refuse(f"the server announced a literal of {size} bytes "
                         f"(at most {lim.literal} accepted here: {lim.literal_why})")
        self._count(size)
        data = self.file.read(size)  # type: ignore[attr-defined]
        if len(data) < size:
            raise imaplib.IMAP4.abort(f"socket error: EOF after {len(data)} of a {size}-byte literal")
        return data

    def readline(self) -> bytes:
        lim = self.limits.line
        line = self.file.readline(lim + 1)  # type: ignore[attr-defined]
        if len(line) > lim:
            self._refuse(f"the server sent a line longer than {lim} bytes (imapc_max_line_length)")
        self._count(len(line))
        return line

    def send(self, data: bytes) -> None:
        self._got = 0  # a new command (or literal): its answer is counted afresh
        super().send(data)  # type: ignore[misc]


@functools.cache
def _client_class() -> Any:
    """An IMAPClient whose imaplib object is bounded by ``limits=`` from the greeting on."""
    import imapclient
    from imapclient import imap4, tls

    class BoundedPlain(_Bounded, imap4.IMAP4WithTimeout):
        def __init__(self, limits: Limits, *a: Any) -> None:
            self.limits = limits
            super().__init__(*a)

    class BoundedTLS(_Bounded, tls.IMAP4_TLS):
        def __init__(self, limits: Limits, *a: Any) -> None:
            self.limits = limits
            super().__init__(*a)

    class Client(imapclient.IMAPClient):  # type: ignore[misc]
        def __init__(self, *a: Any, limits: Limits, **kw: Any) -> None:
            self._limits = limits
            super().__init__(*a, **kw)

        # imapclient's factory for its imaplib object: the same arguments, our classes.
        def _create_IMAP4(self) -> Any:
            timeout = getattr(self._timeout, "connect", None)
            if self.ssl:
                imap = BoundedTLS(self._limits, self.host, self.port, self.ssl_context, timeout)
            else:
                imap = BoundedPlain(self._limits, self.host, self.port, timeout)
            # imaplib sends a command's pieces in separate writes (AUTHENTICATE's answer and
            # its CRLF, an APPEND literal and its CRLF): with Nagle's algorithm the last small
            # piece waits for the server's delayed ACK, 40 ms per exchange.
            with contextlib.suppress(OSError):
                imap.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return imap

    return Client


def ssl_context(cfg: ImapcConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if cfg.ca_file or cfg.ca_dir:
        try:
            ctx.load_verify_locations(cafile=cfg.ca_file or None, capath=cfg.ca_dir or None)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"ssl_client_ca_file/ssl_client_ca_dir: cannot load CA certificates: {e}") from None
    if not cfg.ssl_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Connection:
    """An IMAPClient plus what we learnt about the server."""

    def __init__(self, cfg: ImapcConfig) -> None:
        import imapclient  # heavy; only when an imapc storage is really used

        self.cfg = cfg
        self.dead: str = ""  # why this connection is unusable: the first error's message
        self.shared: dict[str, str] = {}  # the storage's: "dead" once any connection broke
        self.selected: str | None = None  # raw server name
        self.selected_rw = False
        self.select_resp: dict[bytes, Any] = {}
        where = f"imapc({cfg.server})"
        self.where = where
        self.limits = self.default_limits()
        try:
            client_class = _client_class()
            if cfg.ssl == "imaps":
                self.client = client_class(cfg.host, port=cfg.port, ssl=True, ssl_context=ssl_context(cfg),
                                           timeout=cfg.timeout, limits=self.limits)
            else:
                self.client = client_class(cfg.host, port=cfg.port, ssl=False, timeout=cfg.timeout,
                                           limits=self.limits)
                if cfg.ssl == "starttls":
                    self.client.starttls(ssl_context(cfg))
        except ssl.SSLCertVerificationError as e:
            raise StorageError(f"{where}: TLS certificate verification failed: {e.verify_message}") from None
        except ssl.SSLError as e:
            raise StorageError(f"{where}: TLS handshake failed: {e.reason or e}") from None
        except TimeoutError:
            raise StorageError(f"{where}: connection timed out") from None
        except OSError as e:
            raise StorageError(f"{where}: cannot connect: {e.strerror or e}") from None
        except ServerViolation as e:
            raise StorageError(f"{where}: refused the server's greeting: {_text(e)}") from None
        except imapclient.exceptions.IMAPClientError as e:
            raise StorageError(f"{where}: {_text(e)}") from None
        self.client.folder_encode = False
        self.client.normalise_times = False
        # imapclient sets imaplib's debug level 5 on its object, at which imaplib formats a
        # repr of every answer (bodies included) for the log, whether logged or not: a third
        # of a migration's CPU time. Level 0 on this object only (no global changed).
        self.client._imap.debug = 0
        self._login()
        with self.guard("CAPABILITY"):
            self.caps = frozenset(c.decode("ascii", "replace").upper() for c in self.client.capabilities())
        feats = cfg.features
        self.condstore = "CONDSTORE" in self.caps and "no-condstore" not in feats
        self.qresync = self.condstore and "QRESYNC" in self.caps and "no-qresync" not in feats
        self.uidplus = "UIDPLUS" in self.caps
        self.gmail = "X-GM-EXT-1" in self.caps and "no-gmail" not in feats
        if self.qresync:
            with self.guard("ENABLE QRESYNC"):
                self.client.enable("QRESYNC")
        elif self.condstore:
            with self.guard("ENABLE CONDSTORE"):
                if "ENABLE" in self.caps:
                    self.client.enable("CONDSTORE")

    def default_limits(self) -> Limits:
        cfg = self.cfg
        return Limits(line=cfg.max_line, literal=cfg.max_line, literal_why="imapc_max_line_length",
                      response=cfg.max_response, response_why="imapc_max_response_size")

    @contextlib.contextmanager
    def limited(self, *, literal: int | None = None, literal_why: str = "",
                response: int | None = None, response_why: str = "") -> Iterator[None]:
        """Tighter (or, for big answers, looser) bounds for the commands run inside."""
        lim = self.limits
        saved = attrs.evolve(lim)
        if literal is not None:
            lim.literal, lim.literal_why = literal, literal_why
        if response is not None:
            lim.response, lim.response_why = response, response_why
        try:
            yield
        finally:
            lim.literal, lim.literal_why = saved.literal, saved.literal_why
            lim.response, lim.response_why = saved.response, saved.response_why

    def _login(self) -> None:
        cfg = self.cfg
        c = self.client
        with self.guard("CAPABILITY"):
            caps = {x.decode("ascii", "replace").upper() for x in c.capabilities()}
        mechs = cfg.sasl_mechanisms or ("PLAIN", "LOGIN")
        with self.guard("LOGIN", auth=True):
            for mech in mechs:
                if mech == "XOAUTH2" and "AUTH=XOAUTH2" in caps:
                    c.oauth2_login(cfg.user, cfg.password)
                    return
                if mech == "OAUTHBEARER" and "AUTH=OAUTHBEARER" in caps:
                    c.oauthbearer_login(cfg.user, cfg.password)
                    return
                if mech == "PLAIN" and ("AUTH=PLAIN" in caps or cfg.master_user):
                    if cfg.master_user:
                        # Dovecot's master login: authenticate as the master, act as the user.
                        c.plain_login(cfg.master_user, cfg.password, authorization_identity=cfg.user)
                    else:
                        c.plain_login(cfg.user, cfg.password)
                    return
                if mech in ("PLAIN", "LOGIN") and "LOGINDISABLED" not in caps:
                    c.login(cfg.user, cfg.password)
                    return
        raise AuthError(
            f"{self.where}: the server offers none of the login mechanisms {' '.join(mechs)} "
            f"(it offers {' '.join(sorted(x[5:] for x in caps if x.startswith('AUTH='))) or 'none'})"
        )

    @contextlib.contextmanager
    def guard(self, what: str, *, auth: bool = False, missing: str = "") -> Iterator[None]:
        """Run IMAP commands; map every failure to a DsyncError naming server and command."""
        import imapclient.exceptions as ex

        lost = self.dead or self.shared.get("dead", "")
        if lost:
            # The first failure, again: that is what the user must see, whoever asks next.
            raise ConnectionLost(f"{lost}; run the sync again")
        try:
            yield
        except DsyncError:
            raise
        except (ex.IMAPClientAbortError, imaplib.IMAP4.abort, EOFError, OSError) as e:
            reason = _text(e) or type(e).__name__
            violation = getattr(getattr(self.client, "_imap", None), "violation", "")
            if not violation and "unexpected" in reason and "response" in reason:
                violation = "it is not IMAP: " + reason.split("=> ", 1)[-1][:200]
            if violation:
                # Not a broken line but a server we won't follow: say what it sent.
                msg = f"{self.where}: refused the server's answer to {what}: {violation}"
            else:
                if isinstance(e, socket.timeout):
                    reason = f"no answer in {self.cfg.timeout:.0f} seconds"
                msg = f"{self.where}: connection lost during {what}: {reason}"
            self.dead = msg
            self.shared.setdefault("dead", msg)
            with contextlib.suppress(Exception):
                self.client.shutdown()
            raise ConnectionLost(msg) from None
        except ex.LoginError as e:
            raise AuthError(f"{self.where}: login as {self.cfg.user} failed: {_text(e)}") from None
        except (ex.IMAPClientError, imaplib.IMAP4.error) as e:
            if auth:
                raise AuthError(f"{self.where}: login as {self.cfg.user} failed: {_text(e)}") from None
            text = _text(e)
            if missing and ("nonexist" in text.lower() or "doesn't exist" in text.lower()):
                raise NotFoundError(f"Mailbox doesn't exist: {missing}") from None
            raise StorageError(f"{self.where}: {what} failed: {text}") from None

    # -- APPEND ------------------------------------------------------------------------
    def append(self, raw: str, vname: str, flags: list[str], when: datetime | None, body: BinaryIO,
               size: int) -> bytes:
        """APPEND a message of ``size`` bytes read from ``body`` in 1 MiB pieces (imaplib
        would want it whole in memory). With LITERAL+ (or LITERAL- and at most 4096 bytes)
        the literal follows at once, else after the server's continuation. Returns the
        tagged OK's text (``[APPENDUID v uid] ...`` with UIDPLUS)."""
        imap = self.client._imap
        with self.guard(f"APPEND to {vname}", missing=vname):
            box = self.client._normalise_folder(raw)  # quoted as imapclient quotes names
            args = [b"APPEND", box.encode() if isinstance(box, str) else box, ("(" + " ".join(flags) + ")").encode()]
            if when is not None:
                args.append(imaplib.Time2Internaldate(when).encode("ascii"))
            plus = "LITERAL+" in self.caps or ("LITERAL-" in self.caps and size <= 4096)
            tag = imap._new_tag()
            imap.send(tag + b" " + b" ".join(args) + b" {%d%s}\r\n" % (size, b"+" if plus else b""))
            refused = False
            if not plus:
                while imap._get_response() is not None:  # None: the continuation "+"
                    if imap.tagged_commands[tag]:
                        refused = True  # NO/BAD instead of "+": no literal
                        break
            if not refused:
                sent = 0
                while chunk := body.read(1024 * 1024):
                    imap.send(chunk)
                    sent += len(chunk)
                if sent != size:  # the server would wait for the rest, or misread the next line
                    raise StorageError(f"{self.where}: APPEND to {vname}: the message gave {sent} bytes, "
                                       f"not the {size} announced")
                imap.send(b"\r\n")
            typ, data = imap._command_complete("APPEND", tag)
            self.client._checkok("append", typ, data)
            text = data[0] if data else b""
            return text if isinstance(text, bytes) else str(text).encode()

    # -- selection ---------------------------------------------------------------------
    def select(self, raw: str, vname: str, *, write: bool = False) -> dict[bytes, Any]:
        """SELECT (or EXAMINE when only reading) a mailbox; returns the SELECT response."""
        with self.guard(f"SELECT {vname}", missing=vname):
            resp = self.client.select_folder(raw, readonly=not write)
        self.selected = raw
        self.selected_rw = write
        self.select_resp = resp
        return resp

    def unselect(self) -> None:
        if self.selected is None or self.dead:
            return
        with self.guard("UNSELECT"):
            if "UNSELECT" in self.caps:
                self.client.unselect_folder()
            else:
                self.client.close_folder() if not self.selected_rw else self.client.select_folder("INBOX", True)
        self.selected = None

    def take_untagged(self, name: str) -> list[Any]:
        """Untagged responses imapclient leaves behind (VANISHED, APPENDUID data)."""
        return self.client._imap.untagged_responses.pop(name, [])

    def close(self) -> None:
        if self.dead:
            return
        with contextlib.suppress(Exception):
            self.client.logout()
        with contextlib.suppress(Exception):
            self.client.shutdown()
        self.dead = f"{self.where}: connection closed"


def _text(e: BaseException) -> str:
    text = str(e)
    if text.startswith("b'") or text.startswith('b"'):
        text = text[2:-1]
    return " ".join(text.split())
