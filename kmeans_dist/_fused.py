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


@numba.njit(cache=True, nogil=True, inline="always")
def _fold_row(x, i, a, centroids, w, has_w, sums, weights, counts):
    """Row i into cluster a's sums, weight and count; returns its weighted squared distance to
    centroid a, computed directly ((x - c)^2 summed in column order: no GEMM cancellation)."""
    d = x.shape[1]
    dist = 0.0
    for j in range(d):
        t = x[i, j] - centroids[a, j]
        dist += t * t
    counts[a] += 1
    if has_w:
        wi = w[i]
        weights[a] += wi
        for j in range(d):
            sums[a, j] += x[i, j] * wi
        return dist * wi
    for j in range(d):
        sums[a, j] += x[i, j]
    return dist


@numba.njit(cache=True, nogil=True)
def accumulate(scores, x, centroids, w, has_w, prev, has_prev, lo, labels, labelled, sums,
               weights, counts, acc):
    """Fold rows ``lo .. lo + len(scores)`` of the block into the running partials; with
    ``labelled``, their nearest centroids are already in ``labels`` (numpy's SIMD argmin, faster
    than this scalar loop from about 32 centroids on)."""
    m, k = scores.shape
    inertia = acc[0]
    moved = acc[1]
    for r in range(m):
        i = lo + r
        if labelled:
            best = labels[i]
            best_s = scores[r, best]
        else:
            best = 0
            best_s = scores[r, 0]
            for c in range(1, k):
                s = scores[r, c]
                if s < best_s:
                    best_s = s
                    best = c
            labels[i] = best
        inertia += _fold_row(x, i, best, centroids, w, has_w, sums, weights, counts)
        if has_prev and prev[i] != best:
            moved += 1.0
    acc[0] = inertia
    acc[1] = moved


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


@numba.njit(cache=True, nogil=True)
def settle(x, x_sq, centroids, labels, upper, lower, move, top, first, second, half, c_max,
           gamma, rel, unit, new_upper, new_lower, lo, hi, rows):
    """pruning._settle for rows lo .. hi, one row at a time: the bounds moved with the
    centroids, the row skipped when they settle it, else its upper bound tightened to its exact
    distance and tried again. Rows still unsettled are written to ``rows``; returns how many."""
    d = x.shape[1]
    n = 0
    for i in range(lo, hi):
        a = labels[i]
        u = (upper[i] + move[a]) * (1.0 + 4.0 * unit)
        drop = second if a == top else first
        low = (lower[i] - drop) * (1.0 - 4.0 * unit)
        if low < 0.0:
            low = 0.0
        sep = 2.0 * half[a] - u
        sep -= 4.0 * unit * (2.0 * half[a] + u)
        if sep > low:
            low = sep
        err = 4.0 * gamma * (x_sq[i] + c_max * c_max)
        if not low * low * (1.0 - 4.0 * unit) > (u * u + 4.0 * err) * (1.0 + 4.0 * unit):
            dist = 0.0
            for j in range(d):
                t = x[i, j] - centroids[a, j]
                dist += t * t
            u = np.sqrt(dist) * (1.0 + rel)
            sep = 2.0 * half[a] - u
            sep -= 4.0 * unit * (2.0 * half[a] + u)
            if sep > low:
                low = sep
            if not low * low * (1.0 - 4.0 * unit) > (u * u + 4.0 * err) * (1.0 + 4.0 * unit):
                rows[n] = i
                n += 1
        new_upper[i] = u
        new_lower[i] = low
    return n


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
        upper[i] = np.sqrt(u if u > 0.0 else 0.0) * (1.0 + 4.0 * unit)
        v = s2 + xs - 2.0 * err
        lower[i] = np.sqrt(v if v > 0.0 else 0.0) * (1.0 - 4.0 * unit)
        if s2 - s1 <= 4.0 * err:
            unsure[n] = r
            n += 1
    return n


@numba.njit(cache=True, nogil=True)
def accumulate_labels(x, w, has_w, labels, centroids, prev, has_prev, lo, hi, sums, weights,
                      counts, acc):
    """Fold rows lo .. hi into the running partials from their labels, in row order, each row's
    squared distance to its centroid computed directly (the numpy path, kernels.label_partials
    over kernels.direct_distances, does the same operations in the same order)."""
    inertia = acc[0]
    moved = acc[1]
    for i in range(lo, hi):
        a = labels[i]
        inertia += _fold_row(x, i, a, centroids, w, has_w, sums, weights, counts)
        if has_prev and prev[i] != a:
            moved += 1.0
    acc[0] = inertia
    acc[1] = moved
