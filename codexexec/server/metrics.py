"""An executor's `GET /metrics`, in Prometheus text format.

Names follow Codex 0.169.0's exec-server telemetry where it has them (docs/codex-0.169-
observed.md §31): connections, processes, requests and their durations, remote
registrations and rendezvous connections. codexexec adds sandbox denials by reason and the
managed network's decisions. One registry per server, so servers in one process (the
tests) keep their own figures.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0)


class ServerMetrics:
    def __init__(self) -> None:
        registry = self.registry = CollectorRegistry()
        self.connections_total = Counter(
            "exec_server_connections",
            "Total number of accepted exec-server connections.",
            registry=registry,
        )
        self.connections_active = Gauge(
            "exec_server_connections_active",
            "Number of active exec-server connections.",
            registry=registry,
        )
        self.processes_active = Gauge(
            "exec_server_processes_active",
            "Number of active exec-server processes.",
            registry=registry,
        )
        self.processes_finished = Counter(
            "exec_server_processes_finished",
            "Total number of finished exec-server processes.",
            ["sandbox"],
            registry=registry,
        )
        self.process_seconds = Histogram(
            "exec_server_process_duration_seconds",
            "Duration of exec-server processes in seconds.",
            ["sandbox"],
            registry=registry,
            buckets=(0.01, 0.1, 1, 10, 60, 600, 3600),
        )
        self.requests = Counter(
            "exec_server_requests",
            "Total number of exec-server requests.",
            ["method", "outcome"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "exec_server_request_duration_seconds",
            "Duration of exec-server requests in seconds.",
            ["method"],
            registry=registry,
            buckets=_SECONDS,
        )
        self.denials = Counter(
            "codexexec_sandbox_denials",
            "Sandboxed commands reported as blocked, by reason.",
            ["reason"],
            registry=registry,
        )
        self.network_decisions = Counter(
            "codexexec_network_decisions",
            "Managed-network proxy decisions reported on exit.",
            ["decision"],
            registry=registry,
        )
        self.registrations = Counter(
            "exec_server_remote_registration",
            "Total number of remote exec-server registration attempts.",
            ["outcome"],
            registry=registry,
        )
        self.rendezvous_connects = Counter(
            "exec_server_remote_rendezvous_connect",
            "Total number of remote exec-server rendezvous connection attempts.",
            ["outcome"],
            registry=registry,
        )

    def remote_attempt(self, kind: str, outcome: str) -> None:
        """An executor behind a registry registered, or connected to its rendezvous."""
        counter = self.registrations if kind == "registration" else self.rendezvous_connects
        counter.labels(outcome).inc()

    @contextmanager
    def request(self, method: str) -> Iterator[None]:
        started = time.perf_counter()
        outcome = "error"
        try:
            yield
            outcome = "ok"
        finally:
            self.requests.labels(method, outcome).inc()
            self.request_seconds.labels(method).observe(time.perf_counter() - started)

    def process_ended(
        self, sandbox: str, seconds: float, denial: str | None, decisions: list[str]
    ) -> None:
        self.processes_active.dec()
        self.processes_finished.labels(sandbox).inc()
        self.process_seconds.labels(sandbox).observe(seconds)
        if denial is not None:
            self.denials.labels(denial).inc()
        for decision in decisions:
            self.network_decisions.labels(decision).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
