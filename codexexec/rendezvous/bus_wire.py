"""What rendezvous nodes say to each other over the bus: subjects and message encodings.

Pure. Subjects (``docs/cluster.md``):

* ``codexexec.where.<env>.<registration>`` — request; answered only by the node holding that
  registration's executor socket, so "no responders" means no node holds it.
* ``codexexec.open.<node>`` — request; a harness node asks the executor's node to accept a
  link for one harness socket.
* ``codexexec.node.<node>`` — link traffic into a node (Frame, Credit, Close).
* ``codexexec.events`` — executor attached, registration made: every node hears it.
* ``codexexec.alive`` — heartbeats (``membership.py``).

Environment and registration ids are hex-encoded into subjects: they may hold ``.``, which
NATS treats as a separator. Link messages are binary (kind, link id, two numbers, payload);
frames stay opaque bytes. Control messages are small JSON objects.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from codexexec.rendezvous.errors import RendezvousError

PREFIX = "codexexec"
SUBJECT_EVENTS = f"{PREFIX}.events"
SUBJECT_ALIVE = f"{PREFIX}.alive"
# A control message larger than this is not ours.
MAX_CONTROL_BYTES = 16 * 1024
MAX_LINK_ID_BYTES = 64
_HEAD = struct.Struct("!BB")
_NUMBERS = struct.Struct("!II")
# The most a link message adds to a frame.
LINK_OVERHEAD = _HEAD.size + MAX_LINK_ID_BYTES + _NUMBERS.size


class BusWireError(RendezvousError, ValueError):
    """A message on the bus that is not one of ours (dropped, and counted)."""


class LinkKind(IntEnum):
    FRAME = 1  # numbers: sequence, 0
    CREDIT = 2  # numbers: frames, bytes
    CLOSE = 3  # numbers: close code, 0; payload: Close as JSON


_LINK_KINDS = {kind.value: kind for kind in LinkKind}


@dataclass(frozen=True, slots=True)
class LinkMessage:
    kind: LinkKind
    link: str
    first: int
    second: int
    payload: bytes | memoryview  # a view into the bus message: a frame is not copied again


@dataclass(frozen=True, slots=True)
class Close:
    """A link ends: the receiver closes its socket with ``code``/``reason`` after sending a
    Reset with ``reset_reason`` for each of ``resets``."""

    code: int
    reason: str
    resets: tuple[str, ...] = ()
    reset_reason: str = ""


def _token(value: str) -> str:
    return value.encode("utf-8").hex()


def where_subject(environment_id: str, registration_id: str) -> str:
    return f"{PREFIX}.where.{_token(environment_id)}.{_token(registration_id)}"


def open_subject(node: str) -> str:
    return f"{PREFIX}.open.{node}"


def node_subject(node: str) -> str:
    return f"{PREFIX}.node.{node}"


def encode_link(
    kind: LinkKind, link: str, first: int, second: int, payload: bytes | memoryview
) -> bytes:
    raw = link.encode("ascii")
    return b"".join((_HEAD.pack(kind, len(raw)), raw, _NUMBERS.pack(first, second), payload))


def encode_close(link: str, close: Close) -> bytes:
    body = {"reason": close.reason, "resets": list(close.resets), "reset": close.reset_reason}
    return encode_link(LinkKind.CLOSE, link, close.code, 0, json.dumps(body).encode())


def decode_link(data: bytes) -> LinkMessage:
    if len(data) < _HEAD.size:
        raise BusWireError("short link message")
    kind, length = _HEAD.unpack_from(data)
    end = _HEAD.size + length
    link_kind = _LINK_KINDS.get(kind)
    if link_kind is None or length > MAX_LINK_ID_BYTES:
        raise BusWireError("not a link message")
    if len(data) < end + _NUMBERS.size:
        raise BusWireError("short link message")
    try:
        link = data[_HEAD.size : end].decode("ascii")
    except UnicodeDecodeError:
        raise BusWireError("link id is not ASCII") from None
    first, second = _NUMBERS.unpack_from(data, end)
    return LinkMessage(link_kind, link, first, second, memoryview(data)[end + _NUMBERS.size :])


def decode_close(message: LinkMessage) -> Close:
    body = decode_control(bytes(message.payload))
    resets = body.get("resets", [])
    if not isinstance(resets, list) or not all(isinstance(s, str) for s in resets):
        raise BusWireError("close resets must be a list of stream ids")
    return Close(
        message.first, str(body.get("reason", "")), tuple(resets), str(body.get("reset", ""))
    )


def encode_control(**fields: Any) -> bytes:
    return json.dumps(fields, separators=(",", ":")).encode()


def decode_control(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_CONTROL_BYTES:
        raise BusWireError("control message too large")
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise BusWireError("control message is not JSON") from None
    if not isinstance(body, dict):
        raise BusWireError("control message is not an object")
    return body


def text_field(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value or len(value) > 512:
        raise BusWireError(f"control message lacks {name}")
    return value


class BusUnavailable(RendezvousError, RuntimeError):
    """Another node could not be asked (bus down, or the node did not answer); the service
    answers 503 ``bus_unavailable``, and a caller may try again."""


class BusRefused(RendezvousError):
    """The executor's node refused a link, with the error a harness socket gets."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True, slots=True)
class ExecutorLocation:
    node: str
    socket: str
