"""The managed network proxy over real loopback sockets, with real clients.

Every server here (HTTP origin, TCP echo, UDP echo, the proxy) listens on 127.0.0.1
inside the test. Test names such as ``allowed.test`` are resolved by a fake resolver
(to 127.0.0.1), so no test ever asks a real DNS server; hence most policies set
``allow_local`` — without it a name resolving to loopback is refused, which is the
rebinding test.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import http.client
import json
import os
import random
import shutil
import socket
import struct
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest

from codexexec.network import Decision, ManagedProxy, NetworkPolicy, proxy_environment
from codexexec.network.limits import Limits

LOOP = "127.0.0.1"
CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")
pytestmark = pytest.mark.timeout(60)


# --- servers -------------------------------------------------------------------------


def pattern_bytes(size: int) -> bytes:
    block = bytes(range(256)) * 4096
    return (block * (size // len(block) + 1))[:size]


class Origin:
    """A small keep-alive HTTP/1.1 origin that records what it receives."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, list[tuple[str, str]], bytes]] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, LOOP, 0, limit=1 << 20)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")[:-2]
                headers = [(k, v) for k, _, v in (line.partition(": ") for line in lines[1:])]
                fields = {k.lower(): v for k, v in headers}
                body = b""
                if fields.get("transfer-encoding") == "chunked":
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                        if size == 0:
                            await reader.readuntil(b"\r\n")
                            break
                        body += await reader.readexactly(size)
                        await reader.readexactly(2)
                elif "content-length" in fields:
                    body = await reader.readexactly(int(fields["content-length"]))
                self.seen.append((lines[0], headers, body))
                method, path, _ = lines[0].split(" ")
                if path == "/chunked":
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"5\r\nhello\r\n7;ext=1\r\n, chunk\r\n0\r\nX-Trailer: t\r\n\r\n"
                    )
                else:
                    if path.startswith("/big/"):
                        payload = pattern_bytes(int(path[5:]))
                    elif method == "POST":
                        payload = body
                    else:
                        payload = f"hello {method} {path}".encode()
                    writer.write(
                        f"HTTP/1.1 200 OK\r\nContent-Length: {len(payload)}\r\nX-Origin: yes\r\n"
                        "Connection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n".encode()
                    )
                    if method != "HEAD":
                        writer.write(payload)
                await writer.drain()
                if fields.get("connection", "").lower() == "close":
                    return
        except ConnectionError:
            pass
        finally:
            writer.close()


async def echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


class UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.transport.sendto(b"echo:" + data, addr)


class UdpCollector(asyncio.DatagramProtocol):
    def __init__(self, queue: asyncio.Queue[bytes]) -> None:
        self.queue = queue

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.queue.put_nowait(data)


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    server = Origin()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(echo_handler, LOOP, 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


TEST_NAMES = {
    "allowed.test",
    "rebind.test",
    "other.test",
    "a.example.test",
    "example.test",
    "bad.example.test",
    "once.test",
    "session.test",
    "deny.test",
    "slow.test",
    "xn--bcher-kva.example",
}


async def fake_resolver(host: str) -> list[str]:
    """Every test name is on loopback; "mixed.test" hides loopback behind a public
    address; "hang.test" never answers; anything else does not exist."""
    if host in TEST_NAMES:
        return ["127.0.0.1"]
    if host == "mixed.test":
        return ["93.184.216.34", "127.0.0.1"]
    if host == "hang.test":
        await asyncio.sleep(3600)
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


Recorded = list[tuple[Decision, str | None]]


@contextlib.asynccontextmanager
async def running(
    policy: NetworkPolicy, **kwargs: Any
) -> AsyncIterator[tuple[ManagedProxy, Recorded]]:
    decisions: Recorded = []
    kwargs.setdefault("resolver", fake_resolver)
    proxy = ManagedProxy(policy, lambda d, t: decisions.append((d, t)), **kwargs)
    await proxy.start()
    try:
        yield proxy, decisions
    finally:
        await proxy.close()


# --- clients ---------------------------------------------------------------------------


def urllib_fetch(
    proxy_port: int, url: str, *, method: str = "GET", data: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    handler = urllib.request.ProxyHandler({"http": f"http://{LOOP}:{proxy_port}"})
    opener = urllib.request.build_opener(handler)
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with opener.open(request, timeout=10) as response:
            return (
                response.status,
                {k.lower(): v for k, v in response.headers.items()},
                response.read(),
            )
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


async def fetch(
    proxy_port: int, url: str, *, method: str = "GET", data: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(urllib_fetch, proxy_port, url, method=method, data=data)


async def curl(*args: str) -> tuple[int, bytes, bytes]:
    assert CURL is not None
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent"}
    process = await asyncio.create_subprocess_exec(
        CURL,
        "-sS",
        "--max-time",
        "10",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out, err


async def raw(port: int, payload: bytes, *, timeout: float = 10.0) -> bytes:
    """Send ``payload`` and read until the proxy closes the connection."""
    reader, writer = await asyncio.open_connection(LOOP, port)
    try:
        writer.write(payload)
        await writer.drain()
        async with asyncio.timeout(timeout):
            return await reader.read(-1)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
    return status, headers, body


def decision_from_body(body: bytes) -> dict[str, Any]:
    first = body.decode().splitlines()[0]
    prefix, _, payload = first.partition(" ")
    assert prefix == "CODEX_NETWORK_POLICY_DECISION"
    decoded: dict[str, Any] = json.loads(payload)
    assert list(decoded) == ["decision", "reason", "source", "protocol", "host", "port"]
    return decoded


async def socks_open(
    port: int,
    host: str | bytes,
    dst_port: int,
    *,
    user: str | None = None,
    command: int = 1,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int, bytes]:
    """SOCKS5 handshake; returns the reply code and the bound address bytes."""
    reader, writer = await asyncio.open_connection(LOOP, port)
    if user is None:
        writer.write(b"\x05\x01\x00")
        assert await reader.readexactly(2) == b"\x05\x00"
    else:
        writer.write(b"\x05\x01\x02")
        assert await reader.readexactly(2) == b"\x05\x02"
        name = user.encode()
        writer.write(bytes([1, len(name)]) + name + b"\x00")
        assert await reader.readexactly(2) == b"\x01\x00"
    if isinstance(host, str):
        try:
            address = bytes([1]) + socket.inet_aton(host)
        except OSError:
            name = host.encode()
            address = bytes([3, len(name)]) + name
    else:
        address = bytes([3, len(host)]) + host
    writer.write(bytes([5, command, 0]) + address + struct.pack("!H", dst_port))
    version, code, _, atyp = await reader.readexactly(4)
    assert version == 5
    bound = await reader.readexactly({1: 4, 4: 16}[atyp] + 2)
    return reader, writer, code, bound


# --- allowed traffic ----------------------------------------------------------------------


async def test_plain_http_forwarding(origin: Origin) -> None:
    async with running(NetworkPolicy(["allowed.test"], allow_local=True)) as (proxy, decisions):
        status, headers, body = await fetch(
            proxy.http_port, f"http://allowed.test:{origin.port}/hi?x=1"
        )
    assert (status, body) == (200, b"hello GET /hi?x=1")
    assert headers["x-origin"] == "yes"
    assert "keep-alive" not in headers  # hop-by-hop fields of the origin are dropped
    request_line, fields, _ = origin.seen[0]
    assert request_line == "GET /hi?x=1 HTTP/1.1"  # absolute-form rewritten to origin-form
    assert ("Host", f"allowed.test:{origin.port}") in fields
    [(decision, token)] = decisions
    assert (decision.decision, decision.protocol, decision.method, token) == (
        "allow",
        "http",
        "GET",
        None,
    )


async def test_forwarding_strips_proxy_and_hop_by_hop_fields(origin: Origin) -> None:
    token = base64.b64encode(b"agent-7:").decode()
    request = (
        f"GET http://allowed.test:{origin.port}/h HTTP/1.1\r\n"
        f"Host: allowed.test:{origin.port}\r\n"
        f"Proxy-Authorization: Basic {token}\r\n"
        "Proxy-Connection: keep-alive\r\n"
        "Connection: close, X-Hop\r\n"
        "X-Hop: secret\r\nTE: trailers\r\nUpgrade: websocket\r\nX-Kept: 1\r\n\r\n"
    ).encode()
    async with running(NetworkPolicy(["allowed.test"], allow_local=True)) as (proxy, decisions):
        status, headers, body = parse_response(await raw(proxy.http_port, request))
    assert (status, body) == (200, b"hello GET /h")
    assert headers["connection"] == "close"
    names = {k.lower() for k, _ in origin.seen[0][1]}
    assert "x-kept" in names
    assert not names & {"proxy-authorization", "proxy-connection", "x-hop", "te", "upgrade"}
    assert decisions[0][1] == "agent-7"  # the attribution token reaches the callback


async def test_keep_alive_post_chunked_and_head(origin: Origin) -> None:
    base = f"http://allowed.test:{origin.port}"

    def session(port: int) -> list[tuple[int, bytes]]:
        conn = http.client.HTTPConnection(LOOP, port, timeout=10)
        results = []
        conn.request("GET", f"{base}/one")
        response = conn.getresponse()
        results.append((response.status, response.read()))
        conn.request("POST", f"{base}/post", body=b"payload-1")
        response = conn.getresponse()
        results.append((response.status, response.read()))
        conn.request(
            "POST", f"{base}/post", body=iter([b"chunk-a,", b"chunk-b"]), encode_chunked=True
        )
        response = conn.getresponse()
        results.append((response.status, response.read()))
        conn.request("HEAD", f"{base}/head")
        response = conn.getresponse()
        results.append((response.status, response.read()))
        conn.request("GET", f"{base}/chunked")
        response = conn.getresponse()
        results.append((response.status, response.read()))
        conn.close()
        return results

    async with running(NetworkPolicy(["allowed.test"], allow_local=True)) as (proxy, decisions):
        results = await asyncio.to_thread(session, proxy.http_port)
    assert results == [
        (200, b"hello GET /one"),
        (200, b"payload-1"),
        (200, b"chunk-a,chunk-b"),
        (200, b""),
        (200, b"hello, chunk"),
    ]
    assert [d.method for d, _ in decisions] == ["GET", "POST", "POST", "HEAD", "GET"]


async def test_connect_tunnel_with_http_client(origin: Origin) -> None:
    def tunnelled(port: int) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(LOOP, port, timeout=10)
        conn.set_tunnel("allowed.test", origin.port)
        conn.request("GET", "/via-tunnel")
        response = conn.getresponse()
        result = (response.status, response.read())
        conn.close()
        return result

    async with running(NetworkPolicy(["allowed.test"], allow_local=True)) as (proxy, decisions):
        assert await asyncio.to_thread(tunnelled, proxy.http_port) == (
            200,
            b"hello GET /via-tunnel",
        )
    [(decision, _)] = decisions
    assert (decision.protocol, decision.method, decision.port) == (
        "https_connect",
        "CONNECT",
        origin.port,
    )


async def test_tunnel_integrity_and_half_close(origin: Origin, echo_port: int) -> None:
    size = 8 << 20
    async with running(NetworkPolicy(["allowed.test"], allow_local=True)) as (proxy, _):
        reader, writer = await asyncio.open_connection(LOOP, proxy.http_port)
        writer.write(f"CONNECT allowed.test:{origin.port} HTTP/1.1\r\n\r\n".encode())
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        writer.write(f"GET /big/{size} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = await reader.read(-1)
        writer.close()
        _, _, body = parse_response(data)
        assert hashlib.sha256(body).digest() == hashlib.sha256(pattern_bytes(size)).digest()

        # Half-close: the client stops sending; the echo still comes back in full.
        reader, writer = await asyncio.open_connection(LOOP, proxy.http_port)
        writer.write(f"CONNECT allowed.test:{echo_port} HTTP/1.1\r\n\r\n".encode())
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"x" * 300_000)
        writer.write_eof()
        assert await reader.read(-1) == b"x" * 300_000
        writer.close()

        # Plain forwarding of a large body is framed and complete too.
        status, _, body = await fetch(
            proxy.http_port, f"http://allowed.test:{origin.port}/big/{size}"
        )
        assert status == 200 and body == pattern_bytes(size)


@needs_curl
async def test_curl_http_connect_and_socks5(origin: Origin) -> None:
    url = f"http://allowed.test:{origin.port}/curl"
    async with running(NetworkPolicy(["allowed.test"], allow_local=True)) as (proxy, decisions):
        http_proxy = f"http://{LOOP}:{proxy.http_port}"
        for args in (
            ["-x", http_proxy, "-U", "tok-http:"],
            ["-p", "-x", http_proxy, "-U", "tok-connect:"],
            ["--socks5-hostname", f"{LOOP}:{proxy.socks_port}", "-U", "tok-socks:"],
        ):
            code, out, err = await curl(*args, url)
            assert (code, out) == (0, b"hello GET /curl"), err
    assert [(d.protocol, t) for d, t in decisions] == [
        ("http", "tok-http"),
        ("https_connect", "tok-connect"),
        ("socks5_tcp", "tok-socks"),
    ]


async def test_socks5_connect_and_attribution(echo_port: int) -> None:
    async with running(NetworkPolicy(["allowed.test"], allow_local=True)) as (proxy, decisions):
        assert proxy.socks_port is not None
        reader, writer, code, _ = await socks_open(
            proxy.socks_port, "allowed.test", echo_port, user="t-9"
        )
        assert code == 0
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        writer.close()
    assert decisions[0][0].protocol == "socks5_tcp" and decisions[0][1] == "t-9"


# --- blocked traffic ------------------------------------------------------------------------


async def test_denied_http_and_connect_answer_403_with_decision_line(origin: Origin) -> None:
    policy = NetworkPolicy(["allowed.test"], ["other.test"], allow_local=True)
    async with running(policy) as (proxy, decisions):
        status, headers, body = await fetch(proxy.http_port, f"http://other.test:{origin.port}/")
        assert status == 403
        assert headers["x-proxy-error"] == "blocked-by-denylist"
        assert headers["content-type"].startswith("text/plain")
        assert decision_from_body(body) == {
            "decision": "deny",
            "reason": "denied",
            "source": "baseline_policy",
            "protocol": "http",
            "host": "other.test",
            "port": origin.port,
        }
        assert (
            body.decode().splitlines()[1] == "Codex blocked this request: domain denied by policy."
        )

        data = await raw(proxy.http_port, b"CONNECT unlisted.test:443 HTTP/1.1\r\n\r\n")
        status, headers, body = parse_response(data)
        assert status == 403 and headers["x-proxy-error"] == "blocked-by-allowlist"
        line = decision_from_body(body)
        assert (line["reason"], line["protocol"], line["port"]) == (
            "not_allowed",
            "https_connect",
            443,
        )
    assert [d.decision for d, _ in decisions] == ["deny", "deny"]
    assert not origin.seen


async def test_denied_socks5_replies_not_allowed() -> None:
    async with running(NetworkPolicy(["allowed.test"], ["other.test"], allow_local=True)) as (
        proxy,
        _,
    ):
        assert proxy.socks_port is not None
        for host in ("other.test", "unlisted.test"):
            reader, writer, code, _ = await socks_open(proxy.socks_port, host, 80)
            assert code == 0x02
            assert await reader.read(-1) == b""
            writer.close()


async def test_wildcards_and_deny_wins(origin: Origin) -> None:
    policy = NetworkPolicy(["*.example.test"], ["bad.example.test"], allow_local=True)
    async with running(policy) as (proxy, _):
        results = {}
        for host in ("a.example.test", "example.test", "bad.example.test"):
            status, headers, _ = await fetch(proxy.http_port, f"http://{host}:{origin.port}/")
            results[host] = (status, headers.get("x-proxy-error"))
    assert results == {
        "a.example.test": (200, None),
        "example.test": (403, "blocked-by-allowlist"),
        "bad.example.test": (403, "blocked-by-denylist"),
    }


async def test_loopback_blocked_unless_allow_local(origin: Origin, echo_port: int) -> None:
    url = f"http://127.0.0.1:{origin.port}/"
    async with running(NetworkPolicy(["*"])) as (proxy, _):
        status, _, body = await fetch(proxy.http_port, url)
        assert status == 403 and decision_from_body(body)["reason"] == "not_allowed_local"
        assert "local/private" in body.decode()
        status, _, body = parse_response(
            await raw(proxy.http_port, b"CONNECT 127.0.0.1:22 HTTP/1.1\r\n\r\n")
        )
        assert status == 403
        assert proxy.socks_port is not None
        _, writer, code, _ = await socks_open(proxy.socks_port, "127.0.0.1", echo_port)
        assert code == 0x02
        writer.close()
        status, _, body = await fetch(proxy.http_port, f"http://localhost:{origin.port}/")
        assert status == 403 and decision_from_body(body)["host"] == "localhost"
    assert not origin.seen
    async with running(NetworkPolicy(["*"], allow_local=True)) as (proxy, _):
        assert (await fetch(proxy.http_port, url))[0] == 200


async def test_dns_rebinding_to_loopback_is_blocked(origin: Origin) -> None:
    policy = NetworkPolicy(["rebind.test", "mixed.test"])
    async with running(policy) as (proxy, decisions):
        for host in ("rebind.test", "mixed.test"):
            status, headers, body = await fetch(proxy.http_port, f"http://{host}:{origin.port}/")
            assert status == 403, host
            assert headers["x-proxy-error"] == "blocked-by-allowlist"
            assert decision_from_body(body)["reason"] == "not_allowed_local"
    assert not origin.seen
    assert [(d.host, d.reason) for d, _ in decisions] == [
        ("rebind.test", "not_allowed_local"),
        ("mixed.test", "not_allowed_local"),
    ]


async def test_system_resolver_and_explicit_localhost(origin: Origin) -> None:
    # `localhost` named exactly in the allowlist is the explicit exemption (§5.2); the
    # real resolver runs (it may list ::1 first, where nothing listens: next address).
    async with running(NetworkPolicy(["localhost"]), resolver=None) as (proxy, _):
        status, _, body = await fetch(proxy.http_port, f"http://localhost:{origin.port}/sys")
    assert (status, body) == (200, b"hello GET /sys")


async def test_limited_mode(origin: Origin) -> None:
    policy = NetworkPolicy(["allowed.test"], mode="limited", allow_local=True)
    url = f"http://allowed.test:{origin.port}/l"
    async with running(policy) as (proxy, _):
        assert (await fetch(proxy.http_port, url))[0] == 200
        assert (await fetch(proxy.http_port, url, method="HEAD"))[0] == 200
        status, headers, body = await fetch(proxy.http_port, url, method="POST", data=b"x")
        assert status == 403 and headers["x-proxy-error"] == "blocked-by-method-policy"
        line = decision_from_body(body)
        assert (line["reason"], line["source"]) == ("method_not_allowed", "mode_guard")
        connect = f"CONNECT allowed.test:{origin.port} HTTP/1.1\r\n\r\n".encode()
        status, headers, _ = parse_response(await raw(proxy.http_port, connect))
        assert status == 403 and headers["x-proxy-error"] == "blocked-by-method-policy"
    assert [line for line, _, _ in origin.seen] == ["GET /l HTTP/1.1", "HEAD /l HTTP/1.1"]


async def test_ask_flow(origin: Origin) -> None:
    asked: list[tuple[str, str | None]] = []
    answers = {"once.test": "allow_once", "session.test": "allow_session", "deny.test": "deny"}

    async def decider(decision: Decision, token: str | None) -> str:
        asked.append((decision.host, token))
        assert decision.decision == "ask" and decision.reason == "not_allowed"
        if decision.host == "slow.test":
            await asyncio.sleep(3600)
        return answers[decision.host]

    policy = NetworkPolicy(["allowed.test"], ask_unknown=True, allow_local=True)
    async with running(policy, decider=decider, ask_timeout=0.3) as (proxy, decisions):

        async def status_of(host: str) -> tuple[int, dict[str, Any] | None]:
            status, _, body = await fetch(proxy.http_port, f"http://{host}:{origin.port}/")
            return status, decision_from_body(body) if status == 403 else None

        assert (await status_of("allowed.test"))[0] == 200
        for _ in range(2):
            assert (await status_of("once.test"))[0] == 200
            assert (await status_of("session.test"))[0] == 200
        status, line = await status_of("deny.test")
        assert status == 403 and line is not None
        assert (line["decision"], line["source"]) == ("deny", "decider")
        started = time.monotonic()
        status, line = await status_of("slow.test")
        assert status == 403 and line is not None and line["reason"] == "not_allowed"
        assert time.monotonic() - started < 3
        assert proxy.session_hosts == {"session.test"}
    assert [host for host, _ in asked] == [
        "once.test",
        "session.test",
        "once.test",
        "deny.test",
        "slow.test",
    ]
    sources = [(d.host, d.decision, d.source) for d, _ in decisions]
    assert ("session.test", "allow", "decider") in sources
    assert sources[-1] == ("slow.test", "deny", "decider")


async def test_ask_without_decider_reports_ask(origin: Origin) -> None:
    async with running(NetworkPolicy([], ask_unknown=True, allow_local=True)) as (proxy, decisions):
        status, headers, body = await fetch(proxy.http_port, f"http://other.test:{origin.port}/")
    assert status == 403 and headers["x-proxy-error"] == "blocked-by-allowlist"
    assert decision_from_body(body)["decision"] == "ask"
    assert decisions[0][0].decision == "ask"


async def test_socks5_udp_refused_unless_allowed() -> None:
    async with running(NetworkPolicy(["allowed.test"], allow_local=True)) as (proxy, decisions):
        assert proxy.socks_port is not None
        reader, writer, code, _ = await socks_open(proxy.socks_port, "0.0.0.0", 0, command=3)
        assert code == 0x02
        assert await reader.read(-1) == b""
        writer.close()
    [(decision, _)] = decisions
    assert (decision.protocol, decision.decision, decision.source) == (
        "socks5_udp",
        "deny",
        "proxy_state",
    )


async def test_socks5_udp_relay_when_allowed() -> None:
    loop = asyncio.get_running_loop()
    echo_transport, _ = await loop.create_datagram_endpoint(UdpEcho, local_addr=(LOOP, 0))
    echo_port = echo_transport.get_extra_info("sockname")[1]
    received: asyncio.Queue[bytes] = asyncio.Queue()
    client, _ = await loop.create_datagram_endpoint(
        lambda: UdpCollector(received), local_addr=(LOOP, 0)
    )
    policy = NetworkPolicy(["allowed.test"], ["other.test"], allow_udp=True, allow_local=True)
    try:
        async with running(policy) as (proxy, decisions):
            assert proxy.socks_port is not None
            _, writer, code, bound = await socks_open(proxy.socks_port, "0.0.0.0", 0, command=3)
            assert code == 0
            relay = (socket.inet_ntoa(bound[:4]), struct.unpack("!H", bound[4:])[0])
            name = b"allowed.test"
            header = b"\0\0\0\x03" + bytes([len(name)]) + name + struct.pack("!H", echo_port)
            client.sendto(header + b"hello", relay)
            async with asyncio.timeout(5):
                reply = await received.get()
            assert (
                reply
                == b"\0\0\0\x01"
                + socket.inet_aton(LOOP)
                + struct.pack("!H", echo_port)
                + b"echo:hello"
            )
            denied = b"\0\0\0\x03\x0aother.test" + struct.pack("!H", echo_port)
            client.sendto(denied + b"nope", relay)
            client.sendto(header + b"again", relay)
            async with asyncio.timeout(5):
                assert (await received.get()).endswith(b"echo:again")
            assert received.empty()
            writer.close()
        assert [(d.host, d.decision) for d, _ in decisions] == [
            ("allowed.test", "allow"),
            ("other.test", "deny"),
        ]
    finally:
        client.close()
        echo_transport.close()


# --- bad input ----------------------------------------------------------------------------


async def test_garbage_and_malformed_requests(origin: Origin) -> None:
    async with running(NetworkPolicy(["allowed.test"], allow_local=True)) as (proxy, _):
        for payload in (
            b"\x16\x03\x01\x02\x00garbage\r\n\r\n",
            b"hello there\r\n\r\n",
            b"GET /not-absolute HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET http://allowed.test:0/ HTTP/1.1\r\n\r\n",
            b"GET http://allowed.test:70000/ HTTP/1.1\r\n\r\n",
            b"CONNECT allowed.test:0 HTTP/1.1\r\n\r\n",
            b"CONNECT allowed.test:70000 HTTP/1.1\r\n\r\n",
            b"CONNECT allowed.test HTTP/1.1\r\n\r\n",
            b"GET http://allowed.test/ HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ):
            data = await raw(proxy.http_port, payload)
            assert parse_response(data)[0] == 400, payload
        # ... and it still serves normal requests.
        assert (await fetch(proxy.http_port, f"http://allowed.test:{origin.port}/"))[0] == 200


async def test_oversized_header_is_refused() -> None:
    async with running(NetworkPolicy(["allowed.test"], allow_local=True)) as (proxy, _):
        payload = (
            b"GET http://allowed.test/ HTTP/1.1\r\nX-Big: " + b"a" * (100 * 1024) + b"\r\n\r\n"
        )
        data = await raw(proxy.http_port, payload)
        assert parse_response(data)[0] in (431, 400)
        many = b"GET http://allowed.test/ HTTP/1.1\r\n" + b"X: y\r\n" * 1000 + b"\r\n"
        assert parse_response(await raw(proxy.http_port, many))[0] in (431, 400)


async def test_slowloris_is_cut_and_others_are_served(origin: Origin) -> None:
    limits = Limits(header_timeout=1.5)
    async with running(NetworkPolicy(["allowed.test"], allow_local=True), limits=limits) as (
        proxy,
        _,
    ):
        reader, writer = await asyncio.open_connection(LOOP, proxy.http_port)
        started = time.monotonic()

        async def drip() -> None:
            with contextlib.suppress(ConnectionError):
                for byte in b"GET http://allowed.test/ HTTP/1.1\r\nX-Slow: 1":
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(1.0)

        dripping = asyncio.create_task(drip())
        await asyncio.sleep(0.3)
        status, _, body = await fetch(proxy.http_port, f"http://allowed.test:{origin.port}/fast")
        assert (status, body) == (200, b"hello GET /fast")
        async with asyncio.timeout(5):
            data = await reader.read(-1)
        elapsed = time.monotonic() - started
        dripping.cancel()
        writer.close()
        assert data.startswith(b"HTTP/1.1 408")
        assert 1.4 < elapsed < 4.0


async def test_socks5_bad_input(echo_port: int) -> None:
    async with running(NetworkPolicy(["allowed.test"], allow_local=True)) as (proxy, _):
        port = proxy.socks_port
        assert port is not None
        # SOCKS4 (or any other version byte): closed without a reply.
        assert await raw(port, b"\x04\x01\x00\x50\x7f\x00\x00\x01user\x00") == b""
        assert await raw(port, b"\x04") == b""
        # No acceptable authentication method.
        assert await raw(port, b"\x05\x01\x03") == b"\x05\xff"
        # Unknown address type, BIND, port 0, an invalid name.
        assert (await raw(port, b"\x05\x01\x00\x05\x01\x00\x09"))[2:4] == b"\x05\x08"
        bind = b"\x05\x01\x00\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50"
        assert (await raw(port, bind))[2:4] == b"\x05\x07"
        _, writer, code, _ = await socks_open(port, "allowed.test", 0)
        assert code == 0x02
        writer.close()
        _, writer, code, _ = await socks_open(port, b"bad host!", 80)
        assert code == 0x04
        writer.close()
        # Unresolvable and refused destinations.
        _, writer, code, _ = await socks_open(port, "nxdomain.test", 80)
        writer.close()
        assert code == 0x02  # not in the allowlist: the policy answers before DNS
        # still serving
        reader, writer, code, _ = await socks_open(port, "allowed.test", echo_port)
        assert code == 0
        writer.write(b"ok")
        assert await reader.readexactly(2) == b"ok"
        writer.close()


async def test_upstream_failures_map_to_502_504_and_socks_codes() -> None:
    closed = socket.socket()
    closed.bind((LOOP, 0))
    dead_port = closed.getsockname()[1]
    closed.close()  # nothing listens here now
    policy = NetworkPolicy(["allowed.test", "nxdomain.test", "hang.test"], allow_local=True)
    async with running(policy, limits=Limits(dns_timeout=0.3)) as (proxy, decisions):
        assert (await fetch(proxy.http_port, "http://nxdomain.test/"))[0] == 502
        assert (await fetch(proxy.http_port, "http://hang.test/"))[0] == 504
        assert (await fetch(proxy.http_port, f"http://allowed.test:{dead_port}/"))[0] == 502
        data = await raw(
            proxy.http_port, f"CONNECT allowed.test:{dead_port} HTTP/1.1\r\n\r\n".encode()
        )
        assert parse_response(data)[0] == 502
        assert proxy.socks_port is not None
        for host, port, expected in (
            ("nxdomain.test", 80, 0x04),
            ("hang.test", 80, 0x04),
            ("allowed.test", dead_port, 0x05),
        ):
            _, writer, code, _ = await socks_open(proxy.socks_port, host, port)
            writer.close()
            assert code == expected, host
    # Unresolvable names produce no decision; refused connections were allowed ones.
    assert {d.host for d, _ in decisions} == {"allowed.test"}


async def test_ipv6_literals(origin: Origin) -> None:
    async with running(NetworkPolicy(["*"])) as (proxy, _):
        status, _, body = await fetch(proxy.http_port, "http://[::1]:8080/")
        assert status == 403
        line = decision_from_body(body)
        assert (line["host"], line["reason"], line["port"]) == ("::1", "not_allowed_local", 8080)
        status, _, body = parse_response(
            await raw(proxy.http_port, b"CONNECT [::1]:443 HTTP/1.1\r\n\r\n")
        )
        assert status == 403 and decision_from_body(body)["host"] == "::1"
        mapped = b"GET http://[::ffff:127.0.0.1]:80/ HTTP/1.1\r\n\r\n"
        status, _, body = parse_response(await raw(proxy.http_port, mapped))
        assert status == 403 and decision_from_body(body)["reason"] == "not_allowed_local"
        unbracketed = b"GET http://::1:80/ HTTP/1.1\r\n\r\n"
        assert parse_response(await raw(proxy.http_port, unbracketed))[0] == 400
    async with running(NetworkPolicy(["::1"], allow_local=True)) as (proxy, _):
        # Allowed now; the origin listens on 127.0.0.1 only, so ::1 cannot connect.
        status, _, _ = await fetch(proxy.http_port, f"http://[::1]:{origin.port}/")
        assert status == 502


async def test_idn_hosts_are_normalised(origin: Origin) -> None:
    policy = NetworkPolicy(["xn--bcher-kva.example"], ["böse.example"], allow_local=True)
    async with running(policy) as (proxy, decisions):
        request = (
            f"GET http://BÜCHER.example:{origin.port}/idn HTTP/1.1\r\nConnection: close\r\n\r\n"
        )
        status, _, body = parse_response(await raw(proxy.http_port, request.encode()))
        assert (status, body) == (200, b"hello GET /idn")
        assert ("Host", f"xn--bcher-kva.example:{origin.port}") in origin.seen[0][1]
        status, _, body = parse_response(
            await raw(proxy.http_port, "GET http://böse.example/ HTTP/1.1\r\n\r\n".encode())
        )
        assert status == 403 and decision_from_body(body)["host"] == "xn--bse-sna.example"
        assert proxy.socks_port is not None
        _, writer, code, _ = await socks_open(
            proxy.socks_port, "bücher.example".encode(), origin.port
        )
        writer.close()
        assert code == 0
    idn, evil = "xn--bcher-kva.example", "xn--bse-sna.example"
    assert [d.host for d, _ in decisions] == [idn, evil, idn]


# --- load and limits --------------------------------------------------------------------------


async def test_200_concurrent_tunnels(echo_port: int) -> None:
    count = 200
    async with running(NetworkPolicy(["allowed.test"], allow_local=True)) as (proxy, decisions):

        async def open_tunnel() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            reader, writer = await asyncio.open_connection(LOOP, proxy.http_port)
            writer.write(f"CONNECT allowed.test:{echo_port} HTTP/1.1\r\n\r\n".encode())
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            return reader, writer

        async with asyncio.timeout(20):
            tunnels = await asyncio.gather(*(open_tunnel() for _ in range(count)))
            assert proxy.active_connections == count  # all held open at once

            async def exchange(index: int) -> bytes:
                reader, writer = tunnels[index]
                message = f"message {index:04d}".encode()
                writer.write(message)
                return await reader.readexactly(len(message))

            replies = await asyncio.gather(*(exchange(i) for i in range(count)))
        assert replies == [f"message {i:04d}".encode() for i in range(count)]
        for _, writer in tunnels:
            writer.close()
        assert len(decisions) == count


async def test_connection_limit_refuses_politely(origin: Origin) -> None:
    limits = Limits(max_connections=3)
    async with running(NetworkPolicy(["allowed.test"], allow_local=True), limits=limits) as (
        proxy,
        _,
    ):
        held = [await asyncio.open_connection(LOOP, proxy.http_port) for _ in range(3)]
        await asyncio.sleep(0.05)
        data = await raw(proxy.http_port, b"")
        assert parse_response(data)[0] == 503
        assert proxy.socks_port is not None
        assert await raw(proxy.socks_port, b"\x05\x01\x00") == b"\x05\xff"
        for _, writer in held:
            writer.close()
        for _ in range(50):
            if proxy.active_connections == 0:
                break
            await asyncio.sleep(0.02)
        assert (await fetch(proxy.http_port, f"http://allowed.test:{origin.port}/"))[0] == 200


async def test_idle_tunnels_are_cut(echo_port: int) -> None:
    limits = Limits(idle_timeout=0.5)
    async with running(NetworkPolicy(["allowed.test"], allow_local=True), limits=limits) as (
        proxy,
        _,
    ):
        reader, writer = await asyncio.open_connection(LOOP, proxy.http_port)
        writer.write(f"CONNECT allowed.test:{echo_port} HTTP/1.1\r\n\r\n".encode())
        await reader.readuntil(b"\r\n\r\n")
        started = time.monotonic()
        async with asyncio.timeout(5):
            assert await reader.read(-1) == b""
        assert time.monotonic() - started < 3
        writer.close()


async def test_close_cuts_pending_asks_and_faulty_callbacks_are_contained(origin: Origin) -> None:
    gate_open = asyncio.Event()

    async def decider(decision: Decision, token: str | None) -> str:
        gate_open.set()
        await asyncio.sleep(3600)
        return "deny"

    def explode(decision: Decision, token: str | None) -> None:
        raise RuntimeError("observer bug")

    proxy = ManagedProxy(
        NetworkPolicy(["allowed.test"], ask_unknown=True, allow_local=True),
        explode,
        decider,
        resolver=fake_resolver,
    )
    await proxy.start()
    status, _, _ = await fetch(proxy.http_port, f"http://allowed.test:{origin.port}/")
    assert status == 200  # the observer raised, the request went through
    pending = asyncio.create_task(raw(proxy.http_port, b"GET http://other.test/ HTTP/1.1\r\n\r\n"))
    await asyncio.wait_for(gate_open.wait(), 5)
    await proxy.close()
    assert await asyncio.wait_for(pending, 5) == b""


# --- environment for children ------------------------------------------------------------------


@needs_curl
async def test_child_environment_routes_curl_through_the_proxy(origin: Origin) -> None:
    async with running(NetworkPolicy(["allowed.test"], allow_local=True)) as (proxy, decisions):
        env = proxy_environment(proxy.http_port, proxy.socks_port, allow_local_binding=False)
        env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
        assert CURL is not None
        process = await asyncio.create_subprocess_exec(
            CURL,
            "-sS",
            "--max-time",
            "10",
            f"http://allowed.test:{origin.port}/env",
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        out, _ = await process.communicate()
    assert out == b"hello GET /env"
    assert decisions[0][0].protocol == "http"


async def test_policy_per_token_and_session_approvals_per_token(origin: Origin) -> None:
    policies = {
        "proc-a": NetworkPolicy(["allowed.test"], allow_local=True),
        "proc-b": NetworkPolicy(["other.test"], allow_local=True, ask_unknown=True),
    }
    asked: list[str | None] = []

    async def decider(decision: Decision, token: str | None) -> str:
        asked.append(token)
        return "allow_session"

    def policy_for(token: str | None) -> NetworkPolicy | None:
        if token == "broken":
            raise KeyError(token)
        return policies.get(token or "")

    def auth(token: str) -> str:
        return "Basic " + base64.b64encode(f"{token}:".encode()).decode()

    async def status(token: str | None, host: str) -> int:
        fields = f"Proxy-Authorization: {auth(token)}\r\n" if token else ""
        request = f"GET http://{host}:{origin.port}/ HTTP/1.1\r\n{fields}Connection: close\r\n\r\n"
        return parse_response(await raw(proxy.http_port, request.encode()))[0]

    default = NetworkPolicy(allow_local=True)  # nothing allowed for unknown tokens
    async with running(default, decider=decider, policy_for=policy_for) as (proxy, _):
        assert await status("proc-a", "allowed.test") == 200
        assert await status("proc-a", "other.test") == 403
        assert await status("proc-b", "other.test") == 200
        assert await status("proc-b", "allowed.test") == 200  # asked, allowed for session
        assert await status("proc-b", "allowed.test") == 200  # remembered: not asked again
        assert await status(None, "allowed.test") == 403
        assert await status("broken", "allowed.test") == 403  # failing lookup: deny
        assert proxy.socks_port is not None
        _, writer, code, _ = await socks_open(
            proxy.socks_port, "allowed.test", origin.port, user="proc-a"
        )
        writer.close()
        assert code == 0
    assert asked == ["proc-b"]


async def test_random_garbage_never_stops_the_proxy(origin: Origin) -> None:
    rng = random.Random(20240601)
    limits = Limits(header_timeout=1.0)
    async with running(NetworkPolicy(["allowed.test"], allow_local=True), limits=limits) as (
        proxy,
        _,
    ):
        assert proxy.socks_port is not None
        ports = (proxy.http_port, proxy.socks_port)

        async def garbage(index: int) -> bytes:
            data = rng.randbytes(rng.randint(0, 4000))
            if index % 2:
                data += b"\r\n\r\n"
            return await raw(ports[index % 2], data, timeout=10)

        async with asyncio.timeout(15):
            answers = await asyncio.gather(*(garbage(i) for i in range(80)))
        for answer in answers:
            assert (
                answer == b""
                or answer[:12] in (b"HTTP/1.1 400", b"HTTP/1.1 408", b"HTTP/1.1 431")
                or answer[0] == 5
            )
        # A silent SOCKS client is cut after the handshake timeout.
        started = time.monotonic()
        assert await raw(proxy.socks_port, b"", timeout=5) == b""
        assert 0.9 < time.monotonic() - started < 3
        assert (await fetch(proxy.http_port, f"http://allowed.test:{origin.port}/"))[0] == 200
