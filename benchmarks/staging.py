"""Staging against a real sshd on 127.0.0.1, side by side with rsync in one run:
1. time to stage 1 GB (one file): hpcai / rsync ratio (hpcai with its rsync fast path, and without rsync),
   median over rounds in rotated order;
2. time for a no-op re-stage of 10,000 small files: hpcai / rsync ratio;
3. a data set of many small files (50,000 x 20 KB = 1 GB): rsync, hpcai's first stage, and
   `hpcai stage --pack` (packing included), with the number of files each creates on the target.

Starts its own sshd (tests/infra/sshd.sh) on a free port; needs openssh-server and rsync.
Run: python benchmarks/staging.py [--size-mb 1024] [--files 10000] [--pack-files 50000 --pack-kb 20]
(--only pack runs part 3 alone, --only big part 1)
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def timed(action) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--pack-files", type=int, default=50_000)
    parser.add_argument("--pack-kb", type=int, default=20)
    parser.add_argument("--only", choices=["all", "big", "pack"], default="all")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the 1 GB comparison")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = str(probe.getsockname()[1])
        env = {**os.environ, "HPCAI_SSHD_PORT": port}
        subprocess.run([str(REPO / "tests/infra/sshd.sh"), "start", str(root / "sshd")], check=True, env=env)
        try:
            os.environ["HPCAI_HOME"] = str(root / "home")
            from hpcai.backends.staging import HashCache, Stager
            from hpcai.backends.transport.ssh import SshTransport

            config = root / "sshd" / "ssh_config"
            ssh = ["ssh", "-F", str(config), "-o", "BatchMode=yes"]
            big = root / "big.bin"
            with open(big, "wb") as handle:
                for _ in range(args.size_mb):
                    handle.write(os.urandom(1 << 20))
            small = root / "small"
            small.mkdir()
            for i in range(args.files):
                (small / f"{i:05d}.txt").write_text(f"file {i}\n" * 8)

            def hpcai_stage(path: Path, store: str, rsync: bool) -> None:
                transport = SshTransport("hpcai-test", config_path=config)
                stager = Stager(transport, str(root / "remote" / store), rsync_target="hpcai-test:" if rsync else None,
                                rsync_ssh=ssh)  # fmt: skip
                stager.stage(path, HashCache(root / f"hashes-{store}.json"))
                transport.close()

            def rsync(path: Path, target: str) -> None:
                destination = f"hpcai-test:{root / 'remote' / target}/"
                subprocess.run(["rsync", "-a", "-e", " ".join(ssh), str(path), destination], check=True)

            (root / "remote").mkdir()
            for name in ("rsync-small", "rsync-many"):
                (root / "remote" / name).mkdir()
            if args.only == "pack":
                many_files(root, args, ssh, config, rsync, hpcai_stage)
                return
            # Each round stages to fresh targets, the three in a rotated order (a 2-core machine's figures
            # drift with what ran just before); the medians of the per-round ratios are reported.
            runs: dict[str, list[float]] = {"rsync": [], "fast": [], "stream": []}
            for round_ in range(args.repeat):
                actions = {
                    "rsync": lambda n=round_: rsync(big, f"rsync-big-{n}"),
                    "fast": lambda n=round_: hpcai_stage(big, f"store-fast-{n}", True),
                    "stream": lambda n=round_: hpcai_stage(big, f"store-stream-{n}", False),
                }
                (root / "remote" / f"rsync-big-{round_}").mkdir()
                names = list(actions)
                for name in names[round_ % 3 :] + names[: round_ % 3]:
                    runs[name].append(timed(actions[name]))
                for name in (f"rsync-big-{round_}", f"store-fast-{round_}", f"store-stream-{round_}"):
                    subprocess.run(["chmod", "-R", "u+w", str(root / "remote" / name)], check=True)
                    shutil.rmtree(root / "remote" / name)

            def median(values: list[float]) -> float:
                return sorted(values)[len(values) // 2]

            ratio = {name: median([t / r for t, r in zip(runs[name], runs["rsync"], strict=True)])
                     for name in ("fast", "stream")}  # fmt: skip
            print(f"stage {args.size_mb} MB, one file (first time, cold hash cache), median of {args.repeat} rounds:")
            t_rsync = median(runs["rsync"])
            print(f"  rsync                  {t_rsync:7.2f} s  {args.size_mb / t_rsync:7.1f} MB/s  (all: "
                  + ", ".join(f"{t:.2f}" for t in runs["rsync"]) + ")")  # fmt: skip
            for name, label in (("fast", "hpcai (rsync path)"), ("stream", "hpcai (no rsync)")):
                print(
                    f"  {label:22s} {median(runs[name]):7.2f} s  ratio hpcai/rsync {ratio[name]:.2f}  (rounds: "
                    + ", ".join(f"{t / r:.2f}" for t, r in zip(runs[name], runs["rsync"], strict=True))
                    + ")"
                )
            if args.only == "big":
                return
            rsync(small, "rsync-small")
            hpcai_stage(small, "store-small", True)
            n_rsync = timed(lambda: rsync(small, "rsync-small"))
            n_hpcai = timed(lambda: hpcai_stage(small, "store-small", True))
            print(f"no-op re-stage of {args.files} small files:")
            print(f"  rsync                  {n_rsync:7.2f} s")
            print(f"  hpcai                  {n_hpcai:7.2f} s  ratio hpcai/rsync {n_hpcai / n_rsync:.2f}")
            many_files(root, args, ssh, config, rsync, hpcai_stage)
        finally:
            subprocess.run([str(REPO / "tests/infra/sshd.sh"), "stop", str(root / "sshd")], env=env)
            shutil.rmtree(root, ignore_errors=True)


def many_files(root: Path, args: argparse.Namespace, ssh: list[str], config: Path, rsync, hpcai_stage) -> None:  # type: ignore[no-untyped-def]
    """Part 3: many small files, plain and packed, against rsync."""
    from hpcai.backends.staging import HashCache, Stager
    from hpcai.backends.staging.pack import pack
    from hpcai.backends.transport.ssh import SshTransport

    many = root / "many"
    for i in range(args.pack_files):
        folder = many / "images" / f"{i // 1000:03d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True)
        (folder / f"{i:06d}.jpg").write_bytes(os.urandom(args.pack_kb << 10))
    (many / "data.json").write_text("[]")
    total_mb = args.pack_files * args.pack_kb / 1024

    def packed_stage() -> None:
        hashes = HashCache(root / "hashes-packed.json")
        packed = pack(many, cache=root / "pack-cache", hashes=hashes)
        transport = SshTransport("hpcai-test", config_path=config)
        Stager(transport, str(root / "remote" / "store-packed"), rsync_target="hpcai-test:",
               rsync_ssh=ssh).stage(packed.folder, hashes)  # fmt: skip
        transport.close()

    def count(path: Path) -> int:
        return sum(1 for p in path.rglob("*") if p.is_file())

    t_rsync = timed(lambda: rsync(many, "rsync-many"))
    t_plain = timed(lambda: hpcai_stage(many, "store-many", True))
    t_pack = timed(packed_stage)
    files = args.pack_files + 1
    print(f"first stage of {args.pack_files} files of {args.pack_kb} KB ({total_mb:.0f} MB):")
    print(f"  rsync                  {t_rsync:7.2f} s  {files} files on the target")
    print(f"  hpcai                  {t_plain:7.2f} s  ratio hpcai/rsync {t_plain / t_rsync:.2f}")
    packed_files = count(next((root / "pack-cache").iterdir()))
    print(
        f"  hpcai --pack           {t_pack:7.2f} s  ratio hpcai/rsync {t_pack / t_rsync:.2f}, {packed_files} files "
        f"on the target ({100 * packed_files / files:.2f}% of rsync's)"
    )


if __name__ == "__main__":
    sys.exit(main())
