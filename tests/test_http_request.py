"""http/request and environmentConfig/read beyond the shared wire suite: the client API,
managed-network routing, memory bounds, stream teardown, and the config layers."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import tomllib
from pathlib import Path

import pytest

from codexexec.client import ExecServerClient, ExecServerError, Header, HttpBodyStream
from codexexec.client.http import MAX_QUEUED_DELTAS
from codexexec.protocol import messages as m
from codexexec.protocol.jsonrpc import RpcError
from codexexec.server.environment_config import read_environment_config
from codexexec.server.http_exchange import MAX_BUFFERED_BODY_BYTES
from codexexec.server.http_request import MAX_ACTIVE_STREAMS
from tests.http_upstream import upstream
from tests.servers import RunningServer, start_server
from tests.tcp_proxy import TcpProxy
from tests.wire import Wire

pytestmark = pytest.mark.asyncio(loop_scope="function")


def _http(url: str, request_id: str = "r", **extra: object) -> dict[str, object]:
    return {"method": "GET", "url": url, "headers": [], "requestId": request_id, **extra}


async def _wire(url: str) -> Wire:
    wire = await Wire.open(url)
    await wire.initialize()
    return wire


# -- the client API, against both servers --------------------------------------------


async def test_client_http_request_and_stream(server: RunningServer) -> None:
    async with upstream() as up, await ExecServerClient.connect(server.url) as client:
        response = await client.http.request(
            "POST",
            up.url("/echo"),
            headers=[("X-One", "a"), Header("Authorization", "Bearer ", "CXTEST_PLAIN")],
            body=b"payload",
        )
        assert (response.status, response.body, response.header("X-Echo")) == (201, b"ok", "yes")
        seen = up.received[-1]
        assert seen.body == b"payload" and seen.header("authorization") == "Bearer plain"

        async with await client.http.stream(
            "GET", up.url("/chunked?parts=4&size=2&delay=0.05")
        ) as stream:
            assert stream.status == 200
            assert await stream.read() == b"aabbccdd"

        stream = await client.http.stream("GET", up.url("/truncated"))
        with pytest.raises(ExecServerError, match="error decoding response body"):
            await stream.read()

        with pytest.raises(ExecServerError, match="only supports http and https") as info:
            await client.http.request("GET", "ftp://example.com/")
        assert info.value.code == -32602


async def test_client_reads_environment_config(server: RunningServer) -> None:
    async with await ExecServerClient.connect(server.url) as client:
        config = await client.read_environment_config("/tmp", [["cxtest_no_such_key"]])
        assert config.config == [] and config.requirements == []
        assert config.codex_home_dir.startswith("file:///")
        with pytest.raises(ExecServerError, match="at least one key segment"):
            await client.read_environment_config("/tmp", [[]])


# -- codexexec: routing, bounds, teardown --------------------------------------------


async def test_managed_network_policy_governs_http_requests(tmp_path: Path) -> None:
    policy = tmp_path / "network.toml"
    policy.write_text(
        '[network]\nallow_local = true\n\n[network.domains]\n"127.0.0.1" = "allow"\n'
        '"localhost" = "deny"\n'
    )
    async with upstream() as up:
        with start_server("codexexec", extra_args=("--network-policy", str(policy))) as running:
            wire = await _wire(running.url)
            allowed = await wire.result("http/request", _http(up.url("/echo")))
            assert allowed["status"] == 201
            reached = len(up.received)
            for url in (
                up.url("/echo", host="localhost"),
                f"https://localhost:{up.port}/",
                # an allowed origin redirecting to a denied one: every hop is checked
                up.url(f"/to?status=302&location={up.url('/echo', host='localhost')}"),
            ):
                denied = await wire.request("http/request", _http(url))
                assert denied["error"] == {
                    "code": -32603,
                    "message": "http/request failed: blocked by the executor's network policy: "
                    "localhost (denied)",
                }, url
            assert len(up.received) == reached + 1  # only the redirecting hop got through
            await wire.close()


async def test_buffered_body_is_capped(codexexec_server: RunningServer) -> None:
    async with upstream() as up:
        wire = await _wire(codexexec_server.url)
        size = MAX_BUFFERED_BODY_BYTES + 1024 * 1024
        reply = await wire.request("http/request", _http(up.url(f"/big?size={size}")), timeout=60)
        assert reply["error"] == {
            "code": -32603,
            "message": "failed to read http/request response body: response body exceeds "
            f"{MAX_BUFFERED_BODY_BYTES} bytes; use streamResponse",
        }
        # The same body streams fine.
        await wire.result(
            "http/request", _http(up.url(f"/big?size={size}"), "s", streamResponse=True)
        )
        total = 0
        while True:
            delta = await wire.notification(lambda n: n["method"] == "http/request/bodyDelta", 30)
            total += len(base64.b64decode(delta["params"]["deltaBase64"]))
            if delta["params"]["done"]:
                break
        assert total == size
        await wire.close()


async def test_an_unread_stream_holds_the_upstream_back(codexexec_server: RunningServer) -> None:
    """A client that stops reading stops the download: memory stays bounded."""
    async with upstream() as up:
        wire = await _wire(codexexec_server.url)
        await wire.result("http/request", _http(up.url("/flood"), "f", streamResponse=True))
        await asyncio.sleep(2)  # not reading the websocket meanwhile
        stalled = up.flood_bytes
        await asyncio.sleep(1)
        assert up.flood_bytes - stalled < 4 * 1024 * 1024  # the upstream is held back
        assert stalled < 64 * 1024 * 1024  # outbox + socket buffers, not the whole stream
        wire.ws.transport.abort()  # a client that vanishes: the download stops too
        await asyncio.wait_for(up.disconnected.wait(), 10)


async def test_closing_the_connection_aborts_its_streams(codexexec_server: RunningServer) -> None:
    async with upstream() as up:
        wire = await _wire(codexexec_server.url)
        await wire.result("http/request", _http(up.url("/endless"), "e", streamResponse=True))
        await wire.notification(lambda n: n["method"] == "http/request/bodyDelta")
        await wire.close()
        await asyncio.wait_for(up.disconnected.wait(), 10)


async def test_a_client_stream_ends_with_an_error_when_its_connection_drops(
    codexexec_server: RunningServer,
) -> None:
    """The executor aborts a stream whose connection ended, so a reader waiting for the
    next chunk must be told, not left waiting forever."""
    proxy = TcpProxy(int(codexexec_server.url.rsplit(":", 1)[1]))
    try:
        async with upstream() as up, await ExecServerClient.connect(proxy.ws_url()) as client:
            stream = await client.http.stream("GET", up.url("/endless"))
            chunks = aiter(stream)
            assert await anext(chunks)
            proxy.cut()
            with pytest.raises(ExecServerError, match="ended with its connection"):
                async with asyncio.timeout(10):
                    async for _ in chunks:
                        pass
    finally:
        proxy.stop()


async def test_active_streams_per_connection_are_bounded(codexexec_server: RunningServer) -> None:
    async with upstream() as up:
        wire = await _wire(codexexec_server.url)
        for index in range(MAX_ACTIVE_STREAMS):
            params = _http(up.url("/endless"), f"s{index}", streamResponse=True)
            await wire.result("http/request", params, timeout=30)
        reply = await wire.request(
            "http/request", _http(up.url("/echo"), "one-more", streamResponse=True)
        )
        assert reply["error"] == {
            "code": -32602,
            "message": f"at most {MAX_ACTIVE_STREAMS} http/request streams may be active per "
            "connection",
        }
        buffered = await wire.result("http/request", _http(up.url("/echo")))
        assert buffered["status"] == 201  # buffered requests are not limited by streams
        await wire.close()


# -- environmentConfig/read: the layers ------------------------------------------------


def _project(tmp_path: Path) -> tuple[Path, Path]:
    home = tmp_path / "codex-home"
    project = tmp_path / "project"
    (project / "sub" / ".codex").mkdir(parents=True)
    (project / ".codex").mkdir()
    home.mkdir()
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    (project / ".codex" / "config.toml").write_text(
        'model = "x"\n[mcp_servers.proj]\nurl = "https://proj.example/mcp"\n'
    )
    (project / "sub" / ".codex" / "config.toml").write_text(
        '[mcp_servers.sub]\ncommand = "echo"\nargs = ["a", "b"]\nenv = { A = "1" }\n'
    )
    (home / "config.toml").write_text(
        'approval_policy = "never"\n'
        "[mcp_servers.user]\n"
        'url = "http://127.0.0.1:9/mcp"\n'
        'http_headers = { "X-Key" = "v\\u00e9" }\n'
        f'[projects."{project}"]\n'
        'trust_level = "trusted"\n'
    )
    return home, project


async def test_environment_config_layers_from_the_executor(tmp_path: Path) -> None:
    home, project = _project(tmp_path)
    with start_server("codexexec", env={"CODEX_HOME": str(home)}) as running:
        wire = await _wire(running.url)
        result = await wire.result(
            "environmentConfig/read",
            {
                "cwd": f"file://{project}/sub",
                "configPaths": [["mcp_servers"]],
                "requirementsPaths": [["mcp_servers"]],
            },
        )
        await wire.close()
    layers = result["config"]["layers"]
    assert [layer["source"] for layer in layers] == [
        f"user ({home}/config.toml)",
        f"project ({project}/.codex/config.toml)",
        f"project ({project}/sub/.codex/config.toml)",
    ]
    assert [layer["baseDir"] for layer in layers] == [
        f"file://{home}",
        f"file://{project}/.codex",
        f"file://{project}/sub/.codex",
    ]
    assert tomllib.loads(layers[0]["toml"]) == {
        "mcp_servers": {"user": {"url": "http://127.0.0.1:9/mcp", "http_headers": {"X-Key": "vé"}}}
    }
    assert layers[2]["toml"] == (
        '[mcp_servers.sub]\ncommand = "echo"\nargs = ["a", "b"]\n\n[mcp_servers.sub.env]\nA = "1"\n'
    )
    assert result["config"]["cloudInsertionIndex"] == 0
    assert result["codexHomeDir"] == f"file://{home}"


async def test_environment_config_untrusted_project_and_system_layers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, project = _project(tmp_path)
    (home / "config.toml").write_text('[mcp_servers.user]\nurl = "http://u/"\n')  # no trust
    system = tmp_path / "etc-codex"
    system.mkdir()
    (system / "config.toml").write_text("[sandbox_workspace_write]\nnetwork_access = false\n")
    (system / "requirements.toml").write_text(
        '[mcp_servers.user]\nidentity = { url = "http://u/" }\n'
    )
    params = m.EnvironmentConfigReadParams(
        f"file://{project}/sub",
        [["mcp_servers"], ["sandbox_workspace_write", "network_access", "deeper"]],
        [["mcp_servers"]],
    )
    monkeypatch.setenv("CODEX_HOME", str(home))
    result = read_environment_config(params, system_dir=str(system))
    sources = [layer["source"] for layer in result["config"]["layers"]]
    assert sources == [f"system ({system}/config.toml)", f"user ({home}/config.toml)"]
    # a path running into a scalar selects the scalar (as Codex does)
    assert (
        result["config"]["layers"][0]["toml"]
        == "[sandbox_workspace_write]\nnetwork_access = false\n"
    )
    assert result["config"]["cloudInsertionIndex"] == 1
    assert result["requirements"] == {
        "layers": [
            {
                "source": f"{system}/requirements.toml",
                "baseDir": f"file://{system}",
                "toml": '[mcp_servers.user.identity]\nurl = "http://u/"\n',
            }
        ],
        "cloudInsertionIndex": 1,
    }
    (home / "config.toml").write_text("not toml [")
    with pytest.raises(RpcError, match="failed to load executor-local config"):
        read_environment_config(params, system_dir=str(system))


async def test_client_stream_that_falls_behind_fails_instead_of_growing() -> None:
    released: list[str] = []
    stream = HttpBodyStream("http-x-1", released.append)
    for seq in range(1, MAX_QUEUED_DELTAS + 10):
        chunk = base64.b64encode(b"%d," % seq).decode()
        stream.deliver({"requestId": "http-x-1", "seq": seq, "deltaBase64": chunk, "done": False})
    received = []
    with pytest.raises(ExecServerError, match="fell more than 256 deltas behind"):
        async for chunk in stream:
            received.append(chunk)
    assert len(received) == MAX_QUEUED_DELTAS  # what was queued is still delivered
    assert released == ["http-x-1"]
