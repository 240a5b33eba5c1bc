"""Pure-Python ML-KEM-768 (FIPS 203), used only where randomness must be injected.

The ``cryptography`` package implements ML-KEM-768 but cannot take caller-supplied
encapsulation randomness, which deterministic test vectors need. This module implements the
FIPS 203 internal algorithms (``KeyGen_internal``, ``Encaps_internal``, ``Decaps_internal``)
directly. It is slow (tens of milliseconds per operation) and not constant time, so production
code paths use ``cryptography``; the test suite checks that both agree byte for byte.
"""

from __future__ import annotations

import hashlib

from codexexec.noise.errors import NoiseError

__all__ = [
    "CIPHERTEXT_LEN",
    "DECAPSULATION_KEY_LEN",
    "ENCAPSULATION_KEY_LEN",
    "SEED_LEN",
    "SHARED_SECRET_LEN",
    "MLKEMError",
    "decapsulate",
    "encapsulate",
    "keygen_from_seed",
]

_Q = 3329
_N = 256
_K = 3
_ETA1 = 2
_ETA2 = 2
_DU = 10
_DV = 4

ENCAPSULATION_KEY_LEN = 384 * _K + 32  # 1184
DECAPSULATION_KEY_LEN = 768 * _K + 96  # 2400
CIPHERTEXT_LEN = 32 * (_DU * _K + _DV)  # 1088
SHARED_SECRET_LEN = 32
SEED_LEN = 64  # d || z

Poly = list[int]


class MLKEMError(NoiseError, ValueError):
    """Raised for malformed ML-KEM inputs."""


def _bitrev7(value: int) -> int:
    return int(f"{value:07b}"[::-1], 2)


_ZETAS = [pow(17, _bitrev7(i), _Q) for i in range(128)]
_GAMMAS = [pow(17, 2 * _bitrev7(i) + 1, _Q) for i in range(128)]
_INV_128 = 3303  # 128^-1 mod q


def _ntt(poly: Poly) -> Poly:
    f = list(poly)
    i = 1
    length = 128
    while length >= 2:
        for start in range(0, _N, 2 * length):
            zeta = _ZETAS[i]
            i += 1
            for j in range(start, start + length):
                t = zeta * f[j + length] % _Q
                f[j + length] = (f[j] - t) % _Q
                f[j] = (f[j] + t) % _Q
        length //= 2
    return f


def _ntt_inverse(poly: Poly) -> Poly:
    f = list(poly)
    i = 127
    length = 2
    while length <= 128:
        for start in range(0, _N, 2 * length):
            zeta = _ZETAS[i]
            i -= 1
            for j in range(start, start + length):
                t = f[j]
                f[j] = (t + f[j + length]) % _Q
                f[j + length] = zeta * (f[j + length] - t) % _Q
        length *= 2
    return [x * _INV_128 % _Q for x in f]


def _multiply_ntts(f: Poly, g: Poly) -> Poly:
    h = [0] * _N
    for i in range(128):
        a0, a1 = f[2 * i], f[2 * i + 1]
        b0, b1 = g[2 * i], g[2 * i + 1]
        h[2 * i] = (a0 * b0 + a1 * b1 * _GAMMAS[i]) % _Q
        h[2 * i + 1] = (a0 * b1 + a1 * b0) % _Q
    return h


def _add(f: Poly, g: Poly) -> Poly:
    return [(a + b) % _Q for a, b in zip(f, g, strict=True)]


def _sub(f: Poly, g: Poly) -> Poly:
    return [(a - b) % _Q for a, b in zip(f, g, strict=True)]


def _byte_encode(poly: Poly, d: int) -> bytes:
    acc = 0
    for index, coeff in enumerate(poly):
        acc |= coeff << (index * d)
    return acc.to_bytes(32 * d, "little")


def _byte_decode(data: bytes, d: int) -> Poly:
    acc = int.from_bytes(data, "little")
    mask = (1 << d) - 1
    out = [(acc >> (index * d)) & mask for index in range(_N)]
    if d == 12:
        out = [x % _Q for x in out]
    return out


def _compress(poly: Poly, d: int) -> Poly:
    mask = (1 << d) - 1
    return [(((x << (d + 1)) + _Q) // (2 * _Q)) & mask for x in poly]


def _decompress(poly: Poly, d: int) -> Poly:
    return [(y * 2 * _Q + (1 << d)) >> (d + 1) for y in poly]


def _sample_ntt(seed: bytes) -> Poly:
    out: Poly = []
    length = 840
    while True:
        stream = hashlib.shake_128(seed).digest(length)
        out = []
        for pos in range(0, length - 2, 3):
            c0, c1, c2 = stream[pos], stream[pos + 1], stream[pos + 2]
            d1 = c0 + 256 * (c1 % 16)
            d2 = (c1 // 16) + 16 * c2
            if d1 < _Q:
                out.append(d1)
                if len(out) == _N:
                    return out
            if d2 < _Q:
                out.append(d2)
                if len(out) == _N:
                    return out
        length *= 2


def _cbd(data: bytes, eta: int) -> Poly:
    bits = int.from_bytes(data, "little")
    out: Poly = []
    for i in range(_N):
        base = 2 * i * eta
        x = sum((bits >> (base + j)) & 1 for j in range(eta))
        y = sum((bits >> (base + eta + j)) & 1 for j in range(eta))
        out.append((x - y) % _Q)
    return out


def _prf(eta: int, seed: bytes, counter: int) -> bytes:
    return hashlib.shake_256(seed + bytes([counter])).digest(64 * eta)


def _g(data: bytes) -> tuple[bytes, bytes]:
    digest = hashlib.sha3_512(data).digest()
    return digest[:32], digest[32:]


def _h(data: bytes) -> bytes:
    return hashlib.sha3_256(data).digest()


def _j(data: bytes) -> bytes:
    return hashlib.shake_256(data).digest(32)


def _matrix(rho: bytes) -> list[list[Poly]]:
    return [[_sample_ntt(rho + bytes([j, i])) for j in range(_K)] for i in range(_K)]


def _pke_keygen(d: bytes) -> tuple[bytes, bytes]:
    rho, sigma = _g(d + bytes([_K]))
    a_hat = _matrix(rho)
    counter = 0
    s: list[Poly] = []
    for _ in range(_K):
        s.append(_cbd(_prf(_ETA1, sigma, counter), _ETA1))
        counter += 1
    e: list[Poly] = []
    for _ in range(_K):
        e.append(_cbd(_prf(_ETA1, sigma, counter), _ETA1))
        counter += 1
    s_hat = [_ntt(p) for p in s]
    e_hat = [_ntt(p) for p in e]
    t_hat: list[Poly] = []
    for i in range(_K):
        acc = e_hat[i]
        for j in range(_K):
            acc = _add(acc, _multiply_ntts(a_hat[i][j], s_hat[j]))
        t_hat.append(acc)
    ek = b"".join(_byte_encode(p, 12) for p in t_hat) + rho
    dk = b"".join(_byte_encode(p, 12) for p in s_hat)
    return ek, dk


def _pke_encrypt(ek: bytes, message: bytes, randomness: bytes) -> bytes:
    t_hat = [_byte_decode(ek[384 * i : 384 * (i + 1)], 12) for i in range(_K)]
    rho = ek[384 * _K :]
    a_hat = _matrix(rho)
    counter = 0
    y: list[Poly] = []
    for _ in range(_K):
        y.append(_cbd(_prf(_ETA1, randomness, counter), _ETA1))
        counter += 1
    e1: list[Poly] = []
    for _ in range(_K):
        e1.append(_cbd(_prf(_ETA2, randomness, counter), _ETA2))
        counter += 1
    e2 = _cbd(_prf(_ETA2, randomness, counter), _ETA2)
    y_hat = [_ntt(p) for p in y]
    u: list[Poly] = []
    for i in range(_K):
        acc = [0] * _N
        for j in range(_K):
            acc = _add(acc, _multiply_ntts(a_hat[j][i], y_hat[j]))
        u.append(_add(_ntt_inverse(acc), e1[i]))
    mu = _decompress(_byte_decode(message, 1), 1)
    acc = [0] * _N
    for i in range(_K):
        acc = _add(acc, _multiply_ntts(t_hat[i], y_hat[i]))
    v = _add(_add(_ntt_inverse(acc), e2), mu)
    c1 = b"".join(_byte_encode(_compress(p, _DU), _DU) for p in u)
    c2 = _byte_encode(_compress(v, _DV), _DV)
    return c1 + c2


def _pke_decrypt(dk: bytes, ciphertext: bytes) -> bytes:
    step = 32 * _DU
    u = [
        _decompress(_byte_decode(ciphertext[step * i : step * (i + 1)], _DU), _DU)
        for i in range(_K)
    ]
    v = _decompress(_byte_decode(ciphertext[step * _K :], _DV), _DV)
    s_hat = [_byte_decode(dk[384 * i : 384 * (i + 1)], 12) for i in range(_K)]
    acc = [0] * _N
    for i in range(_K):
        acc = _add(acc, _multiply_ntts(s_hat[i], _ntt(u[i])))
    w = _sub(v, _ntt_inverse(acc))
    return _byte_encode(_compress(w, 1), 1)


def keygen_from_seed(seed: bytes) -> tuple[bytes, bytes]:
    """Derive ``(encapsulation_key, decapsulation_key)`` from a 64-byte seed ``d || z``.

    Uses the same seed layout as ``MLKEM768PrivateKey.from_seed_bytes``.
    """
    if len(seed) != SEED_LEN:
        raise MLKEMError("ML-KEM-768 seed must be 64 bytes")
    d, z = seed[:32], seed[32:]
    ek, dk_pke = _pke_keygen(d)
    return ek, dk_pke + ek + _h(ek) + z


def _check_encapsulation_key(ek: bytes) -> None:
    if len(ek) != ENCAPSULATION_KEY_LEN:
        raise MLKEMError("ML-KEM-768 encapsulation key must be 1184 bytes")
    for i in range(_K):
        chunk = ek[384 * i : 384 * (i + 1)]
        if _byte_encode(_byte_decode(chunk, 12), 12) != chunk:
            raise MLKEMError("ML-KEM-768 encapsulation key is not reduced modulo q")


def encapsulate(ek: bytes, message: bytes) -> tuple[bytes, bytes]:
    """Encapsulate to ``ek`` with the 32-byte randomness ``message``.

    Returns ``(shared_secret, ciphertext)`` (the same order as ``cryptography``).
    """
    _check_encapsulation_key(ek)
    if len(message) != 32:
        raise MLKEMError("ML-KEM-768 encapsulation randomness must be 32 bytes")
    shared, randomness = _g(message + _h(ek))
    return shared, _pke_encrypt(ek, message, randomness)


def decapsulate(dk: bytes, ciphertext: bytes) -> bytes:
    """Recover the shared secret (implicit rejection on a bad ciphertext)."""
    if len(dk) != DECAPSULATION_KEY_LEN:
        raise MLKEMError("ML-KEM-768 decapsulation key must be 2400 bytes")
    if len(ciphertext) != CIPHERTEXT_LEN:
        raise MLKEMError("ML-KEM-768 ciphertext must be 1088 bytes")
    dk_pke = dk[: 384 * _K]
    ek = dk[384 * _K : 768 * _K + 32]
    ek_hash = dk[768 * _K + 32 : 768 * _K + 64]
    z = dk[768 * _K + 64 :]
    if _h(ek) != ek_hash:
        raise MLKEMError("ML-KEM-768 decapsulation key failed its hash check")
    message = _pke_decrypt(dk_pke, ciphertext)
    shared, randomness = _g(message + ek_hash)
    rejected = _j(z + ciphertext)
    if _pke_encrypt(ek, message, randomness) != ciphertext:
        return rejected
    return shared
