"""What every benchmark records about the machine it ran on."""

from __future__ import annotations

import importlib
import os
import platform
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    versions = {}
    for name, module in (
        ("torch", "torch"),
        ("grpcio", "grpc"),
        ("cryptography", "cryptography"),
        ("numpy", "numpy"),
    ):
        try:
            versions[name] = importlib.import_module(module).__version__
        except ImportError:
            versions[name] = None
    return {
        "cpu_count": os.cpu_count(),
        "processor": cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }
