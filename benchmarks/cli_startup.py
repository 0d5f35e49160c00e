"""CLI start-up: median wall time of hpcai commands against the bare `import typer, rich` (what any typer +
rich CLI pays) and `python -c pass`, interleaved in one run so machine noise hits all alike.

Targets (issue 16): `hpcai --version` <= 1.5x and `hpcai clusters list` <= 2x the bare import.
Run: python benchmarks/cli_startup.py [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

TARGETS = {"hpcai --version": 1.5, "hpcai clusters list": 2.0}


def seconds(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        # a state directory of its own: the status command reads an empty store, the profile index is warm
        env = {**os.environ, "HPCAI_HOME": home, "COLUMNS": "120"}
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "import typer, rich": [sys.executable, "-c", "import typer, rich"],
            "hpcai --version": [sys.executable, "-m", "hpcai", "--version"],
            "hpcai clusters list": [sys.executable, "-m", "hpcai", "clusters", "list"],
            "hpcai clusters list --json": [sys.executable, "-m", "hpcai", "clusters", "list", "--json"],
            "hpcai status": [sys.executable, "-m", "hpcai", "status"],
        }
        for cmd in commands.values():  # warm the page cache and the profile index
            seconds(cmd, env)
        results: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeats):
            for name, cmd in commands.items():
                results[name].append(seconds(cmd, env))
    baseline = statistics.median(results["import typer, rich"])
    print(f"{'command':<28} {'median s':>9} {'x typer+rich':>13}  target")
    for name, samples in results.items():
        med = statistics.median(samples)
        target = f"<= {TARGETS[name]:.1f}" if name in TARGETS else ""
        print(f"{name:<28} {med:>9.3f} {med / baseline:>13.2f}  {target}")


if __name__ == "__main__":
    main()
