"""A drop-in for ``pyspark.ml.clustering.KMeans`` / ``KMeansModel`` on kmeans-dist's exact engine.

``from kmeans_dist.ml import KMeans, KMeansModel`` gives a pyspark.ml ``Estimator`` / ``Model``
pair with the Params, defaults, getters, setters and meanings of pyspark.ml's, so it fits into
``Pipeline``, ``CrossValidator``, ``TrainValidationSplit`` and ``ClusteringEvaluator`` unchanged,
and saves and loads through pyspark.ml's persistence (parameters and centres as JSON, no pickle).

Differences from pyspark.ml:

* ``initMode`` also accepts ``"k-means++"``; ``"random"`` and ``"k-means||"`` sample differently
  from MLlib, so the same seed gives different (equally valid) starting centres.
* Extra Params: ``initialCenters`` (explicit k x d starting centres), ``stopRule``,
  ``emptyClusters``, ``handleInvalid``, ``driverMaxMb`` (small data is fitted in the driver
  process), ``algorithm`` (``"auto"`` skips the rows whose centre provably stays, with
  ``"lloyd"``'s result bit for bit) and ``dtype`` (``"float32"`` holds the features and runs
  the distances in float32; see their docs). With the defaults the iterations are MLlib's.
* ``solver``, ``maxBlockSizeInMB`` and ``intermediateStorageLevel`` are accepted (the first two
  validated) but have no effect: the engine always runs its own blocked kernel and caching.
* ``tol=0`` stops once no row changes cluster; MLlib stops once no centre moved at all, the
  same iteration except where rounding keeps moving its centres (MLlib's cosine can then run
  to ``maxIter``).
* ``maxIter`` must be >= 1 (MLlib also allows 0: "return the initial centres").
* ``summary.trainingCost`` is the cost against the returned centres (scikit-learn's inertia);
  MLlib reports the cost of the last assignment step, before its final centre update.
* With ``distanceMeasure="cosine"`` every centre is returned unit-length, including one that
  never moved from ``initialCenters`` (MLlib returns that one as given; same direction).
* ``transform`` gives a null prediction for a row with a null or non-finite feature instead of
  failing the job; a vector of the wrong size fails it, as in MLlib.
* Saved stages name these classes and keep the centres as JSON: ``kmeans_dist.ml`` reads them,
  pyspark.ml's ``KMeansModel.load`` does not (nor is a stage pyspark.ml saved read here: the
  readers refuse it with an error naming both classes).

Only DataFrame operations are used here (no ``sparkContext``), so the adapter itself is ready
for Spark Connect.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.functions import vector_to_array
from pyspark.ml.linalg import Vector, VectorUDT
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import (
    HasDistanceMeasure,
    HasFeaturesCol,
    HasHandleInvalid,
    HasMaxBlockSizeInMB,
    HasMaxIter,
    HasPredictionCol,
    HasSeed,
    HasSolver,
    HasTol,
    HasWeightCol,
)
from pyspark.ml.util import (
    DefaultParamsReadable,
    DefaultParamsReader,
    DefaultParamsWritable,
    DefaultParamsWriter,
    MLReadable,
    MLReader,
    MLWritable,
    MLWriter,
)
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from kmeans_dist.data import column
from kmeans_dist.errors import UserError
from kmeans_dist.estimator import InvalidRows
from kmeans_dist.estimator import KMeans as _Engine
from kmeans_dist.model import KMeansModel as _EngineModel

try:
    from pyspark.ml.param.shared import HasIntermediateStorageLevel
except ImportError:  # pyspark < 4.3: its KMeans has no such Param either

    class HasIntermediateStorageLevel(Params):  # type: ignore[no-redef]
        pass


#: prefix of the temporary columns the feature vector is expanded into
_TMP = "__kmeans_dist_"
_NO_EFFECT = " Accepted for compatibility; has no effect in kmeans-dist."
_CHOICES = {
    "initMode": ("k-means||", "k-means++", "random"),
    "distanceMeasure": ("euclidean", "cosine"),
    "solver": ("auto", "row", "block"),
    "stopRule": ("mllib", "no_change"),
    "emptyClusters": ("keep", "farthest"),
    "handleInvalid": ("error", "skip"),
    "algorithm": ("auto", "lloyd"),
    "dtype": ("float64", "float32"),
}


class _KMeansParams(
    HasMaxIter,
    HasFeaturesCol,
    HasSeed,
    HasPredictionCol,
    HasTol,
    HasDistanceMeasure,
    HasWeightCol,
    HasSolver,
    HasMaxBlockSizeInMB,
    HasIntermediateStorageLevel,
    HasHandleInvalid,
):
    """Params of :py:class:`KMeans` and :py:class:`KMeansModel`: pyspark.ml's, plus six."""

    k: Param[int] = Param(
        Params._dummy(), "k", "The number of clusters to create. Must be > 1.",
        typeConverter=TypeConverters.toInt,
    )
    initMode: Param[str] = Param(
        Params._dummy(), "initMode",
        'The initialization algorithm. This can be either "random" to choose random points as '
        'initial cluster centers, or "k-means||" to use a parallel variant of k-means++ '
        '(kmeans-dist: also "k-means++", exact k-means++).',
        typeConverter=TypeConverters.toString,
    )
    initSteps: Param[int] = Param(
        Params._dummy(), "initSteps", "The number of steps for k-means|| initialization mode. "
        "Must be > 0.",
        typeConverter=TypeConverters.toInt,
    )
    solver: Param[str] = Param(
        Params._dummy(), "solver",
        "The solver algorithm for optimization. Supported options: auto, row, block." + _NO_EFFECT,
        typeConverter=TypeConverters.toString,
    )
    maxBlockSizeInMB: Param[float] = Param(
        Params._dummy(), "maxBlockSizeInMB",
        "maximum memory in MB for stacking input data into blocks. Data is stacked within "
        "partitions. If more than remaining data size in a partition then it is adjusted to "
        "the data size. Default 0.0 represents choosing optimal value, depends on specific "
        "algorithm. Must be >= 0." + _NO_EFFECT,
        typeConverter=TypeConverters.toFloat,
    )
    initialCenters: Param[list[list[float]]] = Param(
        Params._dummy(), "initialCenters",
        "kmeans-dist: explicit initial cluster centers, k lists of d floats. When set, "
        "initMode, initSteps and seed are not used.",
        typeConverter=TypeConverters.toListListFloat,
    )
    stopRule: Param[str] = Param(
        Params._dummy(), "stopRule",
        'kmeans-dist: when to stop before maxIter. "mllib" (default): once no center moved '
        'more than tol (cosine: no center has cosine distance > tol to its previous value), as '
        'MLlib does. "no_change": only once no row changes cluster (tol is ignored).',
        typeConverter=TypeConverters.toString,
    )
    emptyClusters: Param[str] = Param(
        Params._dummy(), "emptyClusters",
        'kmeans-dist: what happens to a cluster that lost all its rows. "keep" (default): its '
        'center stays where it was (MLlib). "farthest": it moves to the row farthest from its '
        "center (scikit-learn).",
        typeConverter=TypeConverters.toString,
    )

    driverMaxMb: Param[float] = Param(
        Params._dummy(), "driverMaxMb",
        "kmeans-dist: fit in the driver process (the client's, on Spark Connect) when the "
        "packed rows take at most this many MiB; unset: the smaller of 128 MiB and 1/8 of the "
        "driver's available memory; 0: always on the executors.",
        typeConverter=TypeConverters.toFloat,
    )
    algorithm: Param[str] = Param(
        Params._dummy(), "algorithm",
        'kmeans-dist: how each pass finds the nearest centers. "auto" (default): from 32 '
        "centers on, skip the rows whose nearest center provably stays (distance bounds), the "
        'same result as "lloyd" bit for bit. "lloyd": every distance in every pass.',
        typeConverter=TypeConverters.toString,
    )
    dtype: Param[str] = Param(
        Params._dummy(), "dtype",
        'kmeans-dist: the type the features are held and the distances computed in. "float64" '
        '(default), or "float32": half the executor memory for the features and about twice '
        "the speed of the distance products; sums, costs and centers stay float64.",
        typeConverter=TypeConverters.toString,
    )

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(
            k=2, initMode="k-means||", initSteps=2, tol=1e-4, maxIter=20,
            distanceMeasure="euclidean", solver="auto", maxBlockSizeInMB=0.0,
            stopRule="mllib", emptyClusters="keep", handleInvalid="error", algorithm="auto",
            dtype="float64",
        )

    def getK(self) -> int:
        """Gets the value of `k`."""
        return self.getOrDefault(self.k)

    def getInitMode(self) -> str:
        """Gets the value of `initMode`."""
        return self.getOrDefault(self.initMode)

    def getInitSteps(self) -> int:
        """Gets the value of `initSteps`."""
        return self.getOrDefault(self.initSteps)

    def getInitialCenters(self) -> list[list[float]] | None:
        """Gets the value of `initialCenters` (None when not set)."""
        return self.getOrDefault(self.initialCenters) if self.isDefined(self.initialCenters) else None

    def getStopRule(self) -> str:
        """Gets the value of `stopRule`."""
        return self.getOrDefault(self.stopRule)

    def getEmptyClusters(self) -> str:
        """Gets the value of `emptyClusters`."""
        return self.getOrDefault(self.emptyClusters)

    def getAlgorithm(self) -> str:
        """Gets the value of `algorithm`."""
        return self.getOrDefault(self.algorithm)

    def getDtype(self) -> str:
        """Gets the value of `dtype`."""
        return self.getOrDefault(self.dtype)

    def getDriverMaxMb(self) -> float | None:
        """Gets the value of `driverMaxMb` (None when not set)."""
        return self.getOrDefault(self.driverMaxMb) if self.isDefined(self.driverMaxMb) else None

    def _weight_col(self) -> str | None:
        """The weight column, if any: unset and "" both mean unweighted, as in pyspark.ml."""
        return (self.getWeightCol() or None) if self.isDefined(self.weightCol) else None

    def _validate(self) -> None:
        """Rejects values pyspark.ml rejects (and this engine's own limits) before any job."""
        for name, allowed in _CHOICES.items():
            value = self.getOrDefault(name)
            if value not in allowed:
                raise UserError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        # maxIter >= 1, not pyspark.ml's >= 0: the engine always runs one iteration
        for name, low in [("k", 2), ("initSteps", 1), ("maxIter", 1), ("tol", 0),
                          ("maxBlockSizeInMB", 0)]:
            value = self.getOrDefault(name)
            if not value >= low:
                raise UserError(f"{name} must be >= {low}; got {value}")

    def _check_prediction_col(self, dataset: DataFrame) -> None:
        """pyspark.ml refuses to overwrite a column with the predictions; so does this."""
        if self.getPredictionCol() in dataset.columns:
            raise UserError(f"predictionCol '{self.getPredictionCol()}' already exists in "
                            f"the input")


# ---------------------------------------------------------------------- features column
@dataclass(frozen=True)
class _Expanded:
    """A DataFrame with the feature vector expanded into scalar temporary columns."""

    df: DataFrame
    columns: list[str]


def _as_array(df: DataFrame, col: str) -> Column:
    """``col`` as an array expression: vectors (dense or sparse) converted, arrays as they are."""
    if col not in df.columns:
        raise UserError(f"featuresCol '{col}' not found; columns are {sorted(df.columns)}")
    dtype = df.schema[col].dataType
    if isinstance(dtype, VectorUDT):  # vector_to_array fails on null, so null stays null
        return F.when(column(col).isNotNull(), vector_to_array(column(col)))
    if isinstance(dtype, T.ArrayType) and isinstance(dtype.elementType, (T.DoubleType, T.FloatType)):
        return column(col)
    raise UserError(f"featuresCol '{col}' must be a vector, array<double> or array<float> "
                    f"column; got {dtype.simpleString()}")


def _num_features(df: DataFrame, col: str) -> int:
    """d from the column's ml_attr metadata (VectorAssembler, StandardScaler, ...), else from
    the first non-null row."""
    arr = _as_array(df, col)
    size = df.schema[col].metadata.get("ml_attr", {}).get("num_attrs")
    if size is not None:
        return int(size)
    first = df.where(column(col).isNotNull()).select(F.size(arr)).first()
    if first is None:
        raise UserError(f"input has no rows with a non-null featuresCol '{col}'")
    return int(first[0])


def _expand(df: DataFrame, col: str, d: int) -> _Expanded:
    """``df`` plus d double columns holding the elements of ``col``; a row whose vector does not
    have d elements fails the job (as in MLlib), a null vector gives null elements."""
    arr = _as_array(df, col)
    prefix = _TMP
    while any(c.startswith(prefix) for c in df.columns):
        prefix += "_"
    names = [f"{prefix}{i}" for i in range(d)]
    checked = F.when(F.size(arr) == d, arr).when(arr.isNotNull(), F.raise_error(F.concat(
        F.lit(f"featuresCol '{col}' has a row of "), F.size(arr).cast(T.StringType()),
        F.lit(f" values; expected {d}"))))
    # two projections, so the conversion runs once per row rather than once per element
    staged = df.withColumn(prefix + "arr", checked)
    items = [F.col(prefix + "arr")[i].cast(T.DoubleType()).alias(n) for i, n in enumerate(names)]
    return _Expanded(staged.select("*", *items).drop(prefix + "arr"), names)


# ---------------------------------------------------------------------- estimator
class KMeans(
    Estimator["KMeansModel"], _KMeansParams, DefaultParamsReadable["KMeans"], DefaultParamsWritable
):
    """K-means (Lloyd) on kmeans-dist's engine, a drop-in for ``pyspark.ml.clustering.KMeans``.

    Same Params and defaults as pyspark.ml's. With ``initialCenters`` and the default
    ``stopRule="mllib"`` / ``emptyClusters="keep"`` it reproduces MLlib's iterations: same
    centres (to rounding), predictions and iteration count.
    """

    _input_kwargs: dict[str, Any]

    @keyword_only
    def __init__(
        self,
        *,
        featuresCol: str = "features",
        predictionCol: str = "prediction",
        k: int = 2,
        initMode: str = "k-means||",
        initSteps: int = 2,
        tol: float = 1e-4,
        maxIter: int = 20,
        seed: int | None = None,
        distanceMeasure: str = "euclidean",
        weightCol: str | None = None,
        solver: str = "auto",
        maxBlockSizeInMB: float = 0.0,
        initialCenters: Sequence[Sequence[float]] | None = None,
        stopRule: str = "mllib",
        emptyClusters: str = "keep",
        handleInvalid: str = "error",
        driverMaxMb: float | None = None,
        algorithm: str = "auto",
        dtype: str = "float64",
    ) -> None:
        super().__init__()
        self._set(**self._input_kwargs)

    @keyword_only
    def setParams(
        self,
        *,
        featuresCol: str = "features",
        predictionCol: str = "prediction",
        k: int = 2,
        initMode: str = "k-means||",
        initSteps: int = 2,
        tol: float = 1e-4,
        maxIter: int = 20,
        seed: int | None = None,
        distanceMeasure: str = "euclidean",
        weightCol: str | None = None,
        solver: str = "auto",
        maxBlockSizeInMB: float = 0.0,
        initialCenters: Sequence[Sequence[float]] | None = None,
        stopRule: str = "mllib",
        emptyClusters: str = "keep",
        handleInvalid: str = "error",
        driverMaxMb: float | None = None,
        algorithm: str = "auto",
        dtype: str = "float64",
    ) -> "KMeans":
        """Sets the given Params (keyword arguments only)."""
        return self._set(**self._input_kwargs)

    def setK(self, value: int) -> "KMeans":
        return self._set(k=value)

    def setInitMode(self, value: str) -> "KMeans":
        return self._set(initMode=value)

    def setInitSteps(self, value: int) -> "KMeans":
        return self._set(initSteps=value)

    def setDriverMaxMb(self, value: float) -> "KMeans":
        return self._set(driverMaxMb=value)

    def setAlgorithm(self, value: str) -> "KMeans":
        return self._set(algorithm=value)

    def setDtype(self, value: str) -> "KMeans":
        return self._set(dtype=value)

    def setDistanceMeasure(self, value: str) -> "KMeans":
        return self._set(distanceMeasure=value)

    def setMaxIter(self, value: int) -> "KMeans":
        return self._set(maxIter=value)

    def setFeaturesCol(self, value: str) -> "KMeans":
        return self._set(featuresCol=value)

    def setPredictionCol(self, value: str) -> "KMeans":
        return self._set(predictionCol=value)

    def setSeed(self, value: int) -> "KMeans":
        return self._set(seed=value)

    def setTol(self, value: float) -> "KMeans":
        return self._set(tol=value)

    def setWeightCol(self, value: str) -> "KMeans":
        return self._set(weightCol=value)

    def setSolver(self, value: str) -> "KMeans":
        """Sets `solver` (no effect in kmeans-dist)."""
        return self._set(solver=value)

    def setMaxBlockSizeInMB(self, value: float) -> "KMeans":
        """Sets `maxBlockSizeInMB` (no effect in kmeans-dist)."""
        return self._set(maxBlockSizeInMB=value)

    def setIntermediateStorageLevel(self, value: str) -> "KMeans":
        """Sets `intermediateStorageLevel` (no effect in kmeans-dist)."""
        return self._set(intermediateStorageLevel=value)

    def setInitialCenters(self, value: Sequence[Sequence[float]]) -> "KMeans":
        return self._set(initialCenters=value)

    def setStopRule(self, value: str) -> "KMeans":
        return self._set(stopRule=value)

    def setEmptyClusters(self, value: str) -> "KMeans":
        return self._set(emptyClusters=value)

    def setHandleInvalid(self, value: str) -> "KMeans":
        """Rows with a null/NaN/infinite feature (or bad weight): "error" or "skip" them."""
        return self._set(handleInvalid=value)

    @classmethod
    def read(cls) -> MLReader["KMeans"]:
        """pyspark.ml's reader of Params, refusing what another class saved (see
        ``_check_saved_class``)."""
        return _EstimatorReader(cls)

    def _seed(self) -> int:
        """The seed as the engine takes it: seed=None means the default (as in pyspark.ml, a
        hash of the class name), and a negative seed is mapped into [0, 2**63)."""
        seed = self.getSeed()
        return (self._defaultParamMap[self.seed] if seed is None else seed) % 2**63

    def _engine_args(self) -> dict[str, Any]:
        """The engine estimator's arguments these Params describe, but k."""
        tol, cosine = self.getTol(), self.getDistanceMeasure() == "cosine"
        # MLlib's cosine rule is 1 - cos(old, new) <= tol; for unit centres that is
        # |old - new| <= sqrt(2 tol), the engine's (Euclidean) centre rule
        center_tol = 0.0 if self.getStopRule() == "no_change" else (
            math.sqrt(2 * tol) if cosine else tol)
        return dict(
            init=self.getInitMode(), seed=self._seed(), max_iter=self.getMaxIter(), tol=0.0,
            center_tol=center_tol, empty_clusters=self.getEmptyClusters(),
            distance=self.getDistanceMeasure(), weight_col=self._weight_col(),
            init_steps=self.getInitSteps(), invalid=self.getHandleInvalid(),
            driver_max_mb=self.getDriverMaxMb(), algorithm=self.getAlgorithm(),
            dtype=self.getDtype(),
        )

    def _shared_pass_key(self) -> tuple | None:
        """Estimators with equal keys differ at most in k, so one engine pass fits them all
        (see ``fitMultiple``); None where k is fixed by ``initialCenters``."""
        if self.getInitialCenters() is not None:
            return None
        return (self.getFeaturesCol(), *sorted(self._engine_args().items()))

    def _fit(self, dataset: DataFrame) -> "KMeansModel":
        return self._fit_ks(dataset, [self])[0]

    def fitMultiple(self, dataset: DataFrame, paramMaps: Sequence[dict]) -> Iterator:
        """pyspark.ml's ``fitMultiple`` (what ``CrossValidator`` and ``TrainValidationSplit``
        call): param maps that differ only in ``k`` are fitted together, in the same passes over
        the data, each model exactly what its own ``fit`` gives; the rest one by one."""
        estimators = [self.copy(pm) for pm in paramMaps]
        groups: dict[Any, list[int]] = {}
        for i, est in enumerate(estimators):
            key = est._shared_pass_key()
            groups.setdefault(("alone", i) if key is None else key, []).append(i)
        if len(groups) == len(estimators):
            return super().fitMultiple(dataset, paramMaps)
        models: list[KMeansModel | None] = [None] * len(estimators)
        for members in groups.values():
            fitted = estimators[members[0]]._fit_ks(dataset, [estimators[i] for i in members])
            for i, model in zip(members, fitted):
                models[i] = model
        return iter(list(enumerate(models)))  # a list iterator: safe across CV's threads

    def _fit_ks(self, dataset: DataFrame, estimators: list["KMeans"]) -> list["KMeansModel"]:
        """The models of ``estimators`` (this one's Params but k), fitted in one engine run."""
        for est in estimators:
            est._validate()
            est._check_prediction_col(dataset)
        args = self._engine_args()
        centers = self.getInitialCenters()
        if centers is not None:
            args["init"] = np.asarray(centers, dtype=np.float64)
        col = self.getFeaturesCol()
        expanded = _expand(dataset, col, _num_features(dataset, col))
        try:
            fitted = _Engine(self.getK(), **args).fit_many(
                expanded.df, [est.getK() for est in estimators], features=expanded.columns)
        except InvalidRows as exc:  # name this API's switch, not the engine's
            raise InvalidRows(exc.problems, "set handleInvalid='skip'") from None
        return [est._model(dataset, fitted[est.getK()]) for est in estimators]

    def _model(self, dataset: DataFrame, fitted: Any) -> "KMeansModel":
        """The drop-in model of an engine fit, with pyspark.ml's training summary. It takes this
        estimator's uid, as pyspark.ml's models do: Params are keyed by their parent's uid, so
        only then do the estimator's Param objects (``model.getOrDefault(km.k)``) read it."""
        model = self._copyValues(KMeansModel(fitted.centroids)._resetUid(self.uid))
        model._summary = KMeansSummary(
            predictions=model.transform(dataset), predictionCol=model.getPredictionCol(),
            featuresCol=self.getFeaturesCol(), k=self.getK(),
            clusterSizes=list(fitted.cluster_sizes), trainingCost=float(fitted.inertia),
            numIter=fitted.n_iter,
        )
        return model


# ---------------------------------------------------------------------- model
@dataclass(frozen=True)
class KMeansSummary:
    """The training summary of a fitted :py:class:`KMeansModel` (pyspark.ml's fields)."""

    predictions: DataFrame  #: the training data through the model's ``transform``
    predictionCol: str
    featuresCol: str
    k: int
    clusterSizes: list[int]  #: rows per cluster
    trainingCost: float  #: sum of squared distances to the returned centres (cosine: 1 - cos)
    numIter: int

    @property
    def cluster(self) -> DataFrame:
        """The prediction column of ``predictions``."""
        return self.predictions.select(self.predictionCol)


class KMeansModel(Model, _KMeansParams, MLWritable, MLReadable["KMeansModel"]):
    """Model fitted by :py:class:`KMeans`: the cluster centres, a drop-in for
    ``pyspark.ml.clustering.KMeansModel``."""

    def __init__(self, centers: np.ndarray | Sequence[Sequence[float]]) -> None:
        super().__init__()
        self._centers = np.array(centers, dtype=np.float64)
        self._summary: KMeansSummary | None = None

    def setFeaturesCol(self, value: str) -> "KMeansModel":
        return self._set(featuresCol=value)

    def setPredictionCol(self, value: str) -> "KMeansModel":
        return self._set(predictionCol=value)

    def clusterCenters(self) -> list[np.ndarray]:
        """The cluster centers, as a list of NumPy arrays."""
        return [c.copy() for c in self._centers]

    def __repr__(self) -> str:
        """pyspark.ml's (Scala's ``toString``): uid, k, distance measure, number of features."""
        return (f"KMeansModel: uid={self.uid}, k={len(self._centers)}, "
                f"distanceMeasure={self.getDistanceMeasure()}, numFeatures={self.numFeatures}")

    @property
    def numFeatures(self) -> int:
        """Number of features, i.e. the length of the vectors this transforms."""
        return int(self._centers.shape[1])

    @property
    def hasSummary(self) -> bool:
        """Whether a training summary exists (not after ``load``)."""
        return self._summary is not None

    @property
    def summary(self) -> KMeansSummary:
        """The training summary; raises like pyspark.ml's when there is none."""
        if self._summary is None:
            raise RuntimeError(f"No training summary available for this {type(self).__name__}")
        return self._summary

    def _engine(self) -> _EngineModel:
        d = self.numFeatures
        return _EngineModel(self._centers, [f"f{i}" for i in range(d)],
                            distance=self.getDistanceMeasure())

    def predict(self, value: Vector | Sequence[float] | np.ndarray) -> int:
        """The cluster of one feature vector (a pyspark.ml vector or an array-like)."""
        x = value.toArray() if isinstance(value, Vector) else np.asarray(value, dtype=np.float64)
        return int(self._engine().predict(x.reshape(1, -1))[0])

    def _transform(self, dataset: DataFrame) -> DataFrame:
        self._check_prediction_col(dataset)
        pred = self.getPredictionCol()
        expanded = _expand(dataset, self.getFeaturesCol(), self.numFeatures)
        out = self._engine().transform(expanded.df, prediction_col=pred,
                                       features=expanded.columns)
        return out.drop(*expanded.columns)

    def write(self) -> MLWriter:
        return _ModelWriter(self)

    @classmethod
    def read(cls) -> MLReader["KMeansModel"]:
        return _ModelReader(cls)


def _check_saved_class(metadata: dict, cls: type, path: str) -> None:
    """UserError unless ``path`` holds a ``cls`` (what this module saves), e.g. a stage
    pyspark.ml saved: it keeps its centres in another form, and its class is not this one."""
    expected = f"{cls.__module__}.{cls.__name__}"
    found = metadata.get("class")
    if found == expected:
        return
    refit = ("; to start from its centres, fit kmeans_dist.ml.KMeans with "
             "initialCenters=<its clusterCenters()>" if cls is KMeansModel else "")
    raise UserError(f"{path} holds a saved {found}, not a {expected}: kmeans_dist.ml reads only "
                    f"the stages it saved itself{refit}")


class _EstimatorReader(DefaultParamsReader):
    """pyspark.ml's reader of an estimator's Params, for this class only."""

    def load(self, path: str) -> "KMeans":
        metadata = DefaultParamsReader.loadMetadata(path, self.sparkSession)
        _check_saved_class(metadata, self.cls, path)
        instance = self.cls()
        instance._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(instance, metadata)
        return instance


class _ModelWriter(MLWriter):
    """Params as pyspark.ml metadata, the centres as one JSON line in ``path/data``."""

    def __init__(self, instance: KMeansModel) -> None:
        super().__init__()
        self.instance = instance

    def saveImpl(self, path: str) -> None:
        DefaultParamsWriter.saveMetadata(self.instance, path, self.sparkSession)
        data = json.dumps({"clusterCenters": self.instance._centers.tolist()})
        self.sparkSession.createDataFrame([(data,)], "value string").coalesce(1) \
            .write.text(os.path.join(path, "data"))


class _ModelReader(MLReader[KMeansModel]):
    """Reads what :py:class:`_ModelWriter` wrote; the loaded model has no summary."""

    def __init__(self, cls: type[KMeansModel]) -> None:
        super().__init__()
        self.cls = cls

    def load(self, path: str) -> KMeansModel:
        metadata = DefaultParamsReader.loadMetadata(path, self.sparkSession)
        _check_saved_class(metadata, self.cls, path)
        data = json.loads(self.sparkSession.read.text(os.path.join(path, "data")).first()[0])
        model = self.cls(data["clusterCenters"])
        model._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(model, metadata)
        return model
