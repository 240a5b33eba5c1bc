"""`--concurrent-requests`: requests on one connection are processed one at a time by default
(a slow one holds the next back), and side by side with a larger count — on codexexec's
server and the real Codex 0.169.0's alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from tests.servers import start_server
from tests.wire import Wire


@pytest.fixture
async def slow_origin() -> AsyncIterator[str]:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        return web.Response(text="slow")

    app = web.Application()
    app.router.add_get("/slow", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/slow"
    await runner.cleanup()


@pytest.mark.parametrize("kind", ["codexexec", "codex"])
@pytest.mark.parametrize("count", [None, 4])
async def test_a_slow_request_holds_the_next_back_only_by_default(
    kind: str, count: int | None, slow_origin: str
) -> None:
    extra = () if count is None else ("--concurrent-requests", str(count))
    with start_server(kind, extra_args=extra) as server:
        wire = await Wire.open(server.url)
        await wire.initialize()
        slow = {"method": "GET", "url": slow_origin, "requestId": "r"}
        await wire.send({"id": 10, "method": "http/request", "params": slow})
        await wire.send({"id": 11, "method": "environment/info", "params": {}})
        order = []
        while len(order) < 2:
            message = await wire.recv(10)
            if message.get("id") in (10, 11):
                order.append(message["id"])
        await wire.close()
    assert order == ([10, 11] if count is None else [11, 10])
