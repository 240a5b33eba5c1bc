"""Rendezvous nodes joined by a real NATS server (`--bus`), in one process.

Each node is a real rendezvous on its own loopback port; the nodes share one registry store
(as nodes on one PostgreSQL do) and a private `nats-server`. Executor and harness sockets are
real websockets, and every check is what the far end receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from nats.aio.msg import Msg
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from codexexec.relay.frames import body_kind, data_frame, decode, encode, resume_frame
from codexexec.rendezvous import RendezvousOptions, RunningRendezvous, Store, start_rendezvous
from codexexec.rendezvous.auth import TokenTable
from codexexec.rendezvous.bus import _write_now
from codexexec.rendezvous.bus_wire import LinkKind, encode_link, node_subject
from codexexec.rendezvous.links import RemoteHarness
from codexexec.rendezvous.options import (
    CLOSE_EXECUTOR_GONE,
    CLOSE_FRAMES_LOST,
    CLOSE_SUPERSEDED,
    RESET_EXECUTOR_GONE,
    RESET_HARNESS_GONE,
)
from tests.nats_server import PrivateNats, private_nats
from tests.test_rendezvous import (
    EXECUTOR,
    HARNESS,
    S1,
    S2,
    TOKEN_FILE,
    assert_silent,
    open_ws,
    recv_frame,
    status_of,
    wait_for,
)


class Cluster:
    def __init__(self, nodes: list[RunningRendezvous], bus: PrivateNats) -> None:
        self.nodes = nodes
        self.bus = bus
        self.http = aiohttp.ClientSession()

    async def post(self, node: int, path: str, token: str, body: Any = None) -> tuple[int, Any]:
        data = b"" if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        async with self.http.post(self.nodes[node].url + path, data=data, headers=headers) as r:
            return r.status, json.loads(await r.text() or "null")

    async def register(self, node: int, env: str = "env-1") -> dict[str, Any]:
        status, body = await self.post(node, f"/cloud/environment/{env}/register", EXECUTOR)
        assert status == 200, body
        return dict(body)

    async def connect(self, node: int, env: str = "env-1") -> tuple[int, Any]:
        return await self.post(node, f"/cloud/environment/{env}/connect", HARNESS)

    async def executor(self, node: int, env: str = "env-1") -> ClientConnection:
        """A legacy (cleartext) executor socket on ``node``, found by every node."""
        ws = await open_ws((await self.register(node, env))["url"])
        for other in range(len(self.nodes)):
            await wait_for_status(self, other, env, 200)
        return ws

    async def harness(self, node: int, env: str = "env-1") -> ClientConnection:
        status, bundle = await self.connect(node, env)
        assert status == 200, bundle
        return await open_ws(bundle["url"])

    async def health(self, node: int) -> tuple[int, Any]:
        async with self.http.get(self.nodes[node].url + "/healthz") as response:
            return response.status, await response.json()


async def wait_for_status(cluster: Cluster, node: int, env: str, status: int) -> Any:
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        got, body = await cluster.connect(node, env)
        if got == status:
            return body
        assert asyncio.get_running_loop().time() < deadline, (got, body)
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running_cluster(
    tmp_path: Path, count: int = 2, **tunables: Any
) -> AsyncIterator[Cluster]:
    (tmp_path / "tokens").write_text(TOKEN_FILE)
    store = Store(tmp_path / "rendezvous.sqlite3")
    with private_nats() as bus:
        options = RendezvousOptions(heartbeat=None, close_timeout=2.0, bus=bus.url, **tunables)
        nodes: list[RunningRendezvous] = []
        cluster = Cluster(nodes, bus)
        try:
            for _ in range(count):
                tokens = TokenTable.load(tmp_path / "tokens")
                nodes.append(await start_rendezvous("http://127.0.0.1:0", tokens, store, options))
            yield cluster
        finally:
            await cluster.http.close()
            for node in nodes:
                await node.stop()
            store.close()


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running_cluster(tmp_path) as running:
        yield running


async def closed_with(ws: ClientConnection) -> int | None:
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), 10)
    return ws.close_code


async def test_frames_cross_nodes_byte_for_byte(cluster: Cluster) -> None:
    executor = await cluster.executor(0)
    harness = await cluster.harness(1)
    opening = encode(data_frame(S1, 0, b'{"id":1,"method":"initialize","params":{}}'))
    await harness.send(opening)
    assert await recv_frame(executor) == opening
    for seq in range(1, 200):  # more than a credit window, in order
        await executor.send(encode(data_frame(S1, seq, b"x" * seq)))
    for seq in range(1, 200):
        assert await recv_frame(harness) == encode(data_frame(S1, seq, b"x" * seq))
    big = encode(data_frame(S1, 200, b"y" * 200_000))
    await executor.send(big)
    assert await recv_frame(harness) == big
    await harness.close()
    reset = decode(await recv_frame(executor))  # the executor hears the harness went
    assert body_kind(reset) == "reset" and reset.stream_id == S1
    assert reset.reset.reason == RESET_HARNESS_GONE
    await executor.close()


async def test_link_messages_go_straight_to_the_bus_and_keep_their_order() -> None:
    """bus.py writes a link message to the NATS connection at once instead of through
    nats-py's flusher task; this checks the installed nats-py still has the shape that relies
    on, and that messages keep their order whichever way each one goes."""
    with private_nats() as server:
        nc = await nats.connect(server.url)
        got: list[bytes] = []
        all_in = asyncio.Event()

        async def received(msg: Msg) -> None:
            got.append(msg.data)
            if len(got) == 3:
                all_in.set()

        await nc.subscribe("cx.order", cb=received)
        await nc.flush()
        await nc.publish("cx.order", b"first")  # queued for nats-py's flusher...
        assert not _write_now(nc, "cx.order", b"second")  # ...so this one may not overtake it
        await nc.publish("cx.order", b"second")
        await nc.flush()
        assert _write_now(nc, "cx.order", b"third")
        await asyncio.wait_for(all_in.wait(), 5)
        assert got == [b"first", b"second", b"third"]
        assert not _write_now(nc, "cx order", b"x")  # not one subject
        await nc.close()


async def test_environment_offline_exactly_when_no_node_holds_the_executor(
    cluster: Cluster,
) -> None:
    registration = await cluster.register(0)
    for node in (0, 1):
        status, body = await cluster.connect(node)
        assert (status, body["error"]["code"]) == (409, "environment_offline")
    executor = await open_ws(registration["url"])
    for node in (0, 1):
        await wait_for_status(cluster, node, "env-1", 200)
    await executor.close()
    for node in (0, 1):
        body = await wait_for_status(cluster, node, "env-1", 409)
        assert body["error"]["code"] == "environment_offline"


async def test_a_registration_on_another_node_supersedes_the_socket(cluster: Cluster) -> None:
    executor = await cluster.executor(0)
    harness = await cluster.harness(1)
    await harness.send(encode(resume_frame(S1)))
    await recv_frame(executor)
    await cluster.register(1)  # the executor registered again, through the other node
    assert await closed_with(executor) == CLOSE_SUPERSEDED
    reset = decode(await recv_frame(harness))
    assert (reset.stream_id, reset.reset.reason) == (S1, RESET_EXECUTOR_GONE)
    assert await closed_with(harness) == CLOSE_EXECUTOR_GONE


async def test_an_executor_reconnecting_through_another_node_replaces_the_old_socket(
    cluster: Cluster,
) -> None:
    registration = await cluster.register(0)
    old = await open_ws(registration["url"])
    await wait_for_status(cluster, 1, "env-1", 200)
    # The same signed URL, through node 1 (a balancer sent it there).
    url = registration["url"].replace(
        cluster.nodes[0].url.removeprefix("http://"), cluster.nodes[1].url.removeprefix("http://")
    )
    new = await open_ws(url)
    assert await closed_with(old) is not None
    harness = await cluster.harness(0)
    await harness.send(encode(resume_frame(S2)))
    assert await recv_frame(new) == encode(resume_frame(S2))
    await harness.close()
    await new.close()


async def test_executor_gone_resets_streams_of_harnesses_on_other_nodes(cluster: Cluster) -> None:
    executor = await cluster.executor(0)
    harness = await cluster.harness(1)
    await harness.send(encode(resume_frame(S1)))
    await recv_frame(executor)
    await executor.close()
    reset = decode(await recv_frame(harness))
    assert (reset.stream_id, reset.reset.reason) == (S1, RESET_EXECUTOR_GONE)
    assert await closed_with(harness) == CLOSE_EXECUTOR_GONE


async def test_stream_ownership_and_socket_limits_hold_across_nodes(tmp_path: Path) -> None:
    async with running_cluster(tmp_path, count=3, max_harness_sockets=2) as cluster:
        executor = await cluster.executor(0)
        first = await cluster.harness(1)
        second = await cluster.harness(2)
        await first.send(encode(resume_frame(S1)))
        await recv_frame(executor)
        await second.send(encode(resume_frame(S1)))  # a stream another harness holds
        refused = decode(await recv_frame(second))
        assert (refused.stream_id, refused.reset.reason) == (S1, "rendezvous_stream_in_use")
        await assert_silent(executor)
        status, bundle = await cluster.connect(2)
        assert status == 200
        with pytest.raises(InvalidStatus) as error:
            await open_ws(bundle["url"])
        assert status_of(error.value) == 429
        for ws in (first, second, executor):
            await ws.close()


async def test_a_frame_lost_between_nodes_ends_the_stream_not_silently(cluster: Cluster) -> None:
    import nats

    executor = await cluster.executor(0)
    harness = await cluster.harness(1)
    await harness.send(encode(resume_frame(S1)))
    await recv_frame(executor)
    [link] = cluster.nodes[0].state.relay.bus.links.values()  # type: ignore[union-attr]
    assert isinstance(link, RemoteHarness)
    # A frame numbered past the next one: the one before it was lost on the bus.
    intruder = await nats.connect(cluster.bus.url)
    node = cluster.nodes[0].state.relay.node_id
    frame = encode(data_frame(S1, 1, b"after a gap"))
    await intruder.publish(node_subject(node), encode_link(LinkKind.FRAME, link.id, 5, 0, frame))
    await intruder.flush()
    await intruder.close()
    reset = decode(await recv_frame(executor))
    assert (reset.stream_id, reset.reset.reason) == (S1, RESET_HARNESS_GONE)
    assert await closed_with(harness) == CLOSE_FRAMES_LOST
    await assert_silent(executor)  # the frame after the gap was never passed on
    await executor.close()


async def test_a_node_that_dies_ends_its_links_on_the_others(tmp_path: Path) -> None:
    async with running_cluster(tmp_path, bus_heartbeat=0.1, bus_node_timeout=1.0) as cluster:
        executor = await cluster.executor(0)
        harness = await cluster.harness(1)
        await harness.send(encode(resume_frame(S1)))
        await recv_frame(executor)
        bus = cluster.nodes[0].state.relay.bus
        assert bus is not None
        # Node 0 goes silent without a word: its heartbeats stop and its links say nothing.
        assert bus._heartbeat is not None
        bus._heartbeat.cancel()
        for link in list(bus.links.values()):
            link.closed = True
        started = asyncio.get_running_loop().time()
        assert await closed_with(harness) == CLOSE_EXECUTOR_GONE
        assert asyncio.get_running_loop().time() - started < 5
        await executor.close()


async def test_a_bus_outage_gives_clear_errors_and_the_cluster_recovers(cluster: Cluster) -> None:
    executor = await cluster.executor(0)
    harness = await cluster.harness(1)
    await harness.send(encode(resume_frame(S1)))
    await recv_frame(executor)
    cluster.bus.stop()
    assert await closed_with(harness) == CLOSE_EXECUTOR_GONE  # not left hanging
    reset = decode(await recv_frame(executor))  # nor is the executor's stream
    assert (reset.stream_id, reset.reset.reason) == (S1, RESET_HARNESS_GONE)
    status, body = await cluster.connect(1)
    assert (status, body["error"]["code"]) == (503, "bus_unavailable")
    status, health = await cluster.health(1)
    assert status == 503 and health["bus"].startswith("unavailable")
    # A harness on the executor's own node still gets through.
    local = await cluster.harness(0)
    await local.send(encode(resume_frame(S2)))
    assert await recv_frame(executor) == encode(resume_frame(S2))
    cluster.bus.start()
    await wait_for_status(cluster, 1, "env-1", 200)
    status, health = await cluster.health(1)
    assert status == 200 and health["bus"] == "ok"
    again = await cluster.harness(1)
    await again.send(encode(resume_frame(S1)))
    assert await recv_frame(executor) == encode(resume_frame(S1))
    for ws in (again, local, executor):
        await ws.close()


async def test_a_harness_node_stopping_resets_its_streams_at_the_executor(tmp_path: Path) -> None:
    async with running_cluster(tmp_path) as cluster:
        executor = await cluster.executor(0)
        harness = await cluster.harness(1)
        await harness.send(encode(resume_frame(S1)))
        await recv_frame(executor)
        await cluster.nodes[1].stop()
        reset = decode(await recv_frame(executor))
        assert (reset.stream_id, reset.reset.reason) == (S1, RESET_HARNESS_GONE)
        await wait_for(lambda: not cluster.nodes[0].state.relay.bus.links)  # type: ignore[union-attr]
        await executor.close()
        cluster.nodes.pop()  # stopped already


async def test_a_draining_node_sends_its_executor_elsewhere_and_ends_remote_streams(
    tmp_path: Path,
) -> None:
    async with running_cluster(tmp_path) as cluster:
        executor = await cluster.executor(0)
        harness = await cluster.harness(1)
        await harness.send(encode(resume_frame(S1)))
        await recv_frame(executor)
        started = asyncio.get_running_loop().time()
        await cluster.nodes[0].stop()  # what SIGTERM does
        assert await closed_with(executor) == 1001  # going away: reconnect (elsewhere)
        reset = decode(await recv_frame(harness))
        assert (reset.stream_id, reset.reset.reason) == (S1, RESET_EXECUTOR_GONE)
        assert await closed_with(harness) == CLOSE_EXECUTOR_GONE
        assert asyncio.get_running_loop().time() - started < 10
        status, body = await cluster.connect(1)
        assert (status, body["error"]["code"]) == (409, "environment_offline")
        cluster.nodes.pop(0)
