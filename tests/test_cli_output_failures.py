"""Local output that cannot be written (#18.7): stdout on `/dev/full`, a file in a missing
directory or under a file. Every subcommand ends with one line on stderr and a non-zero
exit, never a traceback."""

from __future__ import annotations

import shlex
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


def test_a_failed_copy_never_removes_what_it_was_writing_to(tmp_path: Path) -> None:
    """A copy that fails part-way into a device or a symlink leaves the node and the link
    where they were (fs get used to unlink its destination on failure: as root, /dev/full
    itself); a copy over a regular file replaces it whole, keeping its mode."""
    big = tmp_path / "big"
    big.write_bytes(b"x" * (4 << 20))  # more than any buffer: the write fails mid-copy
    link = tmp_path / "link"
    link.symlink_to("/dev/full")
    for target in ("/dev/full", str(link)):
        done = run("fs", "get", f"local:{big}", target, stdout=subprocess.DEVNULL)
        assert_one_line(done)
        assert f"`{target}`" in done.stderr.decode()
    assert Path("/dev/full").is_char_device() and link.is_symlink()
    kept = tmp_path / "kept"
    kept.write_bytes(b"old")
    kept.chmod(0o640)
    done = run("fs", "get", f"local:{big}", str(kept), stdout=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert kept.read_bytes() == big.read_bytes() and (kept.stat().st_mode & 0o777) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big", "kept", "link"]


def test_started_with_stdout_closed_the_exit_code_stands() -> None:
    """Descriptor 1 closed (`>&-`): Python has no sys.stdout at all; the command's own exit
    code comes back, without a traceback."""
    command = " ".join(
        shlex.quote(a) for a in codexexec_command("exec", "--sandbox", "danger-full-access")
    )
    done = subprocess.run(
        ["sh", "-c", f"{command} -- sh -c 'exit 3' >&-"],
        stderr=subprocess.PIPE,
        timeout=90,
        cwd="/tmp",
    )
    assert done.returncode == 3 and b"Traceback" not in done.stderr, done.stderr


def test_a_good_run_still_exits_zero(tmp_path: Path) -> None:
    done = run("fs", "get", "local:/etc/hostname", str(tmp_path / "copy"), stdout=subprocess.PIPE)
    assert (
        done.returncode == 0
        and (tmp_path / "copy").read_bytes() == Path("/etc/hostname").read_bytes()
    )
