"""The executor's side of the relay: register, hold one websocket, serve every stream on it.

Each harness stream (by `stream_id`) becomes its own MessageTransport served by the shared
ExecServer, so a stream's failure or reset never touches the others and a dropped socket only
detaches sessions. Two security profiles:

* ``noise_hybrid_ik_v1`` (the default, Codex's): a stream exists only after its Noise handshake
  was validated by the registry (noise_admission.py); every record is AES-GCM encrypted.
* ``legacy``: codexexec's cleartext relay, where a Resume or Data frame opens a stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from codexexec.relay.frames import FrameError, data_fields, parse
from codexexec.relay.limits import (
    MAX_WEBSOCKET_MESSAGE_BYTES,
    PING_INTERVAL_SECONDS,
    PONG_TIMEOUT_SECONDS,
    RECONNECT_BACKOFF_INITIAL_SECONDS,
    RECONNECT_BACKOFF_MAX_SECONDS,
)
from codexexec.relay.streams import Admission, StreamTable
from codexexec.remote.http import HttpClient
from codexexec.remote.registry import (
    CREDENTIAL_UNAVAILABLE,
    RegistryError,
    RelayBundle,
    register_executor,
)
from codexexec.transport.socket_streams import (
    CleartextStreams,
    Serve,
    SocketStreams,
    StreamProfile,
)

if TYPE_CHECKING:
    from codexexec.noise.profiles import NoiseParty
    from codexexec.remote.auth.base import AuthProvider

log = logging.getLogger(__name__)


class ExecutorRelay:
    """Register, hold one websocket to the rendezvous, serve every stream on it; reconnect.

    With a Noise ``party`` the executor registers that profile with its public key and admits
    streams through validated handshakes; without one it registers the cleartext profile.
    """

    def __init__(
        self,
        registry_url: str,
        environment_id: str,
        token: AuthProvider | str | None,
        serve: Serve,
        on_ready: Callable[[str], None] | None = None,
        party: NoiseParty | None = None,
        on_attempt: Callable[[str, str], None] = lambda kind, outcome: None,
    ) -> None:
        self._registry_url = registry_url
        # ("registration" | "rendezvous_connect", "ok" | "error"): the executor's metrics.
        self._on_attempt = on_attempt
        self._environment_id = environment_id
        self._token = token
        self._serve = serve
        self._on_ready = on_ready
        self._party = party
        self.connections = 0

    async def run(self) -> None:
        backoff = RECONNECT_BACKOFF_INITIAL_SECONDS
        bundle = None
        while True:
            if bundle is None:
                try:
                    bundle = await register_executor(
                        self._registry_url, self._environment_id, self._token, self._party
                    )
                except RegistryError as exc:
                    self._on_attempt("registration", "error")
                    if exc.code != CREDENTIAL_UNAVAILABLE:
                        raise
                    # A rotating credential expired: its parent will send a fresh one, and
                    # checking for it costs no request, so look again each second.
                    log.warning("waiting for a usable executor credential: %s", exc)
                    await asyncio.sleep(RECONNECT_BACKOFF_INITIAL_SECONDS)
                    continue
                except BaseException:
                    self._on_attempt("registration", "error")
                    raise
                self._on_attempt("registration", "ok")
                log.debug(
                    "registered environment %s as %s (%s)",
                    self._environment_id,
                    bundle.executor_registration_id,
                    bundle.security_profile,
                )
            try:
                async with connect(
                    bundle.url,
                    max_size=MAX_WEBSOCKET_MESSAGE_BYTES,
                    compression=None,
                    ping_interval=PING_INTERVAL_SECONDS,
                    ping_timeout=PONG_TIMEOUT_SECONDS,
                    user_agent_header=None,
                    proxy=None,  # direct, like the registry's requests (remote/http.py)
                ) as ws:
                    self._on_attempt("rendezvous_connect", "ok")
                    self.connections += 1
                    backoff = RECONNECT_BACKOFF_INITIAL_SECONDS
                    log.debug(
                        "relay socket connected: registration=%s", bundle.executor_registration_id
                    )
                    if self._on_ready is not None:
                        self._on_ready(self._environment_id)
                    await self._serve_socket(ws, bundle)
            except InvalidStatus as exc:
                self._on_attempt("rendezvous_connect", "error")
                if 400 <= exc.response.status_code < 500:
                    bundle = None  # the relay URL expired or was refused: register again
                log.warning("relay connection refused (%s)", exc.response.status_code)
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                self._on_attempt("rendezvous_connect", "error")
                log.warning("relay connection failed: %s", type(exc).__name__)
            except ConnectionClosed:
                pass
            except InvalidURI:
                # Its text quotes the URL, whose signed query is a credential.
                raise RegistryError(
                    "environment registry returned a relay URL that is not a ws:// or wss:// URL"
                ) from None
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RECONNECT_BACKOFF_MAX_SECONDS)

    def _profile(
        self, streams: SocketStreams, bundle: RelayBundle, http: HttpClient
    ) -> StreamProfile:
        if self._party is None:
            return CleartextStreams(streams)
        from codexexec.remote.validation import Validation, validate_harness_key
        from codexexec.transport.noise_admission import NoiseStreams

        async def validate(
            stream_id: str, harness_public_key: dict[str, str], authorization: str
        ) -> Validation:
            return await validate_harness_key(
                self._registry_url,
                self._environment_id,
                self._token,
                registration_id=bundle.executor_registration_id,
                harness_public_key=harness_public_key,
                authorization=authorization,
                stream_id=stream_id,
                session=http,
            )

        return NoiseStreams(streams, self._party, bundle, validate)

    async def _serve_socket(self, ws: ClientConnection, bundle: RelayBundle) -> None:
        admission = Admission.IMPLICIT if self._party is None else Admission.EXPLICIT
        streams = SocketStreams(StreamTable(admission=admission), self._serve, ws)
        # One kept HTTP client for this socket's /validate calls: each stream's validation
        # reuses a connection instead of opening one (~0.45 ms each on loopback).
        http = HttpClient()
        profile = self._profile(streams, bundle, http)
        try:
            async for message in ws:
                if isinstance(message, str):
                    continue  # the relay speaks binary protobuf frames only
                fields = data_fields(message)
                if fields is not None:
                    await profile.receive_data(*fields)
                    continue
                try:
                    frame = parse(message)
                except FrameError:
                    continue  # logged and dropped, the socket is kept (docs/relay-protocol.md §3.3)
                await profile.receive(frame)
        finally:
            profile.close()
            streams.end_all()
            await http.close()
            log.debug("relay socket closed: registration=%s", bundle.executor_registration_id)
