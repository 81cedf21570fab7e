"""The import direction of STYLE.md, checked: cli -> pipeline / serve -> training, inference ->
decoding, checkpoint -> models / data / metrics -> config -> errors, io. A module imports only what
stands to its right, no two modules import each other (directly or round a cycle, counting the
imports inside functions too), and the inference side (translate, evaluate, export) never loads
the training package. The one listed exception: the package root's lazy `Translator` export."""

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
    "nmt.device": 1,
    "nmt.models": 2,
    "nmt.data": 2,
    "nmt.markup": 2,
    "nmt.metrics": 2,
    "nmt.decoding": 3,
    "nmt.checkpoint": 3,
    "nmt.training": 4,
    "nmt.inference": 4,
    "nmt.curves": 4,
    "nmt.pretrained": 4,
    "nmt.pipeline": 5,
    "nmt.serve": 5,
    "nmt.cli": 6,
}


# Modules that stand in another module's layer: the writers of translate's outputs are on the
# inference floor, beside the Translator whose results they write.
SAME_LAYER = {"nmt.outputs": "nmt.inference"}


def layer_of(module: str) -> str:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in SAME_LAYER:
            return SAME_LAYER[name]
        if name in RANK and (name != "nmt" or n == len(parts)):
            return name
    raise KeyError(module)


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_nmt_modules(path: Path, tree: ast.AST | None = None) -> list[str]:
    tree = tree if tree is not None else ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "nmt"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "nmt":
                found.append(node.module)
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


# The package root re-exports `Translator` on first use (PEP 562 `__getattr__`), so that
# `from nmt import Translator` works without `import nmt` loading torch.
LAZY_EXPORTS = {"nmt": {"nmt.inference"}}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_right(path: Path) -> None:
    importer = module_name(path)
    src_layer = layer_of(importer)
    for target in imported_nmt_modules(path):
        if target in LAZY_EXPORTS.get(importer, set()):
            continue
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


def known_module(name: str, modules: set[str]) -> str | None:
    """`nmt.models.rnn.RNNModel`-style targets and packages mapped onto a module of ours."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def runtime_imports(path: Path) -> list[str]:
    """Every import that can run, at module level or inside a function (a deferred import still
    ties the two modules together); `if TYPE_CHECKING:` blocks, read only by type checkers, are
    left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            node.body = []
    return imported_nmt_modules(path, tree)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def test_no_import_cycles() -> None:
    names = {module_name(p): p for p in MODULES}
    graph = {
        name: {
            t
            for t in (known_module(i, set(names)) for i in runtime_imports(path))
            if t is not None and t != name and t not in LAZY_EXPORTS.get(name, set())
        }
        for name, path in names.items()
    }
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt) :] + [nxt] if nxt in trail else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


@pytest.mark.parametrize("command", ["translate", "evaluate", "export"])
def test_inference_commands_do_not_import_training(command: str) -> None:
    """The command modules of the inference side, and everything they import, stay clear of the
    training package (`nmt translate` must not pay for, or depend on, training code)."""
    names = {module_name(p): p for p in MODULES}
    seen, todo = set(), [f"nmt.pipeline.{command}"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        found = (known_module(i, set(names)) for i in runtime_imports(names[name]))
        todo += [m for m in found if m is not None and m not in LAZY_EXPORTS.get(name, set())]
    assert not [m for m in seen if m.startswith("nmt.training")], sorted(seen)


def test_inference_layer_loads_without_training() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from nmt import Translator; import nmt.pipeline.translate, "
        "nmt.pipeline.evaluate, nmt.pipeline.export; "
        "bad = sorted(m for m in sys.modules if m.startswith('nmt.training')); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
