"""A real Codex 0.169.0 harness turn (`codex app-server`, scripted fake model) on an exec-server
URL environment — codexexec's, and Codex's own for comparison: it runs a command there, and it
reaches an MCP server configured on the executor through the executor."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.codex_harness import FunctionCall, UrlEnvironment, run_codex_turn
from tests.http_upstream import mcp_stub
from tests.servers import RunningServer, start_server

pytestmark = pytest.mark.asyncio(loop_scope="function")

COMMAND = "echo hello; echo parent=$PPID; exit 3"


async def test_harness_turn_runs_the_command_on_the_exec_server(server: RunningServer) -> None:
    result = await run_codex_turn(UrlEnvironment(server.url), COMMAND)

    assert result.turn_status == "completed", result.summary()
    command = result.command
    assert command.command == f"/bin/bash -lc '{COMMAND}'"
    # Run by the exec-server itself (the parent pid is the server's), not by the harness.
    assert command.aggregated_output == f"hello\nparent={server.process.pid}\n", result.summary()
    assert command.exit_code == 3
    assert "process/start" in result.methods_called(), result.summary()
    start = next(c for c in result.exec_server_calls if c.get("method") == "process/start")
    assert start["params"]["argv"] == ["/bin/bash", "-lc", COMMAND]
    assert start["params"]["metadata"]["toolCallId"] == "call_1"
    # The model got the output and the exit code back.
    returned = result.function_call_output()
    assert "hello" in returned and "3" in returned


async def test_exec_server_answers_every_call_the_harness_makes(server: RunningServer) -> None:
    result = await run_codex_turn(UrlEnvironment(server.url), "true")

    assert result.turn_status == "completed", result.summary()
    assert result.command.exit_code == 0
    unimplemented = [
        r for r in result.exec_server_replies if r.get("error", {}).get("code") == -32601
    ]
    assert unimplemented == [], result.summary()
    called = set(result.methods_called())
    assert {"initialize", "initialized", "environmentConfig/read", "process/start"} <= called


@pytest.mark.parametrize("kind", ["codexexec", "codex"])
async def test_harness_uses_an_mcp_server_configured_on_the_executor(
    kind: str, tmp_path: Path
) -> None:
    """The harness finds the MCP server in the executor's own config (environmentConfig/read)
    and talks to it from the executor's network position (streamed http/request)."""
    async with mcp_stub() as mcp:
        home = tmp_path / "executor-codex-home"
        home.mkdir()
        (home / "config.toml").write_text(f'[mcp_servers.stub]\nurl = "{mcp.url}"\n')
        with start_server(kind, env={"CODEX_HOME": str(home)}) as server:
            call = FunctionCall("ping", {}, namespace="mcp__stub")
            result = await run_codex_turn(UrlEnvironment(server.url), call)

    assert result.turn_status == "completed", result.summary()
    assert mcp.methods[:2] == ["initialize", "notifications/initialized"]
    assert {"tools/list", "tools/call"} <= set(mcp.methods), mcp.methods
    assert mcp.reply in result.function_call_output()
    (tool_call,) = result.items("mcpToolCall")
    assert tool_call["status"] == "completed", tool_call
    requests = [c["params"] for c in result.exec_server_calls if c.get("method") == "http/request"]
    assert requests and all(r["url"] == mcp.url for r in requests)
    assert any(r["streamResponse"] for r in requests)
