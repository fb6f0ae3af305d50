"""dsync_core.model.guid128_hex / same_guid: a string GUID against its 128-bit form (§0.1)."""

from __future__ import annotations

import hashlib

from dsync_core.dovecot_index import guid_128
from dsync_core.model import guid128_hex, same_guid

MAILDIR_GUID = "1700000000.M123P456.host"


def test_hex_guid_is_its_own_128_bit_form() -> None:
    g = "0123456789ABCDEF0123456789abcdef"
    assert guid128_hex(g) == g.lower()


def test_string_guid_is_the_tail_of_its_sha1() -> None:
    want = hashlib.sha1(MAILDIR_GUID.encode()).digest()[4:20].hex()
    assert guid128_hex(MAILDIR_GUID) == want == guid_128(MAILDIR_GUID).hex()


def test_same_guid() -> None:
    h = guid128_hex(MAILDIR_GUID)
    assert same_guid(MAILDIR_GUID, MAILDIR_GUID)
    assert same_guid(h, MAILDIR_GUID) and same_guid(MAILDIR_GUID, h)
    assert not same_guid(MAILDIR_GUID, "1700000000.M124P456.host")
    assert not same_guid(h, "1700000000.M124P456.host")
    assert not same_guid("", MAILDIR_GUID) and not same_guid(MAILDIR_GUID, "")
