"""Wall time of `python -m lmforge --help` for several source trees, interleaved (A, B, C, A, B, C, ...) so that a
shared machine's load falls on every tree alike; prints each tree's best and median, and the per-round ratio of
every tree to the first one (median and range).

    mkdir ../old && git archive OLD | tar -x -C ../old   # a tree per commit to compare
    python benchmarks/bench_startup.py ../old . --rounds 10

Each run starts in an empty folder (`python -m` puts the working folder first on sys.path, which would otherwise
shadow PYTHONPATH) with the tree on PYTHONPATH. Byte-code caches are allowed and warmed first, as an installed
package has them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_run(tree: Path, cwd: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lmforge", "--help"], cwd=cwd, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trees", nargs="+", type=Path, help="source trees (each holding lmforge/)")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    trees = [t.resolve() for t in args.trees]
    times: dict[Path, list[float]] = {t: [] for t in trees}
    with tempfile.TemporaryDirectory() as cwd:
        for tree in trees:
            one_run(tree, cwd)  # writes the byte-code caches
        for _ in range(args.rounds):
            for tree in trees:
                times[tree].append(one_run(tree, cwd))
    first = times[trees[0]]
    for tree in trees:
        ratios = [t / f for t, f in zip(times[tree], first)]
        best, median = 1000 * min(times[tree]), 1000 * statistics.median(times[tree])
        print(f"{str(tree):40s} best {best:6.0f} ms  median {median:6.0f} ms  / first tree per round: median "
              f"{statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
