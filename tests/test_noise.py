"""Tests for the Noise core: hybrid IK handshake, transport CipherState, keys, ML-KEM-768."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import mlkem
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codexexec.noise import mlkem768
from codexexec.noise.errors import NoiseError
from codexexec.noise.hybrid_ik import (
    MAX_HANDSHAKE_PAYLOAD_LEN,
    MESSAGE1_OVERHEAD,
    MESSAGE2_LEN,
    SHA256,
    SHA512,
    HandshakeError,
    HandshakeResult,
    HashFunction,
    HybridIKInitiator,
    HybridIKResponder,
    build_prologue,
    check_harness_key_authorization,
    protocol_name,
)
from codexexec.noise.keys import (
    NOISE_CHANNEL_SUITE,
    NoiseChannelPublicKey,
    NoiseKeyError,
    StaticIdentity,
    StaticPublicKey,
)
from codexexec.noise.transport import (
    MAX_NONCE,
    MAX_RECORD_PLAINTEXT_LEN,
    CipherState,
    NoiseDecryptError,
    NoiseTransport,
    NonceExhaustedError,
    RecordError,
)

VECTORS = Path("/work/shared/reference/vectors")
_LOCAL_VECTORS = Path(__file__).parent / "vectors"
if not VECTORS.is_dir() and _LOCAL_VECTORS.is_dir():  # pragma: no cover - alternative layout
    VECTORS = _LOCAL_VECTORS

FAST = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


class CounterRng:
    """Clatter's DummyRng: every output byte is ``counter++ mod 256``."""

    def __init__(self, start: int = 0xDEADBEEF) -> None:
        self.counter = start

    def __call__(self, count: int) -> bytes:
        out = bytes((self.counter + i) & 0xFF for i in range(count))
        self.counter += count
        return out


def _load_vector(name: str) -> dict[str, str]:
    path = VECTORS / name
    if not path.is_file():
        pytest.skip(f"vector file {path} not available")
    fields: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.startswith("#") or ": " not in line:
            continue
        key, value = line.split(": ", 1)
        fields[re.sub(r" \(.*\)$", "", key)] = value
    return fields


def _deterministic_parties(
    prologue: bytes, payload: bytes = b"", hash_function: HashFunction = SHA256
) -> tuple[HybridIKInitiator, HybridIKResponder, StaticIdentity, StaticIdentity, CounterRng]:
    """Both statics from one shared counter RNG, in Clatter's order."""
    rng = CounterRng()
    i_x, r_x, i_kem, r_kem = rng(32), rng(32), rng(64), rng(64)
    initiator_id = StaticIdentity.from_secret_bytes(i_x, i_kem)
    responder_id = StaticIdentity.from_secret_bytes(r_x, r_kem)
    initiator = HybridIKInitiator(
        initiator_id, responder_id.public_key, prologue, hash_function=hash_function, rng=rng
    )
    responder = HybridIKResponder(responder_id, prologue, hash_function=hash_function, rng=rng)
    return initiator, responder, initiator_id, responder_id, rng


def _handshake(
    prologue: bytes = b"p", payload: bytes = b"auth"
) -> tuple[HandshakeResult, HandshakeResult, StaticIdentity, StaticIdentity]:
    harness = StaticIdentity.generate()
    executor = StaticIdentity.generate()
    initiator = HybridIKInitiator(harness, executor.public_key, prologue)
    responder = HybridIKResponder(executor, prologue)
    assert responder.read_message1(initiator.write_message1(payload)) == payload
    message2, responder_result = responder.write_message2()
    initiator_result = initiator.read_message2(message2)
    return initiator_result, responder_result, harness, executor


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


# --------------------------------------------------------------------------------------------
# Vectors


def test_clatter_sha512_vector_byte_for_byte() -> None:
    """Rust Clatter 2.2.0 hybridIK (SHA-512) vector: every handshake and transport message."""
    v = _load_vector("clatter-hybrid-ik-sha512.txt")
    prologue = bytes.fromhex(v["prologue_hex"])
    assert protocol_name(SHA512) == b"Noise_hybridIK_25519+MLKEM768_AESGCM_SHA512"
    initiator, responder, initiator_id, _, _ = _deterministic_parties(
        prologue, hash_function=SHA512
    )

    message1 = initiator.write_message1(b"")
    assert message1.hex() == v["msg[0] initiator"]
    assert len(message1) == MESSAGE1_OVERHEAD == 3568
    assert initiator.handshake_hash.hex() == v["h[0]"]
    assert responder.read_message1(message1) == b""
    assert responder.handshake_hash.hex() == v["h[0]"]
    assert responder.remote_static == initiator_id.public_key

    message2, responder_result = responder.write_message2()
    assert message2.hex() == v["msg[1] responder"]
    assert len(message2) == MESSAGE2_LEN == 3424
    initiator_result = initiator.read_message2(message2)
    for result in (initiator_result, responder_result):
        assert result.handshake_hash.hex() == v["h[1]"] == v["handshake_hash"]

    plaintexts = [
        b"Scream without a sound",
        b"Flying off the handle",
        b"Eugene gene the dance machine",
    ]
    senders = [initiator_result, responder_result, initiator_result]
    receivers = [responder_result, initiator_result, responder_result]
    roles = ["initiator", "responder", "initiator"]
    for index, (pt, sender, receiver, role) in enumerate(
        zip(plaintexts, senders, receivers, roles, strict=True)
    ):
        record = sender.transport.encrypt(pt)
        assert record.hex() == v[f"transport[{index}] {role}"]
        assert receiver.transport.decrypt(record) == pt


def test_codex_sha256_vector() -> None:
    """Codex configuration vector (SHA-256, codex prologue, authorization payload).

    UNVERIFIED: this vector was produced by an independent Python reference that reproduces the
    Rust Clatter SHA-512 vector; it has not been checked against the codex binary itself. (The
    8-byte prologue length width it uses was later confirmed against codex 0.169.0.)
    """
    v = _load_vector("codex-hybrid-ik-sha256-unverified.txt")
    prologue = build_prologue("env-1", "registration-1", "stream-1")
    assert prologue.hex() == v["prologue_hex"]
    payload = v["handshake_payload"].encode()
    initiator, responder, harness, executor, _ = _deterministic_parties(prologue, payload)
    assert (
        base64.b64encode(harness.public_key.x25519).decode() == v["harness_static_x25519_pub_b64"]
    )
    assert (
        base64.b64encode(executor.public_key.x25519).decode() == v["executor_static_x25519_pub_b64"]
    )
    assert (
        hashlib.sha256(executor.public_key.mlkem768).hexdigest()
        == v["executor_static_mlkem768_pub_sha256"]
    )

    message1 = initiator.write_message1(payload)
    assert len(message1) == int(v["msg1_len"]) == 3568 + len(payload)
    assert hashlib.sha256(message1).hexdigest() == v["msg1_sha256"]
    assert message1.hex() == v["msg1_hex"]
    recovered = responder.read_message1(message1)
    assert check_harness_key_authorization(recovered) == "harness-key-authorization"

    message2, executor_result = responder.write_message2()
    assert len(message2) == int(v["msg2_len"])
    assert hashlib.sha256(message2).hexdigest() == v["msg2_sha256"]
    assert message2.hex() == v["msg2_hex"]
    harness_result = initiator.read_message2(message2)
    assert harness_result.handshake_hash.hex() == v["handshake_hash"]
    assert executor_result.handshake_hash.hex() == v["handshake_hash"]

    request = bytes.fromhex(v["record0_plaintext_hex"])
    record = harness_result.transport.encrypt(request)
    assert record.hex() == v["record0_ciphertext_hex"]
    assert executor_result.transport.decrypt(record) == request
    reply = bytes.fromhex(v["record0_executor_reply_plaintext_hex"])
    record = executor_result.transport.encrypt(reply)
    assert record.hex() == v["record0_executor_reply_ciphertext_hex"]
    assert harness_result.transport.decrypt(record) == reply


def test_prologue_upstream_vector() -> None:
    expected = (
        "0000000000000020636f6465782d657865632d7365727665722d72656c61792d6e6f6973652f7631"
        "0000000000000005656e762d31000000000000000e726567697374726174696f6e2d31"
        "000000000000000873747265616d2d31"
    )
    assert build_prologue("env-1", "registration-1", "stream-1").hex() == expected


# --------------------------------------------------------------------------------------------
# ML-KEM-768 pure Python vs cryptography


@pytest.mark.parametrize("seed_byte", [0, 7, 255])
def test_mlkem_keygen_matches_cryptography(seed_byte: int) -> None:
    seed = bytes([seed_byte]) * 32 + os.urandom(32)
    ek, dk = mlkem768.keygen_from_seed(seed)
    reference = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
    assert ek == reference.public_key().public_bytes_raw()
    assert len(dk) == mlkem768.DECAPSULATION_KEY_LEN


def test_mlkem_interoperates_with_cryptography() -> None:
    seed = os.urandom(64)
    ek, dk = mlkem768.keygen_from_seed(seed)
    reference = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
    for _ in range(3):
        shared, ciphertext = mlkem768.encapsulate(ek, os.urandom(32))
        assert len(ciphertext) == mlkem768.CIPHERTEXT_LEN
        assert reference.decapsulate(ciphertext) == shared
        shared2, ciphertext2 = reference.public_key().encapsulate()
        assert mlkem768.decapsulate(dk, ciphertext2) == shared2
    # Implicit rejection agrees too.
    tampered = _flip(ciphertext, 5)
    assert mlkem768.decapsulate(dk, tampered) == reference.decapsulate(tampered)
    assert mlkem768.decapsulate(dk, tampered) != shared


def test_mlkem_rejects_malformed_inputs() -> None:
    ek, dk = mlkem768.keygen_from_seed(bytes(64))
    with pytest.raises(mlkem768.MLKEMError):
        mlkem768.encapsulate(ek[:-1], bytes(32))
    with pytest.raises(mlkem768.MLKEMError):
        mlkem768.encapsulate(b"\xff" * 1184, bytes(32))  # coefficients not reduced mod q
    with pytest.raises(mlkem768.MLKEMError):
        mlkem768.encapsulate(ek, bytes(31))
    with pytest.raises(mlkem768.MLKEMError):
        mlkem768.decapsulate(dk, bytes(1087))
    with pytest.raises(mlkem768.MLKEMError):
        mlkem768.keygen_from_seed(bytes(63))


# --------------------------------------------------------------------------------------------
# Handshake behaviour


def test_round_trip_random_keys_both_directions() -> None:
    initiator_result, responder_result, harness, _ = _handshake(b"prologue", b"authz")
    assert responder_result.remote_static == harness.public_key
    assert initiator_result.handshake_hash == responder_result.handshake_hash
    for index in range(5):
        up = f"harness->executor {index}".encode()
        down = f"executor->harness {index}".encode()
        record = initiator_result.transport.encrypt(up)
        assert record != up and len(record) == len(up) + 16
        assert responder_result.transport.decrypt(record) == up
        assert initiator_result.transport.decrypt(responder_result.transport.encrypt(down)) == down
    assert initiator_result.transport.send_nonce == 5
    assert responder_result.transport.recv_nonce == 5


def test_wrong_pinned_responder_key_fails() -> None:
    harness = StaticIdentity.generate()
    executor = StaticIdentity.generate()
    impostor = StaticIdentity.generate()
    initiator = HybridIKInitiator(harness, impostor.public_key, b"p")
    responder = HybridIKResponder(executor, b"p")
    with pytest.raises(HandshakeError):
        responder.read_message1(initiator.write_message1(b"auth"))


def test_prologue_mismatch_fails() -> None:
    harness = StaticIdentity.generate()
    executor = StaticIdentity.generate()
    initiator = HybridIKInitiator(
        harness, executor.public_key, build_prologue("env-1", "registration-1", "stream-1")
    )
    responder = HybridIKResponder(executor, build_prologue("env-1", "registration-1", "stream-2"))
    with pytest.raises(HandshakeError):
        responder.read_message1(initiator.write_message1(b"auth"))


def test_handshake_size_limits() -> None:
    harness = StaticIdentity.generate()
    executor = StaticIdentity.generate()
    initiator = HybridIKInitiator(harness, executor.public_key, b"")
    with pytest.raises(HandshakeError, match="handshake payload is too large"):
        initiator.write_message1(bytes(65535))
    assert MAX_HANDSHAKE_PAYLOAD_LEN == 61967
    message1 = initiator.write_message1(bytes(MAX_HANDSHAKE_PAYLOAD_LEN))
    assert len(message1) == 65535
    responder = HybridIKResponder(executor, b"")
    with pytest.raises(HandshakeError, match="too large"):
        responder.read_message1(message1 + b"\x00")
    with pytest.raises(HandshakeError, match="too short"):
        HybridIKResponder(executor, b"").read_message1(message1[:3000])
    with pytest.raises(HandshakeError, match="too large"):
        initiator.read_message2(bytes(65536))


def test_handshake_state_machine_order_enforced() -> None:
    harness = StaticIdentity.generate()
    executor = StaticIdentity.generate()
    initiator = HybridIKInitiator(harness, executor.public_key, b"")
    responder = HybridIKResponder(executor, b"")
    with pytest.raises(HandshakeError):
        initiator.read_message2(bytes(MESSAGE2_LEN))
    with pytest.raises(HandshakeError):
        responder.write_message2()
    message1 = initiator.write_message1(b"")
    with pytest.raises(HandshakeError):
        initiator.write_message1(b"")
    responder.read_message1(message1)
    with pytest.raises(HandshakeError):
        responder.read_message1(message1)
    message2, _ = responder.write_message2()
    with pytest.raises(HandshakeError):
        responder.write_message2()
    initiator.read_message2(message2)
    with pytest.raises(HandshakeError):
        initiator.read_message2(message2)


def test_message2_trailing_bytes_rejected() -> None:
    initiator, responder, _, _, _ = _deterministic_parties(b"x")
    responder.read_message1(initiator.write_message1(b""))
    message2, _ = responder.write_message2()
    with pytest.raises(HandshakeError):
        initiator.read_message2(message2 + b"\x00" * 16)


def test_harness_key_authorization_checks() -> None:
    assert check_harness_key_authorization(b"a" * 4096) == "a" * 4096
    with pytest.raises(HandshakeError, match="too large"):
        check_harness_key_authorization(b"a" * 4097)
    with pytest.raises(HandshakeError, match="UTF-8"):
        check_harness_key_authorization(b"\xff\xfe")


@FAST
@given(data=st.data())
def test_bit_flip_in_message1_fails(data: st.DataObject) -> None:
    initiator, responder, _, _, _ = _deterministic_parties(b"flip", b"authz")
    message1 = initiator.write_message1(b"authz")
    bit = data.draw(st.integers(0, len(message1) * 8 - 1))
    with pytest.raises(HandshakeError):
        responder.read_message1(_flip(message1, bit))


@FAST
@given(data=st.data())
def test_bit_flip_in_message2_fails(data: st.DataObject) -> None:
    initiator, responder, _, _, _ = _deterministic_parties(b"flip")
    responder.read_message1(initiator.write_message1(b""))
    message2, _ = responder.write_message2()
    bit = data.draw(st.integers(0, len(message2) * 8 - 1))
    with pytest.raises(HandshakeError):
        initiator.read_message2(_flip(message2, bit))


# --------------------------------------------------------------------------------------------
# Transport


KEY = bytes(range(32))


@FAST
@given(plaintext=st.binary(max_size=200), data=st.data())
def test_bit_flip_in_transport_record_fails(plaintext: bytes, data: st.DataObject) -> None:
    record = CipherState(KEY).encrypt_with_ad(b"", plaintext)
    bit = data.draw(st.integers(0, len(record) * 8 - 1))
    receiver = NoiseTransport(send=CipherState(bytes(32)), recv=CipherState(KEY))
    with pytest.raises(NoiseDecryptError):
        receiver.decrypt(_flip(record, bit))


def test_bit_flip_in_real_transport_record_fails() -> None:
    initiator_result, responder_result, _, _ = _handshake()
    record = initiator_result.transport.encrypt(b"hello executor")
    with pytest.raises(NoiseDecryptError):
        responder_result.transport.decrypt(_flip(record, 3))


def test_replayed_record_rejected() -> None:
    initiator_result, responder_result, _, _ = _handshake()
    record = initiator_result.transport.encrypt(b"once")
    assert responder_result.transport.decrypt(record) == b"once"
    with pytest.raises(NoiseDecryptError, match="replayed"):
        responder_result.transport.decrypt(record)
    assert responder_result.transport.failed
    with pytest.raises(RecordError, match="already failed"):
        responder_result.transport.decrypt(initiator_result.transport.encrypt(b"next"))


def test_reordered_records_rejected() -> None:
    initiator_result, responder_result, _, _ = _handshake()
    first = initiator_result.transport.encrypt(b"first")
    second = initiator_result.transport.encrypt(b"second")
    with pytest.raises(NoiseDecryptError):
        responder_result.transport.decrypt(second)
    with pytest.raises(RecordError):
        responder_result.transport.decrypt(first)


def test_cipherstate_failure_does_not_advance_nonce() -> None:
    sender, receiver = CipherState(KEY), CipherState(KEY)
    first = sender.encrypt_with_ad(b"", b"a")
    second = sender.encrypt_with_ad(b"", b"b")
    with pytest.raises(NoiseDecryptError):
        receiver.decrypt_with_ad(b"", second)
    assert receiver.nonce == 0
    assert receiver.decrypt_with_ad(b"", first) == b"a"
    assert receiver.decrypt_with_ad(b"", second) == b"b"


@pytest.mark.parametrize("nonce", [0, 1, 256, 2**32, MAX_NONCE - 1])
def test_nonce_is_four_zero_bytes_then_big_endian_u64(nonce: int) -> None:
    record = CipherState(KEY, nonce=nonce).encrypt_with_ad(b"ad", b"payload")
    expected_nonce = b"\x00" * 4 + nonce.to_bytes(8, "big")
    assert record == AESGCM(KEY).encrypt(expected_nonce, b"payload", b"ad")


def test_nonce_exhaustion_raises_and_never_wraps() -> None:
    sender = CipherState(KEY, nonce=MAX_NONCE - 1)
    record = sender.encrypt_with_ad(b"", b"last")
    assert sender.nonce == MAX_NONCE
    with pytest.raises(NonceExhaustedError):
        sender.encrypt_with_ad(b"", b"one too many")
    assert sender.nonce == MAX_NONCE
    receiver = CipherState(KEY, nonce=MAX_NONCE - 1)
    assert receiver.decrypt_with_ad(b"", record) == b"last"
    with pytest.raises(NonceExhaustedError):
        receiver.decrypt_with_ad(b"", record)
    with pytest.raises(ValueError):
        CipherState(KEY, nonce=MAX_NONCE + 1)
    transport = NoiseTransport(send=CipherState(KEY, nonce=MAX_NONCE), recv=CipherState(KEY))
    with pytest.raises(NonceExhaustedError):
        transport.encrypt(b"x")


def test_transport_size_limits() -> None:
    sender = NoiseTransport(send=CipherState(KEY), recv=CipherState(KEY))
    receiver = NoiseTransport(send=CipherState(KEY), recv=CipherState(KEY))
    big = os.urandom(MAX_RECORD_PLAINTEXT_LEN)
    assert MAX_RECORD_PLAINTEXT_LEN == 61440
    assert receiver.decrypt(sender.encrypt(big)) == big
    with pytest.raises(RecordError, match="too large"):
        sender.encrypt(big + b"x")
    with pytest.raises(RecordError, match="too short"):
        receiver.decrypt(bytes(15))
    with pytest.raises(RecordError, match="too large"):
        receiver.decrypt(bytes(65536))
    # A validly encrypted record whose plaintext exceeds 60 KiB is refused after decryption.
    oversized = CipherState(KEY, nonce=1).encrypt_with_ad(b"", bytes(MAX_RECORD_PLAINTEXT_LEN + 1))
    with pytest.raises(RecordError, match="exceeds maximum"):
        receiver.decrypt(oversized)


# --------------------------------------------------------------------------------------------
# Keys


def test_public_key_json_exact_shape_and_round_trip() -> None:
    identity = StaticIdentity.generate()
    channel_key = identity.channel_public_key()
    obj = json.loads(channel_key.to_json())
    assert list(obj) == ["suite", "x25519_public_key", "mlkem768_public_key"]
    assert obj["suite"] == NOISE_CHANNEL_SUITE == "Noise_hybridIK_X25519+MLKEM768_AESGCM_SHA256"
    assert len(obj["x25519_public_key"]) == 44
    assert len(obj["mlkem768_public_key"]) == 1580
    assert base64.b64decode(obj["x25519_public_key"]) == identity.public_key.x25519
    parsed = NoiseChannelPublicKey.from_json(channel_key.to_json())
    assert parsed == channel_key
    assert parsed.decode() == identity.public_key


def test_public_key_json_rejects_unknown_missing_and_non_string_fields() -> None:
    obj = StaticIdentity.generate().channel_public_key().to_json_obj()
    with pytest.raises(NoiseKeyError, match="unknown field"):
        NoiseChannelPublicKey.from_json_obj({**obj, "extra": "x"})
    for field in obj:
        partial = {k: v for k, v in obj.items() if k != field}
        with pytest.raises(NoiseKeyError, match="missing field"):
            NoiseChannelPublicKey.from_json_obj(partial)
        with pytest.raises(NoiseKeyError, match="must be a string"):
            NoiseChannelPublicKey.from_json_obj({**obj, field: 1})
    with pytest.raises(NoiseKeyError):
        NoiseChannelPublicKey.from_json_obj(["not", "an", "object"])
    with pytest.raises(NoiseKeyError):
        NoiseChannelPublicKey.from_json("{not json")


def test_public_key_decode_checks_in_order() -> None:
    obj = StaticIdentity.generate().channel_public_key().to_json_obj()
    unknown_suite = NoiseChannelPublicKey.from_json_obj({**obj, "suite": "Noise_other"})
    with pytest.raises(NoiseKeyError, match="unsupported Noise channel suite"):
        unknown_suite.decode()
    x = obj["x25519_public_key"]
    cases = {
        x.rstrip("="): "invalid X25519 public key",  # missing padding
        x[:-2] + "B=": "invalid X25519 public key",  # non-zero trailing bits
        "!" + x[1:]: "invalid X25519 public key",
        base64.b64encode(bytes(31)).decode(): "invalid X25519 public key length",
    }
    for bad, message in cases.items():
        key = NoiseChannelPublicKey.from_json_obj({**obj, "x25519_public_key": bad})
        with pytest.raises(NoiseKeyError, match=rf"^{message}$"):
            key.decode()
    kem_urlsafe = obj["mlkem768_public_key"].replace("+", "-").replace("/", "_")
    if kem_urlsafe != obj["mlkem768_public_key"]:
        key = NoiseChannelPublicKey.from_json_obj({**obj, "mlkem768_public_key": kem_urlsafe})
        with pytest.raises(NoiseKeyError, match=r"^invalid ML-KEM-768 public key$"):
            key.decode()
    short_kem = base64.b64encode(bytes(1183)).decode()
    key = NoiseChannelPublicKey.from_json_obj({**obj, "mlkem768_public_key": short_kem})
    with pytest.raises(NoiseKeyError, match="invalid ML-KEM-768 public key length"):
        key.decode()
    with pytest.raises(NoiseKeyError):
        StaticPublicKey(x25519=bytes(31), mlkem768=bytes(1184))


def test_keys_never_appear_in_repr() -> None:
    rng = CounterRng(0x1234)
    x_secret, kem_seed = rng(32), rng(64)
    identity = StaticIdentity.from_secret_bytes(x_secret, kem_seed)
    peer = StaticIdentity.generate()
    channel_key = identity.channel_public_key()
    initiator = HybridIKInitiator(identity, peer.public_key, b"p")
    responder = HybridIKResponder(peer, b"p")
    responder.read_message1(initiator.write_message1(b"secret-authorization"))
    _, responder_result = responder.write_message2()
    objects: list[object] = [
        identity,
        identity.public_key,
        channel_key,
        initiator,
        responder,
        responder_result,
        responder_result.transport,
        CipherState(KEY),
    ]
    forbidden = [
        x_secret.hex(),
        kem_seed.hex(),
        KEY.hex(),
        channel_key.x25519_public_key,
        channel_key.mlkem768_public_key[:40],
        identity.public_key.x25519.hex(),
        repr(identity.public_key.x25519)[2:30],
        repr(x_secret)[2:30],
        repr(KEY)[2:30],
        "secret-authorization",
    ]
    for obj in objects:
        for text in (repr(obj), str(obj), f"{obj}"):
            for secret in forbidden:
                assert secret not in text, (type(obj).__name__, text)
    assert "<redacted>" in repr(identity)
    assert NOISE_CHANNEL_SUITE in repr(channel_key)
    for obj in (identity, CipherState(KEY), responder_result.transport):
        with pytest.raises(TypeError):
            pickle.dumps(obj)


def test_identity_generate_with_injected_rng_is_deterministic() -> None:
    first = StaticIdentity.generate(CounterRng(5))
    second = StaticIdentity.generate(CounterRng(5))
    assert first.public_key == second.public_key
    assert StaticIdentity.generate().public_key != first.public_key
    with pytest.raises(NoiseKeyError):
        StaticIdentity.from_secret_bytes(bytes(31), bytes(64))
    with pytest.raises(NoiseKeyError):
        StaticIdentity.from_secret_bytes(bytes(32), bytes(63))


# -- noise_ik_v1: classic IK through noiseprotocol ---------------------------------------------


def _classic_pair(
    prologue_i: bytes = b"p", prologue_r: bytes = b"p", pinned: bytes | None = None
) -> tuple[Any, Any, Any, Any]:
    from codexexec.noise.classic_ik import ClassicIdentity, ClassicIKInitiator, ClassicIKResponder

    executor, harness = ClassicIdentity.generate(), ClassicIdentity.generate()
    initiator = ClassicIKInitiator(harness, pinned or executor.public, prologue_i)
    responder = ClassicIKResponder(executor, prologue_r)
    return initiator, responder, executor, harness


def test_classic_handshake_both_ways_and_records() -> None:
    from codexexec.noise.classic_ik import decode_classic_public_key

    initiator, responder, _, harness = _classic_pair()
    assert responder.read_message1(initiator.write_message1(b"hka-1")) == b"hka-1"
    assert decode_classic_public_key(responder.remote_public_key_json()) == harness.public
    message2, executor_side = responder.write_message2()
    harness_side = initiator.read_message2(message2)
    assert harness_side.payload == b""
    record = harness_side.transport.encrypt(b"\x00\x00\x00\x02{}")
    assert executor_side.transport.decrypt(record) == b"\x00\x00\x00\x02{}"
    assert harness_side.transport.decrypt(executor_side.transport.encrypt(b"x" * 61_440))
    with pytest.raises(NoiseError):
        executor_side.transport.decrypt(record)  # a replay: the nonce has moved on


@pytest.mark.parametrize("case", ["prologue", "pinned"])
def test_classic_handshake_binds_prologue_and_executor_key(case: str) -> None:
    from codexexec.noise.classic_ik import ClassicIdentity

    if case == "prologue":
        initiator, responder, _, _ = _classic_pair(prologue_r=b"other stream")
    else:
        initiator, responder, _, _ = _classic_pair(pinned=ClassicIdentity.generate().public)
    with pytest.raises(HandshakeError):
        responder.read_message1(initiator.write_message1(b"hka"))


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_classic_bit_flip_in_either_handshake_message_fails(data: st.DataObject) -> None:
    initiator, responder, _, _ = _classic_pair()
    message1 = initiator.write_message1(b"hka")
    if data.draw(st.booleans()):
        bit = data.draw(st.integers(0, len(message1) * 8 - 1))
        with pytest.raises(HandshakeError):
            responder.read_message1(_flip(message1, bit))
        return
    responder.read_message1(message1)
    message2, _ = responder.write_message2()
    bit = data.draw(st.integers(0, len(message2) * 8 - 1))
    with pytest.raises(HandshakeError):
        initiator.read_message2(_flip(message2, bit))


def test_classic_public_key_json_is_strict() -> None:
    from codexexec.noise.classic_ik import ClassicIdentity, decode_classic_public_key
    from codexexec.noise.keys import NoiseKeyError

    good = ClassicIdentity.generate().public_key_json()
    assert set(good) == {"suite", "x25519_public_key"}
    for bad in (
        {**good, "extra": "1"},
        {"suite": good["suite"]},
        {**good, "suite": "Noise_hybridIK_X25519+MLKEM768_AESGCM_SHA256"},
        {**good, "x25519_public_key": good["x25519_public_key"].rstrip("=")},
        {**good, "x25519_public_key": "AAAA"},
    ):
        with pytest.raises(NoiseKeyError):
            decode_classic_public_key(bad)
