"""The benchmark's workloads: three fixed shapes and a scaling series at d=16, k=16. No Spark here."""

from __future__ import annotations

from dataclasses import dataclass, replace

#: rows are divided by this under --quick
QUICK_DIVISOR = 20

SCALING_D, SCALING_K = 16, 16
SCALING_N = (250_000, 500_000, 1_000_000, 2_000_000, 4_000_000)

#: --only value that selects the whole scaling series
SCALING = "scaling"


@dataclass(frozen=True)
class Workload:
    """One data shape. ``full`` adds the whole default fit and scikit-learn to the per-iteration
    comparison (the scaling points only time ours, MLlib per iteration and the read floor)."""

    key: str
    n: int
    d: int
    k: int
    full: bool

    def scaled(self, divisor: int) -> "Workload":
        return replace(self, n=max(self.n // divisor, 10 * self.k))

    @property
    def shape(self) -> str:
        return f"{rows_label(self.n)} × {self.d}, k={self.k}"


def rows_label(n: int) -> str:
    """250000 -> '250K', 2000000 -> '2M', 12500 -> '12.5K'."""
    for unit, size in (("M", 1_000_000), ("K", 1_000)):
        if n >= size:
            return f"{n / size:g}{unit}"
    return str(n)


def scaling_point(n: int) -> Workload:
    return Workload(f"scale-{rows_label(n)}", n, SCALING_D, SCALING_K, full=False)


MAIN = (
    Workload("2Mx16-k16", 2_000_000, 16, 16, full=True),
    Workload("1Mx32-k128", 1_000_000, 32, 128, full=True),
    Workload("250Kx2-k5", 250_000, 2, 5, full=True),
)


def in_scaling_series(w: Workload) -> bool:
    """Whether a workload's result is a point of the scaling series (the 2M x 16 main one is)."""
    return (w.d, w.k) == (SCALING_D, SCALING_K)


def _all() -> list[Workload]:
    return list(MAIN) + [scaling_point(n) for n in SCALING_N]


def names() -> list[str]:
    """Values accepted by --only."""
    return [w.key for w in _all()] + [SCALING]


def plan(only: str | None) -> list[Workload]:
    """Workloads to run (full size): all of them, one by key, or the scaling series.

    A full run measures the 2M scaling point inside the 2M x 16 main workload (same shape)."""
    if only is None:
        covered = {w.n for w in MAIN if in_scaling_series(w)}
        return list(MAIN) + [scaling_point(n) for n in SCALING_N if n not in covered]
    if only == SCALING:
        return [scaling_point(n) for n in SCALING_N]
    return [w for w in _all() if w.key == only]


def find(key: str) -> Workload:
    return next(w for w in _all() if w.key == key)
