"""Flow control for one link between two rendezvous nodes (``docs/cluster.md``).

NATS core drops messages for a consumer that falls behind, so a node never sends a link more
than the receiver has room for: the sender holds a window of frames and bytes, spends it on
each frame and gets it back in Credit messages as the receiver hands frames on. Frames carry
a sequence number, so a drop that happens anyway is seen as a gap, never passed on as one.

Pure: the link code does the sending, the waiting and the closing.

Rules:
1. A sender may send while less than the window is outstanding; one frame of any size may
   always be sent when nothing is outstanding, so a large frame never wedges a link.
2. Frames are numbered from 0; a receiver accepts only the next number (anything else is
   ``gap``), and never holds more than the window (``overflow``: the sender broke rule 1).
3. A receiver grants credit back once a quarter of the window (frames or bytes) was handed
   on. A sender is blocked only with a whole window outstanding, so once the receiver has
   handed that on it grants: no deadlock, and request/response traffic sends one Credit per
   sixteen frames, not one per frame.
4. Credit for more than is outstanding is a fault of the peer (``granted`` answers False).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from codexexec.relay.limits import MAX_WEBSOCKET_MESSAGE_BYTES

WINDOW_FRAMES = 64
WINDOW_BYTES = 4 * MAX_WEBSOCKET_MESSAGE_BYTES


@dataclass(frozen=True, slots=True)
class Grant:
    frames: int
    nbytes: int


class SendWindow:
    def __init__(self, frames: int = WINDOW_FRAMES, nbytes: int = WINDOW_BYTES) -> None:
        self.frames, self.nbytes = frames, nbytes
        self.outstanding_frames = 0
        self.outstanding_bytes = 0
        self._next_seq = 0

    def admits(self, size: int) -> bool:
        if self.outstanding_frames == 0:
            return True
        return (
            self.outstanding_frames < self.frames and self.outstanding_bytes + size <= self.nbytes
        )

    def sent(self, size: int) -> int:
        """Spend the window on one frame of ``size`` bytes; its sequence number."""
        self.outstanding_frames += 1
        self.outstanding_bytes += size
        seq = self._next_seq
        self._next_seq = (seq + 1) & 0xFFFFFFFF
        return seq

    def granted(self, frames: int, nbytes: int) -> bool:
        if frames > self.outstanding_frames or nbytes > self.outstanding_bytes:
            return False
        self.outstanding_frames -= frames
        self.outstanding_bytes -= nbytes
        return True


class ReceiveWindow:
    def __init__(self, frames: int = WINDOW_FRAMES, nbytes: int = WINDOW_BYTES) -> None:
        self.frames, self.nbytes = frames, nbytes
        self._expected = 0
        self._held_frames = 0
        self._held_bytes = 0
        self._ungranted_frames = 0
        self._ungranted_bytes = 0

    def arrived(self, seq: int, size: int) -> Literal["ok", "gap", "overflow"]:
        if seq != self._expected:
            return "gap"
        if self._held_frames and (
            self._held_frames >= self.frames or self._held_bytes + size > self.nbytes
        ):
            return "overflow"
        self._expected = (seq + 1) & 0xFFFFFFFF
        self._held_frames += 1
        self._held_bytes += size
        return "ok"

    def handed_on(self, size: int) -> Grant | None:
        """One held frame was handed on; the credit to send back now, if any."""
        self._held_frames -= 1
        self._held_bytes -= size
        self._ungranted_frames += 1
        self._ungranted_bytes += size
        if self._ungranted_frames * 4 >= self.frames or self._ungranted_bytes * 4 >= self.nbytes:
            grant = Grant(self._ungranted_frames, self._ungranted_bytes)
            self._ungranted_frames = self._ungranted_bytes = 0
            return grant
        return None
