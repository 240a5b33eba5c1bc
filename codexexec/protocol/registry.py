"""Names of the environment-registry contract that both sides (client and rendezvous) share."""

from typing import Final

# security_profile values. Codex 0.169.0 speaks only the Noise hybrid profile; "legacy" is
# codexexec's cleartext relay, for peers that opt in explicitly.
NOISE_PROFILE: Final = "noise_hybrid_ik_v1"
LEGACY_PROFILE: Final = "legacy"

# The header on /validate naming the stream whose handshake is being validated (verified §1.3).
STREAM_ID_HEADER: Final = "x-codex-noise-stream-id"
