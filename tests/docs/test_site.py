"""The docs site builds with `mkdocs build --strict`, and the strict build fails on a broken link or anchor."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.docs.pages import DOCS, MKDOCS_YML, REPO


def build(config: Path, site_dir: Path) -> subprocess.CompletedProcess:
    """`mkdocs build --strict` of `config`, from the repository root (as the docs are built by hand and in CI)."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(config),
            "--site-dir",
            str(site_dir),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def nav_pages(config: dict) -> list[str]:
    pages = []
    for entry in config["nav"]:
        pages += list(entry.values()) if isinstance(entry, dict) else [entry]
    return pages


def test_the_nav_lists_every_page():
    config = yaml.safe_load(MKDOCS_YML.read_text())
    assert sorted(nav_pages(config)) == sorted(path.name for path in DOCS.glob("*.md"))
    assert nav_pages(config)[0] == "index.md"


@pytest.mark.slow  # starts mkdocs
def test_the_site_builds_strictly(tmp_path):
    result = build(MKDOCS_YML, tmp_path / "site")
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout[-3000:]}{result.stderr[-6000:]}"
    changelog = (tmp_path / "site" / "changelog" / "index.html").read_text()
    assert "Unreleased" in changelog, "the changelog page does not include CHANGELOG.md"
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert 'id="goft.GivensConfig"' in api, "the API reference rendered no GivensConfig"


@pytest.mark.slow  # starts mkdocs
@pytest.mark.parametrize(
    "broken",
    ["[a page that is not there](no-such-page.md)", "[a heading that is not there](evaluation.md#no-such-heading)"],
    ids=["page", "anchor"],
)
def test_a_broken_link_fails_the_strict_build(tmp_path, broken):
    """A copy of the docs with one broken link, built with the repository's configuration pointed at it: the strict
    build fails and names the link, so the build test above would catch it."""
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs)
    with (docs / "recipes.md").open("a") as page:
        page.write(f"\nSee {broken}.\n")
    config = yaml.safe_load(MKDOCS_YML.read_text())
    config["docs_dir"] = str(docs)
    for plugin in config["plugins"]:  # mkdocstrings reads goft from the repository, not from beside the copy
        if isinstance(plugin, dict) and "mkdocstrings" in plugin:
            plugin["mkdocstrings"]["handlers"]["python"]["paths"] = [str(REPO)]
    tmp_config = tmp_path / "mkdocs.yml"
    tmp_config.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    result = build(tmp_config, tmp_path / "site")
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"the strict build passed despite {broken}:\n{output[-3000:]}"
    target = broken.split("](", 1)[1].rstrip(")")
    assert target.split("#")[-1] in output, f"the build failed, but not on {target}:\n{output[-3000:]}"
