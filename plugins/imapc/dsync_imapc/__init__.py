"""dsync-imapc: the ``imapc:`` storage, any IMAP server as a dsync side (issue 5).

Configured as Dovecot's imapc is, by settings, not by the location string::

    dsync -o mail_location=imapc: -o imapc_host=H -o imapc_port=P -o imapc_user=U \\
          -o imapc_password=W backup maildir:~/Maildir

Settings: ``imapc_host``, ``imapc_port`` (143, 993 with imaps), ``imapc_user``,
``imapc_master_user`` (AUTHENTICATE PLAIN as the master, authorised as the user),
``imapc_password``, ``imapc_ssl`` (``no``, ``imaps``, ``starttls``; certificates verified
against the system store or ``ssl_client_ca_file`` / ``ssl_client_ca_dir``;
``imapc_ssl_verify=no`` turns that off), ``imapc_features`` (we read ``no-condstore``,
``no-qresync``, ``no-gmail``), ``imapc_sasl_mechanisms`` (e.g. ``xoauth2 oauthbearer``:
used when the server offers them, the password is then the OAuth token),
``imapc_password_command`` (a command whose first output line is the password or token,
for token refreshers), ``imapc_max_connections`` (parallel body fetches, default 4),
``imapc_cmd_timeout``, ``imapc_list_prefix``, ``imapc_hashed_headers``,
``imapc_skip_special_use`` (default ``\\Flagged \\Important``), ``imapc_special_use_names``
(``yes``: ``\\Sent``, ``\\Drafts``, ``\\Trash``, ``\\Junk``, ``\\Archive`` folders get those
plain names, ``\\All`` becomes ``Archive``, where the name is free), ``imapc_fetch_batch``,
``imapc_fetch_chunk_size`` (1M), ``imapc_max_line_length`` (16M), ``imapc_max_response_size``
(256M): the bounds below.
A path in the location (``imapc:~/imapc-cache``) is a cache directory (see below).

Design decisions, and why
-------------------------
* **Message GUIDs are header hashes** (dsync-algorithm §4.9): a SHA-1 (cut to 128 bits) of
  the normalised lines of Message-ID, Date, From, To, Cc, Subject, In-Reply-To and Received,
  plus RFC822.SIZE (:mod:`dsync_imapc.headerhash`). They are computed from one batched
  ``UID FETCH n:m (RFC822.SIZE BODY.PEEK[HEADER.FIELDS (...)])`` per 500 messages and never
  change, so the destination stores them as its GUIDs and every later run matches messages
  by GUID: repeated runs neither duplicate nor lose anything. More headers than Dovecot's
  default (Date, Message-ID) keep two distinct mails that share a Message-ID apart (the
  Received lines and the size differ); the rare exact duplicates in one folder are numbered
  in UID order.
* **Mailbox GUIDs are a hash of the folder name.** They survive a UIDVALIDITY change on the
  server (the engine then sees a UIDVALIDITY conflict on one mailbox, resets the copy to the
  new UIDs and refills it: bodies are fetched again, nothing is duplicated because GUIDs are
  header hashes); a folder renamed on the server is a delete and a create to the engine.
* **Modseqs are the server's** (CONDSTORE HIGHESTMODSEQ/MODSEQ): a fast re-run that finds
  HIGHESTMODSEQ, UIDNEXT and MESSAGES unchanged skips the folder with one STATUS; a stateful
  run (``-s``) asks for ``CHANGEDSINCE`` only and learns expunges from QRESYNC ``VANISHED``;
  without QRESYNC the storage says its expunge history is incomplete
  (``expunges_complete_since``), and the engine compares the folder's full UID lists.
  Without CONDSTORE, HIGHESTMODSEQ is the run's start time (ms): every run compares every folder
  (never misses a flag change), which is slower but correct.
* **UIDs are the server's.** As a source this is all backup and ``sync -1`` need. As a
  destination the server chooses UIDs (APPEND; UIDPLUS's APPENDUID tells which), so the
  storage declares ``have_save_uids = False``. ``sync -1`` into an IMAP server works;
  ``backup`` into an IMAP server works while the server's UIDs equal the source's (a fresh
  folder filled in UID order); two-way ``sync`` works for flags, expunges and new mail.
  Saving needs the **cache directory** (``imapc:~/imapc-cache``, a SQLite file): it keeps the
  GUIDs of the messages we saved (and of folders we created), a UIDVALIDITY the engine set
  (shown instead of the server's until the server's changes: a client can't set it), and a
  log of the deletes, renames and subscriptions we did (the server keeps none). Without it,
  a save whose GUID is not the message's own header hash is refused (the next run would
  copy the message again), and header hashes are recomputed every run. UIDNEXT and
  HIGHESTMODSEQ can't be raised: such wishes are ignored (the next fast sync then compares
  the folder fully: correct, only slower).
* **Bodies are batched and streamed.** Small messages come many per ``UID FETCH``
  (at most 2 MiB and ``imapc_fetch_batch`` messages per command), on up to
  ``imapc_max_connections`` connections in parallel, in order; a message above
  ``imapc_fetch_chunk_size`` (1 MiB) is read in partial fetches (``BODY.PEEK[]<off.len>``),
  one chunk in memory at a time, the first chunk fetched ahead on a parallel connection.
  Even small messages are asked as ``BODY.PEEK[]<0.chunk>``: a message bigger than its
  RFC822.SIZE claimed (servers' sizes can be wrong) is completed by partial fetches. The
  first full listing of a folder brings the hashed header fields along (one command for
  flags, sizes and header hashes). Nothing is read per message except big ones. FETCH answers
  of the shapes we ask for are parsed with a few regular expressions (imapclient's general
  parser cost more than the transfer); anything unusual goes to imapclient's parser.
* **APPEND streams.** A message saved to the server is spooled (1 MiB in memory, the rest
  in a temporary file) with its line ends made CRLF, to learn the literal's size, then
  sent in 1 MiB pieces: with ``{n+}`` when the server offers LITERAL+ (or LITERAL- and
  n <= 4096), else after the server's continuation. imaplib's own APPEND would hold it
  whole, twice.
* **A hostile or broken server is bounded** where imaplib touches the socket (``read``,
  ``readline``, ``send`` of an ``imaplib.IMAP4`` subclass that imapclient creates for us,
  from the greeting on; no global is patched): no line above ``imapc_max_line_length``;
  no literal above ``imapc_fetch_chunk_size`` in a body fetch (we ask for at most that
  much), nor above ``imapc_max_line_length`` elsewhere (folder names, header fields),
  checked before anything is allocated; and no answer to one command above a bound
  (imaplib keeps an answer whole): twice the announced sizes (+1 MiB) for a body batch,
  a chunk for a partial fetch, ``imapc_max_response_size`` or 1 KiB per message (16 KiB
  with header fields) for a listing, ``imapc_max_response_size`` for the rest. Such a
  server, or one that answers with something that is not IMAP, ends the run with one
  line naming the server, the command and what was wrong (exit 1); a server that stops
  answering is given up after ``imapc_cmd_timeout``. Nothing is half written: bodies go
  to the destination's temporary files first, as always.
* **Errors.** Connect, TLS and login failures are one-line DsyncErrors. A connection that
  breaks is not re-opened: the rest of the run fails (exit 1) with the first failure's
  message and the next run continues where the copy stands.
* **Folder names**: modified UTF-7 decoded, any separator mapped to ``/`` (see
  :mod:`dsync_imapc.names`); special-use attributes (RFC 6154) are reported in
  ``MailboxInfo.special_use``.
* **Gmail** (capability X-GM-EXT-1): labels are folders, so a message with two labels is in
  two folders, as any IMAP client shows it. ``[Gmail]/Starred`` and ``[Gmail]/Important``
  (``\\Flagged``, ``\\Important``) are views of other folders and skipped by default
  (``imapc_skip_special_use``); ``[Gmail]/All Mail`` (``\\All``) lists only the messages that
  carry no label (archived mail), so no message is copied twice because of All Mail.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dsync_core.plugin import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from dsync_core.location import Location
    from dsync_core.model import UserInfo
    from dsync_core.settings import Settings
    from dsync_core.storage import Storage

SCHEMES = ("imapc",)


@hookimpl
def dsync_storage_open(location: Location, settings: Settings, user: UserInfo | None) -> Storage | None:
    if location.scheme != "imapc":
        return None
    from .storage import ImapcStorage  # imapclient is imported only when imapc is used

    return ImapcStorage(location, settings, user)


@hookimpl
def dsync_storage_schemes() -> list[str]:
    return list(SCHEMES)
