"""What the three campaigns share: their size, the status codes the enclave answers on
purpose, a log watch for errors nobody decided on, and the figures they report.

Each campaign module has ``run_campaign(tmp, full=...)`` returning its figures; its test
runs the small version in the default suite, and ``CCTRAIN_CAMPAIGN=full`` (or
``benchmarks/campaigns.py``) runs the full one. All randomness a campaign chooses (inputs,
shard sizes, kill points) comes from fixed seeds; keys, nonces and the enclave's own
secrets stay cryptographically random, as in production.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

#: ``CCTRAIN_CAMPAIGN=full`` runs the full campaigns instead of the small ones.
FULL = os.environ.get("CCTRAIN_CAMPAIGN", "").lower() == "full"

#: The status codes the enclave answers with on purpose. Anything else (INTERNAL, UNKNOWN,
#: UNAVAILABLE, ...) is an error nobody decided on: a "non-cctrain error".
DELIBERATE = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.DATA_LOSS,
    }
)

#: What gRPC logs when a handler raised, a request did not deserialize, or a response
#: iterator failed: each is an input the enclave did not answer on purpose.
GRPC_UNHANDLED = (
    "Exception calling application",
    "Exception deserializing",
    "Exception iterating responses",
    "Exception serializing",
)


class LogWatch(logging.Handler):
    """Every ERROR record, and every record of an unhandled exception, from any logger."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._lock_ = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if record.levelno >= logging.ERROR or any(m in msg for m in GRPC_UNHANDLED):
            with self._lock_:
                self.records.append(record)

    def lines(self, since: int = 0) -> list[str]:
        with self._lock_:
            return [f"{r.name} {r.levelname}: {r.getMessage()[:300]}" for r in self.records[since:]]

    def count(self) -> int:
        with self._lock_:
            return len(self.records)

    def __enter__(self) -> LogWatch:
        root = logging.getLogger()
        self._old_level = root.level
        root.addHandler(self)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
        # gRPC's own logger may have been told not to propagate; watch it directly too.
        self._grpc = logging.getLogger("grpc")
        self._grpc_propagates = self._grpc.propagate
        if not self._grpc.propagate:
            self._grpc.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeHandler(self)
        logging.getLogger().setLevel(self._old_level)
        if not self._grpc_propagates:
            self._grpc.removeHandler(self)


@dataclass
class Figures:
    """One campaign's result: the line it prints, its numbers, and what went wrong."""

    name: str
    line: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "line": self.line, **self.numbers, "problems": self.problems}


#: Every figure reported in this process (the campaigns' conftest prints them at the end).
REPORTED: list[Figures] = []


def report(figures: Figures) -> Figures:
    """Print the figure; with ``CCTRAIN_CAMPAIGN_OUT`` set, also append it there as JSON."""
    print(figures.line, flush=True)
    REPORTED.append(figures)
    out = os.environ.get("CCTRAIN_CAMPAIGN_OUT")
    if out:
        with open(Path(out), "a") as fh:
            fh.write(json.dumps(figures.to_json(), default=str) + "\n")
    return figures
