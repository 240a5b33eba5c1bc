"""Real enforcement on this machine: bubblewrap + seccomp (and the Landlock fallback)."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from codexexec.protocol.path_uri import PathUri
from codexexec.sandbox.policy import legacy_profile, sandbox_context_json
from tests.servers import RunningServer, start_server
from tests.wire import Wire, decoded_output

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")

OUTSIDE = "/var/lib/codexexec-sandbox-probe"


def uri(path: Path | str) -> str:
    return str(PathUri.from_host_native_path(str(path)))


@pytest.fixture
def workspace() -> Any:
    # Not under /tmp: /tmp is writable under workspace-write by design.
    root = Path("/var/tmp") / f"cx-ws-{uuid.uuid4().hex[:8]}"
    (root / ".git").mkdir(parents=True)
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / ".agents").mkdir()
    os.chmod(root, 0o777)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def context(mode: str, cwd: Path, **kw: Any) -> dict[str, Any]:
    profile = legacy_profile(mode, **kw)  # type: ignore[arg-type]
    assert profile is not None
    return sandbox_context_json(profile, uri(cwd), [uri(cwd)])


async def run(
    wire: Wire, argv: list[str], cwd: Path, sandbox: Any, env: dict[str, str] | None = None
) -> tuple[dict[str, Any], bytes, dict[str, Any]]:
    process_id = f"s-{uuid.uuid4().hex[:8]}"
    started = await wire.result(
        "process/start",
        {
            "processId": process_id,
            "argv": argv,
            "cwd": uri(cwd),
            "env": {"PATH": "/usr/bin:/bin", **(env or {})},
            "tty": False,
            "sandbox": sandbox,
        },
    )
    events = await wire.events_until_closed(process_id)
    exited = next(e["params"] for e in events if e["method"] == "process/exited")
    return started, decoded_output(events), exited


async def connected(url: str) -> Wire:
    wire = await Wire.open(url)
    await wire.initialize()
    return wire


# -- the same intent, enforced alike by codexexec and by the real Codex ----------------


async def test_workspace_write_is_enforced(server: RunningServer, workspace: Path) -> None:
    wire = await connected(server.url)
    sandbox = context("workspace-write", workspace)
    started, _, exited = await run(wire, ["sh", "-c", "echo ok > inside.txt"], workspace, sandbox)
    assert started["sandboxType"] == "linuxSeccomp"
    assert exited["exitCode"] == 0 and exited["sandboxDenied"] is False
    assert (workspace / "inside.txt").read_text() == "ok\n"
    _, output, exited = await run(wire, ["touch", f"{OUTSIDE}-{server.kind}"], workspace, sandbox)
    assert exited["exitCode"] != 0 and exited["sandboxDenied"] is True
    assert b"Read-only file system" in output
    assert not Path(f"{OUTSIDE}-{server.kind}").exists()
    _, _, exited = await run(wire, ["sh", "-c", "echo x > .git/HEAD"], workspace, sandbox)
    assert exited["sandboxDenied"] is True
    assert (workspace / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n"
    await wire.close()


async def test_network_is_blocked_when_off(server: RunningServer, workspace: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    wire = await connected(server.url)
    probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)"
    _, output, exited = await run(
        wire, ["python3", "-c", probe], workspace, context("read-only", workspace)
    )
    listener.close()
    assert exited["sandboxDenied"] is True
    assert b"Operation not permitted" in output
    await wire.close()


async def test_ordinary_failures_are_not_denials(server: RunningServer, workspace: Path) -> None:
    wire = await connected(server.url)
    sandbox = context("workspace-write", workspace)
    for argv in (
        ["false"],
        ["sh", "-c", "echo plain failure >&2; exit 1"],
        ["sh", "-c", "no-such-command-xyz"],
    ):
        _, _, exited = await run(wire, argv, workspace, sandbox)
        assert exited["exitCode"] != 0 and exited["sandboxDenied"] is False, argv
    await wire.close()


async def test_read_only_blocks_the_workspace_too(server: RunningServer, workspace: Path) -> None:
    wire = await connected(server.url)
    _, _, exited = await run(wire, ["touch", "new.txt"], workspace, context("read-only", workspace))
    assert exited["sandboxDenied"] is True and not (workspace / "new.txt").exists()
    await wire.close()


# -- codexexec specifics ---------------------------------------------------------------


async def test_denial_report_says_why(codexexec_server: RunningServer, workspace: Path) -> None:
    wire = await connected(codexexec_server.url)
    _, _, exited = await run(
        wire, ["touch", "/etc/cx-denied"], workspace, context("workspace-write", workspace)
    )
    assert exited["sandboxDenial"] == {
        "reason": "read_only_file_system",
        "backend": "bubblewrap",
        "path": "/etc/cx-denied",
        "snippet": "touch: cannot touch '/etc/cx-denied': Read-only file system",
    }
    await wire.close()


async def test_protected_metadata(codexexec_server: RunningServer, workspace: Path) -> None:
    wire = await connected(codexexec_server.url)
    sandbox = context("workspace-write", workspace)
    _, _, exited = await run(wire, ["touch", ".agents/x"], workspace, sandbox)
    assert exited["sandboxDenied"] is True
    _, _, exited = await run(wire, ["mkdir", ".codex/sub"], workspace, sandbox)
    assert exited["sandboxDenied"] is True
    assert not (workspace / ".codex").exists()  # the mask's mount point is cleaned up
    (workspace / ".codex").mkdir()
    _, _, exited = await run(wire, ["touch", ".codex/config.toml"], workspace, sandbox)
    assert exited["sandboxDenied"] is True
    await wire.close()


async def test_overlapping_sandboxes_keep_a_missing_protected_name_protected(
    codexexec_server: RunningServer, workspace: Path
) -> None:
    """The first sandbox creates `.codex` on the host as its mask's mount point; a second
    one, started meanwhile, binds that directory read-only. When the first ends, the
    directory must stay until the second has ended too: removing it would detach the
    second's mount and let it create `.codex/config.toml` after all."""
    wire = await connected(codexexec_server.url)
    sandbox = context("workspace-write", workspace)
    first = {"processId": "first", "argv": ["sleep", "0.5"], "cwd": uri(workspace)}
    await wire.result("process/start", {**first, "env": {}, "tty": False, "sandbox": sandbox})
    for _ in range(100):  # until bubblewrap has made the mount point
        if (workspace / ".codex").exists():
            break
        await asyncio.sleep(0.01)
    attempt = "sleep 1.2; mkdir -p .codex && echo planted > .codex/config.toml"
    second = {"processId": "second", "argv": ["sh", "-c", attempt], "cwd": uri(workspace)}
    await wire.result("process/start", {**second, "env": {}, "tty": False, "sandbox": sandbox})
    await wire.events_until_closed("first")
    events = await wire.events_until_closed("second")
    assert b"Read-only file system" in decoded_output(events)
    assert not (workspace / ".codex" / "config.toml").exists()
    assert not (workspace / ".codex").exists()  # removed once the last user ended
    await wire.close()


async def test_a_dropped_sandboxed_process_gives_back_its_mount_point(workspace: Path) -> None:
    """A running sandboxed process dropped with its session (here: the detached-session
    TTL ran out) must release the `.codex` mount point bubblewrap made on the host, or an
    empty `.codex` stays in the user's workspace for good."""
    with start_server("codexexec", extra_args=("--detached-session-ttl", "1")) as server:
        wire = await connected(server.url)
        params = {"processId": "held", "argv": ["sleep", "30"], "cwd": uri(workspace)}
        sandbox = context("workspace-write", workspace)
        await wire.result("process/start", {**params, "env": {}, "tty": False, "sandbox": sandbox})
        for _ in range(100):
            if (workspace / ".codex").exists():
                break
            await asyncio.sleep(0.02)
        assert (workspace / ".codex").is_dir()
        await wire.close()  # the session is detached, then expires after 1 s
        for _ in range(200):
            if not (workspace / ".codex").exists():
                break
            await asyncio.sleep(0.05)
        assert not (workspace / ".codex").exists()


async def test_gitdir_file_target_is_protected(
    codexexec_server: RunningServer, workspace: Path
) -> None:
    real_git = workspace.parent / f"{workspace.name}-gitdir"
    real_git.mkdir()
    try:
        shutil.rmtree(workspace / ".git")
        (workspace / ".git").write_text(f"gitdir: {real_git}\n")
        wire = await connected(codexexec_server.url)
        sandbox = context("workspace-write", workspace, writable_root_uris=[uri(real_git)])
        _, _, exited = await run(wire, ["touch", f"{real_git}/config"], workspace, sandbox)
        assert exited["sandboxDenied"] is True and not (real_git / "config").exists()
        await wire.close()
    finally:
        shutil.rmtree(real_git, ignore_errors=True)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s["permissions"].update(type="sideways"), "unknown profile type `sideways`"),
        (
            lambda s: s["permissions"]["file_system"]["entries"].append(
                {"path": {"type": "path", "path": "relative/dir"}, "access": "write"}
            ),
            "not valid on this",
        ),
        (
            lambda s: s.update(workspaceRoots=["file:///does/not/exist"]),
            "does not exist on this executor",
        ),
        (
            lambda s: (s.pop("cwd"), s.update(workspaceRoots=[])),
            "file system sandbox context with dynamic permissions requires cwd",
        ),
        (
            lambda s: s["permissions"]["file_system"]["entries"].append(
                {"path": {"type": "path", "path": "file:///etc"}, "access": "maybe"}
            ),
            "unknown access `maybe`",
        ),
    ],
)
async def test_bad_intent_is_refused_and_nothing_runs(
    codexexec_server: RunningServer, workspace: Path, mutate: Any, message: str
) -> None:
    wire = await connected(codexexec_server.url)
    sandbox = context("workspace-write", workspace)
    mutate(sandbox)
    marker = workspace / "ran"
    reply = await wire.request(
        "process/start",
        {
            "processId": "bad",
            "argv": ["touch", str(marker)],
            "cwd": uri(workspace),
            "env": {},
            "tty": False,
            "sandbox": sandbox,
        },
    )
    assert reply["error"]["code"] == -32602 and message in reply["error"]["message"], reply
    assert not marker.exists()
    await wire.close()


async def test_symlinked_protected_path_fails_closed(
    codexexec_server: RunningServer, workspace: Path
) -> None:
    shutil.rmtree(workspace / ".agents")
    (workspace / ".agents").symlink_to("/etc")
    wire = await connected(codexexec_server.url)
    reply = await wire.request(
        "process/start",
        {
            "processId": "sym",
            "argv": ["true"],
            "cwd": uri(workspace),
            "env": {},
            "tty": False,
            "sandbox": context("workspace-write", workspace),
        },
    )
    assert reply["error"]["code"] == -32602 and "symlink" in reply["error"]["message"]
    await wire.close()


async def test_full_access_runs_unsandboxed(
    codexexec_server: RunningServer, workspace: Path
) -> None:
    wire = await connected(codexexec_server.url)
    unrestricted = {
        "permissions": {
            "type": "managed",
            "file_system": {"type": "unrestricted"},
            "network": "enabled",
        },
        "windowsSandboxLevel": "disabled",
    }
    started, _, exited = await run(wire, ["true"], workspace, unrestricted)
    assert started["sandboxType"] == "none" and exited["sandboxDenied"] is False
    disabled = {"permissions": {"type": "disabled"}, "windowsSandboxLevel": "disabled"}
    started, _, _ = await run(wire, ["true"], workspace, disabled)
    assert started["sandboxType"] == "none"
    await wire.close()


async def test_tty_works_inside_the_sandbox(
    codexexec_server: RunningServer, workspace: Path
) -> None:
    wire = await connected(codexexec_server.url)
    process_id = "tty-sb"
    await wire.result(
        "process/start",
        {
            "processId": process_id,
            "argv": ["sh", "-c", "read a; echo got:$a"],
            "cwd": uri(workspace),
            "env": {"PATH": "/usr/bin:/bin"},
            "tty": True,
            "sandbox": context("workspace-write", workspace),
        },
    )
    await wire.result(
        "process/write",
        {"processId": process_id, "chunk": base64.b64encode(b"hi\n").decode(), "writeId": "1"},
    )
    events = await wire.events_until_closed(process_id)
    assert b"got:hi" in decoded_output(events)
    await wire.close()


async def test_enforced_as_an_unprivileged_user(workspace: Path) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv not installed")
    with start_server(
        "codexexec", wrapper=("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
    ) as running:
        wire = await connected(running.url)
        sandbox = context("workspace-write", workspace)
        started, _, exited = await run(wire, ["sh", "-c", "id -u > mine.txt"], workspace, sandbox)
        assert started["sandboxType"] == "linuxSeccomp" and exited["exitCode"] == 0
        assert (workspace / "mine.txt").read_text().strip() == "65534"
        _, _, exited = await run(wire, ["sh", "-c", "echo x > .git/HEAD"], workspace, sandbox)
        assert exited["sandboxDenied"] is True
        await wire.close()


async def test_landlock_fallback(workspace: Path) -> None:
    from codexexec.sandbox.linux.landlock import landlock_abi

    if landlock_abi() == 0:
        pytest.skip("Landlock not available")
    with start_server("codexexec", env={"CODEXEXEC_LINUX_SANDBOX": "landlock"}) as running:
        wire = await connected(running.url)
        started, output, exited = await run(
            wire, ["touch", "/etc/cx-landlock"], workspace, context("read-only", workspace)
        )
        assert started["sandboxType"] == "linuxSeccomp"
        assert exited["sandboxDenied"] is True and b"Permission denied" in output
        assert exited["sandboxDenial"]["backend"] == "landlock"
        # Landlock cannot take .git back out of a writable workspace: refuse, don't pretend.
        reply = await wire.request(
            "process/start",
            {
                "processId": "ll",
                "argv": ["true"],
                "cwd": uri(workspace),
                "env": {},
                "tty": False,
                "sandbox": context("workspace-write", workspace),
            },
        )
        assert reply["error"]["code"] == -32602
        assert "sandbox intent cannot be enforced on this executor" in reply["error"]["message"]
        assert "need bubblewrap" in reply["error"]["message"]
        await wire.close()


@pytest.mark.parametrize("backend", ["bwrap", "landlock"])
async def test_loader_variables_reach_the_command_but_not_its_launchers(
    workspace: Path, tmp_path: Path, backend: str
) -> None:
    """bwrap and the Landlock stage run on the host before confinement, so a loader
    variable in the command's env must not steer them (LD_DEBUG_OUTPUT would have them
    write a file outside the sandbox); the command itself still gets every variable."""
    with start_server("codexexec", env={"CODEXEXEC_LINUX_SANDBOX": backend}) as running:
        wire = await connected(running.url)
        trace = tmp_path / "trace"
        env = {
            "LD_DEBUG": "libs",
            "LD_DEBUG_OUTPUT": str(trace),
            "LD_LIBRARY_PATH": "/nonexistent/lib",
            "TMPDIR": "/tmp/mine",
        }
        # While it runs, no command line on the host (which any local user can read in
        # /proc/PID/cmdline) carries the held values: they travel in a memfd.
        script = 'echo "$LD_DEBUG_OUTPUT|$LD_LIBRARY_PATH|$TMPDIR" >&2; sleep 1'
        running = asyncio.ensure_future(
            run(wire, ["sh", "-c", script], workspace, context("read-only", workspace), env)
        )
        await asyncio.sleep(0.6)
        shown = [p for p in Path("/proc").glob("[0-9]*/cmdline") if _holds(p, b"/nonexistent/lib")]
        started, output, exited = await running
        await wire.close()
    assert started["sandboxType"] == "linuxSeccomp" and exited["exitCode"] == 0
    assert f"{trace}|/nonexistent/lib|/tmp/mine".encode() in output
    assert list(tmp_path.glob("trace*")) == []
    assert shown == []


def _holds(path: Path, needle: bytes) -> bool:
    try:
        return needle in path.read_bytes()
    except OSError:
        return False


def test_spawn_overhead_is_small() -> None:
    """Not a benchmark (that lives in bench/): a guard against a pathological slowdown."""
    result = subprocess.run(["bwrap", "--ro-bind", "/", "/", "--", "true"], capture_output=True)
    assert result.returncode == 0


@pytest.mark.parametrize("backend", ["bwrap", "landlock"])
def test_a_held_variable_that_is_not_utf8_reaches_the_command_as_it_was(backend: str) -> None:
    """The executor's own environment may hold bytes that are no text (`TMPDIR` here): held
    back from the launcher, they still reach the command byte for byte."""
    from tests.servers import codexexec_command

    done = subprocess.run(
        codexexec_command(
            "exec", "--sandbox", "read-only", "--", "sh", "-c", 'printf %s "$TMPDIR"'
        ),
        capture_output=True,
        timeout=60,
        cwd="/tmp",
        env={**os.environ, "TMPDIR": "/tmp/\udcff", "CODEXEXEC_LINUX_SANDBOX": backend},
    )
    assert (done.returncode, done.stdout) == (0, b"/tmp/\xff"), done.stderr
