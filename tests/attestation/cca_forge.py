"""Test helper: build Arm CCA tokens signed by TEST keys (fixed scalars, RFC 6979 signatures).

The public CCA vectors cannot be re-signed with a different challenge or lifecycle; checks
that need one (the enclave provider's echo, the debug lifecycles) sign a legacy-profile token
here instead. The verifier under test runs unchanged: only the CPAK it is given is a test key.
"""

from __future__ import annotations

from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from cctrain.attestation.cose import point_bytes

#: Fixed test scalars: deterministic keys, never secret.
TEST_CPAK = ec.derive_private_key(0xCCA0_0001_5EED, ec.SECP384R1())
TEST_RAK = ec.derive_private_key(0xCCA0_0002_5EED, ec.SECP384R1())


def sign1(payload: Any, key: ec.EllipticCurvePrivateKey, *, alg: int = -35) -> bytes:
    """A tagged COSE_Sign1 over ``payload`` (a claims map, CBOR-encoded here)."""
    protected = cbor2.dumps({1: alg})
    body = payload if isinstance(payload, bytes) else cbor2.dumps(payload)
    tbs = cbor2.dumps(["Signature1", protected, b"", body])
    r, s = decode_dss_signature(
        key.sign(tbs, ec.ECDSA(hashes.SHA384(), deterministic_signing=True))
    )
    sig = r.to_bytes(48, "big") + s.to_bytes(48, "big")
    return bytes(cbor2.dumps(cbor2.CBORTag(18, [protected, {}, body, sig])))


def platform_claims(challenge: bytes, *, lifecycle: int = 0x3000) -> dict[int, Any]:
    import hashlib

    return {
        265: "http://arm.com/CCA-SSD/1.0.0",
        10: challenge,
        2396: bytes(range(32)),
        256: b"\x01" + hashlib.sha256(point_bytes(TEST_CPAK.public_key())).digest(),
        2401: b"\xcf\xcf\xcf\xcf",
        2395: lifecycle,
        2402: "sha-256",
        2399: [{1: "RMM", 2: b"\x11" * 32, 4: "1.0.0", 5: b"\x22" * 32, 6: "sha-256"}],
    }


def cca_token(
    realm_challenge: bytes,
    *,
    lifecycle: int = 0x3000,
    rim: bytes = b"\x5a" * 32,
    cpak: ec.EllipticCurvePrivateKey = TEST_CPAK,
) -> bytes:
    """A tag-399 legacy-profile CCA token whose binding holds."""
    import hashlib

    rak_point = point_bytes(TEST_RAK.public_key())
    realm = {
        10: realm_challenge,
        44235: b"\x00" * 64,
        44236: "sha-256",
        44237: rak_point,
        44238: rim,
        44239: [b"\x00" * 32] * 4,
        44240: "sha-256",
    }
    plat = platform_claims(hashlib.sha256(rak_point).digest(), lifecycle=lifecycle)
    return bytes(
        cbor2.dumps(cbor2.CBORTag(399, {44234: sign1(plat, cpak), 44241: sign1(realm, TEST_RAK)}))
    )
