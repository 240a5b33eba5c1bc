"""What Ctrl-C, SIGTERM and SIGHUP to `exec` do to the command it runs (like ssh): the
command is interrupted, and terminated if it is still running after a grace period (or at
a second signal). Without this a remote command kept running after the CLI was gone, until
the executor's detached-session time ran out, with no handle printed to reach it."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Iterator

from codexexec.client import RemoteProcess
from codexexec.tasks import TaskSet

GRACE_SECONDS = 5.0
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopForwarding:
    def __init__(self, grace: float = GRACE_SECONDS) -> None:
        self.process: RemoteProcess | None = None
        # How the lines name the process: its handle where it outlives this CLI (so it can
        # be found again with `read`/`kill` if it keeps running), else its id.
        self.label = ""
        self.received: signal.Signals | None = None
        self._grace = grace
        self._tasks = TaskSet()
        self._timer: asyncio.TimerHandle | None = None
        # Set at each signal: a question being asked (the approval prompt) is answered no.
        self.interrupted = asyncio.Event()

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        added = []
        for signum in SIGNALS:
            try:
                loop.add_signal_handler(signum, self._on_signal, signum)
                added.append(signum)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        try:
            yield
        finally:
            for signum in added:
                loop.remove_signal_handler(signum)
            if self._timer is not None:
                self._timer.cancel()

    def _on_signal(self, signum: signal.Signals) -> None:
        self.received = signum
        self.interrupted.set()
        self.stop(f"\ncodexexec: {signal.Signals(signum).name}")

    def attach(self, process: RemoteProcess) -> None:
        """The command now running; a signal that came while it was starting stops it."""
        self.process = process
        if self.received is not None and self._timer is None:
            self.stop(f"codexexec: {signal.Signals(self.received).name} while starting")

    def stop(self, why: str) -> None:
        """Interrupt the command (``why`` starts the line that says so), and terminate it
        after the grace period; a second stop terminates it at once."""
        process = self.process
        if process is None:
            return
        if self._timer is None:
            # Best effort: after a hangup the terminal is gone, and the command must still
            # be stopped.
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write(
                    f"{why}: interrupting `{self.label or process.process_id}`; "
                    f"it is terminated if still running in {self._grace:g} s\n"
                )
                sys.stderr.flush()
            self._spawn(process.interrupt())
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._grace, self._terminate, process)
        else:
            self._terminate(process)

    def terminate_now(self) -> None:
        """End the command without the grace period (its output can no longer be shown)."""
        if self.process is not None:
            self._terminate(self.process)

    def _terminate(self, process: RemoteProcess) -> None:
        self._spawn(process.terminate())

    def _spawn(self, step: Awaitable[object]) -> None:
        async def run() -> None:
            with contextlib.suppress(Exception):  # the command may be gone, or the link
                await step

        self._tasks.spawn(run())
