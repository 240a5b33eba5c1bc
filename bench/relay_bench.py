"""Relay benchmark: one client, the executor reached directly, through the rendezvous in
cleartext, and through the rendezvous end-to-end encrypted (Noise), plus the real Codex
0.169.0 executor through the same rendezvous (Noise), and the hybrid-IK handshake's cost.
Then the CPU time spent per round trip and per stream: by the processes serving each target,
and by this harness.

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

from codexexec.client import ExecServerClient, Output, OutputGap  # noqa: E402

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
        gaps = []
        async for event in process.events():
            if isinstance(event, Output):
                total += len(event.data)
            elif isinstance(event, OutputGap):  # the server's retention dropped output
                gaps.append(f"{event.first_missing}..{event.next_available - 1}")
        if total != size:
            raise RuntimeError(
                f"{target}: {total} of {size} output bytes arrived; gaps at seqs {gaps}"
            )
    return size / (time.perf_counter() - began) / 1e6


async def streams(target: str, count: int) -> float:
    """``count`` streams open at once, each running one command. Connections are opened 16 at
    a time: Codex's executor validates at most 32 Noise handshakes at once and resets the rest
    (codexexec's lets them wait)."""
    began = time.perf_counter()
    opening = asyncio.Semaphore(16)
    all_open = asyncio.Barrier(count)

    async def one() -> None:
        async with opening:
            client = await ExecServerClient.connect(target)
        async with client:
            await all_open.wait()
            await (await client.start(["/bin/true"], cwd="/tmp", inherit_env=False)).wait()

    await asyncio.gather(*(one() for _ in range(count)))
    return (time.perf_counter() - began) * 1000


def handshake_ms(count: int) -> float:
    """Both sides of one hybrid-IK handshake, in process (median ms)."""
    from codexexec.noise.hybrid_ik import HybridIKInitiator, HybridIKResponder, build_prologue
    from codexexec.noise.keys import StaticIdentity

    executor, harness = StaticIdentity.generate(), StaticIdentity.generate()
    samples = []
    for i in range(count):
        began = time.perf_counter()
        prologue = build_prologue("bench", "reg", f"stream-{i}")
        initiator = HybridIKInitiator(harness, executor.public_key, prologue)
        responder = HybridIKResponder(executor, prologue)
        responder.read_message1(initiator.write_message1(b"authorization"))
        message2, _ = responder.write_message2()
        initiator.read_message2(message2)
        samples.append(time.perf_counter() - began)
    return statistics.median(samples) * 1000


def cpu_seconds(pid: int) -> float:
    """User + system CPU time this process has used so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


TICKS = os.sysconf("SC_CLK_TCK")


def start_codex_executor(registry: str) -> subprocess.Popen[bytes] | None:
    """The real Codex executor registered with our rendezvous, if it is installed."""
    from tests.servers import start_codex_executor as start

    try:
        return start(registry, "bench-codex", TOKEN)
    except Exception:
        return None


async def until_reachable(target: str) -> None:
    for _ in range(100):
        try:
            async with await ExecServerClient.connect(target):
                return
        except Exception:
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{target} never became reachable")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--size-mib", type=int, default=256)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    (tmp / "tokens").write_text(TOKEN + "\n")
    env = {**os.environ, "CODEXEXEC_REGISTRY_TOKEN": TOKEN}
    os.environ["CODEXEXEC_REGISTRY_TOKEN"] = TOKEN
    executors: list[subprocess.Popen[bytes]] = []
    codex = None
    direct = spawn("serve", "--listen", "ws://127.0.0.1:0")
    rendezvous = spawn("rendezvous", "--token-file", str(tmp / "tokens"), "--db", str(tmp / "db"))
    try:
        assert direct.stdout is not None and rendezvous.stdout is not None
        url = direct.stdout.readline().decode().strip()
        registry = rendezvous.stdout.readline().decode().strip()
        os.environ["CODEXEXEC_ALLOW_CLEARTEXT_RELAY"] = "1"
        noise_executor = spawn("serve", "--remote", registry, "--environment-id", "bench", env=env)
        clear_executor = spawn(
            "serve",
            "--remote",
            registry,
            "--environment-id",
            "bench-clear",
            "--cleartext-relay",
            env=env,
        )
        executors += [noise_executor, clear_executor]
        codex = start_codex_executor(registry)
        targets = [url, f"bench-clear@{registry}", f"bench@{registry}"]
        # The processes that serve each target, for the CPU each spends per unit of work.
        servers = [[direct.pid], [rendezvous.pid, clear_executor.pid]]
        servers.append([rendezvous.pid, noise_executor.pid])
        if codex is not None:
            targets.append(f"bench-codex@{registry}")
            servers.append([rendezvous.pid, codex.pid])
        for target in targets:
            asyncio.run(until_reachable(target))
        size = args.size_mib * 1024 * 1024
        # (label, measure, its argument, the unit of work it repeats and how many times)
        measures = [
            (
                "round trip start→closed, /bin/true (median ms)",
                round_trip,
                args.count,
                "round trip",
                args.count + 10,  # round_trip's warm-up trips count too
            ),
            (f"stdout throughput, {args.size_mib} MiB (MB/s)", throughput, size, "", 0),
            (
                "128 concurrent streams, one command each (ms)",
                streams,
                128,
                "stream opened and run",
                128,
            ),
        ]
        cpu_rows = []
        columns = ["direct websocket", "relay, cleartext", "relay, Noise"]
        codex_column = ["Codex executor, Noise"] if codex is not None else []
        print("| measure | " + " | ".join([*columns, "Noise / cleartext", *codex_column]) + " |")
        print("|---|" + "---:|" * (len(columns) + 1 + len(codex_column)))
        for label, measure, arg, unit, units in measures:
            values, cells = [], []
            for target, pids in zip(targets, servers, strict=True):
                everyone = [*pids, os.getpid()]
                began = [cpu_seconds(pid) for pid in everyone]
                values.append(asyncio.run(measure(target, arg)))
                if units:
                    spent = [cpu_seconds(pid) - b for pid, b in zip(everyone, began, strict=True)]
                    cells.append(" + ".join(f"{s / units * 1e6:.0f}" for s in spent))
            row = f"| {label} | {values[0]:.2f} | {values[1]:.2f} | {values[2]:.2f} | "
            row += f"{values[2] / values[1]:.2f}× |"
            if codex is not None:
                row += f" {values[3]:.2f} |"
            print(row)
            if units:
                cpu_rows.append(f"| {unit} | " + " | ".join(cells) + " |")
        print(
            "\nCPU per unit of work, µs: the direct server, or the rendezvous + the executor; "
            f"+ this harness (/proc, {1000 // TICKS} ms ticks)\n"
        )
        print("| per | " + " | ".join([*columns, *codex_column]) + " |")
        print("|---|" + "---:|" * (len(columns) + len(codex_column)))
        print("\n".join(cpu_rows))
        print(f"\nhybrid-IK handshake, both sides in process: {handshake_ms(200):.2f} ms (median)")
    finally:
        for process in (direct, rendezvous, *executors, *([codex] if codex else [])):
            process.terminate()


if __name__ == "__main__":
    main()
