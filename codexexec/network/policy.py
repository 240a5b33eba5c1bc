"""Network policy for the managed proxy: domain patterns, decisions, the policy file.

Everything here is pure (no sockets, no DNS), so the proxy and its tests share one
source of truth. The order of checks follows Codex's ``host_blocked`` /
``evaluate_host_policy`` (docs/sandbox-intent.md §3):

1. a denylist match → ``deny``/``denied`` (deny always beats allow);
2. without ``allow_local``: a loopback name (``localhost``, ``*.localhost``) or a
   non-public IP literal → ``deny``/``not_allowed_local``, unless that exact name or
   literal is in the allowlist (wildcards never count as "explicit");
3. ``limited`` mode admits only ``GET``/``HEAD``/``OPTIONS`` over plain HTTP → else
   ``deny``/``method_not_allowed`` (source ``mode_guard``); tunnels (``CONNECT``,
   SOCKS) hide their methods, so they are refused in ``limited`` mode;
4. an allowlist match → ``allow``;
5. otherwise ``ask`` when ``ask_unknown`` is set, else ``deny``/``not_allowed``.

Names that pass are resolved by the proxy and every address is re-checked with
:func:`check_resolved` (the DNS-rebinding defence: a public name that resolves to a
private address is refused like the literal would be).

Patterns (case-insensitive, IDN names in punycode): ``example.com`` is that host
only; ``*.example.com`` its subdomains (any depth) but not the apex;
``**.example.com`` the apex and subdomains; ``*`` alone every host (allowlist only);
a ``*`` inside a label matches within that label (``region*.x.com`` matches
``region1.x.com``, not ``a.region1.x.com``).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec

from codexexec.network.errors import NetworkError
from codexexec.network.upstream import UpstreamProxy, UpstreamProxyError, parse_upstream

Mode = Literal["full", "limited"]
Protocol = Literal["http", "https_connect", "socks5_tcp", "socks5_udp"]
Verdict = Literal["allow", "deny", "ask"]

DECISION_PREFIX = "CODEX_NETWORK_POLICY_DECISION"
LIMITED_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_POLICY_FILE_BYTES = 1024 * 1024

_LABEL = re.compile(r"[a-z0-9_-]{1,63}")
_WILD_PART = re.compile(r"[a-z0-9_-]*")
_NUMERIC_V4 = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}")

# Address ranges a sandboxed command may not reach without ``allow_local``.
_NON_PUBLIC_V4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network", unspecified
        "10.0.0.0/8",
        "100.64.0.0/10",  # CGNAT
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",  # TEST-NET-1
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # TEST-NET-2
        "203.0.113.0/24",  # TEST-NET-3
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, broadcast
    )
)
_NON_PUBLIC_V6 = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/128",
        "::1/128",
        "::/96",  # deprecated IPv4-compatible
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # old site-local
        "ff00::/8",  # multicast
        "100::/64",  # discard-only
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class NetworkPolicyError(NetworkError, ValueError):
    """A policy (or one of its patterns) is malformed; the message says which and why."""


class InvalidHost(NetworkError, ValueError):
    """A host name or address that cannot be a destination."""


class PolicyFileError(NetworkPolicyError):
    """A policy file is unreadable or invalid; names the file and, when known, the line."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        self.path = path
        self.line = line
        self.message = message
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}")


# ---------------------------------------------------------------------------
# Hosts and addresses


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def normalize_host(raw: str) -> str:
    """Canonical form of a destination host, as the policy compares it.

    Trims, strips ``[...]`` brackets (and ``:port`` when there is exactly one colon),
    lowercases, strips trailing dots, canonicalises IP literals (including the
    shorthand IPv4 forms ``inet_aton`` accepts, such as ``127.1`` or ``0x7f.1``), and
    encodes internationalised names as punycode (``bücher.example`` →
    ``xn--bcher-kva.example``). Raises :class:`InvalidHost` for anything else.
    """
    host = raw.strip()
    if host.startswith("["):
        if not host.endswith("]"):
            raise InvalidHost("unterminated IPv6 literal")
        host = host[1:-1]
        ip = _parse_ip(host.replace("%25", "%"))
        if ip is None or ip.version != 6:
            raise InvalidHost("invalid IPv6 literal")
        return str(ip)
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    host = host.lower().rstrip(".")
    if not host:
        raise InvalidHost("empty host")
    if ":" in host:
        ip = _parse_ip(host.replace("%25", "%"))
        if ip is None:
            raise InvalidHost("invalid IPv6 literal")
        return str(ip)
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii").rstrip(".")
        except UnicodeError:
            raise InvalidHost("invalid internationalised domain name") from None
    ip = _parse_ip(host)
    if ip is not None:
        return str(ip)
    if _NUMERIC_V4.fullmatch(host):
        # Resolvers treat these as addresses; so must the policy, or "127.1" slips by.
        try:
            return socket.inet_ntoa(socket.inet_aton(host))
        except OSError:
            raise InvalidHost("invalid IPv4 literal") from None
    if len(host) > 253:
        raise InvalidHost("host name longer than 253 characters")
    for label in host.split("."):
        if not _LABEL.fullmatch(label):
            raise InvalidHost("invalid host name")
    return host


def is_non_public(ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether an address is loopback, private, link-local, CGNAT, ULA, unspecified,
    multicast, reserved or documentation space (v4-mapped and NAT64 forms included)."""
    addr = ip if not isinstance(ip, str) else _parse_ip(ip.split("%", 1)[0])
    if addr is None:
        return True  # not an address at all: fail closed
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return is_non_public(addr.ipv4_mapped)
        if addr in _NAT64:
            return is_non_public(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
        if any(addr in net for net in _NON_PUBLIC_V6):
            return True
    elif any(addr in net for net in _NON_PUBLIC_V4):
        return True
    return bool(
        addr.is_private
        or addr.is_loopback
        or addr.is_link_local
        or addr.is_multicast
        or addr.is_unspecified
        or addr.is_reserved
    )


def _is_local_name_or_literal(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    ip = _parse_ip(host.split("%", 1)[0])
    return ip is not None and is_non_public(ip)


# ---------------------------------------------------------------------------
# Patterns


class _Pattern(msgspec.Struct, frozen=True):
    text: str
    regex: re.Pattern[str] | None  # None: an exact host

    def matches(self, host: str) -> bool:
        if self.regex is None:
            return host == self.text
        return self.regex.fullmatch(host) is not None


def _compile_pattern(raw: str, *, deny: bool) -> _Pattern:
    if not isinstance(raw, str):
        raise NetworkPolicyError(f"domain pattern must be a string, not {type(raw).__name__}")
    text = raw.strip().lower().rstrip(".")
    if text == "*":
        if deny:
            raise NetworkPolicyError("`*` is not allowed in the denylist")
        return _Pattern("*", re.compile(r".+", re.DOTALL))
    if "*" not in text:
        try:
            return _Pattern(normalize_host(text), None)
        except InvalidHost as exc:
            raise NetworkPolicyError(f"invalid domain pattern `{raw}`: {exc}") from None
    if ":" in text or "[" in text:
        raise NetworkPolicyError(f"invalid domain pattern `{raw}`: no wildcards in IP literals")
    labels = text.split(".")
    prefix = ""
    if labels[0] == "**":
        prefix, labels = r"(?:[^.]+\.)*", labels[1:]
    elif labels[0] == "*":
        prefix, labels = r"(?:[^.]+\.)+", labels[1:]
    if not labels:
        raise NetworkPolicyError(f"invalid domain pattern `{raw}`: nothing after the wildcard")
    parts: list[str] = []
    for label in labels:
        if "**" in label:
            raise NetworkPolicyError(
                f"invalid domain pattern `{raw}`: `**` only as the first label"
            )
        if "*" in label:
            pieces = label.split("*")
            if not all(p.isascii() and _WILD_PART.fullmatch(p) for p in pieces):
                raise NetworkPolicyError(f"invalid domain pattern `{raw}`: bad label `{label}`")
            parts.append("[^.]*".join(re.escape(p) for p in pieces))
            continue
        try:
            encoded = label.encode("idna").decode("ascii") if not label.isascii() else label
        except UnicodeError:
            raise NetworkPolicyError(
                f"invalid domain pattern `{raw}`: bad label `{label}`"
            ) from None
        if not _LABEL.fullmatch(encoded):
            raise NetworkPolicyError(f"invalid domain pattern `{raw}`: bad label `{label}`")
        parts.append(re.escape(encoded))
    return _Pattern(text, re.compile(prefix + r"\.".join(parts)))


# ---------------------------------------------------------------------------
# Policy and decisions


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    """What a managed command may reach. Lists may be given as any sequence."""

    allowed_domains: Sequence[str] = ()
    denied_domains: Sequence[str] = ()
    mode: Mode = "full"
    allow_local: bool = False
    ask_unknown: bool = False
    allow_udp: bool = False
    # Only the executor's own policy file sets this; see upstream.py.
    upstream_proxy: UpstreamProxy | None = None
    _allow: tuple[_Pattern, ...] = field(init=False, repr=False, compare=False)
    _deny: tuple[_Pattern, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.allowed_domains, str) or isinstance(self.denied_domains, str):
            raise NetworkPolicyError("domain lists must be sequences of patterns, not a string")
        object.__setattr__(self, "allowed_domains", tuple(self.allowed_domains))
        object.__setattr__(self, "denied_domains", tuple(self.denied_domains))
        if self.mode not in ("full", "limited"):
            raise NetworkPolicyError(f"unknown network mode `{self.mode}` (full or limited)")
        for name in ("allow_local", "ask_unknown", "allow_udp"):
            if not isinstance(getattr(self, name), bool):
                raise NetworkPolicyError(f"`{name}` must be a boolean")
        allow = tuple(_compile_pattern(p, deny=False) for p in self.allowed_domains)
        deny = tuple(_compile_pattern(p, deny=True) for p in self.denied_domains)
        object.__setattr__(self, "_allow", allow)
        object.__setattr__(self, "_deny", deny)

    def is_denied(self, host: str) -> bool:
        return any(p.matches(host) for p in self._deny)

    def is_allowed(self, host: str) -> bool:
        return any(p.matches(host) for p in self._allow)

    def is_explicitly_allowed(self, host: str) -> bool:
        """An exact (wildcard-free) allowlist entry for this normalised host."""
        return any(p.regex is None and p.text == host for p in self._allow)


_PROXY_ERRORS = {
    "not_allowed": "blocked-by-allowlist",
    "not_allowed_local": "blocked-by-allowlist",
    "denied": "blocked-by-denylist",
    "method_not_allowed": "blocked-by-method-policy",
}
_MESSAGES = {
    "not_allowed": "domain not in allowlist (this is not a denylist block).",
    "not_allowed_local": "local/private addresses not allowed.",
    "denied": "domain denied by policy.",
    "method_not_allowed": "method not allowed in limited mode.",
}
_AUDIT_PROTOCOLS = {
    "http": "http",
    "https_connect": "httpsConnect",
    "socks5_tcp": "socks5Tcp",
    "socks5_udp": "socks5Udp",
}


class Decision(msgspec.Struct, frozen=True):
    """One policy decision about one destination.

    ``source`` is ``baseline_policy`` (the lists and local rules), ``mode_guard``
    (limited mode), ``decider`` (the ask callback, or an earlier "allow for session")
    or ``proxy_state`` (a proxy feature that is off, such as SOCKS5 UDP).
    """

    decision: Verdict
    reason: str
    source: str
    protocol: Protocol
    host: str
    port: int
    method: str | None = None

    @property
    def allowed(self) -> bool:
        return self.decision == "allow"

    def to_json(self) -> str:
        """Compact JSON in Codex's field names and order (the decision line's payload)."""
        payload = {
            "decision": self.decision,
            "reason": self.reason,
            "source": self.source,
            "protocol": self.protocol,
            "host": self.host,
            "port": self.port,
        }
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)

    def decision_line(self) -> str:
        return f"{DECISION_PREFIX} {self.to_json()}"

    @property
    def proxy_error(self) -> str:
        """The ``x-proxy-error`` header value for a blocked request."""
        return _PROXY_ERRORS.get(self.reason, "blocked-by-policy")

    def message(self) -> str:
        """The human line that follows the decision line in a 403 body."""
        detail = _MESSAGES.get(self.reason)
        if detail is None:
            return "Codex blocked this request by network policy."
        return f"Codex blocked this request: {detail}"

    def to_audit(self) -> dict[str, Any]:
        """Fields for a ``network/policyDecision`` notification."""
        audit: dict[str, Any] = {
            "decision": self.decision,
            "source": self.source,
            "reason": self.reason,
            "protocol": _AUDIT_PROTOCOLS[self.protocol],
            "host": self.host,
            "port": self.port,
        }
        if self.method is not None:
            audit["method"] = self.method
        return audit


def evaluate(
    policy: NetworkPolicy,
    host: str,
    port: int,
    protocol: Protocol,
    method: str | None = None,
) -> Decision:
    """The name-level decision for a destination (see the module docstring for order).

    ``host`` may be raw (it is normalised here; an unusable host is ``not_allowed``).
    Raises :class:`ValueError` for a port outside 1..65535: callers reject those as
    malformed requests before asking the policy.
    """
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"port out of range: {port!r}")
    if method is not None:
        method = method.upper()
    try:
        name = normalize_host(host)
    except InvalidHost:
        return Decision(
            "deny", "not_allowed", "baseline_policy", protocol, host[:253], port, method
        )

    def decide(verdict: Verdict, reason: str, source: str = "baseline_policy") -> Decision:
        return Decision(verdict, reason, source, protocol, name, port, method)

    if policy.is_denied(name):
        return decide("deny", "denied")
    if (
        not policy.allow_local
        and _is_local_name_or_literal(name)
        and not policy.is_explicitly_allowed(name)
    ):
        return decide("deny", "not_allowed_local")
    if policy.mode == "limited" and (protocol != "http" or method not in LIMITED_METHODS):
        return decide("deny", "method_not_allowed", "mode_guard")
    if policy.is_allowed(name):
        return decide("allow", "allowed")
    if policy.ask_unknown:
        return decide("ask", "not_allowed")
    return decide("deny", "not_allowed")


def check_resolved(
    policy: NetworkPolicy,
    ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address,
    *,
    host: str | None = None,
) -> bool:
    """Whether the proxy may connect to ``ip``, an address a permitted name resolved to.

    Non-public addresses (:func:`is_non_public`) are refused unless ``allow_local`` is
    set, or ``host`` (normalised) is a loopback name or local literal that the
    allowlist names exactly — the same exemption :func:`evaluate` grants.
    """
    if policy.allow_local or not is_non_public(ip):
        return True
    return (
        host is not None and _is_local_name_or_literal(host) and policy.is_explicitly_allowed(host)
    )


# ---------------------------------------------------------------------------
# Policy files

_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_TABLE_HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(?:#.*)?$")
_KEY_PART = re.compile(r"\s*(?:\"((?:[^\"\\]|\\.)*)\"|'([^']*)'|([A-Za-z0-9_-]+))\s*")
_NETWORK_KEYS = {"mode", "allow_local", "ask", "allow_udp", "domains", "upstream_proxy"}


def _split_key(text: str) -> list[str] | None:
    """A dotted TOML key (bare or quoted parts) as a list, or None if unparseable."""
    parts: list[str] = []
    pos = 0
    while True:
        match = _KEY_PART.match(text, pos)
        if match is None or match.end() == pos:
            return None
        basic, literal, bare = match.groups()
        if basic is not None:
            try:
                parts.append(json.loads(f'"{basic}"'))
            except ValueError:
                parts.append(basic)
        else:
            parts.append(literal if literal is not None else bare)
        pos = match.end()
        if pos == len(text):
            return parts
        if text[pos] != ".":
            return None
        pos += 1


def _find_line(text: str, path: Sequence[str]) -> int | None:
    """The 1-based line defining the key ``path`` (best effort), else its parent's."""
    table: list[str] = []
    best: tuple[int, int] | None = None  # (depth matched, line)
    target = list(path)
    for number, line in enumerate(text.splitlines(), start=1):
        header = _TABLE_HEADER.match(line)
        if header is not None and not line.lstrip().startswith("[["):
            table = _split_key(header.group(1)) or []
            full = table
        else:
            key_text, sep, _ = line.partition("=")
            if not sep or line.lstrip().startswith("#"):
                continue
            key = _split_key(key_text)
            if key is None:
                continue
            full = table + key
        depth = 0
        while depth < min(len(full), len(target)) and full[depth] == target[depth]:
            depth += 1
        if depth == len(target) and len(full) == len(target):
            return number
        if depth == len(full) and (best is None or depth > best[0]):
            best = (depth, number)
    return best[1] if best is not None else None


def parse_policy_text(text: str, source: str = "<policy>") -> NetworkPolicy:
    """Parse a policy document (see :func:`parse_policy_file`)."""
    import tomllib  # only here: a local exec loads this module but parses no policy file

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        position = _TOML_POSITION.search(message)
        line = int(position.group(1)) if position else None
        detail = _TOML_POSITION.sub("", message) if position else message
        if position:
            detail = f"{detail} (column {position.group(2)})"
        raise PolicyFileError(source, line, f"invalid TOML: {detail}") from None

    def fail(path: Sequence[str], message: str) -> PolicyFileError:
        return PolicyFileError(source, _find_line(text, path), message)

    network = data.get("network", {})
    if not isinstance(network, dict):
        raise fail(["network"], "`network` must be a table")
    for key in network:
        if key not in _NETWORK_KEYS:
            known = ", ".join(sorted(_NETWORK_KEYS))
            raise fail(["network", key], f"unknown key `network.{key}` (known: {known})")
    mode = network.get("mode", "full")
    if mode not in ("full", "limited"):
        raise fail(["network", "mode"], f'`network.mode` must be "full" or "limited", not {mode!r}')
    flags: dict[str, bool] = {}
    for key in ("allow_local", "ask", "allow_udp"):
        value = network.get(key, False)
        if not isinstance(value, bool):
            raise fail(["network", key], f"`network.{key}` must be true or false, not {value!r}")
        flags[key] = value
    domains = network.get("domains", {})
    if not isinstance(domains, dict):
        raise fail(["network", "domains"], "`network.domains` must be a table")
    allowed: list[str] = []
    denied: list[str] = []
    for pattern, verdict in domains.items():
        where = ["network", "domains", pattern]
        if verdict not in ("allow", "deny"):
            raise fail(where, f'domain `{pattern}`: expected "allow" or "deny", not {verdict!r}')
        try:
            _compile_pattern(pattern, deny=verdict == "deny")
        except NetworkPolicyError as exc:
            raise fail(where, str(exc)) from None
        (allowed if verdict == "allow" else denied).append(pattern)
    upstream = None
    if "upstream_proxy" in network:
        value = network["upstream_proxy"]
        try:
            if not isinstance(value, str):
                raise UpstreamProxyError("upstream_proxy must be a string")
            upstream = parse_upstream(value)
        except UpstreamProxyError as exc:
            raise fail(["network", "upstream_proxy"], str(exc)) from None
    return NetworkPolicy(
        allowed_domains=tuple(allowed),
        denied_domains=tuple(denied),
        mode=mode,
        allow_local=flags["allow_local"],
        ask_unknown=flags["ask"],
        allow_udp=flags["allow_udp"],
        upstream_proxy=upstream,
    )


def parse_policy_file(path: str | os.PathLike[str]) -> NetworkPolicy:
    """Read a TOML policy file::

        [network]
        mode = "full"          # or "limited"
        allow_local = false
        ask = false            # unknown domains go to the decider
        allow_udp = false      # SOCKS5 UDP ASSOCIATE

        [network.domains]
        "example.com" = "allow"
        "*.evil.com" = "deny"

    Raises :class:`PolicyFileError` naming the file and the offending line. A file
    without a ``[network]`` table yields the default policy (nothing allowed).
    """
    source = os.fspath(path)
    try:
        with Path(source).open("rb") as handle:
            raw = handle.read(MAX_POLICY_FILE_BYTES + 1)
    except OSError as exc:
        raise PolicyFileError(source, None, f"cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_POLICY_FILE_BYTES:
        raise PolicyFileError(source, None, f"larger than {MAX_POLICY_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PolicyFileError(source, line, "not valid UTF-8") from None
    return parse_policy_text(text, source)
