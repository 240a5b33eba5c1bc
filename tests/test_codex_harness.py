"""A real Codex 0.169.0 harness turn (`codex app-server`, scripted fake model) runs its command
on an exec-server URL environment: codexexec's, and Codex's own for comparison."""

from __future__ import annotations

import json

import pytest

from tests.codex_harness import TurnResult, UrlEnvironment, run_codex_turn
from tests.servers import RunningServer

pytestmark = pytest.mark.asyncio(loop_scope="function")

COMMAND = "echo hello; echo parent=$PPID; exit 3"


def _function_call_output(result: TurnResult) -> str:
    for request in result.model_requests:
        for item in request.get("input", []):
            if isinstance(item, dict) and item.get("type") == "function_call_output":
                output = item.get("output")
                return output if isinstance(output, str) else json.dumps(output)
    raise AssertionError(f"the harness never answered the model's call: {result.summary()}")


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
    returned = _function_call_output(result)
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
