"""Which loopback proxy ports a managed-network command may reach.

Codex derives the ports the sandbox admits from the proxy variables actually set in the
child's environment, so the environment and the sandbox cannot drift apart
(docs/sandbox-intent.md §2). codexexec also checks them against the
`managedNetwork.loopbackPorts` the request carries: a mismatch means the two were
prepared from different snapshots, and the start fails closed.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

import msgspec

from codexexec.network.env import ALL_PROXY_KEYS, HTTP_PROXY_KEYS
from codexexec.sandbox.errors import SandboxError

# Every variable the executor points at its proxy (compared case-insensitively).
PROXY_ENV_KEYS = tuple(dict.fromkeys(k.upper() for k in (*HTTP_PROXY_KEYS, *ALL_PROXY_KEYS)))
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
_DEFAULT_PORTS = {"https": 443, "socks5": 1080, "socks5h": 1080, "socks4": 1080, "socks4a": 1080}


class ProxyRouteError(SandboxError, ValueError):
    pass


class ManagedNetwork(msgspec.Struct, frozen=True):
    """The sandbox side of a prepared managed network (Codex's ManagedNetworkSandboxContext)."""

    loopback_ports: tuple[int, ...]
    allow_local_binding: bool = False


def loopback_ports_from_env(env: Mapping[str, str]) -> set[int]:
    upper = {key.upper(): value for key, value in env.items()}
    ports: set[int] = set()
    for key in PROXY_ENV_KEYS:
        value = upper.get(key)
        if not value:
            continue
        parsed = urlsplit(value if "://" in value else f"http://{value}")
        if parsed.hostname not in LOOPBACK_HOSTS:
            continue
        try:
            port = parsed.port or _DEFAULT_PORTS.get(parsed.scheme, 80)
        except ValueError:
            raise ProxyRouteError(f"{key} has an invalid port") from None
        ports.add(port)
    return ports


def check_routes(env: Mapping[str, str], context: ManagedNetwork) -> tuple[int, ...]:
    """The ports to route; raises when env and context disagree or there is nothing to route."""
    from_env = loopback_ports_from_env(env)
    if not context.loopback_ports:
        raise ProxyRouteError("managed network enforcement needs at least one loopback proxy port")
    stray = from_env - set(context.loopback_ports)
    if stray:
        raise ProxyRouteError(
            "the proxy environment points at loopback ports "
            f"{sorted(stray)} that the managed network context does not allow "
            f"({list(context.loopback_ports)}): they were prepared from different snapshots"
        )
    return tuple(sorted(set(context.loopback_ports)))
