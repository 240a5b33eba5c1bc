"""Serving through a registry: `serve --remote` and `register --forward` share this."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable

from codexexec.cli.errors import fail
from codexexec.remote.registry import RegistryError, check_environment_id, read_token
from codexexec.transport.relay import ExecutorRelay, Serve


def announce(environment_id: str) -> None:
    sys.stderr.write(f"codexexec: serving environment `{environment_id}` through the relay\n")
    sys.stderr.flush()


def run_relay(
    registry_url: str,
    environment_id: str,
    token_file: str | None,
    serve: Serve,
    on_stop: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Serve through the registry until SIGINT/SIGTERM; registry refusals exit with one line."""
    try:
        check_environment_id(environment_id)
        token = read_token(token_file)
    except RegistryError as exc:
        fail(str(exc), 2)

    async def main() -> None:
        relay = ExecutorRelay(registry_url, environment_id, token, serve, announce)
        running = asyncio.create_task(relay.run())
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        running.cancel()  # a no-op when it already ended (with a registry error)
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await running
        finally:
            if on_stop is not None:
                await on_stop()

    try:
        asyncio.run(main())
    except RegistryError as exc:
        fail(str(exc))
