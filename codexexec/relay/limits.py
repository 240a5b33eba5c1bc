"""Constants of the remote relay, each with where its value comes from.

Sources, in order of authority:

* ``verified`` - /work/shared/reference/verified-codex-0.169.md: the real Codex 0.169.0 binary,
  observed on the wire. It outranks everything else.
* ``noise`` - noise-relay.md (merged Codex ``main`` through 2026-07-06), section given.
* ``protocol`` - exec-server-protocol.md, section given.
* ``codexexec`` - our own choice where 0.169.0 has no such limit or it could not be observed.
"""

from typing import Final

# -- frames ----------------------------------------------------------------------------------

# RelayMessageFrame.version; anything else is "unsupported relay message frame version N".
# verified §3.1 (every frame) and §3.3 (version 2 dropped).
RELAY_FRAME_VERSION: Final = 1

# Largest websocket message (= one relay frame) either side sends or accepts: 256 KiB.
# noise §4.1 (MAX_NOISE_RELAY_WEBSOCKET_MESSAGE_SIZE), protocol §3.7.
MAX_WEBSOCKET_MESSAGE_BYTES: Final = 256 * 1024

# Longest stream id, in UTF-8 bytes. noise §4.2 / protocol §3.2: only PR-branch revisions
# enforce it; 0.169.0 (like merged main) checks only that the id is not blank. codexexec
# enforces it for its own peers (strict validation); UUIDv4 ids (36 bytes) satisfy both.
MAX_STREAM_ID_BYTES: Final = 128

# Longest reset reason, in UTF-8 bytes. Branch-only like the stream-id cap (noise §4.2, §12
# item 7); 0.169.0 accepts any non-empty reason. Enforced under strict validation.
MAX_RESET_REASON_BYTES: Final = 256

# The one reason Codex 0.169.0 puts in every Reset it sends (verified §4); codexexec uses it
# for every Reset too. Older PR branches used "secure_relay_protocol_error" (protocol §3.8).
RESET_REASON: Final = "noise_relay_protocol_error"

# -- sequencing (0.169 dialect: seq from 0, no acks, no retransmission) ------------------------

# First Data seq of every stream, in both directions. verified §3.2 (21 of 21 streams).
FIRST_SEQ: Final = 0

# Largest seq; the counter never wraps, exhausting it is a stream error. noise §4.4 (u32).
MAX_SEQ: Final = 0xFFFF_FFFF

# Reorder window: with next expected seq n, seqs n..n+64 are accepted (n+64 is buffered) and
# n+65 resets the stream. verified §3.2 ("seq 64 is buffered; seq 65 -> Reset"),
# noise §4.6 (MAX_REORDER_DISTANCE = 64).
MAX_REORDER_DISTANCE: Final = 64

# Frames one stream may hold out of order. The expected seq is never buffered, so the window
# above bounds this to 64. Also the cap of a PR-branch revision (noise §4.9 "pending frames").
MAX_PENDING_FRAMES: Final = MAX_REORDER_DISTANCE

# Ciphertext bytes one stream may hold out of order: 1 MiB. noise §4.6 (MAX_PENDING_BYTES in
# main); not exercised in the verified run.
MAX_PENDING_BYTES: Final = 1024 * 1024

# -- executor stream table ---------------------------------------------------------------------

# Active streams multiplexed on one executor socket. noise §4.3 (MAX_ACTIVE_NOISE_RELAY_STREAMS),
# protocol §3.8.
MAX_ACTIVE_STREAMS: Final = 128

# Recently retired stream ids remembered (FIFO), so late frames for a closed stream are dropped
# and ids are not reused. noise §9.3 (PR #31457, MAX_RECENT_RETIRED_NOISE_RELAY_STREAMS) and
# protocol §3.8; 0.169.0 keeps no such list (verified §3.3: Data after a harness Reset gets a
# Reset). codexexec keeps it.
MAX_RETIRED_STREAM_IDS: Final = 1024

# Handshakes waiting for registry /validate at once. noise §4.5, protocol §3.8.
MAX_PENDING_HANDSHAKE_VALIDATIONS: Final = 32

# /validate deadline: Reset at exactly 10.0 s. verified §1.4.
VALIDATION_TIMEOUT_SECONDS: Final = 10.0

# Charged handshake failures on one socket before handshakes pause. verified §4: the 8th
# failure pauses new handshakes for ~10 s (the socket stays open; noise §4.5's "close the
# socket" is not what 0.169.0 does).
MAX_FAILED_HANDSHAKES: Final = 8
HANDSHAKE_COOLDOWN_SECONDS: Final = 10.0

# Harness authorization carried in handshake message 1: UTF-8, at most 4096 bytes.
# noise §4.5 step 7, protocol §3.8.
MAX_HARNESS_AUTHORIZATION_BYTES: Final = 4096

# Inbound events queued per virtual stream; a full queue fails that stream alone. noise §4.3.
STREAM_INBOUND_QUEUE_CAPACITY: Final = 128

# -- records inside the encrypted stream -----------------------------------------------------

# Plaintext bytes per Noise transport record (one Data frame); 61441 -> Reset. verified §3.2.
MAX_RECORD_PLAINTEXT_BYTES: Final = 61_440
# AES-GCM tag appended to each record. noise §2.6.
RECORD_TAG_BYTES: Final = 16
# One JSON-RPC message inside the stream (4-byte BE length prefix, 1..64 MiB). noise §4.4.
MAX_JSONRPC_MESSAGE_BYTES: Final = 64 * 1024 * 1024

# -- keepalive and reconnect -----------------------------------------------------------------

# Websocket Ping (empty payload) every 30 s, first at connect + 30 s. verified §4.
PING_INTERVAL_SECONDS: Final = 30.0
# No Pong within 60 s of a ping -> drop the socket (reason pong_timeout). verified §4.
PONG_TIMEOUT_SECONDS: Final = 60.0
# After the pong deadline the harness reads at most this many queued frames. noise §5.2.
POST_DEADLINE_DRAIN_FRAMES: Final = 32

# Executor reconnect backoff: 1 s doubling to 30 s, reset after a successful connect
# (noise §4.9, §6.1). verified §1.2 saw 0.169.0 add jitter (~0.6-0.75 s after a drop,
# then ~0.9 s, ~1.4 s, ...), so the first delay may be below 1 s there.
RECONNECT_BACKOFF_INITIAL_SECONDS: Final = 1.0
RECONNECT_BACKOFF_MAX_SECONDS: Final = 30.0
