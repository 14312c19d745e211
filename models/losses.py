"""Task losses and the in-place distillation losses of sandwich training."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def task_loss(kind: str, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if kind == "multilabel":
        return F.binary_cross_entropy_with_logits(logits, target)
    return F.cross_entropy(logits, target)  # classification [B, C]; dense [B, C, H, W]


def distill_loss(kind: str, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Match the full route's output distribution (teacher is detached)."""
    if kind == "multilabel":
        return F.binary_cross_entropy_with_logits(student, torch.sigmoid(teacher))
    dim = 1
    log_p = F.log_softmax(student, dim=dim)
    q = F.softmax(teacher, dim=dim)
    kl = (q * (q.clamp_min(1e-8).log() - log_p)).sum(dim=dim)
    return kl.mean()


def feature_distill_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MSE to the full route's trunk tokens, relative to their variance (scale-free)."""
    return F.mse_loss(student, teacher) / teacher.var().clamp_min(1e-6)
