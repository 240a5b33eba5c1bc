"""Noise stream admission on one executor socket: handshake, registry validation, budget.

The decisions (which handshake may proceed, the failure budget and its pause) are
``relay/admission.py``'s, with this module's clock reading passed in; here are the I/O
around them: the Noise read of message 1 under this stream's prologue, the registry's
`/validate` (10 s at most), message 2 and the Resets. Every refusal is a Reset with the one
generic reason; the harness learns nothing about why (docs/relay-protocol.md §5, §7).

Diagnostics are debug-level and name only stream and registration ids and a reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from codexexec.noise.hybrid_ik import (
    REGISTRY_AUTHENTICATION_REJECTED,
    HandshakeError,
    build_prologue,
    check_harness_key_authorization,
)
from codexexec.noise.profiles import NoiseParty, Responder
from codexexec.relay.admission import HandshakeGate
from codexexec.relay.frames import RelayMessageFrame, encode, handshake_frame
from codexexec.relay.limits import (
    HANDSHAKE_COOLDOWN_SECONDS,
    MAX_PENDING_HANDSHAKE_VALIDATIONS,
    VALIDATION_TIMEOUT_SECONDS,
)
from codexexec.relay.streams import Action, Reset
from codexexec.remote.registry import RelayBundle
from codexexec.remote.validation import Validation
from codexexec.transport.socket_streams import SocketStreams

log = logging.getLogger(__name__)

Validate = Callable[[str, dict[str, str], str], Awaitable[Validation]]


@dataclass(slots=True)
class _Pending:
    validation_id: int
    task: asyncio.Task[None]


class NoiseStreams:
    """The Noise profile's admission for one physical socket."""

    def __init__(
        self,
        streams: SocketStreams,
        party: NoiseParty,
        bundle: RelayBundle,
        validate: Validate,
        *,
        clock: Callable[[], float] = time.monotonic,
        validation_timeout: float = VALIDATION_TIMEOUT_SECONDS,
        cooldown: float = HANDSHAKE_COOLDOWN_SECONDS,
    ) -> None:
        self._streams = streams
        self._party = party
        self._bundle = bundle
        self._validate = validate
        self._clock = clock
        self._validation_timeout = validation_timeout
        self._gate = HandshakeGate(cooldown=cooldown)
        self._pending: dict[str, _Pending] = {}
        self._validation_ids = 0
        # Handshakes beyond these wait for a /validate slot, not a Reset (relay/limits.py).
        self._validations = asyncio.Semaphore(MAX_PENDING_HANDSHAKE_VALIDATIONS)

    async def receive_data(self, stream_id: str, seq: int, payload: bytes) -> None:
        if stream_id in self._pending:
            await self._data_before_handshake(stream_id)
        else:
            await self._streams.apply(self._streams.table.receive_data(stream_id, seq, payload))

    async def _data_before_handshake(self, stream_id: str) -> None:
        # Early data would be an unauthenticated path.
        self._cancel(stream_id)
        await self._refuse(stream_id, "data_before_handshake", charge=True)

    async def receive(self, frame: RelayMessageFrame) -> None:
        stream_id = frame.stream_id
        kind = frame.WhichOneof("body")
        if stream_id in self._pending:
            if kind == "reset":  # the harness gave up: drop it, nothing is sent back
                self._cancel(stream_id)
            elif kind == "data":
                await self._data_before_handshake(stream_id)
            elif kind == "handshake":  # a second message 1 is a replay
                self._cancel(stream_id)
                await self._refuse(stream_id, "duplicate_pending_handshake", charge=True)
            return
        verdict = self._streams.table.receive(frame)
        if verdict.action is Action.HANDSHAKE:
            await self._handshake(stream_id, frame.handshake.payload)
        else:
            await self._streams.apply(verdict)

    def close(self) -> None:
        """The socket ended: abandon every validation still in flight."""
        for stream_id in list(self._pending):
            self._cancel(stream_id)

    @property
    def paused(self) -> bool:
        return self._gate.paused(self._clock())

    @property
    def failures(self) -> int:
        return self._gate.failures

    # -- admission --------------------------------------------------------------------------

    async def _handshake(self, stream_id: str, message1: bytes) -> None:
        table_refusal = self._streams.table.refusal(stream_id)
        refusal = self._gate.check(
            self._clock(),
            None if table_refusal is None else table_refusal.value,
            len(self._pending),
        )
        if refusal is not None:
            await self._refuse(stream_id, refusal.reason, charge=False)
            return
        bundle = self._bundle
        prologue = build_prologue(bundle.environment_id, bundle.executor_registration_id, stream_id)
        responder = self._party.responder(prologue)
        try:
            authorization = check_harness_key_authorization(responder.read_message1(message1))
        except HandshakeError:
            await self._refuse(stream_id, "handshake_request", charge=True)
            return
        self._validation_ids += 1
        validation_id = self._validation_ids
        harness_key = responder.remote_public_key_json()
        task = self._streams.spawn(
            self._complete(stream_id, validation_id, responder, harness_key, authorization)
        )
        self._pending[stream_id] = _Pending(validation_id, task)

    async def _complete(
        self,
        stream_id: str,
        validation_id: int,
        responder: Responder,
        harness_key: dict[str, str],
        authorization: str,
    ) -> None:
        # The deadline runs from admission, the wait for a slot included; one that had to
        # wait and then ran out was kept waiting by this socket, not failed by the harness.
        queued = self._validations.locked()
        try:
            async with asyncio.timeout(self._validation_timeout), self._validations:
                outcome = await self._validate(stream_id, harness_key, authorization)
            reason = outcome.value
        except TimeoutError:
            outcome, reason = None, "validation_timeout"
        except Exception as exc:  # any failure refuses this stream, never the socket
            # Never the message: it may quote a credential or a header value.
            log.debug("noise validation failed: stream=%s error=%s", stream_id, type(exc).__name__)
            outcome, reason = None, "validation_error"
        pending = self._pending.get(stream_id)
        if pending is None or pending.validation_id != validation_id:
            return  # cancelled or replaced meanwhile: the answer is stale
        del self._pending[stream_id]
        if outcome is Validation.VALID:
            await self._open(stream_id, responder)
        elif outcome is None and queued and reason == "validation_timeout":
            await self._refuse(stream_id, "validation_queue_timeout", charge=False)
        elif outcome is Validation.EXECUTOR_UNAUTHORIZED:
            # Tell the harness (inside the channel) that credentials need refreshing, then end.
            message2, _ = responder.write_message2(REGISTRY_AUTHENTICATION_REJECTED)
            await self._streams.send_frame(encode(handshake_frame(stream_id, message2)))
            await self._refuse(stream_id, reason, charge=True)
        else:
            await self._refuse(stream_id, reason, charge=True)

    async def _open(self, stream_id: str, responder: Responder) -> None:
        table = self._streams.table
        if table.refusal(stream_id) is not None:  # filled up while the registry answered
            await self._refuse(stream_id, "stream_full", charge=False)
            return
        message2, result = responder.write_message2()
        # Open before sending: the harness may send Data the moment message 2 arrives.
        self._streams.open(table.open(stream_id), cipher=result.transport)
        await self._streams.send_frame(encode(handshake_frame(stream_id, message2)))
        log.debug(
            "noise handshake accepted: stream=%s registration=%s",
            stream_id,
            self._bundle.executor_registration_id,
        )

    # -- refusals and the failure budget ----------------------------------------------------

    def _cancel(self, stream_id: str) -> None:
        pending = self._pending.pop(stream_id, None)
        if pending is not None:
            pending.task.cancel()

    async def _refuse(self, stream_id: str, reason: str, *, charge: bool) -> None:
        log.debug(
            "noise handshake rejected: reason=%s stream=%s registration=%s",
            reason,
            stream_id,
            self._bundle.executor_registration_id,
        )
        if charge:
            self._charge()
        await self._streams.send_frame(Reset.encode(stream_id))

    def _charge(self) -> None:
        if self._gate.charge(self._clock()):
            log.warning(
                "pausing Noise relay handshakes for %.0f s after repeated failures "
                "(registration %s)",
                self._gate.cooldown,
                self._bundle.executor_registration_id,
            )
