"""Staging against a real sshd on 127.0.0.1, side by side with rsync in one run:
1. time to stage 1 GB (one file): hpcai / rsync ratio (hpcai with its rsync fast path, and SFTP only);
2. time for a no-op re-stage of 10,000 small files: hpcai / rsync ratio.

Starts its own sshd (tests/infra/sshd.sh) on a free port; needs openssh-server and rsync.
Run: python benchmarks/staging.py [--size-mb 1024] [--files 10000]
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
            from hpcai.staging import HashCache, Stager
            from hpcai.transport.ssh import SshTransport

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
            for name in ("rsync-big", "rsync-small"):
                (root / "remote" / name).mkdir()
            t_rsync = timed(lambda: rsync(big, "rsync-big"))
            t_hpcai = timed(lambda: hpcai_stage(big, "store-fast", True))
            t_sftp = timed(lambda: hpcai_stage(big, "store-sftp", False))
            print(f"stage {args.size_mb} MB, one file (first time, cold hash cache):")
            print(f"  rsync                  {t_rsync:7.2f} s  {args.size_mb / t_rsync:7.1f} MB/s")
            print(f"  hpcai (rsync path)     {t_hpcai:7.2f} s  ratio hpcai/rsync {t_hpcai / t_rsync:.2f}")
            print(f"  hpcai (SFTP only)      {t_sftp:7.2f} s  ratio hpcai/rsync {t_sftp / t_rsync:.2f}")
            rsync(small, "rsync-small")
            hpcai_stage(small, "store-small", True)
            n_rsync = timed(lambda: rsync(small, "rsync-small"))
            n_hpcai = timed(lambda: hpcai_stage(small, "store-small", True))
            print(f"no-op re-stage of {args.files} small files:")
            print(f"  rsync                  {n_rsync:7.2f} s")
            print(f"  hpcai                  {n_hpcai:7.2f} s  ratio hpcai/rsync {n_hpcai / n_rsync:.2f}")
        finally:
            subprocess.run([str(REPO / "tests/infra/sshd.sh"), "stop", str(root / "sshd")], env=env)
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
