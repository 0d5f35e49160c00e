"""CLI start-up: median wall time of `hpcai --version` and of `python -c pass`, side by side.

Run: python benchmarks/cli_startup.py [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def median_seconds(cmd: list[str], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "hpcai --version": [sys.executable, "-m", "hpcai", "--version"],
        "hpcai clusters list --json": [sys.executable, "-m", "hpcai", "clusters", "list", "--json"],
    }
    # Interleave the runs so that machine noise hits both sides alike.
    results: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.repeats):
        for name, cmd in commands.items():
            results[name].append(median_seconds(cmd, 1))
    baseline = statistics.median(results["python -c pass"])
    print(f"{'command':<30} {'median s':>9} {'x python':>9}")
    for name, samples in results.items():
        med = statistics.median(samples)
        print(f"{name:<30} {med:>9.3f} {med / baseline:>9.1f}")


if __name__ == "__main__":
    main()
