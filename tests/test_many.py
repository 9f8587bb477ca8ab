"""Many models in the same passes (a range of k, restarts): each equals fitting it alone."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jobutil import describe, run_job_in_process, write_csv
from kmeans_dist import KMeans
from kmeans_dist.estimator import start_seed

FEATURES = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def blobs(spark, tmp_path_factory):
    """3,000 rows around 5 overlapping centres, with an id column to compare labels by."""
    rng = np.random.default_rng(5)
    centres = rng.uniform(-6, 6, size=(5, 4))
    x = centres[rng.integers(0, 5, 3000)] + rng.normal(scale=1.5, size=(3000, 4))
    rows = [(i, *map(float, r)) for i, r in enumerate(x)]
    df = spark.createDataFrame(rows, ["id", *FEATURES]).repartition(2).cache()
    csv = write_csv(tmp_path_factory.mktemp("many") / "blobs.csv", ["id", *FEATURES],
                    [[str(i), *r] for i, r in enumerate(x)])
    return df, x, csv


def labels_by_id(model, df) -> np.ndarray:
    rows = model.transform(df).select("id", "cluster").collect()
    out = np.empty(len(rows), dtype=int)
    for r in rows:
        out[r["id"]] = r["cluster"]
    return out


def assert_same_model(a, b, df) -> None:
    np.testing.assert_allclose(a.centroids, b.centroids, rtol=0, atol=1e-9)
    assert a.n_iter == b.n_iter and a.stop == b.stop
    assert a.inertia == pytest.approx(b.inertia, rel=1e-12)
    np.testing.assert_array_equal(labels_by_id(a, df), labels_by_id(b, df))


def test_range_of_k_in_one_pass_equals_separate_fits(blobs):
    df, _, _ = blobs
    ks = [2, 3, 4, 5, 6]
    together = KMeans(2, init="k-means++", seed=3).fit_many(df, ks, FEATURES)
    assert sorted(together) == ks
    for k in ks:
        alone = KMeans(k, init="k-means++", seed=3).fit(df, FEATURES)
        assert together[k].k == k
        assert_same_model(together[k], alone, df)
    # a fit that stops early retires while the others go on: n_iter differs across k
    assert len({together[k].n_iter for k in ks}) > 1


def test_restarts_keep_the_lowest_inertia(blobs):
    df, _, _ = blobs
    best = KMeans(5, init="random", seed=11, n_init=4).fit(df, FEATURES)
    seeds = [start_seed(11, i) for i in range(4)]
    assert [r["seed"] for r in best.restarts] == seeds and seeds[0] == 11
    alone = [KMeans(5, init="random", seed=s).fit(df, FEATURES) for s in seeds]
    inertias = [m.inertia for m in alone]
    assert len(set(np.round(inertias, 6))) > 1, "the starts should reach different optima"
    for record, m in zip(best.restarts, alone):
        assert record["inertia"] == pytest.approx(m.inertia, rel=1e-12)
        assert record["n_iter"] == m.n_iter
    winner = int(np.argmin(inertias))
    assert best.inertia == pytest.approx(min(inertias), rel=1e-12)
    assert best.params["seed"] == seeds[winner]
    assert_same_model(best, alone[winner], df)


def test_explicit_init_is_one_start(blobs):
    df, x, _ = blobs
    model = KMeans(3, init=x[:3], n_init=5).fit(df, FEATURES)
    assert len(model.restarts) == 1
    with pytest.raises(ValueError, match="explicit init centroids fix k=3"):
        KMeans(3, init=x[:3]).fit_many(df, [3, 4], FEATURES)


def test_n_init_must_be_positive():
    with pytest.raises(ValueError, match="n_init must be >= 1, got 0"):
        KMeans(3, n_init=0)


def test_train_job_reports_every_start(blobs, tmp_path):
    _, _, csv = blobs
    out = tmp_path / "out"
    proc = run_job_in_process("jobs/train.py", "--input", csv, "--k", "5", "--init", "random",
                              "--seed", "11", "--n-init", "3", "--features", ",".join(FEATURES),
                              "--output", out)
    assert proc.returncode == 0, describe(proc)
    report = json.loads((out / "report.json").read_text())
    starts = report["restarts"]
    assert [s["seed"] for s in starts] == [start_seed(11, i) for i in range(3)]
    assert all(s["n_iter"] >= 1 and s["inertia"] > 0 for s in starts)
    assert report["inertia"] == min(s["inertia"] for s in starts)
