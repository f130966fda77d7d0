"""The repository's structure is what docs/architecture.md says: its module tables name every module, the
packages import one another without cycles, and no product module imports the test helpers."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ouvae", "sweeps", "analysis")
# the helpers only tests and benchmarks import, installed inside the packages they serve (docs/architecture.md)
TESTING_SUBPACKAGES = ("sweeps/testing", "analysis/testing")


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


def _imports(path: Path, package: str) -> set[str]:
    """Modules of the repository's packages that `path` imports when it is imported (top-level statements)."""
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.level:  # from .x import y inside `package`
                out.add(f"{package}.{node.module}")
            elif node.module in PACKAGES:
                out.update(f"{node.module}.{a.name}" for a in node.names)
            elif node.module.split(".")[0] in PACKAGES:
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] in PACKAGES)
    return out


def test_the_packages_import_each_other_without_cycles():
    graph = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            graph[module] = {m for m in _imports(path, package) if m != module}
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        if state.get(module) == "done" or module not in graph:
            return
        assert state.get(module) != "open", "import cycle: " + " -> ".join(trail + [module])
        state[module] = "open"
        for dep in sorted(graph[module]):
            visit(dep, trail + [module])
        state[module] = "done"

    for module in sorted(graph):
        visit(module, [])
    assert "ouvae.population" in graph and graph["sweeps.results"] >= {"sweeps.storage", "sweeps.trainable"}


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
