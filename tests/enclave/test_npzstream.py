"""The strict NPZ parser: what numpy.savez writes, it reads exactly as np.load does (the
reference reader, used only here), however the stream is cut; anything a zip reader could
read two ways, it refuses with a clear ShardError."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zipfile
import zlib
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cctrain.errors import ShardError
from cctrain_enclave.npzstream import NpzParser
from cctrain_enclave.shards import (
    ShardArrays,
    empty_arrays,
    parse_shard,
    summarize_arrays,
)
from tests.enclave.npzcraft import CENTRAL_FIELDS, LOCAL_FIELDS, Archive, np_load, savez, set_field

SCHEMA: dict[str, Any] = {
    "formats": ("npz",),
    "features": {"shape": [4], "dtype": "float32"},
    "labels": {"num_classes": 5},
    "max_rows": 10**6,
    "min_rows": 1,
}


def stream(data: bytes, cuts: list[int], schema: Any = SCHEMA, out: Any = None) -> Any:
    p = NpzParser(schema, out=out)
    pos = 0
    for n in cuts:
        p.feed(data[pos : pos + n])
        pos += n
    p.feed(data[pos:])
    return p.finish()


def refused(data: bytes, text: str, schema: Any = SCHEMA) -> str:
    with pytest.raises(ShardError) as info:
        stream(data, [5, 100, 3])
    assert text in str(info.value), str(info.value)
    return str(info.value)


def good(rows: int = 20, **kw: Any) -> bytes:
    rng = np.random.default_rng(rows)
    return savez(
        features=rng.normal(size=(rows, 4)).astype(np.float32),
        labels=rng.integers(0, 5, rows),
        **kw,
    )


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(min_value=0, max_value=300),
    width=st.integers(min_value=1, max_value=6),
    fdtype=st.sampled_from(["float32", "float64", "int16", ">f4"]),
    ldtype=st.sampled_from(["int64", "int32", "uint8", "float32", ">i8"]),
    nan=st.booleans(),
    compressed=st.booleans(),
    labels_first=st.booleans(),
    fortran=st.booleans(),
    cuts=st.lists(st.integers(min_value=1, max_value=5000), max_size=20),
)
def test_streamed_summary_equals_the_reference_reader(
    rows: int,
    width: int,
    fdtype: str,
    ldtype: str,
    nan: bool,
    compressed: bool,
    labels_first: bool,
    fortran: bool,
    cuts: list[int],
) -> None:
    rng = np.random.default_rng(rows)
    features = rng.normal(size=(rows, width)).astype(fdtype)
    if fortran:
        features = np.asfortranarray(features)
    if nan and rows and features.dtype.kind == "f":
        features[rows // 2, 0] = np.nan
    labels = rng.integers(-1, 5, size=rows).astype(ldtype)
    arrays = {"labels": labels, "features": features} if labels_first else {}
    arrays.update(features=features, labels=labels)
    data = savez(compressed=compressed, **arrays)
    ref = np_load(data)
    schema = {**SCHEMA, "features": {"shape": [width], "dtype": "float32"}}
    assert stream(data, cuts, schema) == summarize_arrays(
        ShardArrays(ref["features"], ref["labels"])
    )


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("fdtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(4,), (2, 3), (1, 5, 5)])
def test_training_arrays_equal_the_reference_reader(
    compressed: bool, fdtype: str, shape: tuple[int, ...]
) -> None:
    rng = np.random.default_rng(7)
    schema = {**SCHEMA, "features": {"shape": list(shape), "dtype": fdtype}}
    for fortran in (False, True):
        x = rng.normal(size=(33, *shape)).astype(fdtype)
        x = np.asfortranarray(x) if fortran else x
        y = rng.integers(0, 5, 33).astype(np.int32)
        data = savez(compressed=compressed, labels=y, features=x)  # labels first
        ref = np_load(data)
        for block in (1, 13, 1 << 20):
            got = parse_shard("npz", data, schema, block=block)
            np.testing.assert_array_equal(got.features, ref["features"].astype(np.float32))
            np.testing.assert_array_equal(got.labels, ref["labels"].astype(np.int64))
            assert got.features.dtype == np.float32 and got.labels.dtype == np.int64


def test_a_member_that_does_not_fit_the_receipt_is_refused_at_training() -> None:
    data = good(20)
    with pytest.raises(ShardError, match="receipt's 19 rows"):
        stream(data, [], out=empty_arrays(19, SCHEMA))


# -- each ambiguity, refused -----------------------------------------------------------------


def test_hidden_end_record_in_the_comment() -> None:
    """The attack: np.load follows the last end record, hidden in the visible one's comment."""
    visible = good(200)
    hidden = savez(
        compressed=True,
        features=np.tile(np.float32([1, 2, 3, 4]), (20_000, 1)),
        labels=np.tile(np.int64([0, 1]), 10_000),
    )
    crafted = visible[:-2] + struct.pack("<H", len(hidden)) + hidden
    assert len(np_load(crafted)["labels"]) == 20_000  # what the old training path read
    refused(crafted, "comment")


@pytest.mark.parametrize(
    "comment", [b"harmless words", b"PK\x05\x06", b"PK\x01\x02" + b"\0" * 50], ids=str
)
def test_any_archive_comment(comment: bytes) -> None:
    data = Archive.parse(good()).build(comment=comment)
    if b"PK" not in comment:
        assert len(np_load(data)["labels"]) == 20
    refused(data, f"{len(comment)}-byte comment")


def test_a_second_end_record_after_the_first() -> None:
    data = good()
    refused(data + data[-22:], "trailing data")


def test_trailing_and_prefix_bytes() -> None:
    data = good()
    refused(data + b"x", "trailing data")
    # A prefix that looks like an empty archive's end record (np.load checks the magic).
    prefix = b"PK\x05\x06" + b"\0" * 60
    prefixed = Archive.parse(data).build(prefix=prefix)
    assert len(np_load(prefixed)["labels"]) == 20  # zipfile tolerates a prefix
    refused(prefixed, "does not start with a zip member")
    unfixed = prefix + data  # offsets not shifted: zipfile relocates them itself
    assert len(np_load(unfixed)["labels"]) == 20
    refused(unfixed, "does not start with a zip member")


def test_a_gap_between_members() -> None:
    a = Archive.parse(good())
    a.gaps[0] = b"\0" * 40
    data = a.build()
    assert len(np_load(data)["labels"]) == 20
    refused(data, "unexpected bytes at offset")


@pytest.mark.parametrize(
    ("field", "delta", "text"),
    [
        ("crc", 1, "crc"),
        ("usize", 1, "size"),
        ("csize", 1, "compressed size"),
        ("flags", 0x0800, "flags"),
    ],
)
def test_central_directory_disagrees_with_local_header(field: str, delta: int, text: str) -> None:
    a = Archive.parse(good())
    off, fmt = CENTRAL_FIELDS[field]
    value = struct.unpack_from(fmt, a.centrals[1], off)[0]
    set_field(a.centrals[1], off, fmt, value + delta)
    refused(a.build(), text)


def test_central_directory_names_another_member() -> None:
    data = bytearray(good())
    data[data.rfind(b"labels.npy")] ^= 0x01
    refused(bytes(data), "'mabels.npy'")


def test_central_directory_method_differs() -> None:
    a = Archive.parse(good())
    off, fmt = CENTRAL_FIELDS["method"]
    set_field(a.centrals[0], off, fmt, 8)
    refused(a.build(), "method 8")


def test_overlapping_members() -> None:
    """Both directory entries point at the first member."""
    a = Archive.parse(good())
    data = bytearray(a.build())
    cd = bytes(data).rfind(b"PK\x01\x02")
    struct.pack_into("<I", data, cd + 42, 0)
    refused(bytes(data), "offset 0, local header")


def test_directory_entries_in_another_order() -> None:
    a = Archive.parse(good())
    a.centrals.reverse()
    data = a.build(fix_offsets=False)
    assert len(np_load(data)["labels"]) == 20
    refused(data, "does not match its local header")


def test_end_record_that_miscounts_or_misplaces_the_directory() -> None:
    a = Archive.parse(good())
    refused(a.build(end_fields={"n": 1}), "the end record counts 1 members")
    refused(a.build(end_fields={"cd_off": 3}), "places the central directory")
    refused(a.build(end_fields={"disk": 1}), "another disk")


def test_data_descriptor() -> None:
    class Unseekable(io.RawIOBase):
        def __init__(self) -> None:
            self.buf = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, b: Any) -> int:
            self.buf += b
            return len(b)

    sink = Unseekable()
    with zipfile.ZipFile(sink, "w") as zf:
        for name, arr in (("features", np.zeros((3, 4), np.float32)), ("labels", np.zeros(3, int))):
            buf = io.BytesIO()
            np.save(buf, arr)
            zf.writestr(name + ".npy", buf.getvalue())
    data = bytes(sink.buf)
    assert len(np_load(data)["labels"]) == 3
    refused(data, "data descriptor")


def test_encrypted_flag_and_unknown_methods() -> None:
    a = Archive.parse(good())
    for rec, (off, fmt) in (
        (a.locals[0], LOCAL_FIELDS["flags"]),
        (a.centrals[0], CENTRAL_FIELDS["flags"]),
    ):
        set_field(rec, off, fmt, 1)
    refused(a.build(), "encrypted")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_BZIP2) as zf:
        for name, arr in (("features", np.zeros((3, 4), np.float32)), ("labels", np.zeros(3, int))):
            b = io.BytesIO()
            np.save(b, arr)
            zf.writestr(name + ".npy", b.getvalue())
    refused(buf.getvalue(), "compression method 12")


def test_extra_missing_and_duplicate_members() -> None:
    refused(good(other=np.zeros(3)), "exactly 'features' and 'labels', found member 'other.npy'")
    refused(savez(features=np.zeros((3, 4), np.float32)), "exactly 'features' and 'labels', got")
    buf = io.BytesIO()
    with (
        pytest.warns(UserWarning, match="Duplicate name"),
        zipfile.ZipFile(buf, "w") as zf,
    ):
        for name, arr in (
            ("features", np.zeros((3, 4), np.float32)),
            ("labels", np.zeros(3, int)),
            ("labels", np.ones(3, int)),
        ):
            b = io.BytesIO()
            np.save(b, arr)
            zf.writestr(name + ".npy", b.getvalue())
    refused(buf.getvalue(), "'labels.npy' appears twice")


def test_object_arrays_are_never_unpickled() -> None:
    data = savez(features=np.array([None, 1], dtype=object), labels=np.zeros(2, int))
    refused(data, "pickle is never allowed")


@pytest.mark.parametrize(
    "arr", [np.zeros((3, 4), np.complex64), np.zeros((3, 4), "U2"), np.zeros(3, "M8[s]")], ids=str
)
def test_other_dtypes(arr: np.ndarray) -> None:
    refused(savez(features=arr, labels=np.zeros(3, int)), "only plain numbers")


def test_npy_header_not_in_numpys_layout() -> None:
    data = bytearray(good())
    i = data.find(b"'fortran_order': False")
    data[i : i + 22] = b"'fortran_order':False "
    # Keep the CRCs right so only the header's layout is wrong.
    a = Archive.parse(bytes(data))
    _fix_crc(a, 0)
    refused(a.build(), "not in the layout numpy writes")


def _fix_crc(a: Archive, i: int) -> None:
    rec = a.locals[i]
    nlen, xlen = struct.unpack_from("<HH", rec, 26)
    crc = zlib.crc32(bytes(rec[30 + nlen + xlen :]))
    set_field(rec, 14, "<I", crc)
    set_field(a.centrals[i], 16, "<I", crc)


def test_sizes_beyond_the_schema_bound() -> None:
    schema = {**SCHEMA, "max_rows": 10}
    with pytest.raises(ShardError, match="over the schema bound"):
        stream(good(2000), [], schema)


def test_zip_bomb_inflates_no_more_than_declared() -> None:
    """A deflated labels member whose headers declare 20 rows but whose stream inflates to
    256 MiB: the parser stops one byte past the declared size, in constant memory."""
    a = Archive.parse(good(20, **{}))
    plain = io.BytesIO()
    np.save(plain, np.zeros(20, np.int64))
    npy = plain.getvalue()
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = c.compress(npy)
    zeros = b"\0" * (1 << 20)
    for _ in range(256):
        bomb += c.compress(zeros)
    bomb += c.flush()
    rec = a.locals[1]
    nlen, xlen = struct.unpack_from("<HH", rec, 26)
    header = bytearray(rec[: 30 + nlen + xlen])
    set_field(header, 8, "<H", 8)
    set_field(header, 14, "<I", zlib.crc32(npy))
    struct.pack_into("<QQ", header, 30 + nlen + 4, len(npy), len(bomb))  # zip64: usize, csize
    a.locals[1] = header + bomb
    cd = a.centrals[1]
    for field, value in (
        ("method", 8),
        ("crc", zlib.crc32(npy)),
        ("csize", len(bomb)),
        ("usize", len(npy)),
    ):
        set_field(cd, CENTRAL_FIELDS[field][0], CENTRAL_FIELDS[field][1], value)
    data = a.build()
    tracemalloc.start()
    try:
        with pytest.raises(ShardError, match="holds more than the 288 bytes it declares"):
            stream(data, [1 << 20] * (len(data) >> 20))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"peak {peak} bytes while refusing a bomb of 256 MiB"


def test_truncated_empty_and_not_a_zip() -> None:
    data = good()
    refused(data[:-1], "ends at offset")
    refused(data[: len(data) // 2], "ends at offset")
    with pytest.raises(ShardError, match="empty"):
        stream(b"", [])
    refused(b"PK", "ends at offset")
    refused(b"not a zip at all", "does not start with a zip member")


def test_zip64_end_record_is_read() -> None:
    """Writers add a zip64 end record and locator once an archive is large; accepted when
    every field agrees with the directory it points at."""
    a = Archive.parse(good())
    data = a.build(zip64_end=True)
    ref = np_load(data)
    got = parse_shard("npz", data, SCHEMA)
    np.testing.assert_array_equal(got.labels, ref["labels"])
    bad = bytearray(data)
    z = bytes(bad).rfind(b"PK\x06\x06")
    struct.pack_into("<Q", bad, z + 48, 7)  # the directory offset it gives
    refused(bytes(bad), "places the central directory")


def test_zip64_directory_fields_are_read() -> None:
    """Past 2 GiB, zipfile moves a directory entry's sizes and offset into a zip64 field and
    writes 0xFFFFFFFF in their place; the values in the field count."""
    a = Archive.parse(good())
    entry = a.centrals[1]
    nlen = struct.unpack_from("<H", entry, 28)[0]
    usize, csize, offset = (struct.unpack_from("<I", entry, at)[0] for at in (24, 20, 42))
    fixed = bytearray(entry[:46])
    for at in (20, 24, 42):
        set_field(fixed, at, "<I", 0xFFFFFFFF)
    set_field(fixed, 30, "<H", 28)
    extra = struct.pack("<HHQQQ", 1, 24, usize, csize, offset)
    a.centrals[1] = fixed + entry[46 : 46 + nlen] + extra
    data = a.build(fix_offsets=False)
    np.testing.assert_array_equal(parse_shard("npz", data, SCHEMA).labels, np_load(data)["labels"])
    a.centrals[1] = fixed + entry[46 : 46 + nlen] + extra[:-8]  # the offset left out
    set_field(a.centrals[1], 30, "<H", 20)
    struct.pack_into("<H", a.centrals[1], 46 + nlen + 2, 16)
    refused(a.build(fix_offsets=False), "zip64 field that does not fit")


def test_local_sizes_may_be_written_in_full_with_zip64() -> None:
    """Some zipfile versions put the real sizes in the 32-bit fields as well as the zip64
    field; both forms read alike. Disagreeing values are refused."""
    a = Archive.parse(good())
    rec = a.locals[0]
    nlen = struct.unpack_from("<H", rec, 26)[0]
    usize, csize = struct.unpack_from("<QQ", rec, 30 + nlen + 4)
    set_field(rec, 18, "<I", csize)
    set_field(rec, 22, "<I", usize)
    assert stream(a.build(), []).rows == 20
    set_field(rec, 22, "<I", usize + 1)
    refused(a.build(), "disagrees with its zip64 field")


def test_refusal_is_sticky() -> None:
    p = NpzParser(SCHEMA)
    with pytest.raises(ShardError) as first:
        p.feed(b"junk")
    with pytest.raises(ShardError) as again:
        p.feed(good())
    assert again.value is first.value
    with pytest.raises(ShardError):
        p.finish()


# -- any single corruption: refused, or read exactly as the reference reader reads it ------------

_VALID = {
    (compressed, order): savez(
        compressed=compressed,
        **(
            {
                "features": np.arange(24, dtype=np.float32).reshape(6, 4) / 7,
                "labels": np.arange(6) % 5,
            }
            if order
            else {
                "labels": np.arange(6) % 5,
                "features": np.arange(24, dtype=np.float32).reshape(6, 4),
            }
        ),
    )
    for compressed in (False, True)
    for order in (False, True)
}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=st.sampled_from(sorted(_VALID)),
    where=st.floats(min_value=0, max_value=1, exclude_max=True),
    xor=st.integers(min_value=1, max_value=255),
)
@example(key=(False, True), where=0.999, xor=1)  # the end record's comment length
def test_a_flipped_byte_is_refused_or_read_as_the_reference_reads_it(
    key: tuple[bool, bool], where: float, xor: int
) -> None:
    data = bytearray(_VALID[key])
    data[int(where * len(data))] ^= xor
    mutated = bytes(data)
    try:
        got = parse_shard("npz", mutated, SCHEMA)
    except ShardError:
        return  # refusing is always allowed
    ref = np_load(mutated)  # accepted: numpy must read exactly the same arrays
    assert set(ref) == {"features", "labels"}
    np.testing.assert_array_equal(got.features, ref["features"].astype(np.float32))
    np.testing.assert_array_equal(got.labels, ref["labels"].astype(np.int64))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_only_raise_shard_errors(raw: bytes) -> None:
    for data in (raw, _VALID[(False, True)][:200] + raw):
        try:
            stream(data, [3, 50])
        except ShardError:
            pass
