"""Admission: policy, DNS, the ask flow and the upstream connection, for all listeners.

For one destination :meth:`Gate.admit` runs :func:`~codexexec.network.policy.evaluate`
(name level), resolves the name in the proxy, re-checks every address with
:func:`~codexexec.network.policy.check_resolved` (a permitted name that resolves to a
private address is refused: no DNS rebinding into the LAN or loopback), asks the
decider for ``ask`` destinations, and reports the final decision to ``on_decision``.
:meth:`Gate.connect` then dials exactly the addresses that were checked (the resolved
IP is pinned; the name is never resolved again for this connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from msgspec.structs import replace

from codexexec.http1.message import MessageError, parse_response_head, shown_reason
from codexexec.network._stream import Endpoint
from codexexec.network.errors import NetworkError
from codexexec.network.limits import ASK_TIMEOUT, CONNECT_TIMEOUT, DNS_TIMEOUT, MAX_PENDING_ASKS
from codexexec.network.policy import (
    Decision,
    NetworkPolicy,
    Protocol,
    check_resolved,
    evaluate,
)
from codexexec.network.upstream import UpstreamProxy, route

log = logging.getLogger(__name__)

DecisionCallback = Callable[[Decision, str | None], None]
Decider = Callable[[Decision, str | None], Awaitable[str]]
Resolver = Callable[[str], Awaitable[list[str]]]
PolicyFor = Callable[[str | None], NetworkPolicy | None]

MAX_ADDRESSES = 16

FailureKind = Literal["dns_failed", "dns_timeout", "refused", "unreachable", "timeout", "error"]


class UpstreamError(NetworkError):
    """The destination was permitted but could not be reached."""

    def __init__(self, kind: FailureKind, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind

    @property
    def is_timeout(self) -> bool:
        return self.kind in ("dns_timeout", "timeout")


@dataclass(frozen=True, slots=True)
class Admission:
    decision: Decision
    addresses: tuple[str, ...] = ()


async def system_resolver(host: str) -> list[str]:
    """Addresses for ``host`` from the system resolver, in its order, deduplicated."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    seen: dict[str, None] = {}
    for info in infos:
        seen.setdefault(str(info[4][0]), None)
    return list(seen)


class Gate:
    def __init__(
        self,
        policy: NetworkPolicy,
        *,
        on_decision: DecisionCallback | None = None,
        decider: Decider | None = None,
        ask_timeout: float = ASK_TIMEOUT,
        resolver: Resolver | None = None,
        dns_timeout: float = DNS_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        policy_for: PolicyFor | None = None,
        upstream: UpstreamProxy | None = None,
        private_via_upstream: bool = False,
    ) -> None:
        self.policy = policy
        # The operator's upstream proxy (never a request's): see upstream.py.
        self._upstream = upstream
        self._private_via_upstream = private_via_upstream
        self._policy_for = policy_for
        self._on_decision = on_decision
        self._decider = decider
        self._ask_timeout = ask_timeout
        self._resolver = resolver or system_resolver
        self._dns_timeout = dns_timeout
        self._connect_timeout = connect_timeout
        self._session_hosts: set[tuple[str | None, str]] = set()
        self._pending_asks = 0

    @property
    def session_hosts(self) -> frozenset[str]:
        """Hosts the decider allowed "for the session" (for some token)."""
        return frozenset(host for _, host in self._session_hosts)

    def policy_of(self, token: str | None) -> NetworkPolicy:
        """The policy for a request: ``policy_for(token)`` when given and not None, else
        the proxy's own. A failing ``policy_for`` means an empty policy (deny all)."""
        if self._policy_for is None:
            return self.policy
        try:
            chosen = self._policy_for(token)
        except Exception as exc:
            log.warning("policy_for callback failed: %s", type(exc).__name__)
            return _DENY_ALL
        return self.policy if chosen is None else chosen

    def emit(self, decision: Decision, token: str | None) -> None:
        log.debug(
            "network decision %s reason=%s source=%s protocol=%s host=%s port=%s",
            decision.decision,
            decision.reason,
            decision.source,
            decision.protocol,
            decision.host,
            decision.port,
        )
        if self._on_decision is None:
            return
        try:
            self._on_decision(decision, token)
        except Exception as exc:  # a faulty observer must not break the proxy
            log.warning("on_decision callback failed: %s", type(exc).__name__)

    async def admit(
        self,
        protocol: Protocol,
        host: str,
        port: int,
        method: str | None,
        token: str | None,
    ) -> Admission:
        """Decide about one destination. Raises :class:`UpstreamError` if a name that
        the policy would admit does not resolve (no decision is reported then)."""
        policy = self.policy_of(token)
        decision = evaluate(policy, host, port, protocol, method)
        if decision.decision == "deny":
            self.emit(decision, token)
            return Admission(decision)
        addresses = await self._resolve(decision.host)
        for address in addresses:
            if not check_resolved(policy, address, host=decision.host):
                blocked = replace(decision, decision="deny", reason="not_allowed_local")
                self.emit(blocked, token)
                return Admission(blocked)
        if decision.decision == "ask":
            decision = await self._ask(decision, token)
        self.emit(decision, token)
        return Admission(decision, addresses if decision.allowed else ())

    async def _ask(self, decision: Decision, token: str | None) -> Decision:
        # "For the session" is remembered per attribution token: one process's approval
        # never opens the host for another.
        if (token, decision.host) in self._session_hosts:
            return replace(decision, decision="allow", reason="allowed", source="decider")
        if self._decider is None:
            return decision  # reported as "ask": the caller's approval flow takes over
        denied = replace(decision, decision="deny", source="decider")
        if self._pending_asks >= MAX_PENDING_ASKS:
            return denied
        self._pending_asks += 1
        try:
            async with asyncio.timeout(self._ask_timeout):
                answer = await self._decider(decision, token)
        except TimeoutError:
            return denied
        except Exception as exc:
            log.warning("network decider failed: %s", type(exc).__name__)
            return denied
        finally:
            self._pending_asks -= 1
        if answer == "allow_session":
            self._session_hosts.add((token, decision.host))
        if answer in ("allow_once", "allow_session"):
            return replace(decision, decision="allow", reason="allowed", source="decider")
        return replace(denied, reason="policy_denied")

    async def _resolve(self, host: str) -> tuple[str, ...]:
        try:
            literal = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            literal = None
        if literal is not None:
            return (host,)
        try:
            async with asyncio.timeout(self._dns_timeout):
                found = await self._resolver(host)
        except TimeoutError:
            raise UpstreamError("dns_timeout", f"timed out resolving {host}") from None
        except (OSError, UnicodeError, ValueError) as exc:
            raise UpstreamError("dns_failed", f"cannot resolve {host}: {exc}") from None
        addresses = tuple(dict.fromkeys(a for a in found if _is_address(a)))[:MAX_ADDRESSES]
        if not addresses:
            raise UpstreamError("dns_failed", f"no addresses for {host}")
        return addresses

    async def connect(
        self,
        addresses: tuple[str, ...],
        port: int,
        factory: Callable[[], Endpoint] = Endpoint,
    ) -> Endpoint:
        """Dial the checked addresses in order within one ``connect_timeout`` budget."""
        loop = asyncio.get_running_loop()
        last: UpstreamError = UpstreamError("unreachable", "no address to connect to")
        try:
            async with asyncio.timeout(self._connect_timeout):
                for address in addresses:
                    try:
                        if route(address, self._upstream, self._private_via_upstream) == "upstream":
                            assert self._upstream is not None
                            return await open_tunnel(self._upstream, address, port, factory)
                        _, endpoint = await loop.create_connection(factory, address, port)
                        return endpoint
                    except UpstreamRefused as exc:
                        last = UpstreamError("refused", str(exc))
                    except ConnectionRefusedError:
                        last = UpstreamError("refused", f"connection refused by {address}")
                    except OSError as exc:
                        kind: FailureKind = "error"
                        if exc.errno in (
                            errno.ENETUNREACH,
                            errno.EHOSTUNREACH,
                            errno.EADDRNOTAVAIL,
                        ):
                            kind = "unreachable"
                        last = UpstreamError(kind, f"cannot connect to {address}: {exc.strerror}")
        except TimeoutError:
            raise UpstreamError("timeout", "timed out connecting upstream") from None
        raise last


_DENY_ALL = NetworkPolicy()


def _is_address(text: str) -> bool:
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(text.split("%", 1)[0])
        return True
    return False


MAX_UPSTREAM_RESPONSE_HEAD = 8192


class UpstreamRefused(NetworkError, OSError):
    """The upstream proxy would not open the tunnel; the text is its status line."""


async def open_tunnel(
    upstream: UpstreamProxy, address: str, port: int, factory: Callable[[], Endpoint]
) -> Endpoint:
    """A connection to ``address:port`` through ``upstream`` (``CONNECT``), ready for bytes."""
    loop = asyncio.get_running_loop()
    _, endpoint = await loop.create_connection(factory, upstream.host, upstream.port)
    target = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
    if upstream.authorization is not None:
        head += f"Proxy-Authorization: {upstream.authorization}\r\n"
    endpoint.write((head + "\r\n").encode())
    try:
        response = await endpoint.read_until(b"\r\n\r\n", MAX_UPSTREAM_RESPONSE_HEAD)
    except BaseException as exc:
        endpoint.close()  # also when the caller's deadline cancelled the wait
        if isinstance(exc, Exception):
            raise UpstreamRefused("the upstream proxy closed without answering") from None
        raise
    try:
        status, reason, _ = parse_response_head(response)
    except MessageError:
        endpoint.close()
        raise UpstreamRefused("the upstream proxy's answer was not valid HTTP/1.1") from None
    if not 200 <= status < 300:
        endpoint.close()
        shown = f"{status} {shown_reason(reason)}".strip()
        raise UpstreamRefused(f"the upstream proxy answered `{shown}`")
    return endpoint
