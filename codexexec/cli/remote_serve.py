"""Serving through a registry: `serve --remote` and `register --forward` share this."""

from __future__ import annotations

import asyncio
import contextlib
import io
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from codexexec.cli.errors import fail
from codexexec.protocol.registry import NOISE_PROFILE
from codexexec.remote.auth.base import AuthError, AuthProvider
from codexexec.remote.auth.credential_pipe import feed
from codexexec.remote.auth.resolve import AuthOptions, resolve_registration_auth
from codexexec.remote.auth.rotating import RotatingCredential
from codexexec.remote.registry import RegistryError, check_environment_id
from codexexec.server.secrets import forget_secrets_in_environment
from codexexec.transport.relay_executor import ExecutorRelay
from codexexec.transport.socket_streams import Serve

if TYPE_CHECKING:
    from codexexec.server.metrics import ServerMetrics

CLEARTEXT_WARNING = (
    "codexexec: warning: --cleartext-relay: the rendezvous can read and alter every command, "
    "its output and files on this environment; use it only with a relay you control\n"
)


def notice(text: str) -> None:
    sys.stderr.write(f"codexexec: {text}\n")
    sys.stderr.flush()


def watch_stdin_close(on_close: Callable[[], object]) -> None:
    """Call ``on_close`` from a daemon thread once stdin reaches end of file (what the
    parent wrote is read and dropped; a registration bearer was read before)."""

    def drain() -> None:
        stdin = sys.stdin.buffer
        read = stdin.read1 if isinstance(stdin, io.BufferedReader) else stdin.read
        with contextlib.suppress(OSError, ValueError):
            while read(65536):
                pass
        on_close()

    threading.Thread(target=drain, name="stdin-close-watch", daemon=True).start()


def run_relay(
    registry_url: str,
    environment_id: str,
    auth: AuthOptions,
    serve: Serve,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    *,
    cleartext: bool = False,
    profile: str = NOISE_PROFILE,
    identity_file: str | None = None,
    exit_on_stdin_close: bool = False,
    name: str | None = None,
    metrics: ServerMetrics | None = None,
    metrics_listen: str | None = None,
) -> None:
    """Serve through the registry until SIGINT/SIGTERM (or, with ``exit_on_stdin_close``,
    until the parent's stdin pipe closes, as Codex's flag does); registry refusals exit with
    one line.

    Streams are Noise-encrypted end to end (``profile``) unless ``cleartext`` is asked for.
    """
    from codexexec.noise.identity_file import IdentityFileError, load_or_create_identity
    from codexexec.noise.profiles import PROFILES, HybridParty, NoiseParty, new_party

    if profile not in PROFILES:
        fail(f"unknown security profile `{profile}`: use one of {', '.join(PROFILES)}", 2)
    if identity_file is not None and (cleartext or profile != NOISE_PROFILE):
        fail(f"--noise-identity-file keeps a {NOISE_PROFILE} identity only", 2)
    try:
        check_environment_id(environment_id)
        party: NoiseParty | None = None
        if not cleartext:
            party = (
                new_party(profile)
                if identity_file is None
                else HybridParty(load_or_create_identity(identity_file))
            )
    except (RegistryError, IdentityFileError) as exc:
        fail(str(exc), 2)
    rotating: RotatingCredential | None = None
    credential: AuthProvider
    if auth.executor_credential_stdin:
        credential = rotating = RotatingCredential(environment_id)
    else:
        try:
            credential = resolve_registration_auth(auth, notice)
        except AuthError as exc:
            fail(str(exc))
    forget_secrets_in_environment()  # the credential holds what it needs
    if cleartext:
        sys.stderr.write(CLEARTEXT_WARNING)
    channel = "cleartext" if party is None else f"Noise, {party.profile}"

    shown_name = f" ({name})" if name else ""

    def announce(environment_id: str) -> None:
        sys.stderr.write(
            f"codexexec: serving environment `{environment_id}`{shown_name} through the relay "
            f"({channel})\n"
        )
        sys.stderr.flush()

    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            if metrics_listen is not None and metrics is not None:
                from codexexec.server.listener import serving_metrics

                await stack.enter_async_context(
                    serving_metrics(metrics_listen, metrics.render, None)
                )
            await relay_until_stopped()

    async def relay_until_stopped() -> None:
        # The parent's pipe: the first credential before registering, then its rotations;
        # the pipe closing is the parent's stop (as with --exit-on-stdin-close).
        credentials = None if rotating is None else await feed(rotating, sys.stdin.fileno())
        relay = ExecutorRelay(
            registry_url,
            environment_id,
            credential,
            serve,
            announce,
            party,
            on_attempt=(lambda kind, outcome: None) if metrics is None else metrics.remote_attempt,
        )
        running = asyncio.create_task(relay.run())
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        if exit_on_stdin_close and rotating is None:
            watch_stdin_close(lambda: loop.call_soon_threadsafe(stop.set))
        stopping = asyncio.create_task(stop.wait())
        watched = {running, stopping} | ({credentials} if credentials is not None else set())
        await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        for task in watched:
            task.cancel()  # a no-op for the one that ended
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await running
            if credentials is not None and credentials.done() and not credentials.cancelled():
                credentials.result()  # a frame that ends the executor raises here
        finally:
            if on_stop is not None:
                await on_stop()

    try:
        asyncio.run(main())
    except (RegistryError, AuthError) as exc:
        fail(str(exc))
