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
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from codexexec.relay.frames import body_kind, data_frame, decode, encode, resume_frame
from codexexec.rendezvous import (
    RendezvousOptions,
    RunningRendezvous,
    Store,
    link_conn,
    start_rendezvous,
)
from codexexec.rendezvous.auth import TokenTable
from codexexec.rendezvous.bus_wire import BusUnavailable, LinkKind, encode_link, node_subject
from codexexec.rendezvous.link_conn import LinkConnection
from codexexec.rendezvous.links import RemoteHarness
from codexexec.rendezvous.options import (
    CLOSE_EXECUTOR_GONE,
    CLOSE_FRAMES_LOST,
    CLOSE_SUPERSEDED,
    RESET_EXECUTOR_GONE,
    RESET_HARNESS_GONE,
)
from tests.nats_server import PrivateNats, private_nats, private_nats_cluster
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


async def test_the_link_connection_delivers_in_order_and_reconnects() -> None:
    """link_conn.py against a real nats-server: messages to its subject arrive whole and in
    order (large ones too), a lost connection is reported and comes back by itself."""
    with private_nats() as server:
        got: list[bytes] = []
        lost: list[bool] = []

        async def deliver(payload: bytes) -> None:
            got.append(payload)

        conn = LinkConnection(server.url, "cx.links.a", "test", deliver, lambda: lost.append(True))
        await conn.start()
        sender = LinkConnection(server.url, "cx.links.b", "test-b", deliver, lambda: None)
        await sender.start()
        messages = [b"m%d" % i for i in range(200)] + [b"x" * 300_000]
        for message in messages:
            assert sender.publish("cx.links.a", message)
        await wait_for(lambda: len(got) == len(messages), 10)
        assert got == messages
        assert not sender.publish("cx.links.a", b"x" * (2 * 1024 * 1024))  # over max_payload
        assert not sender.publish("cx.links.a\r\nPUB cx.links.a 1", b"x")  # not one subject
        server.stop()
        await wait_for(lambda: lost, 10)
        assert not conn.connected and not conn.publish("cx.links.a", b"gone")
        server.start()
        await wait_for(lambda: conn.connected and sender.connected, 15)
        got.clear()
        assert sender.publish("cx.links.a", b"again")
        await wait_for(lambda: got, 10)
        assert got == [b"again"]
        await sender.close()
        await conn.close()


async def test_a_link_connection_refused_by_the_bus_says_why() -> None:
    with private_nats(user="rv", password="right") as server:
        url = server.url.replace("nats://", "nats://rv:wrong@")
        conn = LinkConnection(url, "cx.links", "test", _ignore, lambda: None)
        with pytest.raises(BusUnavailable) as refused:
            await conn.start()
        assert "Authorization Violation" in str(refused.value)
        assert "wrong" not in str(refused.value)
        good = LinkConnection(
            server.url.replace("nats://", "nats://rv:right@"),
            "cx.links",
            "t",
            _ignore,
            lambda: None,
        )
        await good.start()
        assert good.connected
        await good.close()


async def test_a_link_subscription_the_bus_refuses_fails_the_connection(tmp_path: Path) -> None:
    """A node whose NATS user may not subscribe to its link subject must not look healthy
    while it hears nothing."""
    config = tmp_path / "nats.conf"
    config.write_text(
        'authorization { users = [ { user: "rv", password: "pw", '
        'permissions: { subscribe: { deny: ["cx.denied"] } } } ] }\n'
    )
    with private_nats() as server:
        server.stop()
        server.extra_args = ["-c", str(config)]
        server.start()
        url = server.url.replace("nats://", "nats://rv:pw@")
        refused = LinkConnection(url, "cx.denied", "t", _ignore, lambda: None)
        with pytest.raises(BusUnavailable) as error:
            await refused.start()
        assert "Permissions Violation" in str(error.value)
        allowed = LinkConnection(url, "cx.allowed", "t", _ignore, lambda: None)
        await allowed.start()
        assert allowed.connected
        await allowed.close()


async def _ignore(payload: bytes) -> None:
    pass


async def test_the_link_connection_fails_over_to_a_server_the_nats_cluster_announced() -> None:
    with private_nats_cluster() as (first, second):
        got: list[bytes] = []

        async def deliver(payload: bytes) -> None:
            got.append(payload)

        lost: list[bool] = []
        conn = LinkConnection(first.url, "cx.failover", "t", deliver, lambda: lost.append(True))
        await conn.start()
        sender = LinkConnection(second.url, "cx.sender", "t", _ignore, lambda: None)
        await sender.start()
        await wait_for(lambda: len(conn._servers) == 2, 15)  # once the route is up
        first.stop()
        await wait_for(lambda: lost and conn.connected, 15)  # again, through the second
        await wait_for(lambda: sender.publish("cx.failover", b"m") and bool(got), 10)
        assert got[0] == b"m"
        await sender.close()
        await conn.close()


def test_publishing_as_the_bus_goes_away_fails_quietly_on_uvloop() -> None:
    """Nodes run on uvloop, whose transports raise once their socket is gone: a publish in
    that moment must say False (the link ends), not raise into the relay."""
    import uvloop

    async def scenario() -> None:
        with private_nats() as server:
            conn = LinkConnection(server.url, "cx.uv", "t", _ignore, lambda: None)
            await conn.start()
            server.stop()
            deadline = asyncio.get_running_loop().time() + 10
            while conn.connected and asyncio.get_running_loop().time() < deadline:
                conn.publish("cx.uv", b"x" * 1000)
                await asyncio.sleep(0)
            assert not conn.connected
            assert not conn.publish("cx.uv", b"x")
            await conn.close()

    uvloop.run(scenario())


def test_the_link_inbox_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flood on a node's link subject (more than any link's credit allows) is dropped, as
    NATS drops for a slow consumer; the link that misses a frame ends (test above)."""
    monkeypatch.setattr(link_conn, "PENDING_MESSAGES", 3)
    conn = LinkConnection("nats://127.0.0.1:1", "cx.links", "t", _ignore, lambda: None)
    for index in range(5):
        conn._received(b"m%d" % index)
    assert (len(conn._inbox), conn.dropped) == (3, 2)


async def test_a_bus_that_requires_tls_carries_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--bus tls://…`: the link connection upgrades to TLS as nats-py does, and checks the
    server's certificate (here from a private CA the process is told to trust)."""
    ca = _write_tls_files(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    with private_nats() as server:
        server.stop()
        server.require_tls(str(tmp_path / "server.pem"), str(tmp_path / "server.key"))
        server.start()
        got: list[bytes] = []

        async def deliver(payload: bytes) -> None:
            got.append(payload)

        conn = LinkConnection(server.url, "cx.tls", "t", deliver, lambda: None)
        await conn.start()
        assert conn.publish("cx.tls", b"over tls")
        await wait_for(lambda: got, 10)
        assert got == [b"over tls"]
        await conn.close()
        monkeypatch.delenv("SSL_CERT_FILE")
        untrusting = LinkConnection(server.url, "cx.tls", "t", deliver, lambda: None)
        with pytest.raises(BusUnavailable):
            await untrusting.start()


def _write_tls_files(directory: Path) -> Path:
    """A CA, and a certificate for 127.0.0.1 it signed; returns the CA's file."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def certificate(
        subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: Any, ca: bool
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca_cert = certificate("test CA", ca_key, "test CA", ca_key, True)
    server_cert = certificate("127.0.0.1", server_key, "test CA", ca_key, False)
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
    (directory / "server.pem").write_bytes(server_cert.public_bytes(pem))
    (directory / "server.key").write_bytes(
        server_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return directory / "ca.pem"


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
