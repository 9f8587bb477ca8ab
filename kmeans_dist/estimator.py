"""KMeans: parameters checked up front, then fit = blocks -> init -> Lloyd loop -> KMeansModel."""

from __future__ import annotations

import logging
import numbers
import time
from typing import Any, Sequence

import numpy as np
from pyspark.sql import DataFrame

from kmeans_dist import data, engine, io, kernels, tasks
from kmeans_dist import init as inits
from kmeans_dist.model import DISTANCES, KMeansModel
from kmeans_dist.transport import TRANSPORTS, Transport

log = logging.getLogger("kmeans_dist")


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_nonnegative(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def read_centroids_csv(path: str) -> np.ndarray:
    """Centroids from a CSV file of k rows x d columns (a header line is allowed)."""
    text = io.read_text(path, what="init centroid file")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if lines and not _is_number(lines[0].split(",")[0]):
        lines = lines[1:]
    try:
        rows = [[float(v) for v in ln.split(",")] for ln in lines]
    except ValueError as exc:
        raise ValueError(f"init centroid file {path} has a non-numeric value: {exc}") from None
    if not rows or len({len(r) for r in rows}) != 1:
        raise ValueError(f"init centroid file {path} must have k rows of equal length")
    return np.array(rows)


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


class KMeans:
    """Lloyd's k-means on Spark, exact to scikit-learn's ``KMeans(algorithm="lloyd")``.

    init: ``"k-means||"`` (default), ``"k-means++"``, ``"random"`` (k distinct random rows), an
    array of k x d centroids, or the path of a CSV file of them. Stops when no row changes
    cluster, after ``max_iter`` iterations, or (``tol > 0``) when the total squared centroid shift
    is at most ``tol`` times the mean feature variance (scikit-learn's meaning), or
    (``center_tol > 0``) when no centroid moved farther than ``center_tol`` (Spark MLlib's tol).
    ``empty_clusters``: ``"farthest"`` moves an empty cluster to the row farthest from its
    centroid (scikit-learn), ``"keep"`` leaves its centroid where it was (Spark MLlib).
    """

    def __init__(
        self,
        k: int,
        *,
        init: str | np.ndarray = "k-means||",
        seed: int | None = None,
        max_iter: int = 300,
        tol: float = 0.0,
        distance: str = "euclidean",
        weight_col: str | None = None,
        init_steps: int = 2,
        block_rows: int | None = None,
        num_partitions: int | None = None,
        use_numba: bool | None = None,
        transport: str = "resident",
        center_tol: float = 0.0,
        empty_clusters: str = "farthest",
    ) -> None:
        self.k = _check_int("k", k, 1)
        self.max_iter = _check_int("max_iter", max_iter, 1)
        self.init_steps = _check_int("init_steps", init_steps, 1)
        if block_rows is not None:
            block_rows = _check_int("block_rows", block_rows, 1)
        if num_partitions is not None:
            num_partitions = _check_int("num_partitions", num_partitions, 1)
        self.tol = _check_nonnegative("tol", tol)
        self.center_tol = _check_nonnegative("center_tol", center_tol)
        if empty_clusters not in engine.EMPTY_POLICIES:
            raise ValueError(f"unknown empty_clusters '{empty_clusters}'; use one of "
                             f"{', '.join(engine.EMPTY_POLICIES)}")
        self.empty_clusters = empty_clusters
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown transport '{transport}'; use one of {', '.join(TRANSPORTS)}")
        if distance not in DISTANCES:
            raise ValueError(f"unknown distance '{distance}'; use one of {', '.join(DISTANCES)}")
        if isinstance(init, str):
            if init not in inits.INITS and not _looks_like_path(init):
                raise ValueError(
                    f"unknown init '{init}'; use one of {', '.join(inits.INITS)} or a CSV file path"
                )
        else:
            init = np.asarray(init, dtype=np.float64)
            if init.ndim != 2 or init.shape[0] != self.k:
                raise ValueError(f"init centroids have shape {init.shape}, expected k={self.k} rows")
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (2**63))
        self.seed = _check_int("seed", seed, 0)
        self.init = init
        self.distance = distance
        self.weight_col = weight_col
        self.block_rows = block_rows
        self.num_partitions = num_partitions
        self.use_numba = use_numba
        self.transport = transport

    def params(self) -> dict[str, Any]:
        """The fit parameters, as recorded in the saved model."""
        return {
            "k": self.k,
            "init": self.init if isinstance(self.init, str) else "explicit",
            "seed": self.seed,
            "max_iter": self.max_iter,
            "tol": self.tol,
            "distance": self.distance,
            "weight_col": self.weight_col,
            "init_steps": self.init_steps,
            "center_tol": self.center_tol,
            "empty_clusters": self.empty_clusters,
        }

    # ------------------------------------------------------------------ fitting
    def fit(self, df: DataFrame, features: Sequence[str] | None = None) -> KMeansModel:
        """Cluster the rows of ``df`` on ``features`` (default: every numeric column)."""
        started = time.perf_counter()
        features = data.resolve_features(df, features, self.weight_col)
        d = len(features)
        given = self._given_centroids(d)
        frame = data.block_frame(
            df, features, weight_col=self.weight_col, block_rows=self.block_rows,
            cosine=self.distance == "cosine",
            num_partitions=self.num_partitions or _default_partitions(df),
        )
        transport = TRANSPORTS[self.transport](data.block_rdd(frame, d))
        try:
            summary, offsets = self._summarize(transport, d)
            centroids = self._initial_centroids(transport, given, summary.rows, offsets)
            tol_abs = self.tol * float(np.mean(summary.m2 / summary.rows)) if self.tol else 0.0
            result = engine.lloyd(
                transport, centroids, offsets=offsets, max_iter=self.max_iter, tol_abs=tol_abs,
                center_tol=self.center_tol, empty=self.empty_clusters,
                cosine=self.distance == "cosine", numba=self.use_numba,
            )
        finally:
            transport.release()
        model = KMeansModel(
            result.centroids, features, distance=self.distance, inertia=result.inertia,
            n_iter=result.n_iter, converged=result.converged, stop=result.stop,
            cluster_sizes=result.cluster_sizes, history=result.history, params=self.params(),
        )
        log.info("fit done: k=%d, %d rows, inertia %.6g, %d iterations, stop=%s, %.1fs",
                 self.k, summary.rows, model.inertia, model.n_iter, model.stop,
                 time.perf_counter() - started)
        return model

    def _given_centroids(self, d: int) -> np.ndarray | None:
        if isinstance(self.init, str) and self.init in inits.INITS:
            return None
        source = self.init if isinstance(self.init, str) else None
        raw = read_centroids_csv(source) if source else self.init
        c = inits.explicit(raw, self.k, d, f"init centroid file {source}" if source else "init centroids")
        if self.distance == "cosine":
            if not np.any(c != 0, axis=1).all():
                raise ValueError("init centroids include an all-zero row, which cosine distance cannot use")
            c = kernels.normalize_rows(c)
        return c

    def _summarize(self, transport: Transport, d: int) -> tuple[tasks.Summary, list[int]]:
        """Caches the blocks (first pass) and checks what was dropped; returns row offsets."""
        parts = transport.run(tasks.summarize, d)
        total = kernels.fold(parts)
        if total.problems:
            reason, (count, example) = next(iter(total.problems.items()))
            raise ValueError(f"{count} input rows have a {reason}, e.g. {example}")
        if total.rows == 0:
            raise ValueError("input has no rows")
        if total.rows < self.k:
            raise too_many_clusters(self.k, total.rows)
        offsets = np.concatenate([[0], np.cumsum([p.rows for p in parts])])[:-1]
        return total, [int(o) for o in offsets]

    def _initial_centroids(self, transport, given, n_rows: int, offsets: list[int]) -> np.ndarray:
        if given is not None:
            return given
        t0 = time.perf_counter()
        if self.init == "random":
            c = inits.random_rows(transport, self.k, self.seed, n_rows, offsets)
        elif self.init == "k-means++":
            c = inits.kmeans_plus_plus(transport, self.k, self.seed, offsets)
        else:
            c = inits.kmeans_parallel(transport, self.k, self.seed, offsets, self.init_steps)
        log.info("init %s: %d centroids in %.2fs", self.init, self.k, time.perf_counter() - t0)
        return c


def too_many_clusters(k: int, rows: int) -> ValueError:
    return ValueError(f"k={k} is larger than the number of rows ({rows})")


def _looks_like_path(s: str) -> bool:
    return s.lower().endswith(".csv") or "/" in s


def _default_partitions(df: DataFrame) -> int:
    """As many partitions as the cluster has cores: each iteration pays a fixed cost per task."""
    return df.sparkSession.sparkContext.defaultParallelism
