"""requirements.txt, the service's lock file, must still match pyproject.toml's ranges.

pyproject.toml is the one list of ranges; `make requirements` resolves it to exact pins with
hashes. A range changed without regenerating the lock fails here, not on an operator's Pi.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT

PIN_RE = re.compile(r"^(?P<name>[A-Za-z0-9_.\-]+)==(?P<version>[^\s\\;]+)")


def pins(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        match = PIN_RE.match(line)
        if match:
            found[canonicalize_name(match["name"])] = match["version"]
    return found


def runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


def unmatched(lock_text: str) -> list[str]:
    """What in pyproject.toml the lock does not satisfy, one line each."""
    locked = pins(lock_text)
    problems = []
    for req in runtime_requirements():
        version = locked.get(canonicalize_name(req.name))
        if version is None:
            problems.append(f"{req.name}: not in requirements.txt")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req.name}=={version} is outside {req.specifier}")
    return problems


def test_the_lock_pins_every_dependency_within_its_range():
    assert unmatched((ROOT / "requirements.txt").read_text()) == [], "run `make requirements`"


def test_every_pin_is_exact_and_hashed():
    text = (ROOT / "requirements.txt").read_text()
    entries = re.findall(r"(?ms)^[A-Za-z0-9].*?(?=^[A-Za-z0-9]|\Z)", text)
    assert len(entries) == len(pins(text)) > len(runtime_requirements())
    for entry in entries:
        assert PIN_RE.match(entry) and "--hash=sha256:" in entry, entry


def test_a_lock_out_of_step_with_pyproject_is_caught():
    """The check itself can fail: a pin outside its range, and a dependency missing."""
    text = (ROOT / "requirements.txt").read_text()
    meshtastic = pins(text)["meshtastic"]
    bumped = text.replace(f"meshtastic=={meshtastic}", "meshtastic==2.8.0")
    assert unmatched(bumped) == ["meshtastic==2.8.0 is outside <2.8,>=2.7.11"]
    dropped = re.sub(r"(?m)^requests==.*$", "", text)
    assert unmatched(dropped) == ["requests: not in requirements.txt"]
