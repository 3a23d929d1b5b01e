"""Reading the README and the docs pages as the docs tests need them: their fenced blocks, inline code and links."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = REPO / "docs"
MKDOCS_YML = REPO / "mkdocs.yml"


def pages() -> list[Path]:
    """The README and every page of the site (docs/*.md; the reports under docs/results/ are written by the
    comparison, not by hand)."""
    return [README, *sorted(DOCS.glob("*.md"))]


def page_name(path: Path) -> str:
    return str(path.relative_to(REPO))


_FENCE = re.compile(r"^(```+|~~~+)([^\n`]*)\n(.*?)^\1[ \t]*$", re.M | re.S)


def fenced_blocks(text: str, languages: set[str] | None = None) -> list[tuple[int, str, str]]:
    """(line number of the block's first content line, language, body) of each fenced block, in order; only those
    whose language is in `languages` when it is given."""
    found = []
    for match in _FENCE.finditer(text):
        language = match.group(2).strip().split(" ")[0].lower()
        if languages is None or language in languages:
            found.append((text.count("\n", 0, match.start(3)) + 1, language, match.group(3)))
    return found


def prose(text: str) -> str:
    """`text` with its fenced blocks blanked out (line numbers kept)."""
    return _FENCE.sub(lambda match: "\n" * match.group(0).count("\n"), text)


def inline_code(text: str) -> list[tuple[int, str]]:
    """(line number, content) of each inline code span outside fenced blocks, whitespace runs made single spaces.
    Double-backtick spans (which quote text holding backticks, such as error messages) are left out."""
    body = prose(text)
    body = re.sub(r"``.+?``", lambda match: re.sub(r"[^\n]", " ", match.group(0)), body, flags=re.S)
    return [
        (body.count("\n", 0, match.start()) + 1, " ".join(match.group(1).split()))
        for match in re.finditer(r"`([^`]+)`", body)
    ]


def markdown_links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every Markdown link and image outside fenced blocks and inline code."""
    body = prose(text)
    body = re.sub(r"`[^`\n]*`", lambda match: " " * len(match.group(0)), body)
    return [
        (body.count("\n", 0, match.start()) + 1, match.group(1).split(" ")[0])
        for match in re.finditer(r"\]\(([^)\s]+(?: \"[^\"]*\")?)\)", body)
    ]
