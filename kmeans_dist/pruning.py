"""Exact pruned Lloyd passes: Hamerly's two distance bounds per row, with a rounding margin.

Pure numpy (numba optional, bit-identical), no Spark. A pass with bounds gives every row the
label brute force (``kernels.block_partials``) gives it, bit for bit, while computing the distances
to every centroid only for the rows whose nearest centroid might have changed.

Hamerly (2010) keeps, per row, an upper bound ``u`` on its distance to its centroid and a lower
bound ``l`` on its distance to every other centroid. When centroids move by ``move[j]``, the
triangle inequality gives ``u += move[a]`` and ``l -= max_{j != a} move[j]``; with ``s[a]`` half the
distance from centroid a to its nearest other centroid, every other centroid is at least
``max(l, 2 s[a] - u)`` away. If that is above ``u``, the row keeps its centroid.

Exactness under rounding. Brute force picks the smallest *computed* score
``fl(||c_j||^2 - 2 x.c_j)``, which can differ from the exact one by up to ``err`` (``score_error``:
Higham's bound for a dot product, summed in any order, FMA or not, plus what underflow can do
near the origin, which a relative bound misses: ``_underflow``). A row is skipped only when
its exact squared distances differ by more than ``2 err`` (``_sure``), so brute force's rounding
cannot reorder them either. Every bound is computed with its own rounding pushed outwards (upper
bounds up, lower bounds down), so the bounds hold for the exact distances. A row that is not
skipped gets its distances computed from a GEMM over the rows that need it; when its best two
scores are within ``4 err`` of each other (a near-tie: the subset's GEMM may round differently
from brute force's chunk), the whole brute-force chunk holding it is computed as brute force
computes it, and the label is taken from there, so ties break exactly as they do without pruning.

Partial sums, and the inertia from each row's directly computed distance to its centroid, are
accumulated per cluster from the labels in row order exactly as brute force accumulates them (a
block's inertia is its clusters' summed in cluster order), so sums, counts, weights and inertia
are bit-identical, whichever passes found their bounds. A pass whose labels are all known before
it folds (one that did not score the whole block) takes from the previous pass the partials of
every cluster no row joined or left (``Clusters``): the same rows in the same order give the same
sums, and, when the cluster's centroid did not move either, the same inertia. Only the rows of the
other clusters are read: late in a fit, when a few rows still move, few of them.

float32 blocks (``KMeans(dtype="float32")``). Brute force then picks the smallest float32 score,
from a float32 GEMM against the centroids rounded to float32 (``kernels.gemm_centroids``). The
exact distances the bounds hold for are those to the rounded centroids (``exact`` below: the
float32 values, held in float64), so the moves, separations and direct distances are computed from
them; Higham's bound is taken with float32's unit roundoff (2**-24), and so is every outward
rounding (``unit``: those done in float64 would need only 2**-53, the wider margin is safe). The
inertia of a pass is still added from each row's distance to the float64 centroids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kmeans_dist import kernels

#: unit roundoff of float64
UNIT = 2.0**-53
#: unit roundoff of the blocks' feature dtype: the GEMM's scores are rounded in it
UNITS = {"float64": UNIT, "float32": 2.0**-24}


def unit_roundoff(dtype) -> float:
    """The unit roundoff of ``dtype`` (float64 or float32), the margins' unit."""
    return UNITS[np.dtype(dtype).name]


#: below this many centroids a pass with bounds does not pay. Brute force's GEMM is cheap at small
#: k, and a pruned pass still moves every row's bounds and folds every row: at 2M x 16, k = 16
#: (32 overlapping blobs, 51 iterations, 23% of the rows computed) the Lloyd phase took 0.89x
#: brute force's time at k = 16, 1.08x faster at k = 32 (1M x 8 uniform noise), 1.83x at k = 256
#: and 2.4x at k = 128 (`make bench`, 2026-12-02)
MIN_K = 32


@dataclass
class Clusters:
    """One block's per-cluster partials from a pass (``kernels.cluster_partials``). The next pass
    takes a cluster's sums, weight and count from here when no row joined or left it (the same
    rows in the same order give the same bits), and its inertia too when its centroid did not
    move either (``Motion.unmoved``): such a cluster's rows are not read at all."""

    sums: np.ndarray  # (k, d)
    weights: np.ndarray  # (k,)
    counts: np.ndarray  # (k,) int64
    inertia: np.ndarray  # (k,)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.sums, self.weights, self.counts, self.inertia))

    def packed(self) -> np.ndarray:
        """All of it in one float64 array (counts are exact in float64), for a side file."""
        return np.concatenate([self.sums.ravel(), self.weights, self.counts.astype(np.float64),
                               self.inertia])

    @classmethod
    def unpacked(cls, values: np.ndarray, k: int, d: int) -> "Clusters | None":
        """``packed``'s inverse for k centroids of d features (None if it does not fit)."""
        if values.shape != (k * d + 3 * k,):
            return None
        sums, rest = values[:k * d].reshape(k, d), values[k * d:]
        return cls(sums, rest[:k], rest[k:2 * k].astype(np.int64), rest[2 * k:])


@dataclass
class Bounds:
    """One block's bounds after a pass, valid for that pass's centroids and labels, and its
    per-cluster partials (None when not kept: the next pass then folds every row)."""

    upper: np.ndarray  # (m,) float32 >= each row's exact distance to its centroid
    lower: np.ndarray  # (m,) float32 <= each row's exact distance to any other centroid
    clusters: Clusters | None = None

    @property
    def nbytes(self) -> int:
        kept = 0 if self.clusters is None else self.clusters.nbytes
        return self.upper.nbytes + self.lower.nbytes + kept


#: the bounds' dtype, whatever the rows': computed in float64, each stored rounded outwards
#: (``_up``, ``_down``), a bound is looser by at most 1.5 float32 units (2e-7 relative), which
#: computed at most 0.002% more of the rows in a pass (500K x 32, k = 128), for half the bytes.
#: Distances beyond float32's range (above 3e38, or below its normal numbers, 1e-38, where a
#: subnormal holds few digits) get bounds that settle nothing: those rows are computed
BOUNDS_DTYPE = np.float32
#: bytes of the two bounds per row
BOUNDS_BYTES = 2 * np.dtype(BOUNDS_DTYPE).itemsize
#: the most a block's per-cluster partials (``Clusters``) may take, as a share of its feature
#: bytes; beyond that (many centroids, few rows) they are not kept and the next pass folds
#: every row
KEPT_SHARE = 1 / 16


def bytes_per_row(d: int, dtype="float64") -> int:
    """Bytes of pruning state per row and model, counted in the memory budget: the two bounds
    and the kept per-cluster partials' share of the row (at most ``KEPT_SHARE`` of its d
    features): 16 at d = 16 in float64, an eighth of the block's 136."""
    return BOUNDS_BYTES + math.ceil(np.dtype(dtype).itemsize * d * KEPT_SHARE)


def pays(k: int) -> bool:
    """Whether ``algorithm="auto"`` prunes a model with ``k`` centroids."""
    return k >= MIN_K


def _gamma(d: int, unit: float = UNIT) -> float:
    """Higham's gamma_{d+2}: the relative error bound of a (d + 2)-term sum of products, each
    operation rounded with unit roundoff ``unit``."""
    return (d + 2) * unit / (1 - (d + 2) * unit)


def _score_scale(exact: np.ndarray, dtype) -> tuple[float, float]:
    """``c_max`` and ``gamma`` of ``_score_err`` for a GEMM over rows of ``dtype`` against the
    centroids as it sees them (``exact``, ``kernels.gemm_centroids``)."""
    gamma = _gamma(exact.shape[1], unit_roundoff(dtype))
    return _c_max(exact, gamma, dtype), gamma


def _c_max(centroids: np.ndarray, gamma: float, dtype=np.float64) -> float:
    """The largest centroid norm, raised so that ``4 gamma (x_sq + c_max^2)`` (``_score_err``) also
    covers underflow, which Higham's relative bound does not: each of a score's d products, and
    the rounded ||c||^2, may underflow in the GEMM's ``dtype``, off by up to half its smallest
    subnormal, and each of x_sq's d squares in float64 likewise. ``_underflow`` of both, added
    to every score's error (it matters only for rows and centroids within about 1e-19 of the
    origin in float32, 1e-154 in float64)."""
    floor = _underflow(centroids.shape[1], dtype) + _underflow(centroids.shape[1])
    return float(np.sqrt(kernels.squared_norms(centroids).max() + floor / (4.0 * gamma)))


def _underflow(d: int, dtype=np.float64) -> float:
    """Bound on what underflow takes from or adds to a sum of d + 2 products or squares computed
    in ``dtype`` (gradual underflow: each off by at most half the smallest subnormal; sums of
    subnormals are exact), doubled for room."""
    return (d + 2) * float(np.finfo(dtype).smallest_subnormal)


def score_error(x_sq: np.ndarray, centroids: np.ndarray, dtype=np.float64) -> np.ndarray:
    """(m,) bound on |computed - exact| of every score ``||c_j||^2 - 2 x.c_j`` of each row, and of
    its ``x_sq``: gamma_{d+2} (||x|| + max ||c||)^2 <= 2 gamma_{d+2} (||x||^2 + max ||c||^2),
    doubled for the roundings of this bound itself and of the norms it starts from. ``dtype``:
    the GEMM's (float32: gamma with float32's unit roundoff, ``centroids`` rounded to float32 as
    the GEMM takes them)."""
    return _score_err(x_sq, *_score_scale(kernels.gemm_centroids(centroids, dtype), dtype))


def _score_err(x_sq: np.ndarray, c_max: float, gamma: float) -> np.ndarray:
    """``score_error`` from its parts (the numba loops compute the same expression per row)."""
    return 4.0 * gamma * (x_sq + c_max * c_max)


def _relative(d: int, unit: float = UNIT) -> float:
    """Relative error bound of a distance computed directly over d coordinates, with room."""
    return 4.0 * (d + 8) * unit


def _sure(lower: np.ndarray, upper: np.ndarray, err: np.ndarray,
          unit: float = UNIT) -> np.ndarray:
    """Rows whose exact squared distances to other centroids exceed the one to their own by more
    than 2 err (so computed scores cannot reorder them). Each side's own rounding is pushed to
    the unfavourable side by 4 units."""
    return lower * lower * (1 - 4 * unit) > (upper * upper + 4.0 * err) * (1 + 4 * unit)


_distances = kernels.direct_distances


# --------------------------------------------------------------------------- scores to labels
def _bound_scores(scores: np.ndarray, rows: np.ndarray, x_sq: np.ndarray, c_max: float,
                  gamma: float, unit: float, labels: np.ndarray, upper: np.ndarray,
                  lower: np.ndarray, fused) -> np.ndarray:
    """From the scores of ``rows`` (one row of scores each): their labels (the first index of the
    smallest score, as brute force picks it) and bounds, written at ``rows``. Returns the
    positions in ``rows`` of the near-ties: best two scores within 4 err of each other. float32
    scores are taken to float64 (exactly) before any arithmetic, as numba's loop does."""
    if fused is not None:
        unsure = np.empty(len(rows), dtype=np.intp)
        n = fused.bound_scores(scores, rows, x_sq, c_max, gamma, unit, labels, upper, lower,
                               unsure)
        return unsure[:n]
    m, k = scores.shape
    lab = np.argmin(scores, axis=1)
    best = scores[np.arange(m), lab].astype(np.float64)
    if k == 1:
        second = np.full(m, np.inf)
    else:
        second = np.partition(scores, 1, axis=1)[:, 1].astype(np.float64)
    xs = x_sq[rows]
    err = _score_err(xs, c_max, gamma)
    labels[rows] = lab
    upper[rows], lower[rows] = _from_best_two(best, second, xs, err, unit)
    return np.flatnonzero(second - best <= 4.0 * err)


def _from_best_two(best, second, xs, err, unit) -> tuple[np.ndarray, np.ndarray]:
    """Upper and lower distance bounds from the best two scores (float64) of rows of squared
    norms ``xs`` and score error ``err``, each rounded outwards, then stored so (numba's loops:
    the same expressions per row)."""
    return (_up(np.sqrt(np.maximum(best + xs + 2.0 * err, 0.0)) * (1.0 + 4.0 * unit)),
            _down(np.sqrt(np.maximum(second + xs - 2.0 * err, 0.0)) * (1.0 - 4.0 * unit)))


def _up(values: np.ndarray) -> np.ndarray:
    """float64 -> ``BOUNDS_DTYPE``, never below the value: raised by more than a float32 unit
    (2**-23 relative, and the smallest subnormal for values below the normal range), then
    rounded to nearest, so no branch and no nextafter (a call per row, which made settling
    twice as slow). Beyond float32's largest: inf. Loose by at most 1.5 float32 units."""
    with np.errstate(over="ignore"):
        return (values * _RAISE + _TINY).astype(BOUNDS_DTYPE)


def _down(values: np.ndarray) -> np.ndarray:
    """float64 -> ``BOUNDS_DTYPE``, never above the value (the same way down), within 0 (the
    values are distances) and float32's largest."""
    return np.clip(values * _LOWER - _TINY, 0.0, _LARGEST).astype(BOUNDS_DTYPE)


#: the factors and the term ``_up`` and ``_down`` apply: for v in [2**e, 2**(e + 1)) a float32
#: unit is 2**(e - 23) <= 2**-23 v, so v (1 + 2**-23) is a unit above v and rounds to nearest
#: at least half a unit above it (below the normal range a unit is the smallest subnormal)
_RAISE, _LOWER = 1.0 + 2.0**-23, 1.0 - 2.0**-23
_TINY = float(np.finfo(BOUNDS_DTYPE).smallest_subnormal)
_LARGEST = float(np.finfo(BOUNDS_DTYPE).max)


def _chunk_bounds(scores: np.ndarray, lo: int, x_sq: np.ndarray, c_max: float, gamma: float,
                  unit: float, labels: np.ndarray, upper: np.ndarray, lower: np.ndarray,
                  fused) -> None:
    """``_bound_scores`` for brute force's own chunk of rows lo .. lo + len(scores), scored as
    brute force scores it: its argmin is brute force's label, so no near-tie needs a second look.
    Above ``kernels.NUMPY_ARGMIN_K`` centroids the best two come from numpy's SIMD argmin, twice
    (the best masked the second time; ``scores`` is overwritten), several times faster than a
    scalar loop keeping the best two."""
    m, k = scores.shape
    if k <= kernels.NUMPY_ARGMIN_K:
        _bound_scores(scores, np.arange(lo, lo + m), x_sq, c_max, gamma, unit, labels, upper,
                      lower, fused)
        return
    r = np.arange(m)
    lab = np.argmin(scores, axis=1)
    best = scores[r, lab].astype(np.float64)
    scores[r, lab] = np.inf
    second = scores[r, np.argmin(scores, axis=1)].astype(np.float64)
    labels[lo:lo + m] = lab
    if fused is not None:
        fused.best_two_bounds(best, second, x_sq, lo, c_max, gamma, unit, upper, lower)
        return
    xs = x_sq[lo:lo + m]
    upper[lo:lo + m], lower[lo:lo + m] = _from_best_two(best, second, xs,
                                                        _score_err(xs, c_max, gamma), unit)


class _Accumulator:
    """Partials folded from ``labels`` in row order, as brute force folds them; each row's squared
    distance computed directly ((x - c)^2 summed column by column). numba folds chunk by chunk
    while the chunk is in cache; numpy's bincount cannot carry running sums from one call to the
    next, so the numpy path folds the whole block in one call at the end (the same bits)."""

    def __init__(self, x, w, centroids, labels, prev, fused) -> None:
        k, d = centroids.shape
        self.x, self.w, self.centroids, self.labels, self.prev = x, w, centroids, labels, prev
        self.fused = fused
        self.sums, self.weights = np.zeros((k, d)), np.zeros(k)
        self.counts = np.zeros(k, dtype=np.int64)
        self.inertia = np.zeros(k)
        self.acc = np.zeros(1)  # rows moved
        self.done = 0

    def add(self, hi: int) -> None:
        """Fold the rows up to ``hi`` (their labels are final)."""
        if self.fused is not None:
            w, prev = self.w, self.prev
            has_w, has_prev = w is not None, prev is not None
            self.fused.accumulate_labels(
                self.x, w if has_w else np.empty(0), has_w, self.labels, self.centroids,
                prev if has_prev else np.empty(0, dtype=np.int32), has_prev, self.done, hi,
                self.sums, self.weights, self.counts, self.inertia, self.acc)
        self.done = hi

    def partials(self, computed: int) -> tuple[kernels.Partials, Clusters]:
        """The block's partials, and its per-cluster ones for the next pass."""
        x, c, labels = self.x, self.centroids, self.labels
        self.add(x.shape[0])
        if self.fused is None:
            self.sums, self.weights, self.counts, self.inertia = kernels.cluster_partials(
                x, self.w, labels, _distances(x, c[labels]), c.shape[0])
            moved = x.shape[0] if self.prev is None else int(np.count_nonzero(labels != self.prev))
        else:
            moved = int(self.acc[0]) if self.prev is not None else x.shape[0]
            if self.w is None:
                self.weights = self.counts.astype(np.float64)
        return _partials(self.sums, self.weights, self.counts, self.inertia, moved, computed,
                         x.nbytes)


def _partials(sums, weights, counts, inertia, moved, computed, block_bytes
              ) -> tuple[kernels.Partials, Clusters | None]:
    """A block's partials from its per-cluster ones (its inertia their sum, in cluster order, as
    brute force adds them), and those kept (copied: a caller may fold the partials in place),
    unless they take more than ``KEPT_SHARE`` of the block's ``block_bytes`` of features."""
    total = kernels.Partials(sums, weights, counts, kernels.sequential_sum(inertia), moved,
                             computed)
    if Clusters(sums, weights, counts, inertia).nbytes > KEPT_SHARE * block_bytes:
        return total, None
    return total, Clusters(sums.copy(), weights.copy(), counts.copy(), inertia.copy())


def _fold_changes(x, w, centroids, unmoved, labels, old_labels, kept: Clusters | None, fused
                  ) -> tuple[kernels.Partials, Clusters]:
    """The partials of a pass whose labels are all known, from the previous pass's per-cluster
    ones: a cluster no row joined or left keeps its sums, weight and count, and its inertia too if
    its centroid did not move (``unmoved``, (k,) bool); only the rows of the other clusters are
    read, in row order."""
    k, d = centroids.shape
    changed = labels != old_labels
    moved = int(np.count_nonzero(changed))
    sums, weights = np.zeros((k, d)), np.zeros(k)
    counts, inertia = np.zeros(k, dtype=np.int64), np.zeros(k)
    if kept is None or kept.sums.shape != (k, d):
        dirty = stale = np.ones(k, dtype=bool)
    else:
        dirty = np.zeros(k, dtype=bool)
        dirty[labels[changed]] = True
        dirty[old_labels[changed]] = True
        stale = dirty | ~unmoved
        sums[~dirty], weights[~dirty] = kept.sums[~dirty], kept.weights[~dirty]
        counts[~dirty], inertia[~stale] = kept.counts[~dirty], kept.inertia[~stale]
    if stale.any():
        if fused is not None:
            has_w = w is not None
            fused.fold_stale(x, w if has_w else np.empty(0), has_w, labels, centroids, dirty,
                             stale, sums, weights, counts, inertia)
        else:
            rows = np.flatnonzero(stale[labels])
            lab, xs, ws = labels[rows], x[rows], None if w is None else w[rows]
            dist = _distances(xs, centroids[lab])
            inertia[stale] = np.bincount(lab, weights=dist if ws is None else dist * ws,
                                         minlength=k)[stale]
            members = dirty[lab]
            got = kernels.cluster_partials(xs[members], None if ws is None else ws[members],
                                           lab[members], dist[members], k)
            sums[dirty], weights[dirty], counts[dirty] = (a[dirty] for a in got[:3])
    if w is None:
        weights = counts.astype(np.float64)
    return _partials(sums, weights, counts, inertia, moved, None, x.nbytes)


# --------------------------------------------------------------------------- full pass
def full_partials(x: np.ndarray, x_sq: np.ndarray, w: np.ndarray | None, centroids: np.ndarray,
                  prev_labels: np.ndarray | None = None, *, numba: bool | None = None
                  ) -> tuple[kernels.Partials, np.ndarray, Bounds]:
    """A pass that computes every distance, as brute force does (the same labels, from the same
    scores), and leaves the bounds for the next pass. Its partials are accumulated as a pruned
    pass's are, so a fit's result never depends on which passes found their bounds."""
    m = x.shape[0]
    centroids = np.asarray(centroids, dtype=np.float64)  # the inertia's are float64
    labels = np.empty(m, dtype=np.int32)
    upper, lower = np.empty(m, dtype=BOUNDS_DTYPE), np.empty(m, dtype=BOUNDS_DTYPE)
    fused = kernels._fused() if kernels.use_numba(numba) else None
    unit = unit_roundoff(x.dtype)
    c_max, gamma = _score_scale(kernels.gemm_centroids(centroids, x.dtype), x.dtype)
    acc = _Accumulator(x, w, centroids, labels, prev_labels, fused)
    for lo, hi, scores in kernels.score_chunks(x, centroids):
        _chunk_bounds(scores, lo, x_sq, c_max, gamma, unit, labels, upper, lower, fused)
        acc.add(hi)
    total, kept = acc.partials(m)
    return total, labels, Bounds(upper, lower, kept)


# --------------------------------------------------------------------------- pruned pass
@dataclass
class Motion:
    """What a pruned pass needs to know of the centroids, computed once per pass and partition."""

    centroids: np.ndarray  # (k, d) this pass's
    move: np.ndarray  # (k,) >= the distance each centroid moved since the previous pass
    half: np.ndarray  # (k,) <= half the distance to the nearest other centroid
    exact: np.ndarray  # (k, d) the centroids as the GEMM sees them (kernels.gemm_centroids)
    dtype: str = "float64"  # the blocks' features': moves and separations of the rounded centroids
    #: (k,) the centroids equal to the previous pass's, bit for bit (their rows' distances too)
    unmoved: np.ndarray | None = None

    @classmethod
    def between(cls, old: np.ndarray, centroids: np.ndarray, dtype=np.float64) -> "Motion":
        """Moves and separations of the centroids as a GEMM over rows of ``dtype`` sees them."""
        centroids = np.asarray(centroids, dtype=np.float64)
        rel = _relative(centroids.shape[1], unit_roundoff(dtype))
        now = kernels.gemm_centroids(centroids, dtype)
        diff = now - kernels.gemm_centroids(old, dtype)
        move = np.sqrt(np.einsum("ij,ij->i", diff, diff) + _underflow(diff.shape[1])) * (1 + rel)
        unmoved = np.all(centroids == np.asarray(old, dtype=np.float64), axis=1)
        return cls(centroids, move, _half_separation(now) * (1 - rel), now,
                   np.dtype(dtype).name, unmoved)


def pruned_partials(x: np.ndarray, x_sq: np.ndarray, w: np.ndarray | None, motion: Motion,
                    old_labels: np.ndarray, bounds: Bounds, *, numba: bool | None = None,
                    reuse: bool = False) -> tuple[kernels.Partials, np.ndarray, Bounds]:
    """The pass over ``motion.centroids`` from the previous pass's labels and bounds: the same
    labels, sums, weights, counts and moved rows as brute force, bit for bit; ``computed``
    counts the rows whose distances to every centroid were computed.

    x: (m, d) rows, x_sq: (m,), w: (m,) or None, old_labels: (m,) the previous pass's labels.
    reuse: write the new bounds over ``bounds``' arrays, which the caller gives up (a pass that
    fails leaves them half moved). Fresh arrays cost their page faults on every pass: a fifth
    of the time settling the rows took.
    """
    centroids = motion.centroids
    if motion.dtype != x.dtype.name:
        raise ValueError(f"centroid motion for {motion.dtype} rows, but the rows are {x.dtype}")
    m = x.shape[0]
    fused = kernels._fused() if kernels.use_numba(numba) else None
    unit, exact = unit_roundoff(x.dtype), motion.exact
    c_max, gamma = _score_scale(exact, x.dtype)
    if reuse and bounds.upper.dtype == bounds.lower.dtype == BOUNDS_DTYPE:
        upper, lower = bounds.upper, bounds.lower
    else:
        upper, lower = np.empty(m, dtype=BOUNDS_DTYPE), np.empty(m, dtype=BOUNDS_DTYPE)
    labels = old_labels.copy()
    scores = _Scorer(x, x_sq, centroids, c_max, gamma, unit, labels, upper, lower, fused)
    probe = min(STRETCH_CHUNKS * scores.step, m)
    rows = _settle(x, x_sq, old_labels, bounds, motion, exact, c_max, gamma, unit, upper, lower,
                   0, probe, fused)
    if rows.size > _dense_above(centroids.shape[0]) * probe:
        # most rows of the first stretch unsettled, so most of the block's (its rows are in no
        # order): scored and folded chunk by chunk as brute force does, cheaper than gathering
        acc = _Accumulator(x, w, centroids, labels, old_labels, fused)
        for lo in range(0, m, scores.step):
            hi = min(lo + scores.step, m)
            scores.every(lo, hi)
            acc.add(hi)
        total, kept = acc.partials(m)
    else:
        computed, pending = 0, []
        stretch = SETTLE_CHUNKS * scores.step
        for lo in [*range(probe, m, stretch), m]:  # the first stretch, 0 .. probe, is settled
            computed += rows.size
            pending.append(rows)
            # recomputed a GEMM chunk of rows at a time, from the last few stretches (their
            # rows still in cache): few rows per call cost more in calls than in arithmetic
            if sum(r.size for r in pending) >= scores.step or lo >= m:
                rows = np.concatenate(pending)
                if rows.size:
                    scores.recompute(rows)
                pending = []
            if lo < m:
                rows = _settle(x, x_sq, old_labels, bounds, motion, exact, c_max, gamma, unit,
                               upper, lower, lo, min(lo + stretch, m), fused)
        total, kept = _fold_changes(x, w, centroids, motion.unmoved, labels, old_labels,
                                    bounds.clusters, fused)
        total.computed = computed
    return total, labels, Bounds(upper, lower, kept)


#: brute force's chunks in the stretch a pruned pass settles first: if most of its rows are
#: unsettled, the block is scored whole, as brute force scores it
STRETCH_CHUNKS = 8
#: brute force's chunks in each later stretch of a sparse pass: settled in one call (a call
#: costs as much as settling a few hundred rows; 8 chunks a call cost 15% more per pass at
#: 1M x 32, k = 128, late in the fit), its unsettled rows recomputed when a GEMM chunk of them
#: has gathered
SETTLE_CHUNKS = 64


def _dense_above(k: int) -> float:
    """The fraction of unsettled rows above which a stretch is scored whole, as brute force scores
    it: gathering the rows costs about as much as scoring half of them at a few centroids, and
    little beside a GEMM against many."""
    return 0.5 if k <= 32 else 0.85


def _settle(x, x_sq, old_labels, bounds, motion, centroids, c_max, gamma, unit, upper, lower,
            lo, hi, fused):
    """Rows lo .. hi: the bounds moved with the centroids (written to ``upper``, ``lower``); the
    rows they do not settle get their upper bound tightened to their exact distance to
    ``centroids`` (as the GEMM sees them) and are tried again. Returns the rows still
    unsettled."""
    move, half = motion.move, motion.half
    top, first, second = _top_two(move)
    rel, under = _relative(centroids.shape[1], unit), _underflow(centroids.shape[1])
    if fused is not None:
        rows = np.empty(hi - lo, dtype=np.intp)
        n = fused.settle(x, x_sq, centroids, old_labels, bounds.upper, bounds.lower, move, top,
                         first, second, half, c_max, gamma, rel, under, unit, upper, lower, lo,
                         hi, rows)
        return rows[:n]
    lab = old_labels[lo:hi]
    err = _score_err(x_sq[lo:hi], c_max, gamma)
    up = (bounds.upper[lo:hi] + move[lab]) * (1.0 + 4.0 * unit)
    drop = np.where(lab == top, second, first)
    low = np.maximum((bounds.lower[lo:hi] - drop) * (1.0 - 4.0 * unit), 0.0)
    low = _with_separation(low, half[lab], up, unit)
    rows = np.flatnonzero(~_sure(low, up, err, unit))
    if rows.size:
        tight = np.sqrt(_distances(x[lo + rows], centroids[lab[rows]]) + under) * (1.0 + rel)
        up[rows] = tight
        low[rows] = _with_separation(low[rows], half[lab[rows]], tight, unit)
        rows = rows[~_sure(low[rows], tight, err[rows], unit)]
    upper[lo:hi], lower[lo:hi] = _up(up), _down(low)
    return lo + rows


def _top_two(move: np.ndarray) -> tuple[int, float, float]:
    """The centroid that moved most, its move and the second largest (0 for one centroid): a
    row's other centroids moved at most the first, or the second if it is the top one's."""
    if move.size == 1:
        return 0, 0.0, 0.0
    top = np.argsort(move, kind="stable")[-2:]
    return int(top[1]), float(move[top[1]]), float(move[top[0]])


def _half_separation(centroids: np.ndarray) -> np.ndarray:
    """(k,) half the distance from each centroid to its nearest other one (inf when k = 1),
    computed directly (any summation order: the callers' slack covers it). A GEMM's squared
    distances, each within ``err`` of the exact one (Higham's bound, as ``score_error``), rule out
    every pair that cannot be a centroid's nearest, so only a few pairs per centroid are computed
    directly, not all k^2 of them (at k = 256, d = 64: 0.5 ms instead of 6 per pass). A pair whose
    GEMM distance overflowed is computed directly too."""
    k, d = centroids.shape
    if k == 1:
        return np.full(1, np.inf)
    sq = np.einsum("ij,ij->i", centroids, centroids)
    both = sq[:, None] + sq[None, :]
    with np.errstate(over="ignore", invalid="ignore"):
        d2 = both - 2.0 * (centroids @ centroids.T)
        err = 4.0 * _gamma(d) * both
        np.fill_diagonal(d2, np.inf)
        reach = (d2 + err).min(axis=1)  # >= each centroid's exact squared distance to its nearest
        near = (d2 - err <= reach[:, None]) | ~np.isfinite(d2 + err) | ~np.isfinite(reach)[:, None]
    np.fill_diagonal(near, False)
    i, j = np.nonzero(near)
    diff = centroids[i] - centroids[j]
    half = np.full(k, np.inf)
    dist = np.maximum(np.einsum("ij,ij->i", diff, diff) - _underflow(d), 0.0)
    np.minimum.at(half, i, np.sqrt(dist))
    return 0.5 * half


def _with_separation(lower: np.ndarray, half: np.ndarray, upper: np.ndarray,
                     unit: float = UNIT) -> np.ndarray:
    """max(lower, 2 half - upper): every other centroid is at least 2 s - u away; the
    subtraction's rounding pushed down."""
    with np.errstate(invalid="ignore"):  # one centroid: inf - inf, no other centroid to bound
        sep = 2.0 * half - upper
        sep -= 4 * unit * (2.0 * half + upper)
    return np.fmax(lower, sep)


class _Scorer:
    """Labels and bounds of chosen rows from their distances to every centroid."""

    def __init__(self, x, x_sq, centroids, c_max, gamma, unit, labels, upper, lower,
                 fused) -> None:
        self.x, self.x_sq, self.fused = x, x_sq, fused
        # brute force's GEMM operands and chunks (kernels.score_chunks), so a chunk recomputed
        # here gives brute force's scores bit for bit
        self.neg2_ct = kernels._scaled(centroids, x.dtype)
        self.c_sq = kernels._gemm_norms(centroids, x.dtype)
        self.step = kernels.chunk_rows(centroids.shape[0], x.dtype.itemsize)
        self.out = (c_max, gamma, unit, labels, upper, lower)

    def recompute(self, rows: np.ndarray) -> None:
        """Rows ``rows`` (ascending), a cache-sized chunk of them at a time. A near-tie is settled
        by brute force's own chunk (the same GEMM call on the same rows), so the label is the one
        brute force gives."""
        x, step = self.x, self.step
        for at in range(0, rows.size, step):
            some = rows[at:at + step]
            unsure = self._bound(kernels._chunk_scores(x[some], self.neg2_ct, self.c_sq), some)
            tied = some[unsure]
            for lo in np.unique(tied // step) * step:
                hi = min(lo + step, x.shape[0])
                here = tied[(tied >= lo) & (tied < hi)]
                chunk = kernels._chunk_scores(x[lo:hi], self.neg2_ct, self.c_sq)
                self._bound(chunk[here - lo], here)

    def every(self, lo: int, hi: int) -> None:
        """Every row of lo .. hi (lo on a chunk boundary), scored in brute force's chunks."""
        for at in range(lo, hi, self.step):
            end = min(at + self.step, hi)
            _chunk_bounds(kernels._chunk_scores(self.x[at:end], self.neg2_ct, self.c_sq), at,
                          self.x_sq, *self.out, self.fused)

    def _bound(self, scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return _bound_scores(scores, rows, self.x_sq, *self.out, self.fused)
