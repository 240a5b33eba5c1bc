"""The README's commands are the first thing a user runs: keep them working."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from tests.servers import codexexec_command

README = (Path(__file__).parent.parent / "README.md").read_text()


def _sh_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)\n```", README, re.S)


def test_quick_start_runs_the_main_job() -> None:
    first = _sh_blocks()[0]
    command = first.split(".venv/bin/codexexec ", 1)[1]
    result = subprocess.run(
        codexexec_command(*shlex.split(command)), capture_output=True, cwd="/tmp", timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[0].startswith("hello from codexexec on ")
    assert lines[1] == "the sandbox kept /etc read-only"
    assert not Path("/etc/codexexec-demo").exists()


def test_test_command_is_what_ci_runs() -> None:
    second = _sh_blocks()[1]
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert second.strip() in ci.splitlines()
