"""Side-by-side benchmark: codexexec's exec-server vs the real Codex 0.169.0 one.

    .venv/bin/python bench/run.py [--quick]

Both servers are driven by the same Python websocket client in the same run, so the
client's own cost is shared; the table reports each figure and codexexec/Codex.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import codex_binary  # noqa: E402

decode = msgspec.json.Decoder().decode
encode = msgspec.json.Encoder().encode


@dataclass
class Server:
    kind: str
    process: subprocess.Popen[bytes]
    url: str
    home: str | None = None

    def rss_kib(self, field_name: str) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        if self.home:
            subprocess.run(["rm", "-rf", self.home], check=False)


def start(kind: str) -> Server:
    env = dict(os.environ)
    home = None
    if kind == "codexexec":
        argv = [sys.executable, "-m", "codexexec", "serve", "--listen", "ws://127.0.0.1:0"]
    else:
        home = tempfile.mkdtemp(prefix="codex-bench-", dir="/var/tmp")
        env["CODEX_HOME"] = home
        argv = [codex_binary(), "exec-server", "--listen", "ws://127.0.0.1:0"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env, cwd="/tmp")
    assert process.stdout is not None
    url = process.stdout.readline().decode().strip()
    return Server(kind, process, url, home)


@dataclass
class Conn:
    ws: ClientConnection
    next_id: int = 0
    pending: dict[int, asyncio.Future[Any]] = field(default_factory=dict)
    closed: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)

    async def pump(self) -> None:
        async for raw in self.ws:
            message = decode(raw)
            if "id" in message:
                self.pending.pop(message["id"]).set_result(message)
                continue
            params = message["params"]
            method = message["method"]
            if method == "process/output":
                process_id = params["processId"]
                self.received[process_id] = self.received.get(process_id, 0) + len(
                    base64.b64decode(params["chunk"])
                )
            elif method == "process/closed":
                future = self.closed.get(params["processId"])
                if future is not None and not future.done():
                    future.set_result(None)

    async def call(self, method: str, params: Any) -> Any:
        self.next_id += 1
        future = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = future
        await self.ws.send(encode({"id": self.next_id, "method": method, "params": params}))
        reply = await future
        assert "result" in reply, reply
        return reply["result"]

    async def run(self, process_id: str, argv: list[str], sandbox: Any = None) -> None:
        self.closed[process_id] = asyncio.get_running_loop().create_future()
        params = {
            "processId": process_id,
            "argv": argv,
            "cwd": "file:///tmp",
            "env": {"PATH": "/usr/bin:/bin"},
            "tty": False,
            "arg0": None,
        }
        if sandbox is not None:
            params["sandbox"] = sandbox
        await self.call("process/start", params)
        await self.closed[process_id]


async def open_conn(url: str) -> tuple[Conn, asyncio.Task[None]]:
    ws = await connect(url, max_size=None, compression=None)
    conn = Conn(ws)
    task = asyncio.create_task(conn.pump())
    await conn.call("initialize", {"clientName": "bench"})
    await ws.send(encode({"method": "initialized", "params": {}}))
    return conn, task


# workspace-write on /tmp, as `codexexec exec` sends it by default.
WORKSPACE_WRITE = {
    "permissions": {
        "type": "managed",
        "network": "restricted",
        "file_system": {
            "type": "restricted",
            "entries": [
                {"path": {"type": "special", "value": {"kind": "root"}}, "access": "read"},
                {
                    "path": {"type": "special", "value": {"kind": "project_roots"}},
                    "access": "write",
                },
                {"path": {"type": "special", "value": {"kind": "slash_tmp"}}, "access": "write"},
            ],
        },
    },
    "cwd": "file:///tmp",
    "workspaceRoots": ["file:///tmp"],
    "windowsSandboxLevel": "disabled",
}


async def round_trip(url: str, count: int, sandbox: Any = None) -> float:
    conn, task = await open_conn(url)
    for i in range(10):
        await conn.run(f"warm-{i}", ["/bin/true"], sandbox)
    samples = []
    for i in range(count):
        began = time.perf_counter()
        await conn.run(f"rt-{i}", ["/bin/true"], sandbox)
        samples.append(time.perf_counter() - began)
    await conn.ws.close()
    task.cancel()
    return statistics.median(samples) * 1000


async def throughput(url: str, size: int) -> tuple[float, bool]:
    conn, task = await open_conn(url)
    began = time.perf_counter()
    await conn.run("big", ["head", "-c", str(size), "/dev/zero"])
    elapsed = time.perf_counter() - began
    complete = conn.received.get("big", 0) == size
    await conn.ws.close()
    task.cancel()
    return size / elapsed / 1e6, complete


async def concurrent(url: str, processes: int, size: int) -> tuple[float, bool]:
    conn, task = await open_conn(url)
    began = time.perf_counter()
    await asyncio.gather(
        *(conn.run(f"c-{i}", ["head", "-c", str(size), "/dev/urandom"]) for i in range(processes))
    )
    elapsed = time.perf_counter() - began
    complete = all(conn.received.get(f"c-{i}", 0) == size for i in range(processes))
    await conn.ws.close()
    task.cancel()
    return elapsed * 1000, complete


def cli_start_ms(runs: int) -> float:
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "codexexec", "--help"], capture_output=True, check=True
        )
        samples.append(time.perf_counter() - began)
    return statistics.median(samples) * 1000


async def measure(kind: str, quick: bool) -> dict[str, Any]:
    server = start(kind)
    try:
        await asyncio.sleep(0.5)
        conn, task = await open_conn(server.url)
        await asyncio.sleep(0.5)
        idle = server.rss_kib("VmRSS")
        await conn.ws.close()
        task.cancel()
        rt = await round_trip(server.url, 50 if quick else 200)
        rt_sandboxed = await round_trip(server.url, 50 if quick else 200, WORKSPACE_WRITE)
        size = (64 if quick else 256) * 1024 * 1024
        mbps, complete = await throughput(server.url, size)
        peak = server.rss_kib("VmHWM")
        conc_ms, conc_complete = await concurrent(server.url, 64, 1024 * 1024)
        return {
            "idle_mb": idle / 1024,
            "rt_ms": rt,
            "rt_sandboxed_ms": rt_sandboxed,
            "sandbox_overhead_ms": rt_sandboxed - rt,
            "mbps": mbps,
            "complete": complete,
            "peak_mb": peak / 1024,
            "conc_ms": conc_ms,
            "conc_complete": conc_complete,
        }
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer samples, 64 MiB stream")
    args = parser.parse_args()
    ours = asyncio.run(measure("codexexec", args.quick))
    theirs = asyncio.run(measure("codex", args.quick))
    stream = "64 MiB" if args.quick else "256 MiB"
    rows = [
        ("round trip start→closed, /bin/true (median ms)", "rt_ms", "{:.2f}"),
        (
            "same, sandboxed (workspace-write, bwrap + seccomp) (median ms)",
            "rt_sandboxed_ms",
            "{:.2f}",
        ),
        (
            "sandbox overhead: sandboxed − unsandboxed round trip (ms)",
            "sandbox_overhead_ms",
            "{:.2f}",
        ),
        (f"stdout throughput, {stream} (MB/s)", "mbps", "{:.0f}"),
        ("64 processes × 1 MiB concurrently (ms)", "conc_ms", "{:.0f}"),
        ("idle server RSS after initialize (MB)", "idle_mb", "{:.1f}"),
        (f"peak server RSS after {stream} stream (MB)", "peak_mb", "{:.1f}"),
    ]
    print("| measure | codexexec | Codex 0.169.0 | codexexec / Codex |")
    print("|---|---:|---:|---:|")
    for label, key, fmt in rows:
        print(
            f"| {label} | {fmt.format(ours[key])} | {fmt.format(theirs[key])} | "
            f"{ours[key] / theirs[key]:.2f}× |"
        )
    lost = not (ours["complete"] and ours["conc_complete"])
    print(
        f"| output bytes lost (stream + 64×1 MiB) | {'some' if lost else 0} | "
        f"{0 if theirs['complete'] and theirs['conc_complete'] else 'some'} | |"
    )
    print(f"\ncodexexec CLI start-up (`codexexec --help`, median of 10): {cli_start_ms(10):.0f} ms")


if __name__ == "__main__":
    main()
