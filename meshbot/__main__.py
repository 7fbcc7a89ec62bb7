"""`python -m meshbot`: the same command line as `meshbot` and `python main.py`."""

import sys

from meshbot.cli import main

if __name__ == "__main__":
    sys.exit(main())
