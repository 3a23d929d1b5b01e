"""The shape of the code: the core knows nothing of the training glue, the training checks nothing of the argument
parser, test modules share helpers through `tests/support` only, and the package works installed from a wheel."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "goft"
CORE = sorted([*PACKAGE.glob("*.py"), *(PACKAGE / "sorsa").glob("*.py")])  # outside training/ and evaluation/


def imported_modules(path: Path, source: str | None = None) -> set[str]:
    """Every module `path` imports (its text, or `source`), as absolute dotted names: relative imports resolved
    against its package, and `from package import name` counted as importing `package.name` too."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}
    return found


def test_imports_are_read_relative_and_absolute():
    source = "from ..training import cli\nfrom .layer import X\nimport goft.evaluation.report\nfrom . import y\n"
    found = imported_modules(PACKAGE / "sorsa" / "example.py", source)
    assert {"goft.training.cli", "goft.sorsa.layer", "goft.evaluation.report", "goft.sorsa.y"} <= found
    assert "goft.training.cli" in imported_modules(PACKAGE / "training" / "example.py", "from .cli import run\n")


@pytest.mark.parametrize("path", CORE, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_the_core_does_not_import_the_training_glue(path):
    glue = sorted(m for m in imported_modules(path) if m.startswith(("goft.training", "goft.evaluation")))
    assert not glue, f"{path.relative_to(REPO)} imports {glue}"


@pytest.mark.parametrize("path", sorted((PACKAGE / "training").glob("*.py")), ids=lambda path: path.name)
def test_the_training_glue_does_not_depend_on_the_argument_parser(path):
    if path.name == "cli.py":
        return
    assert "goft.training.cli" not in imported_modules(path), f"{path.name} imports the argument parser"


@pytest.mark.parametrize("path", sorted(REPO.glob("tests/test_*.py")), ids=lambda path: path.name)
def test_test_modules_share_helpers_through_support_only(path):
    others = sorted(m for m in imported_modules(path) if m.startswith("tests.test_"))
    assert not others, f"{path.name} imports from other test modules: {others}; move the helper to tests/support"


def test_package_code_names_no_repository_folder():
    """A package installed from a wheel has no `recipes/` or `data/` beside it: such paths come from the scripts."""
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and not node.value.count("\n"):
                text = node.value
                assert not text.startswith(("recipes/", "data/", "accelerate_configs/")), (
                    f"{path.relative_to(REPO)} names the repository path {text!r}"
                )


@pytest.mark.slow
def test_the_package_works_installed_from_a_wheel(tmp_path):
    """Built as a wheel and installed into a bare folder (not editable), goft imports from another working
    directory, registers its methods, and ships its evaluation sets."""
    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheel_dir),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheel_dir.glob("goft-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    probe = (
        "import goft, goft.training.recipe, goft.training.merging, goft.evaluation.compare\n"
        "from peft import PeftType\n"
        "from goft.evaluation import assets\n"
        f"assert goft.__file__.startswith({str(target)!r}), goft.__file__\n"
        "assert 'GIVENS' in PeftType.__members__ and 'SORSA' in PeftType.__members__\n"
        "assert all(p.is_file() for p in (assets.GENERAL_TEXT, assets.RETENTION_QUESTIONS,"
        " assets.OPEN_INSTRUCTIONS, assets.REPLAY_PROMPTS, assets.REPLAY_QUESTIONS))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow  # it starts ruff
@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_the_tree_passes_ruff(command):
    """pyproject's [tool.ruff] (lint rules, formatting, line length 120) holds for every file."""
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "--no-cache", str(REPO)], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0, f"ruff {' '.join(command)}:\n{result.stdout[-4000:]}{result.stderr[-2000:]}"


def readme_layout() -> dict[str, str]:
    """The README's repository layout: {path as listed (folders end in /): its description}, paths rebuilt from
    the indentation (two spaces a level); a line listing several files (`sft.py, dpo.py`) gives each."""
    text = (REPO / "README.md").read_text()
    block = text.split("## Repository layout", 1)[1].split("```", 2)[1]
    entries, folders = {}, []
    for line in block.splitlines()[1:]:
        stripped = line.lstrip()
        if not stripped or len(line) - len(stripped) > 2 * len(folders) + 2:
            continue  # a continued description
        depth = (len(line) - len(stripped)) // 2
        folders = folders[:depth]
        names = stripped.split("  ", 1)[0].replace(",", " ").split()
        for name in names:
            entries["".join(folders) + name] = stripped
        if names and names[-1].endswith("/"):
            folders.append(names[-1])
    return entries


def test_the_readme_layout_matches_the_tree():
    listed = readme_layout()
    missing = sorted(path for path in listed if not (REPO / path).exists())
    assert not missing, f"the README's layout lists paths that do not exist: {missing}"
    modules = sorted(str(path.relative_to(REPO)) for path in PACKAGE.rglob("*.py") if path.name != "__init__.py")
    unlisted = [module for module in modules if module not in listed]
    assert not unlisted, f"modules missing from the README's layout: {unlisted}"
    assert "goft/training/recipe.py" in listed and "recipes/configs/smollm2/" in listed  # the parser nests
