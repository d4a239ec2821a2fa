"""The RSA DKIM signer that uses OpenSSL for the private-key step (bot/adapters/dkimsign.py)
makes exactly the header dkimpy's own ``dkim.sign`` makes, and dkimpy's verifier accepts it.

dkimpy is the reference here: RSASSA-PKCS1-v1_5 is deterministic, so with the clock held
still both must produce the same bytes for every key size and line ending.
"""

from __future__ import annotations

import base64
import time

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bot.adapters.signer import build_probe, header_list, sign_with_key

KEYS = {bits: rsa.generate_private_key(public_exponent=65537, key_size=bits) for bits in (1024, 2048, 3072)}


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _record(key: rsa.RSAPrivateKey) -> bytes:
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


@pytest.mark.parametrize("bits", sorted(KEYS))
@pytest.mark.parametrize("crlf", [True, False])
def test_openssl_signature_is_dkimpys_byte_for_byte(bits: int, crlf: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: 1_764_547_200.0)  # t= is the same in both
    key = KEYS[bits]
    raw = build_probe("ryokan.example", now=1_764_547_200.0)
    raw += b"Second paragraph,\r\n\r\n  with  spaces and a \xe3\x81\x82 byte.\r\n"
    if not crlf:
        raw = raw.replace(b"\r\n", b"\n")
    headers, _ = dkim.rfc822_parse(raw)
    ours = sign_with_key(raw, "ryokan.example", "sel2026", key)
    reference = dkim.sign(raw, b"sel2026", b"ryokan.example", _pem(key), signature_algorithm=b"rsa-sha256",
                          canonicalize=(b"relaxed", b"relaxed"), include_headers=header_list(headers),
                          linesep=b"\r\n" if crlf else b"\n")
    assert ours == reference
    records = {b"sel2026._domainkey.ryokan.example.": _record(key)}
    assert dkim.verify(ours + raw, dnsfunc=lambda name, timeout=5: records.get(name), minkey=1024)


def test_a_different_key_does_not_verify() -> None:
    raw = build_probe("ryokan.example")
    signed = sign_with_key(raw, "ryokan.example", "sel2026", KEYS[2048]) + raw
    records = {b"sel2026._domainkey.ryokan.example.": _record(KEYS[3072])}
    assert not dkim.verify(signed, dnsfunc=lambda name, timeout=5: records.get(name), minkey=1024)
