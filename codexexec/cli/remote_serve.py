"""Serving through a registry: `serve --remote` and `register --forward` share this."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from typing import Any

from codexexec.cli.errors import fail
from codexexec.remote.registry import RegistryError, check_environment_id, read_token
from codexexec.transport.relay import ExecutorRelay


def announce(environment_id: str) -> None:
    sys.stderr.write(f"codexexec: serving environment `{environment_id}` through the relay\n")
    sys.stderr.flush()


def run_relay(
    registry_url: str, environment_id: str, token_file: str | None, serve: Any, on_stop: Any = None
) -> None:
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
        for task in (running, stopping):
            task.cancel()
        if on_stop is not None:
            await on_stop()
        if running.done() and not running.cancelled() and running.exception() is not None:
            raise running.exception()  # type: ignore[misc]
        with contextlib.suppress(asyncio.CancelledError):
            await running

    try:
        asyncio.run(main())
    except RegistryError as exc:
        fail(str(exc))
