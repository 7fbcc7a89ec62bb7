"""The documentation: the README stays a front door, the site builds with no broken link or
anchor, and neither names a file the repository does not have."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

README_MAX_BYTES = 12 * 1024
DOCS = sorted((ROOT / "docs").glob("*.md"))
# Files the docs show as examples of your own, not files of this repository.
EXAMPLE_FILES = {
    "config.py", "lines.txt", "prometheus.yml", "handlers/clock.py",
    "meshbot-hello/pyproject.toml", "meshbot-hello/meshbot_hello.py",
}
_PATH_RE = re.compile(r"`([A-Za-z0-9_.][A-Za-z0-9_./-]*\.(?:py|md|toml|json|service|txt|yml|db))`")
_FENCE_RE = re.compile(r"```.*?```", re.S)


def test_the_readme_fits_two_screens_and_starts_with_demo_and_test():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.encode()) <= README_MAX_BYTES, f"README.md is {len(text.encode())} bytes"
    first_block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    assert [line.split()[:2] for line in first_block.splitlines()[:2]] == [["make", "demo"], ["make", "test"]]


def repository_files() -> tuple[set[str], set[str]]:
    """The repository's paths and its files' bare names (a page may say `budget.py`)."""
    paths = {p.relative_to(ROOT).as_posix() for p in ROOT.glob("*") if p.is_file()}
    for folder in ("meshbot", "handlers", "bench", "tests", "docs", "contrib", ".ci"):
        paths |= {p.relative_to(ROOT).as_posix() for p in (ROOT / folder).rglob("*") if p.is_file()}
    return paths, {path.rsplit("/", 1)[-1] for path in paths}


@pytest.mark.parametrize("page", [ROOT / "README.md", *DOCS], ids=lambda p: p.name)
def test_no_page_names_a_file_the_repository_lacks(page: Path):
    prose = _FENCE_RE.sub("", page.read_text(encoding="utf-8"))
    paths, names = repository_files()
    missing = sorted(
        name for name in set(_PATH_RE.findall(prose))
        if name not in EXAMPLE_FILES and name not in paths and not ("/" not in name and name in names)
        # an installed file or a variable's folder: `./state/meshbot.db`, `PREFIX/config.py`
        and not name.startswith("./") and not re.match(r"^[A-Z_]+/", name)
    )
    assert missing == []
    assert "<this repository" not in prose and "a dozen keys" not in prose


def test_the_site_builds_strictly(tmp_path):
    try:
        import mkdocs  # noqa: F401
        import material  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"the docs build needs mkdocs and mkdocs-material (pip install -e '.[test]'): {exc}")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr
    home = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert "make demo" in home and 'href="install/' in home  # the README, its links made the site's
    assert (tmp_path / "site" / "changelog" / "index.html").exists()
    # Every key of the generated reference is on the configuration page.
    reference = (tmp_path / "site" / "configuration" / "index.html").read_text(encoding="utf-8")
    assert "<code>NODE_HOST</code>" in reference and "<code>METRICS_LISTEN</code>" in reference
