"""The environment a managed child gets so that its tools use the proxy (docs/sandbox-intent.md §2).

Pure: ports in, variables out. The caller merges the result over the child's env
(these keys win). Linux only, so macOS's injected ``GIT_SSH_COMMAND`` is not set;
MITM is not implemented, so no CA-bundle variables either.
"""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_NO_PROXY = (
    "localhost",
    "127.0.0.1",
    "::1",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
)

HTTP_PROXY_KEYS = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
    "YARN_HTTP_PROXY",
    "YARN_HTTPS_PROXY",
    "npm_config_http_proxy",
    "npm_config_https_proxy",
    "npm_config_proxy",
    "NPM_CONFIG_HTTP_PROXY",
    "NPM_CONFIG_HTTPS_PROXY",
    "NPM_CONFIG_PROXY",
    "BUNDLE_HTTP_PROXY",
    "BUNDLE_HTTPS_PROXY",
    "PIP_PROXY",
    "DOCKER_HTTP_PROXY",
    "DOCKER_HTTPS_PROXY",
    "WS_PROXY",
    "WSS_PROXY",
    "ws_proxy",
    "wss_proxy",
)
NO_PROXY_KEYS = (
    "NO_PROXY",
    "no_proxy",
    "npm_config_noproxy",
    "NPM_CONFIG_NOPROXY",
    "YARN_NO_PROXY",
    "BUNDLE_NO_PROXY",
)
# SOCKS5 (``socks5h``: the proxy resolves names) when it runs, else the HTTP proxy.
ALL_PROXY_KEYS = ("ALL_PROXY", "all_proxy", "FTP_PROXY", "ftp_proxy")


def _check_port(name: str, port: int) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"{name} must be a TCP port in 1..65535, not {port!r}")


def proxy_environment(
    http_port: int,
    socks_port: int | None,
    *,
    allow_local_binding: bool,
    no_proxy: Sequence[str] | None = None,
) -> dict[str, str]:
    """Proxy variables for a child of a :class:`~codexexec.network.ManagedProxy`.

    ``socks_port`` None means no SOCKS5 listener: ``ALL_PROXY``/``FTP_PROXY`` then
    point at the HTTP proxy. ``no_proxy`` replaces Codex's default bypass list
    (loopback and RFC 1918 ranges; no name suffixes, so clients never resolve internal
    names themselves).
    """
    _check_port("http_port", http_port)
    if socks_port is not None:
        _check_port("socks_port", socks_port)
    http = f"http://127.0.0.1:{http_port}"
    socks = f"socks5h://127.0.0.1:{socks_port}" if socks_port is not None else http
    bypass = ",".join(DEFAULT_NO_PROXY if no_proxy is None else no_proxy)
    env = {
        "CODEX_NETWORK_PROXY_ACTIVE": "1",
        "CODEX_NETWORK_ALLOW_LOCAL_BINDING": "1" if allow_local_binding else "0",
        "ELECTRON_GET_USE_PROXY": "true",
        "NODE_USE_ENV_PROXY": "1",
    }
    env.update(dict.fromkeys(HTTP_PROXY_KEYS, http))
    env.update(dict.fromkeys(NO_PROXY_KEYS, bypass))
    env.update(dict.fromkeys(ALL_PROXY_KEYS, socks))
    return env
