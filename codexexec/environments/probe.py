"""Checking an environment: connect, initialize and `environment/info`, each step timed."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from codexexec.client.errors import ExecServerError
from codexexec.environments.manager import Environment, Status

ENVIRONMENT_INFO_TIMEOUT_SECONDS = 30.0  # Codex's ENVIRONMENT_INFO_TIMEOUT


@dataclass(slots=True)
class Probe:
    environment: Environment
    # Seconds per step that completed, in order: connect, initialize, environment/info.
    steps: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def latency(self) -> float | None:
        """Connect plus initialize: what the first command waits for."""
        if "connect" not in self.steps:
            return None
        return self.steps["connect"] + self.steps.get("initialize", 0.0)


async def check(environment: Environment) -> Probe:
    """Connect (or reuse the connection) and ask the executor about itself."""
    probe = Probe(environment)
    try:
        client = await environment.client()
    except ExecServerError as exc:
        probe.error = str(exc)
        return probe
    if environment.timings is not None:
        probe.steps.update(environment.timings.steps)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        info = await client.call("environment/info", None, timeout=ENVIRONMENT_INFO_TIMEOUT_SECONDS)
    except ExecServerError as exc:
        probe.error = f"environment `{environment.id}`: environment/info: {exc}"
        return probe
    probe.steps["environment/info"] = loop.time() - started
    probe.info = info if isinstance(info, dict) else {}
    return probe


async def wait_for_state(environment: Environment) -> Probe:
    """What `env list` shows: the initial attempt's outcome, never spawning a stdio program."""
    probe = Probe(environment)
    if not environment.lazy or environment.kind == "local":
        try:
            await environment.client()
        except ExecServerError as exc:
            probe.error = str(exc)
    if environment.timings is not None and environment.status() is Status.READY:
        probe.steps.update(environment.timings.steps)
    return probe
