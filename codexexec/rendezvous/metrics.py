"""`GET /metrics` of a rendezvous node, in Prometheus text format.

Relay counters are the ones the router already keeps (``RelayStats``); they are read at
scrape time, so routing a frame costs nothing more. Store calls are timed by wrapping the
store. One registry per node (not prometheus_client's global one), so several nodes in one
process — the tests — do not mix their figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from codexexec.rendezvous.store import Registration, RegistryStore

if TYPE_CHECKING:
    from codexexec.rendezvous.relay import Relay

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "codexexec_rendezvous"
# Relay counters by the label they are exported under.
_DROPS = {"dropped_text": "text_frame", "dropped_invalid": "invalid_frame"}
_DROPS["dropped_unrouted"] = "unrouted"

T = TypeVar("T")


class _RelayCollector(Collector):
    def __init__(self, relay: Relay) -> None:
        self._relay = relay

    def collect(self) -> Iterator[Metric]:
        relay, stats = self._relay, self._relay.stats
        sockets = GaugeMetricFamily(f"{PREFIX}_sockets", "Relay sockets held", labels=["role"])
        harnesses = sum(len(executor.harnesses) for executor in relay.executors.values())
        sockets.add_metric(["executor"], len(relay.executors))
        sockets.add_metric(["harness"], harnesses)
        yield sockets
        bus = relay.bus
        yield GaugeMetricFamily(
            f"{PREFIX}_bus_links",
            "Links with other nodes",
            value=0 if bus is None else len(bus.links),
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_streams_active",
            "Streams claimed by a harness",
            value=sum(len(executor.router) for executor in relay.executors.values()),
        )
        frames = CounterMetricFamily(
            f"{PREFIX}_frames_routed", "Frames routed", labels=["direction"]
        )
        frames.add_metric(["to_executor"], stats.to_executor)
        frames.add_metric(["to_harness"], stats.to_harness)
        yield frames
        routed = CounterMetricFamily(
            f"{PREFIX}_bytes_routed", "Frame bytes routed", labels=["direction"]
        )
        routed.add_metric(["to_executor"], stats.bytes_to_executor)
        routed.add_metric(["to_harness"], stats.bytes_to_harness)
        yield routed
        drops = CounterMetricFamily(f"{PREFIX}_frames_dropped", "Frames dropped", labels=["reason"])
        for field, reason in _DROPS.items():
            drops.add_metric([reason], getattr(stats, field))
        yield drops
        for name, help_text, value in (
            ("streams_refused", "Streams refused with a Reset", stats.refused_streams),
            ("resets_sent", "Resets the rendezvous sent", stats.resets_sent),
            ("slow_harnesses", "Harness sockets cut for not reading", stats.slow_harnesses),
            ("handshakes_failed", "Handshakes the executor refused", stats.failed_handshakes),
            ("credentials_paused", "Harness credentials paused", stats.paused_credentials),
            ("bus_messages_sent", "Link messages sent to other nodes", stats.bus_messages_out),
            ("bus_messages_received", "Link messages from other nodes", stats.bus_messages_in),
            ("bus_bytes_sent", "Link message bytes sent to other nodes", stats.bus_bytes_out),
            ("bus_bytes_received", "Link message bytes from other nodes", stats.bus_bytes_in),
            ("bus_invalid", "Bus messages that were not ours", stats.bus_dropped_invalid),
            ("bus_links_broken", "Links ended: node silent, bus down", stats.bus_links_broken),
        ):
            yield CounterMetricFamily(f"{PREFIX}_{name}", help_text, value=value)


class RendezvousMetrics:
    def __init__(self, relay: Relay) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_RelayCollector(relay))
        self.validations = Counter(
            f"{PREFIX}_validations",
            "Harness authorizations presented at /validate",
            ["outcome"],
            registry=self.registry,
        )
        self.store_seconds = Histogram(
            f"{PREFIX}_store_seconds",
            "Registry store call latency",
            ["operation"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
        )

        self.bus_seconds = Histogram(
            f"{PREFIX}_bus_request_seconds",
            "Latency of requests to other nodes over the bus",
            ["operation"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
        )

    def observe_bus(self, operation: str, seconds: float) -> None:
        self.bus_seconds.labels(operation).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class TimedStore:
    """A store whose calls are timed into ``store_seconds``; otherwise the same store."""

    def __init__(self, store: RegistryStore, metrics: RendezvousMetrics) -> None:
        self._store = store
        self._metrics = metrics
        self.signing_key = store.signing_key

    async def _timed(self, operation: str, call: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        try:
            return await call()
        finally:
            self._metrics.store_seconds.labels(operation).observe(time.perf_counter() - started)

    async def register(
        self,
        environment_id: str,
        security_profile: str,
        executor_public_key: Any,
        registered_by: str,
    ) -> Registration:
        result: Registration = await self._timed(
            "register",
            lambda: self._store.register(
                environment_id, security_profile, executor_public_key, registered_by
            ),
        )
        return result

    async def current_registration(self, environment_id: str) -> Registration | None:
        result: Registration | None = await self._timed(
            "current_registration", lambda: self._store.current_registration(environment_id)
        )
        return result

    async def environment_count(self) -> int:
        result: int = await self._timed("environment_count", self._store.environment_count)
        return result

    async def issue_authorization(
        self,
        environment_id: str,
        registration_id: str,
        harness_public_key: Any,
        ttl_seconds: float,
        *,
        limit: int | None = None,
    ) -> str:
        result: str = await self._timed(
            "issue_authorization",
            lambda: self._store.issue_authorization(
                environment_id, registration_id, harness_public_key, ttl_seconds, limit=limit
            ),
        )
        return result

    async def consume_authorization(
        self,
        environment_id: str,
        registration_id: str,
        harness_public_key: Any,
        authorization: str,
    ) -> str:
        result: str = await self._timed(
            "consume_authorization",
            lambda: self._store.consume_authorization(
                environment_id, registration_id, harness_public_key, authorization
            ),
        )
        return result

    async def aclose(self) -> None:
        await self._store.aclose()
