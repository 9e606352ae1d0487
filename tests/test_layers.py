"""The package's import graph: one way down the layers (pyproject's import-linter contract), and no
function-level import of the package's own modules hiding a cycle."""
import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "smooth_then_quant"


def test_imports_follow_the_layer_order():
    lint = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run([str(lint), "--config", str(PACKAGE.parent / "pyproject.toml")], cwd=PACKAGE.parent,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "1 kept, 0 broken" in run.stdout


def _function_level_imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for n in ast.walk(fn):
                if isinstance(n, ast.ImportFrom) and (n.level or (n.module or "").startswith("smooth_then_quant")):
                    found.append((n.lineno, "." * n.level + (n.module or "")))
                elif isinstance(n, ast.Import) and any(a.name.startswith("smooth_then_quant") for a in n.names):
                    found.append((n.lineno, n.names[0].name))
    return found


def test_no_function_level_import_of_the_package():
    bad = [f"{f.relative_to(PACKAGE.parent)}:{line} imports {mod}" for f in sorted(PACKAGE.rglob("*.py"))
           for line, mod in _function_level_imports(ast.parse(f.read_text()))]
    assert bad == []


def test_the_checker_sees_a_function_level_import():
    assert _function_level_imports(ast.parse("def f():\n    from .smooth import smooth_\n")) == [(2, ".smooth")]


def test_ruff_is_clean():
    ruff = Path(sys.executable).with_name("ruff")
    run = subprocess.run([str(ruff), "check", "smooth_then_quant", "tests", "bench", "eval", "scripts"],
                         cwd=PACKAGE.parent, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-4000:]


def test_no_name_shadows_a_module():
    """`smooth_then_quant.X.Y` is always the module Y (a function of the same name once hid `probe` and `detect`)."""
    import importlib
    import pkgutil

    import smooth_then_quant

    shadowed = []
    for info in pkgutil.walk_packages(smooth_then_quant.__path__, "smooth_then_quant."):
        if info.name.endswith(".__main__"):  # runs the CLI when imported
            continue
        module = importlib.import_module(info.name)
        parent, _, child = info.name.rpartition(".")
        if getattr(sys.modules[parent], child) is not module:
            shadowed.append(f"{parent}.{child} is {type(getattr(sys.modules[parent], child)).__name__}")
    assert shadowed == []
