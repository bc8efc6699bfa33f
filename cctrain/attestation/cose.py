"""Strict CBOR and COSE_Sign1 (RFC 8949, RFC 9052), shared by the token platforms.

AWS Nitro attestation documents, Arm CCA tokens and Arm PSA tokens are COSE_Sign1 messages
over CBOR claims. Decoding is cbor2's, told to be strict: no indefinite-length items, no
duplicate map keys, a bounded nesting depth, and no byte after the item (a token with a
trailing byte is not that token). Signatures are ECDSA from ``cryptography``; this module
only builds the COSE ``Sig_structure`` the signature covers and converts COSE's fixed-size
``r || s`` into what ``cryptography`` verifies.

Every failure raises :class:`~cctrain.errors.EvidenceParseError` (the bytes are not a
well-formed token) or returns a problem string (a well-formed token that does not verify);
nothing else escapes.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from cctrain.errors import EvidenceParseError

__all__ = [
    "ALGORITHMS",
    "CoseSign1",
    "ec_key_from_cose",
    "load_anchor_key",
    "loads_strict",
    "parse_sign1",
    "point_bytes",
]

#: Nesting any of these formats needs (claims in a map in an array in a tag) is below 10.
MAX_DEPTH = 16
COSE_SIGN1_TAG = 18
#: The only CBOR tags these tokens use: COSE_Sign1, the CCA collection, the CMW collection.
#: Every other tag is refused, in particular the ones cbor2 would interpret: shared
#: references (28/29, with which a few hundred bytes describe a structure of gigabytes),
#: dates, bignums, decimal fractions, sets, regexes, MIME.
ALLOWED_TAGS = frozenset({COSE_SIGN1_TAG, 399, 907})


def _refuse_tag(*_: Any) -> Any:
    raise cbor2.CBORDecodeError("a CBOR tag these tokens do not use")


def _tag_hook(tag: Any, _immutable: bool) -> Any:
    if tag.tag not in ALLOWED_TAGS:
        raise cbor2.CBORDecodeError(f"CBOR tag {tag.tag}, which these tokens do not use")
    return tag


#: Every tag with a cbor2 built-in decoder is in 0..65535; above that only the hook runs.
_REFUSED_SEMANTICS = {t: _refuse_tag for t in range(1 << 16) if t not in ALLOWED_TAGS}

#: COSE algorithm id -> (name, curve, hash); the only algorithms these tokens use.
ALGORITHMS: dict[int, tuple[str, type[ec.EllipticCurve], type[hashes.HashAlgorithm]]] = {
    -7: ("ES256", ec.SECP256R1, hashes.SHA256),
    -35: ("ES384", ec.SECP384R1, hashes.SHA384),
    -36: ("ES512", ec.SECP521R1, hashes.SHA512),
}
#: COSE_Key crv -> curve (RFC 9053, table 18).
_COSE_CURVES: dict[int, type[ec.EllipticCurve]] = {
    1: ec.SECP256R1,
    2: ec.SECP384R1,
    3: ec.SECP521R1,
}
#: Raw uncompressed point length -> curve.
_POINT_CURVES: dict[int, type[ec.EllipticCurve]] = {
    65: ec.SECP256R1,
    97: ec.SECP384R1,
    133: ec.SECP521R1,
}


def loads_strict(data: bytes, what: str) -> Any:
    """Decode exactly one CBOR item that is all of ``data``; EvidenceParseError otherwise."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise EvidenceParseError(f"{what}: want CBOR bytes, got {type(data).__name__}")
    data = bytes(data)
    fp = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(
            fp,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            max_depth=MAX_DEPTH,
            tag_hook=_tag_hook,
            semantic_decoders=_REFUSED_SEMANTICS,
        ).decode()
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError, EOFError) as exc:
        raise EvidenceParseError(f"{what}: not well-formed CBOR ({_short(exc)})") from None
    if fp.tell() != len(data):
        raise EvidenceParseError(
            f"{what}: {len(data) - fp.tell()} byte(s) after the CBOR item (a token is exactly "
            "one item)"
        )
    return item


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


@dataclass(frozen=True)
class CoseSign1:
    """A parsed COSE_Sign1: the protected header as its bytes and decoded, the unprotected
    header, the payload bytes and the signature. Nothing here is verified yet."""

    protected_raw: bytes
    protected: Mapping[Any, Any]
    unprotected: Mapping[Any, Any]
    payload: bytes
    signature: bytes
    tagged: bool

    @property
    def alg(self) -> int | None:
        alg = self.protected.get(1)
        return alg if isinstance(alg, int) and not isinstance(alg, bool) else None

    @property
    def alg_name(self) -> str:
        entry = ALGORITHMS.get(self.alg) if self.alg is not None else None
        return entry[0] if entry else f"unsupported ({self.protected.get(1)!r})"

    def to_be_signed(self, external_aad: bytes = b"") -> bytes:
        """The ``Sig_structure`` (RFC 9052 §4.4) the signature is over."""
        return bytes(cbor2.dumps(["Signature1", self.protected_raw, external_aad, self.payload]))

    def verify(self, key: ec.EllipticCurvePublicKey) -> str | None:
        """None when the signature verifies with ``key``, else the reason it does not. The
        algorithm is the protected header's, and must be the one for the key's curve."""
        entry = ALGORITHMS.get(self.alg) if self.alg is not None else None
        if entry is None:
            return f"signature algorithm {self.alg_name}: want ES256, ES384 or ES512"
        name, curve, hash_alg = entry
        if not isinstance(key.curve, curve):
            return f"signature algorithm {name} does not match the key's curve {key.curve.name}"
        size = (key.curve.key_size + 7) // 8
        if len(self.signature) != 2 * size:
            return f"{name} signature is {len(self.signature)} bytes, want {2 * size}"
        r = int.from_bytes(self.signature[:size], "big")
        s = int.from_bytes(self.signature[size:], "big")
        try:
            key.verify(encode_dss_signature(r, s), self.to_be_signed(), ec.ECDSA(hash_alg()))
        except InvalidSignature:
            return f"{name} signature does not verify"
        return None


def parse_sign1(data: bytes, what: str, *, tag: str = "either") -> CoseSign1:
    """Parse a COSE_Sign1 message. ``tag``: ``"required"`` (tag 18 must wrap it),
    ``"forbidden"`` (it must be untagged, as Nitro's documents are) or ``"either"``."""
    item = loads_strict(data, what)
    return sign1_from_item(item, what, tag=tag)


def sign1_from_item(item: Any, what: str, *, tag: str = "either") -> CoseSign1:
    tagged = isinstance(item, cbor2.CBORTag)
    if tagged:
        if item.tag != COSE_SIGN1_TAG:
            raise EvidenceParseError(
                f"{what}: CBOR tag {item.tag}, want {COSE_SIGN1_TAG} (COSE_Sign1)"
            )
        if tag == "forbidden":
            raise EvidenceParseError(f"{what}: tagged COSE_Sign1, want an untagged one")
        item = item.value
    elif tag == "required":
        raise EvidenceParseError(f"{what}: want a COSE_Sign1 tagged {COSE_SIGN1_TAG}")
    # Inside a tag cbor2 hands out immutable containers (tuple, frozendict).
    if not isinstance(item, list | tuple) or len(item) != 4:
        raise EvidenceParseError(f"{what}: a COSE_Sign1 is an array of 4 items")
    protected_raw, unprotected, payload, signature = item
    if not isinstance(protected_raw, bytes):
        raise EvidenceParseError(f"{what}: protected header is not a byte string")
    if not isinstance(unprotected, Mapping):
        raise EvidenceParseError(f"{what}: unprotected header is not a map")
    if not isinstance(payload, bytes):
        raise EvidenceParseError(
            f"{what}: payload is not a byte string (detached payloads are not supported)"
        )
    if not isinstance(signature, bytes):
        raise EvidenceParseError(f"{what}: signature is not a byte string")
    protected = loads_strict(protected_raw, f"{what} protected header") if protected_raw else {}
    if not isinstance(protected, Mapping):
        raise EvidenceParseError(f"{what}: protected header is not a map")
    if 1 in unprotected:
        raise EvidenceParseError(f"{what}: the algorithm must be in the protected header")
    return CoseSign1(protected_raw, protected, unprotected, payload, signature, tagged)


def point_bytes(key: ec.EllipticCurvePublicKey) -> bytes:
    """The uncompressed point 0x04 || X || Y."""
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def load_anchor_key(data: bytes, what: str = "key") -> ec.EllipticCurvePublicKey:
    """A trust-anchor EC public key that is not a certificate: PEM or DER
    SubjectPublicKeyInfo, or a raw uncompressed point (65, 97 or 133 bytes)."""
    data = bytes(data)
    stripped = data.strip()
    try:
        if stripped.startswith(b"-----BEGIN"):
            key: Any = serialization.load_pem_public_key(stripped)
        elif len(data) in _POINT_CURVES and data[:1] == b"\x04":
            key = ec.EllipticCurvePublicKey.from_encoded_point(_POINT_CURVES[len(data)](), data)
        else:
            key = serialization.load_der_public_key(data)
    except (ValueError, TypeError) as exc:
        raise EvidenceParseError(
            f"{what}: not an EC public key (PEM/DER SPKI or a raw point): {_short(exc)}"
        ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise EvidenceParseError(f"{what}: not an EC public key ({type(key).__name__})")
    return key


def ec_key_from_point(point: bytes, what: str) -> ec.EllipticCurvePublicKey:
    curve = _POINT_CURVES.get(len(point))
    if curve is None or point[:1] != b"\x04":
        raise EvidenceParseError(
            f"{what}: not an uncompressed P-256/P-384/P-521 point ({len(point)} bytes)"
        )
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(curve(), point)
    except ValueError:
        raise EvidenceParseError(f"{what}: the point is not on its curve") from None


def ec_key_from_cose(key: Any, what: str) -> ec.EllipticCurvePublicKey:
    """An EC2 COSE_Key map (kty 2, crv, x, y) as a public key."""
    if not isinstance(key, Mapping):
        raise EvidenceParseError(f"{what}: a COSE_Key is a map")
    kty, crv, x, y = key.get(1), key.get(-1), key.get(-2), key.get(-3)
    if kty != 2:
        raise EvidenceParseError(f"{what}: COSE_Key kty {kty!r}, want 2 (EC2)")
    curve = _COSE_CURVES.get(crv) if isinstance(crv, int) and not isinstance(crv, bool) else None
    if curve is None:
        raise EvidenceParseError(f"{what}: COSE_Key crv {crv!r}, want P-256, P-384 or P-521")
    size = (curve().key_size + 7) // 8
    if not (isinstance(x, bytes) and isinstance(y, bytes) and len(x) == len(y) == size):
        raise EvidenceParseError(f"{what}: COSE_Key x and y must be {size}-byte strings")
    return ec_key_from_point(b"\x04" + x + y, what)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
