from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

# No timing assertions in tests: hypothesis deadlines off (first calls pay import costs).
settings.register_profile("cctrain", deadline=None, derandomize=False)
settings.load_profile("cctrain")

REPO = Path(__file__).resolve().parents[1]
#: Real evidence captured on real machines lives beside the checkout, never in it.
VECTORS = REPO.parent / "shared" / "attestation-vectors"


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    if not (VECTORS / "PROVENANCE.md").is_file():
        pytest.skip(
            f"attestation vectors not found at {VECTORS} (they live in ../shared/, beside the checkout)"
        )
    return VECTORS
