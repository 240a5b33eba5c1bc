"""The executor's managed network: one proxy for all processes, a policy per process.

A process that asks for a managed proxy gets an attribution token; the proxy URLs in
its environment carry the token as their user name, so every decision can be applied
with that process's policy, reported to its session (`network/policyDecision`), and
— for "ask" destinations — asked of its session's client (`network/policyRequest`).
The environment and the sandbox's allowed ports are prepared together from one proxy
snapshot (PreparedManagedNetwork), so they cannot disagree.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from codexexec.network.env import proxy_environment
from codexexec.network.policy import Decision, NetworkPolicy, NetworkPolicyError
from codexexec.protocol.jsonrpc import encode_notification
from codexexec.sandbox.proxy_routes import ManagedNetwork

if TYPE_CHECKING:
    from codexexec.network.proxy import ManagedProxy

log = logging.getLogger(__name__)

ASK_TIMEOUT_SECONDS = 30.0
MAX_DECISIONS_PER_PROCESS = 64


class PreparedManagedNetwork(msgspec.Struct, frozen=True):
    """Child environment and sandbox context, from one snapshot of the proxy's ports."""

    env: dict[str, str]
    context: ManagedNetwork
    token: str


class _Owner(msgspec.Struct):
    process_id: str
    policy: NetworkPolicy
    publish: Callable[[bytes], None]
    ask: Callable[[dict[str, Any]], Any] | None
    session_hosts: set[str]
    decisions: list[dict[str, Any]] = msgspec.field(default_factory=list)


def policy_from_request(raw: Any, baseline: NetworkPolicy | None) -> NetworkPolicy:
    """codexexec's `networkProxy` launch config, combined with the operator's policy file.

    The operator's denials always apply; its allow list applies when the request has none;
    local destinations need both to allow them.
    """
    if not isinstance(raw, dict):
        raise NetworkPolicyError("networkProxy must be an object")
    allowed, denied = _domains(raw, "allowedDomains"), _domains(raw, "deniedDomains")
    allow_local = bool(raw.get("allowLocal", False))
    if baseline is not None:
        denied += list(baseline.denied_domains)
        allowed = allowed or list(baseline.allowed_domains)
        allow_local = allow_local and baseline.allow_local
    return NetworkPolicy(
        allowed_domains=allowed,
        denied_domains=denied,
        mode=raw.get("mode", "full"),
        allow_local=allow_local,
        ask_unknown=bool(raw.get("askUnknown", False)),
    )


def _domains(raw: dict[str, Any], name: str) -> list[Any]:
    value = raw.get(name) or []
    if not isinstance(value, list):
        raise NetworkPolicyError(f"{name} must be a list of domain patterns")
    return list(value)


class ExecutorNetwork:
    def __init__(
        self, baseline: NetworkPolicy | None = None, *, private_via_upstream: bool = False
    ) -> None:
        self.baseline = baseline
        self._private_via_upstream = private_via_upstream
        self._proxy: ManagedProxy | None = None
        self._owners: dict[str, _Owner] = {}
        self._lock = asyncio.Lock()

    async def _ensure_proxy(self) -> ManagedProxy:
        async with self._lock:
            if self._proxy is None:
                from codexexec.network.proxy import ManagedProxy

                proxy = ManagedProxy(
                    NetworkPolicy(),
                    on_decision=self._on_decision,
                    decider=self._decide,
                    ask_timeout=ASK_TIMEOUT_SECONDS,
                    policy_for=self._policy_for,
                    upstream=None if self.baseline is None else self.baseline.upstream_proxy,
                    private_via_upstream=self._private_via_upstream,
                )
                await proxy.start()
                self._proxy = proxy
            return self._proxy

    async def prepare(
        self,
        process_id: str,
        policy: NetworkPolicy,
        publish: Callable[[bytes], None],
        ask: Callable[[dict[str, Any]], Any] | None,
        session_hosts: set[str],
    ) -> PreparedManagedNetwork:
        proxy = await self._ensure_proxy()
        http_port, socks_port = proxy.http_port, proxy.socks_port  # the one snapshot
        token = secrets.token_hex(12)
        self._owners[token] = _Owner(process_id, policy, publish, ask, session_hosts)
        # Inside the sandbox's own network namespace "localhost" is not the host's: when
        # the policy admits local destinations, they too must go through the proxy.
        no_proxy: list[str] | None = [] if policy.allow_local else None
        env = proxy_environment(http_port, socks_port, allow_local_binding=False, no_proxy=no_proxy)
        # The token rides in the proxy URLs' user name, for attribution only.
        env = {k: v.replace("://127.0.0.1:", f"://{token}@127.0.0.1:") for k, v in env.items()}
        ports = (http_port,) if socks_port is None else (http_port, socks_port)
        return PreparedManagedNetwork(env, ManagedNetwork(ports, False), token)

    def decisions(self, token: str) -> list[dict[str, Any]]:
        owner = self._owners.get(token)
        return list(owner.decisions) if owner else []

    def release(self, token: str) -> None:
        self._owners.pop(token, None)

    def _policy_for(self, token: str | None) -> NetworkPolicy | None:
        owner = self._owners.get(token or "")
        return owner.policy if owner else None

    def _on_decision(self, decision: Decision, token: str | None) -> None:
        owner = self._owners.get(token or "")
        if owner is None:
            return
        audit = {
            "processId": owner.process_id,
            "timestamp": int(time.time() * 1000),
            "scope": "process",
            **decision.to_audit(),
        }
        if decision.decision != "allow" and len(owner.decisions) < MAX_DECISIONS_PER_PROCESS:
            owner.decisions.append(audit)
        owner.publish(encode_notification("network/policyDecision", audit))

    async def _decide(self, decision: Decision, token: str | None) -> str:
        owner = self._owners.get(token or "")
        if owner is None or owner.ask is None:
            return "deny"
        if decision.host in owner.session_hosts:
            return "allow_once"
        answer = await owner.ask({"processId": owner.process_id, "request": decision.to_audit()})
        choice = answer.get("decision") if isinstance(answer, dict) else None
        if choice == "allowSession":
            owner.session_hosts.add(decision.host)
            return "allow_once"  # remembered per session here, never proxy-wide
        return "allow_once" if choice == "allowOnce" else "deny"

    async def close(self) -> None:
        if self._proxy is not None:
            await self._proxy.close()
            self._proxy = None
