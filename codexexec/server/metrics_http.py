"""`serve --metrics-listen http://IP:PORT`: `GET /metrics` (and `/readyz`) on a port of its
own, for executors with no websocket listener (stdio, relay-only)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from aiohttp import web

from codexexec.server.errors import ServerError
from codexexec.server.metrics import CONTENT_TYPE
from codexexec.transport.ws_auth import Policy, authorize


class MetricsListenError(ServerError, ValueError):
    pass


def parse_metrics_url(url: str) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if (
        parts.scheme != "http"
        or not parts.hostname
        or parts.port is None
        or parts.path not in ("", "/")
    ):
        raise MetricsListenError(f"--metrics-listen must be http://IP:PORT, got `{url}`")
    return parts.hostname, parts.port


@asynccontextmanager
async def metrics_listener(
    url: str, render: Callable[[], bytes], policy: Policy | None
) -> AsyncIterator[str]:
    """Serve while the context is open; yields the bound URL."""
    host, port = parse_metrics_url(url)

    async def metrics(request: web.Request) -> web.Response:
        if policy is not None:
            refusal = authorize(policy, request.headers.get("Authorization"), time.time())
            if refusal is not None:
                return web.Response(status=401, text=refusal)
        return web.Response(body=render(), headers={"Content-Type": CONTENT_TYPE})

    async def ready(request: web.Request) -> web.Response:
        return web.Response(text="")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/readyz", ready)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        yield f"http://{bound_host}:{bound_port}"
    finally:
        await runner.cleanup()
