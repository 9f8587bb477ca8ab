"""Silhouette on Spark: exactly scikit-learn's on the same sample, whatever the partitioning."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from pyspark.sql import functions as F
from sklearn.metrics import silhouette_score

from kmeans_dist import KMeansModel, silhouette
from kmeans_dist.kernels import normalize_rows

FEATURES = ["a", "b", "c"]
METRIC = {"euclidean": "euclidean", "cosine": "cosine"}


@pytest.fixture(scope="module")
def blobs(spark):
    """600 rows around 4 overlapping centres (silhouettes well inside (0, 1)), in 3 partitions,
    with a Euclidean k=4 and a cosine k=3 model of them."""
    rng = np.random.default_rng(21)
    centres = rng.uniform(-8, 8, size=(4, 3))
    x = centres[rng.integers(0, 4, 600)] + rng.normal(scale=2.0, size=(600, 3))
    df = spark.createDataFrame([tuple(map(float, r)) for r in x], FEATURES).repartition(3)
    df = df.cache()
    models = {"euclidean": centres_model(x, 4), "cosine": centres_model(x, 3, cosine=True)}
    return df, x, models


def centres_model(x: np.ndarray, k: int, cosine: bool = False) -> KMeansModel:
    """A model with scikit-learn's centroids (the silhouette only needs the assignment)."""
    from sklearn.cluster import KMeans as SkKMeans
    from threadpoolctl import threadpool_limits

    x = normalize_rows(x) if cosine else x
    with threadpool_limits(1):  # OpenMP spins badly on a busy machine
        c = SkKMeans(k, n_init=1, random_state=0).fit(x).cluster_centers_
    return KMeansModel(normalize_rows(c) if cosine else c, FEATURES,
                       distance="cosine" if cosine else "euclidean")


def sklearn_score(model, x: np.ndarray) -> float:
    return silhouette_score(x, model.predict(x), metric=METRIC[model.distance])


def sorted_rows(x: np.ndarray) -> np.ndarray:
    return x[np.lexsort(x.T[::-1])]


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_whole_data_matches_sklearn(blobs, distance):
    df, x, models = blobs
    model = models[distance]
    value, reason = silhouette.score(model, df, sample_size=len(x))
    assert reason is None
    assert value == pytest.approx(sklearn_score(model, x), abs=1e-9)
    assert model.silhouette(df, sample_size=10_000) == pytest.approx(value, abs=1e-12)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_sample_matches_sklearn_on_the_same_sample(blobs, distance):
    df, x, models = blobs
    model = models[distance]
    xs = silhouette.sample(df, FEATURES, 150, seed=4)
    assert xs.shape == (150, 3)
    whole = {tuple(r) for r in x}
    assert all(tuple(r) in whole for r in xs), "the sample holds rows of the data, unchanged"
    assert model.silhouette(df, sample_size=150, seed=4) == pytest.approx(
        sklearn_score(model, xs), abs=1e-9)


def test_sample_and_score_ignore_partitioning_and_row_order(blobs):
    df, _, models = blobs
    model = models["euclidean"]
    layouts = [df.repartition(1), df.repartition(4), df.orderBy(F.rand(7))]
    reference = silhouette.sample(df, FEATURES, 200, seed=9)
    for other in layouts:
        np.testing.assert_array_equal(silhouette.sample(other, FEATURES, 200, seed=9), reference)
    scores = [model.silhouette(d, sample_size=200, seed=9) for d in [df, *layouts[:2]]]
    assert scores[1] == pytest.approx(scores[0], abs=1e-12)
    assert scores[2] == pytest.approx(scores[0], abs=1e-12)
    other_seed = silhouette.sample(df, FEATURES, 200, seed=10)
    assert not np.array_equal(sorted_rows(other_seed), sorted_rows(reference))


def test_many_models_in_one_job_equal_each_alone(blobs):
    df, _, models = blobs
    _, x, _ = blobs
    euclidean = [models["euclidean"], centres_model(x, 2)]
    together = [v for v, _ in silhouette.score_many(euclidean, df, sample_size=250, seed=1)]
    alone = [silhouette.score(m, df, 250, 1)[0] for m in euclidean]
    assert together == pytest.approx(alone, abs=1e-12)
    with pytest.raises(ValueError, match="share their features and distance"):
        silhouette.score_many(list(models.values()), df)


@pytest.mark.parametrize("onehot_max", [256, 0], ids=["one-hot GEMM", "reduceat"])
def test_blocks_slices_and_sums_do_not_change_the_result(blobs, spark, monkeypatch, onehot_max):
    """Tiny numpy blocks inside each task (7 rows each) over 3 slices, per-cluster sums either
    way: still exact."""
    _, x, models = blobs
    model = models["euclidean"]
    monkeypatch.setattr(silhouette, "BLOCK_ENTRIES", 7 * len(x))
    monkeypatch.setattr(silhouette, "MIN_SLICE_ROWS", 200)
    monkeypatch.setattr(silhouette, "ONEHOT_MAX", onehot_max)
    [(value, _)] = silhouette.score_sample(spark, x, [model.predict(x)])
    assert value == pytest.approx(sklearn_score(model, x), abs=1e-9)


def test_singletons_and_empty_clusters_as_in_sklearn(blobs, spark):
    """A row alone in its cluster scores 0; unused cluster numbers are ignored."""
    _, x, _ = blobs
    labels = np.where(np.arange(len(x)) % 3 == 0, 5, 2)
    labels[[10, 11, 40]] = [0, 8, 9]  # three singletons; 1, 3, 4, 6, 7 unused
    [(value, _), (cos_value, _)] = [silhouette.score_sample(spark, x, [labels], cosine=c)[0]
                                    for c in (False, True)]
    assert value == pytest.approx(silhouette_score(x, labels), abs=1e-9)
    assert cos_value == pytest.approx(silhouette_score(x, labels, metric="cosine"), abs=1e-9)


def test_undefined_cases_give_a_reason(blobs, spark, caplog):
    df, x, _ = blobs
    one = KMeansModel(x[:1], FEATURES)
    with caplog.at_level(logging.WARNING, logger="kmeans_dist"):
        assert one.silhouette(df) is None
    assert "k=1" in caplog.text
    assert silhouette.score(one, df) == (None, silhouette.K1_REASON)
    far = KMeansModel(np.array([[0.0, 0.0, 0.0], [1e6, 1e6, 1e6]]), FEATURES)
    value, reason = silhouette.score(far, df, sample_size=50)
    assert value is None and "one cluster" in reason
    [(value, reason)] = silhouette.score_sample(spark, x[:5], [np.arange(5)])
    assert value is None and "alone in its cluster" in reason


def test_bad_arguments(blobs):
    df, _, models = blobs
    with pytest.raises(ValueError, match="sample_size must be an integer >= 2, got 1"):
        models["euclidean"].silhouette(df, sample_size=1)
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -1"):
        models["euclidean"].silhouette(df, seed=-1)
    renamed = KMeansModel(models["euclidean"].centroids, ["a", "b", "z"])
    with pytest.raises(ValueError, match="missing from the input: z"):
        renamed.silhouette(df)


class _Sampled(Exception):
    """Raised by the sample spy: what was asked is all these tests need."""


def test_default_samples_are_10000_rows_for_the_silhouette_and_5000_for_the_scatter(
        spark, monkeypatch, tmp_path):
    """The README's defaults: ``model.silhouette`` (and the elbow job's ``--silhouette-sample``)
    score a seeded 10,000-row sample, the train job's scatter plot a seeded 5,000-row sample
    (seed 0 both)."""
    from kmeans_dist import elbow, plots

    asked = []

    def spy(df, features, size, seed=0, cosine=False):
        asked.append((size, seed))
        raise _Sampled

    monkeypatch.setattr(silhouette, "sample", spy)
    df = spark.createDataFrame([(0.0, 0.0, 0.0)], FEATURES)
    model = KMeansModel(np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]), FEATURES)
    with pytest.raises(_Sampled):
        model.silhouette(df)
    monkeypatch.setattr(plots, "convergence", lambda *a: None)
    monkeypatch.setattr(plots, "sizes", lambda *a: None)
    with pytest.raises(_Sampled):
        plots.fit_pictures(model, df, str(tmp_path))  # what the train job calls
    assert asked == [(10_000, 0), (5_000, 0)]
    args = elbow.parser().parse_args(["--input", "x.csv", "--output", "out"])
    assert args.silhouette_sample == 10_000
