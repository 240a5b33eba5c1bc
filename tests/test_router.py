"""The rendezvous's stream routing table, without sockets: plain asserts and hypothesis."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from codexexec.rendezvous.router import (
    RESET_HANDSHAKES_PAUSED,
    RESET_STREAM_IN_USE,
    RESET_STREAM_LIMIT,
    Drop,
    Refuse,
    StreamRouter,
    ToExecutor,
    ToHarness,
)


def test_a_stream_belongs_to_the_harness_that_opened_it() -> None:
    router: StreamRouter[str] = StreamRouter(max_streams_per_harness=2)
    assert router.from_harness("a", "s1", "resume") == ToExecutor(claimed=True)
    assert router.from_harness("a", "s1", "data") == ToExecutor()
    assert router.from_harness("b", "s1", "data") == Refuse(RESET_STREAM_IN_USE)
    assert router.from_harness("b", "s1", "reset") == Drop()  # not b's to end
    assert router.from_executor("s1", "data") == ToHarness("a")
    assert router.from_executor("s9", "data") == Drop()
    assert router.from_harness("a", "s2", "resume") == ToExecutor(claimed=True)
    assert router.from_harness("a", "s3", "resume") == Refuse(RESET_STREAM_LIMIT)
    assert router.from_harness("a", "s1", "reset") == ToExecutor()  # forwarded, then free
    assert router.from_harness("b", "s1", "resume") == ToExecutor(claimed=True)


def test_handshake_answers_are_reported_once() -> None:
    router: StreamRouter[str] = StreamRouter(max_streams_per_harness=4)
    router.from_harness("a", "s1", "handshake")
    assert router.from_executor("s1", "handshake") == ToHarness("a", "answered")
    assert router.from_executor("s1", "data") == ToHarness("a")
    router.from_harness("a", "s2", "handshake")
    assert router.from_executor("s2", "reset") == ToHarness("a", "refused")
    assert len(router) == 1  # s2 ended with its reset
    assert router.from_harness("a", "s3", "handshake", handshakes_paused=True) == Refuse(
        RESET_HANDSHAKES_PAUSED
    )
    assert router.streams_of("a") == {"s1"}


def test_sockets_going_away() -> None:
    router: StreamRouter[str] = StreamRouter(max_streams_per_harness=4)
    for stream in ("s1", "s2"):
        router.from_harness("a", stream, "resume")
    router.from_harness("b", "s3", "handshake")
    assert router.harness_gone("a") == ["s1", "s2"]
    assert router.from_executor("s1", "data") == Drop()
    assert router.executor_gone() == {"b": ["s3"]}
    assert len(router) == 0


KINDS = st.sampled_from(["resume", "handshake", "data", "ack", "heartbeat", "reset", None])
STEPS = st.lists(
    st.tuples(
        st.sampled_from(["harness", "executor", "harness_gone"]),
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from(["s1", "s2", "s3", "s4"]),
        KINDS,
        st.booleans(),
    ),
    max_size=80,
)


@given(STEPS)
def test_the_table_stays_consistent(steps: list[tuple[str, str, str, str | None, bool]]) -> None:
    """Whatever arrives, a stream has one owner, a harness never holds more than its limit,
    frames only ever reach a stream's owner, and nothing is left once everyone is gone."""
    router: StreamRouter[str] = StreamRouter(max_streams_per_harness=2)
    for side, harness, stream, kind, paused in steps:
        if side == "harness":
            before = router._owners.get(stream)
            verdict = router.from_harness(harness, stream, kind, handshakes_paused=paused)
            if before not in (None, harness):
                assert verdict in (Refuse(RESET_STREAM_IN_USE), Drop())
        elif side == "executor":
            owner = router._owners.get(stream)
            result = router.from_executor(stream, kind)
            assert result == Drop() if owner is None else result.harness == owner  # type: ignore[union-attr]
        else:
            router.harness_gone(harness)
        owners = router._owners
        for name, streams in router._streams.items():
            assert 0 < len(streams) <= 2
            assert all(owners[s] == name for s in streams)
        assert sum(len(v) for v in router._streams.values()) == len(owners)
        assert router._pending <= set(owners)
    router.executor_gone()
    assert len(router) == 0 and not router._pending
