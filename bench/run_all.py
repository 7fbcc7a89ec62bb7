"""Run every benchmark in bench/ (each `bench_*.py`, then `soak.py`) and print one table.

    python bench/run_all.py [--quick]

Each module has a `run(quick)` function returning rows. The soak runs one cycle of its
seven faults here (8 min; 3 min with --quick); `bench/soak.py --minutes 30` is the long run.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import Row, print_table  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (fewer packets, shorter idle windows)")
    args = parser.parse_args()
    rows: list[Row] = []
    for path in [*sorted(HERE.glob("bench_*.py")), HERE / "soak.py"]:
        module = importlib.import_module(path.stem)
        print(f"running {path.name} ...", file=sys.stderr, flush=True)
        rows += module.run(quick=args.quick)
    print_table(rows)
    return 0 if all(r.ok is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
