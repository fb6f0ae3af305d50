"""One authenticated IMAP connection (imapclient), with every failure turned into a one-line
:class:`~dsync_core.errors.DsyncError`.

A connection that broke (reset, EOF, timeout, TLS error) is dead for the rest of the run:
the storage does not reconnect behind the engine's back, so a sync whose server went away
fails (exit 1) and the next run starts from a clean state.
"""

from __future__ import annotations

import contextlib
import imaplib
import socket
import ssl
from collections.abc import Iterator
from typing import Any

from dsync_core.errors import ConfigError, DsyncError, NotFoundError, StorageError

from .config import ImapcConfig


class AuthError(DsyncError):
    """The server refused the login (wrong password, token expired)."""

    exit_code = 77  # EX_NOPERM


class ConnectionLost(StorageError):
    """The connection to the server broke; nothing more can be done on it."""


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
        self.dead: str = ""
        self.shared: dict[str, str] = {}  # the storage's: "dead" once any connection broke
        self.selected: str | None = None  # raw server name
        self.selected_rw = False
        where = f"imapc({cfg.server})"
        self.where = where
        try:
            if cfg.ssl == "imaps":
                self.client = imapclient.IMAPClient(
                    cfg.host, port=cfg.port, ssl=True, ssl_context=ssl_context(cfg), timeout=cfg.timeout
                )
            else:
                self.client = imapclient.IMAPClient(cfg.host, port=cfg.port, ssl=False, timeout=cfg.timeout)
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
        except imapclient.exceptions.IMAPClientError as e:
            raise StorageError(f"{where}: {_text(e)}") from None
        self.client.folder_encode = False
        self.client.normalise_times = False
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
            raise ConnectionLost(f"{self.where}: connection lost {lost}; run the sync again")
        try:
            yield
        except DsyncError:
            raise
        except (ex.IMAPClientAbortError, imaplib.IMAP4.abort, EOFError, OSError) as e:
            reason = _text(e) or type(e).__name__
            if isinstance(e, socket.timeout):
                reason = f"no answer in {self.cfg.timeout:.0f} seconds"
            self.dead = f"during {what} ({reason})"
            self.shared.setdefault("dead", self.dead)
            with contextlib.suppress(Exception):
                self.client.shutdown()
            raise ConnectionLost(f"{self.where}: connection lost during {what}: {reason}") from None
        except ex.LoginError as e:
            raise AuthError(f"{self.where}: login as {self.cfg.user} failed: {_text(e)}") from None
        except (ex.IMAPClientError, imaplib.IMAP4.error) as e:
            if auth:
                raise AuthError(f"{self.where}: login as {self.cfg.user} failed: {_text(e)}") from None
            text = _text(e)
            if missing and ("nonexist" in text.lower() or "doesn't exist" in text.lower()):
                raise NotFoundError(f"Mailbox doesn't exist: {missing}") from None
            raise StorageError(f"{self.where}: {what} failed: {text}") from None

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
        self.dead = "closed"


def _text(e: BaseException) -> str:
    text = str(e)
    if text.startswith("b'") or text.startswith('b"'):
        text = text[2:-1]
    return " ".join(text.split())
