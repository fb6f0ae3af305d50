"""Every hook spec is documented in docs/hooks.md with its exact signature, and vice versa."""

from __future__ import annotations

import inspect
import pathlib
import re

from dsync_core.plugin import spec

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs" / "hooks.md"


def _specs() -> dict[str, str]:
    out = {}
    for name, fn in vars(spec).items():
        if name.startswith("dsync_") and callable(fn):
            params = ", ".join(inspect.signature(fn).parameters)
            out[name] = f"{name}({params})"
    return out


def test_every_hook_has_a_docs_heading_with_its_signature() -> None:
    text = DOCS.read_text(encoding="utf-8")
    headings = set(re.findall(r"^### (dsync_\w+\([^)]*\))\s*$", text, re.M))
    specs = set(_specs().values())
    assert specs - headings == set(), "hooks missing from docs/hooks.md"
    assert headings - specs == set(), "docs/hooks.md documents hooks that do not exist"


def test_every_hook_spec_has_a_docstring_with_returns() -> None:
    for name in _specs():
        doc = inspect.getdoc(getattr(spec, name)) or ""
        assert doc.strip(), f"{name} has no docstring"
        assert "versionadded" in doc, f"{name} docstring lacks versionadded"
