"""The two Noise security profiles behind one shape, for the relay code that runs them.

``noise_hybrid_ik_v1`` (Codex's, the default): X25519 + ML-KEM-768 hybrid IK, AES-GCM, SHA-256.
``noise_ik_v1`` (codexexec's, for peers without ML-KEM): classic IK, ChaChaPoly, BLAKE2s.
Both bind the same prologue and carry the same payloads; only the keys and ciphers differ.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from codexexec.noise.hybrid_ik import HybridIKInitiator, HybridIKResponder
from codexexec.noise.keys import NoiseChannelPublicKey, StaticIdentity
from codexexec.protocol.registry import CLASSIC_NOISE_PROFILE, NOISE_PROFILE

if TYPE_CHECKING:
    # The classic profile's module (and the noise library under it) loads only when that
    # profile is used: the default one needs neither.
    from codexexec.noise.classic_ik import ClassicIdentity

PROFILES = (NOISE_PROFILE, CLASSIC_NOISE_PROFILE)


class RecordCipher(Protocol):
    """A finished handshake's transport: one record in, one record out, strictly in order."""

    def encrypt(self, plaintext: bytes) -> bytes: ...

    def decrypt(self, ciphertext: bytes) -> bytes: ...


class Finished(Protocol):
    @property
    def transport(self) -> RecordCipher: ...

    @property
    def payload(self) -> bytes: ...


class Responder(Protocol):
    def read_message1(self, message: bytes) -> bytes: ...

    def remote_public_key_json(self) -> dict[str, str]: ...

    def write_message2(self, payload: bytes = b"") -> tuple[bytes, Finished]: ...


class Initiator(Protocol):
    def write_message1(self, payload: bytes) -> bytes: ...

    def read_message2(self, message: bytes) -> Finished: ...


class NoiseParty(Protocol):
    """One side's static identity under one profile."""

    @property
    def profile(self) -> str: ...

    def public_key_json(self) -> dict[str, str]: ...

    def responder(self, prologue: bytes) -> Responder: ...

    def initiator(self, executor_public_key: Any, prologue: bytes) -> Initiator: ...


class HybridParty(msgspec.Struct, frozen=True):
    identity: StaticIdentity
    profile: str = NOISE_PROFILE

    def __repr__(self) -> str:  # the identity holds private keys
        return f"HybridParty(profile={self.profile!r})"

    def public_key_json(self) -> dict[str, str]:
        return self.identity.channel_public_key().to_json_obj()

    def responder(self, prologue: bytes) -> Responder:
        return HybridIKResponder(self.identity, prologue)

    def initiator(self, executor_public_key: Any, prologue: bytes) -> Initiator:
        key = NoiseChannelPublicKey.from_json_obj(executor_public_key).decode()
        return HybridIKInitiator(self.identity, key, prologue)


class ClassicParty(msgspec.Struct, frozen=True):
    identity: ClassicIdentity
    profile: str = CLASSIC_NOISE_PROFILE

    def __repr__(self) -> str:  # the identity holds private keys
        return f"ClassicParty(profile={self.profile!r})"

    def public_key_json(self) -> dict[str, str]:
        return self.identity.public_key_json()

    def responder(self, prologue: bytes) -> Responder:
        from codexexec.noise.classic_ik import ClassicIKResponder

        return ClassicIKResponder(self.identity, prologue)

    def initiator(self, executor_public_key: Any, prologue: bytes) -> Initiator:
        from codexexec.noise.classic_ik import ClassicIKInitiator, decode_classic_public_key

        key = decode_classic_public_key(executor_public_key)
        return ClassicIKInitiator(self.identity, key, prologue)


def new_party(profile: str) -> NoiseParty:
    """A fresh identity for ``profile`` (one of PROFILES)."""
    if profile == CLASSIC_NOISE_PROFILE:
        from codexexec.noise.classic_ik import ClassicIdentity

        return ClassicParty(ClassicIdentity.generate())
    if profile == NOISE_PROFILE:
        return HybridParty(StaticIdentity.generate())
    raise ValueError(f"unknown Noise security profile `{profile}`")
