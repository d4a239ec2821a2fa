"""Is a DKIM record's public key usable by a verifier (RFC 6376 §3.6.1, RFC 8463, RFC 8301)?

Judged without an expected key (``dkimbot check`` without one, or another signer's
selector): the ``p=`` value must decode to a key of its ``k=`` type, an RSA key at least
1024 bits (RFC 8301 §3.2: verifiers MUST NOT accept shorter), an Ed25519 key exactly 32
octets (RFC 8463 §4). A truncated paste usually still looks like base64; only decoding
the key shows it is cut. Pure: bytes in, a verdict out.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key

MIN_RSA_BITS = 1024


@dataclass(frozen=True)
class KeyProblem:
    kind: str      # "unparsable" | "too_short" | "wrong_type"
    detail: str    # English, for the evidence
    bits: int | None = None


def _decode(p: str) -> bytes | None:
    try:
        return base64.b64decode(p, validate=True)
    except (binascii.Error, ValueError):
        return None


def _rsa_bits(der: bytes) -> int | None:
    """Bits of an RSA key given as SubjectPublicKeyInfo (the DKIM form) or, as some
    signers publish it, a bare PKCS#1 RSAPublicKey (cryptography reads both)."""
    try:
        key = load_der_public_key(der)
    except (ValueError, UnsupportedAlgorithm):
        return None
    return key.key_size if isinstance(key, rsa.RSAPublicKey) else None


def public_key_problem(k: str, p: str) -> KeyProblem | None:
    """None when ``p`` (whitespace already removed) is a usable key of type ``k``."""
    raw = _decode(p)
    if raw is None:
        return KeyProblem("unparsable", "p= is not valid base64 (cut off?)")
    if k == "ed25519":
        if len(raw) != 32:
            return KeyProblem("unparsable", f"an Ed25519 key is 32 octets, this one {len(raw)}")
        return None
    bits = _rsa_bits(raw)
    if bits is None:
        return KeyProblem("unparsable", "p= does not decode to an RSA public key (cut off?)")
    if bits < MIN_RSA_BITS:
        return KeyProblem("too_short", f"RSA key of {bits} bits (verifiers need {MIN_RSA_BITS})", bits)
    return None

