"""The second demo's data: scikit-learn's bundled breast-cancer set (569 patients, 30 features).

Nothing is downloaded: the set ships inside scikit-learn. The rows are split four ways, the way
such a consortium could look: a held-out test set stays with the evaluator (the demo's referee,
who scores every model); the model owner holds a small set of its own (it pretrains its initial
weights and its input normalisation on it); three hospitals hold the rest, and see different
patients: A is a screening centre (mostly benign), B a referral centre (mostly malignant), C a
small clinic with some of both. Each hospital's shard is a CSV with named columns (the
feature names scikit-learn gives, and a ``diagnosis`` column of the strings ``malignant`` and
``benign``), as a hospital's export would be.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LABELS = ("malignant", "benign")  # scikit-learn's target_names, in index order


@dataclass(frozen=True)
class Split:
    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class DemoData:
    feature_names: tuple[str, ...]
    owner: Split
    hospitals: dict[str, Split]
    test: Split


def load_demo_data(seed: int = 11) -> DemoData:
    from sklearn.datasets import load_breast_cancer

    ds = load_breast_cancer()
    x = ds.data.astype(np.float32)
    y = ds.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    test, owner, rest = np.split(order, [114, 154])
    # Sites differ: A is a screening centre (mostly benign), B a referral centre (mostly
    # malignant), C a small clinic with a little of both.
    benign, malignant = rest[y[rest] == 1], rest[y[rest] == 0]
    nb, nm = len(benign), len(malignant)
    a = np.concatenate([benign[: int(nb * 0.7)], malignant[: int(nm * 0.15)]])
    b = np.concatenate(
        [benign[int(nb * 0.7) : int(nb * 0.85)], malignant[int(nm * 0.15) : int(nm * 0.85)]]
    )
    c = np.concatenate([benign[int(nb * 0.85) :], malignant[int(nm * 0.85) :]])
    names = tuple(str(n) for n in ds.feature_names)
    return DemoData(
        feature_names=names,
        owner=Split(x[owner], y[owner]),
        hospitals={
            "hospital-a": Split(x[a], y[a]),
            "hospital-b": Split(x[b], y[b]),
            "hospital-c": Split(x[c], y[c]),
        },
        test=Split(x[test], y[test]),
    )


def write_csv(path: Path, split: Split, feature_names: tuple[str, ...]) -> Path:
    """A hospital's export: named columns, the diagnosis as text."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*feature_names, "diagnosis"])
        for row, label in zip(split.x, split.y, strict=True):
            w.writerow([*(f"{v:.6g}" for v in row), LABELS[int(label)]])
    return path
