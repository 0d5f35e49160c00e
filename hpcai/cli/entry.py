"""The `hpcai` command's entry point: `hpcai --version` answers before the CLI framework loads (typer and
rich are two thirds of every start-up); everything else goes to `hpcai.cli.app`."""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        from hpcai import __version__

        sys.stdout.write(f"hpcai {__version__}\n")
        return
    from hpcai.cli.app import main as cli_main

    cli_main()
