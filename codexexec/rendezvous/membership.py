"""Which other rendezvous nodes are alive, from the heartbeats they publish on the bus.

A node killed outright sends no goodbye; the links other nodes hold with it are torn down
once it has been silent for ``timeout`` seconds. Pure: the caller passes the time in.
"""

from __future__ import annotations

# Nodes remembered at once; a bus flooded with made-up node ids cannot grow this without end.
MAX_NODES = 4096


class Membership:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._last_heard: dict[str, float] = {}

    def __contains__(self, node: str) -> bool:
        return node in self._last_heard

    def __len__(self) -> int:
        return len(self._last_heard)

    def heard(self, node: str, now: float) -> None:
        if node not in self._last_heard and len(self._last_heard) >= MAX_NODES:
            return
        self._last_heard[node] = now

    def expired(self, now: float) -> list[str]:
        """Nodes silent for longer than the timeout, forgotten as they are returned."""
        gone = sorted(n for n, last in self._last_heard.items() if now - last > self.timeout)
        for node in gone:
            del self._last_heard[node]
        return gone
