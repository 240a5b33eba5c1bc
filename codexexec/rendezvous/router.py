"""Which harness owns which stream of one executor socket, and what to do with a frame.

Pure, in the style of ``relay/streams.py``: a frame's stream id and kind go in, a verdict
comes out, and the service does the I/O (queueing to a socket, writing a Reset, counting).
A harness is any hashable handle; the service passes its socket peer.

Rules, in the order they are checked:

From a harness:
1. A frame for a stream another harness owns is refused (``rendezvous_stream_in_use``); a
   Reset for a stream it does not own is dropped (nothing of its own to end).
2. A frame opening a new stream is refused when the harness already holds its limit
   (``rendezvous_stream_limit``); otherwise the harness now owns the stream.
3. A Handshake while the harness's credential is paused (``handshake_budget.py``) is refused
   and not forwarded; otherwise the stream awaits the executor's answer.
4. A Reset ends the harness's ownership. Everything else is forwarded to the executor.

From the executor:
1. A frame for a stream nobody owns is dropped (``unrouted``).
2. The executor's answer to a pending handshake is reported: a Handshake means it was
   answered, a Reset that it was refused (the credential's failure).
3. A Reset ends the ownership. The frame goes to the owning harness.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

H = TypeVar("H", bound=Hashable)

RESET_STREAM_IN_USE = "rendezvous_stream_in_use"
RESET_STREAM_LIMIT = "rendezvous_stream_limit"
# This harness credential's handshakes failed too often (handshake_budget.py).
RESET_HANDSHAKES_PAUSED = "rendezvous_handshakes_paused"


@dataclass(frozen=True, slots=True)
class ToExecutor:
    """Forward the frame to the executor (``claimed``: it opened a stream)."""

    claimed: bool = False


@dataclass(frozen=True, slots=True)
class ToHarness(Generic[H]):
    """Deliver the frame to ``harness``; ``handshake`` reports the executor's answer to a
    pending handshake, if this frame is one."""

    harness: H
    handshake: Literal["answered", "refused"] | None = None


@dataclass(frozen=True, slots=True)
class Refuse:
    """Do not forward; send the harness a Reset with ``reason``."""

    reason: str


@dataclass(frozen=True, slots=True)
class Drop:
    reason: Literal["unrouted"] = "unrouted"


class StreamRouter(Generic[H]):
    def __init__(self, max_streams_per_harness: int) -> None:
        self.max_streams_per_harness = max_streams_per_harness
        self._owners: dict[str, H] = {}
        self._streams: dict[H, set[str]] = {}
        # Streams whose handshake went to the executor and awaits its answer.
        self._pending: set[str] = set()

    def __len__(self) -> int:
        """Streams owned right now."""
        return len(self._owners)

    def streams_of(self, harness: H) -> set[str]:
        return set(self._streams.get(harness, ()))

    def from_harness(
        self, harness: H, stream_id: str, kind: str | None, *, handshakes_paused: bool = False
    ) -> ToExecutor | Refuse | Drop:
        owner = self._owners.get(stream_id)
        claimed = False
        if owner != harness:
            if kind == "reset":
                return Drop()
            if owner is not None:
                return Refuse(RESET_STREAM_IN_USE)
            if len(self._streams.get(harness, ())) >= self.max_streams_per_harness:
                return Refuse(RESET_STREAM_LIMIT)
            self._claim(harness, stream_id)
            claimed = True
        if kind == "handshake":
            if handshakes_paused:
                self._release(stream_id)
                return Refuse(RESET_HANDSHAKES_PAUSED)
            self._pending.add(stream_id)
        if kind == "reset":
            self._release(stream_id)
        return ToExecutor(claimed)

    def from_executor(self, stream_id: str, kind: str | None) -> ToHarness[H] | Drop:
        harness = self._owners.get(stream_id)
        if harness is None:
            return Drop()
        answer: Literal["answered", "refused"] | None = None
        if stream_id in self._pending and kind in ("handshake", "reset"):
            self._pending.discard(stream_id)
            answer = "answered" if kind == "handshake" else "refused"
        if kind == "reset":
            self._release(stream_id)
        return ToHarness(harness, answer)

    def harness_gone(self, harness: H) -> list[str]:
        """The harness's socket ended: the streams it owned, to reset at the executor."""
        streams = sorted(self._streams.get(harness, ()))
        for stream_id in streams:
            self._release(stream_id)
        return streams

    def executor_gone(self) -> dict[H, list[str]]:
        """The executor's socket ended: each harness's streams, to reset at the harness."""
        ended = {harness: sorted(streams) for harness, streams in self._streams.items()}
        self._owners.clear()
        self._streams.clear()
        self._pending.clear()
        return ended

    def _claim(self, harness: H, stream_id: str) -> None:
        self._owners[stream_id] = harness
        self._streams.setdefault(harness, set()).add(stream_id)

    def _release(self, stream_id: str) -> None:
        harness = self._owners.pop(stream_id, None)
        self._pending.discard(stream_id)
        if harness is not None:
            streams = self._streams.get(harness)
            if streams is not None:
                streams.discard(stream_id)
                if not streams:
                    del self._streams[harness]
