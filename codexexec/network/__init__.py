"""Managed network proxy: the policy, the proxy core and the child environment.

A command that runs with managed networking reaches the network only through one
loopback proxy per executor (docs/sandbox-intent.md §3). This package holds:

* :mod:`codexexec.network.policy` — pure data and decisions: :class:`NetworkPolicy`
  (allowed/denied domain patterns, ``full``/``limited`` mode, local access, ``ask``,
  UDP), the TOML policy-file reader, :func:`evaluate` (name level, in the order its
  docstring gives) and
  :func:`check_resolved` (address level: the DNS-rebinding defence), and
  :class:`Decision`, whose ``CODEX_NETWORK_POLICY_DECISION`` line Codex's core parses.
* :mod:`codexexec.network.proxy` — :class:`ManagedProxy`, an asyncio HTTP proxy
  (absolute-form forwarding and ``CONNECT``) plus a SOCKS5 proxy (``CONNECT`` and,
  when allowed, ``UDP ASSOCIATE``) on ephemeral 127.0.0.1 ports.
* :mod:`codexexec.network.env` — :func:`proxy_environment`, the child's proxy
  variables.

No MITM: HTTPS passes through ``CONNECT`` untouched, so ``limited`` mode (which can
only police methods it can see) blocks tunnels outright.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from codexexec.network.env import proxy_environment
from codexexec.network.policy import (
    Decision,
    NetworkPolicy,
    NetworkPolicyError,
    PolicyFileError,
    check_resolved,
    evaluate,
    normalize_host,
    parse_policy_file,
)

if TYPE_CHECKING:
    from codexexec.network.proxy import ManagedProxy


def __getattr__(name: str) -> Any:
    # The proxy (asyncio servers, HTTP and SOCKS parsers) loads only when one is started,
    # so the policy's users — every command's start-up — do not pay for it.
    if name == "ManagedProxy":
        from codexexec.network.proxy import ManagedProxy

        return ManagedProxy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Decision",
    "ManagedProxy",
    "NetworkPolicy",
    "NetworkPolicyError",
    "PolicyFileError",
    "check_resolved",
    "evaluate",
    "normalize_host",
    "parse_policy_file",
    "proxy_environment",
]
