"""The escape suite: every probe, under read-only and workspace-write, against codexexec on
bubblewrap and on the Landlock fallback, as root and as an unprivileged user — and against
the real Codex 0.169.0, whose results are recorded beside ours (`.cache/escape-results.jsonl`,
rendered for the README by ``python -m tests.escape.table``), not asserted.

codexexec must hold everywhere; where a backend cannot enforce a profile it must refuse
with the reason (the Landlock fallback refuses workspace-write: it cannot keep .git and
the other protected names from being created).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.escape.probes import PROBES, Probe
from tests.escape.runners import (
    MODES,
    RUNNERS,
    UNSANDBOXED,
    Executor,
    Runner,
    run_probe,
    start_executor,
)

pytestmark = [
    pytest.mark.skipif(
        os.geteuid() != 0, reason="the suite starts executors as root and as a user"
    ),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
    pytest.mark.timeout(600),
]

ROUTINE = [probe for probe in PROBES if not probe.kills_executor]
KILLERS = [probe for probe in PROBES if probe.kills_executor]
# Held even without a sandbox: the executor itself keeps its credentials from children.
HELD_BY_THE_EXECUTOR = {"inherited_env"}


@pytest.fixture(scope="module", params=RUNNERS, ids=lambda r: r.id)
def executor(request: pytest.FixtureRequest) -> Iterator[Executor]:
    with start_executor(request.param) as running:
        yield running


def _judge(runner: Runner, probe: Probe, verdicts: dict[str, str]) -> None:
    if runner.kind != "codexexec":
        return  # Codex's results are the comparison, not a requirement
    escaped = {mode: v for mode, v in verdicts.items() if v.startswith("escaped")}
    assert not escaped, f"{probe.name} ({probe.attack}): {escaped}"
    for mode, verdict in verdicts.items():
        if verdict.startswith("refused"):
            # Only the Landlock fallback may refuse, only workspace-write, and with a reason.
            assert runner.backend == "landlock" and mode == "workspace-write", verdict
            assert "need bubblewrap" in verdict, verdict


@pytest.mark.parametrize("probe", ROUTINE, ids=lambda p: p.name)
async def test_probe(executor: Executor, probe: Probe) -> None:
    verdicts = {mode: await run_probe(executor, probe, mode) for mode in MODES}
    _judge(executor.runner, probe, verdicts)


@pytest.mark.parametrize("runner", RUNNERS, ids=lambda r: r.id)
@pytest.mark.parametrize("probe", KILLERS, ids=lambda p: p.name)
async def test_probe_that_kills_the_executor(runner: Runner, probe: Probe) -> None:
    verdicts = {}
    for mode in MODES:
        with start_executor(runner) as executor:
            verdicts[mode] = await run_probe(executor, probe, mode)
    _judge(runner, probe, verdicts)


@pytest.fixture(scope="module")
def bare_executor() -> Iterator[Executor]:
    with start_executor(RUNNERS[0]) as running:
        yield running


@pytest.mark.parametrize(
    "probe", [p for p in ROUTINE if p.name != "kill_executor"], ids=lambda p: p.name
)
async def test_probe_escapes_without_a_sandbox(bare_executor: Executor, probe: Probe) -> None:
    """Each probe and its host check work: unsandboxed (as root), the attack gets out."""
    verdict = await run_probe(bare_executor, probe, UNSANDBOXED, record=False)
    if probe.name in HELD_BY_THE_EXECUTOR:
        assert verdict == "held"
    else:
        assert verdict.startswith("escaped"), verdict
