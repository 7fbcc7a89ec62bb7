#!/usr/bin/env python3
"""meshbot from a checkout: `python main.py --help`. The command line lives in meshbot/cli.py;
installed, the same command is `meshbot` or `python -m meshbot`."""

import sys

from meshbot.cli import main, run_daemon  # noqa: F401  (run_daemon: tests/test_systemd.py)

if __name__ == "__main__":
    sys.exit(main())
