"""Executors the escape probes run against, and one probe run judged on the host.

An executor is a real server: codexexec (bubblewrap or the Landlock fallback) or the real
Codex 0.169.0, started as root or as an unprivileged user, with credentials in its
environment that no command may see. Each probe runs through ``process/start`` with the
same sandbox intent both servers receive from a harness.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import sys
import sysconfig
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codexexec.protocol.path_uri import PathUri
from codexexec.sandbox.policy import legacy_profile, sandbox_context_json
from tests.escape.probes import ORIGINAL, Ctx, Probe, cleanup, make_layout
from tests.servers import ROOT, RunningServer, start_server
from tests.wire import Wire, decoded_output

MODES = ("read-only", "workspace-write")
UNSANDBOXED = "none"  # the baseline: each probe must escape here, or it proves nothing
RESULTS = ROOT / ".cache" / "escape-results.jsonl"
SCRATCH = Path("/var/tmp/cx-escape")
USER = "nobody"
USER_PYTHON = "/usr/bin/python3"


@dataclass(frozen=True)
class Runner:
    kind: str  # codexexec | codex
    backend: str  # bwrap | landlock | codex
    user: str  # root | user

    @property
    def id(self) -> str:
        return (
            f"{self.kind}-{self.backend}-{self.user}"
            if self.kind == "codexexec"
            else (f"codex-{self.user}")
        )


RUNNERS = [
    Runner("codexexec", backend, user)
    for backend in ("bwrap", "landlock")
    for user in ("root", "user")
] + [Runner("codex", "codex", user) for user in ("root", "user")]


@dataclass
class Executor:
    runner: Runner
    server: RunningServer
    secrets: dict[str, str]
    uid: int
    gid: int

    @property
    def pid(self) -> int:
        return self.server.process.pid

    async def connect(self) -> Wire:
        token = self.secrets["CODEX_EXEC_SERVER_CONNECTION_TOKEN"]
        wire = await Wire.open(
            self.server.url, additional_headers={"Authorization": f"Bearer {token}"}
        )
        await wire.initialize()
        return wire


@contextlib.contextmanager
def start_executor(runner: Runner) -> Iterator[Executor]:
    values = {
        "CODEX_EXEC_SERVER_CONNECTION_TOKEN": f"conn-{secrets.token_hex(12)}",
        "CODEXEXEC_REGISTRY_TOKEN": f"reg-{secrets.token_hex(12)}",
        "OPENAI_API_KEY": f"sk-{secrets.token_hex(12)}",
    }
    uid, gid, wrapper = 0, 0, ()
    if runner.user == "user":
        entry = pwd.getpwnam(USER)
        uid, gid = entry.pw_uid, entry.pw_gid
        wrapper = ("setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups")
    env = dict(values)
    home = None
    python = sys.executable
    if runner.kind == "codexexec":
        env["CODEXEXEC_LINUX_SANDBOX"] = runner.backend
        if runner.user == "user":
            # The venv's interpreter may live where the user cannot go (pyenv under /root);
            # the executor re-executes its own interpreter for the Landlock supervisor.
            python = USER_PYTHON
            env["PYTHONPATH"] = os.pathsep.join([str(ROOT), sysconfig.get_paths()["purelib"]])
    else:
        home = tempfile.mkdtemp(prefix="codex-home-", dir="/var/tmp")
        os.chown(home, uid, gid)
        env["CODEX_HOME"] = home
    try:
        with start_server(runner.kind, env=env, wrapper=wrapper, python=python) as server:
            yield Executor(runner, server, values, uid, gid)
    finally:
        if home is not None:
            shutil.rmtree(home, ignore_errors=True)


def _uri(path: Path) -> str:
    return str(PathUri.from_host_native_path(str(path)))


def _context(mode: str, cwd: Path) -> dict[str, Any]:
    profile = legacy_profile(mode)  # type: ignore[arg-type]
    assert profile is not None
    return sandbox_context_json(profile, _uri(cwd), [_uri(cwd)])


def new_ctx(executor: Executor) -> Ctx:
    SCRATCH.mkdir(mode=0o755, exist_ok=True)
    token = uuid.uuid4().hex
    root = SCRATCH / token[:12]
    root.mkdir()
    os.chmod(root, 0o755)
    ctx = Ctx(
        root=root,
        ws=root / "ws",
        outside=root / "outside",
        token=token,
        uid=executor.uid,
        gid=executor.gid,
        executor_pid=executor.pid,
        secrets=executor.secrets,
    )
    return ctx


async def run_probe(executor: Executor, probe: Probe, mode: str, *, record: bool = True) -> str:
    """``held``, ``refused: REASON`` or ``escaped: WHAT`` — decided by looking at the host."""
    ctx = new_ctx(executor)
    try:
        make_layout(ctx, probe.layout)
        ctx.outside.mkdir()
        (ctx.outside / "t").write_text(ORIGINAL)
        os.chown(ctx.outside, ctx.uid, ctx.gid)
        os.chown(ctx.outside / "t", ctx.uid, ctx.gid)
        os.chmod(ctx.outside / "t", 0o644)
        setup = probe.setup(ctx) if probe.setup else contextlib.nullcontext()
        with setup:
            verdict = await _run(executor, probe, mode, ctx)
            if verdict is None:
                found = probe.escaped(ctx)
                verdict = "held" if found is None else f"escaped: {found}"
    finally:
        cleanup(ctx)
    if record:
        _record(executor.runner, probe, mode, verdict)
    return verdict


async def _run(executor: Executor, probe: Probe, mode: str, ctx: Ctx) -> str | None:
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(ctx.ws),
        "W": str(ctx.ws),
        "O": str(ctx.outside),
        "T": ctx.token,
        "EXECUTOR": str(executor.pid),
        "PY": "/usr/bin/python3",
        "PROBE_PY": probe.python,
        **ctx.env,
    }
    process_id = f"escape-{ctx.token[:8]}"
    wire = await executor.connect()
    try:
        reply = await wire.request(
            "process/start",
            {
                "processId": process_id,
                "argv": ["sh", "-c", probe.script],
                "cwd": _uri(ctx.ws),
                "env": env,
                "tty": False,
                "arg0": None,
                **({} if mode == UNSANDBOXED else {"sandbox": _context(mode, ctx.ws)}),
                **probe.request,
            },
        )
        if "error" in reply:
            return f"refused: {reply['error']['message']}"
        if probe.kills_executor:
            await _wait_for_daemon(ctx)
            executor.server.process.send_signal(signal.SIGKILL)
            executor.server.process.wait(10)
            return None
        events = await wire.events_until_closed(process_id, timeout=60)
        ctx.output = decoded_output(events)
        return None
    finally:
        with contextlib.suppress(Exception):
            await wire.close()


async def _wait_for_daemon(ctx: Ctx) -> None:
    import asyncio

    from tests.escape.probes import _processes_with

    for _ in range(100):
        if _processes_with(ctx.token):
            return
        await asyncio.sleep(0.05)


def _record(runner: Runner, probe: Probe, mode: str, verdict: str) -> None:
    RESULTS.parent.mkdir(exist_ok=True)
    line = {"runner": runner.id, "probe": probe.name, "mode": mode, "verdict": verdict}
    with RESULTS.open("a") as out:
        out.write(json.dumps(line) + "\n")
