"""The repo's layout rules (README, Code map): dependencies point one way and no module imports itself back.

model/  imports nothing of ours            utils/  imports nothing of ours
tools/  imports model/, utils/, tools/     scripts (top level) import the packages
"""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("model", "tools", "utils")
ALLOWED = {"model": set(), "utils": {"utils"}, "tools": {"model", "tools", "utils"}}


def our_imports(path: Path):
    """Module names of this repo imported by a file, at any depth (lazy imports inside functions count too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:  # `from tools.fields import data`
            names.update(f"{node.module}.{alias.name}" for alias in node.names
                         if (REPO / node.module.replace(".", "/") / f"{alias.name}.py").is_file())
    top_level = {p.stem for p in REPO.glob("*.py")}
    return {name for name in names if name.split(".")[0] in (*PACKAGES, *top_level)}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts)


def package_files():
    """Every module of the packages, sub-packages (tools/fields/, tools/layouts/) included."""
    return [path for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))]


@pytest.mark.parametrize("path", package_files(), ids=lambda p: module_name(p))
def test_imports_point_one_way(path):
    package = path.relative_to(REPO).parts[0]
    wrong = sorted(name for name in our_imports(path) if name.split(".")[0] not in ALLOWED[package])
    assert not wrong, f"{module_name(path)} imports {wrong}: {package}/ may import only {sorted(ALLOWED[package])}"


def test_no_import_cycles():
    """No module reaches itself through its imports (lazy ones included)."""
    graph = {module_name(path): {name for name in our_imports(path) if name.split(".")[0] in PACKAGES}
             for path in package_files()}

    def reaches(start, goal, seen):
        for name in graph.get(start, ()):
            if name == goal or (name not in seen and not seen.add(name) and reaches(name, goal, seen)):
                return True
        return False

    cycles = [name for name in graph if reaches(name, name, set())]
    assert not cycles, f"import cycles through {cycles}"


def test_the_cycle_check_sees_sub_packages():
    """tools/fields/ is checked too: a module there that imports another of them is an edge of the graph."""
    modules = {module_name(path) for path in package_files()}
    assert {"tools.fields.segment", "tools.fields.models"} <= modules
    assert "tools.fields.models" in our_imports(REPO / "tools" / "fields" / "segment.py")


MAX_LINES = 400  # a file past this holds more than one idea (STYLE.md): split it by concern, not by length alone
NOT_OURS = {".venv", "data", "runs", ".git"}


def source_files():
    """Every Python file of the repo (scripts, packages, tests, benchmarks), not the environment or run outputs."""
    return [path for path in sorted(REPO.rglob("*.py")) if not NOT_OURS & set(path.relative_to(REPO).parts)]


def test_no_source_file_is_over_400_lines():
    long = {str(path.relative_to(REPO)): lines for path in source_files()
            if (lines := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines: {long}; split each by the concerns it holds"


def test_the_rules_would_catch_a_wrong_way_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import numpy\nfrom tools.metrics import overlap_scores\ndef f():\n    import model.segmentation_model\n")
    assert our_imports(bad) == {"tools.metrics", "model.segmentation_model"}
