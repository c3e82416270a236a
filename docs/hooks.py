"""MkDocs hooks: the benchmark results the docs link to are part of the site.

The docs link to files of the repository outside docs/ (`../benchmarks/results/...`), so that
the links work where the repository is read. For the built site, those files are added to it
and the links pointed at the added copies; a link to a file that does not exist still fails
`mkdocs build --strict`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

REPOSITORY = Path(__file__).resolve().parent.parent
INCLUDED = "benchmarks/results"
_LINK = re.compile(r"\]\(\.\./" + re.escape(INCLUDED) + "/")


def on_files(files: Files, *, config: MkDocsConfig) -> Files:
    for path in sorted((REPOSITORY / INCLUDED).rglob("*")):
        if path.is_file():
            uri = path.relative_to(REPOSITORY).as_posix()
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def on_page_markdown(markdown: str, *, page: Page, **kwargs: Any) -> str:
    depth = page.file.src_uri.count("/")
    return _LINK.sub("](" + "../" * depth + INCLUDED + "/", markdown)
