"""Per-stream sequencing and the executor's stream table, in Codex 0.169.0's relay dialect.

The dialect (docs/relay-protocol.md §3.3, §4): every stream numbers its
Data frames from 0 in each direction, nobody acks or retransmits, and the receiver repairs
reordering within a window: with next expected seq ``n`` it buffers seqs up to ``n + 64`` and
resets the stream at ``n + 65``; duplicates (below ``n`` or already buffered) are dropped
silently, the first copy winning. Errors end one stream with a Reset and never the socket.

Everything here is pure and synchronous; the websocket transport drives it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import Final, Generic, TypeVar

import msgspec

from codexexec.relay.errors import RelayError
from codexexec.relay.frames import (
    RelayMessageFrame,
    encode_data,
    encode_reset,
    reset_frame,
    stream_header,
)
from codexexec.relay.limits import (
    FIRST_SEQ,
    MAX_ACTIVE_STREAMS,
    MAX_PENDING_BYTES,
    MAX_REORDER_DISTANCE,
    MAX_RETIRED_STREAM_IDS,
    MAX_SEQ,
    RESET_REASON,
)

__all__ = [
    "Action",
    "Admission",
    "OutboundSequencer",
    "RefusalKind",
    "RelayStream",
    "ReorderBuffer",
    "Reset",
    "StreamError",
    "StreamErrorKind",
    "StreamRefused",
    "StreamTable",
    "Verdict",
]

C = TypeVar("C")


class Reset:
    """Reset frames as codexexec sends them: always Codex's one generic reason.

    Codex 0.169.0 uses ``noise_relay_protocol_error`` for every Reset, whatever the cause
    (docs/relay-protocol.md §7). The reason is cleartext and unauthenticated, so a received
    one is never logged or surfaced; local diagnostics travel separately (``Verdict.detail``).
    """

    REASON: Final = RESET_REASON

    @staticmethod
    def frame(stream_id: str) -> RelayMessageFrame:
        return reset_frame(stream_id, RESET_REASON)

    @staticmethod
    def encode(stream_id: str) -> bytes:
        return encode_reset(stream_header(stream_id), RESET_REASON)

    @staticmethod
    def encode_with_header(header: bytes) -> bytes:
        """Like ``encode`` from a prebuilt ``frames.stream_header``."""
        return encode_reset(header, RESET_REASON)


class StreamErrorKind(enum.Enum):
    REORDER_WINDOW = "reorder_window"
    PENDING_BYTES = "pending_bytes"
    SEQ_EXHAUSTED = "seq_exhausted"


class StreamError(RelayError):
    """A sequencing failure that ends one stream (with a Reset), never the socket."""

    def __init__(self, kind: StreamErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class OutboundSequencer:
    """Numbers one stream's outgoing Data frames: 0, 1, 2, ... never wrapping.

    Codex 0.169.0 sends one Noise record per Data frame and record ``n`` travels as seq ``n``
    (its transport nonce), so a seq is allocated exactly once and never reused.
    """

    __slots__ = ("_next", "header", "stream_id")

    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        self.header = stream_header(stream_id)
        self._next = FIRST_SEQ

    @property
    def next_seq(self) -> int:
        """The seq the next Data frame will carry."""
        return self._next

    def allocate(self) -> int:
        """Take the next seq; ``StreamError`` once all 2**32 are used (the stream must end)."""
        seq = self._next
        if seq > MAX_SEQ:
            raise StreamError(
                StreamErrorKind.SEQ_EXHAUSTED, "Noise relay sequence number exhausted"
            )
        self._next = seq + 1
        return seq

    def encode_data(
        self,
        payload: bytes | bytearray | memoryview,
        *,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> bytes:
        """Encode the next Data frame of this stream (allocates its seq)."""
        if not payload:  # check before allocating: a refused frame must not consume a seq
            raise ValueError("relay data payload must not be empty")
        seq = self.allocate()
        return encode_data(
            self.header, seq, payload, traceparent=traceparent, tracestate=tracestate
        )

    def encode_reset(self) -> bytes:
        return Reset.encode_with_header(self.header)


class ReorderBuffer:
    """One stream's inbound Data payloads, released strictly in seq order, each exactly once.

    Memory is bounded: the expected seq is never held, so at most ``max_distance`` (64) frames
    and ``max_pending_bytes`` (1 MiB) wait at any time.
    """

    __slots__ = ("_max_bytes", "_max_distance", "_next", "_pending", "_pending_bytes", "duplicates")

    def __init__(
        self,
        *,
        max_distance: int = MAX_REORDER_DISTANCE,
        max_pending_bytes: int = MAX_PENDING_BYTES,
    ) -> None:
        self._next = FIRST_SEQ
        self._pending: dict[int, bytes] = {}
        self._pending_bytes = 0
        self._max_distance = max_distance
        self._max_bytes = max_pending_bytes
        self.duplicates = 0

    @property
    def next_seq(self) -> int:
        """The seq that releases data next."""
        return self._next

    @property
    def pending_frames(self) -> int:
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def push(self, seq: int, payload: bytes) -> tuple[bytes, ...] | None:
        """Accept one Data frame.

        Returns the payloads now deliverable in order (a non-empty tuple), ``()`` if the frame
        was buffered ahead of a gap, or None for a duplicate (dropped; the first copy wins).
        Raises ``StreamError`` if ``seq`` is beyond ``next_seq + max_distance`` or the buffered
        bytes would exceed the cap; the stream must then be reset.
        """
        expected = self._next
        if seq == expected:
            if not self._pending:  # the common in-order case
                self._next = expected + 1
                return (payload,)
            return self._release(payload)
        if seq < expected or seq in self._pending:
            self.duplicates += 1
            return None
        if seq - expected > self._max_distance:
            raise StreamError(
                StreamErrorKind.REORDER_WINDOW, "Noise relay ciphertext exceeds reorder window"
            )
        size = len(payload)
        if self._pending_bytes + size > self._max_bytes:
            raise StreamError(
                StreamErrorKind.PENDING_BYTES, "Noise relay pending ciphertext buffer is full"
            )
        self._pending[seq] = payload
        self._pending_bytes += size
        return ()

    def _release(self, first: bytes) -> tuple[bytes, ...]:
        out = [first]
        pending = self._pending
        seq = self._next + 1
        while seq in pending:
            payload = pending.pop(seq)
            self._pending_bytes -= len(payload)
            out.append(payload)
            seq += 1
        self._next = seq
        return tuple(out)


class RelayStream(Generic[C]):
    """One virtual stream: its outbound sequencer, inbound reorder buffer, and the transport's
    own per-stream state (``context``, e.g. the Noise transport and the JSON-RPC processor).

    ``instance`` distinguishes successive streams that reuse an id, so a late "stream closed"
    notification removes only the stream it was about.
    """

    __slots__ = ("context", "inbound", "instance", "outbound", "stream_id")

    def __init__(
        self,
        stream_id: str,
        *,
        instance: int = 0,
        context: C | None = None,
        max_reorder_distance: int = MAX_REORDER_DISTANCE,
        max_pending_bytes: int = MAX_PENDING_BYTES,
    ) -> None:
        self.stream_id = stream_id
        self.instance = instance
        self.context = context
        self.outbound = OutboundSequencer(stream_id)
        self.inbound = ReorderBuffer(
            max_distance=max_reorder_distance, max_pending_bytes=max_pending_bytes
        )

    def __repr__(self) -> str:
        return f"RelayStream({self.stream_id!r}, instance={self.instance})"


class Admission(enum.Enum):
    """How a stream comes into the executor's table."""

    # Only ``StreamTable.open`` admits a stream: the Noise relay opens it when the handshake
    # has been validated. Data for an id that is not active is answered with a Reset
    # (0.169.0, docs/relay-protocol.md §3.3); Resume is ignored. Handshakes still being
    # validated are the transport's to track: it answers their Data itself (0.169.0:
    # data_before_handshake).
    EXPLICIT = "explicit"
    # A Resume or Data frame for a new id opens it (the cleartext relay, which creates a
    # virtual connection lazily). A new id beyond the capacity is reset and retired.
    IMPLICIT = "implicit"


class RefusalKind(enum.Enum):
    ACTIVE = "active"  # the id is already an active stream
    RETIRED = "retired"  # the id was used recently; stream ids are single-use
    FULL = "full"  # MAX_ACTIVE_STREAMS streams are active


_REFUSAL_TEXT: Final = {
    RefusalKind.ACTIVE: "relay stream is already active",
    RefusalKind.RETIRED: "relay stream id was retired",
    RefusalKind.FULL: "Noise relay has too many active streams",
}


class StreamRefused(RelayError):
    """``StreamTable.open`` refused a stream id."""

    def __init__(self, kind: RefusalKind) -> None:
        super().__init__(_REFUSAL_TEXT[kind])
        self.kind = kind


class Action(enum.Enum):
    """What the transport does with a received frame (see ``StreamTable.receive``)."""

    DELIVER = "deliver"  # hand ``payloads`` to the stream, in order
    BUFFERED = "buffered"  # held until the gap before it fills
    DUPLICATE = "duplicate"  # dropped: seen before
    OPENED = "opened"  # a new stream was admitted (Admission.IMPLICIT, by a Resume)
    RESET = "reset"  # send ``reply`` (a Reset frame); the stream, if any, is gone
    CLOSED = "closed"  # the peer reset an active stream: it is gone, nothing is sent
    HANDSHAKE = "handshake"  # a Handshake frame: the transport's admission decides
    IGNORED = "ignored"  # nothing to do


class Verdict(msgspec.Struct, Generic[C], frozen=True):
    """The outcome of one received frame.

    ``stream`` is the stream the frame concerned when it is (or was, for RESET/CLOSED) active.
    ``opened`` is true when this frame admitted the stream (Admission.IMPLICIT). ``detail`` is a
    local diagnostic for logs; it never goes on the wire.
    """

    action: Action
    stream_id: str
    payloads: tuple[bytes, ...] = ()
    reply: bytes | None = None
    stream: RelayStream[C] | None = None
    opened: bool = False
    detail: str = ""


class StreamTable(Generic[C]):
    """The executor's streams on one physical socket.

    * At most ``max_active`` (128) streams are active at once.
    * Ids that leave the table are remembered (``max_retired``, 1024, oldest forgotten first):
      a retired id is never reopened, and late frames for it are dropped instead of being
      answered (``reset_retired_data=True`` answers Data with a Reset like 0.169.0, which keeps
      no retired ids).
    * A Reset, in either direction, removes only its own stream; so does a sequencing error.

    ``receive`` expects frames that passed ``frames.validate``. Make a new table per physical
    connection: nothing survives a reconnect.
    """

    def __init__(
        self,
        *,
        admission: Admission = Admission.EXPLICIT,
        max_active: int = MAX_ACTIVE_STREAMS,
        max_retired: int = MAX_RETIRED_STREAM_IDS,
        max_reorder_distance: int = MAX_REORDER_DISTANCE,
        max_pending_bytes: int = MAX_PENDING_BYTES,
        reset_retired_data: bool = False,
    ) -> None:
        self.admission = admission
        self.max_active = max_active
        self.max_retired = max_retired
        self.max_reorder_distance = max_reorder_distance
        self.max_pending_bytes = max_pending_bytes
        self.reset_retired_data = reset_retired_data
        self._active: dict[str, RelayStream[C]] = {}
        self._retired: dict[str, None] = {}  # insertion order = retirement order (FIFO)
        self._instances = 0

    # -- inspection ------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._active)

    def __contains__(self, stream_id: object) -> bool:
        return stream_id in self._active

    def __iter__(self) -> Iterator[RelayStream[C]]:
        """The active streams, as a snapshot (the table may change while iterating)."""
        return iter(list(self._active.values()))

    def get(self, stream_id: str) -> RelayStream[C] | None:
        return self._active.get(stream_id)

    def is_retired(self, stream_id: str) -> bool:
        return stream_id in self._retired

    @property
    def retired_count(self) -> int:
        return len(self._retired)

    def refusal(self, stream_id: str) -> RefusalKind | None:
        """Why ``open(stream_id)`` would be refused now, or None if it would succeed."""
        if stream_id in self._active:
            return RefusalKind.ACTIVE
        if stream_id in self._retired:
            return RefusalKind.RETIRED
        if len(self._active) >= self.max_active:
            return RefusalKind.FULL
        return None

    # -- changes ---------------------------------------------------------------------------

    def open(self, stream_id: str, context: C | None = None) -> RelayStream[C]:
        """Admit a stream; ``StreamRefused`` if it is active, retired, or the table is full.

        A refused id is not retired here: the caller decides (Admission.IMPLICIT retires it).
        """
        kind = self.refusal(stream_id)
        if kind is not None:
            raise StreamRefused(kind)
        self._instances += 1
        stream: RelayStream[C] = RelayStream(
            stream_id,
            instance=self._instances,
            context=context,
            max_reorder_distance=self.max_reorder_distance,
            max_pending_bytes=self.max_pending_bytes,
        )
        self._active[stream_id] = stream
        return stream

    def retire(self, stream_id: str, instance: int | None = None) -> RelayStream[C] | None:
        """Remove ``stream_id`` (if active, and of ``instance`` when given) and remember the id.

        Returns the removed stream. With a non-matching ``instance`` nothing changes: the id
        belongs to a newer stream. An id that was not active is still remembered.
        """
        stream = self._active.get(stream_id)
        if stream is not None:
            if instance is not None and stream.instance != instance:
                return None
            del self._active[stream_id]
        self._remember(stream_id)
        return stream

    def close(self, stream_id: str, instance: int | None = None) -> bytes | None:
        """The executor ends a stream: retire it and return the Reset frame to send.

        Codex sends this best-effort Reset even when a stream ends normally
        (docs/relay-protocol.md §7).
        Returns None when the stream was not active (or is a newer instance).
        """
        stream = self.retire(stream_id, instance)
        if stream is None:
            return None
        return stream.outbound.encode_reset()

    def close_all(self) -> list[RelayStream[C]]:
        """The physical socket ended: every stream is gone. Returns them."""
        streams = list(self._active.values())
        self._active.clear()
        return streams

    def _remember(self, stream_id: str) -> None:
        retired = self._retired
        if stream_id in retired:
            return
        retired[stream_id] = None
        while len(retired) > self.max_retired:
            del retired[next(iter(retired))]

    # -- receiving -------------------------------------------------------------------------

    def receive(self, frame: RelayMessageFrame) -> Verdict[C]:
        """Route one validated frame and say what the transport must do.

        Data: in-window seqs are buffered or released in order, duplicates dropped; a seq past
        the window (or a full buffer) resets that stream alone. Data for an id that is not
        active is reset (0.169.0), except for retired ids (dropped) and, with
        Admission.IMPLICIT, new ids (opened while there is room, reset and retired otherwise).
        Reset from the peer: the stream is removed and retired, nothing is sent back.
        Resume: ignored (0.169.0) unless it opens a stream under Admission.IMPLICIT.
        Ack and Heartbeat: ignored; this dialect has no acks. Handshake: HANDSHAKE under
        Admission.EXPLICIT, for the transport's handshake admission; ignored otherwise.
        """
        stream_id = frame.stream_id
        kind = frame.WhichOneof("body")
        if kind == "data":
            data = frame.data
            return self.receive_data(stream_id, data.seq, data.payload)
        if kind == "reset":
            stream = self._active.get(stream_id)
            if stream is None:
                return Verdict(Action.IGNORED, stream_id, detail="reset for an inactive stream")
            self.retire(stream_id)
            return Verdict(Action.CLOSED, stream_id, stream=stream)
        if kind == "resume":
            if (
                self.admission is Admission.IMPLICIT
                and stream_id not in self._active
                and stream_id not in self._retired
            ):
                opened = self._open_implicitly(stream_id)
                if isinstance(opened, Verdict):
                    return opened
                return Verdict(Action.OPENED, stream_id, stream=opened, opened=True)
            return Verdict(Action.IGNORED, stream_id, detail="resume is not used")
        if kind == "handshake" and self.admission is Admission.EXPLICIT:
            return Verdict(Action.HANDSHAKE, stream_id, stream=self._active.get(stream_id))
        return Verdict(Action.IGNORED, stream_id, detail=f"{kind} is not used")

    def receive_data(self, stream_id: str, seq: int, payload: bytes) -> Verdict[C]:
        """``receive`` of a validated Data frame, given its fields (``frames.data_fields``)."""
        stream = self._active.get(stream_id)
        if stream is not None:
            return self._push(stream, seq, payload, opened=False)
        return self._data_for_inactive(stream_id, seq, payload)

    def _push(
        self, stream: RelayStream[C], seq: int, payload: bytes, *, opened: bool
    ) -> Verdict[C]:
        stream_id = stream.stream_id
        try:
            released = stream.inbound.push(seq, payload)
        except StreamError as exc:
            self.retire(stream_id)
            return Verdict(
                Action.RESET,
                stream_id,
                reply=stream.outbound.encode_reset(),
                stream=stream,
                opened=opened,
                detail=exc.message,
            )
        if released is None:
            return Verdict(Action.DUPLICATE, stream_id, stream=stream, opened=opened)
        if not released:
            return Verdict(Action.BUFFERED, stream_id, stream=stream, opened=opened)
        return Verdict(Action.DELIVER, stream_id, released, stream=stream, opened=opened)

    def _data_for_inactive(self, stream_id: str, seq: int, payload: bytes) -> Verdict[C]:
        if stream_id in self._retired:
            if self.reset_retired_data:
                return Verdict(
                    Action.RESET,
                    stream_id,
                    reply=Reset.encode(stream_id),
                    detail="data for a retired stream",
                )
            return Verdict(Action.IGNORED, stream_id, detail="late data for a retired stream")
        if self.admission is Admission.EXPLICIT:
            return Verdict(
                Action.RESET,
                stream_id,
                reply=Reset.encode(stream_id),
                detail="data for an unknown stream",
            )
        opened = self._open_implicitly(stream_id)
        if isinstance(opened, Verdict):
            return opened
        return self._push(opened, seq, payload, opened=True)

    def _open_implicitly(self, stream_id: str) -> RelayStream[C] | Verdict[C]:
        try:
            return self.open(stream_id)
        except StreamRefused as exc:
            self._remember(stream_id)  # later frames for this id are dropped, not re-reset
            return Verdict(Action.RESET, stream_id, reply=Reset.encode(stream_id), detail=str(exc))
