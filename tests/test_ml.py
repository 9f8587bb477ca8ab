"""kmeans_dist.ml, the pyspark.ml drop-in, against pyspark.ml's own KMeans and MLlib.

References: MLlib's KMeans trained from the same explicit centres (centres, iterations,
predictions), scikit-learn's Lloyd for the "farthest"/"no_change" extras, pyspark.ml's KMeans
for Params. Fits are few and small and shared through module fixtures.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np
import pytest
from chispa import assert_df_equality
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.clustering import KMeans as SparkKMeans
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.feature import StandardScaler, VectorAssembler
from pyspark.ml.linalg import Vectors, VectorUDT
from pyspark.ml.tuning import CrossValidator, ParamGridBuilder
from pyspark.sql import types as T
from sklearn.cluster import KMeans as SKKMeans

from kmeans_dist.ml import KMeans, KMeansModel

RTOL = 1e-9
EXTRAS = {"stopRule": "mllib", "emptyClusters": "keep", "handleInvalid": "error",
          "algorithm": "auto", "dtype": "float64"}


def blobs(centres: list[list[float]], n: int, std: float, seed: int) -> np.ndarray:
    """n rows around each centre, rounded to float32 so array<float> holds the same values."""
    rng = np.random.default_rng(seed)
    x = np.vstack([rng.normal(c, std, size=(n, len(c))) for c in centres])
    return x.astype(np.float32).astype(np.float64)


def param_values(params) -> dict:
    return {p.name: v for p, v in params.extractParamMap().items()}


def explicit_values(params) -> dict:
    return {p.name: params.getOrDefault(p) for p in params.params if params.isSet(p)}


def assert_centres(model: KMeansModel, expected: np.ndarray) -> None:
    """Centres equal to rounding (an exact 0 may be ~1e-16 in the reference)."""
    np.testing.assert_allclose(np.array(model.clusterCenters()), expected, rtol=RTOL, atol=1e-12)


def predictions(df, col: str = "prediction") -> np.ndarray:
    return np.array([r[0] for r in df.select(col).collect()])


# --------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def four(spark) -> SimpleNamespace:
    """Four overlapping blobs (non-negative, values under 1.5 zeroed so sparse vectors are
    sparse) and 5 starting centres: four from one blob, so Lloyd needs several iterations, and
    one opposite the data, so its cluster stays empty.
    Columns: ``features`` (dense), ``sparse``, ``doubles`` (array<double>), ``floats``."""
    x = blobs([[6, 2, 2], [2, 6, 2], [2, 2, 6], [5, 5, 5]], 100, 1.0, seed=3)
    x[x < 1.5] = 0.0
    init = np.vstack([x[:4], [[-50.0, -50.0, -50.0]]])
    schema = T.StructType([
        T.StructField("features", VectorUDT()),
        T.StructField("sparse", VectorUDT()),
        T.StructField("doubles", T.ArrayType(T.DoubleType())),
        T.StructField("floats", T.ArrayType(T.FloatType())),
    ])
    rows = [(Vectors.dense(r), Vectors.sparse(3, {i: v for i, v in enumerate(r) if v}),
             r.tolist(), r.tolist()) for r in x]
    return SimpleNamespace(x=x, init=init, df=spark.createDataFrame(rows, schema))


@pytest.fixture(scope="module")
def fit(four):
    """Fits on ``four`` from its starting centres, each combination once per module."""

    @functools.cache
    def run(col: str = "features", tol: float = 1e-4, distance: str = "euclidean",
            stop: str = "mllib", empty: str = "keep", algorithm: str = "auto",
            dtype: str = "float64") -> KMeansModel:
        km = KMeans(k=len(four.init), initialCenters=four.init.tolist(), maxIter=50, tol=tol,
                    distanceMeasure=distance, stopRule=stop, emptyClusters=empty,
                    algorithm=algorithm, dtype=dtype)
        return km.setFeaturesCol(col).fit(four.df)

    return run


@pytest.fixture(scope="module")
def three(spark):
    """Three well-separated blobs as scalar columns a, b, c and as a vector ``features``."""
    x = blobs([[0, 0, 0], [10, 0, 5], [0, 10, -5]], 40, 0.5, seed=7)
    df = spark.createDataFrame([tuple(map(float, r)) for r in x], "a double, b double, c double")
    return VectorAssembler(inputCols=["a", "b", "c"], outputCol="features").transform(df)


# --------------------------------------------------------------------------- MLlib parity


def mllib_reference(spark, x: np.ndarray, init: np.ndarray, tol: float, distance: str):
    """MLlib trained from ``init``: (centres, iterations, labels). The JVM call is the one
    ``pyspark.mllib.clustering.KMeans.train(..., initialModel=...)`` makes; calling it directly
    also gives the iteration count, which the Python wrapper drops."""
    from pyspark.mllib.clustering import KMeansModel as MLlibModel
    from pyspark.mllib.common import callMLlibFunc
    from pyspark.mllib.linalg import _convert_to_vector

    rdd = spark.sparkContext.parallelize([_convert_to_vector(r) for r in x], 2)
    java = callMLlibFunc("trainKMeansModel", rdd, len(init), 50, "k-means||", None, 2, tol,
                         [_convert_to_vector(c) for c in init], distance)
    centres = np.array([c.toArray() for c in java.clusterCenters()])
    if distance == "euclidean":
        return centres, java.numIter(), np.array([MLlibModel(centres).predict(r) for r in x])
    # cosine: only directions matter (MLlib leaves a never-updated centre unnormalised), and
    # the Python MLlibModel.predict is Euclidean only
    unit = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    return unit, java.numIter(), np.argmax(x @ unit.T, axis=1)


@pytest.mark.parametrize("tol, distance", [
    (1e-4, "euclidean"), (0.0, "euclidean"),
    (0.03, "euclidean"),  # here MLlib's tol stops it 2 iterations before any "no change"
    (1e-4, "cosine"),  # and here 41 before maxIter (MLlib's cosine with tol=0 never stops)
])
def test_same_as_mllib_from_same_centres(spark, four, fit, tol, distance):
    model = fit(tol=tol, distance=distance)
    centres, n_iter, labels = mllib_reference(spark, four.x, four.init, tol, distance)
    assert_centres(model, centres)
    assert model.summary.numIter == n_iter > 2
    np.testing.assert_array_equal(predictions(model.summary.predictions), labels)
    assert model.summary.clusterSizes[-1] == 0  # "keep": the empty cluster stayed put


def test_farthest_and_no_change_are_scikit_learns_lloyd(four, fit):
    model = fit(tol=0.0, stop="no_change", empty="farthest")
    sk = SKKMeans(len(four.init), init=four.init, n_init=1, max_iter=50, tol=0.0,
                  algorithm="lloyd").fit(four.x)
    assert_centres(model, sk.cluster_centers_)
    np.testing.assert_array_equal(predictions(model.summary.predictions), sk.labels_)
    assert model.summary.numIter == sk.n_iter_
    assert model.summary.trainingCost == pytest.approx(sk.inertia_, rel=RTOL)
    assert min(model.summary.clusterSizes) > 0


def test_algorithm_lloyd_gives_the_pruned_fit_bit_for_bit(four, fit):
    """The Param reaches the engine: "lloyd" computes every distance in every pass, "auto" (the
    default) prunes, and both give the same centres and iterations."""
    auto, lloyd = fit(), fit(algorithm="lloyd")
    assert np.array_equal(np.array(auto.clusterCenters()), np.array(lloyd.clusterCenters()))
    assert auto.summary.numIter == lloyd.summary.numIter > 3
    assert lloyd.getAlgorithm() == "lloyd" and auto.getAlgorithm() == "auto"


def test_dtype_float32_reaches_the_engine(four, fit):
    """dtype="float32" is the engine's dtype. These rows are float32 values already (see
    ``blobs``), so holding them in float32 loses nothing and, the float32 GEMM giving the same
    labels (no near-ties here), the fit is the float64 fit bit for bit: the sums are float64
    either way."""
    assert KMeans(dtype="float32")._engine_args()["dtype"] == "float32"
    assert KMeans()._engine_args()["dtype"] == "float64"
    f32, f64 = fit(dtype="float32"), fit()
    assert f32.getDtype() == "float32" and f64.getDtype() == "float64"
    assert np.array_equal(np.array(f32.clusterCenters()), np.array(f64.clusterCenters()))
    assert f32.summary.numIter == f64.summary.numIter
    assert f32.summary.clusterSizes == f64.summary.clusterSizes


def test_model_api_and_summary(spark, four, fit):
    model = fit()
    s = model.summary
    labels = predictions(s.predictions)
    centres = np.array(model.clusterCenters())
    assert model.hasSummary and model.numFeatures == 3 and len(centres) == s.k == 5
    assert s.clusterSizes == np.bincount(labels, minlength=5).tolist()
    assert s.trainingCost == pytest.approx(((four.x - centres[labels]) ** 2).sum(), rel=RTOL)
    assert (s.featuresCol, s.predictionCol, s.cluster.columns) == ("features", "prediction",
                                                                   ["prediction"])
    assert s.predictions.schema["prediction"].dataType == T.IntegerType()
    assert model.predict(Vectors.dense(four.x[7])) == labels[7]
    assert model.predict(four.x[9].tolist()) == labels[9]
    renamed = model.copy().setPredictionCol("c").transform(four.df)
    np.testing.assert_array_equal(predictions(renamed, "c"), labels)
    assert renamed.columns == four.df.columns + ["c"]
    # a null vector, and vectors with a NaN or an infinite value: a null prediction each
    nan, inf = float("nan"), float("inf")
    invalid = spark.createDataFrame(
        [(None,), (Vectors.dense([nan, 1.0, 2.0]),), (Vectors.dense([1.0, -inf, 2.0]),),
         (Vectors.dense(four.x[7]),)], T.StructType([T.StructField("features", VectorUDT())]))
    assert predictions(model.transform(invalid)).tolist() == [None, None, None, labels[7]]


@pytest.mark.parametrize("col", ["sparse", "floats"])
def test_sparse_and_array_features_give_the_dense_model(four, fit, col):
    """A fit on sparse vectors / array<float> is the dense fit; each column type also
    transforms like the dense vectors (array<double> shares array<float>'s path in ``fit``)."""
    dense, other = fit(), fit(col=col)
    np.testing.assert_array_equal(np.array(other.clusterCenters()),
                                  np.array(dense.clusterCenters()))
    expected = predictions(dense.summary.predictions)
    for c in ("sparse", "doubles", "floats"):
        np.testing.assert_array_equal(predictions(other.copy().setFeaturesCol(c)
                                                  .transform(four.df)), expected)


def test_solver_and_max_block_size_change_nothing(four, fit):
    """``solver`` and ``maxBlockSizeInMB`` are accepted and have no effect: other values give
    the same model, bit for bit."""
    default = fit()
    other = KMeans(k=len(four.init), initialCenters=four.init.tolist(), maxIter=50, tol=1e-4,
                   solver="row", maxBlockSizeInMB=0.001).fit(four.df)
    assert (other.getSolver(), other.getMaxBlockSizeInMB()) == ("row", 0.001)
    np.testing.assert_array_equal(np.array(other.clusterCenters()),
                                  np.array(default.clusterCenters()))
    assert other.summary.numIter == default.summary.numIter
    assert other.summary.trainingCost == default.summary.trainingCost
    np.testing.assert_array_equal(predictions(other.summary.predictions),
                                  predictions(default.summary.predictions))


def test_init_mode_k_means_plus_plus_is_exact_k_means_plus_plus(three, monkeypatch):
    """initMode="k-means++" runs the exact k-means++ init (one pass over the data per centre,
    nothing of k-means||), and on three separated blobs ends at their means."""
    from kmeans_dist import init as inits

    passes = []
    sample = inits._sample

    def counted(transport, step, label):
        passes.append(label)
        return sample(transport, step, label)

    monkeypatch.setattr(inits, "_sample", counted)
    monkeypatch.setattr(inits, "kmeans_parallel", None)  # would fail if called
    model = KMeans(k=3, seed=2, initMode="k-means++").fit(three)
    assert passes == [f"k-means++ centre {i}/3" for i in (1, 2, 3)]
    x = np.array([r[0].toArray() for r in three.select("features").collect()])
    means = sorted(map(tuple, (x[i * 40:(i + 1) * 40].mean(axis=0) for i in range(3))))
    np.testing.assert_allclose(sorted(map(tuple, model.clusterCenters())), means,
                               rtol=RTOL, atol=1e-12)


# --------------------------------------------------------------------------- Params


def test_params_defaults_getters_and_setters_match_pyspark(spark):
    ours, ref = KMeans(), SparkKMeans()
    assert param_values(ours) == {**param_values(ref), **EXTRAS}
    for est in (ours, ref):
        est.setK(5).setTol(0.5).setSeed(7).setMaxIter(3).setWeightCol("w").setInitSteps(4)
        est.setDistanceMeasure("cosine").setInitMode("random").setSolver("row")
        est.setMaxBlockSizeInMB(2.0).setFeaturesCol("f").setPredictionCol("p")
    assert explicit_values(ours) == explicit_values(ref)
    assert param_values(ours) == {**param_values(ref), **EXTRAS}
    for p in ref.params:
        getter = "get" + p.name[0].upper() + p.name[1:]
        assert getattr(ours, getter)() == getattr(ref, getter)(), p.name
    kwargs = dict(k=4, tol=0.0, maxIter=7, seed=3, initMode="random", weightCol="w")
    assert explicit_values(KMeans(**kwargs)) == explicit_values(SparkKMeans(**kwargs))
    copied = ours.copy({ours.k: 9})
    assert (copied.getK(), ours.getK()) == (9, 5)


@pytest.mark.parametrize("params, word", [
    ({"k": 1}, "k must be >= 2"), ({"maxIter": 0}, "maxIter must be >= 1"),
    ({"tol": -1.0}, "tol must be >= 0"), ({"initMode": "kmeans"}, "initMode must be one of"),
    ({"solver": "x"}, "solver must be one of"), ({"stopRule": "x"}, "stopRule must be one of"),
    ({"emptyClusters": "x"}, "emptyClusters must be one of"),
    ({"algorithm": "elkan"}, "algorithm must be one of"),
    ({"dtype": "float16"}, "dtype must be one of"),
    ({"initialCenters": [[0.0, 0.0, 0.0]]}, "init centroids have shape"),
    ({"predictionCol": "sparse"}, "predictionCol 'sparse' already exists"),
])
def test_bad_params_raise_before_fitting(four, params, word):
    with pytest.raises(ValueError, match=word):
        KMeans(**params).fit(four.df)


@pytest.mark.parametrize("col, word", [("nope", "featuresCol 'nope' not found"),
                                       ("x", "featuresCol 'x' must be a vector")])
def test_bad_features_column_raises(spark, col, word):
    df = spark.createDataFrame([("a",)], "x string")
    with pytest.raises(ValueError, match=word):
        KMeans(featuresCol=col).fit(df)


# --------------------------------------------------------------------------- pyspark.ml machinery


def test_pipeline_fit_save_load_same_predictions(spark, three, tmp_path):
    pipeline = Pipeline(stages=[
        VectorAssembler(inputCols=["a", "b", "c"], outputCol="raw"),
        StandardScaler(inputCol="raw", outputCol="scaled"),
        KMeans(k=3, seed=1, featuresCol="scaled"),
    ])
    data = three.drop("features")
    fitted = pipeline.fit(data)
    fitted.write().overwrite().save(str(tmp_path / "pm"))
    loaded = PipelineModel.load(str(tmp_path / "pm"))
    assert_df_equality(loaded.transform(data), fitted.transform(data))
    assert isinstance(loaded.stages[-1], KMeansModel) and not loaded.stages[-1].hasSummary
    pipeline.save(str(tmp_path / "p"))
    assert param_values(Pipeline.load(str(tmp_path / "p")).getStages()[-1]) == param_values(
        pipeline.getStages()[-1])


def test_estimator_and_model_save_load(fit, tmp_path):
    est = KMeans(k=3, seed=5, initialCenters=[[0.0] * 3] * 3, emptyClusters="farthest")
    est.save(str(tmp_path / "est"))
    est.write().overwrite().save(str(tmp_path / "est"))
    again = KMeans.load(str(tmp_path / "est"))
    assert (again.uid, param_values(again)) == (est.uid, param_values(est))
    model = fit()
    model.save(str(tmp_path / "model"))
    model.write().overwrite().save(str(tmp_path / "model"))
    loaded = KMeansModel.load(str(tmp_path / "model"))
    assert (loaded.uid, param_values(loaded)) == (model.uid, param_values(model))
    np.testing.assert_array_equal(np.array(loaded.clusterCenters()),
                                  np.array(model.clusterCenters()))
    assert not loaded.hasSummary
    with pytest.raises(RuntimeError, match="No training summary"):
        loaded.summary


def test_cross_validator_picks_k_3_by_silhouette(three):
    """CrossValidator over k (through ``fitMultiple``, which fits the whole k grid in shared
    passes: each model is what its own ``fit`` gives) picks the k of the data."""
    km = KMeans(seed=1)
    grid = ParamGridBuilder().addGrid(km.k, [2, 3, 4]).build()
    shared = dict(km.fitMultiple(three, grid))
    assert [m.getK() for _, m in sorted(shared.items())] == [2, 3, 4]
    alone = km.copy(grid[2]).fit(three)
    np.testing.assert_array_equal(np.array(shared[2].clusterCenters()),
                                  np.array(alone.clusterCenters()))
    assert shared[2].summary.numIter == alone.summary.numIter
    assert shared[2].summary.clusterSizes == alone.summary.clusterSizes
    # parallelism=2: the evaluations (a few short Spark jobs each) overlap, as on a cluster
    cv = CrossValidator(estimator=km, estimatorParamMaps=grid, evaluator=ClusteringEvaluator(),
                        numFolds=2, seed=1, parallelism=2)
    fitted = cv.fit(three)
    assert int(np.argmax(fitted.avgMetrics)) == 1
    best = fitted.bestModel
    assert best.getK() == 3 and len(best.clusterCenters()) == 3


def test_handle_invalid_names_its_param_or_skips_the_bad_rows(spark, three):
    """A NaN feature fails the fit naming ``handleInvalid``; "skip" fits on the other rows,
    exactly as a fit on the clean rows does."""
    schema = T.StructType([T.StructField("features", VectorUDT())])
    bad = spark.createDataFrame([(Vectors.dense([float("nan"), 1.0, 2.0]),)], schema)
    mixed = three.select("features").unionByName(bad)
    start = {"initialCenters": [r[0].toArray().tolist() for r in three.select("features").take(3)]}
    with pytest.raises(ValueError, match="1 input row has a null, NaN or infinite feature value"
                                         r".*set handleInvalid='skip'"):
        KMeans(k=3, **start).fit(mixed)
    skipped = KMeans(k=3, handleInvalid="skip", **start).fit(mixed)
    clean = KMeans(k=3, **start).fit(three)
    np.testing.assert_array_equal(np.array(skipped.clusterCenters()),
                                  np.array(clean.clusterCenters()))
    assert skipped.summary.numIter == clean.summary.numIter
