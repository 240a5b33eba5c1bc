"""Filesystem benchmark: codexexec's exec-server vs the real Codex 0.169.0 one, `fs/*`.

    .venv/bin/python bench/fs_bench.py [--size-mib 256] [--entries 50000]

Both servers are driven by the same Python websocket client (bench/run.py's) in one run
on the same files: a streamed read with fs/readBlock (1 MiB blocks, 4 in flight, and one
at a time; after a warm-up stream), fs/walk of a tree of N entries, and single-request
latencies. The client counts the blocks' bytes without decoding them, so its own base64
work does not blur the servers' figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import WORKSPACE_WRITE, Conn, open_conn, start  # noqa: E402

MiB = 1024 * 1024
BASE = Path("/var/tmp/cxfsb")


def make_files(size: int, entries: int) -> tuple[Path, Path]:
    BASE.mkdir(exist_ok=True)
    big = BASE / "big"
    if not big.exists() or big.stat().st_size != size:
        with open(big, "wb") as out:
            for _ in range(size // MiB):
                out.write(os.urandom(MiB))
    tree = BASE / "t"
    per_dir = 1000
    directories = max(1, entries // (per_dir + 1))
    marker = BASE / "t.entries"  # what the tree on disk was built for
    if not marker.exists() or marker.read_text() != str(entries):
        shutil.rmtree(tree, ignore_errors=True)
        made = 0
        for d in range(directories):
            folder = tree / f"d{d:03d}"
            folder.mkdir(parents=True)
            made += 1
            for f in range(min(per_dir, entries - made)):
                (folder / f"f{f:03d}").touch()
                made += 1
        marker.write_text(str(entries))
    return big, tree


async def stream(conn: Conn, path: Path, size: int, in_flight: int) -> float:
    """MB/s of reading ``path`` (``size`` bytes) through fs/open + fs/readBlock, with
    ``in_flight`` blocks requested ahead."""
    handle = f"b{in_flight}-{time.monotonic_ns() % 10**9}"
    await conn.call("fs/open", {"handleId": handle, "path": path.as_uri()})
    total: int = 0
    began = time.perf_counter()
    offset = 0
    pending: list[asyncio.Task[Any]] = []
    while True:
        while len(pending) < in_flight:
            params = {"handleId": handle, "offset": offset, "len": MiB}
            pending.append(asyncio.create_task(conn.call("fs/readBlock", params)))
            offset += MiB
        result = await pending.pop(0)
        chunk: str = result["chunk"]
        # Counted, not decoded: the client's own base64 work would blur the servers' figures.
        total += len(chunk) * 3 // 4 - chunk[-2:].count("=")
        if result["eof"]:
            break
    elapsed = time.perf_counter() - began
    for task in pending:
        await task
    await conn.call("fs/close", {"handleId": handle})
    assert total == size, (total, size)
    return total / elapsed / 1e6


async def walk(conn: Conn, tree: Path, runs: int) -> tuple[float, int, bool]:
    options = {
        "maxDepth": 64,
        "maxDirectories": 10_000,
        "maxEntries": 50_000,
        "followDirectorySymlinks": False,
    }
    samples = []
    result: dict[str, Any] = {}
    for _ in range(runs + 1):  # the first one warms the caches
        began = time.perf_counter()
        result = await conn.call("fs/walk", {"path": tree.as_uri(), "options": options})
        samples.append(time.perf_counter() - began)
    return statistics.median(samples[1:]) * 1000, len(result["entries"]), result["truncated"]


async def latency(conn: Conn, method: str, params: dict[str, Any], count: int) -> float:
    samples = []
    for _ in range(count + 3):
        began = time.perf_counter()
        await conn.call(method, params)
        samples.append(time.perf_counter() - began)
    return statistics.median(samples[3:]) * 1000


async def measure(big: Path, size: int, tree: Path, runs: int) -> dict[str, dict[str, Any]]:
    """Both servers up at once, each measure taken in turn on one then the other, so drift
    in the machine's speed during the run falls on both alike."""
    servers = {kind: start(kind) for kind in ("codexexec", "codex")}
    figures: dict[str, dict[str, Any]] = {kind: {} for kind in servers}
    try:
        conns = {kind: await open_conn(server.url) for kind, server in servers.items()}
        reads: dict[str, dict[int, list[float]]] = {kind: {4: [], 1: []} for kind in servers}
        for conn, _ in conns.values():
            await stream(conn, big, size, 4)  # warm-up: page cache, code paths, thread pools
        for _ in range(3):
            for in_flight in (4, 1):
                for kind, (conn, _) in conns.items():
                    reads[kind][in_flight].append(await stream(conn, big, size, in_flight))
        sandbox = {**WORKSPACE_WRITE, "cwd": BASE.as_uri(), "workspaceRoots": [BASE.as_uri()]}
        write = {"path": (BASE / "w").as_uri(), "dataBase64": "aGk=", "sandbox": sandbox}
        meta = {"path": big.as_uri(), "sandbox": None}
        for kind, (conn, task) in conns.items():
            f = figures[kind]
            f["read4"] = statistics.median(reads[kind][4])
            f["read1"] = statistics.median(reads[kind][1])
            f["peak_mb"] = servers[kind].rss_kib("VmHWM") / 1024
            f["walk_ms"], f["walk_entries"], f["walk_truncated"] = await walk(conn, tree, runs)
            f["meta_ms"] = await latency(conn, "fs/getMetadata", meta, 200)
            began = time.perf_counter()  # the first sandboxed operation starts the helper
            await conn.call("fs/writeFile", write)
            f["sandboxed_first_write_ms"] = (time.perf_counter() - began) * 1000
            f["sandboxed_write_ms"] = await latency(conn, "fs/writeFile", write, 20)
            await conn.ws.close()
            task.cancel()
        return figures
    finally:
        for server in servers.values():
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--entries", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=5, help="walks per server (median)")
    args = parser.parse_args()
    big, tree = make_files(args.size_mib * MiB, args.entries)
    size_bytes = args.size_mib * MiB
    figures = asyncio.run(measure(big, size_bytes, tree, args.runs))
    ours, theirs = figures["codexexec"], figures["codex"]
    size = f"{args.size_mib} MiB"
    rows = [
        (f"fs/readBlock stream, {size}, 4 blocks in flight (MB/s, median of 3)", "read4", "{:.0f}"),
        (
            f"fs/readBlock stream, {size}, one block at a time (MB/s, median of 3)",
            "read1",
            "{:.0f}",
        ),
        (f"fs/walk, {args.entries:,}-entry tree (median ms)", "walk_ms", "{:.0f}"),
        ("fs/getMetadata round trip (median ms)", "meta_ms", "{:.2f}"),
        ("first fs/writeFile, workspace-write sandbox (ms)", "sandboxed_first_write_ms", "{:.1f}"),
        ("fs/writeFile, workspace-write sandbox (median ms)", "sandboxed_write_ms", "{:.1f}"),
        (f"peak server RSS after the {size} stream (MB)", "peak_mb", "{:.1f}"),
    ]
    print("| measure | codexexec | Codex 0.169.0 | codexexec / Codex |")
    print("|---|---:|---:|---:|")
    for label, key, fmt in rows:
        ratio = ours[key] / theirs[key]
        print(f"| {label} | {fmt.format(ours[key])} | {fmt.format(theirs[key])} | {ratio:.2f}× |")
    print(
        f"\nfs/walk returned {ours['walk_entries']:,} entries (truncated: "
        f"{ours['walk_truncated']}) from codexexec and {theirs['walk_entries']:,} "
        f"(truncated: {theirs['walk_truncated']}) from Codex."
    )


if __name__ == "__main__":
    main()
