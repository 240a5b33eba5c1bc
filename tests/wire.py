"""A raw JSON-RPC websocket client for asserting exact wire behaviour."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect


class Wire:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._next_id = 100
        self.notifications: list[dict[str, Any]] = []
        self.responses: dict[Any, dict[str, Any]] = {}

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> Wire:
        return cls(await connect(url, max_size=None, **kwargs))

    async def close(self) -> None:
        await self.ws.close()

    async def send(self, message: Any) -> None:
        await self.ws.send(message if isinstance(message, str) else json.dumps(message))

    async def recv(self, timeout: float = 10.0) -> Any:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        return json.loads(raw)

    async def _pump(self, timeout: float) -> None:
        message = await self.recv(timeout)
        if isinstance(message, dict) and "method" in message and "id" not in message:
            self.notifications.append(message)
        elif isinstance(message, dict):
            self.responses[message.get("id")] = message
        else:
            self.responses["batch"] = {"batch": message}

    async def response(self, request_id: Any, timeout: float = 10.0) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while request_id not in self.responses:
            await self._pump(max(0.01, deadline - loop.time()))
        return self.responses.pop(request_id)

    async def request(
        self, method: str, params: Any = None, timeout: float = 10.0
    ) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method}
        if params is not None:
            message["params"] = params
        await self.send(message)
        return await self.response(self._next_id, timeout)

    async def result(self, method: str, params: Any = None, timeout: float = 10.0) -> Any:
        reply = await self.request(method, params, timeout)
        assert "result" in reply, reply
        return reply["result"]

    async def initialize(self, resume: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"clientName": "codexexec-tests"}
        if resume:
            params["resumeSessionId"] = resume
        result = await self.result("initialize", params)
        await self.send({"method": "initialized", "params": {}})
        return result

    async def start(self, process_id: str, argv: list[str], **extra: Any) -> dict[str, Any]:
        params = {
            "processId": process_id,
            "argv": argv,
            "cwd": "file:///tmp",
            "env": {"PATH": "/usr/bin:/bin"},
            "tty": False,
            "arg0": None,
            **extra,
        }
        return await self.result("process/start", params)

    async def notification(self, predicate: Any, timeout: float = 10.0) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for index, message in enumerate(self.notifications):
                if predicate(message):
                    return self.notifications.pop(index)
            await self._pump(max(0.01, deadline - loop.time()))

    async def events_until_closed(
        self, process_id: str, timeout: float = 15.0
    ) -> list[dict[str, Any]]:
        """All process/* notifications for one process, through both exited and closed.

        Codex 0.169.0 occasionally pushes process/closed before process/exited.
        """
        events = []
        seen: set[str] = set()
        while not {"process/exited", "process/closed"} <= seen:
            event = await self.notification(
                lambda m: (
                    m["method"].startswith("process/") and m["params"]["processId"] == process_id
                ),
                timeout,
            )
            events.append(event)
            seen.add(event["method"])
        return events


def decoded_output(events: list[dict[str, Any]], stream: str | None = None) -> bytes:
    return b"".join(
        base64.b64decode(e["params"]["chunk"])
        for e in events
        if e["method"] == "process/output" and (stream is None or e["params"]["stream"] == stream)
    )
