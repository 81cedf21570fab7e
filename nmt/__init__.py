"""nmt: neural machine translation you can train, run and look inside.

`from nmt import Translator` gives the Python API (nmt/inference.py); it is loaded on first use,
so that `import nmt` stays free of torch.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Translator", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Translator":
        from nmt.inference import Translator

        return Translator
    raise AttributeError(f"module 'nmt' has no attribute {name!r}")
