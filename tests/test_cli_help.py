"""Every command's --help: an example to copy, flags shown as flags, nothing swallowed."""

from __future__ import annotations

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from nmt.cli import app

COMMANDS = sorted(get_command(app).commands)  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_an_example_and_plain_flags(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.stdout
    assert f"nmt {command}" in result.stdout.split("Example", 1)[1]
    assert "<bool>" not in result.stdout


def test_help_keeps_square_brackets() -> None:
    assert "pip install 'nmt[export]'" in CliRunner().invoke(app, ["export", "--help"]).stdout
