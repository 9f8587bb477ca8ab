"""Pruned Lloyd passes (kmeans_dist/pruning.py) against brute force, pass by pass. No Spark.

The reference is ``kernels.block_partials`` (brute force: every distance, tested against
explicit numpy distances in test_kernels.py). A Lloyd run is driven from the same start with
both; in every pass the labels, sums, weights, counts and moved rows must be identical bit for
bit, so both runs see the same centroids in every pass, and so must the inertia (both add each
row's directly computed distance in row order); it is also checked against the exact inertia
(extended precision) to 1e-12 relative (d-term sums over ~1e4 rows: a few hundred units of
rounding), and the numpy and numba paths agree bit for bit. Every test runs on float32 rows too
(the GEMM in float32, the margins with float32's unit roundoff): pruned and brute-force float32
passes must agree as exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

from kmeans_dist import kernels, pruning


def _blobs(m, d, centres, spread, seed):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, d)) * 3
    return np.ascontiguousarray(c[rng.integers(0, centres, m)] + rng.normal(size=(m, d)) * spread)


def _grid(m, d, seed):
    """Small integers: many rows at exactly equal distances from two centroids (exact ties)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4, size=(m, d)).astype(np.float64)


def _far(m, d, seed):
    """Blobs 1e6 from the origin: the GEMM's rounding error is large against the gaps between
    distances, so the margin must keep most rows from being pruned on rounding's word."""
    return _blobs(m, d, 8, 0.5, seed) + 1e6


def _duplicates(m, d, seed):
    """Every row four times, plus one centroid repeated in the start (an exact tie for every
    row of its cluster: brute force takes the first index)."""
    return np.repeat(_blobs(m // 4, d, 6, 1.0, seed), 4, axis=0)


def _swapping(m, d, seed):
    """Two overlapping clouds: rows cross between clusters for many passes."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(m, d))
    x[: m // 2, 0] += 0.3
    return x


CASES = {
    # name: (rows, k, weights?, repeat a start centroid?)
    "overlapping blobs": (lambda: _blobs(6000, 8, 24, 1.0, 1), 12, False, False),
    "well separated": (lambda: _blobs(3000, 4, 5, 0.2, 2), 5, False, False),
    "weighted": (lambda: _blobs(4000, 6, 10, 1.0, 3), 8, True, False),
    "exact ties": (lambda: _grid(3000, 3, 4), 7, False, False),
    "far from the origin": (lambda: _far(3000, 5, 5), 8, False, False),
    "duplicate rows and centroids": (lambda: _duplicates(4000, 3, 6), 6, False, True),
    "rows that keep swapping": (lambda: _swapping(4000, 2, 7), 3, False, False),
    "unit rows (cosine)": (lambda: kernels.normalize_rows(_blobs(3000, 5, 6, 0.8, 8)), 6, False,
                           False),
    "one centroid": (lambda: _blobs(1000, 3, 3, 1.0, 9), 1, False, False),
    "two centroids": (lambda: _blobs(2000, 3, 3, 1.0, 10), 2, False, False),
    # above kernels.NUMPY_ARGMIN_K: the fused loops keep the best two scores in one pass
    "many centroids": (lambda: _blobs(6000, 6, 60, 1.0, 16), 48, True, False),
}


def _start(x, k, repeat, seed=0):
    rng = np.random.default_rng(seed)
    c = x[rng.choice(len(x), k, replace=False)].copy()
    if repeat:
        c[1] = c[0]
    return c


def _exact_inertia(x, w, c, labels):
    diff = x.astype(np.longdouble) - c[labels].astype(np.longdouble)
    dist = (diff * diff).sum(axis=1)
    return float(dist.sum() if w is None else (dist * w).sum())


DTYPES = [np.float64, np.float32]


def _lloyd_both(x, w, c, numba, max_iter=60, exact_inertia=True):
    """Brute-force and pruned passes side by side (in x's dtype); asserts equality in every
    pass. Returns the per-pass computed counts and inertias of the pruned run."""
    x_sq = kernels.squared_norms(x)
    prev = old = bounds = None
    computed, inertias = [], []
    for it in range(max_iter):
        ref, labels = kernels.block_partials(x, x_sq, w, c, prev, numba=numba)
        if bounds is None:
            got, got_labels, bounds = pruning.full_partials(x, x_sq, w, c, prev, numba=numba)
        else:
            got, got_labels, bounds = pruning.pruned_partials(
                x, x_sq, w, pruning.Motion.between(old, c, x.dtype), prev, bounds, numba=numba)
        np.testing.assert_array_equal(got_labels, labels, err_msg=f"pass {it}")
        assert np.array_equal(got.sums, ref.sums), it
        assert np.array_equal(got.weights, ref.weights), it
        assert np.array_equal(got.counts, ref.counts) and got.moved == ref.moved, it
        assert got.inertia == ref.inertia, it
        if exact_inertia:
            assert got.inertia == pytest.approx(_exact_inertia(x, w, c, labels), rel=1e-12)
        computed.append(got.computed)
        inertias.append(got.inertia)
        new, _ = kernels.update_centroids(ref, c)
        prev, old, c = labels, c, new
        if ref.moved == 0:
            break
    return computed, inertias


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CASES))
def test_pruned_passes_keep_brute_forces_labels_and_sums(name, dtype):
    make, k, weighted, repeat = CASES[name]
    x = np.ascontiguousarray(make().astype(dtype))
    w = np.random.default_rng(11).uniform(0.1, 3.0, len(x)) if weighted else None
    c = _start(x, k, repeat)
    computed, inertias = _lloyd_both(x, w, c, numba=True)
    numpy_computed, numpy_inertias = _lloyd_both(x, w, c, numba=False)
    assert inertias == numpy_inertias  # numpy and numba paths: the same bits
    assert computed == numpy_computed  # and the same rows computed
    assert computed[0] == len(x)  # the first pass computes everything
    assert len(computed) >= (2 if k == 1 else 3), "a case must run a few passes to test anything"
    if name in ("overlapping blobs", "well separated", "weighted", "one centroid"):
        # where the bounds can work, they do: the last passes computed few rows
        assert computed[-1] < 0.2 * len(x), computed


@pytest.mark.parametrize("numba", [True, False])
@pytest.mark.parametrize("dtype,scale", [(np.float32, 5e-23), (np.float64, 1e-160)])
def test_rows_so_near_the_origin_that_products_underflow(dtype, scale, numba):
    """Products of coordinates below the smallest normal number underflow, each off by up to
    half the smallest subnormal, which Higham's relative bound does not cover: the margins
    must, or a pruned row keeps a centroid brute force changes (without them, 2 rows did in a
    pass at both scales). Labels and sums stay brute force's in every pass. float32 rows still
    prune; float64 rows this small have distances below what the float32 bounds can hold (they
    round to 0 and the smallest subnormal), so every row is computed, as it must be. The
    inertia, itself made of underflowing squares, is not checked against extended precision."""
    x = np.ascontiguousarray((_blobs(6000, 8, 24, 1.0, 1) * scale).astype(dtype))
    c = _start(x, 12, False).astype(np.float64)
    computed, _ = _lloyd_both(x, None, c, numba=numba, exact_inertia=False)
    assert len(computed) > 10, computed
    if dtype == np.float32:
        assert min(computed[1:]) < len(x), computed


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_block_whose_first_stretch_goes_dense_is_scored_whole(monkeypatch, dtype):
    """One brute-force chunk in the first stretch and two in each later one, so a block has many:
    a pass settles the first one; when most of its rows are unsettled the whole block is scored
    as brute force scores it, else every stretch is settled in turn. Labels, sums and inertia
    stay brute force's either way (``_lloyd_both`` asserts them), numba and numpy alike."""
    monkeypatch.setattr(pruning, "STRETCH_CHUNKS", 1)
    monkeypatch.setattr(pruning, "SETTLE_CHUNKS", 2)
    settled = []  # one entry per stretch settled
    settle = pruning._settle
    monkeypatch.setattr(pruning, "_settle",
                        lambda *a, **kw: settled.append(1) or settle(*a, **kw))
    x = np.ascontiguousarray(_blobs(40000, 8, 24, 1.0, 1).astype(dtype))
    k = 12
    step = kernels.chunk_rows(k, x.dtype.itemsize)
    assert len(x) > 4 * step
    c = _start(x, k, False)
    computed, _ = _lloyd_both(x, None, c, numba=True)
    dense = [n for n in computed[1:] if n == len(x)]
    sparse = [n for n in computed[1:] if n < len(x)]
    assert dense and min(sparse) < len(x) / 10, computed
    # a dense pass settled its first stretch only, a sparse one every stretch
    stretches = 1 + -(-(len(x) - step) // (2 * step))
    assert len(settled) == len(dense) + len(sparse) * stretches
    settled.clear()
    numpy_computed, _ = _lloyd_both(x, None, c, numba=False)
    assert numpy_computed == computed


@pytest.mark.parametrize("numba", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
def test_clusters_no_row_joined_or_left_are_not_read(numba, weighted):
    """A pass's partials from the previous pass's per-cluster ones: a cluster no row joined or
    left keeps its sums, weight and count; if its centroid is also unchanged, its inertia too,
    and its rows are not read at all (here they are NaN: read, they would spoil the result).
    The result is brute force's over the true rows, bit for bit."""
    rng = np.random.default_rng(5)
    k, d, m = 6, 4, 3000
    x = rng.normal(size=(m, d))
    w = rng.uniform(0.5, 2.0, m) if weighted else None
    old_c = rng.normal(size=(k, d))
    old = rng.integers(0, k, m).astype(np.int32)
    kept = pruning.Clusters(*kernels.cluster_partials(x, w, old, kernels.direct_distances(
        x, old_c[old]), k))
    labels = old.copy()
    movers = np.flatnonzero(old == 0)[:5]
    labels[movers] = 1  # clusters 0 and 1 change members
    c = old_c.copy()
    c[2] += 0.25  # cluster 2 keeps its members, its centroid moves: its inertia is recomputed
    ref = kernels.label_partials(x, w, labels, kernels.direct_distances(x, c[labels]), k, old)
    unread = np.isin(labels, [3, 4, 5])
    hidden = x.copy()
    hidden[unread] = np.nan
    fused = kernels._fused() if numba else None
    unmoved = pruning.Motion.between(old_c, c).unmoved
    assert unmoved.tolist() == [True, True, False, True, True, True]
    got, again = pruning._fold_changes(hidden, w, c, unmoved, labels, old, kept, fused)
    assert np.array_equal(got.sums, ref.sums) and np.array_equal(got.weights, ref.weights)
    assert np.array_equal(got.counts, ref.counts) and got.moved == ref.moved == 5
    assert got.inertia == ref.inertia
    assert np.array_equal(again.inertia, kernels.cluster_partials(
        x, w, labels, kernels.direct_distances(x, c[labels]), k)[3])


@pytest.mark.parametrize("dtype", DTYPES)
def test_bounds_hold_for_the_exact_distances(dtype):
    """After every pass, upper >= each row's distance to its centroid and lower <= its distance
    to every other centroid, both computed in extended precision (float32: to the centroids
    rounded to float32, which the GEMM compares)."""
    x = np.ascontiguousarray(_blobs(2000, 4, 10, 1.0, 12).astype(dtype))
    x_sq = kernels.squared_norms(x)
    c = _start(x, 9, False)
    prev = old = bounds = None
    xl = x.astype(np.longdouble)
    for it in range(15):
        if bounds is None:
            part, labels, bounds = pruning.full_partials(x, x_sq, None, c, prev)
        else:
            part, labels, bounds = pruning.pruned_partials(
                x, x_sq, None, pruning.Motion.between(old, c, dtype), prev, bounds)
        seen = c.astype(dtype).astype(np.longdouble)
        exact = np.sqrt(((xl[:, None, :] - seen[None]) ** 2).sum(-1))
        own = exact[np.arange(len(x)), labels]
        exact[np.arange(len(x)), labels] = np.inf
        assert np.all(bounds.upper >= own), it
        assert np.all(bounds.lower <= exact.min(axis=1)), it
        new, _ = kernels.update_centroids(part, c)
        prev, old, c = labels, c, new


@pytest.mark.parametrize("case", ["blobs", "duplicates", "a rounding apart", "far from the origin",
                                  "one centroid"])
def test_half_separations_are_those_of_the_nearest_centroid(case):
    """Each centroid's half distance to its nearest other one, against every pair's distance in
    extended precision: within 1e-15 relative (a few roundings of a d-term sum). The GEMM that
    rules pairs out must keep the nearest one even where its error dwarfs the gaps (1e6 from
    the origin: about 1e-2 against squared gaps of 1e-4; a rounding apart)."""
    rng = np.random.default_rng(21)
    c = {"blobs": rng.normal(size=(64, 8)) * 3,
         "duplicates": np.repeat(rng.normal(size=(10, 5)), 3, axis=0),
         "a rounding apart": np.vstack([np.ones((2, 6)), rng.normal(size=(8, 6))])
         + np.r_[0, 2.0**-50, [0] * 8][:, None],
         "far from the origin": 1e6 + 1e-2 * rng.normal(size=(40, 4)),
         "one centroid": rng.normal(size=(1, 3))}[case]
    half = pruning._half_separation(c)
    cl = c.astype(np.longdouble)
    exact = np.sqrt(((cl[:, None, :] - cl[None]) ** 2).sum(-1))
    np.fill_diagonal(exact, np.inf)
    want = 0.5 * exact.min(axis=1)
    if case == "one centroid":
        assert half.tolist() == [np.inf]
    else:
        assert np.all(np.abs(half - want) <= 1e-15 * want)


def test_a_pass_that_lost_its_bounds_rebuilds_them_with_the_same_result():
    """A retried task or an evicted entry has no bounds: a full pass gives the same partials,
    inertia included, as the pruned pass it replaces."""
    x = _blobs(3000, 4, 12, 1.0, 13)
    x_sq = kernels.squared_norms(x)
    c = _start(x, 8, False)
    part, labels, bounds = pruning.full_partials(x, x_sq, None, c, None)
    for _ in range(6):  # into the passes where most rows are pruned
        new, _ = kernels.update_centroids(part, c)
        part, labels, bounds = pruning.pruned_partials(
            x, x_sq, None, pruning.Motion.between(c, new), labels, bounds)
        c = new
    new, _ = kernels.update_centroids(part, c)
    pruned, l1, _ = pruning.pruned_partials(x, x_sq, None, pruning.Motion.between(c, new),
                                            labels, bounds)
    full, l2, _ = pruning.full_partials(x, x_sq, None, new, labels)
    np.testing.assert_array_equal(l1, l2)
    assert np.array_equal(pruned.sums, full.sums) and pruned.inertia == full.inertia
    assert pruned.moved == full.moved and full.computed == len(x) > pruned.computed


@pytest.mark.parametrize("dtype", DTYPES)
def test_near_ties_take_brute_forces_own_chunk(dtype):
    """Two centroids a rounding error apart: the subset's GEMM may round differently from brute
    force's chunk, so such rows must get their label from brute force's own chunk scores."""
    x = np.ascontiguousarray(_blobs(5000, 6, 4, 1.0, 14).astype(dtype))
    x_sq = kernels.squared_norms(x)
    c = _start(x, 5, False).astype(np.float64)
    _, labels, bounds = pruning.full_partials(x, x_sq, None, c, None)
    near = c.copy()
    # centroid 1 moves onto centroid 0, to the GEMM's rounding (a few float32 units: distinct
    # once rounded to float32)
    near[1] = near[0] * (1 + (2.0**-50 if dtype == np.float64 else 2.0**-21))
    got, got_labels, _ = pruning.pruned_partials(
        x, x_sq, None, pruning.Motion.between(c, near, dtype), labels, bounds)
    ref, ref_labels = kernels.block_partials(x, x_sq, None, near, labels)
    np.testing.assert_array_equal(got_labels, ref_labels)
    assert np.array_equal(got.sums, ref.sums)


def test_bounds_are_stored_in_float32_rounded_outwards():
    """Upper bounds never below the float64 value they store, lower ones never above, down to
    the subnormals and up to overflow (an upper bound beyond float32 is inf: no pruning, never a
    wrong one); numba's loop rounds each value as numpy does."""
    from kmeans_dist import _fused

    values = np.array([0.0, 1.0, 1 / 3, 2 / 3 * 1e-40, 1e-50, 2.0**-149 * 0.75, 3.4028235e38,
                       3.5e38, 1e300, np.nextafter(1.0, 2.0)])
    up, down = pruning._up(values), pruning._down(values)
    assert up.dtype == down.dtype == np.float32
    assert np.all(up.astype(np.float64) >= values) and np.all(down.astype(np.float64) <= values)
    # and loose by at most a float32 unit and a half (and the smallest subnormal)
    unit, tiny = 2.0**-23, float(np.finfo(np.float32).smallest_subnormal)
    finite = np.isfinite(up)
    assert np.all(up[finite] <= values[finite] * (1 + 1.5 * unit) + 2 * tiny)
    assert np.all((down >= values * (1 - 1.5 * unit) - 2 * tiny) | (values > 3.4e38))
    assert np.all(down >= 0) and down[0] == down[4] == 0.0
    assert up[-3] == up[-2] == np.inf and down[-2] == np.finfo(np.float32).max
    # through the numba loop that stores bounds from the best two scores
    with np.errstate(over="ignore"):
        best = values * values  # 1e300 squared: inf, an infinite bound either way
    got_up, got_down = np.empty(len(values), np.float32), np.empty(len(values), np.float32)
    _fused.best_two_bounds(best, best, np.zeros(len(values)), 0, 0.0, 0.0, 0.0, got_up, got_down)
    want_up, want_down = pruning._from_best_two(best, best, np.zeros(len(values)),
                                                np.zeros(len(values)), 0.0)
    np.testing.assert_array_equal(got_up, want_up)
    np.testing.assert_array_equal(got_down, want_down)


def test_bounds_take_a_quarter_of_the_block_bytes_at_d16():
    assert pruning.bytes_per_row(16) == 8 + 8 <= 0.25 * (8 * 16 + 8)
    assert pruning.bytes_per_row(16, "float32") == 8 + 4
    x = _blobs(1000, 16, 4, 1.0, 15)
    _, _, bounds = pruning.full_partials(x, kernels.squared_norms(x), None, _start(x, 4, False))
    assert bounds.upper.nbytes + bounds.lower.nbytes == 8 * len(x)
    # the per-cluster partials: (k d + 3 k) float64, within a 16th of the block's features
    assert bounds.clusters.nbytes == (4 * 16 + 3 * 4) * 8 <= x.nbytes / 16
    assert bounds.nbytes <= pruning.bytes_per_row(16) * len(x)
    # more centroids than the block's rows can carry: the per-cluster partials are not kept
    _, _, bounds = pruning.full_partials(x[:200], kernels.squared_norms(x[:200]), None,
                                         _start(x, 60, False))
    assert bounds.clusters is None and bounds.nbytes == 8 * 200


class _InProcess:
    """A transport over blocks in this process (two partitions of 5,000-row blocks)."""

    def __init__(self, x: np.ndarray) -> None:
        from kmeans_dist.blocks import Block

        self.parts = []
        for p, xp in enumerate(np.array_split(x, 2)):
            self.parts.append([Block(p, s, np.ascontiguousarray(xp[s:s + 5000]),
                                     kernels.squared_norms(xp[s:s + 5000]))
                               for s in range(0, len(xp), 5000)])
        self.num_partitions = 2
        self.pruning: list[bool] = []  # per Lloyd pass, whether the engine asked for pruning

    def run(self, fn, value, label=None) -> list:
        if isinstance(value, list):
            self.pruning.append(value[0].prune)
        return [fn(iter(blocks), value) for blocks in self.parts]

    def release(self) -> None:
        pass


@pytest.mark.parametrize("name", ["uniform noise", "overlapping blobs"])
def test_whole_runs_through_the_engine_are_lloyds(name):
    """Through the engine: "auto" and "lloyd" give the same history (inertia and rows moved per
    pass, bit for bit) and centroids; "auto" asks for pruning from k = pruning.MIN_K on (32,
    here), "lloyd" never."""
    from kmeans_dist import engine

    rng = np.random.default_rng(17)
    x = rng.uniform(size=(20000, 8)) if name == "uniform noise" else _blobs(20000, 8, 48, 1.0, 18)
    c0 = _start(x, 32, False)
    t = _InProcess(x)
    auto = engine.lloyd(t, c0, algorithm="auto", max_iter=40)
    asked = list(t.pruning)
    lloyd = engine.lloyd(t, c0, algorithm="lloyd", max_iter=40)
    assert np.array_equal(auto.centroids, lloyd.centroids) and auto.n_iter == lloyd.n_iter
    assert [(h["inertia"], h["moved"]) for h in auto.history] == \
        [(h["inertia"], h["moved"]) for h in lloyd.history]
    computed = [h["computed"] for h in auto.history]
    assert computed[0] == 1.0 and min(computed) < 0.5, computed
    assert asked == [True] * len(asked)
    assert t.pruning[len(asked):] == [False] * (len(t.pruning) - len(asked))


def test_auto_prunes_from_32_centroids():
    """Below 32 centroids brute force's GEMM is cheaper than moving every row's bounds (`make
    bench`: 0.89x at k = 16); "auto" leaves those models to it."""
    from kmeans_dist import engine

    assert not pruning.pays(31) and pruning.pays(32)
    x = _blobs(4000, 4, 8, 1.0, 19)
    t = _InProcess(x)
    engine.lloyd(t, _start(x, 16, False), algorithm="auto", max_iter=5)
    assert t.pruning and not any(t.pruning)


@pytest.mark.parametrize("side_files", [False, True], ids=["in memory", "side files"])
def test_whole_runs_keep_per_cluster_partials_beside_the_blocks(tmp_path, monkeypatch,
                                                                side_files):
    """Through the engine and the tasks: each pass's per-cluster partials are kept beside the
    block (the worker's label cache, or a side file next to a file-backed block) and found by
    the next pass, whose clean clusters' rows are then not read; the run stays "lloyd"'s, bit
    for bit."""
    from dataclasses import replace

    from kmeans_dist import engine

    x = _blobs(20000, 8, 40, 1.0, 21)
    c0 = _start(x, 32, False)
    t = _InProcess(x)
    if side_files:
        t.parts = [[replace(b, scratch=str(tmp_path / f"p{b.part}-{b.start}")) for b in blocks]
                   for blocks in t.parts]
    found, clean = [], []
    fold = pruning._fold_changes

    def spy(x, w, centroids, unmoved, labels, old_labels, kept, fused):
        found.append(kept is not None)
        if kept is not None:
            changed = labels != old_labels
            touched = set(labels[changed]) | set(old_labels[changed])
            clean.append(sum(1 for a in range(len(centroids))
                             if a not in touched and unmoved[a]))
        return fold(x, w, centroids, unmoved, labels, old_labels, kept, fused)

    monkeypatch.setattr(pruning, "_fold_changes", spy)
    auto = engine.lloyd(t, c0, algorithm="auto", max_iter=100)
    lloyd = engine.lloyd(t, c0, algorithm="lloyd", max_iter=100)
    assert np.array_equal(auto.centroids, lloyd.centroids) and auto.n_iter == lloyd.n_iter
    assert [(h["inertia"], h["moved"]) for h in auto.history] == \
        [(h["inertia"], h["moved"]) for h in lloyd.history]
    assert found and all(found), found  # every sparse pass found the previous pass's partials
    assert max(clean) > 0  # and some clusters' rows were left unread
    if side_files:
        assert list(tmp_path.glob("*.clusters-*.npy"))


@pytest.mark.parametrize("side_files", [False, True], ids=["in memory", "side files"])
def test_a_pass_that_fails_half_way_leaves_its_retry_no_half_moved_bounds(tmp_path, monkeypatch,
                                                                          side_files):
    """A task's pruned pass moves the bounds in place (no fresh arrays: their page faults cost a
    fifth of the settling). It takes them out of the worker's cache first (a side file is read
    into a copy), so when it fails after moving them, its retry finds none, computes every
    distance, and gives brute force's partials; then the passes prune again."""
    from kmeans_dist import tasks
    from kmeans_dist.blocks import Block

    x = _blobs(6000, 6, 24, 1.0, 22)
    b = Block(0, 0, x, kernels.squared_norms(x),
              scratch=str(tmp_path / "p0-0") if side_files else None)
    run, k = f"fail-half-way-{side_files}", 32
    c = [_start(x, k, False)]
    for it in range(1, 8):  # into the passes where the bounds settle most rows
        step = tasks.LloydStep(run, it, c[-1], c[-2] if it > 1 else None, prune=True)
        part = tasks.lloyd([b], step)
        c.append(kernels.update_centroids(part, c[-1])[0])
    assert part.computed < len(x) / 2
    step = tasks.LloydStep(run, 8, c[-1], c[-2], prune=True)

    def fail(*args, **kwargs):
        raise RuntimeError("the executor went away")

    with monkeypatch.context() as patch:
        patch.setattr(pruning, "_fold_changes", fail)  # after settling and recomputing in place
        with pytest.raises(RuntimeError):
            tasks.lloyd([b], step)
    labels7 = tasks.stored_labels(b, run, 7)
    assert labels7 is not None  # the labels were not touched
    if side_files:  # the side file's bounds were read into a copy: still the pass-7 ones
        assert tasks.stored_bounds(b, run, 7, (k, 6)) is not None
    else:
        assert tasks.stored_bounds(b, run, 7, (k, 6)) is None
    retry = tasks.lloyd([b], step)
    ref, _ = kernels.block_partials(x, b.x_sq, None, c[-1], labels7)
    assert np.array_equal(retry.sums, ref.sums) and np.array_equal(retry.counts, ref.counts)
    assert retry.inertia == ref.inertia and retry.moved == ref.moved
    assert retry.computed < len(x) if side_files else retry.computed == len(x)
    new = kernels.update_centroids(retry, c[-1])[0]
    after = tasks.lloyd([b], tasks.LloydStep(run, 9, new, c[-1], prune=True))
    assert after.computed < len(x) / 2  # the retry left bounds: the next pass prunes again
    tasks.LABELS.forget({run})
