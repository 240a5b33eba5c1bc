"""Constants of the remote relay, each with the section of docs/relay-protocol.md (§ below)
that says where its value comes from: the real Codex 0.169.0 binary where it was observed,
Codex's source where it was not, or codexexec's own choice where 0.169.0 has no such limit.
"""

from typing import Final

# -- frames ----------------------------------------------------------------------------------

# RelayMessageFrame.version; anything else is "unsupported relay message frame version N".
# §3.1 (every frame), §3.3 (version 2 dropped).
RELAY_FRAME_VERSION: Final = 1

# Largest websocket message (= one relay frame) either side sends or accepts: 256 KiB.
# §3.1.
MAX_WEBSOCKET_MESSAGE_BYTES: Final = 256 * 1024

# Longest stream id, in UTF-8 bytes. §3.1: only revisions after 0.169.0
# enforce it; 0.169.0 (like merged main) checks only that the id is not blank. codexexec
# enforces it for its own peers (strict validation); UUIDv4 ids (36 bytes) satisfy both.
MAX_STREAM_ID_BYTES: Final = 128

# Longest reset reason, in UTF-8 bytes. Like the stream-id cap (§3.1), not 0.169.0's:
# it accepts any non-empty reason. Enforced under strict validation.
MAX_RESET_REASON_BYTES: Final = 256

# The one reason Codex 0.169.0 puts in every Reset it sends (§7); codexexec uses it for every
# Reset too.
RESET_REASON: Final = "noise_relay_protocol_error"

# -- sequencing (0.169 dialect: seq from 0, no acks, no retransmission) ------------------------

# First Data seq of every stream, in both directions. §4.
FIRST_SEQ: Final = 0

# Largest seq; the counter never wraps, exhausting it is a stream error (u32). §4.
MAX_SEQ: Final = 0xFFFF_FFFF

# Reorder window: with next expected seq n, seqs n..n+64 are accepted (n+64 is buffered) and
# n+65 resets the stream. §4.
MAX_REORDER_DISTANCE: Final = 64

# Frames one stream may hold out of order. The expected seq is never buffered, so the window
# above bounds this to 64. §4, §8.
MAX_PENDING_FRAMES: Final = MAX_REORDER_DISTANCE

# Ciphertext bytes one stream may hold out of order: 1 MiB (Codex's source; not exercised
# against the binary). §4.
MAX_PENDING_BYTES: Final = 1024 * 1024

# -- executor stream table ---------------------------------------------------------------------

# Active streams multiplexed on one executor socket. §3.2, §5.
MAX_ACTIVE_STREAMS: Final = 128

# Recently retired stream ids remembered (FIFO), so late frames for a closed stream are dropped
# and ids are not reused. 0.169.0 keeps no such list (Data after a harness Reset gets a
# Reset, §3.3); codexexec keeps it (§8).
MAX_RETIRED_STREAM_IDS: Final = 1024

# Registry /validate calls in flight at once per socket. §5.
MAX_PENDING_HANDSHAKE_VALIDATIONS: Final = 32
# Handshakes admitted and not yet answered per socket, validating or waiting for one of those
# calls. 0.169.0 Resets the 33rd at once; codexexec lets it wait its turn (within the
# validation deadline), so a harness opening many streams at once is served, up to a
# socket's 128 streams (docs/relay-protocol.md §5).
MAX_PENDING_HANDSHAKES: Final = 128

# /validate deadline: Reset at exactly 10.0 s. §1.4.
VALIDATION_TIMEOUT_SECONDS: Final = 10.0

# Charged handshake failures on one socket before handshakes pause. §5: the 8th failure
# pauses new handshakes for ~10 s, and the socket stays open (as 0.169.0 does).
MAX_FAILED_HANDSHAKES: Final = 8
HANDSHAKE_COOLDOWN_SECONDS: Final = 10.0

# Harness authorization carried in handshake message 1: UTF-8, at most 4096 bytes.
# §2.2, §5.
MAX_HARNESS_AUTHORIZATION_BYTES: Final = 4096

# Inbound events queued per virtual stream; a full queue fails that stream alone (Codex's
# source).
STREAM_INBOUND_QUEUE_CAPACITY: Final = 128

# -- records inside the encrypted stream -----------------------------------------------------

# Plaintext bytes per Noise transport record (one Data frame); 61441 -> Reset. §2.2, §4.
MAX_RECORD_PLAINTEXT_BYTES: Final = 61_440
# AES-GCM tag appended to each record. §2.2.
RECORD_TAG_BYTES: Final = 16
# One JSON-RPC message inside the stream (4-byte BE length prefix, 1..64 MiB). §3.2.
MAX_JSONRPC_MESSAGE_BYTES: Final = 64 * 1024 * 1024

# -- keepalive and reconnect -----------------------------------------------------------------

# Websocket Ping (empty payload) every 30 s, first at connect + 30 s. §6.
PING_INTERVAL_SECONDS: Final = 30.0
# No Pong within 60 s of a ping -> drop the socket (reason pong_timeout). §6.
PONG_TIMEOUT_SECONDS: Final = 60.0
# After the pong deadline the harness reads at most this many queued frames. §6.
POST_DEADLINE_DRAIN_FRAMES: Final = 32

# Executor reconnect backoff: 1 s doubling to 30 s, reset after a successful connect
# (§1.2, §8). 0.169.0 adds jitter (~0.6-0.75 s after a drop, then ~0.9 s, ~1.4 s, ...),
# so its first delay may be below 1 s.
RECONNECT_BACKOFF_INITIAL_SECONDS: Final = 1.0
RECONNECT_BACKOFF_MAX_SECONDS: Final = 30.0
