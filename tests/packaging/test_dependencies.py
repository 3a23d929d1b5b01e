"""pyproject.toml declares what goft imports: every third-party module any of its files imports (at module level or
inside a function) comes from a distribution in `dependencies` or an extra, and what `import goft` loads from a
distribution in `dependencies` itself."""

import ast
import json
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.project import PACKAGE, PROJECT, REPO

OPTIONAL_IMPORT_GUARDS = {"ImportError", "ModuleNotFoundError", "Exception"}


def requirement_names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(spec).name) for spec in requirements}


CORE = requirement_names(PROJECT["dependencies"])
DECLARED = CORE.union(*map(requirement_names, PROJECT.get("optional-dependencies", {}).values()))


def third_party_imports(source: str, module_level: bool = False) -> set[str]:
    """The top-level names of the third-party modules `source` imports; with `module_level`, only the imports that
    run when it is imported (none inside a function, an `if TYPE_CHECKING:` block, or a try guarded by ImportError)."""
    found, stack = set(), [ast.parse(source)]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            found.add(node.module)
        if module_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if module_level and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        if module_level and isinstance(node, ast.Try):
            guards = {ast.unparse(handler.type) for handler in node.handlers if handler.type is not None}
            if guards & OPTIONAL_IMPORT_GUARDS:
                stack.extend([*node.handlers, *node.orelse, *node.finalbody])
                continue
        stack.extend(ast.iter_child_nodes(node))
    tops = {name.split(".")[0] for name in found}
    return {name for name in tops if name not in sys.stdlib_module_names and name != "goft"}


def undeclared(sources: dict[str, str], declared: set[str], module_level: bool = False) -> dict[str, str]:
    """{module: "distribution (imported by files…)"} for each third-party module the sources ({file: text}) import
    whose distribution is not among `declared` (canonical names); a module not installed stands for itself."""
    distributions = packages_distributions()
    importers: dict[str, list[str]] = {}
    for file, source in sources.items():
        for module in third_party_imports(source, module_level):
            importers.setdefault(module, []).append(file)
    missing = {}
    for module, files in sorted(importers.items()):
        names = distributions.get(module) or [module]
        if not declared & {canonicalize_name(name) for name in names}:
            missing[module] = f"{' or '.join(sorted(set(names)))} (imported by {', '.join(sorted(files))})"
    return missing


def package_sources(paths) -> dict[str, str]:
    return {str(Path(path).relative_to(REPO)): Path(path).read_text() for path in paths}


def test_the_helper_reports_an_undeclared_import():
    source = (
        "import os\nimport torch.nn\nfrom . import sibling\nfrom goft.tuners import x\n"
        "import numpy_not_declared_xyz\n\n"
        "def later():\n    import yaml\n"
        "try:\n    import optional_thing_xyz\nexcept ImportError:\n    pass\n"
    )
    missing = undeclared({"goft/example.py": source}, {"torch"})
    assert set(missing) == {"numpy_not_declared_xyz", "yaml", "optional_thing_xyz"}
    assert missing["yaml"].startswith("PyYAML (imported by goft/example.py")
    assert set(undeclared({"goft/example.py": source}, {"torch", "pyyaml"})) == {
        "numpy_not_declared_xyz",
        "optional_thing_xyz",
    }
    # what runs at import: neither the function's import nor the guarded one
    assert set(undeclared({"goft/example.py": source}, {"torch"}, module_level=True)) == {"numpy_not_declared_xyz"}


def test_pyproject_has_the_recipes_extra():
    assert {"recipes", "kernels"} <= set(PROJECT["optional-dependencies"])
    assert {"torch", "transformers", "peft"} <= CORE


def test_every_imported_distribution_is_declared():
    sources = package_sources(sorted(PACKAGE.rglob("*.py")))
    assert sources, f"no Python files under {PACKAGE}"
    missing = undeclared(sources, DECLARED)
    assert not missing, "Not declared in pyproject.toml (dependencies or an extra):\n" + "\n".join(
        f"  {module}: {where}" for module, where in missing.items()
    )


@pytest.mark.slow  # it starts Python
def test_what_import_goft_loads_is_in_the_core_dependencies():
    """The goft modules `import goft` loads import, as they load, only distributions that `dependencies` names:
    `pip install goft` without extras gives a package that imports."""
    probe = """
import json, sys, goft
loaded = list(sys.modules.items())
print(json.dumps({
    "third_party": sorted({name.split(".")[0] for name, _ in loaded} - set(sys.stdlib_module_names)),
    "files": sorted(m.__file__ for name, m in loaded if name.split(".")[0] == "goft" and getattr(m, "__file__", None)),
}))
"""
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    files = [Path(file) for file in loaded["files"]]
    assert files and all(file.is_relative_to(PACKAGE) for file in files), files
    core = package_sources(files)
    imported = set().union(*(third_party_imports(source, module_level=True) for source in core.values()))
    assert imported <= set(loaded["third_party"]), imported - set(loaded["third_party"])
    missing = undeclared(core, CORE, module_level=True)
    assert not missing, "`import goft` needs these, which only an extra (or nothing) declares:\n" + "\n".join(
        f"  {module}: {where}" for module, where in missing.items()
    )
