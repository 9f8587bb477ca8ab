"""Per-block k-means math: pure numpy (numba optional), no Spark.

Every function here works on one block of rows held as a C-contiguous float64 (or float32, see
``DTYPES``) array, so it can be unit-tested against brute force and reused by any transport.
Squared Euclidean distances to every centroid come from one GEMM per chunk of rows:
||x||^2 - 2 x.c + ||c||^2 (no square root anywhere); the inertia adds each row's distance to its
own centroid computed directly ((x - c)^2 summed, in float64).

float32 blocks: the GEMM runs in float32, on the centroids rounded to float32 (``gemm_centroids``),
and gives float32 scores; everything after it is float64: each row's squared norm (computed in
float64 once per block), its direct distance to its (float64) centroid, the sums, weights and
inertia. Rows in float32 convert to float64 exactly, so the numpy and numba paths stay
bit-identical.

Sums and inertia are accumulated per cluster, row by row in row order (``np.bincount`` does
exactly that, and so does the numba loop), and a block's inertia is its clusters' summed in
cluster order, so the numpy and numba paths give bit-identical results and a rerun over the same
blocks is bit-identical too. Per cluster, so that a pruned pass can keep a cluster's partials
from the previous pass when its rows did not change (``pruning.Clusters``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

#: the fused numba loop's module once looked for: the module, or False where numba is missing
_FUSED = None

#: rows per GEMM chunk at most; fewer for large k (see ``chunk_rows``)
CHUNK_ROWS = 8192
#: bytes of a chunk's (rows x k) score matrix, so the pass after the GEMM reads it from L2
SCORE_BYTES = 1 << 18
#: above this many centroids the fused loop takes its labels from numpy's argmin (SIMD): per
#: million rows on one core, 0.024 s against the scalar loop's 0.12 s at k=128; at k=16 the loop
#: is faster (0.008 s against 0.031 s)
NUMPY_ARGMIN_K = 32


#: the dtypes a fit may hold its blocks' features in (``KMeans(dtype=...)``)
DTYPES = ("float64", "float32")


def chunk_rows(k: int, itemsize: int = 8) -> int:
    """Rows per GEMM chunk for k centroids and scores of ``itemsize`` bytes: measured on one
    core, 2048 rows at k=16 and 512 at k=128 were 20-25% faster per pass than 8192 (the score
    matrix had left the L2 cache); below 512 rows the GEMM itself slows down."""
    return min(CHUNK_ROWS, max(512, SCORE_BYTES // (itemsize * k)))


def gemm_centroids(centroids: np.ndarray, dtype=np.float64) -> np.ndarray:
    """The centroids as a GEMM over rows of ``dtype`` sees them, as float64: rounded to float32
    for float32 rows (exact in float64), the centroids themselves for float64 rows."""
    if np.dtype(dtype) == np.float64:
        return centroids
    return np.asarray(centroids, dtype=dtype).astype(np.float64)


def _fused():
    """The fused loop's module (an optional accelerator: results are identical without it), or
    None. Imported on first use, not with this module: importing numba costs ~0.35 s in every
    fresh Python worker, and tasks that never run the loop (``transform``) skip it."""
    global _FUSED
    if _FUSED is None:
        try:
            from kmeans_dist import _fused as module
        except ImportError:  # pragma: no cover - exercised where numba is not installed
            module = False
        _FUSED = module
    return _FUSED or None


def use_numba(enabled: bool | None = None) -> bool:
    """Whether the fused numba loop is wanted (``enabled`` None: when available) and available."""
    return (enabled is None or bool(enabled)) and _fused() is not None


def warm_up(dtype=np.float64) -> None:
    """Load the fused loops ahead of their first use: importing numba and loading their cached
    machine code takes ~0.35 s in a fresh Python worker (Spark retires idle ones after a
    minute), which a resident task overlaps with receiving its rows. Writable C-contiguous
    arrays, as the resident blocks are, so the loaded signatures are the ones the fit calls
    (``dtype``: the blocks' features', whose loops are loaded too)."""
    if not use_numba():
        return
    x = np.zeros((2, 2))
    block_partials(x, squared_norms(x), None, x, np.zeros(2, dtype=np.int32))
    row_uniforms(0, 0, x)
    if np.dtype(dtype) != np.float64:
        x = np.zeros((2, 2), dtype=dtype)
        block_partials(x, squared_norms(x), None, np.zeros((2, 2)), np.zeros(2, dtype=np.int32))


def squared_norms(x: np.ndarray) -> np.ndarray:
    """Row-wise squared L2 norms in float64 (of float32 rows too), computed once per block and
    kept beside it."""
    if x.dtype != np.float64:
        x = x.astype(np.float64)
    return np.einsum("ij,ij->i", x, x)


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (spherical k-means); zero rows are left as zeros."""
    norms = np.sqrt(squared_norms(x))
    return x / np.where(norms > 0, norms, 1.0)[:, None]


def _scaled(centroids: np.ndarray, dtype=np.float64) -> np.ndarray:
    """-2 c^T in ``dtype``, contiguous: scaling by -2 is exact, so x @ (-2 c^T) == -2 (x @ c^T)
    bit for bit, and the GEMM then needs one pass over the scores less."""
    return np.ascontiguousarray(-2.0 * np.asarray(centroids, dtype=dtype).T)


def _gemm_norms(centroids: np.ndarray, dtype=np.float64) -> np.ndarray:
    """||c||^2 of the centroids as the GEMM sees them, in ``dtype``: computed in float64 from
    the (rounded) centroids, then rounded once."""
    return squared_norms(gemm_centroids(centroids, dtype)).astype(dtype, copy=False)


def _chunk_scores(x: np.ndarray, neg2_ct: np.ndarray, c_sq: np.ndarray) -> np.ndarray:
    """||c||^2 - 2 x.c for a chunk: the squared distance less the row's own ||x||^2."""
    scores = x @ neg2_ct
    scores += c_sq
    return scores


def score_chunks(x: np.ndarray, centroids: np.ndarray,
                 c_sq: np.ndarray | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
    """(lo, hi, scores of rows lo..hi) over the rows of ``x``, in cache-sized chunks; the scores
    in x's dtype (the GEMM's). ``c_sq``: the centroids' squared norms (default: computed)."""
    neg2_ct = _scaled(centroids, x.dtype)
    c_sq = _gemm_norms(centroids, x.dtype) if c_sq is None else c_sq.astype(x.dtype, copy=False)
    step = chunk_rows(len(centroids), x.dtype.itemsize)
    for lo in range(0, x.shape[0], step):
        hi = min(lo + step, x.shape[0])
        yield lo, hi, _chunk_scores(x[lo:hi], neg2_ct, c_sq)


def assign(
    x: np.ndarray, x_sq: np.ndarray, centroids: np.ndarray, c_sq: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of every row (first index on ties) and its squared distance (>= 0)."""
    m = x.shape[0]
    labels = np.empty(m, dtype=np.int32)
    dist = np.empty(m, dtype=np.float64)
    for lo, hi, scores in score_chunks(x, centroids, c_sq):
        lab = np.argmin(scores, axis=1)
        labels[lo:hi] = lab
        dist[lo:hi] = scores[np.arange(hi - lo), lab] + x_sq[lo:hi]
    np.maximum(dist, 0.0, out=dist)
    return labels, dist


def row_distances(
    x: np.ndarray, centroids: np.ndarray, labels: np.ndarray, cosine: bool = False
) -> np.ndarray:
    """Each row's distance to its centroid, computed directly (no GEMM cancellation):
    Euclidean, or the cosine distance 1 - cos for rows already scaled to unit length."""
    c = centroids[labels]
    if cosine:
        return 1.0 - np.einsum("ij,ij->i", x, normalize_rows(c))
    diff = x - c
    return np.sqrt(np.einsum("ij,ij->i", diff, diff))


def sequential_sum(values: np.ndarray) -> float:
    """Left-to-right float64 sum (np.sum is pairwise): the order the numba loop uses."""
    if values.size == 0:
        return 0.0
    return float(np.bincount(np.zeros(values.size, dtype=np.intp), weights=values)[0])


@dataclass
class Partials:
    """What one block (or a merge of blocks) contributes to a Lloyd update."""

    sums: np.ndarray  # (k, d) weighted sum of the rows assigned to each cluster
    weights: np.ndarray  # (k,) sum of the weights of those rows (row counts when unweighted)
    counts: np.ndarray  # (k,) int64 number of rows assigned to each cluster
    inertia: float  # weighted sum of squared distances to the assigned centroid
    moved: int  # rows whose cluster differs from the previous iteration's
    #: rows whose distance to every centroid was computed (all of them, unless pruned: see
    #: pruning.py); None in partials that do not count them
    computed: int | None = None

    @classmethod
    def zeros(cls, k: int, d: int) -> "Partials":
        return cls(np.zeros((k, d)), np.zeros(k), np.zeros(k, dtype=np.int64), 0.0, 0, 0)

    def add(self, other: "Partials") -> "Partials":
        """Sum of two partials; callers fold in a fixed order so results are reproducible."""
        return Partials(
            self.sums + other.sums,
            self.weights + other.weights,
            self.counts + other.counts,
            self.inertia + other.inertia,
            self.moved + other.moved,
            None if self.computed is None or other.computed is None
            else self.computed + other.computed,
        )


def fold(parts: list):
    """Left fold with ``.add`` in the given (partition) order (Partials, tasks.Summary)."""
    total = parts[0]
    for p in parts[1:]:
        total = total.add(p)
    return total


def block_partials(
    x: np.ndarray,
    x_sq: np.ndarray,
    w: np.ndarray | None,
    centroids: np.ndarray,
    prev_labels: np.ndarray | None = None,
    *,
    numba: bool | None = None,
) -> tuple[Partials, np.ndarray]:
    """Assign one block to its nearest centroids and return its partials and labels.

    ``prev_labels`` are the block's labels from the previous iteration (None on the first one,
    when every row counts as moved). ``w`` are row weights, or None for unit weights.
    """
    k = centroids.shape[0]
    centroids = np.asarray(centroids, dtype=np.float64)  # the inertia's distances in float64
    if use_numba(numba):
        return _fused_partials(x, x_sq, w, centroids, prev_labels)
    labels = assign(x, x_sq, centroids)[0]
    return label_partials(x, w, labels, direct_distances(x, centroids[labels]), k,
                          prev_labels), labels


def direct_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise squared Euclidean distance, (a - b)^2 summed column by column in order (as the
    numba loops do, so both give the same bits). The inertia comes from these, not from the
    GEMM's scores: ||x||^2 - 2 x.c + ||c||^2 cancels badly far from the origin."""
    diff = a - b
    acc = diff[:, 0] * diff[:, 0]
    for j in range(1, diff.shape[1]):
        acc += diff[:, j] * diff[:, j]
    return acc


def label_partials(x: np.ndarray, w: np.ndarray | None, labels: np.ndarray, dist: np.ndarray,
                   k: int, prev_labels: np.ndarray | None) -> Partials:
    """Partials from known labels and squared distances, accumulated row by row in row order."""
    m = x.shape[0]
    sums, weights, counts, inertia = cluster_partials(x, w, labels, dist, k)
    moved = m if prev_labels is None else int(np.count_nonzero(labels != prev_labels))
    return Partials(sums, weights, counts, sequential_sum(inertia), moved, m)


def cluster_partials(x: np.ndarray, w: np.ndarray | None, labels: np.ndarray, dist: np.ndarray,
                     k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per cluster, accumulated over its rows in row order (bincount adds its weights one by one,
    in order): (k, d) sums, (k,) weights, (k,) int64 counts and (k,) inertia, each row's
    squared distance ``dist`` (times its weight). A block's inertia is the sum of its clusters',
    in cluster order (``sequential_sum``), on every path: the numba loop accumulates the same."""
    d = x.shape[1]
    counts = np.bincount(labels, minlength=k).astype(np.int64)
    if w is None:
        weights = counts.astype(np.float64)
        inertia = np.bincount(labels, weights=dist, minlength=k)
        columns = [np.bincount(labels, weights=x[:, j], minlength=k) for j in range(d)]
    else:
        weights = np.bincount(labels, weights=w, minlength=k)
        inertia = np.bincount(labels, weights=dist * w, minlength=k)
        columns = [np.bincount(labels, weights=x[:, j] * w, minlength=k) for j in range(d)]
    sums = np.stack(columns, axis=1).reshape(k, d)
    return sums, weights, counts, inertia


def _fused_partials(x, x_sq, w, centroids, prev_labels):
    """GEMM per chunk in numpy, then one numba pass for argmin, inertia, sums and counts."""
    k, d = centroids.shape
    m = x.shape[0]
    labels = np.empty(m, dtype=np.int32)
    sums = np.zeros((k, d))
    weights = np.zeros(k)
    counts = np.zeros(k, dtype=np.int64)
    inertia = np.zeros(k)  # per cluster, carried across chunks in row order
    acc = np.zeros(1)  # rows moved
    has_w = w is not None
    has_prev = prev_labels is not None
    w_arr = w if has_w else np.empty(0)
    prev = prev_labels if has_prev else np.empty(0, dtype=np.int32)
    accumulate = _fused().accumulate
    labelled = k > NUMPY_ARGMIN_K
    for lo, hi, scores in score_chunks(x, centroids):
        if labelled:
            labels[lo:hi] = np.argmin(scores, axis=1)
        accumulate(scores, x, centroids, w_arr, has_w, prev, has_prev, lo, labels, labelled,
                   sums, weights, counts, inertia, acc)
    if not has_w:
        weights = counts.astype(np.float64)
    moved = int(acc[0]) if has_prev else m
    return Partials(sums, weights, counts, sequential_sum(inertia), moved, m), labels


def farthest(
    x: np.ndarray, centroids: np.ndarray, labels: np.ndarray, n: int, w: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and distances of the ``n`` rows farthest from their assigned centroid.

    Distances are computed directly, (x - c)^2 summed, as scikit-learn does when it relocates
    empty clusters; ties go by row content (``smallest_rows``), never by position, so the rows
    chosen do not depend on row order. Returned farthest first.
    """
    diff = x - centroids[labels]
    dist = np.einsum("ij,ij->i", diff, diff)
    order = smallest_rows(-dist, x, w, n)
    return order, dist[order]


def update_centroids(total: Partials, old: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """New centroids as weighted means; clusters with no weight keep their old centroid.

    Returns the centroids and a boolean mask of the clusters that were empty.
    """
    empty = total.weights <= 0
    safe = np.where(empty, 1.0, total.weights)
    new = total.sums / safe[:, None]
    new[empty] = old[empty]
    return new, empty


def center_shift(old: np.ndarray, new: np.ndarray) -> float:
    """Sum over centroids of the squared distance each one moved (scikit-learn's quantity)."""
    diff = new - old
    return float(np.einsum("ij,ij->", diff, diff))


def max_center_move_sq(old: np.ndarray, new: np.ndarray) -> float:
    """The squared distance the centroid that moved most went (MLlib compares it to tol^2)."""
    diff = new - old
    return float(np.einsum("ij,ij->i", diff, diff).max())


def min_distances(x: np.ndarray, x_sq: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Squared distance from every row to its nearest center (k-means++ / k-means|| weights).

    Scores are laid out centre by row (k x chunk) so the minimum over the centres is an
    elementwise minimum across rows, which numpy vectorises; a min along each short row of a
    (chunk x k) matrix cost more than the GEMM (per million rows, k=16: 0.037 s against 0.086 s).
    """
    neg2_c = -2.0 * centers
    c_sq = squared_norms(centers)[:, None]
    dist = np.empty(x.shape[0], dtype=np.float64)
    step = chunk_rows(len(centers))
    for lo in range(0, x.shape[0], step):
        hi = min(lo + step, x.shape[0])
        scores = neg2_c @ x[lo:hi].T
        scores += c_sq
        np.add(scores.min(axis=0), x_sq[lo:hi], out=dist[lo:hi])
    return np.maximum(dist, 0.0, out=dist)


_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix_in_place(z: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """splitmix64's mix of every word of ``z``, in place (``tmp``: scratch of the same shape)."""
    z += _GOLDEN
    for shift, mult in ((30, _M1), (27, _M2)):
        np.right_shift(z, np.uint64(shift), out=tmp)
        z ^= tmp
        z *= mult
    np.right_shift(z, np.uint64(31), out=tmp)
    z ^= tmp
    return z


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's mix of every word: a bijection on 64-bit words."""
    z = np.array(z, dtype=np.uint64)
    return _mix_in_place(z, np.empty_like(z))


def row_bits(x: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Each row's content as exact integers: the (m, d) uint64 bit patterns of its float64
    values, plus one column for its weight when there are weights."""
    bits = np.ascontiguousarray(x, dtype=np.float64).view(np.uint64)
    if w is None:
        return bits
    wbits = np.ascontiguousarray(w, dtype=np.float64).view(np.uint64)
    return np.column_stack([bits, wbits])


def smallest_rows(keys: np.ndarray, x: np.ndarray, w: np.ndarray | None, n: int) -> np.ndarray:
    """Indices of the ``n`` rows with the smallest finite key, smallest first.

    Ties go by row content (``row_bits``, compared column by column), so which rows are chosen
    depends on the keys and the rows' values alone, never on their order; rows with equal keys
    and content are interchangeable. Rows with a non-finite key are never chosen.
    """
    finite = np.flatnonzero(np.isfinite(keys))
    m = min(n, finite.size)
    if m <= 0:
        return np.empty(0, dtype=np.intp)
    k = keys[finite]
    cut = np.partition(k, m - 1)[m - 1]
    cand = finite[k <= cut]  # the m smallest, plus every row tied with the m-th
    bits = row_bits(x[cand], None if w is None else w[cand])
    order = np.lexsort((*bits.T[::-1], keys[cand]))
    return cand[order[:m]]


def _seed_key(seed: int, stream: int) -> np.uint64:
    """One 64-bit key from (seed, stream); any Python ints (taken modulo 2^64)."""
    mask = 0xFFFFFFFFFFFFFFFF
    key = _splitmix64(np.array([seed & mask], dtype=np.uint64))
    return _splitmix64(key ^ np.uint64(stream & mask))[0]


def row_uniforms(seed: int, stream: int, x: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """One uniform in (0, 1) per row of ``x``, from (seed, stream) and the row's content.

    Counter-based: a key from (seed, stream) is folded with each of the row's 64-bit words (its
    float64 bit patterns, then its weight's: ``row_bits``) by splitmix64 mixing, z = mix(z ^ word),
    one vectorised in-place pass per column. A value depends on what the row holds, never on
    where it sits, so seeded sampling picks the same rows on any partitioning and in any row
    order; identical rows get identical values.
    """
    fused = _fused()
    if fused is not None:  # same values, one pass over the rows
        out = np.empty(x.shape[0])
        fused.row_uniforms(row_bits(x, w), _seed_key(seed, stream), out)
        return out
    words = np.ascontiguousarray(row_bits(x, w).T)  # one contiguous array per column
    z = np.full(words.shape[1], _seed_key(seed, stream), dtype=np.uint64)
    tmp = np.empty_like(z)
    for column in words:
        z ^= column
        _mix_in_place(z, tmp)
    # 52 random bits + 1/2, scaled by 2^-52: exact in float64, so strictly inside (0, 1)
    return ((z >> np.uint64(12)).astype(np.float64) + 0.5) / 4503599627370496.0
