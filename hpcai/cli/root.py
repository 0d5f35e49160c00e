"""The root of the `hpcai` command line: the typer app every command module adds itself to."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from hpcai import __version__

app = typer.Typer(
    name="hpcai",
    help="From a EuroHPC allocation to multimodal training that survives loss spikes, walltime and node failures.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        sys.stdout.write(f"hpcai {__version__}\n")  # not rich: its console is a third of the start-up
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """hpcai: render, submit and look after multimodal training jobs on HPC clusters."""
