"""The keeper's multiplexer (environments/keeper_mux.py) between real RpcPeers over
in-process transports: each client gets its own answers under its own ids, the server's
notifications reach every initialized client, the server's requests are asked of the
client attached last, and the lifecycle gate is the server's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from codexexec.environments.keeper_mux import Multiplexer
from codexexec.protocol.jsonrpc import Notification, Request, RpcError
from codexexec.rpc.peer import RpcPeer
from codexexec.tasks import TaskSet
from codexexec.transport.memory import memory_pair


class Client:
    def __init__(self, name: str, tasks: TaskSet, mux: Multiplexer) -> None:
        self.name = name
        self.heard: asyncio.Queue[Notification] = asyncio.Queue()
        near, far = memory_pair()
        self.peer = RpcPeer(near, on_request=self._asked, on_notification=self.heard.put)
        tasks.spawn(self.peer.run())
        tasks.spawn(mux.serve_client(far))

    async def _asked(self, request: Request) -> Any:
        return {"answeredBy": self.name, "params": request.params}

    async def attach(self) -> Any:
        session = await self.peer.call("initialize", {"clientName": self.name}, 5)
        await self.peer.notify("initialized", None)
        return session


@pytest.fixture
async def setup() -> AsyncIterator[tuple[Multiplexer, RpcPeer, list[Request], TaskSet]]:
    tasks = TaskSet()
    mux = Multiplexer("devbox")
    mux.session = {"sessionId": "s-1"}
    served: list[Request] = []

    async def serve(request: Request) -> Any:
        served.append(request)
        return {"method": request.method, "params": request.params}

    keeper_end, server_end = memory_pair()
    server = RpcPeer(server_end, on_request=serve, concurrency=4)
    mux.server = RpcPeer(
        keeper_end,
        on_request=mux.on_server_request,
        on_notification=mux.on_server_notification,
        concurrency=4,
    )
    tasks.spawn(server.run())
    tasks.spawn(mux.server.run())
    try:
        yield mux, server, served, tasks
    finally:
        await mux.close_clients()
        await keeper_end.close()
        await server_end.close()
        for task in tasks:
            task.cancel()
        await tasks.wait()


async def test_clients_share_one_session_and_each_gets_its_own_answers(
    setup: tuple[Multiplexer, RpcPeer, list[Request], TaskSet],
) -> None:
    mux, _server, served, tasks = setup
    one, two = Client("one", tasks, mux), Client("two", tasks, mux)
    assert await one.attach() == await two.attach() == {"sessionId": "s-1"}
    first, second = await asyncio.gather(
        one.peer.call("process/read", {"processId": "a"}, 5),
        two.peer.call("process/read", {"processId": "b"}, 5),
    )
    assert first["params"] == {"processId": "a"} and second["params"] == {"processId": "b"}
    assert sorted(r.params["processId"] for r in served) == ["a", "b"]
    # The keeper's own ids reached the server, not the clients' (both used 2).
    assert len({r.id for r in served}) == 2


async def test_server_notifications_reach_every_initialized_client_only(
    setup: tuple[Multiplexer, RpcPeer, list[Request], TaskSet],
) -> None:
    mux, server, _served, tasks = setup
    one, idle = Client("one", tasks, mux), Client("idle", tasks, mux)
    await one.attach()
    await idle.peer.call("initialize", {}, 5)  # never sends `initialized`
    await server.notify("process/exited", {"processId": "a", "exitCode": 0})
    heard = await asyncio.wait_for(one.heard.get(), 5)
    assert heard.method == "process/exited" and heard.params["processId"] == "a"
    await asyncio.sleep(0.05)
    assert idle.heard.empty()


async def test_a_server_request_is_asked_of_the_client_attached_last(
    setup: tuple[Multiplexer, RpcPeer, list[Request], TaskSet],
) -> None:
    mux, server, _served, tasks = setup
    with pytest.raises(RpcError, match="no client is attached to `devbox`"):
        await server.call("network/policyRequest", {"host": "example.com"}, 5)
    first, last = Client("first", tasks, mux), Client("last", tasks, mux)
    await first.attach()
    await last.attach()
    answer = await server.call("network/policyRequest", {"host": "example.com"}, 5)
    assert answer == {"answeredBy": "last", "params": {"host": "example.com"}}
    await last.peer.transport.close()
    await asyncio.sleep(0.05)
    answer = await server.call("network/policyRequest", {"host": "example.org"}, 5)
    assert answer["answeredBy"] == "first"


async def test_the_keeper_refuses_before_initialize_and_a_resume_of_another_session(
    setup: tuple[Multiplexer, RpcPeer, list[Request], TaskSet],
) -> None:
    mux, _server, served, tasks = setup
    client = Client("c", tasks, mux)
    with pytest.raises(RpcError, match="client must call initialize before using exec methods"):
        await client.peer.call("process/read", {"processId": "a"}, 5)
    with pytest.raises(RpcError, match=r"unknown session id s-9 .*holds s-1"):
        await client.peer.call("initialize", {"resumeSessionId": "s-9"}, 5)
    await client.attach()
    with pytest.raises(RpcError, match="initialize may only be sent once per connection"):
        await client.peer.call("initialize", {}, 5)
    assert served == []
