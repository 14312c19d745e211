"""Task kinds: everything that differs between a classification, multi-label or dense task,
in one class per kind, found by name in `KINDS` (as timm finds layers in its registries).

A kind knows how its logits become probabilities, its training and distillation losses,
its metric, and how one task's outputs are written for the two wire formats (a JSON object
per instance for /v1, named tensors for the Open Inference Protocol). Adding a kind is one
class here; nothing else branches on the kind.
"""

from __future__ import annotations

import base64
import io
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


class Metric:
    """Accumulates one task's primary metric over batches of (probabilities, targets)."""

    def __init__(self) -> None:
        self.correct, self.total = 0, 0

    def update(self, probs: torch.Tensor, target: np.ndarray) -> None:
        raise NotImplementedError

    def value(self) -> float:
        return self.correct / max(self.total, 1)


class _Accuracy(Metric):
    def update(self, probs: torch.Tensor, target: np.ndarray) -> None:
        self.correct += int((probs.argmax(-1).numpy() == target).sum())
        self.total += len(target)


class _F1(Metric):
    """F1 of the positive class (the last label, e.g. `spam`): for imbalanced binary tasks."""

    def __init__(self) -> None:
        super().__init__()
        self.tp = self.fp = self.fn = 0

    def update(self, probs: torch.Tensor, target: np.ndarray) -> None:
        positive = probs.shape[-1] - 1
        pred, truth = probs.argmax(-1).numpy() == positive, np.asarray(target) == positive
        self.tp += int((pred & truth).sum())
        self.fp += int((pred & ~truth).sum())
        self.fn += int((~pred & truth).sum())

    def value(self) -> float:
        return 2 * self.tp / max(2 * self.tp + self.fp + self.fn, 1)


class _ExactMatch(Metric):
    def update(self, probs: torch.Tensor, target: np.ndarray) -> None:
        self.correct += int(((probs.numpy() >= 0.5) == (target >= 0.5)).all(axis=1).sum())
        self.total += len(target)


class _MeanIoU(Metric):
    """Mean IoU over classes; classes absent from both truth and prediction are left out."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.inter, self.union = np.zeros(num_classes), np.zeros(num_classes)

    def update(self, probs: torch.Tensor, target: np.ndarray) -> None:
        C = len(self.inter)
        pred, truth = probs.argmax(1).numpy().reshape(-1), target.reshape(-1)
        confusion = np.bincount(truth * C + pred, minlength=C * C).reshape(C, C)
        tp = np.diag(confusion)
        self.inter += tp
        self.union += confusion.sum(0) + confusion.sum(1) - tp

    def value(self) -> float:
        present = self.union > 0
        return float((self.inter[present] / self.union[present]).mean())


class _PearsonR(Metric):
    """Pearson correlation of predictions and targets over everything seen."""

    def __init__(self) -> None:
        super().__init__()
        self.pred: list[np.ndarray] = []
        self.truth: list[np.ndarray] = []

    def update(self, probs: torch.Tensor, target: np.ndarray) -> None:
        self.pred.append(probs.reshape(-1).numpy().astype(np.float64))
        self.truth.append(np.asarray(target, np.float64).reshape(-1))

    def value(self) -> float:
        pred, truth = np.concatenate(self.pred), np.concatenate(self.truth)
        if len(pred) < 2 or pred.std() == 0 or truth.std() == 0:
            return 0.0
        return float(np.corrcoef(pred, truth)[0, 1])


def _kl(student: torch.Tensor, teacher: torch.Tensor, dim: int) -> torch.Tensor:
    log_p, q = F.log_softmax(student, dim=dim), F.softmax(teacher, dim=dim)
    return (q * (q.clamp_min(1e-8).log() - log_p)).sum(dim=dim).mean()


class TaskKind:
    """One kind of task output. Probabilities are what backends return and encoders read."""

    name: ClassVar[str]
    metric_name: ClassVar[str]

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def distill(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Loss that matches the full route's output (teacher logits, detached)."""
        raise NotImplementedError

    def metric(self, num_classes: int, name: str | None = None) -> Metric:
        """The kind's metric, or the one `name`d (a task's `metric` in its spec)."""
        raise NotImplementedError

    def to_json(self, probs: np.ndarray, labels: list[str], options: dict) -> dict:
        """One instance's output in /v1 (probs: this instance's row)."""
        raise NotImplementedError

    def to_tensors(self, task: str, probs: np.ndarray) -> dict[str, np.ndarray]:
        """A batch's outputs as Open Inference Protocol tensors, by output name."""
        raise NotImplementedError

    def tensor_specs(self, task: str, num_classes: int, output_shape: list[int]) -> list[dict]:
        """The OIP output metadata matching `to_tensors` (-1: the batch axis)."""
        raise NotImplementedError

    # -- confidence (budget "auto") ------------------------------------------------------
    # Why a kind has no confidence, or None where it has one. Kinds with one implement the
    # three methods below on the probabilities backends return (temperature scaling works on
    # the logits they came from, recovered as `_logits`).
    no_confidence: ClassVar[str | None] = None

    def confidence(self, probs: np.ndarray, temperature: float) -> np.ndarray:
        """Per instance, how sure the route is of its answer after temperature scaling, [N]."""
        raise NotImplementedError

    def correct(self, probs: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Per instance, how right the answer is in [0, 1] (what confidence is calibrated to)."""
        raise NotImplementedError

    def nll(self, probs: np.ndarray, target: np.ndarray, temperature: float) -> float:
        """Mean negative log-likelihood of the targets after temperature scaling (what the
        temperature is fitted to minimise, as Guo et al. 2017 fit it)."""
        raise NotImplementedError


_EPS = 1e-7


def _log_softmax(logits: np.ndarray, axis: int) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def _scaled_log_probs(probs: np.ndarray, temperature: float, axis: int) -> np.ndarray:
    """log softmax(logits / T), with the logits recovered as log p (softmax is shift-free)."""
    logits = np.log(np.clip(probs.astype(np.float64), _EPS, None))
    return _log_softmax(logits / temperature, axis)


def _scaled_sigmoid(probs: np.ndarray, temperature: float) -> np.ndarray:
    p = np.clip(probs.astype(np.float64), _EPS, 1 - _EPS)
    return 1 / (1 + np.exp(-np.log(p / (1 - p)) / temperature))


class Classification(TaskKind):
    name, metric_name = "classification", "accuracy"

    def activate(self, logits):
        return logits.softmax(-1)

    def loss(self, logits, target):
        return F.cross_entropy(logits, target)

    def distill(self, student, teacher):
        return _kl(student, teacher, dim=-1)

    def metric(self, num_classes, name=None):
        if name not in (None, "accuracy", "f1"):
            raise ValueError(f"classification metrics are accuracy and f1, not {name!r}")
        return _F1() if name == "f1" else _Accuracy()

    def to_json(self, probs, labels, options):
        idx = int(probs.argmax())
        return {"label": labels[idx], "index": idx, "scores": probs.tolist()}

    def to_tensors(self, task, probs):
        return {f"{task}_scores": probs.astype(np.float32), f"{task}_label": probs.argmax(1).astype(np.int64)}

    def tensor_specs(self, task, num_classes, output_shape):
        return [
            {"name": f"{task}_scores", "datatype": "FP32", "shape": [-1, num_classes]},
            {"name": f"{task}_label", "datatype": "INT64", "shape": [-1]},
        ]

    def confidence(self, probs, temperature):
        """The temperature-scaled probability of the answer."""
        return np.exp(_scaled_log_probs(probs, temperature, -1).max(-1))

    def correct(self, probs, target):
        return (probs.argmax(-1) == np.asarray(target)).astype(np.float64)

    def nll(self, probs, target, temperature):
        log_p = _scaled_log_probs(probs, temperature, -1)
        return float(-log_p[np.arange(len(log_p)), np.asarray(target)].mean())


class MultiLabel(TaskKind):
    name, metric_name = "multilabel", "exact_match"

    def activate(self, logits):
        return torch.sigmoid(logits)

    def loss(self, logits, target):
        return F.binary_cross_entropy_with_logits(logits, target)

    def distill(self, student, teacher):
        return F.binary_cross_entropy_with_logits(student, torch.sigmoid(teacher))

    def metric(self, num_classes, name=None):
        return _ExactMatch()

    def to_json(self, probs, labels, options):
        return {"labels": [labels[i] for i in np.flatnonzero(probs >= 0.5)], "scores": probs.tolist()}

    def to_tensors(self, task, probs):
        return {f"{task}_scores": probs.astype(np.float32)}

    def tensor_specs(self, task, num_classes, output_shape):
        return [{"name": f"{task}_scores", "datatype": "FP32", "shape": [-1, num_classes]}]

    def confidence(self, probs, temperature):
        """The least certain label's: an answer is as sure as its weakest label."""
        q = _scaled_sigmoid(probs, temperature)
        return np.maximum(q, 1 - q).min(-1)

    def correct(self, probs, target):
        return ((probs >= 0.5) == (np.asarray(target) >= 0.5)).all(-1).astype(np.float64)

    def nll(self, probs, target, temperature):
        """Of the event the confidence predicts: the whole row right (exact match, the
        metric). Per-label BCE, dominated by the many easy labels, fitted temperatures that
        left the least certain label overconfident (presence: 96% of rows above 0.99)."""
        conf = np.clip(self.confidence(probs, temperature), _EPS, 1 - _EPS)
        right = self.correct(probs, target)
        return float(-(right * np.log(conf) + (1 - right) * np.log(1 - conf)).mean())


class Dense(TaskKind):
    """Per-pixel classes [B, C, H, W]; served as a mask of class indices."""

    name, metric_name = "dense", "miou"

    def activate(self, logits):
        return logits.softmax(1)

    def loss(self, logits, target):
        return F.cross_entropy(logits, target)

    def distill(self, student, teacher):
        return _kl(student, teacher, dim=1)

    def metric(self, num_classes, name=None):
        return _MeanIoU(num_classes)

    def to_json(self, probs, labels, options):
        mask = probs.argmax(0).astype(np.uint8)
        if options.get("mask_format") == "png":
            return {"mask": encode_png(mask), "mask_format": "png"}
        return {"mask": mask.tolist()}

    def to_tensors(self, task, probs):
        return {f"{task}_mask": probs.argmax(1).astype(np.uint8)}

    def tensor_specs(self, task, num_classes, output_shape):
        return [{"name": f"{task}_mask", "datatype": "UINT8", "shape": [-1, *output_shape]}]

    def confidence(self, probs, temperature):
        """The mean over pixels of each pixel's temperature-scaled class probability."""
        return np.exp(_scaled_log_probs(probs, temperature, 1).max(1)).reshape(len(probs), -1).mean(-1)

    def correct(self, probs, target):
        """The fraction of pixels classified right."""
        right = probs.argmax(1) == np.asarray(target)
        return right.reshape(len(probs), -1).mean(-1)

    def nll(self, probs, target, temperature):
        # every 4th pixel each way: a sixteenth of the work, the same fit to 3 decimals
        probs, target = probs[:, :, ::4, ::4], np.asarray(target)[:, ::4, ::4]
        log_p = _scaled_log_probs(probs, temperature, 1)
        picked = np.take_along_axis(log_p, target[:, None], axis=1)
        return float(-picked.mean())


class Regression(TaskKind):
    """One real value per instance ([B, 1]); served as `{"value": x}` and `{task}_value`."""

    name, metric_name = "regression", "pearson_r"
    no_confidence = (
        "a regression task's output carries no calibrated confidence, so budget 'auto' cannot "
        "decide when its answer is good enough: give a tier or a fraction"
    )

    def activate(self, logits):
        return logits

    def loss(self, logits, target):
        return F.mse_loss(logits.reshape(-1), target.float())

    def distill(self, student, teacher):
        return F.mse_loss(student, teacher)

    def metric(self, num_classes, name=None):
        return _PearsonR()

    def to_json(self, probs, labels, options):
        return {"value": float(probs[0])}

    def to_tensors(self, task, probs):
        return {f"{task}_value": probs.reshape(-1).astype(np.float32)}

    def tensor_specs(self, task, num_classes, output_shape):
        return [{"name": f"{task}_value", "datatype": "FP32", "shape": [-1]}]


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """ECE: the mean over equal-width confidence bins of |accuracy - confidence|, weighted
    by the share of instances in the bin (Naeini et al. 2015; 15 bins as Guo et al.)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)


def fit_temperature(k: TaskKind, probs: np.ndarray, target: np.ndarray) -> float:
    """The temperature that minimises the kind's NLL on (probs, target): a log-spaced grid
    from 0.05 to 20, then a finer one around the best point."""
    grid = np.geomspace(0.05, 20.0, 61)
    best = min(grid, key=lambda t: k.nll(probs, target, t))
    fine = np.geomspace(best / 1.1, best * 1.1, 21)
    return float(min(fine, key=lambda t: k.nll(probs, target, t)))


def encode_png(mask: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8), mode="L").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


KINDS: dict[str, TaskKind] = {k.name: k() for k in (Classification, MultiLabel, Dense, Regression)}


def kind(name: str) -> TaskKind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown task kind {name!r}; known: {sorted(KINDS)}") from None
