"""The transport tests' fixtures live in transport_helpers (imported by name from the tests)."""

from transport_helpers import env, listener  # noqa: F401
