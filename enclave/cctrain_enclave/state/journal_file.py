"""The journal on the host's disk: an append-only file of length-prefixed signed entries.

Every append is one ``write`` followed by ``fsync`` before the transition it records is
acknowledged. On start the whole file is read back and handed to
:func:`cctrain.journal.replay`, which verifies every entry; this module only frames bytes.

A crash can leave the last append incomplete (the file ends inside the final record): that
record was never acknowledged, so it is cut off with a warning. Anything else (a complete
record that does not verify, a bad length in the middle) is the replay's to refuse.
Truncating whole records is a rollback, which the parties detect (see the rollback issue).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from cctrain.files import atomic_write
from cctrain.journal import JournalError, Record, frame, parse_record, unframe

log = logging.getLogger("cctrain.enclave.state")


class JournalFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> list[Record]:
        data = self.path.read_bytes()
        raws, end = unframe(data)
        if end != len(data):
            log.warning(
                "journal: %d bytes after entry #%d are an incomplete append (a crash while "
                "writing); cutting them off: that transition was never acknowledged",
                len(data) - end,
                len(raws) - 1,
            )
            with open(self.path, "r+b") as fh:
                fh.truncate(end)
                os.fsync(fh.fileno())
        return [parse_record(r, position=i) for i, r in enumerate(raws)]

    def create(self, genesis: Record) -> None:
        """Start a new journal with its genesis entry (atomically: all of it or nothing)."""
        atomic_write(self.path, frame(genesis.raw))

    def append(self, record: Record) -> None:
        """Durably append one record: it is on disk when this returns."""
        data = frame(record.raw)
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            end = os.fstat(fd).st_size
            try:
                written = os.write(fd, data)
                if written != len(data):
                    raise JournalError(f"journal append wrote {written} of {len(data)} bytes")
                os.fsync(fd)
            except BaseException:
                # Never leave half a record for the next append to follow (e.g. disk full).
                os.ftruncate(fd, end)
                raise
            finally:
                os.close(fd)
