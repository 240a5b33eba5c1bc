"""The exec-server core: one session registry shared by every connection."""

from __future__ import annotations

from typing import TYPE_CHECKING

from codexexec.network.host_bridge import HostBridges
from codexexec.network.policy import NetworkPolicy
from codexexec.protocol.limits import DEFAULT_DETACHED_SESSION_TTL_SECONDS
from codexexec.rpc.peer import RpcPeer
from codexexec.sandbox.floor import SandboxSettings
from codexexec.server.audit import AuditLog, Auditor
from codexexec.server.handler import ConnectionHandler
from codexexec.server.managed_network import ExecutorNetwork
from codexexec.server.secrets import protect_executor_process
from codexexec.server.session import SessionRegistry
from codexexec.transport.base import MessageTransport

if TYPE_CHECKING:
    from codexexec.server.metrics import ServerMetrics


class ExecServer:
    def __init__(
        self,
        *,
        detached_session_ttl: float = DEFAULT_DETACHED_SESSION_TTL_SECONDS,
        concurrent_requests: int = 1,
        network_policy: NetworkPolicy | None = None,
        proxy_private_ips_via_upstream: bool = False,
        sandbox: SandboxSettings = SandboxSettings(),
        audit: AuditLog | None = None,
        metrics: ServerMetrics | None = None,
    ) -> None:
        protect_executor_process()
        self.sandbox = sandbox
        self.audit = audit
        self.metrics = metrics
        self._connections = 0
        self.sessions = SessionRegistry(detached_session_ttl)
        self.bridges = HostBridges()
        self.network = ExecutorNetwork(
            network_policy, private_via_upstream=proxy_private_ips_via_upstream
        )
        self._concurrent_requests = concurrent_requests

    async def serve(self, transport: MessageTransport, *, malformed_prefix: str) -> None:
        """Serve one connection until it ends; its session is then detached, not dropped."""
        self._connections += 1
        handler = ConnectionHandler(
            self.sessions,
            self.bridges,
            self.network,
            self.sandbox,
            Auditor(self.audit, f"c{self._connections}", transport.peer),
            self.metrics,
        )
        peer = RpcPeer(
            transport,
            on_request=handler.on_request,
            on_notification=handler.on_notification,
            concurrency=self._concurrent_requests,
            malformed_prefix=malformed_prefix,
            strict_responses=True,
        )
        handler.bind(peer)
        if self.metrics is not None:
            self.metrics.connections_total.inc()
            self.metrics.connections_active.inc()
        try:
            await peer.run()
        finally:
            handler.connection_ended()
            if self.metrics is not None:
                self.metrics.connections_active.dec()

    def close(self) -> None:
        """Stop every process of every session (server shutdown)."""
        self.sessions.close()
        self.bridges.close()
        if self.audit is not None:
            self.audit.close()

    async def aclose(self) -> None:
        """close(), then stop the managed network proxy."""
        self.close()
        await self.network.close()
