"""The real Codex 0.169.0 harness (`codex app-server`, its model scripted by a fake Responses
endpoint) runs a turn's command on a codexexec executor that it reaches only through
`codexexec rendezvous`, over the end-to-end encrypted Noise relay."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.codex_harness import NoiseEnvironment, run_codex_turn
from tests.test_relay_e2e import TOKEN, Rendezvous, start_executor, stop


async def test_real_codex_harness_runs_a_turn_on_a_codexexec_executor_over_noise(
    tmp_path: Path,
) -> None:
    rendezvous = Rendezvous(tmp_path)
    executor: subprocess.Popen[bytes] | None = None
    try:
        executor = start_executor("serve", "--remote", rendezvous.url, "--environment-id", "devbox")
        result = await run_codex_turn(
            NoiseEnvironment(rendezvous.url, "devbox", TOKEN),
            "echo hello over noise; echo executor_parent=$PPID; exit 3",
        )
        command = result.command
        assert command.exit_code == 3, result.summary()
        assert command.aggregated_output is not None
        lines = command.aggregated_output.splitlines()
        assert lines[0] == "hello over noise", result.summary()
        # The command ran as a child of the codexexec executor, not of the app-server.
        assert lines[1] == f"executor_parent={executor.pid}", result.summary()
    finally:
        if executor is not None:
            stop(executor)
        rendezvous.kill()
