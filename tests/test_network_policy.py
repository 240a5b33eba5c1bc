"""Pure parts of the managed network proxy: hosts, patterns, decisions, policy files,
the child environment and the HTTP request parser (no sockets here)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codexexec.network import (
    Decision,
    NetworkPolicy,
    NetworkPolicyError,
    PolicyFileError,
    check_resolved,
    evaluate,
    normalize_host,
    parse_policy_file,
    proxy_environment,
)
from codexexec.network.http_proxy import (
    BadRequest,
    parse_request_head,
    request_framing,
    upstream_head,
)
from codexexec.network.policy import InvalidHost, is_non_public

# --- hosts -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Example.COM.", "example.com"),
        ("  example.com  ", "example.com"),
        ("example.com:443", "example.com"),
        ("[::1]", "::1"),
        ("[0:0:0:0:0:0:0:1]", "::1"),
        ("::FFFF:127.0.0.1", "::ffff:7f00:1"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("127.1", "127.0.0.1"),
        ("0x7f.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("10.0.0.1", "10.0.0.1"),
        ("_srv.example.com", "_srv.example.com"),
    ],
)
def test_normalize_host(raw: str, expected: str) -> None:
    assert normalize_host(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        " ",
        "a b.com",
        "a..b",
        "[::1",
        "[nothost]",
        "x" * 64 + ".com",
        "a/b",
        "999.1.1.1",
        "é" * 80,
    ],
)
def test_normalize_host_rejects(raw: str) -> None:
    with pytest.raises(InvalidHost):
        normalize_host(raw)


@given(st.text(max_size=80))
@settings(max_examples=300)
def test_normalize_host_is_idempotent_or_rejects(raw: str) -> None:
    try:
        once = normalize_host(raw)
    except InvalidHost:
        return
    assert normalize_host(once) == once


@pytest.mark.parametrize(
    "ip",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "64:ff9b::10.0.0.1",
        "not-an-ip",
    ],
)
def test_non_public_addresses(ip: str) -> None:
    assert is_non_public(ip)


@pytest.mark.parametrize("ip", ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses(ip: str) -> None:
    assert not is_non_public(ip)


# --- patterns and evaluation ------------------------------------------------------


def verdict(policy: NetworkPolicy, host: str, **kw: object) -> tuple[str, str]:
    decision = evaluate(policy, host, 443, "https_connect", **kw)  # type: ignore[arg-type]
    return decision.decision, decision.reason


def test_exact_and_wildcards() -> None:
    policy = NetworkPolicy(
        allowed_domains=["exact.com", "*.sub.com", "**.both.com", "region*.v2.x.com"]
    )
    allowed = ["exact.com", "EXACT.com.", "a.sub.com", "a.b.sub.com", "both.com", "x.both.com"]
    allowed += ["region1.v2.x.com", "region.v2.x.com"]
    blocked = ["www.exact.com", "sub.com", "notboth.com", "foo.region1.v2.x.com", "other.com"]
    for host in allowed:
        assert verdict(policy, host) == ("allow", "allowed"), host
    for host in blocked:
        assert verdict(policy, host) == ("deny", "not_allowed"), host


def test_star_allows_everything_public_but_not_in_denylist() -> None:
    policy = NetworkPolicy(allowed_domains=["*"])
    assert verdict(policy, "anything.example")[0] == "allow"
    assert verdict(policy, "8.8.8.8")[0] == "allow"
    assert verdict(policy, "localhost") == ("deny", "not_allowed_local")
    with pytest.raises(NetworkPolicyError, match="denylist"):
        NetworkPolicy(denied_domains=["*"])


def test_deny_wins_over_allow() -> None:
    policy = NetworkPolicy(
        allowed_domains=["**.evil.com", "both.com"], denied_domains=["*.evil.com", "both.com"]
    )
    assert verdict(policy, "evil.com") == ("allow", "allowed")
    assert verdict(policy, "x.evil.com") == ("deny", "denied")
    assert verdict(policy, "both.com") == ("deny", "denied")


def test_idn_patterns_match_punycode_hosts() -> None:
    policy = NetworkPolicy(allowed_domains=["*.bücher.example", "bücher.example"])
    assert verdict(policy, "xn--bcher-kva.example")[0] == "allow"
    assert verdict(policy, "shop.bücher.example")[0] == "allow"
    decision = evaluate(policy, "BÜCHER.example", 80, "http", "GET")
    assert decision.host == "xn--bcher-kva.example"


@pytest.mark.parametrize(
    "bad", ["a..b", "**", ".*", "x.**.com", "*.[::1]", "bad label.com", "*.é*.com"]
)
def test_bad_patterns(bad: str) -> None:
    with pytest.raises(NetworkPolicyError):
        NetworkPolicy(allowed_domains=[bad])


@pytest.mark.parametrize(
    "host",
    ["localhost", "api.localhost", "127.0.0.1", "127.1", "[::1]", "10.0.0.5", "169.254.169.254"],
)
def test_local_destinations_need_allow_local(host: str) -> None:
    policy = NetworkPolicy(allowed_domains=["*"])
    assert verdict(policy, host) == ("deny", "not_allowed_local")
    opened = NetworkPolicy(allowed_domains=["*"], allow_local=True)
    assert verdict(opened, host) == ("allow", "allowed")


def test_explicit_local_literal_is_allowed_without_allow_local() -> None:
    policy = NetworkPolicy(allowed_domains=["localhost", "10.0.0.5"])
    assert verdict(policy, "localhost")[0] == "allow"
    assert verdict(policy, "10.0.0.5")[0] == "allow"
    assert verdict(policy, "10.0.0.6") == ("deny", "not_allowed_local")
    # ... and the same exemption holds for the resolved address of that name.
    assert check_resolved(policy, "127.0.0.1", host="localhost")
    assert not check_resolved(policy, "127.0.0.1", host="rebind.example")


def test_check_resolved() -> None:
    strict = NetworkPolicy(allowed_domains=["example.com"])
    assert check_resolved(strict, "93.184.216.34")
    for ip in ("127.0.0.1", "10.0.0.1", "::1", "::ffff:192.168.0.1", "100.100.100.100"):
        assert not check_resolved(strict, ip, host="example.com")
    assert check_resolved(NetworkPolicy(allow_local=True), "127.0.0.1")


def test_limited_mode() -> None:
    policy = NetworkPolicy(allowed_domains=["example.com"], mode="limited")
    for method in ("GET", "head", "OPTIONS"):
        assert evaluate(policy, "example.com", 80, "http", method).decision == "allow"
    post = evaluate(policy, "example.com", 80, "http", "POST")
    assert (post.decision, post.reason, post.source) == ("deny", "method_not_allowed", "mode_guard")
    tunnel = evaluate(policy, "example.com", 443, "https_connect", "CONNECT")
    assert tunnel.reason == "method_not_allowed"
    assert evaluate(policy, "example.com", 443, "socks5_tcp").reason == "method_not_allowed"


def test_ask_unknown_and_invalid_hosts() -> None:
    policy = NetworkPolicy(allowed_domains=["known.com"], ask_unknown=True)
    assert verdict(policy, "unknown.com") == ("ask", "not_allowed")
    assert verdict(policy, "known.com") == ("allow", "allowed")
    assert verdict(policy, "bad host") == ("deny", "not_allowed")
    with pytest.raises(ValueError):
        evaluate(policy, "known.com", 0, "http", "GET")
    with pytest.raises(ValueError):
        evaluate(policy, "known.com", 70000, "http", "GET")


@given(st.text(max_size=60), st.integers(1, 65535), st.sampled_from(["GET", "POST", None]))
@settings(max_examples=300)
def test_evaluate_total(host: str, port: int, method: str | None) -> None:
    policy = NetworkPolicy(allowed_domains=["*.example.com"], denied_domains=["bad.example.com"])
    decision = evaluate(policy, host, port, "http", method)
    assert decision.decision in ("allow", "deny")
    json.loads(decision.to_json())


def test_policy_type_checks() -> None:
    with pytest.raises(NetworkPolicyError, match="mode"):
        NetworkPolicy(mode="partial")  # type: ignore[arg-type]
    with pytest.raises(NetworkPolicyError, match="sequences"):
        NetworkPolicy(allowed_domains="example.com")
    with pytest.raises(NetworkPolicyError, match="boolean"):
        NetworkPolicy(allow_local=1)  # type: ignore[arg-type]


# --- decisions ---------------------------------------------------------------------


def test_decision_json_and_line() -> None:
    decision = Decision("deny", "not_allowed", "baseline_policy", "http", "example.com", 80, "GET")
    assert decision.to_json() == (
        '{"decision":"deny","reason":"not_allowed","source":"baseline_policy",'
        '"protocol":"http","host":"example.com","port":80}'
    )
    assert decision.decision_line() == "CODEX_NETWORK_POLICY_DECISION " + decision.to_json()
    assert decision.proxy_error == "blocked-by-allowlist"
    assert "not in allowlist" in decision.message()
    audit = Decision("allow", "allowed", "decider", "https_connect", "a.com", 443, "CONNECT")
    assert audit.to_audit()["protocol"] == "httpsConnect"
    assert audit.to_audit()["method"] == "CONNECT"


@pytest.mark.parametrize(
    ("reason", "header"),
    [
        ("not_allowed", "blocked-by-allowlist"),
        ("not_allowed_local", "blocked-by-allowlist"),
        ("denied", "blocked-by-denylist"),
        ("method_not_allowed", "blocked-by-method-policy"),
        ("policy_denied", "blocked-by-policy"),
    ],
)
def test_proxy_error_header_values(reason: str, header: str) -> None:
    assert Decision("deny", reason, "baseline_policy", "http", "h", 1).proxy_error == header


# --- policy files ------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "network.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_parse_policy_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
# managed network
[network]
mode = "limited"
allow_local = true
ask = true
allow_udp = true

[network.domains]
"example.com" = "allow"
"*.evil.com" = "deny"
"bücher.example" = "allow"
""",
    )
    policy = parse_policy_file(path)
    assert policy.mode == "limited"
    assert policy.allow_local and policy.ask_unknown and policy.allow_udp
    assert list(policy.allowed_domains) == ["example.com", "bücher.example"]
    assert list(policy.denied_domains) == ["*.evil.com"]
    assert policy.is_allowed("xn--bcher-kva.example")


def test_empty_policy_file_allows_nothing(tmp_path: Path) -> None:
    policy = parse_policy_file(write(tmp_path, ""))
    assert verdict(policy, "example.com") == ("deny", "not_allowed")


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("[network]\nmode = full\n", 2, "invalid TOML"),
        ('[network]\nmode = "partial"\n', 2, "network.mode"),
        ('[network]\nallow_local = "yes"\n', 2, "network.allow_local"),
        ('[network]\n\nmodes = "full"\n', 3, "unknown key `network.modes`"),
        ('[network]\n[network.domains]\n"a.com" = "allow"\n"b.com" = "maybe"\n', 4, "b.com"),
        ('[network.domains]\n"ok.com" = "allow"\n"*" = "deny"\n', 3, "denylist"),
        ('[network.domains]\n"bad host.com" = "allow"\n', 2, "bad host.com"),
        ("[network]\nask = true\nask = false\n", 3, "invalid TOML"),
        ('[network]\ndomains = ["a.com"]\n', 2, "network.domains"),
    ],
)
def test_invalid_policy_files_name_the_line(
    tmp_path: Path, text: str, line: int, fragment: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PolicyFileError) as info:
        parse_policy_file(path)
    assert info.value.line == line
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert fragment in str(info.value)


def test_unreadable_and_non_utf8_policy_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyFileError, match="cannot read"):
        parse_policy_file(tmp_path / "missing.toml")
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[network]\nmode = "full"\n# caf\xe9\n')
    with pytest.raises(PolicyFileError) as info:
        parse_policy_file(path)
    assert info.value.line == 3


# --- environment -------------------------------------------------------------------


def test_proxy_environment() -> None:
    env = proxy_environment(3128, 8081, allow_local_binding=False)
    http, socks = "http://127.0.0.1:3128", "socks5h://127.0.0.1:8081"
    for key in (
        "HTTP_PROXY",
        "https_proxy",
        "YARN_HTTPS_PROXY",
        "npm_config_proxy",
        "NPM_CONFIG_HTTPS_PROXY",
        "BUNDLE_HTTP_PROXY",
        "PIP_PROXY",
        "DOCKER_HTTPS_PROXY",
        "WSS_PROXY",
    ):
        assert env[key] == http, key
    for key in ("ALL_PROXY", "all_proxy", "FTP_PROXY", "ftp_proxy"):
        assert env[key] == socks
    assert env["NO_PROXY"] == env["no_proxy"] == env["YARN_NO_PROXY"]
    assert env["NO_PROXY"] == "localhost,127.0.0.1,::1,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16"
    assert env["CODEX_NETWORK_PROXY_ACTIVE"] == "1"
    assert env["CODEX_NETWORK_ALLOW_LOCAL_BINDING"] == "0"
    assert env["NODE_USE_ENV_PROXY"] == "1"


def test_proxy_environment_variants() -> None:
    env = proxy_environment(1, None, allow_local_binding=True, no_proxy=["internal.test"])
    assert env["ALL_PROXY"] == "http://127.0.0.1:1"
    assert env["NO_PROXY"] == "internal.test"
    assert env["CODEX_NETWORK_ALLOW_LOCAL_BINDING"] == "1"
    for bad in (0, 70000, -1):
        with pytest.raises(ValueError):
            proxy_environment(bad, None, allow_local_binding=False)
    with pytest.raises(ValueError):
        proxy_environment(80, 0, allow_local_binding=False)


# --- the HTTP request parser ---------------------------------------------------------


def test_parse_absolute_form_and_rewrite() -> None:
    head = (
        b"POST http://Example.com:8080/a/b?q=1#frag HTTP/1.1\r\n"
        b"Host: attacker.test\r\n"
        b"Proxy-Authorization: Basic dG9rZW4tMTI6\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"Connection: keep-alive, X-Secret-Hop\r\n"
        b"X-Secret-Hop: 1\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"TE: trailers\r\n"
        b"Upgrade: h2c\r\n"
        b"Content-Length: 3\r\n"
        b"X-Keep: yes\r\n\r\n"
    )
    request = parse_request_head(head)
    assert request is not None
    assert (request.host, request.port, request.path) == ("example.com", 8080, "/a/b?q=1")
    assert request.token == "token-12"
    framing = request_framing(request)
    assert framing == ("length", 3)
    out = upstream_head(request, *framing).decode()
    assert out.startswith("POST /a/b?q=1 HTTP/1.1\r\nHost: example.com:8080\r\n")
    lowered = out.lower()
    for gone in ("proxy-", "keep-alive", "x-secret-hop", "te:", "upgrade", "attacker"):
        assert gone not in lowered, gone
    assert "X-Keep: yes" in out and "Content-Length: 3" in out
    assert out.endswith("Connection: close\r\n\r\n")


@pytest.mark.parametrize(
    "head",
    [
        b"garbage\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # origin-form: not a proxy request
        b"GET https://example.com/ HTTP/1.1\r\n\r\n",
        b"GET http://example.com/ HTTP/2.0\r\n\r\n",
        b"GET  http://example.com/ HTTP/1.1\r\n\r\n",
        b"G(T http://example.com/ HTTP/1.1\r\n\r\n",
        b"GET http://user:pw@example.com/ HTTP/1.1\r\n\r\n",
        b"GET http://example.com:0/ HTTP/1.1\r\n\r\n",
        b"GET http://example.com:70000/ HTTP/1.1\r\n\r\n",
        b"GET http://example.com:8x/ HTTP/1.1\r\n\r\n",
        b"GET http://::1/ HTTP/1.1\r\n\r\n",
        b"GET http://bad_host!/ HTTP/1.1\r\n\r\n",
        b"GET http://example.com/ HTTP/1.1\r\nNo colon here\r\n\r\n",
        b"GET http://example.com/ HTTP/1.1\r\nBad Name: x\r\n\r\n",
        b"GET http://example.com/ HTTP/1.1\r\n folded: x\r\n\r\n",
        b"GET http://ex\xffample.com/ HTTP/1.1\r\n\r\n",
        b"CONNECT example.com HTTP/1.1\r\n\r\n",
        b"CONNECT example.com:0 HTTP/1.1\r\n\r\n",
        b"CONNECT [::1 HTTP/1.1\r\n\r\n",
    ],
)
def test_malformed_requests_are_bad_requests(head: bytes) -> None:
    with pytest.raises(BadRequest) as info:
        parse_request_head(head)
    assert info.value.status == 400


def test_request_framing_rejects_smuggling() -> None:
    def framing(fields: str) -> object:
        request = parse_request_head(f"POST http://a.com/ HTTP/1.1\r\n{fields}\r\n".encode())
        assert request is not None
        return request_framing(request)

    assert framing("Transfer-Encoding: chunked\r\n") == ("chunked", 0)
    assert framing("Content-Length: 5\r\nContent-Length: 5\r\n") == ("length", 5)
    for bad in (
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Content-Length: -1\r\n",
        "Transfer-Encoding: gzip, chunked\r\n",
    ):
        with pytest.raises(BadRequest):
            framing(bad)


def test_connect_ipv6_and_idn_targets() -> None:
    request = parse_request_head(b"CONNECT [::1]:443 HTTP/1.1\r\n\r\n")
    assert request is not None and (request.host, request.port) == ("::1", 443)
    idn = parse_request_head("GET http://bücher.example/ HTTP/1.1\r\n\r\n".encode())
    assert idn is not None and idn.host == "xn--bcher-kva.example"
    assert parse_request_head(b"\r\n") is None


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_request_parser_only_raises_bad_request(data: bytes) -> None:
    with contextlib.suppress(BadRequest):
        parse_request_head(data + b"\r\n\r\n")


@given(
    st.sampled_from(["GET", "POST", "CONNECT", "X"]),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=0x24F), max_size=40),
)
@settings(max_examples=300)
def test_request_parser_targets(method: str, target: str) -> None:
    with contextlib.suppress(BadRequest):
        parse_request_head(f"{method} {target} HTTP/1.1\r\n\r\n".encode())
