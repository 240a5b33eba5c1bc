"""A rendezvous node's tunables and the codes it closes sockets and resets streams with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from codexexec.relay.limits import MAX_WEBSOCKET_MESSAGE_BYTES

# Reset reasons the rendezvous itself sends (cleartext, unauthenticated: receivers never show
# them; Codex's harness substitutes "Noise relay stream reset", its executor ignores the text).
RESET_HARNESS_GONE: Final = "rendezvous_harness_disconnected"
RESET_EXECUTOR_GONE: Final = "rendezvous_executor_disconnected"

# Websocket close codes (4000-4999: private use).
CLOSE_GOING_AWAY: Final = 1001
CLOSE_REPLACED: Final = 4000
CLOSE_SUPERSEDED: Final = 4001
CLOSE_EXECUTOR_GONE: Final = 4002
CLOSE_TOO_SLOW: Final = 4003
# A link between two rendezvous nodes lost frames (``links.py``).
CLOSE_FRAMES_LOST: Final = 4004


@dataclass(frozen=True)
class RendezvousOptions:
    """Tunables (seconds and bytes); the defaults suit Codex 0.169.0."""

    public_url: str | None = None  # base for relay URLs; default: the Host the caller used
    environment_url_ttl: float = 24 * 3600.0
    harness_url_ttl: float = 120.0
    authorization_ttl: float = 120.0
    max_message_bytes: int = MAX_WEBSOCKET_MESSAGE_BYTES
    outbox_frames: int = 256
    outbox_bytes: int = 4 * 1024 * 1024
    max_streams_per_harness: int = 1
    heartbeat: float | None = 30.0
    close_timeout: float = 5.0
    max_body_bytes: int = 64 * 1024
    # What one harness-token holder can make the rendezvous keep: outstanding one-time
    # authorizations per environment (issued, unspent, unexpired; a spent one stays a row
    # until it expires, so those are bounded by how fast the executor admits handshakes),
    # and harness relay sockets per executor socket (its executor serves at most 128
    # streams, Codex's harness opens one socket per stream).
    max_authorizations: int = 1024
    max_harness_sockets: int = 256
    agent_keys: Path | None = None  # agents admitted by AgentAssertion (agent_auth.py)
    # Stop relaying the handshakes of a harness credential that keeps failing them
    # (handshake_budget.py), so it cannot pause an executor for everyone else.
    pause_failing_credentials: bool = True
    # NATS URL of the bus joining this node to a cluster (``bus.py``); None: a lone node.
    bus: str | None = None
    # With a bus: heartbeat period, how long a silent node is trusted, and how
    # long a request to another node may take.
    bus_heartbeat: float = 1.0
    bus_node_timeout: float = 5.0
    bus_request_timeout: float = 2.0
