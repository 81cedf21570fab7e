"""The import direction of STYLE.md, checked: cli -> pipeline -> training -> decoding ->
models / data / metrics -> config -> errors, io. A module imports only what stands to its right."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nmt"

# Lower number = further right (more basic). Equal numbers may not import each other, except
# inside the same layer-package (nmt.models.rnn may import nmt.models.attention).
RANK = {
    "nmt.errors": 0,
    "nmt.io": 0,
    "nmt": 0,
    "nmt.config": 1,
    "nmt.models": 2,
    "nmt.data": 2,
    "nmt.metrics": 2,
    "nmt.decoding": 3,
    "nmt.training": 4,
    "nmt.pipeline": 5,
    "nmt.cli": 6,
}


def layer_of(module: str) -> str:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in RANK and (name != "nmt" or n == len(parts)):
            return name
    raise KeyError(module)


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_nmt_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "nmt"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "nmt":
                found.append(node.module)
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_right(path: Path) -> None:
    importer = module_name(path)
    src_layer = layer_of(importer)
    for target in imported_nmt_modules(path):
        dst_layer = layer_of(target)
        if dst_layer == src_layer:
            continue
        assert RANK[dst_layer] < RANK[src_layer], (
            f"{importer} imports {target}: {src_layer} may only import layers to its right"
        )


def test_every_module_has_a_layer() -> None:
    for path in MODULES:
        layer_of(module_name(path))


def test_importing_nmt_runs_no_work() -> None:
    import subprocess
    import sys

    code = "import sys, nmt; assert 'torch' not in sys.modules, 'import nmt pulled in torch'"
    subprocess.run([sys.executable, "-c", code], check=True)
