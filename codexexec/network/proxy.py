"""The managed network proxy: one HTTP and one SOCKS5 listener per executor.

Usage::

    proxy = ManagedProxy(policy, on_decision=report, decider=ask_user)
    await proxy.start()
    env = proxy_environment(proxy.http_port, proxy.socks_port, allow_local_binding=False)
    ...  # spawn children with env; they all share this proxy
    await proxy.close()

Both listeners bind ephemeral ports on 127.0.0.1. Every destination goes through the
same :class:`~codexexec.network.gate.Gate` (policy, DNS in the proxy, re-check of the
resolved addresses, ask flow), and each final decision is passed to ``on_decision``
together with the request's attribution token: the user name of
``Proxy-Authorization: Basic base64(token:)`` (HTTP) or of RFC 1929 authentication
(SOCKS5), or None. Tokens only label requests; they are never logged.

Limits (:mod:`codexexec.network.limits`): 64 KiB request heads, 10 s to send a head or
SOCKS handshake, 1024 client connections at once (more are answered 503 / SOCKS
"no acceptable method" and closed), 10 s to connect upstream, 5 s for DNS, 300 s of
silence before a tunnel is cut, 30 s for the decider (then deny).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from codexexec.network._stream import Endpoint
from codexexec.network.gate import Decider, DecisionCallback, Gate, PolicyFor, Resolver
from codexexec.network.http_proxy import HttpProxyHandler, proxy_busy_response
from codexexec.network.limits import ASK_TIMEOUT, Limits
from codexexec.network.policy import NetworkPolicy
from codexexec.network.socks_proxy import SocksProxyHandler
from codexexec.network.upstream import UpstreamProxy
from codexexec.tasks import TaskSet

log = logging.getLogger(__name__)

LISTEN_HOST = "127.0.0.1"
LISTEN_BACKLOG = 1024
_SOCKS_BUSY = b"\x05\xff"  # "no acceptable methods": the client gives up cleanly


class ManagedProxy:
    """An HTTP + SOCKS5 proxy that enforces a :class:`NetworkPolicy`.

    ``on_decision(decision, token)`` sees every final decision (allow and deny);
    ``decider(decision, token)`` is awaited for ``ask`` destinations and answers
    ``"allow_once"``, ``"allow_session"`` or ``"deny"`` (anything else, an exception or
    no answer within ``ask_timeout`` seconds means deny). Without a decider an ``ask``
    destination is blocked with decision ``ask`` in the 403 line, for the caller's own
    approval flow. ``resolver`` (async name → addresses) replaces the system resolver,
    ``limits`` the default timeouts and sizes; ``enable_socks=False`` skips SOCKS5.

    ``policy_for(token)`` lets one proxy serve processes with different policies: it
    returns the policy for a request's attribution token, or None for ``policy``.
    Decisions "for the session" are remembered per token. ``upstream`` chains admitted
    connections through an operator's HTTP proxy (``upstream.py``; default: the policy's).
    """

    def __init__(
        self,
        policy: NetworkPolicy,
        on_decision: DecisionCallback | None = None,
        decider: Decider | None = None,
        ask_timeout: float = ASK_TIMEOUT,
        *,
        resolver: Resolver | None = None,
        limits: Limits | None = None,
        enable_socks: bool = True,
        policy_for: PolicyFor | None = None,
        upstream: UpstreamProxy | None = None,
        private_via_upstream: bool = False,
    ) -> None:
        self.limits = limits or Limits()
        self.gate = Gate(
            policy,
            on_decision=on_decision,
            decider=decider,
            ask_timeout=ask_timeout,
            resolver=resolver,
            dns_timeout=self.limits.dns_timeout,
            connect_timeout=self.limits.connect_timeout,
            policy_for=policy_for,
            upstream=upstream or policy.upstream_proxy,
            private_via_upstream=private_via_upstream,
        )
        self._enable_socks = enable_socks
        self._http = HttpProxyHandler(self.gate, self.limits)
        self._socks = SocksProxyHandler(self.gate, self.limits)
        self._servers: list[asyncio.Server] = []
        self._http_port: int | None = None
        self._socks_port: int | None = None
        self._clients: set[Endpoint] = set()
        self._tasks = TaskSet()
        self._closing = False

    @property
    def policy(self) -> NetworkPolicy:
        return self.gate.policy

    @property
    def http_port(self) -> int:
        if self._http_port is None:
            raise RuntimeError("proxy not started")
        return self._http_port

    @property
    def socks_port(self) -> int | None:
        """The SOCKS5 port, or None when SOCKS5 is disabled."""
        if self._http_port is None:
            raise RuntimeError("proxy not started")
        return self._socks_port

    @property
    def active_connections(self) -> int:
        return len(self._clients)

    @property
    def session_hosts(self) -> frozenset[str]:
        """Hosts the decider allowed for the rest of this proxy's life."""
        return self.gate.session_hosts

    async def start(self) -> None:
        if self._servers:
            raise RuntimeError("proxy already started")
        loop = asyncio.get_running_loop()
        buffer = self.limits.max_header_bytes
        try:
            http = await loop.create_server(
                lambda: Endpoint(buffer_limit=buffer, on_connect=self._accept_http),
                LISTEN_HOST,
                0,
                backlog=LISTEN_BACKLOG,
            )
            self._servers.append(http)
            self._http_port = int(http.sockets[0].getsockname()[1])
            if self._enable_socks:
                socks = await loop.create_server(
                    lambda: Endpoint(buffer_limit=buffer, on_connect=self._accept_socks),
                    LISTEN_HOST,
                    0,
                    backlog=LISTEN_BACKLOG,
                )
                self._servers.append(socks)
                self._socks_port = int(socks.sockets[0].getsockname()[1])
        except BaseException:
            await self.close()
            raise
        log.info("managed network proxy on http=%s socks=%s", self._http_port, self._socks_port)

    async def close(self) -> None:
        """Stop listening, cut every connection and cancel pending decisions."""
        self._closing = True
        for server in self._servers:
            server.close()
        for task in self._tasks:
            task.cancel()
        for client in list(self._clients):
            client.abort()
        await self._tasks.wait()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()

    async def __aenter__(self) -> ManagedProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- connections ------------------------------------------------------------

    def _accept_http(self, client: Endpoint) -> None:
        self._accept(client, self._http.serve, proxy_busy_response())

    def _accept_socks(self, client: Endpoint) -> None:
        self._accept(client, self._socks.serve, _SOCKS_BUSY)

    def _accept(
        self, client: Endpoint, serve: Callable[[Endpoint], Awaitable[None]], busy: bytes
    ) -> None:
        if self._closing:
            client.abort()
            return
        if len(self._clients) >= self.limits.max_connections:
            client.write(busy)
            client.close()
            return
        self._clients.add(client)
        self._tasks.spawn(self._run(client, serve))

    async def _run(self, client: Endpoint, serve: Callable[[Endpoint], Awaitable[None]]) -> None:
        try:
            await serve(client)
        except asyncio.CancelledError:
            client.abort()
            raise
        except Exception as exc:  # one broken connection must not take the proxy down
            log.warning("proxy connection failed: %s: %s", type(exc).__name__, exc)
            client.abort()
        finally:
            self._clients.discard(client)
