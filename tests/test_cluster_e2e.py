"""A cluster as operators run it: `codexexec rendezvous --db postgresql://… --bus nats://…`
nodes as separate processes, a private PostgreSQL and nats-server, executors and harnesses
on different nodes — codexexec's and the real Codex 0.169.0's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.nats_server import PrivateNats, private_nats
from tests.pg import PrivatePostgres, private_postgres
from tests.servers import start_codex_executor
from tests.tcp_proxy import TcpProxy
from tests.test_relay_e2e import TOKEN, Rendezvous, cx, start_executor, stop


@pytest.fixture(scope="module")
def engines() -> Iterator[tuple[PrivatePostgres, PrivateNats]]:
    with private_postgres() as database, private_nats() as bus:
        yield database, bus


def node(tmp: Path, engines: tuple[PrivatePostgres, PrivateNats], port: int = 0) -> Rendezvous:
    database, bus = engines
    return Rendezvous(tmp, port=port, db=database.url, bus=bus.url)


def until_online(registry: str, env: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = cx("exec", "--registry", registry, "--env", env, "--", "true")
        if result.returncode == 0:
            return
        assert time.monotonic() < deadline, result.stderr
        time.sleep(0.3)


def test_exec_with_executor_and_harness_on_different_nodes(
    tmp_path: Path, engines: tuple[PrivatePostgres, PrivateNats]
) -> None:
    a, b = node(tmp_path / "a", engines), node(tmp_path / "b", engines)
    executor = start_executor("serve", "--remote", a.url, "--environment-id", "cross")
    try:
        until_online(b.url, "cross")
        result = cx(
            "exec", "--registry", b.url, "--env", "cross", "--", "sh", "-c", "echo hi; exit 5"
        )
        assert (result.returncode, result.stdout) == (5, b"hi\n"), result.stderr
        big = cx(
            "exec",
            "--registry",
            b.url,
            "--env",
            "cross",
            "--",
            "head",
            "-c",
            "5000000",
            "/dev/zero",
        )
        assert big.returncode == 0 and big.stdout == b"\0" * 5_000_000
    finally:
        stop(executor)
        a.kill()
        b.kill()


def test_the_real_codex_executor_on_one_node_serves_a_harness_on_another(
    tmp_path: Path, engines: tuple[PrivatePostgres, PrivateNats]
) -> None:
    a, b = node(tmp_path / "a", engines), node(tmp_path / "b", engines)
    executor = start_codex_executor(a.url, "codexcross", TOKEN)
    try:
        until_online(b.url, "codexcross")
        result = cx(
            "exec",
            "--registry",
            b.url,
            "--env",
            "codexcross",
            "--",
            "sh",
            "-c",
            "echo via codex; exit 3",
        )
        assert (result.returncode, result.stdout) == (3, b"via codex\n"), result.stderr
    finally:
        stop(executor)
        a.kill()
        b.kill()


def test_killing_the_executors_node_mid_output_loses_nothing(
    tmp_path: Path, engines: tuple[PrivatePostgres, PrivateNats]
) -> None:
    """The executor's node is SIGKILLed while a detached command writes; the balancer sends
    the executor to a third node, and `read --follow` through the harness's node gets every
    line exactly once."""
    a, b, c = (node(tmp_path / name, engines) for name in "abc")
    balancer = TcpProxy(a.port)
    executor = start_executor(
        "serve", "--remote", balancer.http_url(), "--environment-id", "failover"
    )
    try:
        until_online(b.url, "failover")
        script = "for i in $(seq 1 80); do echo $i; sleep 0.05; done"
        detached = cx(
            "exec", "--registry", b.url, "--env", "failover", "--detach", "--", "sh", "-c", script
        )
        assert detached.returncode == 0, detached.stderr
        handle = detached.stdout.decode().strip()
        time.sleep(1)  # mid-output
        balancer.upstream_port = c.port
        started = time.monotonic()
        a.kill()
        followed = cx("read", handle, "--follow", timeout=90)
        assert followed.returncode == 0, followed.stderr
        assert followed.stdout.decode().split() == [str(i) for i in range(1, 81)]
        print(f"node kill to output complete: {time.monotonic() - started:.2f} s")
    finally:
        stop(executor)
        balancer.stop()
        for rv in (a, b, c):
            stop(rv.process)


async def _validate(session: aiohttp.ClientSession, url: str, body: dict[str, object]) -> bool:
    async with session.post(
        f"{url}/cloud/environment/race/validate",
        json=body,
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as response:
        assert response.status == 200, await response.text()
        return bool((await response.json())["valid"])


def test_a_registration_storm_and_two_nodes_racing_for_one_authorization(
    tmp_path: Path, engines: tuple[PrivatePostgres, PrivateNats]
) -> None:
    a, b = node(tmp_path / "a", engines), node(tmp_path / "b", engines)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    key = {"suite": "Noise_IK_25519_ChaChaPoly_BLAKE2s", "x25519_public_key": "AAAA"}

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:

            async def register(index: int) -> str:
                url = (a, b)[index % 2].url
                async with session.post(
                    f"{url}/cloud/environment/storm-{index}/register", headers=headers
                ) as response:
                    assert response.status == 200, await response.text()
                    return str((await response.json())["executor_registration_id"])

            ids = await asyncio.gather(*(register(i) for i in range(200)))
            assert len(set(ids)) == 200
            async with session.post(
                f"{a.url}/cloud/environment/race/register",
                headers=headers,
                json={"security_profile": "noise_ik_v1", "executor_public_key": key},
            ) as response:
                registration = await response.json()
            assert response.status == 200, registration
            # /connect answers only while the executor socket is up.
            async with session.ws_connect(registration["url"]) as executor:
                for _ in range(20):
                    async with session.post(
                        f"{b.url}/cloud/environment/race/connect",
                        headers=headers,
                        json={"harness_public_key": key},
                    ) as response:
                        bundle = await response.json()
                        assert response.status == 200, bundle
                    body = {
                        "executor_registration_id": registration["executor_registration_id"],
                        "harness_public_key": key,
                        "harness_key_authorization": bundle["harness_key_authorization"],
                    }
                    answers = await asyncio.gather(
                        _validate(session, a.url, body), _validate(session, b.url, body)
                    )
                    assert sorted(answers) == [False, True]
                await executor.close()

    try:
        asyncio.run(scenario())
    finally:
        a.kill()
        b.kill()
