"""glibc allocator settings for processes that stream large chunks (the enclave's serve, an
upload from the CLI).

Every chunk of an upload makes a few buffers of about a chunk (1 MiB by default): the
ciphertext, the protobuf message and its serialisation, the plaintext. glibc serves
allocations above its mmap threshold (128 KiB at start; it adapts, up to 32 MiB, but gives
memory above its trim threshold back to the system at every free) with fresh pages, so each
chunk pays for faulting its buffers in again: measured here, protobuf encoding of a 1 MiB
chunk runs at 70-220 MB/s that way and at 1.7-8 GB/s with the settings below
(``benchmarks/bench_ingest.py`` measures it). A fixed mmap threshold above the largest
chunk keeps those buffers in the heap, and a trim threshold of a few chunks' worth keeps
the freed ones mapped for the next chunk; what stays mapped is bounded by
:data:`TRIM_THRESHOLD` beyond the live buffers.

Process-wide, so only an entry point calls :func:`tune_for_streaming` (the library does not,
in a process it does not own). A no-op where the C library has no ``mallopt`` (musl, macOS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

#: glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Above protocol.MAX_CHUNK_SIZE (4 MiB) plus its framing: no chunk buffer is mmapped.
MMAP_THRESHOLD = 8 << 20
#: Free heap memory kept mapped for the next chunks (a few chunks' worth).
TRIM_THRESHOLD = 32 << 20
#: Set to 0 to leave the allocator as it is (to measure the difference).
ENV = "CCTRAIN_TUNE_MALLOC"

_done = False


def tune_for_streaming() -> bool:
    """Apply the settings once per process; True if the allocator took them."""
    global _done
    if _done or os.environ.get(ENV, "1") == "0":
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    return _done
