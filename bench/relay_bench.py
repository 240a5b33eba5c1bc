"""Relay benchmark: the same client and executor, direct websocket vs through the rendezvous.

.venv/bin/python bench/relay_bench.py [--count 200] [--size-mib 256]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from codexexec.client import ExecServerClient, Output  # noqa: E402

TOKEN = "bench-token"


def spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "codexexec", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd="/tmp",
    )


async def round_trip(target: str, count: int) -> float:
    async with await ExecServerClient.connect(target) as client:
        samples = []
        for i in range(count + 10):
            began = time.perf_counter()
            process = await client.start(["/bin/true"], cwd="/tmp", inherit_env=False)
            await process.wait()
            if i >= 10:
                samples.append(time.perf_counter() - began)
    return statistics.median(samples) * 1000


async def throughput(target: str, size: int) -> float:
    async with await ExecServerClient.connect(target) as client:
        began = time.perf_counter()
        process = await client.start(["head", "-c", str(size), "/dev/zero"], cwd="/tmp")
        total = 0
        async for event in process.events():
            if isinstance(event, Output):
                total += len(event.data)
        assert total == size
    return size / (time.perf_counter() - began) / 1e6


async def streams(target: str, count: int) -> float:
    began = time.perf_counter()

    async def one() -> None:
        async with await ExecServerClient.connect(target) as client:
            await (await client.start(["/bin/true"], cwd="/tmp", inherit_env=False)).wait()

    await asyncio.gather(*(one() for _ in range(count)))
    return (time.perf_counter() - began) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--size-mib", type=int, default=256)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    (tmp / "tokens").write_text(TOKEN + "\n")
    env = {**os.environ, "CODEXEXEC_REGISTRY_TOKEN": TOKEN}
    os.environ["CODEXEXEC_REGISTRY_TOKEN"] = TOKEN
    direct = spawn("serve", "--listen", "ws://127.0.0.1:0")
    rendezvous = spawn("rendezvous", "--token-file", str(tmp / "tokens"), "--db", str(tmp / "db"))
    try:
        assert direct.stdout is not None and rendezvous.stdout is not None
        url = direct.stdout.readline().decode().strip()
        registry = rendezvous.stdout.readline().decode().strip()
        executor = spawn("serve", "--remote", registry, "--environment-id", "bench", env=env)
        assert executor.stderr is not None
        executor.stderr.readline()
        relayed = f"bench@{registry}"
        size = args.size_mib * 1024 * 1024
        rows = [
            (
                "round trip start→closed, /bin/true (median ms)",
                asyncio.run(round_trip(url, args.count)),
                asyncio.run(round_trip(relayed, args.count)),
            ),
            (
                f"stdout throughput, {args.size_mib} MiB (MB/s)",
                asyncio.run(throughput(url, size)),
                asyncio.run(throughput(relayed, size)),
            ),
            (
                "128 concurrent streams, one command each (ms)",
                asyncio.run(streams(url, 128)),
                asyncio.run(streams(relayed, 128)),
            ),
        ]
        print("| measure | direct websocket | through the rendezvous | relay / direct |")
        print("|---|---:|---:|---:|")
        for label, plain, relay in rows:
            print(f"| {label} | {plain:.2f} | {relay:.2f} | {relay / plain:.2f}× |")
        executor.terminate()
    finally:
        direct.terminate()
        rendezvous.terminate()


if __name__ == "__main__":
    main()
