"""Harness side of the Noise relay: the encrypted stream Codex 0.169.0 executors speak.

/connect (with our static public key) returns the executor's key and a single-use
authorization; the stream is claimed with `resume`, message 1 (carrying the
authorization) and message 2 travel as Handshake frames, and from then on the stream is
an ordinary HarnessRelayTransport whose records are AES-GCM transport messages.
"""

from __future__ import annotations

import asyncio
import uuid

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from codexexec.noise.hybrid_ik import (
    REGISTRY_AUTHENTICATION_REJECTED,
    HandshakeResult,
    HybridIKInitiator,
    build_prologue,
)
from codexexec.noise.keys import NoiseChannelPublicKey, StaticIdentity
from codexexec.noise.transport import NoiseError
from codexexec.relay.frames import FrameError, encode, handshake_frame, parse, resume_frame
from codexexec.remote.registry import RegistryError, connect_harness_noise
from codexexec.transport.relay import HarnessRelayTransport, open_relay_socket

RESET_MESSAGE = "Noise relay stream reset"
# Message 2 arrives once the registry validated us: the executor waits up to 10 s for it.
HANDSHAKE_TIMEOUT_SECONDS = 20.0


async def connect_noise_harness(
    registry_url: str, environment_id: str, token: str | None
) -> HarnessRelayTransport:
    identity = StaticIdentity.generate()
    bundle = await connect_harness_noise(
        registry_url, environment_id, token, identity.channel_public_key().to_json_obj()
    )
    try:
        executor_key = NoiseChannelPublicKey.from_json_obj(bundle["executor_public_key"]).decode()
    except (KeyError, ValueError) as exc:
        raise RegistryError(
            f"environment registry returned an unusable executor key: {exc}"
        ) from None
    ws = await open_relay_socket(bundle["url"], environment_id)
    stream_id = str(uuid.uuid4())
    prologue = build_prologue(environment_id, bundle["executor_registration_id"], stream_id)
    initiator = HybridIKInitiator(identity, executor_key, prologue)
    message1 = initiator.write_message1(bundle["harness_key_authorization"].encode())
    await ws.send(encode(resume_frame(stream_id, 0)))
    await ws.send(encode(handshake_frame(stream_id, message1)))
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT_SECONDS):
            result = await _await_message2(ws, stream_id, initiator)
    except (ConnectionClosed, FrameError, NoiseError, TimeoutError) as exc:
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
    description = f"{environment_id} via {registry_url} (Noise)"
    return HarnessRelayTransport(ws, stream_id, description, cipher=result.transport)


async def _await_message2(
    ws: ClientConnection, stream_id: str, initiator: HybridIKInitiator
) -> HandshakeResult:
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
