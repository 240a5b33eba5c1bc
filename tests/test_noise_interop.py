"""The real Codex 0.169.0 executor registers with codexexec's rendezvous and codexexec
runs commands on it through the end-to-end encrypted (Noise hybrid IK) relay."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from tests.servers import codex_binary, codexexec_command
from tests.test_relay_e2e import TOKEN, Rendezvous, stop


def test_codexexec_runs_commands_on_a_real_codex_executor(tmp_path: Path) -> None:
    rendezvous = Rendezvous(tmp_path)
    home = tempfile.mkdtemp(prefix="codex-home-", dir="/var/tmp")
    executor = subprocess.Popen(
        [
            codex_binary(),
            "exec-server",
            "--remote",
            rendezvous.url,
            "--environment-id",
            "realcodex",
            "--registration-bearer-stdin",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "CODEX_HOME": home},
    )
    assert executor.stdin is not None
    executor.stdin.write(TOKEN.encode() + b"\n")
    executor.stdin.close()
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
        subprocess.run(["rm", "-rf", home], check=False)
