"""The shape of the code: each subpackage imports only the floors below it, no module imports itself round a circle,
nothing imports the argument parser, long modules say why, and test modules share helpers through `tests/support`."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "goft"
MODULE_FILES = {
    ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): path
    for path in sorted(PACKAGE.rglob("*.py"))
}

# Floors, bottom first: a module may import its own floor and those below, never one above. `goft` is the package's
# `__init__` (the public API); the names in one floor may import each other.
FLOORS = (
    ("goft.rotation",),
    ("goft.errors", "goft.registration"),
    ("goft.tuners",),
    ("goft.methods", "goft.regularizers", "goft"),
    ("goft.io",),
    ("goft.data",),
    ("goft.evaluation",),
    ("goft.training.parallel",),
    ("goft.training.runs",),
    ("goft.training.publish", "goft.training.trainers"),
    ("goft.training.arguments",),
    ("goft.training",),  # recipe, prepare, adapters: what a stage does, on top of the training concerns
    ("goft.comparison",),
)
LONG_MODULE_LINES = 350
LONG_MODULE_REASON = "Why this module is long:"


def import_statements(path: Path, source: str | None = None) -> list[tuple[str, list[str]]]:
    """(module, names) for each import in `path` (its text, or `source`): `import a.b` is ("a.b", []), and relative
    modules are resolved against the file's package."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            found.append((".".join(part for part in (base, node.module) if part), [a.name for a in node.names]))
    return found


def imported_modules(path: Path, source: str | None = None) -> set[str]:
    """Every module `path` imports, as absolute dotted names; `from package import name` counts as importing
    `package.name` too."""
    return {
        name
        for module, names in import_statements(path, source)
        for name in (module, *(f"{module}.{n}" for n in names))
    }


def goft_imports(path: Path, source: str | None = None) -> set[str]:
    """The modules of goft that `path` imports: `from package import name` is the module `package.name` when there
    is one, else `package`."""
    found = set()
    for module, names in import_statements(path, source):
        found |= {f"{module}.{n}" if f"{module}.{n}" in MODULE_FILES else module for n in names} or {module}
    return found & set(MODULE_FILES)


def floor_of(module: str) -> int:
    best = None
    for level, names in enumerate(FLOORS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (best is None or len(name) > len(best[1])):
                best = (level, name)
    assert best is not None, f"{module} lies on no floor; add its subpackage to FLOORS"
    return best[0]


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), or of one that imports itself."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_imports_are_read_relative_and_absolute():
    source = "from ..training import cli\nfrom .layer import X\nimport goft.evaluation.report\nfrom . import y\n"
    found = imported_modules(PACKAGE / "tuners" / "sorsa" / "example.py", source)
    assert {"goft.tuners.training.cli", "goft.tuners.sorsa.layer", "goft.evaluation.report"} <= found
    assert "goft.tuners.sorsa.y" in found


def test_the_floors_cover_the_package_in_order():
    assert floor_of("goft.rotation.givens") < floor_of("goft.tuners.givens.layer") < floor_of("goft.io.outputs")
    assert floor_of("goft.io.outputs") < floor_of("goft.data.rows") < floor_of("goft.evaluation.tasks")
    assert floor_of("goft.evaluation.tasks") < floor_of("goft.training.recipe") < floor_of("goft.comparison")
    assert floor_of("goft") == floor_of("goft.methods")  # the package's `__init__` is its own entry, not a prefix
    assert floor_of("goft.training.parallel.fsdp") < floor_of("goft.training.runs.checkpoints")
    assert floor_of("goft.training.trainers.mixin") < floor_of("goft.training.arguments.cli")
    assert floor_of("goft.training.arguments.cli") < floor_of("goft.training.prepare")


@pytest.mark.parametrize("module", sorted(MODULE_FILES), ids=str)
def test_no_module_imports_a_floor_above_its_own(module):
    above = sorted(other for other in goft_imports(MODULE_FILES[module]) if floor_of(other) > floor_of(module))
    assert not above, f"{module} imports {above}, which lie above it"


def test_a_floor_violation_is_seen():
    """The floor test bites: evaluation importing training is caught."""
    source = "from goft.training.runs import checkpoints\n"
    path = PACKAGE / "evaluation" / "example.py"
    above = [m for m in goft_imports(path, source) if floor_of(m) > floor_of("goft.evaluation.example")]
    assert above == ["goft.training.runs.checkpoints"]


def test_there_is_no_import_circle_in_the_package():
    graph = {module: goft_imports(path) - {module} for module, path in MODULE_FILES.items()}
    found = circles(graph)
    assert not found, f"import circles: {found}"


def test_a_circle_is_seen():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("module", sorted(MODULE_FILES), ids=str)
def test_nothing_in_the_package_imports_the_argument_parser(module):
    if module == "goft.training.arguments.cli":
        return
    assert "goft.training.arguments.cli" not in goft_imports(MODULE_FILES[module]), f"{module} imports the parser"


SCRIPT_FILES = sorted(p for folder in ("recipes", "benchmarks", "data") for p in (REPO / folder).rglob("*.py"))


@pytest.mark.parametrize("path", [*MODULE_FILES.values(), *SCRIPT_FILES], ids=lambda path: str(path.relative_to(REPO)))
def test_a_long_module_says_why_at_its_top(path):
    lines = len(path.read_text().splitlines())
    if lines <= LONG_MODULE_LINES:
        return
    docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert LONG_MODULE_REASON in docstring, (
        f"{path.relative_to(REPO)} has {lines} lines: split it by concern, or say in its docstring "
        f"'{LONG_MODULE_REASON} …'"
    )


@pytest.mark.parametrize("package", sorted(p for p in PACKAGE.rglob("__init__.py")), ids=lambda p: str(p.parent))
def test_every_subpackage_says_what_lives_there(package):
    assert ast.get_docstring(ast.parse(package.read_text())), f"{package.relative_to(REPO)} has no docstring"


@pytest.mark.parametrize("path", sorted(REPO.glob("tests/**/test_*.py")), ids=lambda path: str(path.relative_to(REPO)))
def test_test_modules_share_helpers_through_support_only(path):
    others = sorted(m for m in imported_modules(path) if m.startswith("tests.") and ".test_" in m)
    assert not others, f"{path.name} imports from other test modules: {others}; move the helper to tests/support"


def test_the_tests_follow_the_package_folders():
    """A test folder is named after a concern of the package (or the repository's scripts, benchmarks, docs)."""
    concerns = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*") if p.is_dir() and p.name != "__pycache__"}
    concerns |= {"recipes", "benchmarks", "docs", "packaging"}
    helpers = {"support", "scripts", "fault_injection"}
    for folder in (REPO / "tests").rglob("*"):
        if (
            folder.is_dir()
            and folder.name != "__pycache__"
            and folder.relative_to(REPO / "tests").parts[0] not in helpers
        ):
            assert str(folder.relative_to(REPO / "tests")) in concerns, f"tests/{folder.name} is no concern of goft's"


def test_argument_groups_live_in_the_arguments_modules():
    """One home per argument group: every `...Arguments` class of the package or a recipe script is defined in its
    concern's `arguments` module (`goft/training/arguments/` for the training recipes and merging). The
    benchmarks keep their own."""
    for path in [*MODULE_FILES.values(), *sorted((REPO / "recipes").glob("*.py"))]:
        classes = [n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef)]
        homeless = [name for name in classes if name.endswith("Arguments")]
        at_home = path.stem == "arguments" or path.parent.name == "arguments"
        assert at_home or not homeless, f"{path.relative_to(REPO)} defines {homeless}: move them to an arguments module"


def test_package_code_names_no_repository_folder():
    """A package installed from a wheel has no `recipes/` or `data/` beside it: such paths come from the scripts."""
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and not node.value.count("\n"):
                text = node.value
                assert not text.startswith(("recipes/", "data/", "accelerate_configs/")), (
                    f"{path.relative_to(REPO)} names the repository path {text!r}"
                )


@pytest.mark.slow  # it starts ruff
@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_the_tree_passes_ruff(command):
    """pyproject's [tool.ruff] (lint rules, formatting, line length 120) holds for every file."""
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "--no-cache", str(REPO)], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0, f"ruff {' '.join(command)}:\n{result.stdout[-4000:]}{result.stderr[-2000:]}"
