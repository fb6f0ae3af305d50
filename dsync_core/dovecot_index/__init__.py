"""Dovecot's index files (``dovecot.index``, ``dovecot.index.log``): reading and writing.

* :mod:`.modseq`: HIGHESTMODSEQ of an index without reading it whole (the Maildir plugin
  uses it to agree with Dovecot's own value).
* :mod:`.logfile`: the transaction log's framing and a :class:`Transaction` builder.
* :mod:`.state`: :class:`IndexState`, the full reader (main index + log replay, §6.9).
* :mod:`.writer`: :func:`create_log` for a new index and :func:`append_transaction`
  under Dovecot's fcntl lock (§6.10).

Formats: storage-formats §6 (little-endian only).
"""

from __future__ import annotations

from .logfile import (
    EXTERNAL,
    LOG_SUFFIX,
    T_APPEND,
    T_ATTRIBUTE_UPDATE,
    T_BOUNDARY,
    T_EXPUNGE,
    T_EXPUNGE_GUID,
    T_FLAG_UPDATE,
    T_KEYWORD_RESET,
    T_KEYWORD_UPDATE,
    T_MODSEQ_UPDATE,
    TYPE_MASK,
    Transaction,
)
from .modseq import MAX_LOG_BYTES, highest_modseq, index_modseq_header, log_highest_modseq
from .state import (
    INDEX_PREFIX,
    SYSTEM_FLAG_BITS,
    Expunge,
    Extension,
    IndexState,
    Message,
    bits_to_flags,
    flags_to_bits,
    guid_128,
)
from .writer import LogLock, append_locked, append_transaction, create_log

__all__ = [
    "highest_modseq", "log_highest_modseq", "index_modseq_header", "MAX_LOG_BYTES",
    "IndexState", "Extension", "Message", "Expunge", "INDEX_PREFIX", "SYSTEM_FLAG_BITS",
    "bits_to_flags", "flags_to_bits", "guid_128",
    "Transaction", "create_log", "append_transaction", "append_locked", "LogLock",
    "LOG_SUFFIX", "EXTERNAL", "TYPE_MASK", "T_APPEND", "T_ATTRIBUTE_UPDATE", "T_BOUNDARY", "T_EXPUNGE",
    "T_EXPUNGE_GUID", "T_FLAG_UPDATE", "T_KEYWORD_RESET", "T_KEYWORD_UPDATE", "T_MODSEQ_UPDATE",
]
