"""A reproducible measurement of the enclave code, for the simulated platform.

On real hardware the CPU measures what it launches (SNP launch digest, TDX
MRTD/RTMRs, SGX MRENCLAVE).  The simulated platform has no such hardware, so
it measures the Python code the enclave process actually imports: every
source and data file of the ``cctrain_enclave`` package and of the ``cctrain``
library it runs on, in a canonical order.  ``cctrain measure`` prints the same
value so a consortium can pin it in the policy.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

MEASURED_PACKAGES = ("cctrain", "cctrain_enclave")
MEASURED_SUFFIXES = frozenset({".py", ".pem", ".json", ".toml"})
_TAG = b"cctrain/simulated-measurement/v1\x00"


def package_root(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {name!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def measured_files() -> list[tuple[str, Path]]:
    files: list[tuple[str, Path]] = []
    for pkg in MEASURED_PACKAGES:
        root = package_root(pkg)
        for path in root.rglob("*"):
            if (
                path.is_file()
                and path.suffix in MEASURED_SUFFIXES
                and "__pycache__" not in path.parts
            ):
                files.append((f"{pkg}/{path.relative_to(root).as_posix()}", path))
    files.sort(key=lambda item: item[0])
    return files


def code_measurement() -> bytes:
    """SHA-384 over (name, length, bytes) of every measured file, sorted by name."""
    h = hashlib.sha384(_TAG)
    for name, path in measured_files():
        data = path.read_bytes()
        h.update(name.encode() + b"\x00" + len(data).to_bytes(8, "big") + data)
    return h.digest()
