"""Model packages: a model owner's training plan (Python sources) and initial weights, one file.

A package is a safetensors file. Its tensors are the initial weights (none for a model trained
from scratch); its ``__metadata__`` holds the format tag and the sources::

    __metadata__ = {
        "format": "cctrain-model-package/v1",
        "files": "{\\"plan.py\\": \\"...source...\\", \\"layers.py\\": \\"...\\"}",
    }

The policy pins the SHA-256 of the exact package bytes (``training.model.package_sha256``);
the enclave refuses a package upload whose signed header commits to anything else before it
receives a byte of it, and checks the hash again before any of its code runs. Package bytes
are deterministic for the same sources and weights (:func:`build_package`), so every party
can recompute the pin from what the model owner shows it (or an auditor vouches for).

This module has no torch dependency: the data owners' and model owner's tools read and build
packages; only the enclave (and a recipient rebuilding the model) execute them. Parsing is
strict: the header is bounded, its JSON must be canonical enough to be unambiguous (no
duplicate keys), tensors must tile the data buffer exactly, and sources must be UTF-8 text
named as importable flat modules.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cctrain.errors import InputError

__all__ = [
    "DTYPE_SIZES",
    "MAX_HEADER_BYTES",
    "PACKAGE_FORMAT",
    "PACKAGE_SHARD_ID",
    "UPLOAD_FORMAT",
    "PackageError",
    "PackageInfo",
    "build_package",
    "check_package_file",
    "package_from_dir",
    "package_sha256",
    "parse_header",
    "read_package",
]

PACKAGE_FORMAT = "cctrain-model-package/v1"
#: The upload format name of a model package, and the one shard id it is uploaded and
#: journaled under (a policy pins one package: one upload of it).
UPLOAD_FORMAT = "model-package"
PACKAGE_SHARD_ID = "model-package"
#: The safetensors header (JSON: tensor table + metadata with the sources) is held in memory
#: whole while it is checked: sources are code, not data, and 16 MiB of it is plenty.
MAX_HEADER_BYTES = 16 << 20
MAX_FILES = 256
MAX_TENSORS = 100_000
#: The product of a tensor's non-zero dimensions must stay below this: an empty tensor (one
#: zero dimension) needs no bytes, but larger dimensions beside the zero overflow
#: safetensors' and torch's 64-bit size arithmetic, which would refuse the package only when
#: the enclave loads its weights, after the upload was receipted and training started.
MAX_TENSOR_EXTENT = 1 << 62
#: safetensors dtype names and their element sizes (bits / 8); sub-byte types are refused.
DTYPE_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
MODULE_FILE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\.py")
TENSOR_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,255}")


class PackageError(InputError):
    """The bytes are not a well-formed model package; the message says which part."""


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class PackageInfo:
    """What a package header declares (the data buffer is checked against it separately)."""

    header_size: int
    files: Mapping[str, str]
    tensors: tuple[TensorEntry, ...]
    buffer_size: int

    @property
    def total_size(self) -> int:
        """Bytes of every tensor together."""
        return 8 + self.header_size + self.buffer_size

    def summary(self) -> dict[str, Any]:
        """What `cctrain model inspect` prints: modules, tensor count and size, the hash."""
        return {
            "format": PACKAGE_FORMAT,
            "files": {name: len(src.encode()) for name, src in sorted(self.files.items())},
            "tensors": len(self.tensors),
            "weights_bytes": self.buffer_size,
        }


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise PackageError(f"package header: key {k[:64]!r} appears twice")
        out[k] = v
    return out


def _natural(text: str) -> int:
    # Every integer of a package header is a size or an offset. serde_json (safetensors)
    # reads "-0" as a float and refuses it where Python reads the integer 0.
    if text.startswith("-"):
        raise PackageError(f"package header: negative integer {text[:24]}")
    return int(text)


def _loads(text: str | bytes, what: str) -> Any:
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_int=_natural)
    except PackageError:
        raise
    except (ValueError, RecursionError):
        raise PackageError(f"{what} is not valid JSON") from None
    # Python decodes a lone surrogate escape ("\\ud800"); it is no UTF-8 text, which
    # serde_json (safetensors) refuses to read and compile() refuses to run.
    try:
        json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise PackageError(f"{what} is not UTF-8 text (a lone surrogate escape)") from None
    return doc


def parse_header(header: bytes) -> PackageInfo:
    """Check a package's safetensors header bytes (after the 8-byte length) strictly."""
    if len(header) > MAX_HEADER_BYTES:
        raise PackageError(f"package header is {len(header)} bytes, more than {MAX_HEADER_BYTES}")
    try:
        text = header.decode("utf-8")
    except UnicodeDecodeError:
        raise PackageError("package header is not UTF-8") from None
    if not text.startswith("{"):
        raise PackageError("package header does not start with '{'")
    # safetensors pads the header with trailing spaces to an 8-byte boundary.
    doc = _loads(text.rstrip(" "), "package header")
    if not isinstance(doc, dict):
        raise PackageError("package header is not a JSON object")
    meta = doc.pop("__metadata__", None)
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise PackageError("package header: __metadata__ missing or not a string map")
    if meta.get("format") != PACKAGE_FORMAT:
        raise PackageError(
            f"package header: __metadata__.format is {str(meta.get('format'))[:64]!r}, "
            f"want {PACKAGE_FORMAT!r} (build it with `cctrain model package`)"
        )
    unknown = sorted(set(meta) - {"format", "files"})
    if unknown:
        raise PackageError(f"package header: unknown __metadata__ keys {unknown[:8]}")
    files = _loads(meta.get("files", ""), "package header: __metadata__.files")
    if not isinstance(files, dict) or not files:
        raise PackageError("package header: __metadata__.files must map file names to sources")
    if len(files) > MAX_FILES:
        raise PackageError(f"package holds {len(files)} files, more than {MAX_FILES}")
    for name, src in files.items():
        if not MODULE_FILE.fullmatch(name):
            raise PackageError(
                f"package file {name[:64]!r}: want a flat module name like 'plan.py'"
            )
        if not isinstance(src, str):
            raise PackageError(f"package file {name!r}: source is not text")
    if len(doc) > MAX_TENSORS:
        raise PackageError(f"package holds {len(doc)} tensors, more than {MAX_TENSORS}")
    tensors: list[TensorEntry] = []
    for name, entry in doc.items():
        if not TENSOR_NAME.fullmatch(name):
            raise PackageError(f"package tensor name {name[:64]!r} is not allowed")
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise PackageError(f"package tensor {name!r}: want dtype, shape, data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
            raise PackageError(f"package tensor {name!r}: dtype {str(dtype)[:16]!r} unsupported")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 40 for d in shape
        ):
            raise PackageError(f"package tensor {name!r}: shape must be non-negative integers")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise PackageError(f"package tensor {name!r}: data_offsets must be [start, end]")
        numel = extent = 1
        for d in shape:
            numel *= d
            extent *= max(d, 1)
        if extent >= MAX_TENSOR_EXTENT:
            raise PackageError(
                f"package tensor {name!r}: the product of its non-zero dimensions must be "
                f"below 2**62 (safetensors and torch compute sizes in 64 bits)"
            )
        start, end = offsets
        if start < 0 or end - start != numel * DTYPE_SIZES[dtype]:
            raise PackageError(
                f"package tensor {name!r}: data_offsets span {end - start} bytes, its dtype "
                f"and shape need {numel * DTYPE_SIZES[dtype]}"
            )
        tensors.append(TensorEntry(name, dtype, tuple(shape), start, end))
    at = 0
    for t in sorted(tensors, key=lambda t: (t.start, t.end)):
        if t.start != at:
            raise PackageError(
                f"package tensor {t.name!r}: starts at {t.start}, want {at} (tensors must "
                "tile the data buffer, no gaps or overlaps)"
            )
        at = t.end
    return PackageInfo(
        header_size=len(header), files=dict(files), tensors=tuple(tensors), buffer_size=at
    )


def read_package(data: bytes) -> PackageInfo:
    """Check a whole package in memory; its header info (the buffer length is checked)."""
    if len(data) < 8:
        raise PackageError("package is shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES or 8 + n > len(data):
        raise PackageError(f"package header length {n} exceeds the file or {MAX_HEADER_BYTES}")
    info = parse_header(data[8 : 8 + n])
    if len(data) != info.total_size:
        raise PackageError(f"package is {len(data)} bytes, its header declares {info.total_size}")
    return info


def _weights_parts(weights: bytes | None) -> tuple[dict[str, Any], bytes]:
    """The tensor table and data buffer of a safetensors file (its metadata is dropped)."""
    if weights is None:
        return {}, b""
    if len(weights) < 8:
        raise PackageError("initial weights: not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", weights[:8])
    if 8 + n > len(weights) or n > MAX_HEADER_BYTES:
        raise PackageError("initial weights: not a safetensors file (header length)")
    doc = _loads(weights[8 : 8 + n].decode("utf-8", "replace").rstrip(" "), "initial weights")
    if not isinstance(doc, dict):
        raise PackageError("initial weights: header is not a JSON object")
    doc.pop("__metadata__", None)
    return doc, bytes(weights[8 + n :])


def _offsets_key(entry: Any) -> tuple[int, ...]:
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    if isinstance(offsets, list) and all(type(o) is int for o in offsets):
        return (0, *offsets)
    return (-1,)


def build_package(files: Mapping[str, str | bytes], weights: bytes | None = None) -> bytes:
    """The package bytes for ``files`` (name → source) and optional safetensors ``weights``.

    Deterministic: the same sources and weights give the same bytes, so the same pin.
    """
    sources = {}
    for name, src in sorted(files.items()):
        text = src.decode("utf-8") if isinstance(src, bytes) else src
        sources[name] = text
    table, buffer = _weights_parts(weights)
    header_doc: dict[str, Any] = {
        "__metadata__": {
            "format": PACKAGE_FORMAT,
            "files": json.dumps(sources, sort_keys=True, ensure_ascii=False),
        }
    }
    # Keep the weights' own buffer layout; order the table by offset for a stable header
    # (an entry without integer offsets sorts first: read_package below says what is wrong).
    for name, entry in sorted(table.items(), key=lambda kv: _offsets_key(kv[1])):
        header_doc[name] = entry
    header = json.dumps(header_doc, separators=(",", ":"), ensure_ascii=False).encode()
    header += b" " * (-len(header) % 8)
    data = struct.pack("<Q", len(header)) + header + buffer
    read_package(data)  # refuse to write what the enclave would refuse
    return data


def package_from_dir(directory: str | Path) -> bytes:
    """Build a package from a directory: every ``*.py`` in it (flat), and ``weights.safetensors``
    if present. Anything else in the directory is refused, so nothing is left out silently."""
    root = Path(directory)
    if not root.is_dir():
        raise PackageError(f"{root} is not a directory")
    files: dict[str, bytes] = {}
    weights: bytes | None = None
    for path in sorted(root.iterdir()):
        if path.name == "weights.safetensors":
            weights = path.read_bytes()
        elif path.name == "__pycache__" or path.name.startswith("."):
            continue
        elif path.is_file() and MODULE_FILE.fullmatch(path.name):
            files[path.name] = path.read_bytes()
        else:
            raise PackageError(
                f"{path}: a package directory holds flat *.py modules and an optional "
                "weights.safetensors, nothing else"
            )
    try:
        return build_package(files, weights)
    except UnicodeDecodeError:
        raise PackageError(f"{root}: a source file is not UTF-8") from None


def check_package_file(path: str | Path) -> PackageInfo:
    """Check a package file's structure, reading its header and only the size of the rest."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise PackageError(f"{path}: not a model package (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                raise PackageError(f"{path}: header length {n} exceeds {MAX_HEADER_BYTES}")
            header = fh.read(n)
            size = path.stat().st_size
    except OSError as exc:
        raise PackageError(f"cannot read {path}: {exc.strerror}") from None
    if len(header) != n:
        raise PackageError(f"{path}: ends inside its header")
    info = parse_header(header)
    if size != info.total_size:
        raise PackageError(f"{path}: {size} bytes, its header declares {info.total_size}")
    return info


def package_sha256(data: bytes) -> str:
    """The pin of a package: hex SHA-256 of its exact bytes."""
    return hashlib.sha256(data).hexdigest()
