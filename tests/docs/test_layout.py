"""docs/layout.md matches the tree: every path it lists exists and every module of goft/ is listed; and every
repository path or goft name the README and the docs pages quote in inline code exists."""

import ast
import re
from pathlib import Path

import pytest

from tests.docs.pages import DOCS, REPO, fenced_blocks, inline_code, page_name, pages

PACKAGE = REPO / "goft"
LAYOUT = DOCS / "layout.md"
QUOTED_ROOTS = ("goft/", "recipes/", "benchmarks/", "data/", "accelerate_configs/", "docs/", "tests/", ".ci/")


def layout_entries(text: str) -> dict[str, str]:
    """The layout block's entries: {path as listed (folders end in /): its line}, paths rebuilt from the indentation
    (two spaces a level); a line listing several files (`sft.py, dpo.py`) gives each, and a line indented deeper
    than an entry continues its description."""
    (block,) = [body for _, language, body in fenced_blocks(text) if language == "text"]
    entries, folders = {}, []
    for line in block.splitlines():
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        if not stripped or indent > 2 * len(folders) + 2:
            continue
        depth = indent // 2
        folders = folders[:depth]
        names = stripped.split("  ", 1)[0].replace(",", " ").split()
        for name in names:
            entries["".join(folders) + name] = stripped
        if names and names[-1].endswith("/"):
            folders.append(names[-1])
    return entries


def test_the_layout_is_read_like_a_tree():
    text = (
        "```text\na/          top\n  b.py, c.py  two files\n  d/        a folder\n"
        "    e.py    deep\n                continued\nf.md  x\n```\n"
    )
    assert set(layout_entries(text)) == {"a/", "a/b.py", "a/c.py", "a/d/", "a/d/e.py", "f.md"}


def test_every_listed_path_exists():
    listed = layout_entries(LAYOUT.read_text())
    missing = sorted(path for path in listed if not (REPO / path).exists())
    assert not missing, f"docs/layout.md lists paths that do not exist: {missing}"


def test_every_module_is_listed():
    listed = layout_entries(LAYOUT.read_text())
    modules = sorted(str(path.relative_to(REPO)) for path in PACKAGE.rglob("*.py") if path.name != "__init__.py")
    unlisted = [module for module in modules if module not in listed]
    assert not unlisted, f"modules missing from docs/layout.md: {unlisted}"
    assert "goft/training/recipe.py" in listed and "recipes/configs/smollm2/" in listed  # the parser nests


def module_names(path: Path) -> set[str]:
    """The names a module defines or imports at its top level (for a package: its __init__.py)."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {target.id for target in targets if isinstance(target, ast.Name)}
    return names


def goft_name_problem(dotted: str) -> str | None:
    """Why `goft.a.b.name` does not name a module, package or a top-level name of one; None when it does."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        base = REPO.joinpath(*parts[:cut])
        module = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if module.is_file():
            rest = parts[cut:]
            if rest and rest[0] not in module_names(module):
                return f"{'.'.join(parts[:cut])} has no {rest[0]!r}"
            return None
    return "no such module"


def quoted_names(path: Path) -> list[tuple[int, str]]:
    """(line, what) of each inline code span that is a repository path or a goft name (calls allowed)."""
    found = []
    for line, code in inline_code(path.read_text()):
        if re.fullmatch(r"[\w./-]+", code) and code.startswith(QUOTED_ROOTS):
            found.append((line, code))
        elif re.fullmatch(r"goft(\.\w+)+(\(.*\))?", code):
            found.append((line, code.split("(", 1)[0]))
    return found


@pytest.mark.parametrize("path", pages(), ids=page_name)
def test_quoted_paths_and_names_exist(path):
    problems = []
    for line, quoted in quoted_names(path):
        if quoted.startswith("goft.") or quoted == "goft":
            problem = goft_name_problem(quoted)
            if problem:
                problems.append(f"{page_name(path)}:{line}: `{quoted}`: {problem}")
        elif not (REPO / quoted).exists():
            problems.append(f"{page_name(path)}:{line}: `{quoted}` does not exist")
    assert not problems, "the page quotes what the tree does not have:\n" + "\n".join(problems)


def test_quoted_names_are_resolved_like_python():
    assert goft_name_problem("goft.regularizers.orthogonality_penalty") is None
    assert goft_name_problem("goft.orthogonality_penalty") is None  # imported by goft/__init__.py
    assert goft_name_problem("goft.no_such_module") == "goft has no 'no_such_module'"
    assert goft_name_problem("goft.regularizers.no_such_name") == "goft.regularizers has no 'no_such_name'"
