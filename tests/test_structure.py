"""The repository's structure is what docs/architecture.md says: its module tables name every module, the packages
import one another without cycles, no product module imports the test helpers, and ``sweeps/`` imports in the order of the document's layer list.

Every import statement counts, also those inside functions: a deferred import still runs, so a circle through one
is still a circle (it only fails later, and only on the path that reaches it). An import between the project's own
modules is deferred only with its reason on its line (``# deferred: ...``), so that hiding a dependency is a
decision someone wrote down. Imports under ``if TYPE_CHECKING:`` never run and do not count.
"""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ouvae", "sweeps", "analysis")
# the helpers only tests and benchmarks import, installed inside the packages they serve (docs/architecture.md)
TESTING_SUBPACKAGES = ("sweeps/testing", "analysis/testing")
DEFERRED_REASON = re.compile(r"#\s*deferred:\s*\S.{8,}")


def _table_names(package: str) -> set[str]:
    """Modules (``x.py``) and sub-packages (``x/``) named in the first column of the package's table."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split(f"**`{package}/`**", 1)[1].split("\n**`", 1)[0]
    names = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([\w/]+(?:\.py|/))`", line.split(" | ", 1)[0]))
    return names


@pytest.mark.parametrize("package", PACKAGES + TESTING_SUBPACKAGES)
def test_the_architecture_table_names_every_module_and_no_other(package):
    folder = ROOT / package
    actual = {p.name for p in folder.glob("*.py") if p.name != "__init__.py"}
    actual |= {f"{p.name}/" for p in folder.iterdir() if (p / "__init__.py").is_file()}
    assert _table_names(package) == actual, "update docs/architecture.md, section 2"


# ----- every import of the project's modules -------------------------------------------------------------------
def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _project_modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.Module) -> list[tuple[ast.stmt, bool]]:
    """(import statement, deferred: inside a function) for every import that can run, at any depth."""
    found: list[tuple[ast.stmt, bool]] = []

    def visit(node: ast.AST, deferred: bool) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append((node, deferred))
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:  # the body runs only for a type checker
                visit(child, deferred)
            return
        inner = deferred or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, False)
    return found


def _targets(node: ast.stmt, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The project modules an import statement of `module` loads (its names resolved to modules where they are
    modules, else to the module they come from); empty for anything outside the project."""
    if isinstance(node, ast.Import):
        candidates = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = module.split(".")
            anchor = parts if is_package else parts[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        candidates = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    out = set()
    for name in candidates:
        parts = name.split(".")
        while parts and ".".join(parts) not in known:  # `import a.b.c` of a name inside a module: its module
            parts.pop()
        if parts:
            out.add(".".join(parts))
    return out


def _imports(source: str, module: str, is_package: bool, known: set[str]) -> dict[str, list[tuple[int, bool]]]:
    """Project module -> [(line, deferred), ...] of every import of it in `source` (module `module`)."""
    out: dict[str, list[tuple[int, bool]]] = {}
    for node, deferred in _import_nodes(ast.parse(source)):
        for target in _targets(node, module, is_package, known) - {module}:
            out.setdefault(target, []).append((node.lineno, deferred))
    return out


def _graph() -> dict[str, dict[str, list[tuple[int, bool]]]]:
    modules = _project_modules()
    known = set(modules)
    return {m: _imports(p.read_text(), m, p.name == "__init__.py", known) for m, p in modules.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (module -> the modules it imports), as [a, b, ..., a]; None if there is none."""
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> list[str] | None:
        if state.get(module) == "open":
            return trail[trail.index(module):] + [module]
        if state.get(module) == "done" or module not in graph:
            return None
        state[module] = "open"
        for dep in sorted(graph[module]):
            cycle = visit(dep, trail + [module])
            if cycle:
                return cycle
        state[module] = "done"
        return None

    for module in sorted(graph):
        cycle = visit(module, [])
        if cycle:
            return cycle
    return None


def test_the_import_walk_sees_imports_inside_functions_and_skips_type_checking_blocks():
    source = ("from typing import TYPE_CHECKING\nimport sweeps.cli\nif TYPE_CHECKING:\n    from sweeps import plan\n"
              "def f():\n    from sweeps.storage import join  # deferred: a reason\n    from . import errors\n")
    known = {"sweeps", "sweeps.cli", "sweeps.plan", "sweeps.storage", "sweeps.errors", "sweeps.x"}
    assert _imports(source, "sweeps.x", False, known) == {
        "sweeps.cli": [(2, False)], "sweeps.storage": [(6, True)], "sweeps.errors": [(7, True)]}
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_packages_import_each_other_without_cycles_counting_imports_inside_functions():
    graph = _graph()
    cycle = _find_cycle({m: set(deps) for m, deps in graph.items()})
    assert cycle is None, "import cycle (imports inside functions count): " + " -> ".join(cycle or [])
    assert "ouvae.population" in graph and set(graph["sweeps.results"]) >= {"sweeps.storage", "sweeps.protocol"}
    assert any(deferred for _, deferred in graph["analysis.__main__"]["analysis.report"])  # the walk sees functions


def test_a_deferred_import_of_a_project_module_says_why_on_its_line():
    modules, missing = _project_modules(), []
    for module, deps in _graph().items():
        lines = modules[module].read_text().splitlines()
        missing.extend(f"{modules[module].relative_to(ROOT)}:{line} ({target})" for target, places in deps.items()
                       for line, deferred in places if deferred and not _has_reason(lines, line - 1))
    assert not missing, ("deferred imports of the project's own modules without '# deferred: <why>' on the line or "
                         "the one above (import at the top instead, or say why): " + ", ".join(missing))


def _has_reason(lines: list[str], index: int) -> bool:
    """The import at lines[index] carries a reason: on its own line(s), or in a comment above it (a group of
    imports shares the comment above the group)."""
    if DEFERRED_REASON.search(lines[index]):
        return True
    above = index - 1
    while above >= 0 and lines[above].strip().startswith(("from ", "import ")):
        if DEFERRED_REASON.search(lines[above]):
            return True
        above -= 1
    return above >= 0 and lines[above].strip().startswith("#") and bool(DEFERRED_REASON.search(lines[above]))


# ----- the layers of sweeps/ (docs/architecture.md, section 2) -------------------------------------------------
def _sweeps_layers() -> dict[str, int]:
    """Entry of the layer list (a module ``x``, or a sub-package ``x/``) -> its layer number."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("Imports inside `sweeps/` go one way", 1)[1]
    listing = section.split("\n\n", 2)[1]  # the paragraph after the sentence: "1. `a`, `b`; 2. `c`; ..."
    assert listing.startswith("1. "), "docs/architecture.md, section 2: the layer list of sweeps/ is missing"
    layers = {}
    for number, names in re.findall(r"(?:^|;\s*)(\d+)\.\s+(.*?)(?=;\s*\d+\.\s|\.?\s*$)", listing, flags=re.S):
        for name in re.findall(r"`([\w/]+)`", names):
            assert name not in layers, f"docs/architecture.md, section 2: {name} is in two layers"
            layers[name] = int(number)
    return layers


def _entry(module: str) -> str:
    """The layer-list entry of a module of sweeps/: ``x`` for sweeps/x.py, ``x/`` for anything in sweeps/x/."""
    parts = module.split(".")[1:]
    return f"{parts[0]}/" if len(parts) > 1 or (ROOT / "sweeps" / parts[0]).is_dir() else parts[0]


def test_the_layer_list_names_every_module_of_sweeps():
    layers = _sweeps_layers()
    entries = {_entry(m) for m in _project_modules() if m.startswith("sweeps.")}
    assert set(layers) == entries, "update the layer list in docs/architecture.md, section 2"


def test_sweeps_imports_only_from_earlier_layers_counting_imports_inside_functions():
    layers = _sweeps_layers()
    wrong = []
    for module, deps in _graph().items():
        if not module.startswith("sweeps."):
            continue
        for target, places in deps.items():
            if not target.startswith("sweeps.") or _entry(target) == _entry(module):
                continue
            if layers.get(_entry(target), 0) >= layers.get(_entry(module), 0):
                wrong.extend(f"{module}:{line} imports {target} (layer {layers.get(_entry(target))} is not before "
                             f"{layers.get(_entry(module))})" for line, _ in places)
    assert not wrong, "imports against the layers of docs/architecture.md, section 2: " + "; ".join(wrong)


# ----- what the driver's modules load ------------------------------------------------------------------------------
@pytest.mark.parametrize("module,absent", [("sweeps.protocol", ("torch", "ray")), ("sweeps.results", ("torch",)),
                                           ("sweeps.errors", ("torch", "ray"))])
def test_the_driver_reads_trials_without_loading_torch(module, absent):
    """The results sink and the trial protocol run on the driver: they read dicts, and must not pull in the
    worker's torch (seconds of import and hundreds of MB on every driver)."""
    code = f"import sys, {module}; print(' '.join(m for m in {absent!r} if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)  # a hang, not a slow import on a loaded machine
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"importing {module} loads {done.stdout.strip()}"


def _imported_names(path: Path) -> set[str]:
    """Absolute names of every module `path` imports, deferred imports inside functions included; ``from a import
    b`` counts as both ``a`` and ``a.b`` (b may be a module)."""
    package = ".".join(path.relative_to(ROOT).parent.parts)
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def test_no_product_module_imports_the_test_helpers():
    helpers = tuple(sub.replace("/", ".") for sub in TESTING_SUBPACKAGES)
    product = [path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
               if not any(path.is_relative_to(ROOT / sub) for sub in TESTING_SUBPACKAGES)]
    offending = {str(path.relative_to(ROOT)): sorted(name for name in _imported_names(path)
                                                     if any(name == h or name.startswith(f"{h}.") for h in helpers))
                 for path in product}
    assert "sweeps/trainable.py" in offending and "analysis/schema.py" in offending  # the walk sees the product
    assert {path: names for path, names in offending.items() if names} == {}, \
        "the test helpers (sweeps.testing, analysis.testing) are for tests and benchmarks only"
