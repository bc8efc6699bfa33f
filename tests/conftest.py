from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# No timing assertions in tests: hypothesis deadlines off (first calls pay import costs).
settings.register_profile("cctrain", deadline=None, derandomize=False)
settings.load_profile("cctrain")

REPO = Path(__file__).resolve().parents[1]
#: Real evidence captured on real machines lives beside the checkout, never in it.
VECTORS = REPO.parent / "shared" / "attestation-vectors"


# What a party remembers (journal heads, approvals, ε ledger) lives in its state directory,
# $CCTRAIN_HOME by default: never the developer's own ~/.cctrain. Session-wide fixtures use
# this one; every test gets a fresh one of its own (a party that has seen nothing yet).
os.environ["CCTRAIN_HOME"] = tempfile.mkdtemp(prefix="cctrain-home-")


@pytest.fixture(autouse=True)
def party_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("home")
    old = os.environ["CCTRAIN_HOME"]
    os.environ["CCTRAIN_HOME"] = str(home)
    yield home
    os.environ["CCTRAIN_HOME"] = old


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    if not (VECTORS / "PROVENANCE.md").is_file():
        pytest.skip(
            f"attestation vectors not found at {VECTORS} (they live in ../shared/, beside the checkout)"
        )
    return VECTORS
