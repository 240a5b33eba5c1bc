"""Bounds a hostile harness-token holder runs into at the rendezvous (found in review):
outstanding one-time authorizations, the size of a harness key, relay sockets per executor."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus

from tests.test_rendezvous import (
    HARNESS,
    Service,
    noise_key,
    online_executor,
    open_ws,
    running_service,
    status_of,
    wait_for,
)


@pytest.fixture
async def bounded(tmp_path: Path) -> AsyncIterator[Service]:
    async with running_service(tmp_path, max_authorizations=3, max_harness_sockets=2) as svc:
        yield svc


async def test_outstanding_authorizations_per_environment_are_capped(bounded: Service) -> None:
    _, executor = await online_executor(bounded)
    for seed in range(3):
        await bounded.connect(key=noise_key(10 + seed))
    status, answer = await bounded.post(
        "/cloud/environment/env-1/connect", HARNESS, {"harness_public_key": noise_key(20)}
    )
    assert status == 429, answer
    assert answer["error"]["code"] == "too_many_authorizations"
    bounded.clock.now += 121  # the outstanding ones expire: room again
    await bounded.connect(key=noise_key(21))
    await executor.close()


async def test_an_oversized_harness_key_is_refused(bounded: Service) -> None:
    _, executor = await online_executor(bounded)
    key = noise_key(7)
    key["padding"] = base64.b64encode(b"x" * 30_000).decode()
    status, answer = await bounded.post(
        "/cloud/environment/env-1/connect", HARNESS, {"harness_public_key": key}
    )
    assert status == 400, answer
    assert answer["error"]["code"] == "invalid_request"
    await executor.close()


async def test_relay_sockets_per_executor_are_capped(bounded: Service) -> None:
    _, executor = await online_executor(bounded)
    bundle = await bounded.connect()
    first = await open_ws(bundle["url"])
    second = await open_ws(bundle["url"])
    with pytest.raises(InvalidStatus) as refused:
        await open_ws(bundle["url"])
    assert status_of(refused.value) == 429
    await first.close()
    relay = bounded.running.state.relay
    await wait_for(lambda: len(relay.executors["env-1"].harnesses) == 1)
    third = await open_ws(bundle["url"])  # a closed socket frees its place
    for ws in (second, third, executor):
        await ws.close()
