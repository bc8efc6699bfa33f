"""DSSE envelopes (https://github.com/secure-systems-lab/dsse) with Ed25519.

The signature covers PAE(payloadType, payload); the payload digest is what the
rest of the protocol binds to, so no JSON canonicalisation is ever needed.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cctrain.errors import PolicyFileError, describe_parse_error


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


@dataclass(frozen=True)
class Envelope:
    payload_type: str
    payload: bytes
    #: keyid (party id) → raw 64-byte Ed25519 signature
    signatures: dict[str, bytes] = field(default_factory=dict)

    def sign(self, keyid: str, key: Ed25519PrivateKey) -> Envelope:
        sigs = dict(self.signatures)
        sigs[keyid] = key.sign(pae(self.payload_type, self.payload))
        return Envelope(self.payload_type, self.payload, sigs)

    def verify_one(self, keyid: str, key: Ed25519PublicKey) -> bool:
        sig = self.signatures.get(keyid)
        if sig is None:
            return False
        try:
            key.verify(sig, pae(self.payload_type, self.payload))
        except InvalidSignature:
            return False
        return True

    def to_json(self) -> str:
        doc: dict[str, Any] = {
            "payloadType": self.payload_type,
            "payload": base64.b64encode(self.payload).decode(),
            "signatures": [
                {"keyid": k, "sig": base64.b64encode(v).decode()}
                for k, v in sorted(self.signatures.items())
            ],
        }
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Envelope:
        try:
            doc = json.loads(text)
            payload_type = doc["payloadType"]
            payload = base64.b64decode(doc["payload"], validate=True)
            sigs: dict[str, bytes] = {}
            for entry in doc.get("signatures", []):
                keyid = str(entry["keyid"])
                if keyid in sigs:
                    raise ValueError(f"two signatures for keyid {keyid!r}")
                sigs[keyid] = base64.b64decode(entry["sig"], validate=True)
            if not isinstance(payload_type, str):
                raise ValueError("payloadType must be a string")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PolicyFileError(f"not a DSSE envelope: {describe_parse_error(exc)}") from None
        return cls(payload_type, payload, sigs)
