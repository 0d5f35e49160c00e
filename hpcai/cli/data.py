"""`hpcai data synth`, `models stage` and `stage`: data, models and files on the cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hpcai.cli.options import (
    ClusterOpt,
    JsonOpt,
)
from hpcai.cli.output import console, print_json
from hpcai.cli.root import app
from hpcai.errors import EnvironmentFailure, HpcaiError

data_app = typer.Typer(help="Data sets for the workloads.", no_args_is_help=True)


app.add_typer(data_app, name="data")


@data_app.command("synth")
def data_synth(
    kind: Annotated[str, typer.Argument(help="llava (conversation JSON) or clip (image-text JSONL).")],
    directory: Annotated[Path, typer.Argument(help="Folder to create.")],
    samples: Annotated[int, typer.Option("--samples", "-n", help="Number of samples.")] = 256,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same files).")] = 0,
    shards: Annotated[
        int, typer.Option("--shards", help="clip: tar shards of this many samples (img2dataset layout) instead")
    ] = 0,
    json_out: JsonOpt = False,
) -> None:
    """Generate a small data set in the real format, with learnable structure (for tests and trials)."""
    import importlib.util

    from hpcai.train.synth import synth_clip, synth_llava

    if importlib.util.find_spec("PIL") is None:
        raise EnvironmentFailure(
            "data synth draws its images with Pillow, which is not installed here. Install the training extra "
            "(pip install 'hpcai[train]') or just Pillow (pip install pillow), then run the same command again."
        )
    directory = directory.expanduser().absolute()  # the hint below must work from any folder

    makers = {"llava": synth_llava, "clip": synth_clip}
    if kind not in makers:
        raise HpcaiError(f"data synth: unknown kind '{kind}'. Use llava or clip.")
    if samples < 1:
        raise HpcaiError("--samples: give at least 1.")
    if shards < 0 or (shards and kind != "clip"):
        raise HpcaiError("--shards: a positive number of samples per shard, for clip only.")
    if shards:
        from hpcai.train.synth import synth_clip_shards

        index = synth_clip_shards(directory, samples=samples, seed=seed, per_shard=shards)[0]
    else:
        index = makers[kind](directory, samples=samples, seed=seed)
    if json_out:
        print_json({"kind": kind, "directory": str(directory), "index": str(index), "samples": samples})
    else:
        console.print(f"{samples} {kind} samples in {directory} (index: {index.name}); use --set data={directory}")


models_app = typer.Typer(help="Pretrained models for the workloads.", no_args_is_help=True)


app.add_typer(models_app, name="models")


@models_app.command("stage")
def models_stage(
    model: Annotated[str, typer.Argument(help="A Hugging Face id in your local cache (org/name) or a model folder.")],
    cluster: ClusterOpt = None,
    revision: Annotated[str, typer.Option("--revision", help="Cached revision (branch or commit).")] = "main",
    to: Annotated[str | None, typer.Option("--to", help="Filesystem of the profile (scratch, work, fast...).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Copy a pretrained model to the cluster (compute nodes are offline) and print the path to pass as
    model_path, vision_tower or language_model."""
    from hpcai.flows.resolve import default_cluster
    from hpcai.flows.stage import stage_paths
    from hpcai.spec.models import resolve

    folder = resolve(model, revision)
    (report,) = stage_paths(cluster or default_cluster(), [folder.path], filesystem=to, show_progress=not json_out,
                            follow_links=True)  # fmt: skip  # a cache snapshot is links into blobs/
    if json_out:
        print_json({**folder.to_json(), **report.to_json()})
        return
    missing = [what for what, ok in (("tokenizer", folder.has_tokenizer), ("image processor", folder.has_processor))
               if not ok]  # fmt: skip
    kind = folder.model_type or "unknown type"
    console.print(f"{model} ({kind}) -> {report.remote_path} ({report.files} files, {report.bytes_total / 1e6:.1f} MB)")
    if missing:
        console.print(f"  (no {' or '.join(missing)} in it: fine for a language model's weights or a vision tower "
                      "only if the workload does not need it)")  # fmt: skip
    console.print(f"  use it with: --set model_path={report.remote_path}  (or vision_tower= / language_model=)")


@app.command()
def stage(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to stage.")],
    cluster: ClusterOpt = None,
    to: Annotated[str | None, typer.Option("--to", help="Filesystem of the profile (scratch, work, fast...).")] = None,
    verify: Annotated[
        bool, typer.Option("--verify", help="Check every staged byte by sha256 on the cluster; repair damage.")
    ] = False,
    follow_links: Annotated[
        bool, typer.Option("--follow-links", help="Stage what links pointing outside the folder point to.")
    ] = False,
    pack: Annotated[
        bool, typer.Option("--pack", help="Stage a folder of many small files as tar shards (+ its manifests).")
    ] = False,
    shard_size: Annotated[str, typer.Option("--shard-size", help="Target shard size with --pack.")] = "256M",
    squashfs: Annotated[
        bool, typer.Option("--squashfs", help="Stage a folder as one SquashFS image (needs mksquashfs here).")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Copy data, containers or code to the cluster: only what changed moves, resumable, verified."""
    from rich.text import Text

    from hpcai.flows.resolve import default_cluster
    from hpcai.flows.stage import parse_bytes, stage_paths

    shard_bytes = parse_bytes(shard_size, option="--shard-size")
    reports = stage_paths(
        cluster or default_cluster(), paths, filesystem=to, show_progress=not json_out, verify=verify,
        follow_links=follow_links, pack=pack, shard_bytes=shard_bytes, squashfs=squashfs,
    )  # fmt: skip
    if json_out:
        print_json([r.to_json() for r in reports])
        return
    for r in reports:
        sent = f"sent {r.objects_sent} file(s), {r.bytes_sent / 1e6:.1f} MB" if r.objects_sent else "nothing to send"
        links = f", {r.links} link(s)" if r.links else ""
        repaired = "; damaged or missing files repaired" if r.repaired else ""
        size = f"{r.bytes_total / 1e6:.1f} MB"
        console.print(f"{r.source} -> {r.remote_path} ({r.files} files{links}, {size}; {sent}{repaired})")
        if r.packed is not None:
            console.print(f"  packed: {r.packed['files_before']} files as {r.packed['shards']} shard(s) + manifests "
                          f"({r.packed['files_after']} files on the cluster); pass data={r.remote_path}")  # fmt: skip
        if r.squashfs is not None:
            console.print(f"  one SquashFS image holding {r.squashfs['files_before']} files. Mount it where the job "
                          f"runs: in its container with --bind {r.squashfs['bind']} (Apptainer, Singularity; the "
                          f"folder is then /data), or with `squashfuse {r.remote_path} DIR` on a node that has "
                          "squashfuse.", soft_wrap=True)  # fmt: skip
        for warning in r.warnings:
            console.print(Text.assemble(("warning:", "yellow"), f" {warning}"))
