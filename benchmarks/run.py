"""Run every benchmark script in this folder (``bench_*.py``) in turn and print its figures.

OMP_WAIT_POLICY=PASSIVE python benchmarks/run.py [name ...]
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    wanted = set(sys.argv[1:])
    rc = 0
    for script in sorted(HERE.glob("bench_*.py")):
        if (
            wanted
            and script.stem.removeprefix("bench_") not in wanted
            and script.stem not in wanted
        ):
            continue
        print(f"\n=== {script.name}", flush=True)
        rc |= subprocess.call([sys.executable, str(script)])
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
