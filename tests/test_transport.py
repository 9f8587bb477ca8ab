"""Transports: executor-local files and the cached RDD give the same results; misses recover."""

import functools

import numpy as np
import pytest

from kmeans_dist import KMeans, data, kernels, tasks
from kmeans_dist.transport import LocalFilesTransport, RDDTransport
from kmeans_dist.transport.local_files import _remove


@pytest.fixture(scope="module")
def points(spark):
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.normal(c, 1.0, size=(400, 3)) for c in (0.0, 4.0, 9.0)])
    w = rng.uniform(0.5, 2.0, size=len(x))
    rows = [tuple(map(float, r)) + (float(wi),) for r, wi in zip(x, w)]
    df = spark.sparkContext.parallelize(rows, 3).toDF(["a", "b", "c", "w"])
    return df, x, w


def _fit(df, x, **kw):
    init = x[[0, 1, 2]]  # all from one blob: several iterations needed
    return KMeans(3, init=init, weight_col="w", **kw).fit(df, ["a", "b", "c"])


def test_transports_and_kernels_agree_bit_for_bit(points):
    df, x, _ = points
    ref = _fit(df, x, transport="rdd", use_numba=False, block_rows=100)
    assert ref.n_iter > 2
    for transport in ("files", "rdd"):
        for use_numba in (False, True):
            m = _fit(df, x, transport=transport, use_numba=use_numba, block_rows=100)
            assert np.array_equal(m.centroids, ref.centroids), (transport, use_numba)
            assert m.inertia == ref.inertia and m.n_iter == ref.n_iter
            assert m.cluster_sizes == ref.cluster_sizes
            assert [h["moved"] for h in m.history] == [h["moved"] for h in ref.history]


def test_missing_files_are_recomputed_and_repaired(points):
    df, x, w = points
    d = 3
    frame = data.block_frame(df, ["a", "b", "c"], weight_col="w", block_rows=100)
    transport = LocalFilesTransport(data.block_rdd(frame, d))
    try:
        c = x[[0, 500, 1000]]
        step = tasks.LloydStep("t", 1, c, None)
        first = kernels.fold(transport.run(tasks.lloyd, step))
        assert transport.misses == 0
        # every executor loses its files, as after a restart or a cleaner
        transport.handles.mapPartitions(functools.partial(_remove, transport.token)).collect()
        again = kernels.fold(transport.run(tasks.lloyd, step))
        assert transport.misses == transport.num_partitions
        third = kernels.fold(transport.run(tasks.lloyd, step))
        assert transport.misses == transport.num_partitions  # the recompute wrote them back
    finally:
        transport.release()
    for p in (again, third):
        assert np.array_equal(p.sums, first.sums) and p.inertia == first.inertia
    # and the partials are right: brute force over all rows
    labels = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
    expected = np.stack([(x[labels == j] * w[labels == j, None]).sum(0) for j in range(3)])
    np.testing.assert_allclose(first.sums, expected, rtol=1e-12)
    assert list(first.counts) == [int((labels == j).sum()) for j in range(3)]


def test_rdd_transport_runs_one_result_per_partition_in_order(points):
    df, _, _ = points
    frame = data.block_frame(df, ["a", "b", "c"], block_rows=64)
    transport = RDDTransport(data.block_rdd(frame, 3))
    try:
        parts = transport.run(tasks.summarize, 3)
    finally:
        transport.release()
    assert [p.rows for p in parts] == [400, 400, 400]


def test_unknown_transport_is_refused():
    with pytest.raises(ValueError, match="unknown transport 'ftp'"):
        KMeans(2, transport="ftp")
