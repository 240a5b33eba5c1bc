"""Hard limits of the managed proxy: sizes, counts and timeouts (seconds).

Each bounds memory or time that a misbehaving (or hostile) client could otherwise
take; :class:`Limits` lets tests and embedders shorten the timeouts.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_HEADER_BYTES = 64 * 1024  # a request or response head, request line included
HEADER_TIMEOUT = 10.0  # whole head (or SOCKS handshake) must arrive within this: slowloris
KEEPALIVE_TIMEOUT = 60.0  # wait for the next request on a kept-alive connection
IDLE_TIMEOUT = 300.0  # tunnels and bodies with no traffic either way are cut
CONNECT_TIMEOUT = 10.0  # DNS excluded: all addresses of a name share this budget
DNS_TIMEOUT = 5.0
ASK_TIMEOUT = 30.0  # the decider's answer; no answer means deny
MAX_CONNECTIONS = 1024  # client connections over both listeners; more get a refusal
MAX_PENDING_ASKS = 256
LINGER_TIMEOUT = 1.0  # reading (and dropping) input after an error reply, before closing
MAX_LINGER_BYTES = 1024 * 1024
MAX_UDP_QUEUE = 64  # datagrams waiting for a decision, per association
MAX_UDP_DESTINATIONS = 1024  # remembered decisions, per association


@dataclass(frozen=True, slots=True)
class Limits:
    header_timeout: float = HEADER_TIMEOUT
    keepalive_timeout: float = KEEPALIVE_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    connect_timeout: float = CONNECT_TIMEOUT
    dns_timeout: float = DNS_TIMEOUT
    max_connections: int = MAX_CONNECTIONS
    max_header_bytes: int = MAX_HEADER_BYTES
