"""Frames between the server and a sandboxed filesystem helper, over a Unix socket.

Each request and each reply is a 4-byte big-endian length and that many bytes of JSON; a
reply to an open carries the opened descriptor (SCM_RIGHTS) on its first bytes. Lengths
are bounded by the protocol's message limit on both sides.
"""

from __future__ import annotations

import array
import os
import socket
import struct

from codexexec.protocol.limits import MAX_MESSAGE_BYTES
from codexexec.server.errors import ServerError

_LENGTH = struct.Struct(">I")
_MAX_READ = 1024 * 1024


class HelperProtocolError(ServerError):
    """The peer closed mid-frame or announced a frame over the limit."""


def _read_exactly(fd: int, count: int) -> bytes | None:
    """``count`` bytes; None on a clean EOF before the first byte."""
    data = bytearray()
    while len(data) < count:
        chunk = os.read(fd, count - len(data))
        if not chunk:
            if data:
                raise HelperProtocolError("the connection closed mid-frame")
            return None
        data += chunk
    return bytes(data)


def read_request(fd: int) -> bytes | None:
    """The next request frame's payload, None once the server has closed the socket."""
    header = _read_exactly(fd, _LENGTH.size)
    if header is None:
        return None
    (length,) = _LENGTH.unpack(header)
    if length > MAX_MESSAGE_BYTES:
        raise HelperProtocolError("filesystem helper request is too large")
    payload = _read_exactly(fd, length)
    if payload is None:
        raise HelperProtocolError("the connection closed mid-frame")
    return payload


def frame(payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload)) + payload


def send_reply(channel: socket.socket, payload: bytes, fd: int | None = None) -> None:
    """Send one reply frame with only sendmsg(2), the call a network-restricting seccomp
    filter leaves the helper."""
    data = memoryview(frame(payload))
    if fd is not None:
        rights = array.array("i", [fd])
        sent = channel.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
        data = data[sent:]
    while data:
        data = data[channel.sendmsg([data]) :]


def receive_reply(channel: socket.socket) -> tuple[bytes, list[int]] | None:
    """One reply frame and any descriptors sent with it; None if the helper closed first.

    Only one request is ever outstanding on a helper, so nothing past this frame is read.
    """
    buffer = bytearray()
    fds: list[int] = []
    space = socket.CMSG_SPACE(array.array("i", [0]).itemsize)
    needed = _LENGTH.size
    try:
        while len(buffer) < needed:
            want = min(needed - len(buffer), _MAX_READ)
            try:
                data, ancillary, _, _ = channel.recvmsg(want, space)
            except ConnectionResetError:
                data, ancillary = b"", []  # the helper died with our request unread
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    received = array.array("i")
                    received.frombytes(payload[: len(payload) - len(payload) % received.itemsize])
                    fds.extend(received)
            if not data:
                if not buffer:
                    _close_all(fds)
                    return None
                raise HelperProtocolError("the helper closed mid-reply")
            buffer += data
            if needed == _LENGTH.size and len(buffer) == needed:
                (length,) = _LENGTH.unpack(buffer)
                if length > MAX_MESSAGE_BYTES:
                    raise HelperProtocolError("filesystem sandbox helper reply is too large")
                needed += length
    except BaseException:
        _close_all(fds)
        raise
    return bytes(buffer[_LENGTH.size :]), fds


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
