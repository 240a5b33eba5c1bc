"""Cluster benchmark: three rendezvous nodes on one PostgreSQL and one nats-server, side by
side with a single node, all on loopback, with real codexexec executors (Noise).

* round trip start→closed of `/bin/true` and stdout throughput, harness and executor on
  different nodes, against both on the one node, and how many cores each process keeps busy
  while the output streams;
* idle executor sockets held by one node and its memory per socket, with a load generator
  of lightweight fake executors (register, then hold the relay websocket open);
* time from SIGKILL of the executor's node to the executor serving again through another
  node (behind a TCP balancer that switches over at the kill).

.venv/bin/python bench/cluster_bench.py [--count 200] [--size-mib 256] [--idle 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from relay_bench import (  # noqa: E402
    TOKEN,
    cpu_seconds,
    round_trip,
    spawn,
    throughput,
    until_reachable,
)

from codexexec.client import ExecServerClient  # noqa: E402
from tests.nats_server import private_nats  # noqa: E402
from tests.pg import private_postgres  # noqa: E402
from tests.tcp_proxy import TcpProxy  # noqa: E402


class Node:
    def __init__(self, tmp: Path, name: str, db: str | None = None, bus: str | None = None) -> None:
        args = ["rendezvous", "--token-file", str(tmp / "tokens")]
        args += ["--db", db or str(tmp / f"{name}.sqlite3")]
        if bus:
            args += ["--bus", bus]
        self.process = spawn(*args)
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().decode().strip()
        assert self.url.startswith("http://"), self.url

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def rss_kib(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def executor(registry: str, env_id: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CODEXEXEC_REGISTRY_TOKEN": TOKEN}
    return spawn("serve", "--remote", registry, "--environment-id", env_id, env=env)


async def hold_idle_executors(node: Node, count: int) -> tuple[int, float]:
    """Register ``count`` environments and hold each one's relay socket open; returns the
    sockets the node holds (its /healthz) and its memory growth per socket in KiB."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    connector = aiohttp.TCPConnector(limit=0)  # each held websocket keeps its connection
    async with aiohttp.ClientSession(connector=connector) as http:
        # Settle the node's allocator with a few sockets before the baseline.
        sockets: list[aiohttp.ClientWebSocketResponse] = []

        async def one(index: int) -> None:
            async with http.post(
                f"{node.url}/cloud/environment/idle-{index}/register", headers=headers
            ) as response:
                url = (await response.json())["url"]
            sockets.append(await http.ws_connect(url, heartbeat=None, autoping=True))

        await asyncio.gather(*(one(i) for i in range(50)))
        await asyncio.sleep(1)
        before = node.rss_kib()
        opening = asyncio.Semaphore(64)

        async def limited(index: int) -> None:
            async with opening:
                await one(index)

        await asyncio.gather(*(limited(i) for i in range(50, count + 50)))
        await asyncio.sleep(2)
        after = node.rss_kib()
        async with http.get(f"{node.url}/healthz") as response:
            held = (await response.json())["executors_online"]
        for ws in sockets:
            await ws.close()
    return int(held), (after - before) / count


async def serving_after_kill(target: str, timeout: float = 60) -> float:
    began = time.perf_counter()
    while time.perf_counter() - began < timeout:
        try:
            async with asyncio.timeout(5):
                async with await ExecServerClient.connect(target) as client:
                    process = await client.start(["/bin/true"], cwd="/tmp", inherit_env=False)
                    await process.wait()
            return time.perf_counter() - began
        except Exception:
            await asyncio.sleep(0.05)
    raise RuntimeError("the executor never served again")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--idle", type=int, default=4000)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.environ["CODEXEXEC_REGISTRY_TOKEN"] = TOKEN
    tmp = Path(tempfile.mkdtemp())
    (tmp / "tokens").write_text(TOKEN + "\n")
    processes: list[subprocess.Popen[bytes]] = []
    nodes: list[Node] = []
    # nats-server shares the two cores with the five processes it serves: on one core it
    # does the same work for 40 % less CPU (docs/cluster.md, "Operating it").
    with private_postgres() as database, private_nats(cores=1) as bus:
        try:
            single = Node(tmp, "single")
            a, b, c = (Node(tmp, name, database.url, bus.url) for name in "abc")
            nodes += [single, a, b, c]
            processes.append(executor(single.url, "one-node"))
            processes.append(executor(a.url, "cross"))
            targets = {"one node": f"one-node@{single.url}", "across nodes": f"cross@{b.url}"}
            # Who works while output streams, in cores: each process's CPU time over the wall
            # time of the 256 MiB stream.
            workers = {
                "one node": {
                    "node": single.process.pid,
                    "executor": processes[0].pid,
                    "harness": os.getpid(),
                },
                "across nodes": {
                    "node A (executor's)": a.process.pid,
                    "node B (harness's)": b.process.pid,
                    "nats-server": bus.pid,
                    "executor": processes[1].pid,
                    "harness": os.getpid(),
                },
            }
            for target in targets.values():
                asyncio.run(until_reachable(target))
            size = args.size_mib * 1024 * 1024
            print("| measure | one node | across nodes (3 nodes, PostgreSQL, NATS) | ratio |")
            print("|---|---:|---:|---:|")
            busy: dict[str, str] = {}
            for label, measure, arg in (
                ("round trip start→closed, /bin/true (median ms)", round_trip, args.count),
                (f"stdout throughput, {args.size_mib} MiB (MB/s)", throughput, size),
            ):
                values = []
                for where, target in targets.items():
                    pids = workers[where]
                    cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
                    began = time.perf_counter()
                    values.append(asyncio.run(measure(target, arg)))
                    wall = time.perf_counter() - began
                    if measure is throughput:
                        cores = {n: (cpu_seconds(p) - cpu[n]) / wall for n, p in pids.items()}
                        busy[where] = ", ".join(f"{n} {c:.2f}" for n, c in cores.items())
                        busy[where] += f"; {sum(cores.values()):.2f} of {os.cpu_count()} cores"
                one, across = values
                print(f"| {label} | {one:.2f} | {across:.2f} | {across / one:.2f}× |")
            for node, label in ((single, "one node, no bus"), (c, "cluster node (bus)")):
                held, per_socket = asyncio.run(hold_idle_executors(node, args.idle))
                print(
                    f"| idle executor sockets held, {label} | {held} sockets, "
                    f"{per_socket:.1f} KiB each | | |"
                )
            print()
            for where, text in busy.items():
                print(f"cores busy while output streams, {where}: {text}")
            print()
            balancer = TcpProxy(b.port)
            processes.append(executor(balancer.http_url(), "failover"))
            target = f"failover@{c.url}"
            asyncio.run(until_reachable(target))
            balancer.upstream_port = a.port
            b.stop()
            print(
                f"\nSIGKILL of the executor's node to serving again through another: "
                f"{asyncio.run(serving_after_kill(target)):.2f} s"
            )
            balancer.stop()
        finally:
            for process in processes:
                process.terminate()
            for node in nodes:
                node.stop()
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


if __name__ == "__main__":
    main()
