"""Connections cut again and again while a command streams output — straight to the
server and through the rendezvous — and the client resumes each time: every line arrives
exactly once, in order. 100 cuts per run (80 direct, 20 through the relay).

Longer runs: CODEXEXEC_CUTS_DIRECT=1000 CODEXEXEC_CUTS_RELAY=200.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from codexexec.client import Output
from codexexec.client.events import Exited
from codexexec.environments.config import RegistrySpec, WebSocketSpec
from tests.tcp_proxy import TcpProxy
from tests.test_environments import one, port_of, until
from tests.test_relay_e2e import TOKEN, Rendezvous, start_executor, stop

DIRECT_CUTS = int(os.environ.get("CODEXEXEC_CUTS_DIRECT", "80"))
RELAY_CUTS = int(os.environ.get("CODEXEXEC_CUTS_RELAY", "20"))


async def _stream_through_cuts(environment: object, proxy: TcpProxy, cuts: int, stop: Path) -> None:
    client = await environment.client()  # type: ignore[attr-defined]
    process = await client.start(
        ["sh", "-c", f'i=0; while [ ! -e {stop} ]; do i=$((i+1)); echo "$i"; sleep 0.003; done'],
        cwd="/tmp",
    )
    output = bytearray()
    exit_codes: list[int] = []

    async def collect() -> None:
        async for event in process.events():
            if isinstance(event, Output):
                output.extend(event.data)
            elif isinstance(event, Exited):
                exit_codes.append(event.exit_code)

    collecting = asyncio.create_task(collect())
    for _ in range(cuts):
        seen = output.count(b"\n")
        await until(lambda seen=seen: output.count(b"\n") > seen + 5, timeout=30)
        proxy.cut()
    stop.touch()
    await asyncio.wait_for(collecting, 60)
    lines = output.decode().split("\n")
    assert lines[-1] == ""
    numbers = [int(line) for line in lines[:-1]]
    assert numbers == list(range(1, len(numbers) + 1))  # nothing lost, doubled or garbled
    assert exit_codes == [0]
    assert client.recoveries == cuts


async def test_cuts_straight_to_the_server(
    codexexec_server: object, cleanup: list[object], tmp_path: Path
) -> None:
    proxy = TcpProxy(port_of(codexexec_server))  # type: ignore[arg-type]
    try:
        environment = await one(WebSocketSpec("devbox", proxy.ws_url()), cleanup)  # type: ignore[arg-type]
        await _stream_through_cuts(environment, proxy, DIRECT_CUTS, tmp_path / "stop")
    finally:
        proxy.stop()


@pytest.fixture
def rendezvous(tmp_path: Path) -> Iterator[Rendezvous]:
    rv = Rendezvous(tmp_path)
    yield rv
    rv.kill()


async def test_cuts_through_the_relay(
    rendezvous: Rendezvous,
    cleanup: list[object],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CODEXEXEC_REGISTRY_TOKEN", TOKEN)
    executor = start_executor("serve", "--remote", rendezvous.url, "--environment-id", "devbox")
    # The harness reaches the rendezvous (HTTP and its relay socket) through the proxy; the
    # executor's own socket is not cut.
    proxy = TcpProxy(rendezvous.port)
    try:
        spec = RegistrySpec("devbox", proxy.http_url(), "devbox", "CODEXEXEC_REGISTRY_TOKEN")
        environment = await one(spec, cleanup)  # type: ignore[arg-type]
        await _stream_through_cuts(environment, proxy, RELAY_CUTS, tmp_path / "stop")
    finally:
        proxy.stop()
        stop(executor)
