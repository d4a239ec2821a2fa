"""dkimpy's RSA DKIM signer with the private-key operation done by OpenSSL.

dkimpy builds the DKIM-Signature header (tags, folding, canonicalisation, hashing)
and then signs the header hash with its own pure-Python RSA: two 1024-bit modular
exponentiations for a 2048-bit key, ~7 ms of CPU that hold the GIL, a seventh of a
recheck pass's CPU in its profile (every key installed is proven by signing a
probe). Here only that last step differs: the same digest is signed with
``cryptography`` (OpenSSL). RSASSA-PKCS1-v1_5 is deterministic, so the header is
byte-identical to dkimpy's own (``tests/test_dkimsign.py`` compares them); the probe
is still verified by dkimpy's verifier against DNS.
"""

from __future__ import annotations

import base64
from typing import Any

import dkim
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

_HASHES: dict[bytes, hashes.HashAlgorithm] = {b"rsa-sha256": hashes.SHA256(), b"rsa-sha1": hashes.SHA1()}


class _OpenSslRsaDkim(dkim.DKIM):  # type: ignore[misc]  # dkimpy ships no types
    """``dkim.DKIM`` whose ``gen_header`` signs with an OpenSSL RSA key.

    The body of ``gen_header`` follows dkimpy 1.1's ``DomainSigner.gen_header`` line
    for line (the non-``standardize`` path it takes when signing) except for the one
    call computing ``sig2``.
    """

    def __init__(self, message: bytes, key: rsa.RSAPrivateKey, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self._openssl_key = key

    def gen_header(self, fields: list[tuple[bytes, bytes]], include_headers: tuple[bytes, ...],
                   canon_policy: Any, header_name: bytes, pk: Any, standardize: bool = False) -> bytes:
        if standardize or self.signature_algorithm not in _HASHES:
            # Not a path this module is used for: dkimpy's own code, unchanged.
            out: bytes = super().gen_header(fields, include_headers, canon_policy, header_name, pk, standardize)
            return out
        header_value = b"; ".join(b"=".join(x) for x in fields)
        header_value = dkim.fold(header_value, namelen=len(header_name), linesep=b"\r\n")
        header_value = dkim.RE_BTAG.sub(b"\\1", header_value)
        header = (header_name, b" " + header_value)
        h = dkim.HashThrough(self.hasher(), self.debug_content)
        sig = dict(fields)
        headers = canon_policy.canonicalize_headers(self.headers)
        self.signed_headers = dkim.hash_headers(h, canon_policy, headers, include_headers, header, sig)
        algorithm = _HASHES[self.signature_algorithm]
        sig2 = self._openssl_key.sign(h.digest(), padding.PKCS1v15(), utils.Prehashed(algorithm))
        idx = [i for i in range(len(fields)) if fields[i][0] == b"b"][0]
        fields[idx] = (b"b", base64.b64encode(sig2))
        header_value = b"; ".join(b"=".join(x) for x in fields) + self.linesep
        folded: bytes = dkim.fold(header_value, namelen=len(header_name), linesep=self.linesep)
        return folded


def sign_rsa(message: bytes, selector: bytes, domain: bytes, private: rsa.RSAPrivateKey, pem: bytes, *,
             canonicalize: tuple[bytes, bytes], include_headers: list[bytes], linesep: bytes) -> bytes:
    """What ``dkim.sign(message, selector, domain, pem, signature_algorithm=b"rsa-sha256",
    ...)`` returns, signed by OpenSSL. ``pem`` is ``private`` in PEM: dkimpy still
    parses it (and raises its own errors for a key it cannot use)."""
    d = _OpenSslRsaDkim(message, private, signature_algorithm=b"rsa-sha256", linesep=linesep)
    signed: bytes = d.sign(selector, domain, pem, canonicalize=canonicalize, include_headers=include_headers)
    return signed
