"""The package format: deterministic, read by safetensors, and strict about everything else."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest

from cctrain.package import (
    PackageError,
    build_package,
    check_package_file,
    package_from_dir,
    read_package,
)
from cctrain_enclave.package import PackageParser, load_package
from tests.cli_process import assert_clean_error, cctrain

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

PLAN = "def build_model(shape, n):\n    import torch\n    return torch.nn.Linear(shape[0], n)\n"


def weights() -> bytes:
    out: bytes = safetensors_torch.save(
        {"weight": torch.arange(12.0).reshape(3, 4), "bias": torch.ones(3)}
    )
    return out


def split_header(data: bytes) -> tuple[dict[str, object], bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(header: dict[str, object], buffer: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + buffer


def test_build_is_deterministic_and_safetensors_reads_it() -> None:
    a = build_package({"plan.py": PLAN, "util.py": "X = 1\n"}, weights())
    b = build_package({"util.py": b"X = 1\n", "plan.py": PLAN}, weights())
    assert a == b
    loaded = safetensors_torch.load(a)
    assert torch.equal(loaded["weight"], torch.arange(12.0).reshape(3, 4))
    info = read_package(a)
    assert dict(info.files) == {"plan.py": PLAN, "util.py": "X = 1\n"}
    assert [t.name for t in sorted(info.tensors, key=lambda t: t.start)] == ["bias", "weight"]
    assert build_package({"plan.py": PLAN}) != a  # no weights: another package, another pin


def _mutations() -> list[tuple[str, bytes]]:
    good = build_package({"plan.py": PLAN}, weights())
    header, buffer = split_header(good)
    meta = dict(header["__metadata__"])  # type: ignore[call-overload]
    out: list[tuple[str, bytes]] = []

    def with_meta(**kw: object) -> bytes:
        return join({**header, "__metadata__": {**meta, **kw}}, buffer)

    out.append(("__metadata__.format", with_meta(format="something-else")))
    out.append(("unknown __metadata__ keys", with_meta(extra="x")))
    out.append(("flat module name", with_meta(files=json.dumps({"../evil.py": "x"}))))
    out.append(("flat module name", with_meta(files=json.dumps({"pkg/mod.py": "x"}))))
    out.append(("source is not text", with_meta(files=json.dumps({"plan.py": 3}))))
    out.append(("must map file names", with_meta(files=json.dumps({}))))
    out.append(("not valid JSON", with_meta(files="{")))
    no_meta = {k: v for k, v in header.items() if k != "__metadata__"}
    out.append(("__metadata__ missing", join(no_meta, buffer)))
    bias = dict(header["bias"])  # type: ignore[call-overload]
    out.append(("dtype", join({**header, "bias": {**bias, "dtype": "F4"}}, buffer)))
    out.append(("data_offsets span", join({**header, "bias": {**bias, "shape": [4]}}, buffer)))
    out.append(
        (
            "tile the data buffer",
            join({**header, "bias": {**bias, "data_offsets": [4, 16]}}, buffer),
        )
    )
    out.append(
        ("want dtype, shape, data_offsets", join({**header, "bias": {**bias, "x": 1}}, buffer))
    )
    out.append(("declares", good + b"\0"))
    out.append(("declares", good[:-1]))
    out.append(("shorter than", good[:5]))
    out.append(("header length", struct.pack("<Q", 1 << 40) + good[8:]))
    raw = good[8 : 8 + struct.unpack("<Q", good[:8])[0]]
    dup = raw.replace(
        b'"bias":', b'"bias":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"bias":', 1
    )
    out.append(("appears twice", struct.pack("<Q", len(dup)) + dup + buffer))
    out.append(("not UTF-8", struct.pack("<Q", 4) + b"{\xff\xfe}" + buffer))
    return out


@pytest.mark.parametrize(("reason", "data"), _mutations())
def test_malformed_packages_are_refused_for_their_reason(reason: str, data: bytes) -> None:
    with pytest.raises(PackageError, match=reason.replace("(", r"\(")):
        read_package(data)
    parser = PackageParser(max_bytes=1 << 30)
    with pytest.raises(Exception) as err:
        parser.feed(data)
        parser.finish()
    assert type(err.value).__name__ == "ShardError"


def test_streaming_parser_agrees_at_every_split() -> None:
    good = build_package({"plan.py": PLAN}, weights())
    cases = [good, *(d for _, d in _mutations())]
    for data in cases:
        try:
            want: object = read_package(data).total_size
        except PackageError:
            want = "refused"
        for cut in range(len(data) + 1):
            parser = PackageParser(max_bytes=1 << 30)
            try:
                parser.feed(data[:cut])
                parser.feed(data[cut:])
                got: object = parser.finish().total_size
            except Exception as exc:  # noqa: BLE001 - only ShardError may come out
                assert type(exc).__name__ == "ShardError", exc
                got = "refused"
            assert got == want, (cut, data[:40])


def test_every_byte_flip_is_refused_or_reads_as_safetensors_does() -> None:
    good = build_package({"plan.py": PLAN}, weights())
    n = 8 + struct.unpack("<Q", good[:8])[0]
    for i in range(n):
        for x in (0x01, 0x20, 0x80):
            data = bytearray(good)
            data[i] ^= x
            try:
                info = read_package(bytes(data))
            except PackageError:
                continue
            # Accepted: safetensors itself must read the same tensors.
            loaded = safetensors_torch.load(bytes(data))
            assert sorted(loaded) == sorted(t.name for t in info.tensors)


def test_size_bound_while_streaming() -> None:
    data = build_package({"plan.py": PLAN}, weights())
    parser = PackageParser(max_bytes=len(data) - 1)
    with pytest.raises(Exception, match="max_bytes"):
        parser.feed(data)


def test_load_checks_the_pin_before_running_anything(tmp_path: Path) -> None:
    flag = tmp_path / "ran"
    data = build_package({"plan.py": f"open({str(flag)!r}, 'w').close()\n" + PLAN})
    with pytest.raises(Exception, match="none of its code was run"):
        load_package(data, expected_sha256="00" * 32)
    assert not flag.exists()
    pkg = load_package(data, expected_sha256=hashlib.sha256(data).hexdigest())
    assert flag.exists()
    assert pkg.module("plan").build_model((4,), 2).out_features == 2


def test_relative_imports_stay_inside_the_package() -> None:
    files = {"plan.py": "from . import util\nVALUE = util.X\n", "util.py": "X = 41 + 1\n"}
    data = build_package(files)
    pkg = load_package(data, expected_sha256=hashlib.sha256(data).hexdigest())
    assert pkg.module("plan").VALUE == 42
    other = build_package({"plan.py": "from . import util\nVALUE = util.X\n", "util.py": "X = 7\n"})
    assert (
        load_package(other, expected_sha256=hashlib.sha256(other).hexdigest()).module("plan").VALUE
        == 7
    )


def test_package_from_dir(tmp_path: Path) -> None:
    (tmp_path / "plan.py").write_text(PLAN)
    (tmp_path / "weights.safetensors").write_bytes(weights())
    data = package_from_dir(tmp_path)
    assert data == build_package({"plan.py": PLAN}, weights())
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(PackageError, match="nothing else"):
        package_from_dir(tmp_path)


def test_cli_builds_inspects_and_refuses_junk(tmp_path: Path) -> None:
    src = tmp_path / "pkg"
    src.mkdir()
    (src / "plan.py").write_text(PLAN)
    out = tmp_path / "model.pkg"
    proc = cctrain("model", "package", str(src), "-o", str(out), "--format", "json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert doc["files"] == {"plan.py": len(PLAN)}
    check_package_file(out)
    (tmp_path / "junk.pkg").write_bytes(b"\x10\0\0\0\0\0\0\0{not json}      ")
    line = assert_clean_error(
        cctrain("model", "inspect", str(tmp_path / "junk.pkg"), cwd=tmp_path), 2
    )
    assert "not valid JSON" in line
