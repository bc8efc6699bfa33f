"""Golden values from an NVIDIA RIM (TCG RIM / SWID ``.swidtag``) as policy reference values.

Honest scope: this reads the RIM's measurement entries and version; it does NOT check the
RIM's XML signature (XMLDSig with NVIDIA's RIM signing chain) nor its OCSP status.  Use it
only with a RIM obtained from a source you trust (NVIDIA's RIM service, your own audited
copy); the resulting reference values are then pinned in the signed policy, which is what
cctrain trusts.

RIM measurement ``index`` counts from 0; the SPDM block index is ``index + 1``.  Inactive
entries are skipped; each active entry allows any of its ``HashN`` alternatives.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET  # noqa: S405  (DTDs and entities are refused below)
from typing import Any

from cctrain.errors import PolicyError

_HASH_ATTR = re.compile(r"^(?:\{[^}]*\})?Hash(\d+)$")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def reference_from_rim(swidtag: bytes) -> dict[str, Any]:
    """``{"vbios_versions": [...], "measurement_indices": {spdm_index: [hex, ...]}}``."""
    # Entity expansion is the XML attack surface; a RIM never needs a DTD.
    if b"<!DOCTYPE" in swidtag or b"<!ENTITY" in swidtag:
        raise PolicyError("RIM contains a DTD or entity declaration; refusing to parse it")
    try:
        root = ET.fromstring(swidtag)  # noqa: S314  (no DTD/entities, checked above)
    except ET.ParseError as exc:
        raise PolicyError(f"RIM is not well-formed XML: {exc}") from None
    if _local(root.tag) != "SoftwareIdentity":
        raise PolicyError(f"RIM root element is {_local(root.tag)!r}, not SoftwareIdentity")
    versions: list[str] = []
    indices: dict[int, list[str]] = {}
    for el in root.iter():
        name = _local(el.tag)
        if name == "Meta":
            version = el.attrib.get("colloquialVersion")
            if version:
                versions.append(version)
        elif name == "Resource" and el.attrib.get("type") == "Measurement":
            if el.attrib.get("active", "").lower() != "true":
                continue
            try:
                index = int(el.attrib["index"])
                alternatives = int(el.attrib.get("alternatives", "1"))
            except (KeyError, ValueError):
                raise PolicyError("RIM measurement entry lacks a numeric index") from None
            hashes: dict[int, str] = {}
            for attr, value in el.attrib.items():
                m = _HASH_ATTR.match(attr)
                if m:
                    hashes[int(m.group(1))] = value.lower()
            if len(hashes) != alternatives:
                raise PolicyError(
                    f"RIM measurement {index}: {len(hashes)} hashes for {alternatives} alternatives"
                )
            if index + 1 in indices:
                raise PolicyError(f"RIM measurement index {index} appears twice")
            indices[index + 1] = [hashes[k] for k in sorted(hashes)]
    if not indices:
        raise PolicyError("RIM holds no active measurements")
    out: dict[str, Any] = {"measurement_indices": indices}
    if versions:
        out["vbios_versions"] = versions
    return out
