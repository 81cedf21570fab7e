"""User-facing errors.

A user mistake raises an `NmtError` that says where (file and line, or config key), what was found
and what was expected. `nmt.cli` prints it as one line and exits with `exit_code`; a traceback
therefore always means a bug of ours.
"""


class NmtError(Exception):
    """Base of every error caused by input, configuration or environment rather than by a bug."""

    exit_code = 1


class ConfigError(NmtError):
    """A bad setting, flag or config file (usage error: exit code 2)."""

    exit_code = 2


class DataError(NmtError):
    """A corpus, prepared directory or text file that cannot be used as it is."""


class CheckpointError(NmtError):
    """A checkpoint or run directory that is missing, corrupt or incompatible."""


class TrainingError(NmtError):
    """The run cannot go on (e.g. the loss keeps being NaN); the last good checkpoint is kept."""


class Stopped(NmtError):
    """Training stopped on SIGINT / SIGTERM after saving its progress. Exits 128 + the signal
    number (130, 143); the message is the whole report, printed without `error:`."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum
