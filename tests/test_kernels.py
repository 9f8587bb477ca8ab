"""Unit tests for kmeans_dist.kernels against independent brute-force numpy references.

No Spark here: every function is checked on small in-memory blocks.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from kmeans_dist import kernels

HAVE_NUMBA = kernels.use_numba()
NUMBA_MODES = [
    False,
    pytest.param(True, marks=pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed")),
]


# --------------------------------------------------------------------------- brute-force references


def brute_dist(x, c):
    """(m, k) squared Euclidean distances, computed directly as sum of squared differences."""
    return ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)


def brute_assign(x, c):
    d = brute_dist(x, c)
    lab = np.argmin(d, axis=1)  # argmin returns the first index on ties
    return lab, d[np.arange(x.shape[0]), lab]


def brute_partials(x, w, c, prev_labels=None):
    """Per-cluster sums / weights / counts / inertia / moved by explicit masks."""
    k, d = c.shape
    m = x.shape[0]
    lab, dist = brute_assign(x, c)
    ww = np.ones(m) if w is None else w
    sums = np.zeros((k, d))
    weights = np.zeros(k)
    counts = np.zeros(k, dtype=np.int64)
    for j in range(k):
        mask = lab == j
        sums[j] = (x[mask] * ww[mask, None]).sum(axis=0)
        weights[j] = ww[mask].sum()
        counts[j] = mask.sum()
    inertia = float((dist * ww).sum())
    moved = m if prev_labels is None else int((lab != prev_labels).sum())
    return sums, weights, counts, inertia, moved, lab


def make_data(rng, m, d, k, *, spread=3.0):
    """Clustered-ish data so every cluster is likely non-empty, plus centroids."""
    centers = rng.normal(scale=spread, size=(k, d))
    x = centers[rng.integers(0, k, size=m)] + rng.normal(size=(m, d))
    c = rng.normal(scale=spread, size=(k, d))
    return np.ascontiguousarray(x), np.ascontiguousarray(c)


@pytest.fixture
def small_chunks(monkeypatch):
    """Make CHUNK_ROWS tiny so chunking (and carries across chunks) is exercised cheaply."""
    monkeypatch.setattr(kernels, "CHUNK_ROWS", 7)
    return 7


# --------------------------------------------------------------------------- norms


def test_squared_norms_matches_brute_force():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(53, 6))
    expected = np.array([sum(v * v for v in row) for row in x])
    got = kernels.squared_norms(x)
    assert got.shape == (53,)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)


def test_squared_norms_exact_on_integers():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [-1.0, 2.0]])
    assert np.array_equal(kernels.squared_norms(x), np.array([25.0, 0.0, 5.0]))


def test_normalize_rows_unit_norm_and_direction():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 5)) * rng.uniform(0.01, 100, size=(40, 1))
    y = kernels.normalize_rows(x)
    np.testing.assert_allclose(np.sqrt((y**2).sum(1)), 1.0, rtol=1e-12)
    # same direction: y == x / ||x||
    np.testing.assert_allclose(y, x / np.linalg.norm(x, axis=1, keepdims=True), rtol=1e-12)
    # input not modified
    assert not np.shares_memory(x, y)


def test_normalize_rows_zero_rows_stay_zero():
    x = np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 4.0], [0.0, 0.0, 0.0]])
    y = kernels.normalize_rows(x)
    assert np.all(np.isfinite(y))
    assert np.array_equal(y[0], np.zeros(3))
    assert np.array_equal(y[2], np.zeros(3))
    np.testing.assert_allclose(y[1], [0.6, 0.0, 0.8], rtol=1e-15)


# --------------------------------------------------------------------------- assign


@pytest.mark.parametrize(
    "m,d,k",
    [(1, 1, 1), (10, 2, 3), (37, 5, 4), (100, 3, 17), (64, 16, 8), (250, 7, 1)],
)
@pytest.mark.parametrize("chunk", [None, 7, 64])
def test_assign_matches_brute_force(monkeypatch, m, d, k, chunk):
    if chunk is not None:
        monkeypatch.setattr(kernels, "CHUNK_ROWS", chunk)
    rng = np.random.default_rng(m * 1000 + d * 10 + k)
    x, c = make_data(rng, m, d, k)
    labels, dist = kernels.assign(x, kernels.squared_norms(x), c)
    exp_lab, exp_dist = brute_assign(x, c)
    assert labels.shape == (m,) and dist.shape == (m,)
    assert np.array_equal(labels, exp_lab)
    np.testing.assert_allclose(dist, exp_dist, rtol=1e-9, atol=1e-9)
    assert np.all(dist >= 0)


def test_assign_default_chunk_rows_larger_than_block():
    """m > default CHUNK_ROWS (and not a multiple of it) without monkeypatching."""
    rng = np.random.default_rng(7)
    m = kernels.CHUNK_ROWS + 123
    x, c = make_data(rng, m, 3, 5)
    labels, dist = kernels.assign(x, kernels.squared_norms(x), c)
    exp_lab, exp_dist = brute_assign(x, c)
    assert np.array_equal(labels, exp_lab)
    np.testing.assert_allclose(dist, exp_dist, rtol=1e-9, atol=1e-9)


def test_assign_accepts_precomputed_c_sq(small_chunks):
    rng = np.random.default_rng(3)
    x, c = make_data(rng, 30, 4, 6)
    x_sq = kernels.squared_norms(x)
    a = kernels.assign(x, x_sq, c)
    b = kernels.assign(x, x_sq, c, kernels.squared_norms(c))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_assign_rows_equal_to_centroid_give_zero_distance_exact_integers(small_chunks):
    # Small integers: every product and sum is exact, so the distance must be exactly 0.
    c = np.array([[1.0, 2.0, 3.0], [-4.0, 0.0, 5.0], [7.0, -8.0, 1.0]])
    x = np.ascontiguousarray(np.repeat(c, 5, axis=0)[::-1])  # 15 rows, over 3 chunks
    labels, dist = kernels.assign(x, kernels.squared_norms(x), c)
    assert np.array_equal(labels, np.repeat([2, 1, 0], 5))
    assert np.array_equal(dist, np.zeros(15))


def test_assign_distances_never_negative(small_chunks):
    # Rows equal to (random, large-norm) centroids: the expansion ||x||^2 - 2x.c + ||c||^2
    # cancels catastrophically and may round below zero; the result must be clamped.
    rng = np.random.default_rng(11)
    c = rng.normal(loc=1e3, scale=1.0, size=(6, 9))
    x = np.ascontiguousarray(np.tile(c, (8, 1)))
    labels, dist = kernels.assign(x, kernels.squared_norms(x), c)
    assert np.all(dist >= 0)
    # still ~0 relative to the magnitude of ||x||^2 (~1e7)
    assert np.all(dist <= 1e-8 * kernels.squared_norms(x))
    assert np.array_equal(labels, np.tile(np.arange(6), 8))


def test_assign_duplicate_centroids_lowest_index_wins(small_chunks):
    rng = np.random.default_rng(5)
    d = 11
    base = rng.normal(size=(5, d))
    # k = 20: duplicates of each base centroid at widely separated column positions
    order = [0, 1, 2, 3, 4, 3, 0, 4, 1, 2, 2, 4, 0, 1, 3, 1, 0, 2, 4, 3]
    c = np.ascontiguousarray(base[order])
    first_pos = {b: order.index(b) for b in range(5)}
    x = np.ascontiguousarray(base[rng.integers(0, 5, size=60)] + 0.1 * rng.normal(size=(60, d)))
    labels, dist = kernels.assign(x, kernels.squared_norms(x), c)
    nearest_base, _ = brute_assign(x, base)
    assert np.array_equal(labels, [first_pos[b] for b in nearest_base])
    exp_lab, exp_dist = brute_assign(x, c)
    assert np.array_equal(labels, exp_lab)
    np.testing.assert_allclose(dist, exp_dist, rtol=1e-9, atol=1e-9)


def test_assign_exact_equidistant_tie_lowest_index_wins():
    # x = 0, centroids at +1 and -1: exactly equidistant.
    x = np.zeros((1, 1))
    for c, expected in [
        (np.array([[1.0], [-1.0]]), 0),
        (np.array([[-1.0], [1.0]]), 0),
        (np.array([[5.0], [1.0], [-1.0]]), 1),
        (np.array([[5.0], [-1.0], [3.0], [1.0]]), 1),
    ]:
        labels, dist = kernels.assign(x, kernels.squared_norms(x), c)
        assert labels[0] == expected
        assert dist[0] == 1.0
    # non-zero row: x = (1, 1), centroids (0, 1), (3, 1) [dist 1 and 4], (2, 1) [dist 1]
    x = np.array([[1.0, 1.0], [2.0, -3.0]])
    c = np.array([[3.0, 1.0], [2.0, 1.0], [0.0, 1.0], [2.0, -1.0], [2.0, -5.0]])
    labels, dist = kernels.assign(x, kernels.squared_norms(x), c)
    # row 0: ties between index 1 and 2 (dist 1) -> 1; row 1: ties 3 and 4 (dist 4) -> 3
    assert labels.tolist() == [1, 3]
    assert dist.tolist() == [1.0, 4.0]


# --------------------------------------------------------------------------- block_partials


def _check_partials_vs_brute(p, labels, x, w, c, prev):
    sums, weights, counts, inertia, moved, lab = brute_partials(x, w, c, prev)
    assert np.array_equal(labels, lab)
    assert p.sums.shape == sums.shape
    np.testing.assert_allclose(p.sums, sums, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(p.weights, weights, rtol=1e-9, atol=1e-12)
    assert p.counts.dtype == np.int64
    assert np.array_equal(p.counts, counts)
    assert p.inertia == pytest.approx(inertia, rel=1e-9)
    assert isinstance(p.moved, int) and p.moved == moved


@pytest.mark.parametrize("numba", NUMBA_MODES)
@pytest.mark.parametrize("weighted", ["none", "random", "with_zeros"])
@pytest.mark.parametrize("m,d,k", [(1, 2, 1), (23, 3, 4), (100, 5, 7), (64, 2, 3), (300, 4, 40)])
def test_block_partials_matches_brute_force(small_chunks, numba, weighted, m, d, k):
    rng = np.random.default_rng(m + 31 * d + 997 * k)
    x, c = make_data(rng, m, d, k)
    x_sq = kernels.squared_norms(x)
    if weighted == "none":
        w = None
    else:
        w = rng.uniform(0.1, 5.0, size=m)
        if weighted == "with_zeros":
            w[rng.random(m) < 0.4] = 0.0
            w[0] = 0.0
    p, labels = kernels.block_partials(x, x_sq, w, c, None, numba=numba)
    _check_partials_vs_brute(p, labels, x, w, c, None)
    assert p.moved == m

    prev = rng.integers(0, k, size=m).astype(np.int32)
    p2, labels2 = kernels.block_partials(x, x_sq, w, c, prev, numba=numba)
    _check_partials_vs_brute(p2, labels2, x, w, c, prev)
    assert p2.moved == int(np.count_nonzero(labels2 != prev))

    # prev equal to the current labels: nothing moved
    p3, _ = kernels.block_partials(x, x_sq, w, c, labels.copy(), numba=numba)
    assert p3.moved == 0


@pytest.mark.parametrize("numba", NUMBA_MODES)
@pytest.mark.parametrize("weighted", [False, True])
def test_block_partials_float32_gemm_with_float64_sums(small_chunks, numba, weighted):
    """float32 rows: the GEMM runs in float32 against the centroids rounded to float32, so a
    label is the exact nearest of those rounded centroids wherever the best two exact distances
    are more than twice the GEMM's error bound apart (Higham's, with float32's unit roundoff:
    ``pruning.score_error``), and within that bound of the nearest elsewhere. Squared norms,
    sums, weights and inertia are float64: the sums are the float64 sums of the float32 values
    (to float64 rounding, 1e-12), the inertia within the summed per-row score bounds."""
    from kmeans_dist import pruning

    rng = np.random.default_rng(5 + weighted)
    m, k = 600, 9
    x, c = make_data(rng, m, 6, k, spread=1.0)  # overlapping: near-ties happen
    x32 = np.ascontiguousarray(x.astype(np.float32))
    x_sq = kernels.squared_norms(x32)
    assert x_sq.dtype == np.float64
    w = rng.uniform(0.1, 5.0, size=m) if weighted else None
    p, labels = kernels.block_partials(x32, x_sq, w, c, None, numba=numba)
    x64, c32 = x32.astype(np.float64), c.astype(np.float32).astype(np.float64)
    dist = brute_dist(x64, c32)
    ordered = np.sort(dist, axis=1)
    err = pruning.score_error(x_sq, c, np.float32)
    clear = ordered[:, 1] - ordered[:, 0] > 2 * err
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(labels[clear], dist.argmin(axis=1)[clear])
    own = dist[np.arange(m), labels]
    assert np.all(own <= ordered[:, 0] + 2 * err)
    ww = np.ones(m) if w is None else w
    sums = np.stack([(x64[labels == j] * ww[labels == j, None]).sum(axis=0) for j in range(k)])
    np.testing.assert_allclose(p.sums, sums, rtol=1e-12, atol=1e-12 * np.abs(sums).max())
    assert p.sums.dtype == p.weights.dtype == np.float64
    np.testing.assert_allclose(p.weights, np.bincount(labels, ww, k), rtol=1e-12)
    assert abs(p.inertia - float((own * ww).sum())) <= float((err * ww).sum())


def test_float32_centroids_as_the_gemm_sees_them():
    c = np.array([[1.0 + 2.0**-30, 0.1], [3.0, -7.25]])
    assert kernels.gemm_centroids(c) is c
    got = kernels.gemm_centroids(c, np.float32)
    assert got.dtype == np.float64
    assert np.array_equal(got, c.astype(np.float32).astype(np.float64))
    # scores of 4 bytes: twice the rows in the same cache-sized score matrix
    assert kernels.chunk_rows(16, 4) == 2 * kernels.chunk_rows(16, 8) == 4096


@pytest.mark.parametrize("numba", NUMBA_MODES)
def test_block_partials_zero_weights_contribute_nothing(numba):
    # Cluster 1 only receives zero-weight rows: weight 0, sums 0, but it is still counted.
    x = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 10.0], [11.0, 10.0], [0.0, 1.0]])
    c = np.array([[0.0, 0.0], [10.0, 10.0]])
    w = np.array([1.0, 2.0, 0.0, 0.0, 3.0])
    p, labels = kernels.block_partials(x, kernels.squared_norms(x), w, c, numba=numba)
    assert labels.tolist() == [0, 0, 1, 1, 0]
    assert p.counts.tolist() == [3, 2]
    assert p.weights.tolist() == [6.0, 0.0]
    assert p.sums.tolist() == [[2.0, 3.0], [0.0, 0.0]]
    # inertia: 1*0 + 2*1 + 0*0 + 0*1 + 3*1
    assert p.inertia == 5.0
    assert p.moved == 5


@pytest.mark.parametrize("numba", NUMBA_MODES)
def test_block_partials_exact_ties_lowest_index_wins(numba, small_chunks):
    # Small integers: all scores are exact, so the ties below are exact ties.
    # centroids: 0:(1,0) 1:(-1,0) 2:(1,0) duplicate of 0, 3:(0,5)
    c = np.array([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [0.0, 5.0]])
    x = np.array(
        [
            [0.0, 0.0],  # equidistant (1) to 0, 1, 2 -> 0
            [2.0, 0.0],  # nearest 0 == 2 (duplicates) -> 0
            [-2.0, 0.0],  # nearest 1
            [0.0, 5.0],  # exactly on 3
            [0.0, 2.0],  # d: 5, 5, 5, 9 -> 0
            [1.0, 0.0],  # exactly on 0 / 2 -> 0
        ]
        * 3  # 18 rows, over 3 chunks of 7
    )
    p, labels = kernels.block_partials(x, kernels.squared_norms(x), None, c, numba=numba)
    assert labels.tolist() == [0, 0, 1, 3, 0, 0] * 3
    assert p.counts.tolist() == [12, 3, 0, 3]
    assert p.weights.tolist() == [12.0, 3.0, 0.0, 3.0]
    assert p.sums.tolist() == [[9.0, 6.0], [-6.0, 0.0], [0.0, 0.0], [0.0, 15.0]]
    assert p.inertia == 3 * (1.0 + 1.0 + 1.0 + 0.0 + 5.0 + 0.0)


@pytest.mark.parametrize("numba", NUMBA_MODES)
@pytest.mark.parametrize("numpy_argmin", [False, True], ids=["loop-argmin", "numpy-argmin"])
def test_block_partials_duplicate_centroids_random(numba, numpy_argmin, small_chunks, monkeypatch):
    """Ties go to the lowest index whether the fused loop finds the nearest centroid itself or
    takes numpy's argmin (its path for many centroids)."""
    monkeypatch.setattr(kernels, "NUMPY_ARGMIN_K", 0 if numpy_argmin else 10**9)
    rng = np.random.default_rng(21)
    base = rng.normal(size=(4, 9))
    order = [2, 0, 1, 0, 3, 2, 1, 3, 0, 2, 1, 3]
    c = np.ascontiguousarray(base[order])
    first_pos = {b: order.index(b) for b in range(4)}
    x = np.ascontiguousarray(base[rng.integers(0, 4, size=50)] + 0.05 * rng.normal(size=(50, 9)))
    x[::5] = base[rng.integers(0, 4, size=10)]  # some rows exactly on a (duplicated) centroid
    p, labels = kernels.block_partials(x, kernels.squared_norms(x), None, c, numba=numba)
    nearest_base, _ = brute_assign(x, base)
    assert labels.tolist() == [first_pos[b] for b in nearest_base]
    _check_partials_vs_brute(p, labels, x, None, c, None)
    assert np.all(p.counts[[i for i in range(12) if i not in first_pos.values()]] == 0)


@pytest.mark.parametrize("numba", NUMBA_MODES)
def test_block_partials_prev_labels_int64(numba, small_chunks):
    rng = np.random.default_rng(99)
    x, c = make_data(rng, 30, 3, 4)
    prev = rng.integers(0, 4, size=30)  # int64
    p, labels = kernels.block_partials(x, kernels.squared_norms(x), None, c, prev, numba=numba)
    assert p.moved == int(np.count_nonzero(brute_assign(x, c)[0] != prev))


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("weighted", ["none", "random", "with_zeros"])
@pytest.mark.parametrize("with_prev", [False, True])
@pytest.mark.parametrize("m,d,k",
                         [(50, 3, 5), (113, 8, 9), (7, 2, 2), (200, 1, 4), (300, 4, 40)])
def test_block_partials_numba_and_numpy_bit_identical(small_chunks, weighted, with_prev, m, d, k,
                                                      dtype):
    rng = np.random.default_rng(m * 7 + d * 3 + k)
    # wide dynamic range so any difference in accumulation order would show in the last bits
    x, c = make_data(rng, m, d, k)
    x = np.ascontiguousarray((x * rng.uniform(1e-3, 1e3, size=(m, 1))).astype(dtype))
    c = np.ascontiguousarray(c * 10.0)
    x_sq = kernels.squared_norms(x)
    if weighted == "none":
        w = None
    else:
        w = rng.uniform(0.0, 3.0, size=m) * rng.uniform(1e-3, 1e3, size=m)
        if weighted == "with_zeros":
            w[rng.random(m) < 0.3] = 0.0
    prev = rng.integers(0, k, size=m).astype(np.int32) if with_prev else None
    pa, la = kernels.block_partials(x, x_sq, w, c, prev, numba=False)
    pb, lb = kernels.block_partials(x, x_sq, w, c, prev, numba=True)
    assert np.array_equal(la, lb)
    assert la.dtype == lb.dtype
    assert np.array_equal(pa.sums, pb.sums)
    assert np.array_equal(pa.weights, pb.weights)
    assert np.array_equal(pa.counts, pb.counts)
    assert pa.counts.dtype == pb.counts.dtype == np.int64
    assert pa.inertia == pb.inertia
    assert pa.moved == pb.moved
    assert type(pa.inertia) is type(pb.inertia) is float
    assert type(pa.moved) is type(pb.moved) is int


def test_block_partials_is_deterministic(small_chunks):
    rng = np.random.default_rng(17)
    x, c = make_data(rng, 90, 4, 6)
    x_sq = kernels.squared_norms(x)
    w = rng.uniform(size=90)
    for numba in [False] + ([True] if HAVE_NUMBA else []):
        a, la = kernels.block_partials(x, x_sq, w, c, numba=numba)
        b, lb = kernels.block_partials(x, x_sq, w, c, numba=numba)
        assert np.array_equal(a.sums, b.sums) and a.inertia == b.inertia
        assert np.array_equal(la, lb)


def test_use_numba_flag():
    assert kernels.use_numba(False) is False
    assert kernels.use_numba(True) is HAVE_NUMBA
    assert kernels.use_numba(None) is HAVE_NUMBA


def test_numba_is_available_here():
    # numba is a dependency: a failed import must fail here, not skip the fused path's tests
    import numba  # noqa: F401

    assert HAVE_NUMBA


# --------------------------------------------------------------------------- Partials / fold


def _rand_partials(rng, k, d):
    return kernels.Partials(
        rng.normal(size=(k, d)),
        rng.uniform(size=k),
        rng.integers(0, 100, size=k).astype(np.int64),
        float(rng.uniform(0, 10)),
        int(rng.integers(0, 50)),
    )


def test_partials_zeros():
    z = kernels.Partials.zeros(4, 3)
    assert z.sums.shape == (4, 3) and z.sums.dtype == np.float64 and not z.sums.any()
    assert z.weights.shape == (4,) and z.weights.dtype == np.float64 and not z.weights.any()
    assert z.counts.shape == (4,) and z.counts.dtype == np.int64 and not z.counts.any()
    assert z.inertia == 0.0 and z.moved == 0
    # zeros is an identity for add
    rng = np.random.default_rng(0)
    p = _rand_partials(rng, 4, 3)
    q = z.add(p)
    assert np.array_equal(q.sums, p.sums) and np.array_equal(q.weights, p.weights)
    assert np.array_equal(q.counts, p.counts) and q.inertia == p.inertia and q.moved == p.moved


def test_partials_add_elementwise_and_pure():
    rng = np.random.default_rng(1)
    a, b = _rand_partials(rng, 3, 2), _rand_partials(rng, 3, 2)
    a_sums = a.sums.copy()
    s = a.add(b)
    assert np.array_equal(s.sums, a.sums + b.sums)
    assert np.array_equal(s.weights, a.weights + b.weights)
    assert np.array_equal(s.counts, a.counts + b.counts)
    assert s.counts.dtype == np.int64
    assert s.inertia == a.inertia + b.inertia
    assert s.moved == a.moved + b.moved
    assert np.array_equal(a.sums, a_sums)  # operands untouched


def test_fold_is_left_fold_in_order():
    rng = np.random.default_rng(2)
    parts = [_rand_partials(rng, 3, 2) for _ in range(6)]
    # make the order observable in floating point
    parts[0].inertia, parts[1].inertia, parts[2].inertia = 1e16, 1.0, -1e16
    parts[0].sums[0, 0], parts[1].sums[0, 0], parts[2].sums[0, 0] = 1e16, 1.0, -1e16
    total = kernels.fold(parts)
    exp_sums = parts[0].sums
    exp_inertia = parts[0].inertia
    exp_w, exp_c, exp_m = parts[0].weights, parts[0].counts, parts[0].moved
    for p in parts[1:]:
        exp_sums = exp_sums + p.sums
        exp_inertia = exp_inertia + p.inertia
        exp_w, exp_c, exp_m = exp_w + p.weights, exp_c + p.counts, exp_m + p.moved
    assert np.array_equal(total.sums, exp_sums)
    assert total.inertia == exp_inertia
    assert np.array_equal(total.weights, exp_w)
    assert np.array_equal(total.counts, exp_c)
    assert total.moved == exp_m
    # ((1e16 + 1) - 1e16) + ... : the 1.0 is absorbed, so a right fold would differ
    right = parts[-1]
    for p in reversed(parts[:-1]):
        right = p.add(right)
    assert right.inertia != total.inertia


def test_fold_single():
    p = _rand_partials(np.random.default_rng(3), 2, 2)
    t = kernels.fold([p])
    assert np.array_equal(t.sums, p.sums) and t.inertia == p.inertia and t.moved == p.moved


def test_fold_of_block_partials_equals_whole_block_counts(small_chunks):
    rng = np.random.default_rng(4)
    x, c = make_data(rng, 60, 3, 4)
    w = rng.uniform(size=60)
    blocks = [(0, 13), (13, 40), (40, 60)]
    parts = [
        kernels.block_partials(
            x[a:b], kernels.squared_norms(x[a:b]), w[a:b], c, numba=False
        )[0]
        for a, b in blocks
    ]
    total = kernels.fold(parts)
    sums, weights, counts, inertia, moved, _ = brute_partials(x, w, c)
    assert np.array_equal(total.counts, counts)
    np.testing.assert_allclose(total.sums, sums, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(total.weights, weights, rtol=1e-9)
    assert total.inertia == pytest.approx(inertia, rel=1e-9)
    assert total.moved == 60


# --------------------------------------------------------------------------- sequential_sum


def _loop_sum(values):
    s = 0.0
    for v in values:
        s = s + float(v)
    return s


def test_sequential_sum_small_cancellation():
    v = np.array([1e16, 1.0, -1e16, 1.0])
    assert kernels.sequential_sum(v) == _loop_sum(v) == 1.0


def test_sequential_sum_equals_python_loop_where_pairwise_differs():
    rng = np.random.default_rng(8)
    found_difference = False
    for trial in range(20):
        n = int(rng.integers(50, 3000))
        v = rng.normal(size=n) * 10.0 ** rng.integers(-8, 17, size=n)
        expected = _loop_sum(v)
        got = kernels.sequential_sum(v)
        assert isinstance(got, float)
        assert got == expected
        found_difference |= float(np.sum(v)) != expected
    assert found_difference  # the test data actually distinguishes sequential from pairwise


def test_sequential_sum_repeated_pattern():
    v = np.tile([1e16, 1.0, -1e16, 1.0, 3.0, 1e-3, -2.0, 7.5], 64)
    assert kernels.sequential_sum(v) == _loop_sum(v)


def test_sequential_sum_empty_and_single():
    assert kernels.sequential_sum(np.array([])) == 0.0
    assert kernels.sequential_sum(np.array([2.5])) == 2.5
    assert kernels.sequential_sum(np.array([-0.0, 3.25, 1e-300])) == _loop_sum([-0.0, 3.25, 1e-300])


# --------------------------------------------------------------------------- farthest


def test_farthest_matches_brute_force():
    rng = np.random.default_rng(12)
    x, c = make_data(rng, 80, 4, 5)
    labels = rng.integers(0, 5, size=80)
    dist = ((x - c[labels]) ** 2).sum(1)
    for n in [0, 1, 5, 80]:
        idx, dd = kernels.farthest(x, c, labels, n)
        expected = sorted(range(80), key=lambda i: (-dist[i], i))[:n]
        assert idx.tolist() == expected
        np.testing.assert_allclose(dd, dist[expected], rtol=1e-12, atol=0)
        assert np.all(np.diff(dd) <= 0)


def test_farthest_ties_by_content_and_clipping():
    c = np.array([[0.0, 0.0], [10.0, 0.0]])
    x = np.array(
        [
            [1.0, 0.0],  # 0: d 1 (c0)
            [0.0, 2.0],  # 1: d 4 (c0)
            [10.0, 0.0],  # 2: d 0 (c1)
            [12.0, 0.0],  # 3: d 4 (c1)
            [0.0, -2.0],  # 4: d 4 (c0)
            [9.0, 0.0],  # 5: d 1 (c1)
            [3.0, 0.0],  # 6: d 9 (c0)
        ]
    )
    labels = np.array([0, 0, 1, 1, 0, 1, 0])
    # ties go by the rows' bit patterns, column by column: [0, 2] < [0, -2] < [12, 0]
    idx, dd = kernels.farthest(x, c, labels, 4)
    assert idx.tolist() == [6, 1, 4, 3]
    assert dd.tolist() == [9.0, 4.0, 4.0, 4.0]
    assert kernels.farthest(x[::-1], c, labels[::-1], 4)[0].tolist() == [0, 5, 2, 3]  # same rows
    idx, dd = kernels.farthest(x, c, labels, 100)  # n > m is clipped
    assert idx.tolist() == [6, 1, 4, 3, 0, 5, 2]
    assert dd.tolist() == [9.0, 4.0, 4.0, 4.0, 1.0, 1.0, 0.0]


def test_farthest_all_equal_distances():
    x = np.zeros((5, 2))
    c = np.array([[1.0, 0.0]])
    idx, dd = kernels.farthest(x, c, np.zeros(5, dtype=np.int32), 3)
    assert idx.tolist() == [0, 1, 2]
    assert dd.tolist() == [1.0, 1.0, 1.0]


# --------------------------------------------------------------------------- update_centroids


def test_update_centroids_weighted_means_and_empty_clusters():
    rng = np.random.default_rng(13)
    k, d = 5, 3
    old = rng.normal(size=(k, d))
    weights = np.array([2.0, 0.0, 0.5, 0.0, 4.0])
    sums = rng.normal(size=(k, d))
    sums[1] = 0.0
    sums[3] = 0.0
    total = kernels.Partials(sums, weights, np.array([3, 0, 1, 2, 7], dtype=np.int64), 1.0, 0)
    old_copy = old.copy()
    new, empty = kernels.update_centroids(total, old)
    assert empty.dtype == bool
    assert empty.tolist() == [False, True, False, True, False]
    for j in [0, 2, 4]:
        np.testing.assert_allclose(new[j], sums[j] / weights[j], rtol=1e-15)
    assert np.array_equal(new[1], old[1]) and np.array_equal(new[3], old[3])
    assert np.array_equal(old, old_copy)  # old not modified
    assert np.all(np.isfinite(new))


def test_update_centroids_from_block_partials_equals_brute_means():
    rng = np.random.default_rng(14)
    x, c = make_data(rng, 120, 3, 4)
    w = rng.uniform(0.5, 2.0, size=120)
    p, labels = kernels.block_partials(x, kernels.squared_norms(x), w, c, numba=False)
    new, empty = kernels.update_centroids(p, c)
    for j in range(4):
        mask = labels == j
        if mask.any():
            assert not empty[j]
            expected = (x[mask] * w[mask, None]).sum(0) / w[mask].sum()
            np.testing.assert_allclose(new[j], expected, rtol=1e-9, atol=1e-12)
        else:
            assert empty[j]
            assert np.array_equal(new[j], c[j])


# --------------------------------------------------------------------------- center_shift / min_distances


def test_center_shift():
    rng = np.random.default_rng(15)
    a, b = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    expected = sum(float(((a[i] - b[i]) ** 2).sum()) for i in range(6))
    got = kernels.center_shift(a, b)
    assert isinstance(got, float)
    assert got == pytest.approx(expected, rel=1e-12)
    assert kernels.center_shift(a, a) == 0.0
    assert kernels.center_shift(np.zeros((2, 2)), np.array([[1.0, 2.0], [0.0, -3.0]])) == 14.0


@pytest.mark.parametrize("m,k", [(1, 1), (40, 3), (101, 12)])
def test_min_distances_matches_brute_force(small_chunks, m, k):
    rng = np.random.default_rng(m + k)
    x, c = make_data(rng, m, 5, k)
    got = kernels.min_distances(x, kernels.squared_norms(x), c)
    expected = brute_dist(x, c).min(axis=1)
    assert got.shape == (m,)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
    assert np.all(got >= 0)


def test_min_distances_zero_for_centers_in_data():
    x = np.array([[1.0, 1.0], [2.0, 3.0], [0.0, 0.0]])
    got = kernels.min_distances(x, kernels.squared_norms(x), x[[1]])
    assert got.tolist() == [5.0, 0.0, 13.0]


# --------------------------------------------------------------------------- row_uniforms


def _seq(first: int, m: int, d: int = 1) -> np.ndarray:
    """m distinct rows of d columns: consecutive integers (plus 0.5 per column)."""
    return np.arange(first, first + m, dtype=np.float64)[:, None] + 0.5 * np.arange(d)


def test_row_uniforms_open_unit_interval_and_dtype():
    u = kernels.row_uniforms(42, 0, _seq(0, 100_000))
    assert u.shape == (100_000,) and u.dtype == np.float64
    assert np.all(u > 0.0) and np.all(u < 1.0)


@pytest.mark.parametrize("a,n", [(0, 10), (1, 1), (17, 100), (999, 1), (500, 500)])
def test_row_uniforms_depend_on_content_not_position(a, n):
    x = _seq(0, 2000, d=3)
    full = kernels.row_uniforms(7, 3, x)
    assert np.array_equal(kernels.row_uniforms(7, 3, x[a : a + n]), full[a : a + n])
    # splitting into arbitrary pieces, or shuffling the rows, gives each row the same value
    cuts = [0, 1, 250, 251, 1337, 2000]
    pieces = [kernels.row_uniforms(7, 3, x[lo:hi]) for lo, hi in zip(cuts, cuts[1:])]
    assert np.array_equal(np.concatenate(pieces), full)
    perm = np.random.default_rng(a).permutation(len(x))
    assert np.array_equal(kernels.row_uniforms(7, 3, x[perm]), full[perm])
    # identical rows get identical values; the weight is part of the row's content
    twice = kernels.row_uniforms(7, 3, x[[a, a]], np.array([2.0, 2.0]))
    assert twice[0] == twice[1] != kernels.row_uniforms(7, 3, x[[a]], np.array([3.0]))[0]


def test_row_uniforms_deterministic_and_seed_stream_sensitive():
    base = kernels.row_uniforms(1, 0, _seq(100, 1000))
    assert np.array_equal(base, kernels.row_uniforms(1, 0, _seq(100, 1000)))
    for other in [
        kernels.row_uniforms(2, 0, _seq(100, 1000)),
        kernels.row_uniforms(1, 1, _seq(100, 1000)),
        kernels.row_uniforms(0, 1, _seq(100, 1000)),  # seed/stream swapped
        kernels.row_uniforms(1, 0, _seq(101, 1000)),  # shifted rows
        kernels.row_uniforms(1, 0, _seq(100, 1000), np.ones(1000)),  # with weights
    ]:
        # essentially no coincident values, and uncorrelated
        assert np.count_nonzero(base == other) == 0
        assert abs(np.corrcoef(base, other)[0, 1]) < 0.15
    assert kernels.row_uniforms(1, 0, np.empty((0, 2))).shape == (0,)


def _splitmix_reference(seed: int, stream: int, row: list[float]) -> float:
    """row_uniforms for one row in plain Python integers (the documented recipe)."""
    mask = (1 << 64) - 1
    mix = _py_splitmix64  # defined below, with the (0, 1) contract tests
    z = mix(mix(seed & mask) ^ (stream & mask))
    for v in row:
        z = mix(z ^ int(np.float64(v).view(np.uint64)))
    return ((z >> 12) + 0.5) / 2.0**52


@pytest.mark.parametrize("fused", [True, False], ids=["numba", "numpy"])
def test_row_uniforms_match_plain_python_splitmix(monkeypatch, fused):
    if fused:
        assert kernels._fused() is not None, "numba is a dependency: its loop must load"
    if not fused:
        monkeypatch.setattr(kernels, "_FUSED", False)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 4)) * 1e3
    x[0] = [0.0, -0.0, np.finfo(float).max, 5e-324]  # signed zero, extremes keep their bits
    w = rng.uniform(0, 5, size=300)
    got = kernels.row_uniforms(11, 2**63 + 1, x, w)
    expected = [_splitmix_reference(11, 2**63 + 1, list(r) + [wi]) for r, wi in zip(x, w)]
    assert got.tolist() == expected


def test_row_uniforms_large_and_negative_seed():
    a = kernels.row_uniforms(2**64 - 1, 2**63 + 5, _seq(0, 1000))
    b = kernels.row_uniforms(-1, 2**63 + 5, _seq(0, 1000))  # -1 & (2^64-1) == 2^64-1
    assert np.array_equal(a, b)
    assert np.all((a > 0) & (a < 1))


def test_row_uniforms_roughly_uniform():
    n = 100_000
    u = kernels.row_uniforms(12345, 2, _seq(10_000, n))
    assert abs(u.mean() - 0.5) < 0.01
    assert abs(u.var() - 1.0 / 12.0) < 0.002
    s = np.sort(u)
    ecdf_hi = np.arange(1, n + 1) / n
    ecdf_lo = np.arange(0, n) / n
    ks = max(np.max(ecdf_hi - s), np.max(s - ecdf_lo))
    assert ks < 0.01
    # neighbouring rows are not correlated (consecutive integer values)
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.02
    # all 10 deciles populated about equally
    counts = np.bincount((u * 10).astype(int), minlength=10)
    assert counts.min() > 0.95 * n / 10 and counts.max() < 1.05 * n / 10


# -- exact (0, 1) contract at the top of the range --------------------------------------------

_MASK64 = (1 << 64) - 1


def _py_splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _unxorshift(y: int, s: int) -> int:
    x = y
    for _ in range(64 // s + 1):
        x = y ^ (x >> s)
    return x


def _py_splitmix64_inverse(y: int) -> int:
    z = _unxorshift(y, 31)
    z = (z * pow(0x94D049BB133111EB, -1, 1 << 64)) & _MASK64
    z = _unxorshift(z, 27)
    z = (z * pow(0xBF58476D1CE4E5B9, -1, 1 << 64)) & _MASK64
    z = _unxorshift(z, 30)
    return (z - 0x9E3779B97F4A7C15) & _MASK64


def _py_fold(key: int, words: list[int]) -> float:
    z = key
    for word in words:
        z = _py_splitmix64(z ^ word)
    return ((z >> 12) + 0.5) / 2.0**52


def test_row_uniforms_matches_reference_splitmix():
    """The generator is the documented splitmix64 fold of the key and the row's 64-bit words
    (checked with Python ints)."""
    seed, stream = 987654321, 77
    key = _py_splitmix64(_py_splitmix64(seed) ^ stream)
    x = np.random.default_rng(5).normal(size=(50, 3))
    w = np.random.default_rng(6).uniform(size=50)
    bits, wbits = x.view(np.uint64).tolist(), w.view(np.uint64).tolist()
    expected = [_py_fold(key, row) for row in bits]
    np.testing.assert_array_equal(kernels.row_uniforms(seed, stream, x), expected)
    expected = [_py_fold(key, row + [wb]) for row, wb in zip(bits, wbits)]
    np.testing.assert_array_equal(kernels.row_uniforms(seed, stream, x, w), expected)
    for v in [0, 1, 2**63, _MASK64, 0xDEADBEEF12345678]:
        assert _py_splitmix64_inverse(_py_splitmix64(v)) == v


@pytest.mark.parametrize("top", [(1 << 64) - 1, ((1 << 53) - 1) << 11, ((1 << 53) - 2) << 11])
def test_row_uniforms_never_one_even_at_largest_hash(top):
    """(0, 1) must hold for every hash value, including the largest ones.

    Pick (seed=0, stream) so that the row [0.0] hashes to ``top``; the splitmix64 mix is a
    bijection, so this is reachable, just with probability ~2^-53 per row on random inputs.
    """
    seed = 0
    want_key = _py_splitmix64_inverse(top)  # row [0.0] (bits 0): z = mix(key ^ 0) = top
    stream = _py_splitmix64(seed) ^ _py_splitmix64_inverse(want_key)
    u = kernels.row_uniforms(seed, stream, np.zeros((1, 1)))  # bits 0
    with np.errstate(over="ignore"):
        assert int(kernels._splitmix64(np.array([0], dtype=np.uint64) ^ np.uint64(want_key))[0]) == top
    assert 0.0 < u[0] < 1.0


def test_row_uniforms_never_zero_at_smallest_hash():
    seed = 3
    want_key = _py_splitmix64_inverse(0)
    stream = _py_splitmix64(seed) ^ _py_splitmix64_inverse(want_key)
    u = kernels.row_uniforms(seed, stream, np.zeros((1, 1)))  # bits 0
    assert 0.0 < u[0] < 1.0
    assert u[0] == 0.5 / 2.0**52


def test_blas_pools_loaded_after_the_first_limit_are_limited_too(monkeypatch):
    """``threads._thread_pools`` looks for the BLAS pools again once modules were imported since
    its last look (an import such as scipy's can load a second OpenBLAS, which a controller made
    before it never limits); with nothing imported it keeps the one it has."""
    from kmeans_dist import threads

    made = []

    class Controller:
        def __init__(self):
            made.append(self)

    monkeypatch.setattr("threadpoolctl.ThreadpoolController", Controller)
    monkeypatch.setattr(threads, "_controller", None)
    first = threads._thread_pools()
    assert threads._thread_pools() is first and len(made) == 1
    monkeypatch.setitem(sys.modules, "kmeans_dist_test_new_extension", object())
    second = threads._thread_pools()
    assert second is not first and len(made) == 2
    assert threads._thread_pools() is second
