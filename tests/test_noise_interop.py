"""The real Codex 0.169.0 executor registers with codexexec's rendezvous and codexexec
runs commands on it through the end-to-end encrypted (Noise hybrid IK) relay."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from codexexec.remote.registry import RegistryError
from codexexec.transport.noise_harness import connect_noise_harness
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


def test_a_real_codex_executor_reads_several_messages_from_one_record(tmp_path: Path) -> None:
    """codexexec sends messages queued together in shared records (docs/relay-protocol.md
    §3.2); Codex 0.169.0's executor must take each of them."""
    rendezvous = Rendezvous(tmp_path)
    executor = start_codex_executor(rendezvous.url, "realcodex", TOKEN)
    try:
        answers = asyncio.run(_two_requests_in_one_record(rendezvous.url))
    finally:
        stop(executor)
        rendezvous.kill()
    assert [answer["id"] for answer in answers] == [1, 2]
    assert "error" not in answers[1], answers[1]


async def _two_requests_in_one_record(registry: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while True:  # until the executor has registered and connected
        try:
            transport = await connect_noise_harness(registry, "realcodex", TOKEN)
            break
        except RegistryError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)
    initialize = {"id": 1, "method": "initialize", "params": {"clientName": "batch"}}
    initialized = {"method": "initialized", "params": {}}
    read = {"id": 2, "method": "fs/getMetadata", "params": {"path": "file:///tmp"}}
    try:
        await transport.send_batch(
            [json.dumps(m).encode() for m in (initialize, initialized, read)]
        )
        answers = []
        async with asyncio.timeout(10):
            while len(answers) < 2:
                message = await transport.receive()
                assert message is not None, transport.close_reason
                answers.append(json.loads(message))
    finally:
        await transport.close()
    return answers
