"""Chaining the managed proxy to an operator's HTTP proxy (`upstream_proxy` in the
executor's network policy file; Codex's `--proxy-private-ips-via-upstream`).

Every admitted connection still goes to the addresses the gate checked (the resolved IP
stays pinned): through the upstream, as ``CONNECT <ip>:<port>``, so plain HTTP and TLS
alike pass a proxy that allows CONNECT to the destination's port. Which way a connection
goes (``route``, pure):

1. loopback: always direct (the upstream cannot reach this host's loopback);
2. a private or otherwise non-global address: direct, unless
   ``--proxy-private-ips-via-upstream``;
3. anything else: through the upstream, when one is configured.

Pure; ``gate.py`` opens the tunnels.
"""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote, urlsplit

from codexexec.network.errors import NetworkError


class UpstreamProxyError(NetworkError, ValueError):
    """An `upstream_proxy` value that is not ``http://[USER:PASS@]HOST:PORT``."""


@dataclass(frozen=True, slots=True)
class UpstreamProxy:
    host: str
    port: int
    # `Proxy-Authorization` for a URL with credentials; never shown (repr, logs).
    authorization: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return f"http://{self.host}:{self.port}"


def parse_upstream(url: str) -> UpstreamProxy:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UpstreamProxyError("upstream_proxy must be http://[USER:PASS@]HOST:PORT") from None
    if parts.scheme != "http" or not parts.hostname or port is None:
        raise UpstreamProxyError("upstream_proxy must be http://[USER:PASS@]HOST:PORT")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise UpstreamProxyError("upstream_proxy takes no path, query or fragment")
    authorization = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(pair.encode()).decode()
    return UpstreamProxy(parts.hostname, port, authorization)


def route(
    address: str, upstream: UpstreamProxy | None, private_via_upstream: bool
) -> Literal["direct", "upstream"]:
    if upstream is None:
        return "direct"
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip.is_loopback:
        return "direct"
    if not ip.is_global and not private_via_upstream:
        return "direct"
    return "upstream"
