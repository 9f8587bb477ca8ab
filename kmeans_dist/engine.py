"""The Lloyd loop: ask the transport for partials, fold them in partition order, update, stop?

Semantics follow scikit-learn's ``lloyd`` exactly: iteration t assigns rows with centroids C_t and
computes C_{t+1} from those labels (relocating empty clusters to the rows farthest from their
centroid); it stops when no row changed cluster (the project's rule), when the total squared
centroid shift is at most ``tol_abs``, or after ``max_iter``. The returned centroids are the last
C_{t+1}; inertia and cluster sizes are those of the rows assigned to them.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from kmeans_dist import kernels, tasks
from kmeans_dist.transport.base import Transport

log = logging.getLogger("kmeans_dist")

STOP_NO_CHANGE = "no_change"
STOP_TOL = "tol"
STOP_MAX_ITER = "max_iter"
STOP_CENTER_TOL = "center_tol"

#: what happens to a cluster that lost all its rows: scikit-learn's relocation to the farthest
#: rows, or Spark MLlib's "keep the old centre"
EMPTY_POLICIES = ("farthest", "keep")


@dataclass
class LloydResult:
    centroids: np.ndarray
    inertia: float
    n_iter: int
    stop: str  # why the loop ended: STOP_NO_CHANGE, STOP_TOL or STOP_MAX_ITER
    cluster_sizes: list[int]
    history: list[dict] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        return self.stop != STOP_MAX_ITER


def _partials(transport: Transport, step: tasks.LloydStep) -> kernels.Partials:
    return kernels.fold(transport.run(tasks.lloyd, step))


def _finish(centroids: np.ndarray, cosine: bool) -> np.ndarray:
    return kernels.normalize_rows(centroids) if cosine else centroids


def relocate_empty(
    transport: Transport,
    step: tasks.LloydStep,
    total: kernels.Partials,
    empty: np.ndarray,
    offsets: list[int],
) -> kernels.Partials:
    """Give each empty cluster one of the rows farthest from its centroid, as scikit-learn does.

    The rows are found across all partitions (farthest first, ties to the lower global row) and
    moved out of their cluster's sums into the empty cluster's.
    """
    empties = np.flatnonzero(empty)
    found = tasks.smallest(
        [c for part in transport.run(
            tasks.farthest,
            tasks.FarthestStep(step.run_id, step.iteration, step.centroids, len(empties), offsets),
        ) for c in part],
        len(empties),
    )
    sums, weights, counts = total.sums.copy(), total.weights.copy(), total.counts.copy()
    for new_id, cand in zip(empties, found):
        sums[cand.label] -= cand.row * cand.weight
        sums[new_id] = cand.row * cand.weight
        weights[new_id] = cand.weight
        weights[cand.label] -= cand.weight
        counts[new_id] = 1
        counts[cand.label] -= 1
    return kernels.Partials(sums, weights, counts, total.inertia, total.moved)


def lloyd(
    transport: Transport,
    centroids: np.ndarray,
    *,
    offsets: list[int],
    max_iter: int = 300,
    tol_abs: float = 0.0,
    center_tol: float = 0.0,
    empty: str = "farthest",
    cosine: bool = False,
    numba: bool | None = None,
) -> LloydResult:
    """Run Lloyd iterations from ``centroids`` until a stop rule holds.

    ``tol_abs``: stop when the summed squared centre shift is at most it (scikit-learn's tol);
    ``center_tol``: stop when no centre moved farther than it (Spark MLlib's tol).
    """
    run_id = uuid.uuid4().hex
    centroids = np.array(centroids, dtype=np.float64)
    prev: np.ndarray | None = None
    history: list[dict] = []
    stop = STOP_MAX_ITER
    total = None
    for it in range(1, max_iter + 1):
        t0 = time.perf_counter()
        step = tasks.LloydStep(run_id, it, centroids, prev, numba)
        total = _partials(transport, step)
        new, empty_mask = kernels.update_centroids(total, centroids)
        if empty_mask.any() and empty == "farthest":
            total = relocate_empty(transport, step, total, empty_mask, offsets)
            new, _ = kernels.update_centroids(total, centroids)
        new = _finish(new, cosine)
        shift = kernels.center_shift(centroids, new)
        seconds = time.perf_counter() - t0
        history.append(
            {"iteration": it, "inertia": _inertia(total, cosine), "moved": int(total.moved),
             "shift": shift, "seconds": seconds}
        )
        log.info(
            "iteration %d: inertia %.6g, moved %d, shift %.3g, %.2fs",
            it, history[-1]["inertia"], total.moved, shift, seconds,
        )
        prev, centroids = centroids, new
        if total.moved == 0:
            stop = STOP_NO_CHANGE
            break
        if tol_abs > 0 and shift <= tol_abs:
            stop = STOP_TOL
            break
        if center_tol > 0 and kernels.max_center_move_sq(prev, centroids) <= center_tol**2:
            stop = STOP_CENTER_TOL
            break
    if total is None or not np.array_equal(prev, centroids):
        # the last update moved the centroids: score the rows against where they ended up
        total = _partials(transport, tasks.LloydStep(run_id, len(history) + 1, centroids, prev, numba))
    return LloydResult(
        centroids=centroids,
        inertia=_inertia(total, cosine),
        n_iter=len(history),
        stop=stop,
        cluster_sizes=[int(c) for c in total.counts],
        history=history,
    )


def _inertia(total: kernels.Partials, cosine: bool) -> float:
    """Squared Euclidean inertia; for cosine, the sum of cosine distances 1 - cos (= d^2 / 2)."""
    return float(total.inertia / 2.0 if cosine else total.inertia)
