"""Sessions on a stdio environment that outlive the command: through the environment's keeper.

``connect_kept`` makes sure the keeper of the entry runs (starting it under a lock, so
concurrent `exec --detach` calls share one), then speaks the exec-server protocol to it
over its Unix socket. Resuming (`read HANDLE`) never starts a keeper: a session that is
gone is explained with the keeper's last words.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from codexexec.client.client import ExecServerClient
from codexexec.environments.config import StdioSpec
from codexexec.environments.connect import EnvironmentUnavailable, initialize_over
from codexexec.environments.keeper_paths import KeeperPaths
from codexexec.file_lock import lock_attempts
from codexexec.protocol.limits import DEFAULT_DETACHED_SESSION_TTL_SECONDS

if TYPE_CHECKING:
    from codexexec.environments.keeper import KeeperOrder
    from codexexec.transport.stdio import StreamTransport

IDLE_TTL_ENV = "CODEXEXEC_KEEPER_IDLE_TTL"
# Starting a keeper: Python's start-up plus the program's spawn, on top of initialize.
KEEPER_START_SECONDS = 15.0
PROBE_TIMEOUT_SECONDS = 1.0
LOCK_POLL_SECONDS = 0.02


class KeptClient(ExecServerClient):
    """A client of a keeper: a lost connection is explained by the keeper's last words."""

    paths: KeeperPaths | None = None

    @property
    def lost_reason(self) -> str:
        words = self.paths.read_last_words() if self.paths is not None else None
        return f"environment `{self.description}`: {words}" if words else super().lost_reason


def idle_ttl(label: str) -> float:
    """How long the keeper waits with no client attached before it ends."""
    text = os.environ.get(IDLE_TTL_ENV)
    if not text:
        return DEFAULT_DETACHED_SESSION_TTL_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        cause = f"{IDLE_TTL_ENV} must be a positive number of seconds"
        raise EnvironmentUnavailable(label, "connect", cause, retryable=False)
    return value


async def connect_kept(
    spec: StdioSpec, label: str, *, resume_session_id: str | None = None
) -> ExecServerClient:
    """A client of ``spec``'s keeper: a new one's session, or ``resume_session_id``."""
    try:
        paths = KeeperPaths.for_spec(spec)
        paths.prepare()
    except OSError as exc:
        cause = f"no private runtime directory for its keeper: {exc}"
        raise EnvironmentUnavailable(label, "connect", cause, retryable=False) from None
    # A keeper may stop (idle) just as we connect: a new session then starts another.
    for attempt in (1, 2):
        transport = await _open(paths, label)
        if transport is None:
            if resume_session_id is not None:
                raise EnvironmentUnavailable(label, "connect", _gone(paths), retryable=False)
            await asyncio.to_thread(_ensure_keeper, spec, label, paths)
            transport = await _open(paths, label)
            if transport is None:
                cause = f"its keeper does not answer at {paths.socket}"
                raise EnvironmentUnavailable(label, "connect", cause, retryable=False)
        try:
            return await _session(spec, label, paths, transport, resume_session_id)
        except EnvironmentUnavailable:
            if attempt == 2 or resume_session_id is not None:
                raise
    raise AssertionError("unreachable")


async def _session(
    spec: StdioSpec,
    label: str,
    paths: KeeperPaths,
    transport: StreamTransport,
    resume_session_id: str | None,
) -> KeptClient:
    client = await initialize_over(
        spec,
        label,
        transport,
        lambda: KeptClient.over(
            transport, description=label, resume_session_id=resume_session_id, timeout=None
        ),
    )
    client.paths = paths
    return client


async def _open(paths: KeeperPaths, label: str) -> StreamTransport | None:
    from codexexec.transport.unix import connect_unix_transport

    try:
        return await connect_unix_transport(str(paths.socket), f"keeper of `{label}`")
    except OSError:
        return None


def _gone(paths: KeeperPaths) -> str:
    words = paths.read_last_words()
    if words is not None:
        return words
    return (
        "no keeper holds its sessions (it ended, or the entry changed since the process "
        "was detached)"
    )


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(PROBE_TIMEOUT_SECONDS)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


@contextlib.contextmanager
def _start_lock(paths: KeeperPaths, label: str, timeout: float) -> Iterator[None]:
    fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            for _ in lock_attempts(fd, timeout):
                time.sleep(LOCK_POLL_SECONDS)
        except TimeoutError:
            cause = f"another command has been starting its keeper for {timeout:g} s"
            raise EnvironmentUnavailable(label, "connect", cause, retryable=False) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _ensure_keeper(spec: StdioSpec, label: str, paths: KeeperPaths) -> None:
    """Start the keeper unless one answers; one starter at a time (blocking: run in a thread)."""
    from codexexec.environments.keeper import KeeperOrder

    order = KeeperOrder(spec, str(paths.socket), str(paths.last_words), idle_ttl(label))
    timeout = spec.initialize_timeout + KEEPER_START_SECONDS
    with _start_lock(paths, label, timeout):
        if _answers(str(paths.socket)):
            return  # another command started it while we waited
        _start_keeper(order, label, paths, timeout)


def _start_keeper(order: KeeperOrder, label: str, paths: KeeperPaths, timeout: float) -> None:
    log_fd = os.open(paths.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        keeper = subprocess.Popen(
            [sys.executable, "-m", "codexexec.environments.keeper"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log_fd,
            # Not this terminal's: closing it, or Ctrl-C here, must not end the keeper.
            start_new_session=True,
        )
    except OSError as exc:
        cause = f"cannot start its keeper: {exc.strerror or exc}"
        raise EnvironmentUnavailable(label, "connect", cause, retryable=False) from None
    finally:
        os.close(log_fd)
    assert keeper.stdin is not None and keeper.stdout is not None
    with keeper.stdin:
        keeper.stdin.write(order.to_json().encode())
    with keeper.stdout:
        line = _read_report(keeper.stdout.fileno(), timeout)
    if line is None:
        keeper.kill()
        keeper.wait()
        raise EnvironmentUnavailable(label, "connect", _keeper_failed(paths), retryable=False)
    report = json.loads(line)
    if not report.get("ready"):
        keeper.wait()
        raise EnvironmentUnavailable(
            label, report.get("step", "connect"), str(report.get("cause")), retryable=False
        )


def _read_report(fd: int, timeout: float) -> bytes | None:
    """The keeper's one report line, or None if it exits or stays silent for ``timeout``."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            return None
        data += chunk
    return data.partition(b"\n")[0]


def _keeper_failed(paths: KeeperPaths) -> str:
    """The keeper died or hung before reporting: the last line of its log says why."""
    try:
        lines = paths.log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        lines = []
    return "its keeper failed to start" + (f": {lines[-1][:300]}" if lines else "")
