"""Party keys: an Ed25519 identity key and an HPKE (X25519) key.

Private key files hold both keys as PKCS#8 PEM inside a small JSON document,
are created with mode 0600, and are refused when readable by others.  Public
keys are written as ``"ed25519:<base64>"`` / ``"x25519:<base64>"`` strings, the
same form the policy uses.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from cctrain.errors import KeyFileError, describe_parse_error

PRIVATE_TYPE = "cctrain-party-private-key/v1"
PUBLIC_TYPE = "cctrain-party-public-key/v1"


def encode_public(prefix: str, raw: bytes) -> str:
    return f"{prefix}:{base64.b64encode(raw).decode()}"


def decode_public(text: str, prefix: str, *, size: int = 32) -> bytes:
    head, sep, body = text.partition(":")
    if not sep or head != prefix:
        raise ValueError(f"expected '{prefix}:<base64>', got {text[:24]!r}")
    try:
        raw = base64.b64decode(body, validate=True)
    except ValueError:
        raise ValueError(f"{prefix} key is not valid base64") from None
    if len(raw) != size:
        raise ValueError(f"{prefix} key must be {size} bytes, got {len(raw)}")
    return raw


def ed25519_public(text: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(decode_public(text, "ed25519"))


def x25519_public(text: str) -> X25519PublicKey:
    return X25519PublicKey.from_public_bytes(decode_public(text, "x25519"))


@dataclass(frozen=True)
class PartyKeys:
    party_id: str
    signing_key: Ed25519PrivateKey
    hpke_key: X25519PrivateKey

    @classmethod
    def generate(cls, party_id: str) -> PartyKeys:
        return cls(party_id, Ed25519PrivateKey.generate(), X25519PrivateKey.generate())

    @property
    def signing_public(self) -> str:
        return encode_public("ed25519", self.signing_key.public_key().public_bytes_raw())

    @property
    def hpke_public(self) -> str:
        return encode_public("x25519", self.hpke_key.public_key().public_bytes_raw())

    def public_document(self) -> dict[str, str]:
        return {
            "type": PUBLIC_TYPE,
            "id": self.party_id,
            "signing_key": self.signing_public,
            "hpke_key": self.hpke_public,
        }

    def save(self, directory: str | Path) -> tuple[Path, Path]:
        """Write ``<id>.key`` (0600, refuses to overwrite) and ``<id>.pub.json``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        priv_path = directory / f"{self.party_id}.key"
        pub_path = directory / f"{self.party_id}.pub.json"

        def pem(key: Ed25519PrivateKey | X25519PrivateKey) -> str:
            return key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode()

        doc = {
            "type": PRIVATE_TYPE,
            "id": self.party_id,
            "signing_key": pem(self.signing_key),
            "hpke_key": pem(self.hpke_key),
        }
        try:
            fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise KeyFileError(f"{priv_path} exists; refusing to overwrite a private key") from None
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, indent=2)
            fh.write("\n")
        pub_path.write_text(json.dumps(self.public_document(), indent=2) + "\n")
        return priv_path, pub_path

    @classmethod
    def load(cls, path: str | Path) -> PartyKeys:
        """The party's private keys from ``path`` (``<id>.key``, as :meth:`save` wrote it)."""
        path = Path(path)
        try:
            st = path.stat()
            raw = path.read_bytes()
        except OSError as exc:
            raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            raise KeyFileError(
                f"{path} is not a cctrain private key file: {describe_parse_error(exc)}"
            ) from None
        kind = doc.get("type")
        if kind == PUBLIC_TYPE:
            raise KeyFileError(
                f"{path} holds public keys only: give the private key file "
                f"({doc.get('id', 'PARTY')}.key, written by cctrain keygen)"
            )
        if os.name == "posix" and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(
                f"{path} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):o}); "
                f"run: chmod 600 {path}"
            )
        try:
            if kind != PRIVATE_TYPE:
                raise ValueError(f"type is {kind!r}, want {PRIVATE_TYPE!r}")
            sk = serialization.load_pem_private_key(doc["signing_key"].encode(), None)
            hk = serialization.load_pem_private_key(doc["hpke_key"].encode(), None)
            party_id = str(doc["id"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise KeyFileError(
                f"{path} is not a cctrain private key file: {describe_parse_error(exc)}"
            ) from None
        if not isinstance(sk, Ed25519PrivateKey) or not isinstance(hk, X25519PrivateKey):
            raise KeyFileError(f"{path}: wrong key types (want Ed25519 and X25519)")
        return cls(party_id, sk, hk)
