"""The documentation site builds as CI builds it: `mkdocs build --strict`, every warning an
error (a broken link, a docstring mkdocstrings cannot read, a page missing from the nav)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

import llmstreams
from tests.support import ROOT

DOCS = ROOT / "docs"


def nav_pages() -> list[str]:
    """The pages mkdocs.yml's nav lists, sections included."""
    config = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=yaml.BaseLoader)
    entries = list(config["nav"])
    pages: list[str] = []
    while entries:
        (target,) = entries.pop(0).values()
        if isinstance(target, list):
            entries[:0] = target
        else:
            pages.append(target)
    return pages


def test_the_site_builds_with_warnings_as_errors(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    reference = (site / "reference" / "index.html").read_text(encoding="utf-8")
    # A docstring reached the page, not only a heading.
    assert "Four separate limits, in seconds" in reference
    for page in nav_pages():
        built = "index.html" if page == "index.md" else page.removesuffix(".md") + "/index.html"
        assert (site / built).is_file(), page


def test_every_page_is_in_the_nav() -> None:
    pages = sorted(path.name for path in DOCS.glob("*.md"))
    assert sorted(nav_pages()) == pages


def test_the_reference_documents_every_public_name() -> None:
    documented = set(re.findall(r"^::: llmstreams\.(\w+)$", (DOCS / "reference.md").read_text(), re.M))
    assert documented == set(llmstreams.__all__)


def test_the_changelog_has_this_version_and_what_is_unreleased() -> None:
    releases = re.findall(r"^## \[([^\]]+)\]", (ROOT / "CHANGELOG.md").read_text(encoding="utf-8"), re.M)
    assert releases[:2] == ["Unreleased", llmstreams.__version__]
