"""The SOCKS5 side of the managed proxy (RFC 1928, with RFC 1929 for attribution).

``CONNECT`` is judged like an HTTP ``CONNECT`` (protocol ``socks5_tcp``); names are
resolved by the proxy (``socks5h``). ``UDP ASSOCIATE`` is refused with reply 0x02
unless the policy sets ``allow_udp``; then every datagram's destination is judged
(protocol ``socks5_udp``, once per destination per association) and relayed. ``BIND``
is not supported (0x07). A first byte other than 5 (a SOCKS4 client, an HTTP request
sent to the wrong port) closes the connection without a reply.

The username of RFC 1929 authentication is the attribution token; any password is
accepted — the proxy authenticates nothing, it only labels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time

from codexexec.network._stream import Endpoint, IncompleteRead, splice
from codexexec.network.gate import Gate, UpstreamError
from codexexec.network.limits import MAX_UDP_DESTINATIONS, MAX_UDP_QUEUE, Limits
from codexexec.network.policy import Decision
from codexexec.network.socks5 import (
    CMD_CONNECT,
    REP_CONNECTION_REFUSED,
    REP_GENERAL_FAILURE,
    REP_HOST_UNREACHABLE,
    REP_NETWORK_UNREACHABLE,
    REP_NOT_ALLOWED,
    REP_SUCCEEDED,
    REP_TTL_EXPIRED,
    Request,
    Socks5Handshake,
    SocksError,
    encode_address,
    parse_udp_header,
    reply,
)

log = logging.getLogger(__name__)


def _upstream_reply(error: UpstreamError) -> int:
    return {
        "dns_failed": REP_HOST_UNREACHABLE,
        "dns_timeout": REP_HOST_UNREACHABLE,
        "refused": REP_CONNECTION_REFUSED,
        "unreachable": REP_NETWORK_UNREACHABLE,
        "timeout": REP_TTL_EXPIRED,
    }.get(error.kind, REP_GENERAL_FAILURE)


class SocksProxyHandler:
    def __init__(self, gate: Gate, limits: Limits) -> None:
        self._gate = gate
        self._limits = limits

    async def serve(self, client: Endpoint) -> None:
        try:
            try:
                async with asyncio.timeout(self._limits.header_timeout):
                    handshake = await self._handshake(client)
            except (TimeoutError, IncompleteRead):
                return
            except SocksError as exc:
                client.write(reply(exc.reply))
                return
            if handshake is None:
                return
            # The handshake admits only these two (BIND gets its refusal there).
            if handshake.command == CMD_CONNECT:
                await self._connect(client, handshake.host, handshake.port, handshake.token)
            else:
                await self._udp_associate(client, handshake.host, handshake.port, handshake.token)
        finally:
            client.close()

    async def _handshake(self, client: Endpoint) -> Request | None:
        handshake = Socks5Handshake()
        while (count := handshake.need()) is not None:
            answer = handshake.feed(await client.read_exactly(count))
            if answer:
                client.write(answer)
        return handshake.request

    async def _connect(self, client: Endpoint, host: str, port: int, token: str | None) -> None:
        if port == 0:
            client.write(reply(REP_NOT_ALLOWED))  # never a valid destination
            return
        try:
            admission = await self._gate.admit("socks5_tcp", host, port, None, token)
            if not admission.decision.allowed:
                client.write(reply(REP_NOT_ALLOWED))
                return
            upstream = await self._gate.connect(admission.addresses, port)
        except UpstreamError as exc:
            client.write(reply(_upstream_reply(exc)))
            return
        bound = upstream.sockname or ("0.0.0.0", 0)
        client.write(reply(REP_SUCCEEDED, bound[0], bound[1]))
        await splice(client, upstream, self._limits.idle_timeout)

    async def _udp_associate(
        self, client: Endpoint, host: str, port: int, token: str | None
    ) -> None:
        if not self._gate.policy_of(token).allow_udp:
            self._gate.emit(
                Decision("deny", "policy_denied", "proxy_state", "socks5_udp", host, port), token
            )
            client.write(reply(REP_NOT_ALLOWED))
            return
        peer = client.peername
        if peer is None:
            return
        loop = asyncio.get_running_loop()
        relay = _UdpRelay(self._gate, token, peer[0], port, self._limits.idle_timeout)
        try:
            inbound, _ = await loop.create_datagram_endpoint(
                lambda: _ClientSide(relay), local_addr=("127.0.0.1", 0)
            )
        except OSError:
            client.write(reply(REP_GENERAL_FAILURE))
            return
        relay.inbound = inbound
        bound = inbound.get_extra_info("sockname")
        client.write(reply(REP_SUCCEEDED, bound[0], bound[1]))
        # The association lives as long as the control connection (RFC 1928 §7) and
        # while datagrams flow.
        tasks = {asyncio.create_task(relay.run()), asyncio.create_task(_until_eof(client))}
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            relay.close()


async def _until_eof(client: Endpoint) -> None:
    while await client.read_some():
        pass


class _ClientSide(asyncio.DatagramProtocol):
    def __init__(self, relay: _UdpRelay) -> None:
        self._relay = relay

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self._relay.from_client(data, (str(addr[0]), int(addr[1])))


class _RemoteSide(asyncio.DatagramProtocol):
    def __init__(self, relay: _UdpRelay) -> None:
        self._relay = relay

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self._relay.from_remote(data, (str(addr[0]), int(addr[1])))


class _UdpRelay:
    """One UDP association: datagrams from the client are judged per destination and
    relayed; answers are relayed back only from destinations that were admitted."""

    def __init__(
        self, gate: Gate, token: str | None, client_ip: str, client_port: int, idle: float
    ) -> None:
        self._gate = gate
        self._token = token
        self._client_ip = client_ip
        self._client_port = client_port  # 0: learn it from the first datagram
        self._client_addr: tuple[str, int] | None = None
        self._idle = idle
        self._queue: asyncio.Queue[tuple[str, int, bytes]] = asyncio.Queue(MAX_UDP_QUEUE)
        self._verdicts: dict[tuple[str, int], tuple[str, ...]] = {}
        self._admitted: set[tuple[str, int]] = set()
        self._outbound: dict[int, asyncio.DatagramTransport] = {}
        self.inbound: asyncio.DatagramTransport | None = None
        self.last_activity = time.monotonic()

    def from_client(self, data: bytes, addr: tuple[str, int]) -> None:
        if addr[0] != self._client_ip:
            return
        if self._client_addr is None:
            if self._client_port and addr[1] != self._client_port:
                return
            self._client_addr = addr
        elif addr != self._client_addr:
            return
        try:
            host, port, payload = parse_udp_header(data)
        except ValueError:
            return
        if port == 0:
            return
        self.last_activity = time.monotonic()
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait((host, port, payload))

    def from_remote(self, data: bytes, addr: tuple[str, int]) -> None:
        source = (addr[0].split("%", 1)[0], addr[1])
        if source not in self._admitted or self.inbound is None or self._client_addr is None:
            return
        self.last_activity = time.monotonic()
        header = b"\0\0\0" + encode_address(source[0], source[1])
        self.inbound.sendto(header + data, self._client_addr)

    async def run(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self._idle):
                    host, port, payload = await self._queue.get()
            except TimeoutError:
                if time.monotonic() - self.last_activity >= self._idle:
                    return
                continue
            addresses = self._verdicts.get((host, port))
            if addresses is None:
                addresses = await self._judge(host, port)
            if not addresses:
                continue
            target = addresses[0]
            family = socket.AF_INET6 if ":" in target else socket.AF_INET
            transport = await self._outbound_for(family)
            if transport is None:
                continue
            self._admitted.add((target, port))
            transport.sendto(payload, (target, port))

    async def _judge(self, host: str, port: int) -> tuple[str, ...]:
        try:
            admission = await self._gate.admit("socks5_udp", host, port, None, self._token)
            addresses = admission.addresses if admission.decision.allowed else ()
        except UpstreamError:
            addresses = ()
        if len(self._verdicts) >= MAX_UDP_DESTINATIONS:
            self._verdicts.clear()
        self._verdicts[(host, port)] = addresses
        return addresses

    async def _outbound_for(self, family: int) -> asyncio.DatagramTransport | None:
        transport = self._outbound.get(family)
        if transport is None:
            local = ("::", 0) if family == socket.AF_INET6 else ("0.0.0.0", 0)
            try:
                transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                    lambda: _RemoteSide(self), local_addr=local, family=family
                )
            except OSError:
                return None
            self._outbound[family] = transport
        return transport

    def close(self) -> None:
        if self.inbound is not None:
            self.inbound.close()
        for transport in self._outbound.values():
            transport.close()
