"""A loopback HTTP server (aiohttp) for http/request tests: it records what arrives and
answers with chunked, slow, endless, truncated and redirecting responses."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Received:
    method: str
    path_qs: str
    headers: list[tuple[str, str]]  # wire order, names lowercase
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n == name), None)


@dataclass
class Upstream:
    port: int = 0
    received: list[Received] = field(default_factory=list)
    chunk_times: list[float] = field(default_factory=list)  # when /chunked wrote each part
    flood_bytes: int = 0  # how much /flood managed to hand to the socket
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append(
            Received(
                request.method,
                request.path_qs,
                [
                    (n.decode().lower(), v.decode("utf-8", "replace"))
                    for n, v in request.raw_headers
                ],
                body,
            )
        )
        route = request.match_info["route"]
        handler = getattr(self, f"_{route}", None)
        if handler is None:
            return web.Response(status=404)
        response: web.StreamResponse = await handler(request)
        return response

    async def _echo(self, request: web.Request) -> web.StreamResponse:
        response = web.Response(status=201, body=b"ok")
        response.headers.add("X-Echo", "yes")
        response.headers.add("X-A", "1")
        response.headers.add("X-A", "2")
        response.headers.add("X-Not-Ascii", "caf\u00e9")
        return response

    async def _chunked(self, request: web.Request) -> web.StreamResponse:
        parts = int(request.query.get("parts", "3"))
        size = int(request.query.get("size", "5"))
        delay = float(request.query.get("delay", "0"))
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for index in range(parts):
            if index and delay:
                await asyncio.sleep(delay)
            await response.write(bytes([0x61 + index % 26]) * size)
            self.chunk_times.append(time.monotonic())
        await response.write_eof()
        return response

    async def _slow(self, request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(float(request.query.get("delay", "1")))
        return web.Response(body=b"slow")

    async def _endless(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            while True:
                await response.write(b"tick\n")
                await asyncio.sleep(0.05)
        except (ConnectionError, asyncio.CancelledError):
            self.disconnected.set()
            raise

    async def _flood(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        block = b"x" * 65536
        try:
            while True:
                await response.write(block)
                self.flood_bytes += len(block)
        except (ConnectionError, asyncio.CancelledError):
            self.disconnected.set()
            raise

    async def _truncated(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "100"})
        await response.prepare(request)
        await response.write(b"short")
        assert request.transport is not None
        request.transport.close()
        return response

    async def _big(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"x" * int(request.query["size"]))

    async def _redirect(self, request: web.Request) -> web.StreamResponse:
        left = int(request.query["n"])
        location = f"/redirect?n={left - 1}" if left > 0 else "/echo"
        return web.Response(status=302, headers={"Location": location})

    async def _to(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            status=int(request.query["status"]), headers={"Location": request.query["location"]}
        )


@contextlib.asynccontextmanager
async def upstream() -> AsyncIterator[Upstream]:
    state = Upstream()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{route}", state.handle)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.port = runner.addresses[0][1]
    try:
        yield state
    finally:
        await runner.cleanup()


@dataclass
class McpStub:
    """A Streamable-HTTP MCP server with one tool, `ping`; it records each JSON-RPC method."""

    port: int = 0
    methods: list[str] = field(default_factory=list)
    reply: str = "pong from the executor's side"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            self.methods.append(request.method)  # GET (event stream) and DELETE (session end)
            return web.Response(status=405 if request.method == "GET" else 200)
        message = await request.json()
        self.methods.append(message["method"])
        if "id" not in message:
            return web.Response(status=202)
        results = {
            "initialize": {
                "protocolVersion": message.get("params", {}).get("protocolVersion"),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "stub", "version": "1"},
            },
            "tools/list": {
                "tools": [
                    {
                        "name": "ping",
                        "description": "Answers pong.",
                        "inputSchema": {"type": "object", "properties": {}},
                    }
                ]
            },
            "tools/call": {"content": [{"type": "text", "text": self.reply}]},
        }
        result = results.get(message["method"], {})
        return web.json_response(
            {"jsonrpc": "2.0", "id": message["id"], "result": result},
            headers={"Mcp-Session-Id": "stub-session"},
        )


@contextlib.asynccontextmanager
async def mcp_stub() -> AsyncIterator[McpStub]:
    state = McpStub()
    app = web.Application()
    app.router.add_route("*", "/mcp", state.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.port = runner.addresses[0][1]
    try:
        yield state
    finally:
        await runner.cleanup()
