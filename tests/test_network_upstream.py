"""The managed proxy chained to an operator's HTTP proxy (`upstream_proxy`,
`--proxy-private-ips-via-upstream`): a real upstream CONNECT proxy on loopback records each
tunnel it is asked for, and carries it to a local origin."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from codexexec.network import NetworkPolicy
from codexexec.network.policy import PolicyFileError, parse_policy_file
from codexexec.network.upstream import UpstreamProxyError, parse_upstream, route
from tests.test_network_proxy import Origin, fetch, running

PUBLIC = "93.184.216.34"


def host_address() -> str | None:
    """This host's own non-loopback IPv4 address, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent
            address = str(probe.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") else address


class UpstreamProxy:
    """An HTTP proxy that answers CONNECT: records the target, then joins the client to
    ``origin_port`` on loopback (or refuses with ``refuse``)."""

    def __init__(self, origin_port: int, refuse: bytes | None = None) -> None:
        self.origin_port = origin_port
        self.refuse = refuse
        self.targets: list[str] = []
        self.authorizations: list[str | None] = []
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        lines = head.split("\r\n")
        method, target, _ = lines[0].split(" ")
        assert method == "CONNECT"
        self.targets.append(target)
        auth = [
            line.split(": ", 1)[1]
            for line in lines
            if line.lower().startswith("proxy-authorization:")
        ]
        self.authorizations.append(auth[0] if auth else None)
        if self.refuse is not None:
            writer.write(self.refuse)
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.origin_port)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(
            pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True
        )


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    served = Origin()
    await served.start()
    yield served
    await served.close()


async def resolver(host: str) -> list[str]:
    if host == "public.test":
        return [PUBLIC]
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


async def start_upstream(upstream: UpstreamProxy) -> asyncio.Server:
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    upstream.port = server.sockets[0].getsockname()[1]
    return server


async def test_public_destinations_go_through_the_upstream_as_connect_to_the_checked_ip(
    origin: Origin,
) -> None:
    upstream = UpstreamProxy(origin.port)
    server = await start_upstream(upstream)
    policy = NetworkPolicy(
        allowed_domains=["public.test"],
        upstream_proxy=parse_upstream(f"http://ops:s3cret@127.0.0.1:{upstream.port}"),
    )
    async with running(policy, resolver=resolver) as (proxy, decisions):
        status, _, body = await fetch(proxy.http_port, "http://public.test/hello")
    server.close()
    assert (status, body) == (200, b"hello GET /hello")
    assert upstream.targets == [f"{PUBLIC}:80"]  # the pinned address, never the name
    assert upstream.authorizations == ["Basic b3BzOnMzY3JldA=="]
    assert decisions[-1][0].decision == "allow"


@pytest.mark.parametrize("via_upstream", [False, True])
async def test_private_addresses_go_direct_unless_asked(via_upstream: bool) -> None:
    address = host_address()
    if address is None:
        pytest.skip("this host has no non-loopback address")
    private = Origin()
    private_server = await asyncio.start_server(private._handle, address, 0)
    port = private_server.sockets[0].getsockname()[1]
    loop_origin = Origin()
    await loop_origin.start()
    upstream = UpstreamProxy(loop_origin.port)
    server = await start_upstream(upstream)
    policy = NetworkPolicy(
        allowed_domains=[address, "127.0.0.1"],
        allow_local=True,
        upstream_proxy=parse_upstream(f"http://127.0.0.1:{upstream.port}"),
    )
    try:
        async with running(policy, private_via_upstream=via_upstream) as (proxy, _):
            status, _, _ = await fetch(proxy.http_port, f"http://{address}:{port}/p")
            loop_status, _, _ = await fetch(
                proxy.http_port, f"http://127.0.0.1:{loop_origin.port}/l"
            )
    finally:
        server.close()
        private_server.close()
        await loop_origin.close()
    assert status == 200 and loop_status == 200
    # Loopback always stays local; the private address only goes upstream when asked.
    assert upstream.targets == ([f"{address}:{port}"] if via_upstream else [])


async def test_an_upstream_refusal_is_a_clear_502(origin: Origin) -> None:
    upstream = UpstreamProxy(origin.port, refuse=b"HTTP/1.1 403 Forbidden\r\n\r\n")
    server = await start_upstream(upstream)
    policy = NetworkPolicy(
        allowed_domains=["public.test"],
        upstream_proxy=parse_upstream(f"http://127.0.0.1:{upstream.port}"),
    )
    async with running(policy, resolver=resolver) as (proxy, _):
        status, _, body = await fetch(proxy.http_port, "http://public.test/")
    server.close()
    assert status == 502
    assert b"403 Forbidden" in body


def test_routes() -> None:
    upstream = parse_upstream("http://proxy.corp:3128")
    assert route(PUBLIC, upstream, False) == "upstream"
    assert route("10.0.0.5", upstream, False) == "direct"
    assert route("10.0.0.5", upstream, True) == "upstream"
    assert route("127.0.0.1", upstream, True) == "direct"
    assert route("::1", upstream, True) == "direct"
    assert route(PUBLIC, None, True) == "direct"
    assert "s3cret" not in repr(parse_upstream("http://u:s3cret@proxy:1"))


def test_the_policy_file_takes_an_upstream_and_refuses_a_bad_one(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[network]\nupstream_proxy = "http://proxy.corp:3128"\n')
    assert str(parse_policy_file(good).upstream_proxy) == "http://proxy.corp:3128"
    bad = tmp_path / "bad.toml"
    bad.write_text('[network]\nmode = "full"\nupstream_proxy = "socks5://x:1"\n')
    with pytest.raises(PolicyFileError, match=r"bad\.toml:3: upstream_proxy must be http://"):
        parse_policy_file(bad)
    with pytest.raises(UpstreamProxyError):
        parse_upstream("http://proxy.corp")  # no port


def test_the_serve_flag_reads_its_variable_as_codex_does() -> None:
    import os
    import subprocess

    from tests.servers import codexexec_command

    done = subprocess.run(
        codexexec_command("serve", "--listen", "ws://127.0.0.1:0"),
        capture_output=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "CODEX_EXEC_SERVER_PROXY_PRIVATE_IPS_VIA_UPSTREAM": "yes"},
    )
    assert done.returncode == 2
    assert "invalid value 'yes' for '--proxy-private-ips-via-upstream'" in done.stderr.decode()
