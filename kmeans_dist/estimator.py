"""KMeans: parameters checked up front, then fit = blocks -> init -> Lloyd loop -> KMeansModel."""

from __future__ import annotations

import hashlib
import logging
import numbers
import time
from typing import Any, Sequence

import numpy as np
from pyspark.sql import DataFrame

from kmeans_dist import data, engine, io, kernels, tasks
from kmeans_dist.checkpoint import Checkpoint, fingerprint
from kmeans_dist import init as inits
from kmeans_dist.model import DISTANCES, KMeansModel
from kmeans_dist import transport as transports
from kmeans_dist.config import default_parallelism, is_connect
from kmeans_dist.errors import UserError, cleanup
from kmeans_dist.transport import Transport

log = logging.getLogger("kmeans_dist")

#: what to do with rows that have a null/NaN/infinite feature, a bad weight or (cosine) no norm
INVALID_POLICIES = ("error", "skip")


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise UserError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise UserError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise UserError(f"unknown {name} '{value}'; use one of {', '.join(choices)}")
    return value


def _check_nonnegative(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
        raise UserError(f"{name} must be a number >= 0, got {value!r}")
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
        raise UserError(f"init centroid file {path} has a non-numeric value: {exc}") from None
    if not rows or len({len(r) for r in rows}) != 1:
        raise UserError(f"init centroid file {path} must have k rows of equal length")
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
    array of k x d centroids, the path of a CSV file of them, or a previous ``KMeansModel`` (a warm
    start, see ``_given_centroids``: its clusters' stable ids carry over). Stops when no row changes
    cluster, after ``max_iter`` iterations, or (``tol > 0``) when the total squared centroid shift
    is at most ``tol`` times the mean feature variance (scikit-learn's meaning), or
    (``center_tol > 0``) when no centroid moved farther than ``center_tol`` (Spark MLlib's tol).
    ``n_init``: starts per fit (each from its own seed), the lowest inertia wins; the model's
    ``restarts`` lists every start. ``checkpoint``: a directory where the state is saved after
    every iteration; with ``resume=True`` a fit continues from it (same result as uninterrupted). ``empty_clusters``: ``"farthest"`` moves an empty cluster to the row farthest from its
    centroid (scikit-learn), ``"keep"`` leaves its centroid where it was (Spark MLlib).
    ``invalid``: rows with a null/NaN/infinite feature, a bad weight or (cosine) a zero vector are
    an error naming the count and an example (``"error"``), or dropped and counted by reason in
    the model's ``dropped`` (``"skip"``). ``transport``: how the passes reach the data (see
    ``kmeans_dist.transport``); ``"auto"`` fits packed rows of at most ``driver_max_mb`` MiB in
    the driver process (default: the smaller of 128 MiB and 1/8 of the driver's available memory;
    0: never) and the rest on the executors. ``algorithm``: ``"auto"`` (default) skips, from the
    second pass on, the rows whose nearest centroid provably stays (Hamerly's distance bounds,
    with a margin for rounding: the same labels, centroids and iterations as ``"lloyd"``, bit for
    bit, at a fraction of the distances), for models of at least 32 centroids, where it pays;
    ``"lloyd"`` computes every distance in every pass.
    ``dtype``: ``"float64"`` (default) or ``"float32"``: the blocks hold the features in it and
    the distance GEMM runs in it (half the executor memory for the features, about twice the
    GEMM's speed); sums and inertia are accumulated in float64 and the centroids stay float64.
    """

    def __init__(
        self,
        k: int,
        *,
        init: str | np.ndarray | KMeansModel = "k-means||",
        seed: int | None = None,
        max_iter: int = 300,
        tol: float = 0.0,
        distance: str = "euclidean",
        weight_col: str | None = None,
        init_steps: int = 2,
        block_rows: int | None = None,
        num_partitions: int | None = None,
        use_numba: bool | None = None,
        transport: str = "auto",
        center_tol: float = 0.0,
        empty_clusters: str = "farthest",
        invalid: str = "error",
        n_init: int = 1,
        checkpoint: str | None = None,
        resume: bool = False,
        driver_max_mb: float | None = None,
        algorithm: str = "auto",
        dtype: str = "float64",
    ) -> None:
        self.k = _check_int("k", k, 1)
        self.max_iter = _check_int("max_iter", max_iter, 1)
        self.init_steps = _check_int("init_steps", init_steps, 1)
        self.n_init = _check_int("n_init", n_init, 1)
        if resume and checkpoint is None:
            raise UserError("resume needs a checkpoint directory")
        self.checkpoint = checkpoint
        self.resume = bool(resume)
        if block_rows is not None:
            block_rows = _check_int("block_rows", block_rows, 1)
        if num_partitions is not None:
            num_partitions = _check_int("num_partitions", num_partitions, 1)
        self.tol = _check_nonnegative("tol", tol)
        self.center_tol = _check_nonnegative("center_tol", center_tol)
        self.empty_clusters = _check_choice("empty_clusters", empty_clusters, engine.EMPTY_POLICIES)
        self.invalid = _check_choice("invalid", invalid, INVALID_POLICIES)
        _check_choice("transport", transport, ("auto", *transports.TRANSPORTS))
        if driver_max_mb is not None:
            driver_max_mb = _check_nonnegative("driver_max_mb", driver_max_mb)
        _check_choice("distance", distance, DISTANCES)
        self.algorithm = _check_choice("algorithm", algorithm, engine.ALGORITHMS)
        if isinstance(dtype, (type, np.dtype)):  # np.float32, np.dtype("float32")
            dtype = np.dtype(dtype).name
        self.dtype = _check_choice("dtype", dtype, kernels.DTYPES)
        if isinstance(init, str):
            if init not in inits.INITS and not _looks_like_path(init):
                raise UserError(
                    f"unknown init '{init}'; use one of {', '.join(inits.INITS)} or a CSV file path"
                )
        elif isinstance(init, KMeansModel):
            if init.distance != distance:
                raise UserError(f"the init model uses distance '{init.distance}', "
                                f"but distance='{distance}'")
        else:
            init = np.asarray(init, dtype=np.float64)
            if init.ndim != 2 or init.shape[0] != self.k:
                raise UserError(f"init centroids have shape {init.shape}, expected k={self.k} rows")
        #: whether the seed was chosen by the caller (a resume must then use that seed)
        self.seed_given = seed is not None
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
        self.driver_max_mb = driver_max_mb

    def params(self) -> dict[str, Any]:
        """The fit parameters, as recorded in the saved model."""
        return {
            "k": self.k,
            **self._init_params(),
            "seed": self.seed,
            "max_iter": self.max_iter,
            "tol": self.tol,
            "distance": self.distance,
            "weight_col": self.weight_col,
            "init_steps": self.init_steps,
            "n_init": self.n_init,
            "center_tol": self.center_tol,
            "empty_clusters": self.empty_clusters,
            "invalid": self.invalid,
            "algorithm": self.algorithm,
            "dtype": self.dtype,
        }

    def _init_params(self) -> dict[str, Any]:
        """How the fit starts, as recorded: the init's name; for a warm start also the previous
        model's k and a digest of its centroids (so a checkpoint of another start is refused)."""
        if isinstance(self.init, str):
            return {"init": self.init}
        if not isinstance(self.init, KMeansModel):
            return {"init": "explicit"}
        digest = hashlib.sha256(self.init.centroids.tobytes()).hexdigest()[:16]
        return {"init": "model", "init_model": {"k": self.init.k, "centroids_sha256": digest}}

    # ------------------------------------------------------------------ fitting
    def fit(self, df: DataFrame, features: Sequence[str] | None = None) -> KMeansModel:
        """Cluster the rows of ``df`` on ``features`` (default: every numeric column)."""
        return self.fit_many(df, [self.k], features)[self.k]

    def fit_many(self, df: DataFrame, ks: Sequence[int],
                 features: Sequence[str] | None = None) -> dict[int, KMeansModel]:
        """For each k in ``ks``, the best of ``n_init`` starts, all fitted in the same passes over
        the data (a pass computes every running model's partials); each model is exactly what
        fitting it alone gives."""
        ks = sorted({_check_int("k", k, 1) for k in ks})
        started = time.perf_counter()
        features = data.resolve_features(df, features, self.weight_col)
        d = len(features)
        given = self._given_centroids(features)
        if given is not None and ks != [self.k]:
            raise UserError(f"explicit init centroids fix k={self.k}; cannot fit k={ks}")
        spark = df.sparkSession
        transports.check(self.transport, is_connect(spark))
        packed = data.packing(
            df, features, weight_col=self.weight_col, block_rows=self.block_rows,
            cosine=self.distance == "cosine",
            num_partitions=self.num_partitions or default_parallelism(spark), dtype=self.dtype,
        )
        name, verdict = transports.choose(self.transport, is_connect(spark), packed, d,
                                          self.driver_max_mb)
        transport = transports.make(name, packed, d, verdict)
        ran = {"name": name}
        # a failing release must not replace an error of the fit (nor its exit code)
        with cleanup(transport.release, f"releasing the {name} transport"):
            summary = self._summarize(transport, d, max(ks), _ks_label(ks))
            ckpt, saved = self._checkpoint(features, ks, summary, given)
            if saved is not None:
                log.info("resuming from %s at iteration %d", ckpt.path, saved["iteration"])
                starts = [tuple(s) for s in saved["starts"]]
                init_seconds = saved["init_seconds"]
                centroids = [np.array(r["centroids"]) for r in saved["runs"]]
            else:
                starts, init_seconds, centroids = self._starts(transport, given, ks,
                                                               summary.rows)
            tol_abs = self.tol * float(np.mean(summary.m2 / summary.rows)) if self.tol else 0.0
            results = engine.lloyd_many(
                transport, centroids, max_iter=self.max_iter, tol_abs=tol_abs,
                center_tol=self.center_tol, empty=self.empty_clusters,
                cosine=self.distance == "cosine", numba=self.use_numba,
                algorithm=self.algorithm, resume=saved["runs"] if saved else None, label=_ks_label(ks),
                on_iteration=(lambda it, runs: ckpt.save(starts, init_seconds, it, runs))
                if ckpt else None,
            )
            ran = transports.record(name, transport)
        models = {}
        for k in ks:
            tried = [(seed, r, s) for (kk, seed), r, s in zip(starts, results, init_seconds)
                     if kk == k]
            models[k] = self._best(k, features, tried)
            if isinstance(self.init, KMeansModel):
                models[k].match_ids(self.init)
            models[k].dropped = data.dropped_counts(summary.problems)
            models[k].transport = dict(ran)
        log.info("fit done: k=%s, %d rows, %d model(s) in %.1fs", ks, summary.rows,
                 len(results), time.perf_counter() - started)
        return models

    def _starts(self, transport: Transport, given: np.ndarray | None, ks: list[int],
                rows: int) -> tuple[list, list[float], list[np.ndarray]]:
        """(k, seed) of every start, its init seconds and its initial centroids."""
        if given is not None and self.n_init > 1:
            log.warning("explicit init centroids: one start only (n_init=%d ignored)",
                        self.n_init)
        starts = self._start_seeds(given, ks)
        init_seconds, centroids = [], []
        for k, seed in starts:
            t0 = time.perf_counter()
            centroids.append(self._initial_centroids(transport, given, k, seed, rows))
            init_seconds.append(time.perf_counter() - t0)
        return starts, init_seconds, centroids

    def _start_seeds(self, given: np.ndarray | None, ks: list[int]) -> list[tuple[int, int]]:
        """(k, seed) of every start: ``n_init`` per k, one with given centroids."""
        n_init = 1 if given is not None else self.n_init
        return [(k, start_seed(self.seed, i)) for k in ks for i in range(n_init)]

    def _checkpoint(self, features: list[str], ks: list[int], summary: tasks.Summary,
                    given: np.ndarray | None) -> tuple[Checkpoint | None, dict | None]:
        """This fit's checkpoint (if asked for) and, when resuming, its saved state.

        Given centroids (an array or a CSV file, recorded only as "explicit") are fingerprinted
        by their values. The seed is checked against the checkpoint's starts when it was given
        and draws something (a sampled init, restarts, centres added to a warm start's): a seed
        left to chance resumes with the checkpoint's own (the model records it), and one given
        with a full set of centres has nothing to change."""
        if self.checkpoint is None:
            return None, None
        # how the passes compute the labels does not change them: any algorithm resumes. The
        # dtype does change them: float32 is fingerprinted (float64, the default, is left out so
        # the checkpoints written before there was a choice still resume)
        params = {key: v for key, v in self.params().items() if key != "algorithm"
                  and not (key == "dtype" and v == "float64")}
        params["ks"] = ks
        if given is not None:
            params["given_centroids"] = hashlib.sha256(given.tobytes()).hexdigest()
        seeded = self.seed_given and not (given is not None and len(given) >= max(ks))
        ckpt = Checkpoint(self.checkpoint, fingerprint(
            params, features, summary.rows, summary.weight, summary.mean, summary.m2,
            summary.digest))
        saved = ckpt.load(self._start_seeds(given, ks) if seeded else None) if self.resume \
            else None
        if self.resume and saved is None:
            log.info("no checkpoint at %s: starting from the beginning", ckpt.path)
        return ckpt, saved

    def _best(self, k: int, features: list[str], tried: list) -> KMeansModel:
        """The start with the lowest inertia (the first on ties), with every start's record."""
        best_seed, best, _ = min(tried, key=lambda t: t[1].inertia)
        restarts = [{"seed": seed, "inertia": r.inertia, "n_iter": r.n_iter, "stop": r.stop,
                     "init_seconds": secs} for seed, r, secs in tried]
        params = {**self.params(), "k": k, "seed": best_seed}
        return KMeansModel(
            best.centroids, features, distance=self.distance, inertia=best.inertia,
            n_iter=best.n_iter, converged=best.converged, stop=best.stop,
            cluster_sizes=best.cluster_sizes, history=best.history, params=params,
            restarts=restarts,
        )

    def _given_centroids(self, features: list[str]) -> np.ndarray | None:
        """The init's centroids when it gives them (an array, a CSV file, a previous model).

        A previous model (a warm start) must have the same features in the same order. Its
        centroids are the start when k is the same; when k grew, ``_initial_centroids`` adds
        k-means++ centres to them; when k shrank, there is no start to give (None): the fit is a
        fresh seeded k-means|| fit, and only the stable ids come from the previous model."""
        d = len(features)
        if isinstance(self.init, KMeansModel):
            if list(features) != self.init.features:
                raise UserError(f"features {list(features)} do not match the init model's "
                                f"features {self.init.features} (same names, same order)")
            if self.init.k > self.k:
                return None
            return inits.explicit(self.init.centroids, self.init.k, d, "init model centroids")
        if isinstance(self.init, str) and self.init in inits.INITS:
            return None
        source = self.init if isinstance(self.init, str) else None
        raw = read_centroids_csv(source) if source else self.init
        c = inits.explicit(raw, self.k, d, f"init centroid file {source}" if source else "init centroids")
        if self.distance == "cosine":
            if not np.any(c != 0, axis=1).all():
                raise UserError("init centroids include an all-zero row, which cosine distance cannot use")
            c = kernels.normalize_rows(c)
        return c

    def _summarize(self, transport: Transport, d: int, k: int, ks: str) -> tasks.Summary:
        """Caches the blocks (first pass) and checks what was dropped (an error unless
        ``invalid="skip"``, and always when nothing is left)."""
        parts = transport.run(tasks.summarize, d, f"kmeans_dist: caching the input, {ks}")
        total = kernels.fold(parts)
        if total.problems and self.invalid == "error":
            raise InvalidRows(total.problems)
        dropped = data.dropped_counts(total.problems)
        if total.rows == 0:
            if dropped:
                raise UserError(f"input has no valid rows ({data.describe_dropped(dropped)})")
            raise UserError("input has no rows")
        if total.rows < k:
            raise too_many_clusters(k, total.rows)
        if dropped:
            log.warning("invalid rows skipped: %s", data.describe_dropped(dropped))
        return total

    def _initial_centroids(self, transport, given, k: int, seed: int,
                           n_rows: int) -> np.ndarray:
        if given is not None and len(given) < k:  # a warm start with more clusters than before
            log.info("init: the init model's %d centroids + %d seeded k-means++ centres",
                     len(given), k - len(given))
            return inits.extend_plus_plus(transport, given, k, seed)
        if given is not None:
            return given
        t0 = time.perf_counter()
        method = self.init
        if isinstance(self.init, KMeansModel):  # it has more clusters than k: a fresh start
            log.info("the init model has k=%d > %d: a fresh k-means|| start, then ids matched",
                     self.init.k, k)
            method = "k-means||"
        if method == "random":
            c = inits.random_rows(transport, k, seed, n_rows)
        elif method == "k-means++":
            c = inits.kmeans_plus_plus(transport, k, seed)
        else:
            c = inits.kmeans_parallel(transport, k, seed, self.init_steps)
        log.info("init %s: %d centroids in %.2fs", method, k, time.perf_counter() - t0)
        return c


def start_seed(seed: int, i: int) -> int:
    """The seed of restart ``i``: the seed itself for the first, then independent streams."""
    if i == 0:
        return seed
    return int(np.random.SeedSequence([seed, i]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class InvalidRows(UserError):
    """Invalid rows under ``invalid="error"``: count, reason, one example row, and how to skip
    them (``remedy``, which the pyspark.ml adapter words as its own Param)."""

    REMEDY = "use --invalid skip (invalid='skip')"

    def __init__(self, problems: dict[str, tuple[int, dict]], remedy: str = REMEDY) -> None:
        (reason, (count, example)), *more = problems.items()
        also = "".join(f"; {n} more with a {r}" for r, (n, _) in more)
        rows = "1 input row has" if count == 1 else f"{count} input rows have"
        super().__init__(f"{rows} a {reason}, e.g. {example}{also}; "
                         f"{remedy} to drop them and fit on the rest")
        self.problems = problems


def too_many_clusters(k: int, rows: int) -> UserError:
    return UserError(f"k={k} is larger than the number of rows ({rows})")


def _looks_like_path(s: str) -> bool:
    return s.lower().endswith(".csv") or "/" in s


def _ks_label(ks: Sequence[int]) -> str:
    """'k=16' or 'k=2,3,4': which models a Spark job works for, in its description."""
    return "k=" + ",".join(map(str, ks))
