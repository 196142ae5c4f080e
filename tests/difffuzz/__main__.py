"""The long randomized differential run (``make fuzz-diff``).

Environment: ``FUZZDIFF_SEEDS`` (number of seeds, default 100),
``FUZZDIFF_OPS`` (operations per seed, default 300), ``FUZZDIFF_FIRST_SEED``
(default 1000, past the seeds of ``make test``), ``FUZZDIFF_SHRINK``
(seconds of shrinking per kind of difference, default 60).  Prints the
figures and every minimal differing sequence; exits 1 if anything differs
or pyxenstored logged an internal error.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from tests.difffuzz.oracle import run_campaign


def main() -> int:
    seeds = int(os.environ.get("FUZZDIFF_SEEDS", "100"))
    ops = int(os.environ.get("FUZZDIFF_OPS", "300"))
    first = int(os.environ.get("FUZZDIFF_FIRST_SEED", "1000"))
    shrink = float(os.environ.get("FUZZDIFF_SHRINK", "60"))
    root = Path(tempfile.mkdtemp(prefix="pyxs-", dir="/tmp"))
    print(f"fuzz-diff: {seeds} seeds from {first}, {ops} operations each", flush=True)

    def log(line: str) -> None:
        print(f"  {line}", flush=True)

    try:
        outcome = run_campaign(
            root,
            range(first, first + seeds),
            ops,
            shrink_each=shrink,
            shrink_total=shrink * 20,
            log=log,
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(outcome.report())
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
