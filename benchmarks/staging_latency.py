"""Many small files through a slow link, side by side with rsync in one run: a TCP proxy on loopback adds
a delay each way (default 10 ms, a 20 ms round trip, as from a laptop to a site) in front of a real sshd;
hpcai stages N files of S KB into an empty store, rsync copies the same folder over the same proxy.

Starts its own sshd (tests/infra/sshd.sh) on a free port; needs openssh-server and rsync.
Run: python benchmarks/staging_latency.py [--files 2000] [--kb 20] [--delay-ms 10] [--mbps 50] [--pack]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_delay_proxy(listen: int, target: int, delay_s: float, bytes_per_s: float = 0.0) -> None:
    """Forward listen -> target, each chunk delivered `delay_s` after it was read (order kept); with
    `bytes_per_s`, each direction is also a link of that bandwidth (a chunk leaves once the ones before it
    have)."""

    link_free = {"up": 0.0, "down": 0.0}  # one link each way, shared by every connection through it

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    writer.close()
                    return
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                writer.write(data)
                await writer.drain()

        task = asyncio.ensure_future(deliver())
        with contextlib.suppress(ConnectionError):  # a side that hangs up (the end of a transfer)
            await forward_chunks(reader, queue, direction)
        queue.put_nowait((0.0, b""))
        with contextlib.suppress(ConnectionError):
            await task

    async def forward_chunks(
        reader: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes]], direction: str
    ) -> None:
        while data := await reader.read(1 << 16):
            sent = time.monotonic()
            if bytes_per_s:
                link_free[direction] = max(link_free[direction], sent) + len(data) / bytes_per_s
                sent = link_free[direction]
            queue.put_nowait((sent + delay_s, data))
            if bytes_per_s and queue.qsize() > 16:  # back-pressure, as a full link gives (a 1 MB buffer)
                await asyncio.sleep(max(0.0, sent - time.monotonic() - 0.05))

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", target)
        await asyncio.gather(pipe(client_r, server_w, "up"), pipe(server_r, client_w, "down"), return_exceptions=True)

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", listen)
        async with server:
            await server.serve_forever()

    threading.Thread(target=lambda: asyncio.run(serve()), daemon=True).start()
    time.sleep(0.3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--kb", type=int, default=20)
    parser.add_argument("--delay-ms", type=float, default=10.0)
    parser.add_argument("--mbps", type=float, default=0.0, help="link bandwidth in MB/s each way (0: loopback's)")
    parser.add_argument("--pack", action="store_true",
                        help="a first `stage --pack` against rsync, instead of the plain stage")  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sshd_port, proxy_port = free_port(), free_port()
        env = {**os.environ, "HPCAI_SSHD_PORT": str(sshd_port)}
        subprocess.run([str(REPO / "tests/infra/sshd.sh"), "start", str(root / "sshd")], check=True, env=env)
        try:
            start_delay_proxy(proxy_port, sshd_port, args.delay_ms / 1000, args.mbps * 1e6)
            os.environ["HPCAI_HOME"] = str(root / "home")
            sys.path.insert(0, str(REPO))
            from hpcai.backends.staging import HashCache, Stager
            from hpcai.backends.transport.ssh import SshTransport

            config = root / "ssh_config"
            config.write_text(
                (root / "sshd" / "ssh_config").read_text().replace(f"Port {sshd_port}", f"Port {proxy_port}")
            )
            known = root / "sshd" / "known_hosts"
            known.write_text(known.read_text() + known.read_text().replace(f"]:{sshd_port}", f"]:{proxy_port}"))
            ssh = ["ssh", "-F", str(config), "-o", "BatchMode=yes"]
            data = root / "data"
            data.mkdir()
            for i in range(args.files):
                (data / f"{i:06d}.jpg").write_bytes(os.urandom(args.kb * 1024))
            start = time.perf_counter()
            subprocess.run(["ssh", "-F", str(config), "-o", "BatchMode=yes", "hpcai-test", "true"], check=True)
            round_trip = time.perf_counter() - start
            (root / "rsync-dest").mkdir()
            start = time.perf_counter()
            subprocess.run(["rsync", "-a", "-e", " ".join(ssh), f"{data}/", f"hpcai-test:{root / 'rsync-dest'}/"],
                           check=True)  # fmt: skip
            t_rsync = time.perf_counter() - start
            if args.pack:
                compare_pack(root, data, config, ssh, t_rsync, args)
                return
            HashCache(root / "hashes.json").save()
            cache = HashCache(root / "hashes.json")
            for file in data.iterdir():  # hash outside the timing: rsync's side has no hash cache to fill
                cache.sha256(file)
            start = time.perf_counter()
            transport = SshTransport("hpcai-test", config_path=config)
            if os.environ.get("HPCAI_BENCH_TRACE"):
                original = transport.run

                def traced(argv, **kw):  # type: ignore[no-untyped-def]
                    t0 = time.perf_counter()
                    result = original(argv, **kw)
                    print(f"    {time.perf_counter() - t0:6.2f} s  {' '.join(argv)[:60]!r}")
                    return result

                transport.run = traced  # type: ignore[method-assign]
            report = Stager(transport, str(root / "store"), rsync_target="hpcai-test:", rsync_ssh=ssh).stage(
                data, cache
            )
            transport.close()
            t_hpcai = time.perf_counter() - start
            assert report.objects_sent == args.files
            start = time.perf_counter()
            transport = SshTransport("hpcai-test", config_path=config)
            Stager(transport, str(root / "store")).stage(data, cache)
            transport.close()
            t_again = time.perf_counter() - start
            mb = args.files * args.kb / 1024
            print(
                f"{args.files} files of {args.kb} KB ({mb:.0f} MB) through a proxy adding {args.delay_ms:g} ms each way"
            )
            print(f"  ssh login + true         {round_trip:7.2f} s")
            print(f"  rsync -a                 {t_rsync:7.2f} s")
            ratio = t_hpcai / t_rsync
            print(f"  hpcai stage (first)      {t_hpcai:7.2f} s  ratio hpcai/rsync {ratio:.2f}  ({report.via})")
            print(f"  hpcai stage (no change)  {t_again:7.2f} s")
        finally:
            subprocess.run([str(REPO / "tests/infra/sshd.sh"), "stop", str(root / "sshd")], env=env)
            shutil.rmtree(root, ignore_errors=True)


def compare_pack(
    root: Path, data: Path, config: Path, ssh: list[str], t_rsync: float, args: argparse.Namespace
) -> None:
    """A first `stage --pack` (packing included) over the same link as rsync, in the same run."""
    from hpcai.backends.staging import HashCache, Stager
    from hpcai.backends.staging.pack import pack
    from hpcai.backends.transport.ssh import SshTransport

    start = time.perf_counter()
    hashes = HashCache(root / "hashes-packed.json")
    packed = pack(data, cache=root / "pack-cache", hashes=hashes)
    packed_s = time.perf_counter() - start
    transport = SshTransport("hpcai-test", config_path=config)
    Stager(transport, str(root / "store-packed"), rsync_target="hpcai-test:", rsync_ssh=ssh).stage(
        packed.folder, hashes
    )
    transport.close()
    t_pack = time.perf_counter() - start
    mb = args.files * args.kb / 1024
    link = f"{args.mbps:g} MB/s, " if args.mbps else ""
    print(f"{args.files} files of {args.kb} KB ({mb:.0f} MB), first stage through a proxy ({link}{args.delay_ms:g} ms "
          "each way)")  # fmt: skip
    print(f"  rsync -a                 {t_rsync:7.2f} s")
    ratio = t_pack / t_rsync
    print(f"  hpcai stage --pack       {t_pack:7.2f} s  ratio hpcai/rsync {ratio:.2f}  (packing {packed_s:.2f} s)")


if __name__ == "__main__":
    sys.exit(main())
