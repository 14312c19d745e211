"""The Palmer penguins (Gorman, Williams & Fraser 2014; CC0), read from the CSV inside the
`palmerpenguins` package: four measurements per bird, three tasks about the same bird."""

from __future__ import annotations

import csv
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FEATURES = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
TASKS = {
    "species": ["Adelie", "Chinstrap", "Gentoo"],
    "island": ["Biscoe", "Dream", "Torgersen"],
    "sex": ["female", "male"],
}
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Split:
    features: np.ndarray  # float32 [N, 4], raw (the trunk standardises)
    targets: dict[str, np.ndarray]  # per task, int64 class indices [N]


def csv_path() -> Path:
    spec = importlib.util.find_spec("palmerpenguins")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the penguins come from `palmerpenguins`: pip install 'trunkline-tabular[data]'"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "penguins.csv"


def load(split: str) -> Split:
    """Birds with every field known (333 of 344); row i of those is in test when i % 5 == 0,
    validation when i % 5 == 1, train otherwise."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}, expected one of {SPLITS}")
    with csv_path().open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if all(r[c] not in ("", "NA") for c in [*FEATURES, *TASKS])]
    part = {"test": 0, "validation": 1}
    rows = [r for i, r in enumerate(rows) if (i % 5 == part[split] if split in part else i % 5 > 1)]
    features = np.array([[float(r[c]) for c in FEATURES] for r in rows], np.float32)
    targets = {t: np.array([labels.index(r[t]) for r in rows], np.int64) for t, labels in TASKS.items()}
    return Split(features, targets)
