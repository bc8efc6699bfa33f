"""The demo's data: scikit-learn's bundled handwritten-digits set (1,797 8×8 images, 10 classes).

Nothing is downloaded: the set ships inside scikit-learn.  A held-out test set
(20 %, stratified) stays with the evaluator; the rest is split non-IID across
three "hospitals", the way real sites differ: A sees mostly classes 0–4, B
mostly 5–9, C is a small site with a little of everything.  Features are
scaled to [0, 1] by the fixed pixel range (0–16), a constant every party knows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NUM_CLASSES = 10
FEATURES = 64


@dataclass(frozen=True)
class DemoData:
    shards: dict[str, tuple[np.ndarray, np.ndarray]]
    test: tuple[np.ndarray, np.ndarray]


def load_demo_data(seed: int = 7) -> DemoData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    ds = load_digits()
    x = (ds.data / 16.0).astype(np.float32)
    y = ds.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=seed
    )
    rng = np.random.default_rng(seed)
    a, b, c = [], [], []
    for label in range(NUM_CLASSES):
        idx = rng.permutation(np.flatnonzero(y_train == label))
        small = idx[:12]  # hospital C: a little of every class
        rest = idx[12:]
        major, minor = (a, b) if label < 5 else (b, a)
        k = int(len(rest) * 0.92)
        major.append(rest[:k])  # the site that sees this class a lot
        minor.append(rest[k:])  # the other sees it rarely
        c.append(small)
    shards = {
        name: (x_train[np.concatenate(parts)], y_train[np.concatenate(parts)])
        for name, parts in (("hospital-a", a), ("hospital-b", b), ("hospital-c", c))
    }
    return DemoData(shards, (x_test, y_test))
