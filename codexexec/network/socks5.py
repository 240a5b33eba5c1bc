"""SOCKS5 on the wire (RFC 1928, with RFC 1929's username as an attribution label), without
I/O: the constants, replies, address decoding, UDP headers, and the opening handshake as a
parser that says how many bytes to read next and what to answer (the proxy's loop only reads
and writes: ``socks_proxy.py``).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from codexexec.network.errors import NetworkError
from codexexec.network.policy import InvalidHost, normalize_host

VERSION = 5
AUTH_NONE = 0x00
AUTH_USERPASS = 0x02
AUTH_UNACCEPTABLE = 0xFF
CMD_CONNECT = 1
CMD_BIND = 2
CMD_UDP_ASSOCIATE = 3
ATYP_IPV4 = 1
ATYP_DOMAIN = 3
ATYP_IPV6 = 4

REP_SUCCEEDED = 0x00
REP_GENERAL_FAILURE = 0x01
REP_NOT_ALLOWED = 0x02
REP_NETWORK_UNREACHABLE = 0x03
REP_HOST_UNREACHABLE = 0x04
REP_CONNECTION_REFUSED = 0x05
REP_TTL_EXPIRED = 0x06
REP_COMMAND_NOT_SUPPORTED = 0x07
REP_ADDRESS_TYPE_NOT_SUPPORTED = 0x08


class SocksError(NetworkError):
    def __init__(self, reply: int, message: str) -> None:
        super().__init__(message)
        self.reply = reply


def encode_address(host: str, port: int) -> bytes:
    """ATYP + address + port, for replies and UDP headers."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        raw = host.encode("ascii")[:255]
        return bytes([ATYP_DOMAIN, len(raw)]) + raw + struct.pack("!H", port)
    atyp = ATYP_IPV4 if ip.version == 4 else ATYP_IPV6
    return bytes([atyp]) + ip.packed + struct.pack("!H", port)


def reply(code: int, host: str = "0.0.0.0", port: int = 0) -> bytes:
    return bytes([VERSION, code, 0]) + encode_address(host, port)


def decode_host(atyp: int, raw: bytes) -> str:
    """The normalised destination host for an address of type ``atyp``."""
    if atyp == ATYP_IPV4:
        return str(ipaddress.IPv4Address(raw))
    if atyp == ATYP_IPV6:
        return str(ipaddress.IPv6Address(raw))
    try:
        return normalize_host(raw.decode("utf-8"))
    except (UnicodeDecodeError, InvalidHost):
        raise SocksError(REP_HOST_UNREACHABLE, "invalid destination name") from None


def parse_udp_header(datagram: bytes) -> tuple[str, int, bytes]:
    """RSV(2) FRAG ATYP DST.ADDR DST.PORT DATA → (host, port, data); fragments refused."""
    if len(datagram) < 4 or datagram[:2] != b"\0\0":
        raise ValueError("malformed UDP request header")
    if datagram[2] != 0:
        raise ValueError("fragmented datagrams are not supported")
    atyp = datagram[3]
    if atyp == ATYP_IPV4:
        start, end = 4, 8
    elif atyp == ATYP_IPV6:
        start, end = 4, 20
    elif atyp == ATYP_DOMAIN and len(datagram) > 4:
        start, end = 5, 5 + datagram[4]
    else:
        raise ValueError("bad address type")
    if len(datagram) < end + 2:
        raise ValueError("truncated UDP request header")
    try:
        host = decode_host(atyp, datagram[start:end])
    except SocksError as exc:
        raise ValueError(str(exc)) from None
    (port,) = struct.unpack("!H", datagram[end : end + 2])
    return host, port, datagram[end + 2 :]


@dataclass(frozen=True, slots=True)
class Request:
    command: int
    host: str
    port: int
    token: str | None  # RFC 1929's username: the attribution label


class Socks5Handshake:
    """The greeting, optional username/password sub-negotiation and request. ``need``: bytes
    to read next (None when finished); ``feed``: returns bytes to send back. When finished,
    ``request`` is the request, or None when the connection must just close. Raises
    SocksError when the answer is a failure reply."""

    def __init__(self) -> None:
        self._step = "version"
        self._need: int | None = 1
        self._auth_version = 0
        self._user = b""
        self._atyp = 0
        self._command = 0
        self._address = b""
        self.token: str | None = None
        self.request: Request | None = None

    def need(self) -> int | None:
        return self._need

    def _finish(self, request: Request | None = None) -> bytes:
        self._step, self._need, self.request = "done", None, request
        return b""

    def feed(self, data: bytes) -> bytes:
        step = self._step
        if step == "version":
            if data[0] != VERSION:
                return self._finish()  # SOCKS4 or not SOCKS: no reply would be understood
            self._step, self._need = "count", 1
        elif step == "count":
            self._step, self._need = "methods", data[0]
        elif step == "methods":
            if AUTH_USERPASS in data:
                self._step, self._need = "auth", 2
                return bytes([VERSION, AUTH_USERPASS])
            if AUTH_NONE in data:
                self._step, self._need = "request", 4
                return bytes([VERSION, AUTH_NONE])
            self._finish()
            return bytes([VERSION, AUTH_UNACCEPTABLE])
        elif step == "auth":
            self._auth_version = data[0]
            self._step, self._need = "user", data[1]
        elif step == "user":
            self._user = data
            self._step, self._need = "password_length", 1
        elif step == "password_length":
            self._step, self._need = "password", data[0]
        elif step == "password":  # any password: the proxy labels, it does not authenticate
            if self._auth_version != 1:
                self._finish()
                return b"\x01\x01"
            self.token = self._user.decode("utf-8", "replace") or None
            self._step, self._need = "request", 4
            return b"\x01\x00"
        elif step == "request":
            version, self._command, _reserved, self._atyp = data
            if version != VERSION:
                return self._finish()
            if self._atyp == ATYP_IPV4:
                self._step, self._need = "address", 4
            elif self._atyp == ATYP_IPV6:
                self._step, self._need = "address", 16
            elif self._atyp == ATYP_DOMAIN:
                self._step, self._need = "name_length", 1
            else:
                raise SocksError(REP_ADDRESS_TYPE_NOT_SUPPORTED, "unknown address type")
        elif step == "name_length":
            if data[0] == 0:
                raise SocksError(REP_HOST_UNREACHABLE, "empty destination name")
            self._step, self._need = "address", data[0]
        elif step == "address":
            self._address = data
            self._step, self._need = "port", 2
        elif step == "port":
            (port,) = struct.unpack("!H", data)
            if self._command not in (CMD_CONNECT, CMD_UDP_ASSOCIATE):
                raise SocksError(REP_COMMAND_NOT_SUPPORTED, "command not supported")
            host = decode_host(self._atyp, self._address)
            return self._finish(Request(self._command, host, port, self.token))
        return b""
