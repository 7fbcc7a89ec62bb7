"""The texts generated from the key definitions in meshbot/config.py.

config.example.py and the key table of docs/configuration.md are written from `Settings`, so
that neither can go stale: tests compare both files with these functions, and
`python -m meshbot.configtext` (`make example-config`) rewrites both after a key changes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from meshbot.config import Settings

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path("docs") / "configuration.md"
_TABLE_HEAD = "| key | default | meaning |"


# The first key of each section, for config.example.py.
_SECTIONS = {
    "CONNECTION": "The node link",
    "MIN_TEXT_INTERVAL_S": "Sending",
    "AIRTIME_BUDGET_PCT": "Airtime budget and channel governor",
    "HANDLER_THREADS": "Receiving",
    "DEDUP_WINDOW_S": "Commands",
    "API_LISTEN": "Sharing the node",
    "WEATHER_API_URL": "Weather",
    "STATE_DIR": "State",
    "LOG_LEVEL": "Logging",
    "METRICS_LISTEN": "Monitoring",
}


def example_config_text() -> str:
    """config.example.py, generated from the key definitions (a test keeps the file equal)."""
    lines = [
        "# meshbot configuration: copy to config.py and edit. Every key is shown with its default.",
        "# Check it with: python main.py --config config.py --check-config  (exit 0, or 78 naming the key)",
    ]
    for name, spec in Settings.specs().items():
        if name in _SECTIONS:
            lines += ["", f"# --- {_SECTIONS[name]} " + "-" * (70 - len(_SECTIONS[name]))]
        lines.append(f"# {spec.doc} Expected: {spec.expected()}.")
        if spec.example:
            lines.append(f"# e.g. {spec.example}")
        lines.append(f"{name} = {Settings.defaults()[name]!r}")
    return "\n".join(lines) + "\n"


def markdown_key_table() -> str:
    """docs/configuration.md's table of keys, generated from the same definitions."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for name, spec in Settings.specs().items():
        default = Settings.defaults()[name]
        expected = spec.expected()
        rows.append(f"| `{name}` | `{default!r}` | {spec.doc} {expected[0].upper()}{expected[1:]}. |")
    return "\n".join(rows) + "\n"


def with_key_table(page: str) -> str:
    """`page` (docs/configuration.md) with its key table replaced by the current one."""
    start = page.index(_TABLE_HEAD)
    end = page.find("\n\n", start)
    rest = "" if end < 0 else page[end + 1 :]
    return page[:start] + markdown_key_table() + rest


def main(root: Path = ROOT) -> int:
    """Rewrite config.example.py and the reference's key table in the checkout at `root`."""
    (root / "config.example.py").write_text(example_config_text(), encoding="utf-8")
    reference = root / REFERENCE
    reference.write_text(with_key_table(reference.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
