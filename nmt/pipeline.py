"""The one module that wires data, models, training and decoding together for each command.

`nmt.cli` calls exactly one function here per command; these functions hold no maths of their own.
"""

from __future__ import annotations

# ---- prepare (issue 2) --------------------------------------------------------------------------

# ---- train, average (issue 4) -------------------------------------------------------------------

# ---- translate, evaluate, align-eval, plot (issue 5) --------------------------------------------
