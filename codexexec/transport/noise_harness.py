"""Harness side of the Noise relay: the encrypted stream Codex 0.169.0 executors speak.

/connect (with our static public key) returns the executor's key and a single-use
authorization; the stream is claimed with `resume`, message 1 (carrying the
authorization) and message 2 travel as Handshake frames, and from then on the stream is
an ordinary HarnessRelayTransport whose records are transport-encrypted.

The hybrid profile is offered first; a codexexec rendezvous whose executor registered the
classic `noise_ik_v1` profile says so in its mismatch error, and the harness asks again with
a classic key. The harness identity of each environment is kept for the process's life, so
reconnects present the same key (as Codex's harness does).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from codexexec.noise.errors import NoiseError
from codexexec.noise.hybrid_ik import REGISTRY_AUTHENTICATION_REJECTED, build_prologue
from codexexec.noise.profiles import PROFILES, Finished, Initiator, NoiseParty, new_party
from codexexec.protocol.registry import NOISE_PROFILE
from codexexec.relay.frames import FrameError, encode, handshake_frame, parse, resume_frame
from codexexec.remote.registry import Credential, RegistryError, connect_harness_noise
from codexexec.transport.relay import HarnessRelayTransport, open_relay_socket

RESET_MESSAGE = "Noise relay stream reset"
# Message 2 arrives once the registry validated us: the executor waits up to 10 s for it.
HANDSHAKE_TIMEOUT_SECONDS = 20.0

MAX_REMEMBERED_IDENTITIES = 256
_identities: OrderedDict[tuple[str, str, str], NoiseParty] = OrderedDict()


def harness_identity(registry_url: str, environment_id: str, profile: str) -> NoiseParty:
    """This process's identity for one environment (the least recently used are forgotten)."""
    key = (registry_url, environment_id, profile)
    party = _identities.get(key)
    if party is None:
        party = _identities[key] = new_party(profile)
        while len(_identities) > MAX_REMEMBERED_IDENTITIES:
            _identities.popitem(last=False)
    _identities.move_to_end(key)
    return party


async def connect_noise_harness(
    registry_url: str, environment_id: str, token: Credential
) -> HarnessRelayTransport:
    party = harness_identity(registry_url, environment_id, NOISE_PROFILE)
    try:
        bundle = await connect_harness_noise(
            registry_url, environment_id, token, party.public_key_json(), party.profile
        )
    except RegistryError as exc:
        other = exc.security_profile
        if exc.code != "security_profile_mismatch" or other not in PROFILES or other is None:
            raise
        party = harness_identity(registry_url, environment_id, other)
        bundle = await connect_harness_noise(
            registry_url, environment_id, token, party.public_key_json(), party.profile
        )
    try:
        ws = await open_relay_socket(bundle["url"], environment_id)
    except RegistryError as exc:
        if exc.status != 401:
            raise
        # The signed URL expired or was refused: a bundle is single-use, so fetch one fresh
        # bundle and try once more (as Codex's harness does on its first connection).
        bundle = await connect_harness_noise(
            registry_url, environment_id, token, party.public_key_json(), party.profile
        )
        ws = await open_relay_socket(bundle["url"], environment_id)
    stream_id = str(uuid.uuid4())
    prologue = build_prologue(environment_id, bundle["executor_registration_id"], stream_id)
    try:
        initiator = party.initiator(bundle["executor_public_key"], prologue)
    except ValueError as exc:  # NoiseKeyError: a malformed or foreign key
        await ws.close()
        raise RegistryError(
            f"environment registry returned an unusable executor key: {exc}"
        ) from None
    message1 = initiator.write_message1(bundle["harness_key_authorization"].encode())
    try:
        # The rendezvous closes this socket (4002) when the executor's goes away meanwhile:
        # the sends fail like the wait for message 2 would.
        await ws.send(encode(resume_frame(stream_id, 0)))
        await ws.send(encode(handshake_frame(stream_id, message1)))
        async with asyncio.timeout(HANDSHAKE_TIMEOUT_SECONDS):
            result = await _await_message2(ws, stream_id, initiator)
    except ConnectionClosed as exc:
        await ws.close()
        raise RegistryError(
            f"Noise handshake with `{environment_id}` failed: the relay closed the connection "
            f"({exc.rcvd.code if exc.rcvd else 'no close frame'}); the executor may be "
            "reconnecting",
            "environment_offline",
        ) from None
    except (FrameError, NoiseError, TimeoutError) as exc:
        await ws.close()
        raise RegistryError(
            f"Noise handshake with `{environment_id}` failed: {type(exc).__name__}"
        ) from None
    except RegistryError:
        await ws.close()
        raise
    if result.payload == REGISTRY_AUTHENTICATION_REJECTED:
        await ws.close()
        raise RegistryError(
            f"the registry no longer accepts the executor of `{environment_id}` "
            "(its registration credentials were rejected); try again once it re-registers",
            "registry_authentication_rejected",
        )
    description = f"{environment_id} via {registry_url} ({party.profile})"
    return HarnessRelayTransport(ws, stream_id, description, cipher=result.transport)


async def _await_message2(ws: ClientConnection, stream_id: str, initiator: Initiator) -> Finished:
    while True:
        raw = await ws.recv()
        if isinstance(raw, str):
            continue
        frame = parse(raw, strict=False)
        if frame.stream_id != stream_id:
            continue
        kind = frame.WhichOneof("body")
        if kind == "reset":
            raise RegistryError(RESET_MESSAGE)
        if kind == "handshake":
            return initiator.read_message2(frame.handshake.payload)
        if kind == "data":  # accepting it would open an unauthenticated path
            raise RegistryError("Noise relay received data before handshake completion")
