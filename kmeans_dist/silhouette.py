"""Exact mean silhouette of a model's clustering, on a seeded sample of the rows, computed on Spark.

The sample is chosen by content, not position: every valid row gets the hash
``xxhash64(seed, features...)`` and the ``sample_size`` rows with the smallest hash (ties broken by
the feature values) are taken, so the same data gives the same sample on any partitioning or row
order. Only the sample (sample_size x d) reaches the driver; it is labelled with the model's own
assignment, then shipped in the closure of ``spark.range(slices).mapInArrow(...)`` so that each task
scores a slice of the sample against all of it, in numpy blocks of rows (DataFrame APIs only, so it
runs on Spark Connect too).

Distances: Euclidean, or the cosine distance 1 - cos for a cosine model, exactly what scikit-learn's
``silhouette_score(x, labels, metric="euclidean" | "cosine")`` gives on the same sample: a row
alone in its cluster scores 0. The score is undefined (``None``, with a reason) for k=1, when the
sample falls in a single cluster, and when every sampled row is its own cluster. Rows with a null,
NaN or infinite feature (and, for cosine, all-zero rows) are left out, as the fit refuses them.
Rows are unweighted, as in scikit-learn.
"""

from __future__ import annotations

import functools
import logging
import numbers
from dataclasses import dataclass
from functools import reduce
from typing import Iterator, Sequence

import numpy as np
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from kmeans_dist import kernels
from kmeans_dist.config import default_parallelism
from kmeans_dist.data import check_model_features, column
from kmeans_dist.errors import UserError
from kmeans_dist.threads import task_blas_threads

log = logging.getLogger("kmeans_dist")

#: distance-matrix entries per numpy block inside a task (16 MB of float64)
BLOCK_ENTRIES = 1 << 21
#: fewest sample rows worth a Spark task of their own
MIN_SLICE_ROWS = 256

SCHEMA = "slice long, model int, s_sum double"
#: most clusters summed by a one-hot GEMM (its matrix is sample rows x clusters)
ONEHOT_MAX = 256
K1_REASON = "k=1: the silhouette needs at least two clusters"


def score(model, df: DataFrame, sample_size: int = 10000,
          seed: int = 0) -> tuple[float | None, str | None]:
    """(mean silhouette, None), or (None, why it is undefined) for ``model`` on a seeded sample of
    ``df`` (features under the model's names)."""
    return score_many([model], df, sample_size, seed)[0]


def score_many(models: Sequence, df: DataFrame, sample_size: int = 10000,
               seed: int = 0) -> list[tuple[float | None, str | None]]:
    """``score`` for models over the same features and distance (a range of k, say): one sample,
    and one Spark job whose distances serve every model."""
    sample_size = _check_int("sample_size", sample_size, 2)
    seed = _check_int("seed", seed, 0)
    if not models:
        raise ValueError("no models to score")
    first = models[0]
    if any(m.features != first.features or m.distance != first.distance for m in models):
        raise ValueError("models scored together must share their features and distance")
    check_model_features(df, first.features)
    results: list = [(None, K1_REASON) if m.k == 1 else None for m in models]
    todo = [i for i, m in enumerate(models) if m.k > 1]
    if todo:
        cosine = first.distance == "cosine"
        x = sample(df, first.features, sample_size, seed, cosine)
        scored = score_sample(df.sparkSession, x, [models[i].predict(x) for i in todo], cosine)
        for i, result in zip(todo, scored):
            results[i] = result
    return results


def silhouette(model, df: DataFrame, sample_size: int = 10000, seed: int = 0) -> float | None:
    """The mean silhouette, or None with the reason logged as a warning (see ``score``)."""
    value, reason = score(model, df, sample_size, seed)
    if value is None:
        log.warning("silhouette undefined: %s", reason)
    return value


def sample(df: DataFrame, features: Sequence[str], size: int, seed: int = 0,
           cosine: bool = False) -> np.ndarray:
    """The ``size`` valid rows with the smallest ``xxhash64(seed, features)`` (ties: by value), as
    a float64 array in that order; every valid row when there are fewer."""
    size = _check_int("sample_size", size, 1)
    seed = _check_int("seed", seed, 0)
    cols = [column(c).cast(T.DoubleType()).alias(f"f{i}") for i, c in enumerate(features)]
    names = [f"f{i}" for i in range(len(features))]
    picked = (df.select(*cols).where(_valid(names, cosine))
              .withColumn("_hash", F.xxhash64(F.lit(seed).cast(T.LongType()), *names))
              .orderBy("_hash", *names).limit(size).select(*names))
    table = picked.toArrow()
    if table.num_rows == 0:
        return np.empty((0, len(features)))
    return np.column_stack([table.column(n).to_numpy() for n in names]).astype(np.float64)


def _valid(names: list[str], cosine: bool) -> Column:
    """Rows the fit would accept: finite features and, for cosine, not all zero."""
    finite = [F.col(n).isNotNull() & ~F.isnan(n) & (F.abs(n) != float("inf")) for n in names]
    ok = reduce(lambda a, b: a & b, finite)
    if cosine:
        ok = ok & reduce(lambda a, b: a | b, [F.col(n) != 0 for n in names])
    return ok


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise UserError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------- scoring


@dataclass
class Grouping:
    """One labelling of the sample, arranged for per-cluster sums of a distance block: each
    row's non-empty cluster and the clusters' sizes, the columns in cluster order and where each
    cluster starts (for many clusters), and whether a one-hot GEMM does the sums (few clusters)."""

    compact: np.ndarray  # each row's non-empty cluster, numbered 0..clusters-1
    counts: np.ndarray  # rows in each non-empty cluster
    order: np.ndarray  # sample rows sorted by cluster (stable)
    starts: np.ndarray  # first position of each non-empty cluster in ``order``
    dense: bool  # sum by a GEMM with the one-hot membership matrix (built in the task)

    @classmethod
    def of(cls, labels: np.ndarray) -> "Grouping":
        _, compact, counts = np.unique(labels, return_inverse=True, return_counts=True)
        order = np.argsort(compact, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        return cls(compact.reshape(-1), counts, order, starts, len(counts) <= ONEHOT_MAX)

    @functools.cached_property
    def membership(self) -> np.ndarray:
        """The (rows x clusters) one-hot matrix of the labelling."""
        m = np.zeros((len(self.compact), len(self.counts)))
        m[np.arange(len(self.compact)), self.compact] = 1.0
        return m

    def cluster_sums(self, dist: np.ndarray) -> np.ndarray:
        """Each row's summed distance to every cluster: a GEMM with the membership matrix when
        the clusters are few (about 4x faster), a sort and ``reduceat`` otherwise."""
        if self.dense:
            return dist @ self.membership
        return np.add.reduceat(dist[:, self.order], self.starts, axis=1)

    def undefined(self) -> str | None:
        """Why the silhouette is undefined for this labelling (scikit-learn's domain), if it is."""
        n, clusters = len(self.compact), len(self.counts)
        if n == 0:
            return "no valid rows to sample (every row has a null, NaN or infinite feature)"
        if clusters < 2:
            return f"the {n} sampled rows all fall in one cluster"
        if clusters == n:
            return f"each of the {n} sampled rows is alone in its cluster"
        return None


def score_sample(spark: SparkSession, x: np.ndarray, labelings: Sequence[np.ndarray],
                 cosine: bool = False) -> list[tuple[float | None, str | None]]:
    """For each labelling of the sample ``x``, (mean silhouette, None) or (None, reason). The
    distances are computed once, on Spark tasks, for every labelling at the same time."""
    groupings = [Grouping.of(np.asarray(lab)) for lab in labelings]
    results: list[tuple[float | None, str | None]] = [(None, g.undefined()) for g in groupings]
    todo = [i for i, g in enumerate(groupings) if g.undefined() is None]
    if not todo:
        return results
    slices = _slices(spark, len(x))
    scorer = SliceScorer(_prepared(x, cosine), [groupings[i] for i in todo], cosine, slices)
    rows = spark.range(slices, numPartitions=slices).mapInArrow(scorer, SCHEMA).collect()
    totals = np.zeros(len(todo))
    for r in sorted(rows, key=lambda r: (r["slice"], r["model"])):
        totals[r["model"]] += r["s_sum"]
    for j, i in enumerate(todo):
        results[i] = (float(totals[j] / len(x)), None)
    return results


def _prepared(x: np.ndarray, cosine: bool) -> np.ndarray:
    """Rows as the distances want them: unit length (cosine), or centred on their mean so the
    GEMM form of the distance loses no precision to a far-off origin."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    return kernels.normalize_rows(x) if cosine else x - x.mean(axis=0)


def _slices(spark: SparkSession, n: int) -> int:
    """Spark tasks to spread ``n`` sample rows over: two per core, each of a useful size."""
    cores = default_parallelism(spark)
    return int(max(1, min(2 * cores, -(-n // MIN_SLICE_ROWS))))


class SliceScorer:
    """The mapInArrow function: for each slice id, the silhouette sum of its rows of the sample
    under every labelling, distances computed once per block of rows."""

    def __init__(self, x: np.ndarray, groupings: list[Grouping], cosine: bool,
                 slices: int) -> None:
        self.x = x
        self.x_sq = kernels.squared_norms(x)
        self.groupings = groupings
        self.cosine = cosine
        self.slices = slices
        self.block_rows = max(1, BLOCK_ENTRIES // len(x))

    def __call__(self, batches: Iterator) -> Iterator:
        with task_blas_threads():
            yield from self._score(batches)

    def _score(self, batches: Iterator) -> Iterator:
        import pyarrow as pa

        for batch in batches:
            for s in batch.column(0).to_numpy():
                sums = self.slice_sums(int(s))
                yield pa.RecordBatch.from_pydict({
                    "slice": pa.array([int(s)] * len(sums), pa.int64()),
                    "model": pa.array(range(len(sums)), pa.int32()),
                    "s_sum": pa.array(sums, pa.float64()),
                })

    def slice_sums(self, s: int) -> list[float]:
        """Silhouette sums of the rows of slice ``s``, one per labelling."""
        n = len(self.x)
        lo, hi = s * n // self.slices, (s + 1) * n // self.slices
        sums = np.zeros(len(self.groupings))
        for start in range(lo, hi, self.block_rows):
            rows = np.arange(start, min(start + self.block_rows, hi))
            dist = self.distances(rows)
            sums += [silhouettes(dist, rows, g).sum() for g in self.groupings]
        return sums.tolist()

    def distances(self, rows: np.ndarray) -> np.ndarray:
        """Distances from ``rows`` to every sample row (0 to themselves)."""
        xb = self.x[rows]
        if self.cosine:
            dist = np.clip(1.0 - xb @ self.x.T, 0.0, 2.0)
        else:
            d2 = xb @ self.x.T
            d2 *= -2.0
            d2 += self.x_sq[rows][:, None]
            d2 += self.x_sq[None, :]
            dist = np.sqrt(np.maximum(d2, 0.0, out=d2), out=d2)
        dist[np.arange(len(rows)), rows] = 0.0
        return dist


def silhouettes(dist: np.ndarray, rows: np.ndarray, g: Grouping) -> np.ndarray:
    """s(i) = (b - a) / max(a, b) of ``rows`` from their distances to every sample row: a, the
    mean distance to the rest of the row's cluster; b, the smallest mean distance to another
    cluster; 0 for a row alone in its cluster (or where a = b = 0)."""
    per_cluster = g.cluster_sums(dist)
    own = g.compact[rows]
    size = g.counts[own]
    at = np.arange(len(rows))
    a = np.divide(per_cluster[at, own], size - 1, out=np.zeros(len(rows)), where=size > 1)
    mean_other = per_cluster / g.counts
    mean_other[at, own] = np.inf
    b = mean_other.min(axis=1)
    denom = np.maximum(a, b)
    return np.divide(b - a, denom, out=np.zeros(len(rows)), where=(size > 1) & (denom > 0))
