"""The NATS client protocol, as much of it as a node's link connection speaks (``link_conn.py``).

Pure: server bytes in, events out (``ServerStream``); commands out as bytes. The server's side
is bounded: a control line of at most 64 KiB, a message of at most the server's announced
``max_payload`` (1 MiB until it says). Anything else is ``NatsWireError``, and the connection
is dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from codexexec.rendezvous.bus_wire import BusWireError

# Server lines: INFO can be long (a cluster's connect_urls), the others are short.
MAX_CONTROL_LINE: Final = 64 * 1024
DEFAULT_MAX_PAYLOAD: Final = 1024 * 1024
PING: Final = b"PING\r\n"
PONG: Final = b"PONG\r\n"


class NatsWireError(BusWireError):
    """The server sent something this client cannot read."""


@dataclass(frozen=True, slots=True)
class Info:
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Message:
    subject: str
    sid: str
    payload: bytes  # without headers, if the publisher sent any


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Pong:
    pass


@dataclass(frozen=True, slots=True)
class ServerError:
    text: str


Event = Info | Message | Ping | Pong | ServerError


class ServerStream:
    """What the server sends, as events."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        # A message whose control line is read: subject, sid, header bytes, total bytes.
        self._message: tuple[str, str, int, int] | None = None
        self.max_payload = DEFAULT_MAX_PAYLOAD

    def feed(self, data: bytes) -> list[Event]:
        buffer = self._buffer
        buffer += data
        events: list[Event] = []
        while True:
            if self._message is not None:
                subject, sid, headers, total = self._message
                if len(buffer) < total + 2:
                    break
                if buffer[total : total + 2] != b"\r\n":
                    raise NatsWireError("a message does not end where its size says")
                with memoryview(buffer) as view:
                    payload = bytes(view[headers:total])
                del buffer[: total + 2]
                self._message = None
                events.append(Message(subject, sid, payload))
                continue
            end = buffer.find(b"\r\n", 0, MAX_CONTROL_LINE + 2)
            if end < 0:
                if len(buffer) > MAX_CONTROL_LINE:
                    raise NatsWireError("a control line longer than 64 KiB")
                break
            line = bytes(buffer[:end])
            del buffer[: end + 2]
            event = self._control(line)
            if event is not None:
                events.append(event)
        return events

    def _control(self, line: bytes) -> Event | None:
        verb, _, rest = line.partition(b" ")
        verb = verb.upper()
        if verb in (b"MSG", b"HMSG"):
            self._message = self._message_line(verb == b"HMSG", rest.split())
            return None
        if verb == b"PING":
            return Ping()
        if verb == b"PONG":
            return Pong()
        if verb == b"+OK":
            return None
        if verb == b"-ERR":
            return ServerError(rest.decode("utf-8", "replace").strip().strip("'"))
        if verb == b"INFO":
            try:
                fields = json.loads(rest)
            except ValueError:
                raise NatsWireError("an INFO that is not JSON") from None
            if not isinstance(fields, dict):
                raise NatsWireError("an INFO that is not an object")
            max_payload = fields.get("max_payload")
            if type(max_payload) is int and max_payload > 0:
                self.max_payload = max_payload
            return Info(fields)
        raise NatsWireError(f"an unknown operation {verb[:16]!r}")

    def _message_line(self, with_headers: bool, args: list[bytes]) -> tuple[str, str, int, int]:
        # MSG subject sid [reply] size / HMSG subject sid [reply] header-size total-size
        sizes = 2 if with_headers else 1
        if len(args) not in (2 + sizes, 3 + sizes):
            raise NatsWireError("a message line with the wrong number of fields")
        try:
            numbers = [int(arg) for arg in args[-sizes:]]
            subject, sid = args[0].decode("ascii"), args[1].decode("ascii")
        except (ValueError, UnicodeDecodeError):
            raise NatsWireError("a message line that does not parse") from None
        headers, total = (numbers[0], numbers[1]) if with_headers else (0, numbers[0])
        if not 0 <= headers <= total <= self.max_payload:
            raise NatsWireError("a message larger than the server's max_payload")
        return subject, sid, headers, total


def connect_command(options: dict[str, Any]) -> bytes:
    return b"CONNECT " + json.dumps(options, separators=(",", ":")).encode() + b"\r\n"


def sub_command(subject: str, sid: str) -> bytes:
    return f"SUB {subject} {sid}\r\n".encode("ascii")


def pub_command(subject: str, payload: bytes) -> list[bytes]:
    """A PUB in three parts, so the payload is not copied to build it."""
    return [b"PUB %s %d\r\n" % (subject.encode("ascii"), len(payload)), payload, b"\r\n"]
