"""`codexexec rendezvous`: environment registry and frame relay in one aiohttp service.

HTTP (JSON, Codex's request/response shapes; errors are ``{"error":{"code","message"}}``):

* ``POST /cloud/environment/{id}/register`` - executor bearer. Body
  ``{"security_profile":"noise_hybrid_ik_v1","executor_public_key":{…}}`` (the key is stored as
  opaque JSON), or no body / ``{}`` / ``{"security_profile":"legacy"}`` for the legacy cleartext
  relay. Answers ``{environment_id, url, security_profile, executor_registration_id}``; ``url`` is
  the executor's signed relay websocket URL (``role=environment``). A new registration replaces
  the environment's previous one (and closes a socket still connected under it).
* ``POST /cloud/environment/{id}/connect`` - harness bearer. Body ``{"harness_public_key":{…}}``
  (Noise) or empty (legacy). Answers the connect bundle ``{environment_id, url, security_profile,
  executor_registration_id, executor_public_key, harness_key_authorization}`` (the last two only
  for Noise); ``url`` is a short-lived signed ``role=harness`` URL and the authorization is
  single-use and short-lived. 404 ``environment_not_found`` when nothing is registered, 409
  ``environment_offline`` when the registered executor is not connected (Codex's harness retries
  that code), 429 ``too_many_authorizations`` when the environment already holds
  ``max_authorizations`` outstanding (unspent, unexpired) ones (a harness key over 4 KiB of
  JSON is refused).
* ``POST /cloud/environment/{id}/validate`` - executor bearer. Body ``{executor_registration_id,
  harness_public_key, harness_key_authorization}``; answers ``{"valid": true|false}`` and spends the
  authorization whatever the answer.
* ``GET /healthz`` - no auth; ``{"status":"ok", "store":"ok", …counts}`` (503 when the store
  does not answer or the node is stopping).
* ``GET /metrics`` - no auth; Prometheus text (``metrics.py``).
* ``POST /v1/agent/{runtime_id}/task/register`` - Agent Identity task registration for the agents
  in ``--agent-keys`` (``agent_auth.py``), so an executor started with
  ``--allow-agent-identity-auth`` can then authenticate with ``Authorization: AgentAssertion …``
  wherever a bearer is accepted.

Relay websocket ``GET /relay?role=…&environment_id=…&registration_id=…&expires=…&sig=…`` (the
signed query is the credential; expired → 401, forged → 403, stale registration → 401 so Codex's
executor re-registers and its harness fetches a fresh bundle):

* ``role=environment``: one socket per registered executor; a new one replaces (closes) the old.
* ``role=harness``: one socket per logical connection (at most ``max_harness_sockets`` per
  executor socket; beyond that 429), bound to the executor socket that was online when it
  connected; it is closed when that executor socket goes away (Noise streams never
  survive an executor reconnect).

Routing reads only each frame's ``stream_id`` and body kind; payloads (Noise ciphertext, or
cleartext JSON for the legacy profile) are forwarded byte for byte and never interpreted.

* harness → executor: forwarded as is. The first frame on a stream id claims it for that harness
  socket; a frame on an id another harness holds (or beyond the per-socket stream limit) is
  dropped and answered with a Reset to the sender only.
* executor → harness: by stream id to the claiming harness; unclaimed ids are dropped.
* A Reset in either direction is forwarded and releases the claim.
* Text messages and frames that do not decode/validate are dropped and counted; the socket stays.
* **Harness disconnect:** the rendezvous sends the executor a Reset for every stream the harness
  still held. This is a codexexec choice: what the real rendezvous does is unknown, and a
  transparent relay leaves the executor's stream alive forever (docs/relay-protocol.md §9),
  so without it every dropped harness would leak an executor stream slot (of 128).
* **Executor disconnect/replacement:** every harness bound to it gets a Reset for its streams and
  is then closed.

Backpressure: every socket has a bounded outbox (frames and bytes) drained by one writer task.
Harness → executor waits for room (the harness's reader stops, which pushes back over TCP); an
executor → harness frame that does not fit closes that harness (slow consumer) instead of stalling
every other stream on the executor socket. Messages are capped at 256 KiB.

Modules: ``http_api.py`` (the endpoints), ``relay.py`` (sockets and routing I/O) around
``router.py`` (the decisions), ``peers.py`` (a socket's outbox and writer), ``options.py``,
``events.py`` (logging); this module wires the application and runs it.

Logs are ``event key=value`` lines on the ``codexexec.rendezvous`` logger: never a token, an
authorization, a public key, a signed URL (paths only) or a payload.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from aiohttp import web

from codexexec.protocol.registry import LEGACY_PROFILE as SECURITY_PROFILE_LEGACY
from codexexec.protocol.registry import NOISE_PROFILE as SECURITY_PROFILE_NOISE
from codexexec.rendezvous.agent_auth import AgentKeys
from codexexec.rendezvous.auth import (
    TokenFileError,
    TokenTable,
    create_dev_token_file,
    create_token_file,
    loosely_permitted,
)
from codexexec.rendezvous.events import event
from codexexec.rendezvous.http_api import (
    STATE,
    RendezvousState,
    errors_and_access_log,
    handle_connect,
    handle_healthz,
    handle_metrics,
    handle_register,
    handle_relay,
    handle_task_register,
    handle_validate,
)
from codexexec.rendezvous.metrics import RendezvousMetrics, TimedStore
from codexexec.rendezvous.options import RendezvousOptions
from codexexec.rendezvous.relay import Relay, RelayStats
from codexexec.rendezvous.signing import RELAY_PATH, RelayUrlSigner
from codexexec.rendezvous.store import (
    RegistryStore,
    open_store,
)
from codexexec.state_dir import state_dir

__all__ = [
    "SECURITY_PROFILE_LEGACY",
    "SECURITY_PROFILE_NOISE",
    "RelayStats",
    "RendezvousOptions",
    "RunningRendezvous",
    "build_app",
    "parse_listen_url",
    "run_rendezvous",
    "start_rendezvous",
]

log = logging.getLogger("codexexec.rendezvous")

DB_FILENAME: Final = "rendezvous.sqlite3"


def build_app(
    tokens: TokenTable, store: RegistryStore, options: RendezvousOptions | None = None
) -> web.Application:
    opts = options or RendezvousOptions()
    app = web.Application(middlewares=[errors_and_access_log], client_max_size=opts.max_body_bytes)
    relay = Relay(opts, node_id=secrets.token_hex(4))
    metrics = RendezvousMetrics(relay)
    app[STATE] = RendezvousState(
        tokens=tokens,
        store=TimedStore(store, metrics),
        signer=RelayUrlSigner(store.signing_key),
        relay=relay,
        options=opts,
        metrics=metrics,
        agents=(
            None if opts.agent_keys is None else AgentKeys.load(opts.agent_keys, store.signing_key)
        ),
    )
    base = "/cloud/environment/{environment_id}"
    app.router.add_post(f"{base}/register", handle_register)
    app.router.add_post(f"{base}/connect", handle_connect)
    app.router.add_post(f"{base}/validate", handle_validate)
    app.router.add_post("/v1/agent/{runtime_id}/task/register", handle_task_register)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get(RELAY_PATH, handle_relay)

    async def _on_shutdown(app: web.Application) -> None:
        relay = app[STATE].relay
        await relay.shutdown()
        if relay.bus is not None:
            await relay.bus.close()

    app.on_shutdown.append(_on_shutdown)
    return app


def parse_listen_url(url: str) -> tuple[str, int]:
    """``http://IP:PORT`` (IPv4, ``[IPv6]`` or ``localhost``; port 0 = ephemeral)."""
    parts = urlsplit(url.strip())
    if parts.scheme != "http":
        raise ValueError(f"listen URL must be http://IP:PORT, got {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"listen URL must be http://IP:PORT with nothing after the port: {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"listen URL has an invalid port: {url!r}") from None
    if port is None:
        raise ValueError(f"listen URL needs a port (0 for any free one): {url!r}")
    host = parts.hostname or ""
    if host == "localhost":
        return "127.0.0.1", port
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"listen URL host must be an IP address, got {host!r}") from None
    return host, port


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class RunningRendezvous:
    url: str  # http://IP:PORT actually bound
    app: web.Application
    runner: web.AppRunner

    @property
    def state(self) -> RendezvousState:
        return self.app[STATE]

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_rendezvous(
    listen_url: str,
    tokens: TokenTable,
    store: RegistryStore,
    options: RendezvousOptions | None = None,
) -> RunningRendezvous:
    host, port = parse_listen_url(listen_url)
    app = build_app(tokens, store, options)
    state = app[STATE]
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        if state.options.bus is not None:
            from codexexec.rendezvous.bus import NatsBus  # NATS only for a cluster node

            bus = NatsBus(state.options.bus, state.relay, state.metrics.observe_bus)
            await bus.start()
            state.relay.bus = bus
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0]
    netloc = _netloc(str(bound[0]), int(bound[1]))
    app[STATE].bound_netloc = netloc
    event(logging.INFO, "rendezvous.listening", address=netloc)
    return RunningRendezvous(url=f"http://{netloc}", app=app, runner=runner)


def resolve_tokens(token_file: Path | None, *, notice: Callable[[str], None]) -> TokenTable:
    """Load ``token_file`` (created with a fresh token when it does not exist); without one,
    use (creating if needed) the development token file."""
    if token_file is None:
        path, created = create_dev_token_file(state_dir())
        if created:
            notice(
                f"codexexec rendezvous: no --token-file given; created a development token in "
                f"{path} (grants the executor and harness roles for every environment)"
            )
        token_file = path
    elif not token_file.exists():
        try:
            created = create_token_file(token_file)
        except OSError as exc:
            raise TokenFileError(
                f"cannot create token file {token_file}: {exc.strerror or exc}"
            ) from None
        if created:
            notice(
                f"codexexec rendezvous: {token_file} did not exist; created it with a new token "
                "(0600; grants the executor and harness roles for every environment)"
            )
    if loosely_permitted(token_file):
        notice(
            f"codexexec rendezvous: warning: other users can read {token_file}; anyone who "
            f"does can register executors and reach them (chmod 600 {token_file})"
        )
    return TokenTable.load(token_file)


async def serve_rendezvous(
    listen_url: str,
    tokens: TokenTable,
    store: RegistryStore,
    options: RendezvousOptions | None = None,
    *,
    on_ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until ``stop`` is set, SIGINT or SIGTERM; then shut down gracefully."""
    running = await start_rendezvous(listen_url, tokens, store, options)
    stop_event = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop_event.set)
            installed.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    try:
        if on_ready is not None:
            on_ready(running.url)
        await stop_event.wait()
        event(logging.INFO, "rendezvous.stopping")
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        await running.stop()
        event(logging.INFO, "rendezvous.stopped")


def run_rendezvous(
    listen_url: str,
    token_file: Path | None,
    db: str | None,
    options: RendezvousOptions | None = None,
) -> None:
    """Run the service until SIGINT/SIGTERM.

    ``db``: an SQLite file (default: one under the state directory) or a ``postgresql://``
    URL. Prints the bound ``http://IP:PORT`` as the first line on stdout; when it had to
    create the development token file it then says where on stderr (never the token). Raises
    ValueError for a bad listen URL, ``auth.TokenFileError`` for an unusable token file,
    ``store.StoreUnavailable`` when PostgreSQL cannot be used and ``bus.BusUnavailable`` when
    the bus (``options.bus``) cannot.
    """
    parse_listen_url(listen_url)  # fail before touching any file
    notices: list[str] = []
    tokens = resolve_tokens(token_file, notice=notices.append)

    def ready(url: str) -> None:
        print(url, flush=True)
        for text in notices:
            print(text, file=sys.stderr, flush=True)

    async def main() -> None:
        store = await open_store(db if db is not None else str(state_dir() / DB_FILENAME))
        try:
            await serve_rendezvous(listen_url, tokens, store, options, on_ready=ready)
        finally:
            await store.aclose()

    # A relay node is all socket I/O; uvloop's loop takes a third off the time it spends per
    # stream (bench/relay_bench.py, 128 concurrent streams through the cleartext relay).
    import uvloop

    uvloop.run(main())
