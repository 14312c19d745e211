"""Routes (which subnetwork runs) and route tables' Pareto frontiers, for every family.

A route is (trunk width, experts k, decoder width) for one task, written `w50-k2-d50`.
FLOPs count 2 per multiply-add of every linear, convolution and attention matmul, per
sample; norms, activations and additions are left out (they are <1% here).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ROUTE_ID = re.compile(r"^(?:L(\d+)-)?w(\d+)-k(\d+)-d(\d+)$")


@dataclass(frozen=True, order=True)
class Route:
    """(trunk width, experts k, decoder width), and the number of encoder layers for families
    slimmable by depth (`None` where the family has one depth)."""

    width: float
    experts: int
    decoder_width: float
    depth: int | None = None

    @property
    def trunk(self) -> str:
        """What the trunk runs (the batching key): `w50`, or `L4-w50` with a depth."""
        width = f"w{round(self.width * 100)}"
        return width if self.depth is None else f"L{self.depth}-{width}"

    @property
    def id(self) -> str:
        return f"{self.trunk}-k{self.experts}-d{round(self.decoder_width * 100)}"

    @classmethod
    def parse(cls, route_id: str) -> Route:
        m = _ROUTE_ID.match(route_id)
        if not m:
            raise ValueError(
                f"malformed route id {route_id!r}, expected like 'w50-k2-d50' or 'L4-w50-k2-d50'"
            )
        depth = int(m[1]) if m[1] else None
        return cls(int(m[2]) / 100, int(m[3]), int(m[4]) / 100, depth)

    def check(self, cfg) -> None:
        """Raises ValueError unless the route is in `cfg.routes` (any family's route space)."""
        space = cfg.routes
        if (
            self.width not in space.widths
            or self.experts not in space.experts
            or self.decoder_width not in space.decoder_widths
            or (self.depth is None) != (getattr(space, "depths", None) is None)
            or (self.depth is not None and self.depth not in space.depths)
        ):
            raise ValueError(f"route {self.id} is outside the model's route space {space}")


TIER_FRACTIONS = (0.25, 0.5, 0.75, 1.0)  # the budget tiers low, medium, high, max


def pareto_frontier(points: dict[Route, tuple[int, float]]) -> list[Route]:
    """Routes not dominated by a cheaper-or-equal route with a better-or-equal score,
    cheapest first, so scores never fall along the result.

    Each tier's ceiling (a FLOPs fraction of 0.25, 0.5, 0.75, 1) also keeps its best route,
    ties going to the larger route: a task that saturates early (scores tie from the smallest
    route up) still gets a route per tier. The full route is always kept, so the table spans
    up to a FLOPs fraction of 1.0 even where a short training run left it behind a smaller one.
    """
    ordered = sorted(points.items(), key=lambda kv: (kv[1][0], -kv[1][1]))
    keep: set[Route] = set()
    best = -1.0
    for route, (_, score) in ordered:
        if score > best:
            keep.add(route)
            best = score
    keep.add(ordered[-1][0])
    full = ordered[-1][1][0]
    for ceiling in TIER_FRACTIONS:
        within = [(score, flops, route) for route, (flops, score) in ordered if flops <= ceiling * full + 1]
        if within:
            keep.add(max(within, key=lambda x: (x[0], x[1]))[2])
    return [route for route, _ in ordered if route in keep]
