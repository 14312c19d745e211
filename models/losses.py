"""The feature distillation loss of sandwich training (task losses live with their kind,
in `models.kinds`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def feature_distill_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MSE to the full route's trunk tokens, relative to their variance (scale-free)."""
    return F.mse_loss(student, teacher) / teacher.var().clamp_min(1e-6)
