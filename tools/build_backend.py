"""The build backend: setuptools, building in a scratch copy of the source.

setuptools writes `build/` and `meshbot.egg-info/` into the source tree it builds from, so
`pipx install .` or `pip install .` left both in the operator's clone. The wheel and sdist
hooks here copy what a build reads into a temporary directory and let setuptools build
there; the editable hooks (`pip install -e .`, what `make test` uses) build in place as they
must, since the installed package points back at this checkout.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

from setuptools import build_meta as _setuptools
from setuptools.build_meta import (  # noqa: F401  (hooks passed through unchanged)
    build_editable,
    get_requires_for_build_editable,
    prepare_metadata_for_build_editable,
)

SOURCE = Path(__file__).resolve().parents[1]
# What a build reads: pyproject.toml names the readme and the licence; the packages.
_BUILD_INPUTS = ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "meshbot", "handlers")
_NEVER_COPIED = shutil.ignore_patterns("__pycache__", "*.pyc")


def _in_scratch_copy(hook: Callable[..., Any], *args: Any) -> Any:
    """`hook(*args)` run in a copy of the build inputs (paths in `args` must be absolute)."""
    with tempfile.TemporaryDirectory(prefix="meshbot-build-") as scratch:
        for name in _BUILD_INPUTS:
            source = SOURCE / name
            if source.is_dir():
                shutil.copytree(source, Path(scratch) / name, ignore=_NEVER_COPIED)
            else:
                shutil.copy2(source, Path(scratch) / name)
        here = os.getcwd()
        os.chdir(scratch)
        try:
            return hook(*args)
        finally:
            os.chdir(here)


# Even asking setuptools what a build needs runs its egg_info command, in the current directory.
def get_requires_for_build_wheel(config_settings: Optional[dict] = None) -> list[str]:
    return _in_scratch_copy(_setuptools.get_requires_for_build_wheel, config_settings)


def get_requires_for_build_sdist(config_settings: Optional[dict] = None) -> list[str]:
    return _in_scratch_copy(_setuptools.get_requires_for_build_sdist, config_settings)


def prepare_metadata_for_build_wheel(metadata_directory: str, config_settings: Optional[dict] = None) -> str:
    return _in_scratch_copy(
        _setuptools.prepare_metadata_for_build_wheel, os.path.abspath(metadata_directory), config_settings
    )


def build_wheel(
    wheel_directory: str, config_settings: Optional[dict] = None, metadata_directory: Optional[str] = None
) -> str:
    if metadata_directory is not None:
        metadata_directory = os.path.abspath(metadata_directory)
    return _in_scratch_copy(_setuptools.build_wheel, os.path.abspath(wheel_directory), config_settings, metadata_directory)


def build_sdist(sdist_directory: str, config_settings: Optional[dict] = None) -> str:
    return _in_scratch_copy(_setuptools.build_sdist, os.path.abspath(sdist_directory), config_settings)
