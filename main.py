#!/usr/bin/env python3
"""meshbot from a checkout: `python main.py --help`. The command line lives in meshbot/cli.py;
installed, the same command is `meshbot` or `python -m meshbot`."""

import sys

from meshbot.cli import main, run_daemon

__all__ = ["main", "run_daemon"]  # run_daemon: tests/test_systemd.py imports it from here

if __name__ == "__main__":
    sys.exit(main())
