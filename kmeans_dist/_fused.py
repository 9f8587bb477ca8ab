"""The fused per-chunk loop, compiled by numba (imported by kernels.py when numba is present).

One pass over a chunk's GEMM scores does argmin, inertia, rows moved, per-cluster weighted sums
and counts, reading each row once. It accumulates in the same order and with the same operations
as the numpy path in kernels.py, so both give bit-identical results. Kept in its own module, with
``cache=True``, so executors compile it once per machine, not once per task.
"""

import numba
import numpy as np

#: kernels.NUMPY_ARGMIN_K (not imported: this module must not import kernels)
NUMPY_ARGMIN_K = 32


#: rows whose distances are computed side by side in ``_fold_rows``: each row's sum over its
#: columns is a chain of dependent additions, and independent rows let them overlap
_FOLD_ROWS = 64


@numba.njit(cache=True, nogil=True)
def _fold_rows(x, lo, hi, labels, centroids, w, has_w, prev, has_prev, sums, weights, counts,
               inertia, acc):
    """Fold rows lo .. hi into the running partials from their labels, in row order: each row's
    squared distance to its centroid computed directly ((x - c)^2 summed in column order, as
    kernels.direct_distances does; no GEMM cancellation) and added to its cluster's inertia,
    its sums, weight and count; ``acc[0]`` counts the rows moved."""
    d = x.shape[1]
    moved = acc[0]
    rows = np.empty(_FOLD_ROWS, dtype=np.int64)
    dist = np.empty(_FOLD_ROWS)
    for start in range(lo, hi, _FOLD_ROWS):
        end = min(start + _FOLD_ROWS, hi)
        for r in range(end - start):
            rows[r] = start + r
        _row_distances(x, rows, end - start, labels, centroids, dist)
        for r in range(end - start):
            i = start + r
            a = labels[i]
            counts[a] += 1
            if has_w:
                wi = w[i]
                inertia[a] += dist[r] * wi
                weights[a] += wi
                for j in range(d):
                    sums[a, j] += x[i, j] * wi
            else:
                inertia[a] += dist[r]
                for j in range(d):
                    sums[a, j] += x[i, j]
            if has_prev and prev[i] != a:
                moved += 1.0
    acc[0] = moved


@numba.njit(cache=True, nogil=True)
def _row_distances(x, rows, n, labels, centroids, dist):
    """``dist[r]``: the squared distance of row ``rows[r]`` to its centroid, for r < n; four
    rows' chains side by side (each row's sum over its columns is a chain of dependent
    additions, and independent rows let them overlap), each in column order."""
    d = x.shape[1]
    r = 0
    while r + 4 <= n:
        i0, i1, i2, i3 = rows[r], rows[r + 1], rows[r + 2], rows[r + 3]
        a0, a1, a2, a3 = labels[i0], labels[i1], labels[i2], labels[i3]
        s0 = s1 = s2 = s3 = 0.0
        for j in range(d):
            t0 = x[i0, j] - centroids[a0, j]
            t1 = x[i1, j] - centroids[a1, j]
            t2 = x[i2, j] - centroids[a2, j]
            t3 = x[i3, j] - centroids[a3, j]
            s0 += t0 * t0
            s1 += t1 * t1
            s2 += t2 * t2
            s3 += t3 * t3
        dist[r], dist[r + 1], dist[r + 2], dist[r + 3] = s0, s1, s2, s3
        r += 4
    while r < n:
        dist[r] = _distance(x, rows[r], centroids, labels[rows[r]])
        r += 1


@numba.njit(cache=True, nogil=True)
def _distance(x, i, centroids, a):
    """Row i's squared distance to centroid a, (x - c)^2 summed in column order."""
    s = 0.0
    for j in range(x.shape[1]):
        t = x[i, j] - centroids[a, j]
        s += t * t
    return s


@numba.njit(cache=True, nogil=True)
def accumulate(scores, x, centroids, w, has_w, prev, has_prev, lo, labels, labelled, sums,
               weights, counts, inertia, acc):
    """Fold rows ``lo .. lo + len(scores)`` of the block into the running partials; with
    ``labelled``, their nearest centroids are already in ``labels`` (numpy's SIMD argmin, faster
    than this scalar loop from about 32 centroids on)."""
    m, k = scores.shape
    if not labelled:
        for r in range(m):
            best = 0
            best_s = scores[r, 0]
            for c in range(1, k):
                s = scores[r, c]
                if s < best_s:
                    best_s = s
                    best = c
            labels[lo + r] = best
    _fold_rows(x, lo, lo + m, labels, centroids, w, has_w, prev, has_prev, sums, weights,
               counts, inertia, acc)


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S12 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(12)


#: rows mixed side by side in ``row_uniforms``: independent rows let the compiler run the mixing
#: in SIMD lanes (one row at a time, each word waits for the previous one: 0.073 -> 0.039 s per
#: million rows of 16 words on one core)
_LANES = 256


@numba.njit(cache=True, nogil=True)
def row_uniforms(bits, key, out):
    """kernels.row_uniforms for every row of ``bits`` (m x words, uint64): the same splitmix64
    folds in the same order per row, so the same values bit for bit, without a transposed copy
    and a dozen array passes per column."""
    m, words = bits.shape
    z = np.empty(_LANES, dtype=np.uint64)
    for lo in range(0, m, _LANES):
        n = min(_LANES, m - lo)
        for i in range(n):
            z[i] = key
        for j in range(words):
            for i in range(n):
                v = z[i] ^ bits[lo + i, j]
                v += _GOLDEN
                v ^= v >> _S30
                v *= _M1
                v ^= v >> _S27
                v *= _M2
                v ^= v >> _S31
                z[i] = v
        for i in range(n):
            out[lo + i] = (np.float64(z[i] >> _S12) + 0.5) / 4503599627370496.0


@numba.njit(inline="always")
def _up(v):
    """A float64 bound stored in float32 (pruning.BOUNDS_DTYPE) never below it, as
    ``pruning._up`` stores it: the same operations, so the same bits."""
    return np.float32(v * 1.00000011920928955078125 + 1.401298464324817e-45)


@numba.njit(inline="always")
def _down(v):
    """A float64 bound stored in float32 never above it, within 0 and float32's largest, as
    ``pruning._down``."""
    return np.float32(min(max(v * 0.99999988079071044921875 - 1.401298464324817e-45, 0.0),
                          3.4028234663852886e+38))


@numba.njit(inline="always")
def _drifted(upper, lower, move, drop, half, unit):
    """A row's bounds moved with the centroids (scalars: its bounds, its centroid's move, the
    most any other centroid moved, its centroid's half separation), each rounding pushed
    outwards, as ``pruning._settle`` moves them."""
    u = (upper + move) * (1.0 + 4.0 * unit)
    low = (lower - drop) * (1.0 - 4.0 * unit)
    low = low if low > 0.0 else 0.0
    return u, _separated(low, half, u, unit)


@numba.njit(inline="always")
def _separated(low, half, u, unit):
    """max(low, 2 half - u), the subtraction's rounding pushed down (``pruning._with_separation``:
    NaN, from one centroid's infinite half separation, leaves ``low``)."""
    sep = 2.0 * half - u
    sep -= 4.0 * unit * (2.0 * half + u)
    return sep if sep > low else low


@numba.njit(inline="always")
def _settled(low, u, err, unit):
    """``pruning._sure`` for one row."""
    return low * low * (1.0 - 4.0 * unit) > (u * u + 4.0 * err) * (1.0 + 4.0 * unit)


@numba.njit(cache=True, nogil=True)
def settle(x, x_sq, centroids, labels, upper, lower, move, top, first, second, half, c_max,
           gamma, rel, under, unit, new_upper, new_lower, lo, hi, rows):
    """pruning._settle for rows lo .. hi: every row's bounds moved with the centroids, in a loop
    with no branch; then each row they do not settle gets its upper bound tightened to its
    exact distance and is tried again (replayed, settling took a quarter less time than one loop
    that tightens a row where it finds it on uniform noise at d = 8, where many rows need it,
    and a sixth less at 1M x 32, k = 128). Rows still unsettled are written to ``rows``; returns
    how many. ``upper``/``lower`` may be ``new_upper``/``new_lower``: each row's are read
    before its new ones are written."""
    d = x.shape[1]
    lows = np.empty(hi - lo)  # the unsettled rows' lower bounds, before their float32 rounding
    n = 0
    for i in range(lo, hi):
        a = labels[i]
        u, low = _drifted(upper[i], lower[i], move[a], second if a == top else first, half[a],
                          unit)
        rows[n] = i  # kept if unsettled: no branch to mispredict
        lows[n] = low
        n += 0 if _settled(low, u, 4.0 * gamma * (x_sq[i] + c_max * c_max), unit) else 1
        new_upper[i] = _up(u)
        new_lower[i] = _down(low)
    left = 0
    for r in range(n):
        i = rows[r]
        a = labels[i]
        dist = 0.0
        for j in range(d):
            t = x[i, j] - centroids[a, j]
            dist += t * t
        u = np.sqrt(dist + under) * (1.0 + rel)
        low = _separated(lows[r], half[a], u, unit)
        new_upper[i] = _up(u)
        new_lower[i] = _down(low)
        if not _settled(low, u, 4.0 * gamma * (x_sq[i] + c_max * c_max), unit):
            rows[left] = i
            left += 1
    return left


@numba.njit(cache=True, nogil=True)
def bound_scores(scores, rows, x_sq, c_max, gamma, unit, labels, upper, lower, unsure):
    """pruning._bound_scores for the rows ``rows`` whose scores these are: each row's label (the
    first index of its smallest score, as brute force picks it) and bounds; the positions of
    the rows whose best two scores are within 4 err of each other go to ``unsure``. Returns
    how many."""
    m, k = scores.shape
    n = 0
    for r in range(m):
        b = 0
        s1 = scores[r, 0]
        s2 = np.inf
        if k > NUMPY_ARGMIN_K:  # one pass keeping the best two: 49 ns a row at k=128, not 136
            for c in range(1, k):
                s = scores[r, c]
                if s < s2:
                    if s < s1:
                        s2 = s1
                        s1 = s
                        b = c
                    else:
                        s2 = s
        else:  # the first index of the minimum, then the rest's minimum: 11 ns at k=16, not 12
            for c in range(1, k):
                s = scores[r, c]
                if s < s1:
                    s1 = s
                    b = c
            for c in range(k):
                s = scores[r, c] if c != b else np.inf
                s2 = min(s2, s)
        i = rows[r]
        xs = x_sq[i]
        err = 4.0 * gamma * (xs + c_max * c_max)
        labels[i] = b
        u = s1 + xs + 2.0 * err
        upper[i] = _up(np.sqrt(u if u > 0.0 else 0.0) * (1.0 + 4.0 * unit))
        v = s2 + xs - 2.0 * err
        lower[i] = _down(np.sqrt(v if v > 0.0 else 0.0) * (1.0 - 4.0 * unit))
        if s2 - s1 <= 4.0 * err:
            unsure[n] = r
            n += 1
    return n


@numba.njit(cache=True, nogil=True)
def best_two_bounds(best, second, x_sq, lo, c_max, gamma, unit, upper, lower):
    """pruning._chunk_bounds's bounds for rows lo .. lo + len(best) from their best two scores
    (the same expressions as ``bound_scores``)."""
    for r in range(best.shape[0]):
        i = lo + r
        xs = x_sq[i]
        err = 4.0 * gamma * (xs + c_max * c_max)
        u = best[r] + xs + 2.0 * err
        upper[i] = _up(np.sqrt(u if u > 0.0 else 0.0) * (1.0 + 4.0 * unit))
        v = second[r] + xs - 2.0 * err
        lower[i] = _down(np.sqrt(v if v > 0.0 else 0.0) * (1.0 - 4.0 * unit))


@numba.njit(cache=True, nogil=True)
def accumulate_labels(x, w, has_w, labels, centroids, prev, has_prev, lo, hi, sums, weights,
                      counts, inertia, acc):
    """Fold rows lo .. hi into the running partials from their labels (``_fold_rows``; the numpy
    path, kernels.label_partials over kernels.direct_distances, does the same operations in the
    same order)."""
    _fold_rows(x, lo, hi, labels, centroids, w, has_w, prev, has_prev, sums, weights, counts,
               inertia, acc)


@numba.njit(cache=True, nogil=True)
def fold_stale(x, w, has_w, labels, centroids, dirty, stale, sums, weights, counts, inertia):
    """Fold, in row order, only the rows of the ``stale`` clusters (whose inertia must be
    computed again): each one's distance to its centroid into its cluster's inertia, and, for the
    ``dirty`` clusters (whose rows changed), the row into its sums, weight and count. The rows
    of the other clusters are not read. A few rows at a time, as ``_fold_rows`` folds them."""
    d = x.shape[1]
    m = x.shape[0]
    rows = np.empty(_FOLD_ROWS, dtype=np.int64)
    dist = np.empty(_FOLD_ROWS)
    for start in range(0, m, _FOLD_ROWS):
        n = 0
        for i in range(start, min(start + _FOLD_ROWS, m)):
            rows[n] = i  # kept if stale: no branch to mispredict
            n += 1 if stale[labels[i]] else 0
        _row_distances(x, rows, n, labels, centroids, dist)
        # _fold_rows' addition, written out again: as a shared helper (inline="always" too)
        # it made both folds 2-4x slower (measured)
        for r in range(n):
            i = rows[r]
            a = labels[i]
            if has_w:
                wi = w[i]
                inertia[a] += dist[r] * wi
                if dirty[a]:
                    counts[a] += 1
                    weights[a] += wi
                    for j in range(d):
                        sums[a, j] += x[i, j] * wi
            else:
                inertia[a] += dist[r]
                if dirty[a]:
                    counts[a] += 1
                    for j in range(d):
                        sums[a, j] += x[i, j]
