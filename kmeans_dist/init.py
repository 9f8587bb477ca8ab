"""Initial centroids: random rows, k-means++, k-means|| (the default), or given ones.

Every sampling step draws per-row uniforms from (seed, step, the row's content) and breaks ties
by content too, so the same seed picks the same rows whatever the partitioning and row order.
Each strategy fails with a clear UserError when the data has fewer than k distinct rows, which
is how that case is detected at all.
"""

from __future__ import annotations

import numpy as np

from kmeans_dist import kernels, tasks
from kmeans_dist.errors import UserError
from kmeans_dist.transport.base import Transport

INITS = ("k-means||", "k-means++", "random")

#: further k-means|| rounds allowed when the usual ones found fewer than k distinct candidates
MAX_EXTRA_ROUNDS = 50
#: greedy k-means++ seedings tried when reducing the k-means|| candidates (see ``local_kmeans``)
LOCAL_SEEDINGS = 10
#: the bound on seedings x candidates x k x d in ``local_kmeans``
LOCAL_WORK = 1e8


def too_few_distinct(k: int, distinct: int) -> UserError:
    return UserError(f"k={k} is larger than the number of distinct rows ({distinct})")


def _distinct_rows(rows: list[np.ndarray]) -> list[np.ndarray]:
    seen: set[bytes] = set()
    out = []
    for r in rows:
        key = r.tobytes()
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def _sample(transport: Transport, step: tasks.SampleStep, label: str) -> tasks.SampleResult:
    parts = transport.run(tasks.sample, step, f"kmeans_dist: init {label}")
    cands = tasks.smallest([c for p in parts for c in p.candidates], step.n)
    return tasks.SampleResult(kernels.sequential_sum(np.array([p.cost for p in parts])), cands)


def random_rows(transport: Transport, k: int, seed: int, n_rows: int) -> np.ndarray:
    """k distinct rows drawn at random (weighted by row weight when there are weights)."""
    want = k
    while True:
        found = _sample(transport, tasks.SampleStep(seed, 0, want), f"random, k={k}").candidates
        distinct = _distinct_rows([c.row for c in found])
        if len(distinct) >= k:
            return np.array(distinct[:k])
        if len(found) < want or want >= n_rows:
            raise too_few_distinct(k, len(distinct))
        want = min(n_rows, want * 4)


def kmeans_plus_plus(transport: Transport, k: int, seed: int) -> np.ndarray:
    """Exact k-means++: each centre drawn with probability ∝ weight x d^2, one pass per centre."""
    first = _sample(transport, tasks.SampleStep(seed, 1, 1), f"k-means++ centre 1/{k}").candidates
    return extend_plus_plus(transport, np.array([first[0].row]), k, seed)


def extend_plus_plus(transport: Transport, centers: np.ndarray, k: int, seed: int) -> np.ndarray:
    """``centers`` plus k - len(centers) more, drawn as k-means++ continues from them (each ∝
    weight x d^2 to the nearest centre so far, seeded by row content): how a warm start from a
    model with fewer clusters gets its new ones."""
    centers = list(centers)
    for i in range(len(centers), k):
        res = _sample(transport, tasks.SampleStep(seed, 1 + i, 1, np.array(centers)),
                      f"k-means++ centre {i + 1}/{k}")
        if not res.candidates or res.cost <= 0:
            raise too_few_distinct(k, len(centers))
        centers.append(res.candidates[0].row)
    return np.array(centers)


def kmeans_parallel(transport: Transport, k: int, seed: int, steps: int = 2) -> np.ndarray:
    """k-means|| (Bahmani et al. 2012): oversample about 2k rows per round, then reduce to k.

    The candidates are weighted by how much row weight is nearest to each, and reduced on the
    driver by weighted k-means++ followed by weighted Lloyd, as Spark MLlib does, but keeping the
    best of several greedy seedings (see ``local_kmeans``).
    """
    ell = 2.0 * k
    first = _sample(transport, tasks.SampleStep(seed, 1, 1), f"k-means|| first centre, k={k}")
    candidates = [first.candidates[0].row]
    round_ = 0
    while round_ < steps or (len(candidates) < k and round_ < steps + MAX_EXTRA_ROUNDS):
        round_ += 1
        added, cost = _oversample_round(transport, seed, round_, ell, np.array(candidates), k)
        if cost <= 0:
            break  # every row coincides with a candidate
        candidates = _distinct_rows(candidates + added)
    cand = np.array(candidates)
    if len(cand) < k:
        raise too_few_distinct(k, len(cand))
    weights = np.sum(transport.run(tasks.nearest_weights, cand,
                                   f"kmeans_dist: init k-means|| candidate weights, k={k}"), axis=0)
    return local_kmeans(cand, weights, k, seed)


def _oversample_round(transport: Transport, seed: int, round_: int, ell: float,
                      centers: np.ndarray, k: int) -> tuple[list[np.ndarray], float]:
    """Rows with u < ell * w d^2 / cost, in rank order (key, then content: order independent);
    asks again with a larger cap if a partition was cut short."""
    cap = int(2 * ell + 10 * np.sqrt(ell) + 10)
    while True:
        step = tasks.OversampleStep(seed, 1000 + round_, cap, centers)
        parts = transport.run(tasks.oversample, step,
                              f"kmeans_dist: init k-means|| round {round_}, k={k}")
        cost = kernels.sequential_sum(np.array([p.cost for p in parts]))
        threshold = -cost / ell  # keys are -(w d^2 / u); keep key < threshold
        cut_short = any(
            len(p.candidates) == cap and p.candidates[-1].key < threshold for p in parts
        )
        if not cut_short:
            kept = sorted((c for p in parts for c in p.candidates if c.key < threshold),
                          key=tasks.Candidate.rank)
            return [c.row for c in kept], cost
        cap *= 4


def local_kmeans(points: np.ndarray, weights: np.ndarray, k: int, seed: int,
                 max_iter: int = 30, seedings: int = LOCAL_SEEDINGS) -> np.ndarray:
    """The k-means|| reduction on the driver: ``seedings`` greedy weighted k-means++ starts, each
    refined by weighted Lloyd; the one with the lowest weighted cost wins.

    Spark MLlib reduces with one plain seeding; on blobs that often leaves two centres in one
    blob and one centre over two, which the Lloyd iterations on the data never undo. The
    candidates are only a few k rows, so ten greedy seedings cost milliseconds here.
    """
    rng = np.random.default_rng(seed)
    p_sq = kernels.squared_norms(points)
    w = np.where(weights > 0, weights, 0.0)
    if w.sum() <= 0:
        w = np.ones(len(points))
    best, best_cost = None, np.inf
    # a few GFLOP at most: large k on many candidates gets fewer seedings (at least one)
    seedings = max(1, min(seedings, int(LOCAL_WORK // (len(points) * k * points.shape[1]))))
    for _ in range(seedings):
        c = _weighted_lloyd(points, p_sq, w, _greedy_plus_plus(points, p_sq, w, k, rng), max_iter)
        cost = float(kernels.min_distances(points, p_sq, c) @ w)
        if cost < best_cost:
            best, best_cost = c, cost
    return best


def _greedy_plus_plus(points: np.ndarray, p_sq: np.ndarray, w: np.ndarray, k: int,
                      rng: np.random.Generator) -> np.ndarray:
    """Weighted k-means++ where each new centre is the best of 2 + ln k draws (the one that
    lowers the weighted cost most), as scikit-learn seeds."""
    trials = 2 + int(np.log(k))

    def dist_to(idx: np.ndarray) -> np.ndarray:  # (len(idx), n) squared distances, by GEMM
        d2 = p_sq[idx, None] - 2.0 * (points[idx] @ points.T) + p_sq[None, :]
        return np.maximum(d2, 0.0)

    chosen = [int(rng.choice(len(points), p=w / w.sum()))]
    closest = dist_to(np.array(chosen))[0]
    for _ in range(1, k):
        mass = closest * w
        if mass.sum() <= 0:  # every candidate with weight is a centre already
            mass = (~np.isin(np.arange(len(points)), chosen)).astype(float)
        draws = rng.choice(len(points), size=trials, p=mass / mass.sum())
        dist = np.minimum(closest[None, :], dist_to(draws))
        pick = int(np.argmin(dist @ w))
        chosen.append(int(draws[pick]))
        closest = dist[pick]
    return points[chosen]


def _weighted_lloyd(points: np.ndarray, p_sq: np.ndarray, w: np.ndarray, c: np.ndarray,
                    max_iter: int) -> np.ndarray:
    for _ in range(max_iter):
        total, _ = kernels.block_partials(points, p_sq, w, c)
        new, _ = kernels.update_centroids(total, c)
        if np.array_equal(new, c):
            break
        c = new
    return c


def explicit(centroids, k: int, d: int, source: str = "init centroids") -> np.ndarray:
    """Given centroids checked for shape (k x d) and finite values."""
    c = np.asarray(centroids, dtype=np.float64)
    if c.ndim != 2 or c.shape != (k, d):
        raise UserError(
            f"{source} has shape {'x'.join(map(str, c.shape))}, expected {k}x{d} (k x features)"
        )
    if not np.isfinite(c).all():
        r, col = np.argwhere(~np.isfinite(c))[0]
        raise UserError(f"{source} has a non-finite value {c[r, col]} at row {r}, column {col}")
    return c.copy()
