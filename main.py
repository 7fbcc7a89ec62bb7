#!/usr/bin/env python3
"""meshbot from a checkout: `python main.py --help`. The command line lives in meshbot/cli.py;
installed, the same command is `meshbot` or `python -m meshbot`."""

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Optional, Sequence


class _CheckoutHandlers(importlib.abc.MetaPathFinder):
    """Finds `meshbot.handlers` in the checkout's top-level `handlers/` folder.

    Installed, setuptools' `package-dir` maps that folder to `meshbot.handlers`; a checkout run
    without installing (`python3 main.py` with Debian's packages) has no such mapping. This
    finder sits last in `sys.meta_path`, so an installed meshbot always wins over it."""

    FOLDER = Path(__file__).resolve().parent / "handlers"

    def find_spec(
        self,
        fullname: str,
        path: Optional[Sequence[str]],
        target: Optional[ModuleType] = None,
    ) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname != "meshbot.handlers" or not (self.FOLDER / "__init__.py").is_file():
            return None
        return importlib.util.spec_from_file_location(
            fullname, self.FOLDER / "__init__.py", submodule_search_locations=[str(self.FOLDER)]
        )


sys.meta_path.append(_CheckoutHandlers())

from meshbot.cli import main, run_daemon  # noqa: E402  (after the finder is in place)

__all__ = ["main", "run_daemon"]  # run_daemon: tests/test_systemd.py imports it from here

if __name__ == "__main__":
    sys.exit(main())
