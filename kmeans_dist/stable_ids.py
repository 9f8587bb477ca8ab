"""Stable cluster ids across runs: pure numpy and scipy, no Spark.

A scheduled segmentation refits every day; the fit numbers its clusters by position, which means
nothing from one run to the next. Here each new cluster takes the id of the previous cluster it
matches: the matching of new to previous centroids with the smallest total Euclidean distance
(the Hungarian assignment, ``scipy.optimize.linear_sum_assignment``; rectangular when k changed,
so ``min(k_prev, k_new)`` pairs). New clusters left unmatched get fresh ids above every id used
before (the previous ids and the ids retired earlier in the lineage, which are never reused);
previous ids left unmatched are retired.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment


def centroid_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances between the rows of ``a`` (n x d) and ``b`` (m x d): n x m."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2))


def match(previous: np.ndarray, current: np.ndarray) -> list[tuple[int, int]]:
    """(current row, previous row) pairs with the smallest total centroid distance; every row of
    the smaller side is paired exactly once."""
    rows, cols = linear_sum_assignment(centroid_distances(current, previous))
    return [(int(r), int(c)) for r, c in zip(rows, cols)]


@dataclass
class StableIds:
    """The outcome of a renumbering: the id of each current centroid row, and the changes."""

    ids: list[int]  # stable id of each current centroid row, in row order
    new: list[int]  # ids given to current clusters that matched no previous one
    retired: list[int]  # previous ids that no current cluster took


def assign(previous_ids: Sequence[int], previous_centroids: np.ndarray,
           current_centroids: np.ndarray, used: Sequence[int] = ()) -> StableIds:
    """Stable ids for ``current_centroids`` after a model whose row i had id ``previous_ids[i]``.

    Unmatched current rows get fresh ids, in row order, from one above the largest of
    ``previous_ids`` and ``used`` (ids retired earlier, never handed out again)."""
    previous_ids = [int(i) for i in previous_ids]
    if len(previous_ids) != len(previous_centroids):
        raise ValueError(f"{len(previous_ids)} previous ids for {len(previous_centroids)} "
                         "previous centroids")
    ids = [-1] * len(current_centroids)
    for cur, prev in match(previous_centroids, current_centroids):
        ids[cur] = previous_ids[prev]
    fresh = max([*previous_ids, *map(int, used)], default=-1) + 1
    new = []
    for row, given in enumerate(ids):
        if given < 0:
            ids[row] = fresh
            new.append(fresh)
            fresh += 1
    taken = set(ids)
    return StableIds(ids, new, sorted(i for i in previous_ids if i not in taken))
