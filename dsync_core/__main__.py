"""``python -m dsync_core`` is the ``dsync`` command."""

from .cli import run

run()
