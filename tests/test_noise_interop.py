"""The real Codex 0.169.0 executor registers with codexexec's rendezvous and codexexec
runs commands on it through the end-to-end encrypted (Noise hybrid IK) relay."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tests.servers import codexexec_command, start_codex_executor
from tests.test_relay_e2e import TOKEN, Rendezvous, stop


def test_codexexec_runs_commands_on_a_real_codex_executor(tmp_path: Path) -> None:
    rendezvous = Rendezvous(tmp_path)
    executor = start_codex_executor(rendezvous.url, "realcodex", TOKEN)
    env = {**os.environ, "CODEXEXEC_REGISTRY_TOKEN": TOKEN}
    try:
        deadline = time.monotonic() + 30
        while True:  # until the executor has registered and connected
            result = subprocess.run(
                codexexec_command(
                    "exec",
                    "--registry",
                    rendezvous.url,
                    "--env",
                    "realcodex",
                    "--",
                    "sh",
                    "-c",
                    "echo through noise; exit 3",
                ),
                capture_output=True,
                env=env,
                timeout=30,
                cwd="/tmp",
            )
            if result.returncode == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert result.stdout == b"through noise\n", result.stderr
        assert result.returncode == 3
        big = subprocess.run(
            codexexec_command(
                "exec",
                "--registry",
                rendezvous.url,
                "--env",
                "realcodex",
                "--",
                "head",
                "-c",
                "1000000",
                "/dev/zero",
            ),
            capture_output=True,
            env=env,
            timeout=60,
            cwd="/tmp",
        )
        assert len(big.stdout) == 1_000_000  # many 60 KiB records, each its own ciphertext
    finally:
        stop(executor)
        rendezvous.kill()
