"""`meshbot init`: a new config file that survives upgrades.

A config that sets every key freezes every default at the version it was copied from: a
default improved later never reaches that install. The starter sets only the keys most
operators change; every other key is a comment showing its current default, so that the
file documents itself and a later version's defaults apply until the operator decides.
The full example (every key set) is generated from the same definitions, inside the
package, so pipx users have it too (`meshbot init --full`).
"""

from __future__ import annotations

import os
from pathlib import Path

from meshbot.config import Settings
from meshbot.configtext import example_config_text

# The keys an operator sets on day one: where the node is, who administers, where the bot is.
STARTER_KEYS = (
    "CONNECTION",
    "NODE_HOST",
    "SERIAL_PORT",
    "ADMIN_NODES",
    "DEFAULT_LOCATION",
    "UNITS",
    "TIMEZONE",
)


class InitRefused(Exception):
    """The target exists (never overwritten) or cannot be written. The message is one line."""


def starter_config_text() -> str:
    """The short config: STARTER_KEYS set to their defaults, every other key a comment."""
    specs, defaults = Settings.specs(), Settings.defaults()
    lines = [
        "# meshbot configuration, written by `meshbot init`.",
        "# Only the keys most operators change are set; every other key is a comment showing its",
        "# default, which a later version may improve: uncomment a line only to change it.",
        "# Check it with: meshbot --config config.py --check-config [--strict]",
        "",
    ]
    for name in STARTER_KEYS:
        spec = specs[name]
        lines.append(f"# {spec.doc} Expected: {spec.expected()}.")
        if spec.example:
            lines.append(f"# e.g. {spec.example}")
        lines.append(f"{name} = {defaults[name]!r}")
    lines += ["", "# --- Every other key, at its default " + "-" * 50]
    for name, spec in specs.items():
        if name not in STARTER_KEYS:
            lines.append(f"# {name} = {defaults[name]!r}  # {spec.doc}")
    return "\n".join(lines) + "\n"


def write_config(path: Path, *, full: bool = False) -> Path:
    """Write the starter (or the full example) to `path`, or to `path`/config.py for a folder.

    Never overwrites: the file is created with O_EXCL, so even a file that appears between a
    check and the write is kept.
    """
    target = path / "config.py" if path.is_dir() else path
    text = example_config_text() if full else starter_config_text()
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise InitRefused(f"{target} exists: kept it (meshbot init never overwrites a config)") from None
    except OSError as exc:
        raise InitRefused(f"cannot write {target}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    return target
