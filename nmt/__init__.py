"""nmt: neural machine translation you can train, run and look inside."""

__version__ = "0.1.0"
