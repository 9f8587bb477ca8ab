"""The fused per-chunk loop, compiled by numba (imported by kernels.py when numba is present).

One pass over a chunk's GEMM scores does argmin, inertia, rows moved, per-cluster weighted sums
and counts, reading each row once. It accumulates in the same order and with the same operations
as the numpy path in kernels.py, so both give bit-identical results. Kept in its own module, with
``cache=True``, so executors compile it once per machine, not once per task.
"""

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def accumulate(scores, x, x_sq, w, has_w, prev, has_prev, lo, labels, labelled, sums, weights,
               counts, acc):
    """Fold rows ``lo .. lo + len(scores)`` of the block into the running partials; with
    ``labelled``, their nearest centroids are already in ``labels`` (numpy's SIMD argmin, faster
    than this scalar loop from about 32 centroids on)."""
    m, k = scores.shape
    d = x.shape[1]
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
        dist = best_s + x_sq[i]
        if dist < 0.0:
            dist = 0.0
        counts[best] += 1
        if has_w:
            wi = w[i]
            inertia += dist * wi
            weights[best] += wi
            for j in range(d):
                sums[best, j] += x[i, j] * wi
        else:
            inertia += dist
            for j in range(d):
                sums[best, j] += x[i, j]
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
