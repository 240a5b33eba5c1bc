"""Names of the environment-registry contract that both sides (client and rendezvous) share."""

from typing import Final

# security_profile values. Codex 0.169.0 speaks only the Noise hybrid profile; "legacy" is
# codexexec's cleartext relay, for peers that opt in explicitly.
NOISE_PROFILE: Final = "noise_hybrid_ik_v1"
LEGACY_PROFILE: Final = "legacy"

# The header on /validate naming the stream whose handshake is being validated
# (docs/relay-protocol.md §1.3).
STREAM_ID_HEADER: Final = "x-codex-noise-stream-id"

# noise_ik_v1: codexexec's classic Noise IK profile, for peers without ML-KEM.
CLASSIC_NOISE_PROFILE: Final = "noise_ik_v1"

# The public-key suite each Noise profile's keys carry.
NOISE_SUITES: Final = {
    NOISE_PROFILE: "Noise_hybridIK_X25519+MLKEM768_AESGCM_SHA256",
    CLASSIC_NOISE_PROFILE: "Noise_IK_25519_ChaChaPoly_BLAKE2s",
}
