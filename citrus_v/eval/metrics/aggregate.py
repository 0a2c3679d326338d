"""Accumulators that turn per-sample scores into the numbers a table reports.

MONAI style: the metric functions are pure (one sample in, one float out); an accumulator
collects those floats with the sample's group (its modality) and aggregates on demand.
Every aggregate carries its sample count, so a table never shows a number without its n.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import median

UNKNOWN_GROUP = "unknown"  # the group of samples whose record names no modality


@dataclass(frozen=True)
class Aggregate:
    """One reported number: its value (None when there were no samples), count and how it was made."""

    value: float | None
    n: int
    aggregation: str

    def to_dict(self) -> dict:
        return {"value": self.value, "n": self.n, "aggregation": self.aggregation}


@dataclass
class ScoreAccumulator:
    """Per-sample scores with their group; ``mean``/``median`` overall or within one group.

    >>> acc = ScoreAccumulator()
    >>> acc.append(1.0, "CT"); acc.append(0.0, "CT"); acc.append(0.5, "MR")
    >>> acc.mean().value, acc.median().value, acc.mean("CT").value, acc.mean("CT").n
    (0.5, 0.5, 0.5, 2)
    """

    values: list[float] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)

    def append(self, value: float, group: str | None = None) -> None:
        value = float(value)
        if math.isnan(value):
            raise ValueError("a per-sample score is NaN; metric functions must return a number")
        self.values.append(value)
        self.groups.append(group or UNKNOWN_GROUP)

    def reset(self) -> None:
        self.values.clear()
        self.groups.clear()

    def __len__(self) -> int:
        return len(self.values)

    def select(self, group: str | None = None) -> list[float]:
        if group is None:
            return list(self.values)
        return [v for v, g in zip(self.values, self.groups) if g == group]

    def group_names(self) -> list[str]:
        return sorted(set(self.groups))

    def mean(self, group: str | None = None) -> Aggregate:
        vals = self.select(group)
        return Aggregate(sum(vals) / len(vals) if vals else None, len(vals), "mean over samples")

    def median(self, group: str | None = None) -> Aggregate:
        vals = self.select(group)
        return Aggregate(float(median(vals)) if vals else None, len(vals), "median over samples")
