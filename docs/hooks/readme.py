"""MkDocs hook: the README is the site's home page and CHANGELOG.md its changelog page.

Both files live at the top of the repository, where GitHub and PyPI show them; copying them
into docs/ would say everything twice. Links written for the repository (`docs/install.md`)
are rewritten for the site (`install.md`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
_REPO_LINK_RE = re.compile(r"\]\((?:docs/)([^)]*)\)")


def site_text(text: str) -> str:
    """A top-level markdown file's text with its links into docs/ made relative to the site."""
    text = _REPO_LINK_RE.sub(r"](\1)", text)
    return text.replace("](CHANGELOG.md)", "](changelog.md)")


def on_files(files: Files, config: Any) -> Files:
    for source, name in (("README.md", "index.md"), ("CHANGELOG.md", "changelog.md")):
        text = site_text((ROOT / source).read_text(encoding="utf-8"))
        files.append(File.generated(config, name, content=text))
    return files
