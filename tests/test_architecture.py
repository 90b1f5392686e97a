"""The package's architecture: the layers of ``docs/architecture.md`` as import-linter
contracts (``[tool.importlinter]`` in ``pyproject.toml``), shown to hold and shown to break
when a lower layer imports a higher one; the folders, the contracts and the page naming the
same packages in the same order; no import cycle; the library importable without its tools.

The import graph for the checks import-linter does not make is read from the source (every
``import`` / ``from … import`` statement, also inside functions)."""
from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "deit"
CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
LAYERS = next(c for c in CONTRACTS["contracts"] if c["type"] == "layers")["layers"]  # top first
# the public re-exports (``deit.create_model``, ``from deit.models import create_model``):
# no module of the package imports them, so the import order never depends on a half-initialised package
FACADES = {"deit", "deit.models"}
# the one call from a model up the layers: the seed API's DeiT.loadTeacherModel()
LATE_BOUND = {("deit.models.deit", "deit.distill.teachers")}
# function-local imports of the package's own modules, by (module, function)
LOCAL_IMPORTS_ALLOWED = {
    ("deit.models.deit", "loadTeacherModel"),  # the late-bound call above
    ("deit.deploy.onnx_predict", "_decoder"),  # runs without torch: falls back to loading the decoder by path
}
LOCAL_IMPORTS_MODULES = {"deit.cli.app"}  # one command's subsystem is imported when that command runs


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _target(node: ast.ImportFrom, module: str, is_package: bool, alias: str, modules: dict[str, Path]) -> str:
    base = node.module or ""
    if node.level:
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[: len(parts) - node.level + 1]
        base = ".".join(parts + ([node.module] if node.module else []))
    sub = f"{base}.{alias}"
    return sub if sub in modules else base


def _imports(modules: dict[str, Path]) -> list[tuple[str, str, int, str | None]]:
    """``(importer, imported, line, enclosing function or None)`` for every import of a
    module of the package."""
    found = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"

        def visit(node: ast.AST, function: str | None) -> None:
            for child in ast.iter_child_nodes(node):
                inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
                if isinstance(child, ast.Import):
                    for alias in child.names:
                        if alias.name == "deit" or alias.name.startswith("deit."):
                            found.append((module, alias.name, child.lineno, function))
                elif isinstance(child, ast.ImportFrom):
                    for alias in child.names:
                        target = _target(child, module, is_package, alias.name, modules)
                        if target == "deit" or target.startswith("deit."):
                            found.append((module, target, child.lineno, function))
                visit(child, inner)

        visit(tree, None)
    return found


MODULES = _modules()
IMPORTS = _imports(MODULES)


def _cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def _lint_imports(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
               "sys.exit(lint_imports_command())"]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env={"PYTHONPATH": str(pythonpath),
                          "PATH": "/usr/bin:/bin", "NO_COLOR": "1", "HOME": str(cwd)})


def test_the_contracts_hold():
    result = _lint_imports(ROOT, ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" in result.stdout and " 0 broken" in result.stdout


@pytest.mark.slow
def test_a_lower_layer_importing_a_higher_one_breaks_the_contract(tmp_path):
    shutil.copytree(PACKAGE, tmp_path / "deit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    layers = tmp_path / "deit" / "models" / "layers.py"
    layers.write_text(layers.read_text() + "\n\ndef _upward():\n    from deit.train import engine  # noqa\n")
    result = _lint_imports(tmp_path, tmp_path)
    assert result.returncode != 0
    assert "deit.models.layers -> deit.train.engine" in result.stdout, result.stdout


def test_folders_contracts_and_the_map_tell_the_same_story():
    packages = sorted(f"deit.{p.name}" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert sorted(LAYERS) == packages, "every subpackage of deit/ is one layer of the contract, and no other"
    top_level = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top_level == ["__init__.py", "__main__.py"], f"modules outside the layers: {top_level}"
    page = (ROOT / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| \d+ [^|]*\| `(deit/\w+)/`", page, flags=re.M)  # bottom first
    assert [r.replace("/", ".") for r in rows] == LAYERS[::-1], rows


def test_no_module_imports_a_facade():
    through = [f"{a} imports {b} at line {line}" for a, b, line, _ in IMPORTS if b in FACADES and a not in FACADES]
    assert not through, "\n".join(through)


def test_no_import_cycle_at_any_depth():
    edges = {(a, b) for a, b, _, _ in IMPORTS if a != b and a not in FACADES and b not in FACADES}
    assert _cycles(edges - LATE_BOUND) == []
    # the late-bound call closes exactly one loop (model -> teacher loading -> registry -> model)
    (loop,) = _cycles(edges)
    assert {"deit.models.deit", "deit.distill.teachers", "deit.models.registry"} <= set(loop)


def test_the_cycle_finder_finds_cycles():
    assert _cycles({("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")}) == [["a", "b", "c"]]
    assert _cycles({("a", "b"), ("b", "c")}) == []


def test_function_local_imports_only_where_allowed():
    local = [f"{a}.{function} imports {b} at line {line}" for a, b, line, function in IMPORTS
             if function is not None and (a, function) not in LOCAL_IMPORTS_ALLOWED
             and a not in LOCAL_IMPORTS_MODULES and not a.startswith("deit.bench")]
    assert not local, "\n".join(local)


def test_the_benchmark_harness_is_imported_only_by_its_command():
    importers = {a for a, b, _, _ in IMPORTS if b.startswith("deit.bench") and not a.startswith("deit.bench")}
    assert importers == {"deit.cli.app"}, importers


# calls that touch files or the environment: none in the pure model layer
_IO_CALLS = {"open", "Path", "getenv", "load", "save", "read_text", "write_text", "read_bytes", "exists", "mkdir",
             "safe_open", "save_file", "urlopen"}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("deit.models.")))
def test_models_touch_no_files_or_environment(module):
    tree = ast.parse(MODULES[module].read_text())
    touching = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "environ":
            touching.append(f"os.environ at line {node.lineno}")
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            if name in _IO_CALLS:
                touching.append(f"{name}() at line {node.lineno}")
    assert not touching, f"{module}: {touching}"


def test_importing_the_library_leaves_the_tools_unloaded():
    """``import deit`` and the CLI's own module load neither the benchmark nor HF transformers."""
    code = ("import sys, deit, deit.cli.app; "
            "print(sorted(m for m in sys.modules if m.startswith(('deit.bench', 'transformers', 'onnx'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_public_imports_keep_working():
    import deit
    from deit.models import create_model as from_models
    from deit.weights.factory import create_model

    assert deit.create_model is create_model is from_models
    model = from_models("deit_pico_distilled_patch4_32", num_classes=3)
    assert model.model_name == "deit_pico_distilled_patch4_32" and model.num_classes == 3
    for name in deit.__all__:
        assert getattr(deit, name) is not None, name
