"""Local output that cannot be written (#18.7): stdout on `/dev/full`, a file in a missing
directory or under a file. Every subcommand ends with one line on stderr and a non-zero
exit, never a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.servers import codexexec_command

SUBCOMMANDS = (
    "serve",
    "exec",
    "read",
    "sandbox-check",
    "rendezvous",
    "register",
    "env",
    "fs",
    "login",
)


def run(*args: str, stdout: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        codexexec_command(*args), stdout=stdout, stderr=subprocess.PIPE, timeout=90, cwd="/tmp"
    )


def assert_one_line(done: subprocess.CompletedProcess[bytes]) -> None:
    text = done.stderr.decode()
    assert done.returncode != 0, text
    assert "Traceback" not in text and "Exception ignored" not in text, text
    assert text.count("\n") == 1 and text.startswith("codexexec: error: "), text


@pytest.mark.parametrize(
    "args",
    [
        ("--help",),
        *((name, "--help") for name in SUBCOMMANDS),
        ("exec", "--", "echo", "hi"),
        ("exec", "--json", "--", "echo", "hi"),
        ("exec", "--sandbox", "danger-full-access", "--", "head", "-c", "1000000", "/dev/zero"),
        ("fs", "ls", "local:/tmp"),
        ("fs", "cat", "local:/etc/hostname"),
        ("fs", "get", "local:/etc/hostname", "-"),
        ("env", "list"),
        ("env", "list", "--json"),
        ("login", "status"),
        ("sandbox-check",),
    ],
    ids=lambda args: " ".join(args),
)
def test_stdout_on_a_full_disk(args: tuple[str, ...]) -> None:
    with open("/dev/full", "wb") as full:
        assert_one_line(run(*args, stdout=full))


@pytest.mark.parametrize("target", ["/nonexistent-dir/x", "/etc/hostname/sub", "/dev/full"])
def test_fs_get_into_a_place_that_cannot_be_written(target: str) -> None:
    assert_one_line(run("fs", "get", "local:/etc/hostname", target, stdout=subprocess.DEVNULL))


def test_a_good_run_still_exits_zero(tmp_path: Path) -> None:
    done = run("fs", "get", "local:/etc/hostname", str(tmp_path / "copy"), stdout=subprocess.PIPE)
    assert (
        done.returncode == 0
        and (tmp_path / "copy").read_bytes() == Path("/etc/hostname").read_bytes()
    )
