"""How many centroids an unsettled row could still be nearest to: Elkan's per-centroid test.

A row whose upper bound u (its distance to its centroid a) fails Hamerly's test is recomputed
against every centroid. Elkan's scheme would skip centroid j when ||c_a - c_j|| >= 2 u (the
triangle inequality: then j is no nearer than a). This counts, after ``passes`` Lloyd passes in
exact arithmetic (numpy) on the pruned-Lloyd benchmark's data (``bound_schemes.data``), the
centroids within 2 u of each row's own, over all rows and over the tenth of rows nearest a
boundary (smallest gap between their two nearest distances: those the bounds leave unsettled).

    python bench/elkan_candidates.py 250Kx64-k256 2 30

Run by hand, not by ``make bench``.
"""

from __future__ import annotations

import sys

import numpy as np

from bound_schemes import data, distances


def candidates(x: np.ndarray, c: np.ndarray) -> tuple[float, float]:
    """The mean fraction of centroids within 2 u of a row's own: all rows, boundary rows."""
    dist = distances(x, c)
    labels = dist.argmin(1)
    own = dist[np.arange(len(x)), labels]
    ordered = np.sort(dist, 1)
    gap = ordered[:, 1] - ordered[:, 0]
    between = distances(c, c)
    near = (between[labels] < 2 * own[:, None]).sum(1) / len(c)
    boundary = gap < np.quantile(gap, 0.1)
    return float(near.mean()), float(near[boundary].mean())


def main(argv: list[str]) -> int:
    key = argv[0] if argv else "250Kx64-k256"
    divisor = int(argv[1]) if len(argv) > 1 else 2
    passes = int(argv[2]) if len(argv) > 2 else 30
    x, c = data(key, divisor)
    for _ in range(passes):  # Lloyd in exact arithmetic, to where the bounds settle most rows
        labels = distances(x, c).argmin(1)
        c = np.array([x[labels == j].mean(0) if (labels == j).any() else c[j]
                      for j in range(len(c))])
    everyone, boundary = candidates(x, c)
    print(f"{key} / {divisor}, after {passes} passes: centroids within 2u of a row's own: "
          f"{everyone:.0%} (all rows), {boundary:.0%} (the tenth nearest a boundary)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
