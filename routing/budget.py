"""Compute budgets (docs/design.md section 3): a fraction in (0, 1] of the task set's full-route
FLOPs per sample, or a named tier."""

from __future__ import annotations

import math
from dataclasses import dataclass

TIERS: dict[str, float | None] = {"min": None, "low": 0.25, "medium": 0.5, "high": 0.75, "max": 1.0}
# FLOPs fractions are published to 4 decimals (route tables, receipts); budgets compare against
# the published value, so asking for a route's listed fraction selects that route
DECIMALS = 4


class BudgetError(ValueError):
    """A budget that is not a number in (0, 1] nor a known tier."""


@dataclass(frozen=True)
class Budget:
    """`fraction` is None for tier `min`: the cheapest route, whatever it costs."""

    fraction: float | None
    label: str

    @classmethod
    def parse(cls, value: float | int | str | Budget) -> Budget:
        if isinstance(value, Budget):
            return value
        if isinstance(value, bool):
            raise BudgetError(f"budget must be a number in (0, 1] or one of {list(TIERS)}, got {value!r}")
        if isinstance(value, str):  # a tier; numbers travel as JSON numbers, never as strings
            if value in TIERS:
                return cls(TIERS[value], value)
            raise BudgetError(f"budget must be a number in (0, 1] or one of {list(TIERS)}, got {value!r}")
        if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 < value <= 1:
            raise BudgetError(f"budget must be a number in (0, 1] or one of {list(TIERS)}, got {value!r}")
        return cls(float(value), str(value))

    @classmethod
    def from_text(cls, text: str) -> Budget:
        """A budget typed on a command line or in an environment variable: a tier or a number."""
        try:
            return cls.parse(float(text))
        except ValueError:
            return cls.parse(text)

    def allows(self, fraction: float) -> bool:
        return self.fraction is None or round(fraction, DECIMALS) <= self.fraction + 1e-9

    def at_least(self, other: Budget) -> bool:
        """Whether this budget is no smaller than `other` (min is the smallest)."""
        if other.fraction is None:
            return True
        return self.fraction is not None and self.fraction >= other.fraction - 1e-9
