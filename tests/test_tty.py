"""`exec --tty` at a real terminal, sandboxed and not (#18): Ctrl-C reaches the command's
foreground job (a Python program catches it) instead of taking the sandbox down, an
interactive shell has job control, and the terminal's size follows this one's (start and
SIGWINCH, through the `process/resizePty` extension)."""

from __future__ import annotations

import base64
import fcntl
import os
import shutil
import struct
import subprocess
import termios
import time
import uuid
from pathlib import Path

import pytest

from tests.servers import RunningServer, codexexec_command
from tests.terminal import converse, finish, start_at_terminal

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")

SANDBOXES = ["workspace-write", "read-only", "danger-full-access"]


def _winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def at_a_terminal(
    args: list[str],
    actions: list[bytes | tuple[int, int]],
    *,
    after: bytes,
    size: tuple[int, int] = (30, 100),
    env: dict[str, str] | None = None,
) -> tuple[int, str]:
    """Run the CLI as the foreground of a new pseudo-terminal of ``size``; once ``after``
    shows, type each bytes action or resize to each (rows, cols) one; return (code, screen)."""
    process, master = start_at_terminal(
        codexexec_command(*args), controlling=True, size=size, env=env
    )

    def react(screen: bytes) -> bool:
        if after not in screen:
            return False
        for action in actions:
            if isinstance(action, tuple):
                _winsize(master, *action)
            else:
                os.write(master, action)
            time.sleep(0.2)
        return True

    screen = converse(process, master, react, 30).decode(errors="replace").replace("\r", "")
    code = finish(process, master, 10)
    return code, screen


PYTHON_CATCHES = (
    "import time\n"
    "print('ready', flush=True)\n"
    "try:\n"
    "    time.sleep(20)\n"
    "except KeyboardInterrupt:\n"
    "    print('caught it')\n"
    "    raise SystemExit(7)\n"
)


@pytest.mark.parametrize("sandbox", SANDBOXES)
def test_ctrl_c_reaches_the_command_not_the_sandbox(sandbox: str) -> None:
    code, screen = at_a_terminal(
        ["exec", "--tty", "--sandbox", sandbox, "--", "python3", "-c", PYTHON_CATCHES],
        [b"\x03"],
        after=b"ready",
    )
    assert code == 7, screen
    assert "caught it" in screen


def test_ctrl_c_reaches_the_command_behind_the_managed_network() -> None:
    """With --network proxy a Python stage stands between bwrap and the command; the
    command still takes the terminal."""
    code, screen = at_a_terminal(
        ["exec", "--tty", "--network", "proxy", "--", "python3", "-c", PYTHON_CATCHES],
        [b"\x03"],
        after=b"ready",
    )
    assert code == 7, screen
    assert "caught it" in screen


def test_ctrl_c_under_the_landlock_fallback() -> None:
    from codexexec.sandbox.linux.landlock import SCOPE_ABI, landlock_abi

    if landlock_abi() < SCOPE_ABI:
        pytest.skip("the Landlock fallback needs a scoped Landlock ABI")
    code, screen = at_a_terminal(
        ["exec", "--tty", "--sandbox", "read-only", "--", "python3", "-c", PYTHON_CATCHES],
        [b"\x03"],
        after=b"ready",
        env={"CODEXEXEC_LINUX_SANDBOX": "landlock"},
    )
    assert code == 7, screen
    assert "caught it" in screen


@pytest.mark.parametrize("sandbox", SANDBOXES)
def test_an_interactive_shell_has_job_control_and_its_exit_code(sandbox: str) -> None:
    code, screen = at_a_terminal(
        ["exec", "--tty", "--sandbox", sandbox, "--", "env", "PS1=prompt> ", "sh", "-i"],
        [b"echo shell-$((40+2))\n", b"exit 3\n"],
        after=b"prompt> ",
    )
    assert "shell-42" in screen
    assert "Cannot set tty process group" not in screen and "no job control" not in screen
    assert code == 3, screen


@pytest.mark.parametrize("sandbox", SANDBOXES)
def test_the_terminal_size_follows_this_one(sandbox: str) -> None:
    script = "stty size; trap 'stty size; exit 5' WINCH; echo waiting; sleep 10 & wait"
    code, screen = at_a_terminal(
        ["exec", "--tty", "--sandbox", sandbox, "--", "sh", "-c", script],
        [(50, 132)],
        after=b"waiting",
    )
    assert code == 5, screen
    assert "30 100\n" in screen  # the size at the start
    assert "50 132\n" in screen  # and after the resize


async def test_resize_pty_on_the_wire(codexexec_server: RunningServer) -> None:
    from tests.wire import Wire

    wire = await Wire.open(codexexec_server.url)
    info = await wire.initialize()
    assert info["environmentInfo"]["capabilities"]["ptyResize"] is True
    await wire.start("tty-1", ["sh", "-c", "sleep 0.5; stty size"], tty=True)
    resized = await wire.result(
        "process/resizePty", {"processId": "tty-1", "size": {"rows": 33, "cols": 77}}
    )
    assert resized == {"resized": True}
    events = await wire.events_until_closed("tty-1")
    output = b"".join(
        base64.b64decode(e["params"]["chunk"]) for e in events if e["method"] == "process/output"
    )
    assert b"33 77" in output
    await wire.start("pipe-1", ["sleep", "1"])
    refused = await wire.request(
        "process/resizePty", {"processId": "pipe-1", "size": {"rows": 3, "cols": 3}}
    )
    assert refused["error"]["code"] == -32602
    assert refused["error"]["message"] == "process `pipe-1` has no terminal"
    bad = await wire.request(
        "process/resizePty", {"processId": "tty-1", "size": {"rows": 0, "cols": 3}}
    )
    assert bad["error"]["code"] == -32602
    await wire.close()


@pytest.mark.parametrize(
    ("where", "sandbox"),
    [("local", "workspace-write"), ("local", "danger-full-access"), ("server", "workspace-write")],
)
def test_closing_the_terminal_ends_the_command(
    where: str, sandbox: str, codexexec_server: RunningServer
) -> None:
    """Like ssh: when the terminal goes away (hangup), the command is stopped — an
    interactive shell too, which ignores SIGINT and SIGTERM — and the CLI exits (#18).
    On a server the shell's next prompt cannot be shown either: that ends it at once."""
    target = "local" if where == "local" else codexexec_server.url
    marker = f"CX_TTY_TEST={uuid.uuid4().hex}"  # this test's shell, not any other `sh -i`
    process, master = start_at_terminal(
        codexexec_command(
            "exec",
            "--env",
            target,
            "--tty",
            "--sandbox",
            sandbox,
            "--",
            "env",
            "PS1=prompt> ",
            marker,
            "sh",
            "-i",
        ),
        controlling=True,
    )
    screen = converse(process, master, lambda seen: b"prompt> " in seen, 20)
    assert b"prompt> " in screen
    assert _shells(marker), "the check would not see the shell"
    os.close(master)  # the terminal is gone
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail("the CLI outlived its terminal")
    deadline = time.monotonic() + 10
    while _shells(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _shells(marker), "the remote shell outlived the terminal"


def _shells(marker: str) -> set[int]:
    """Host pids of `sh -i` processes whose environment holds ``marker`` (checked on the
    host, not by exit codes)."""
    found = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmdline == b"sh\0-i\0" and marker.encode() in environ:
                found.add(int(pid))
    return found
