"""The one module that wires data, models, training and decoding together for each command.

`nmt.cli` calls exactly one function here per command; these functions hold no maths of their own.
"""

from __future__ import annotations

from pathlib import Path

from nmt.errors import ConfigError

# ---- prepare (issue 2) --------------------------------------------------------------------------

# ---- train, average (issue 4) -------------------------------------------------------------------

# ---- translate, evaluate, align-eval, plot (issue 5) --------------------------------------------

# ---- built-in corpora (issue 6) -----------------------------------------------------------------

BUILTIN_CORPORA = ("bible",)


def export_corpus(name: str, out: Path) -> dict[str, int]:
    """Write a corpus that ships with a Python package as plain text pairs under `out`."""
    from nmt.data.bible import export_bible

    if name != "bible":
        raise ConfigError(f"unknown corpus {name!r}; built-in corpora: {', '.join(BUILTIN_CORPORA)}")
    return export_bible(out)

