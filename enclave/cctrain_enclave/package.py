"""A model owner's package inside the enclave: checked as it streams in, loaded for training.

The upload path is the data path (attested, HPKE-wrapped key, AES-GCM STREAM, resumable,
journaled with a receipt). Two things differ: the signed header must commit to exactly the
bytes the policy pins (``training.model.package_sha256``), which the enclave checks before
it receives any of them; and the parser is :class:`PackageParser` (the structure of
:mod:`cctrain.package`), not a shard parser. The package is stored like a shard (its
ciphertext, under the owner's data key), so the host never holds its plaintext.

:func:`load_plan` runs the package's code, and only after it checked the bytes against the
pin once more. What the code may do, and what the enclave checks about it, is in
``docs/model-owners.md``.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.abc
import importlib.machinery
import importlib.util
import struct
import sys
import threading
import types
from collections.abc import Mapping
from dataclasses import dataclass

from cctrain.errors import ShardError
from cctrain.package import (
    MAX_HEADER_BYTES,
    PACKAGE_SHARD_ID,
    PackageError,
    PackageInfo,
    parse_header,
)
from cctrain.package import UPLOAD_FORMAT as PACKAGE_FORMAT_NAME

__all__ = [
    "PACKAGE_FORMAT_NAME",
    "PACKAGE_SHARD_ID",
    "LoadedPackage",
    "PackageHashMismatch",
    "PackageParser",
    "initial_weights",
    "load_package",
]


class PackageParser:
    """Push parser for package bytes: the header is checked as soon as it is complete, the
    data buffer counted; with ``keep`` the bytes are also collected (for loading)."""

    def __init__(self, *, max_bytes: int, keep: bool = False) -> None:
        self._max = max_bytes
        self._head = bytearray()
        self._need: int | None = None
        self.info: PackageInfo | None = None
        self._seen = 0
        self._error: ShardError | None = None
        self._kept: bytearray | None = bytearray() if keep else None

    @property
    def error(self) -> ShardError | None:
        return self._error

    def _fail(self, msg: str) -> ShardError:
        self._error = ShardError(msg)
        return self._error

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._error is not None:
            raise self._error
        view = memoryview(data).cast("B")
        self._seen += len(view)
        if self._seen > self._max:
            raise self._fail(f"model package: more than training.model.max_bytes = {self._max}")
        if self._kept is not None:
            self._kept += view
        if self.info is not None:
            return
        if self._need is None:
            take = min(8 - len(self._head), len(view))
            self._head += view[:take]
            view = view[take:]
            if len(self._head) < 8:
                return
            (n,) = struct.unpack("<Q", self._head)
            if n > MAX_HEADER_BYTES:
                raise self._fail(
                    f"model package: header of {n} bytes, more than {MAX_HEADER_BYTES}"
                )
            self._need, self._head = n, bytearray()
        take = min(self._need - len(self._head), len(view))
        self._head += view[:take]
        if len(self._head) == self._need:
            try:
                self.info = parse_header(bytes(self._head))
            except PackageError as exc:
                raise self._fail(f"model {exc}") from None
            self._head = bytearray()

    def finish(self) -> PackageInfo:
        if self._error is not None:
            raise self._error
        if self.info is None:
            raise self._fail("model package: ends inside its header")
        if self._seen != self.info.total_size:
            raise self._fail(
                f"model package: {self._seen} bytes, its header declares {self.info.total_size}"
            )
        return self.info

    def take_bytes(self) -> bytes:
        if self._kept is None:
            raise ValueError("parser was not asked to keep the bytes")
        self.finish()
        data, self._kept = bytes(self._kept), None
        return data


class PackageHashMismatch(ShardError):
    """The package bytes are not the ones the policy pins; none of its code ran."""


@dataclass(frozen=True)
class LoadedPackage:
    """A package whose hash matched: its sources as a module namespace, its weights' bytes."""

    sha256: str
    info: PackageInfo
    data: bytes
    modules: Mapping[str, types.ModuleType]

    def module(self, name: str) -> types.ModuleType:
        mod = self.modules.get(name)
        if mod is None:
            raise PackageError(
                f"package has no module {name!r} (has: {', '.join(sorted(self.modules))})"
            )
        return mod


class _PackageFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``<root>.<module>`` from the package's sources in memory, nothing else."""

    def __init__(self, root: str, files: Mapping[str, str], sha256: str) -> None:
        self.root = root
        self.files = {name[: -len(".py")]: src for name, src in files.items()}
        self.sha256 = sha256

    def find_spec(self, fullname, path=None, target=None):  # type: ignore[no-untyped-def]
        if fullname == self.root:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        prefix, _, leaf = fullname.rpartition(".")
        if prefix == self.root and leaf in self.files:
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec):  # type: ignore[no-untyped-def]
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        if module.__name__ == self.root:
            module.__path__ = []
            return
        leaf = module.__name__.rpartition(".")[2]
        origin = f"<package sha256:{self.sha256[:16]}…/{leaf}.py>"
        module.__file__ = origin
        code = compile(self.files[leaf], origin, "exec", dont_inherit=True)
        exec(code, module.__dict__)  # noqa: S102 - pinned by the signed policy's hash, checked


_IMPORT_LOCK = threading.Lock()


def load_package(data: bytes, *, expected_sha256: str) -> LoadedPackage:
    """Check ``data`` against the pin, then import every module of it (module code runs).

    Modules import each other relatively (``from . import layers``) or by the package's
    root name; they are registered under a name derived from the hash, so two packages
    never share a module.
    """
    actual = hashlib.sha256(data).hexdigest()
    if not hmac.compare_digest(actual, expected_sha256.lower()):
        raise PackageHashMismatch(
            f"model package has SHA-256 {actual}, but the policy pins {expected_sha256}; "
            "none of its code was run"
        )
    parser = PackageParser(max_bytes=len(data))
    parser.feed(data)
    info = parser.finish()
    root = f"cctrain_package_{actual[:24]}"
    finder = _PackageFinder(root, info.files, actual)
    modules: dict[str, types.ModuleType] = {}
    with _IMPORT_LOCK:
        sys.meta_path.insert(0, finder)
        try:
            importlib.import_module(root)
            for name in sorted(finder.files):
                modules[name] = importlib.import_module(f"{root}.{name}")
        finally:
            sys.meta_path.remove(finder)
    return LoadedPackage(sha256=actual, info=info, data=data, modules=modules)


def initial_weights(package: LoadedPackage) -> dict[str, object] | None:
    """The package's initial weights as torch tensors (None when it has none)."""
    if not package.info.tensors:
        return None
    from safetensors.torch import load as load_safetensors

    return dict(load_safetensors(package.data))
