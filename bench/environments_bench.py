"""Environment lifecycle figures: what connecting costs per kind, what the background start
saves the first command, and how long a dropped connection takes to come back.

.venv/bin/python bench/environments_bench.py [--runs 10]

Kinds: websocket (codexexec serve on loopback), stdio (`codexexec serve --listen stdio`
spawned per connection), registry (codexexec serve --remote through codexexec rendezvous,
Noise). Recovery: a TCP proxy in front of the server or of the executor's rendezvous link
cuts every connection; the figure is cut → the next call answered on the resumed session.
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

from codexexec.client.recovering import RecoveringClient  # noqa: E402
from codexexec.environments.config import (  # noqa: E402
    EnvironmentsConfig,
    EnvironmentSpec,
    RegistrySpec,
    StdioSpec,
    WebSocketSpec,
)
from codexexec.environments.manager import EnvironmentManager  # noqa: E402
from tests.tcp_proxy import TcpProxy  # noqa: E402

TOKEN = "bench-token"


def spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "codexexec", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd="/tmp",
    )


def ms(samples: list[float]) -> str:
    return f"median {statistics.median(samples) * 1000:7.1f} ms  (min {min(samples) * 1000:.1f})"


async def first_command(
    spec: EnvironmentSpec, runs: int, *, head_start: float
) -> tuple[list[float], list[float]]:
    """Seconds the first caller waits for the client, and until `true` has run too."""
    waits, totals = [], []
    for _ in range(runs):
        manager = EnvironmentManager.from_config(EnvironmentsConfig(environments=(spec,)))
        environment = manager.get(spec.id)
        assert environment is not None
        await asyncio.sleep(head_start)  # what the harness did meanwhile
        started = time.perf_counter()
        client = await environment.client()
        waits.append(time.perf_counter() - started)
        process = await client.start(["true"], cwd="/tmp")
        await process.wait()
        totals.append(time.perf_counter() - started)
        await manager.aclose()
    return waits, totals


async def recovery(spec: EnvironmentSpec, proxy: TcpProxy, runs: int) -> list[float]:
    manager = EnvironmentManager.from_config(EnvironmentsConfig(environments=(spec,)))
    environment = manager.get(spec.id)
    assert environment is not None
    client = await environment.client()
    assert isinstance(client, RecoveringClient)
    samples = []
    for _ in range(runs):
        before = client.recoveries
        started = time.perf_counter()
        proxy.cut()
        while client.recoveries == before:
            await client.call("environment/info", None)
        samples.append(time.perf_counter() - started)
        await asyncio.sleep(0.2)
    await manager.aclose()
    return samples


async def main(runs: int) -> None:
    server = spawn("serve", "--listen", "ws://127.0.0.1:0")
    assert server.stdout is not None
    url = server.stdout.readline().decode().strip()
    port = int(url.rsplit(":", 1)[1])
    home = Path(tempfile.mkdtemp(prefix="envbench-"))
    (home / "tokens").write_text(f"{TOKEN}\n")
    rendezvous = spawn(
        "rendezvous", "--listen", "http://127.0.0.1:0", "--token-file", str(home / "tokens")
    )
    assert rendezvous.stdout is not None
    registry = rendezvous.stdout.readline().decode().strip()
    link = TcpProxy(int(registry.rsplit(":", 1)[1]))
    env = {**os.environ, "CODEXEXEC_REGISTRY_TOKEN": TOKEN}
    os.environ["CODEXEXEC_REGISTRY_TOKEN"] = TOKEN
    executor = spawn("serve", "--remote", link.http_url(), "--environment-id", "devbox", env=env)
    assert executor.stderr is not None
    executor.stderr.readline()  # "serving environment `devbox` through the relay"
    proxy = TcpProxy(port)
    specs: list[EnvironmentSpec] = [
        WebSocketSpec("box", url),
        StdioSpec("ssh-like", sys.executable, ("-m", "codexexec", "serve", "--listen", "stdio")),
        RegistrySpec("devbox", registry, "devbox"),
    ]
    try:
        print(f"first caller: wait for the client / until `true` ran, {runs} runs")
        for spec in specs:
            for head_start in (0.0, 1.0) if spec.kind != "stdio" else (0.0,):
                waits, totals = await first_command(spec, runs, head_start=head_start)
                when = "at once" if not head_start else "1 s after registration"
                print(f"  {spec.kind:<9} {when:<23} {ms(waits)} / {ms(totals)}")
        print("recovery: cut -> next call answered on the resumed session")
        ws = await recovery(WebSocketSpec("box", proxy.ws_url()), proxy, runs)
        print(f"  websocket                  {ms(ws)}")
        relayed = await recovery(RegistrySpec("devbox", registry, "devbox"), link, min(runs, 3))
        print(f"  registry (executor link)   {ms(relayed)}")
    finally:
        proxy.stop()
        link.stop()
        for process in (executor, rendezvous, server):
            process.terminate()
            process.wait(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    asyncio.run(main(parser.parse_args().runs))
