"""The package's import graph: layers in one direction, no cycle, tools apart.

The graph is read from the source (every ``import`` / ``from … import`` statement, also
inside functions), so an import hidden in a function body counts like any other. The
layers are those of ``docs/architecture.md``; a new module must be given one here.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "deit"

# bottom (0) to top; an import may point to its own layer or below
LAYERS: dict[str, int] = {
    # foundation: errors, atomic writes, argument checks
    "deit.errors": 0, "deit.fileio": 0, "deit._validation": 0, "deit.figures": 0,
    # pure nn.Modules and the data that describes them: no files, no environment, no names
    "deit.models.layers": 1, "deit.models.vit": 1, "deit.models.deit": 1, "deit.models.convnext": 1,
    "deit.models.resnet": 1, "deit.models.teacher_output": 1, "deit.models.pretrained": 1,
    # names -> constructors + pretrained configurations
    "deit.models.registry": 2,
    # checkpoint files, foreign layouts, published weights
    "deit.checkpoint_io": 3, "deit.checkpoint_hf": 3, "deit.checkpoint": 3, "deit.checkpoint_infer": 3,
    "deit.hub": 3,
    # models with their weights
    "deit.factory": 4, "deit.teacher": 4, "deit.flops": 4,
    # data, training, inference, export
    "deit.data": 5, "deit.data.decode": 5, "deit.data.datasets": 5, "deit.data.loader": 5,
    "deit.data.samplers": 5, "deit.data.transforms": 5, "deit.data.replay": 5, "deit.teacher_cache": 5, "deit.teacher_memo": 5,
    "deit.cache_teacher": 5, "deit.quantize": 5, "deit.losses": 5, "deit.optim": 5,
    "deit.distributed": 5, "deit.runtime": 5, "deit.config": 5, "deit.run_log": 5, "deit.engine": 5,
    "deit.train": 5, "deit.budget": 5, "deit.preprocessing": 5, "deit.inference": 5, "deit.export": 5, "deit.onnx_predict": 5,
    "deit.visualize": 5, "deit.demo": 5,
    # the command line
    "deit.cli": 6, "deit.__main__": 6,
}
# the public re-exports (``deit.create_model``, ``from deit.models import create_model``):
# they may import from any layer, and no module of the package imports them
FACADES = {"deit", "deit.models"}
# tools shipped with the CLI that are not the library: imported only by the command that runs them
TOOLS_PREFIX = "deit.bench"
# the one call from a model up to the file layer: the seed API's DeiT.loadTeacherModel()
LATE_BOUND = {("deit.models.deit", "deit.teacher")}
# function-local imports of the package's own modules, by (module, function)
LOCAL_IMPORTS_ALLOWED = {
    ("deit.models.deit", "loadTeacherModel"),  # the late-bound call above
    ("deit.onnx_predict", "_decoder"),  # runs without torch: falls back to loading the decoder by path
}
LOCAL_IMPORTS_MODULES = {"deit.cli"}  # one command's subsystem is imported when that command runs


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


def _layer(module: str) -> int:
    return 6 if module.startswith(TOOLS_PREFIX) else LAYERS[module]


def test_every_module_has_a_layer():
    unplaced = [m for m in MODULES if m not in LAYERS and m not in FACADES and not m.startswith(TOOLS_PREFIX)]
    assert not unplaced, f"give these modules a layer in tests/test_layers.py LAYERS: {unplaced}"
    gone = [m for m in LAYERS if m not in MODULES]
    assert not gone, f"LAYERS names modules that no longer exist: {gone}"


def test_imports_point_down_the_layers():
    upward = [f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)}) at line {line}"
              for a, b, line, _ in IMPORTS
              if a not in FACADES and b not in FACADES and (a, b) not in LATE_BOUND and _layer(b) > _layer(a)]
    assert not upward, "\n".join(upward)


def test_no_module_imports_a_facade():
    """Inside the package, names come from the module that defines them, so the import
    order never depends on a half-initialised package."""
    through = [f"{a} imports {b} at line {line}" for a, b, line, _ in IMPORTS
               if b in FACADES and a not in FACADES]
    assert not through, "\n".join(through)


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


def test_no_import_cycle_at_any_depth():
    edges = {(a, b) for a, b, _, _ in IMPORTS if a != b}
    assert _cycles(edges - LATE_BOUND) == []
    # the late-bound call closes exactly one loop (model -> teacher loading -> registry -> model)
    (loop,) = _cycles(edges)
    assert {"deit.models.deit", "deit.teacher", "deit.models.registry"} <= set(loop)


def test_the_cycle_finder_finds_cycles():
    assert _cycles({("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")}) == [["a", "b", "c"]]
    assert _cycles({("a", "b"), ("b", "c")}) == []


def test_function_local_imports_only_where_allowed():
    local = [f"{a}.{function} imports {b} at line {line}" for a, b, line, function in IMPORTS
             if function is not None and (a, function) not in LOCAL_IMPORTS_ALLOWED
             and a not in LOCAL_IMPORTS_MODULES and not a.startswith(TOOLS_PREFIX)]
    assert not local, "\n".join(local)


def test_tools_are_imported_only_by_their_command():
    importers = {a for a, b, _, _ in IMPORTS if b.startswith(TOOLS_PREFIX) and not a.startswith(TOOLS_PREFIX)}
    assert importers <= {"deit.cli"}, importers
    assert any(m.startswith(TOOLS_PREFIX) for m in MODULES), "the benchmark module moved: update TOOLS_PREFIX"


def test_only_the_benchmark_imports_transformers():
    importers = set()
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if any(n == "transformers" or n.startswith("transformers.") for n in names):
                importers.add(module)
    assert all(m.startswith(TOOLS_PREFIX) for m in importers), importers


# calls that touch files or the environment: none in the pure model layer
_IO_CALLS = {"open", "Path", "getenv", "load", "save", "read_text", "write_text", "read_bytes", "exists", "mkdir",
             "safe_open", "save_file", "urlopen"}


@pytest.mark.parametrize("module", sorted(m for m, layer in LAYERS.items() if 1 <= layer <= 2))
def test_models_and_registry_touch_no_files_or_environment(module):
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
    code = ("import sys, deit, deit.cli; "
            "print(sorted(m for m in sys.modules if m.startswith(('deit.bench', 'transformers'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_public_imports_keep_working():
    import deit
    from deit.factory import create_model
    from deit.models import create_model as from_models

    assert deit.create_model is create_model is from_models
    model = from_models("deit_pico_distilled_patch4_32", num_classes=3)
    assert model.model_name == "deit_pico_distilled_patch4_32" and model.num_classes == 3
