"""The Lloyd loop: ask the transport for partials, fold them in partition order, update, stop?

Semantics follow scikit-learn's ``lloyd`` exactly: iteration t assigns rows with centroids C_t and
computes C_{t+1} from those labels (relocating empty clusters to the rows farthest from their
centroid); it stops when no row changed cluster (the project's rule) or no centroid moved at all
(a fixed point, where scikit-learn's ``shift <= tol`` stops even with tol = 0), when the total
squared centroid shift is at most ``tol_abs``, or after ``max_iter``. The returned centroids are the last
C_{t+1}; inertia and cluster sizes are those of the rows assigned to them.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from kmeans_dist import kernels, pruning, tasks
from kmeans_dist.transport.base import Transport

log = logging.getLogger("kmeans_dist")

STOP_NO_CHANGE = "no_change"
STOP_TOL = "tol"
STOP_MAX_ITER = "max_iter"
STOP_CENTER_TOL = "center_tol"

#: what happens to a cluster that lost all its rows: scikit-learn's relocation to the farthest
#: rows, or Spark MLlib's "keep the old centre"
EMPTY_POLICIES = ("farthest", "keep")
#: "lloyd" computes every distance in every pass; "auto" skips the rows whose centroid provably
#: stays (pruning.py), with the same labels, sums and centroids, bit for bit
ALGORITHMS = ("auto", "lloyd")


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


def _partials(transport: Transport, steps: list[tasks.LloydStep],
              label: str) -> list[kernels.Partials]:
    """Every model's partials from one pass, each folded in partition order."""
    per_part = transport.run(tasks.lloyd_many, steps, label)
    return [kernels.fold([p[i] for p in per_part]) for i in range(len(steps))]


def _finish(centroids: np.ndarray, cosine: bool) -> np.ndarray:
    return kernels.normalize_rows(centroids) if cosine else centroids


def relocate_empty(
    transport: Transport,
    step: tasks.LloydStep,
    total: kernels.Partials,
    empty: np.ndarray,
    label: str | None = None,
) -> kernels.Partials:
    """Give each empty cluster one of the rows farthest from its centroid, as scikit-learn does.

    The rows are found across all partitions (farthest first, ties broken by the rows' content, so the choice is the same on any
    partitioning) and
    moved out of their cluster's sums into the empty cluster's.
    """
    empties = np.flatnonzero(empty)
    found = tasks.smallest(
        [c for part in transport.run(
            tasks.farthest,
            tasks.FarthestStep(step.run_id, step.iteration, step.centroids, len(empties)),
            label and f"{label} (empty clusters)",
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
    return kernels.Partials(sums, weights, counts, total.inertia, total.moved,
                            total.computed)


@dataclass
class _Run:
    """One model's state in a (shared) Lloyd loop."""

    run_id: str
    centroids: np.ndarray
    name: str = ""  # prefix of its log lines when several models share the loop
    prev: np.ndarray | None = None
    total: kernels.Partials | None = None
    stop: str | None = None
    history: list[dict] = field(default_factory=list)

    def step(self, it: int, numba: bool | None, algorithm: str) -> tasks.LloydStep:
        prune = algorithm == "auto" and pruning.pays(len(self.centroids))
        return tasks.LloydStep(self.run_id, it, self.centroids, self.prev, numba, prune)

    def state(self) -> dict:
        """What a checkpoint keeps: enough to continue exactly where this run is."""
        return {"centroids": self.centroids.tolist(),
                "prev": None if self.prev is None else self.prev.tolist(),
                "stop": self.stop, "history": self.history}

    def restore(self, state: dict) -> None:
        self.centroids = np.array(state["centroids"], dtype=np.float64)
        self.prev = None if state["prev"] is None else np.array(state["prev"], dtype=np.float64)
        self.stop = state["stop"]
        self.history = list(state["history"])


@dataclass
class Rules:
    """When a model stops and what an empty cluster does (see ``lloyd``)."""

    max_iter: int = 300
    tol_abs: float = 0.0
    center_tol: float = 0.0
    empty: str = "farthest"
    cosine: bool = False


def lloyd(transport: Transport, centroids: np.ndarray, *,
          numba: bool | None = None, algorithm: str = "auto", **rules) -> LloydResult:
    """Run Lloyd iterations from ``centroids`` until a stop rule holds (see ``lloyd_many``)."""
    return lloyd_many(transport, [centroids], numba=numba, algorithm=algorithm, **rules)[0]


def lloyd_many(
    transport: Transport,
    starts: list[np.ndarray],
    *,
    numba: bool | None = None,
    algorithm: str = "auto",
    resume: list[dict] | None = None,
    on_iteration: Callable[[int, list[dict]], None] | None = None,
    label: str | None = None,
    **rules,
) -> list[LloydResult]:
    """Fit one model per start in the same passes over the data: each pass computes the partials
    of every model still running, and a model retires when one of its stop rules holds. Each
    model's result is exactly what fitting it alone gives.

    Rules (keywords): ``max_iter``; ``tol_abs``: stop when the summed squared centre shift is at
    most it (scikit-learn's tol); ``center_tol``: stop when no centre moved farther than it
    (Spark MLlib's tol); ``empty``: "farthest" or "keep"; ``cosine``.

    ``algorithm`` (``ALGORITHMS``): "auto" prunes models of at least ``pruning.MIN_K`` centroids
    (where it pays: see there) from their second pass on; "lloyd" computes every distance. Both
    give the same labels in every pass, so the same centroids and iterations; each history
    entry's ``computed`` is the fraction of rows whose distances to every centroid were computed.

    ``on_iteration(iteration, states)`` is called after every iteration with each model's state;
    passing those states back as ``resume`` continues exactly as if never interrupted.
    ``label`` names the models in each pass's Spark job description, e.g. ``"k=16"`` gives
    ``kmeans_dist: iteration 7/300, k=16`` (default: the ks of the starts).
    """
    rule = Rules(**rules)
    run_id = uuid.uuid4().hex
    runs = [_Run(f"{run_id}-{i}", np.array(c, dtype=np.float64),
                 f"model {i} (k={len(c)}): " if len(starts) > 1 else "")
            for i, c in enumerate(starts)]
    for r, state in zip(runs, resume or []):
        r.restore(state)
    label = label or "k=" + ",".join(str(len(c)) for c in starts)
    done = max((len(r.history) for r in runs), default=0)
    for it in range(done + 1, rule.max_iter + 1):
        active = [r for r in runs if r.stop is None]
        if not active:
            break
        t0 = time.perf_counter()
        steps = [r.step(it, numba, algorithm) for r in active]
        pass_label = f"kmeans_dist: iteration {it}/{rule.max_iter}, {label}"
        for r, step, total in zip(active, steps, _partials(transport, steps, pass_label)):
            _advance(transport, r, step, total, rule, t0, pass_label)
        if on_iteration is not None:
            on_iteration(it, [r.state() for r in runs])
    for r in runs:
        r.stop = r.stop or STOP_MAX_ITER
    # a model whose last update moved its centroids: score the rows against where they ended up
    rescore = [r for r in runs if r.total is None or not np.array_equal(r.prev, r.centroids)]
    if rescore:
        steps = [r.step(len(r.history) + 1, numba, algorithm) for r in rescore]
        for r, total in zip(rescore, _partials(transport, steps,
                                                f"kmeans_dist: final scoring, {label}")):
            r.total = total
    return [
        LloydResult(centroids=r.centroids, inertia=_inertia(r.total, rule.cosine),
                    n_iter=len(r.history), stop=r.stop,
                    cluster_sizes=[int(c) for c in r.total.counts], history=r.history)
        for r in runs
    ]


def _advance(transport: Transport, r: _Run, step: tasks.LloydStep, total: kernels.Partials,
             rule: Rules, t0: float, label: str | None = None) -> None:
    """One model's update from its partials: new centroids, history, stop rules."""
    new, empty_mask = kernels.update_centroids(total, r.centroids)
    if empty_mask.any() and rule.empty == "farthest":
        total = relocate_empty(transport, step, total, empty_mask, label)
        new, _ = kernels.update_centroids(total, r.centroids)
    new = _finish(new, rule.cosine)
    shift = kernels.center_shift(r.centroids, new)
    seconds = time.perf_counter() - t0
    computed = _computed(total)
    r.history.append({"iteration": step.iteration, "inertia": _inertia(total, rule.cosine),
                      "moved": int(total.moved), "shift": shift, "seconds": seconds,
                      "computed": computed})
    log.info("%siteration %d: inertia %.6g, moved %d, shift %.3g, distances %s, %.2fs",
             r.name, step.iteration, r.history[-1]["inertia"], total.moved, shift,
             "-" if computed is None else f"{100 * computed:.3g}%", seconds)
    r.prev, r.centroids, r.total = r.centroids, new, total
    if total.moved == 0 or shift == 0.0:
        # no row changed cluster, or the update left every centroid exactly where it was (a
        # fixed point: the next pass could not move a row; scikit-learn stops there too, as its
        # shift <= tol holds with tol = 0). A warm start from a converged model stops here.
        r.stop = STOP_NO_CHANGE
    elif rule.tol_abs > 0 and shift <= rule.tol_abs:
        r.stop = STOP_TOL
    elif rule.center_tol > 0 and kernels.max_center_move_sq(r.prev, new) <= rule.center_tol**2:
        r.stop = STOP_CENTER_TOL


def _computed(total: kernels.Partials) -> float | None:
    """The fraction of rows whose distances to every centroid the pass computed."""
    rows = int(total.counts.sum())
    if total.computed is None or rows == 0:
        return None
    return total.computed / rows


def _inertia(total: kernels.Partials, cosine: bool) -> float:
    """Squared Euclidean inertia; for cosine, the sum of cosine distances 1 - cos (= d^2 / 2)."""
    return float(total.inertia / 2.0 if cosine else total.inertia)
