from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.servers import RunningServer, start_server

SERVER_KINDS = ("codexexec", "codex")


def pytest_configure(config: pytest.Config) -> None:
    # The CLI forwards piped stdin to the remote command; the commands tests start must
    # not inherit whatever stdin the test runner happens to have (a CI pipe never ends).
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)


@pytest.fixture(scope="session", params=SERVER_KINDS)
def server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    """The behaviour suite runs once against each server; both must pass alike."""
    with start_server(request.param, env=SERVER_ENV) as running:
        yield running


# Seen by children whose envPolicy inherits the executor's environment.
SERVER_ENV = {"CXTEST_PLAIN": "plain", "CXTEST_API_KEY": "hidden", "CXTEST_PASSWORD": "kept"}


@pytest.fixture(scope="session")
def codexexec_server() -> Iterator[RunningServer]:
    with start_server("codexexec") as running:
        yield running


@pytest.fixture(scope="session")
def codex_server() -> Iterator[RunningServer]:
    with start_server("codex") as running:
        yield running
