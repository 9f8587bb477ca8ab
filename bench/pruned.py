"""Pruned Lloyd: whole Lloyd phases of ``algorithm="lloyd"`` against ``algorithm="auto"`` (issue 20),
beside scikit-learn's Lloyd and Elkan, MLlib per iteration and the read floor.

Each workload runs in a child process of its own, in a fresh local[2] session: the data is
generated in Spark and cached, C0 is fixed (k sampled rows, or points near the centres for the
well-separated data), then on the same cached rows and from the same C0:

- ours, ``transport="resident"`` (so small inputs do not take the driver path), tol=0, max_iter
  300 (the card's stop: until no row changes cluster), ``algorithm="lloyd"`` and ``"auto"`` in
  turn, ``repeats`` times each (lloyd, auto, lloyd, auto, ...): Lloyd-phase seconds (the sum of
  the history's ``seconds``, everything after the init), n_iter, each pass's ``computed``; whether
  both give bit-identical centroids, the same n_iter and the same rows moved in every pass;
- ours ``"auto"`` and ``"lloyd"`` with ``dtype="float32"`` when ``KMeans`` takes a ``dtype``
  (else "n/a"): seconds, and the bytes the resident tasks held (blocks alone, and with what a
  pass keeps per row);
- the read floor (a pass that only reads the resident blocks) and the arithmetic floor;
- MLlib from C0, per iteration over ``mllib_iters`` iterations (differenced, as bench/measure.py);
- scikit-learn ``KMeans(init=C0, n_init=1, tol=0, max_iter=300)``, ``algorithm="lloyd"`` and
  ``"elkan"``, on the rows collected to the driver (its own OpenMP threads, recorded);
- where the time of a pruned pass goes: the same Lloyd phase replayed in this process over the
  fit's own blocks, one BLAS thread, through ``kmeans_dist.pruning`` with timers on its steps
  (settle the bounds, recompute the unsettled rows, score dense stretches, accumulate).

    python bench/pruned.py [--quick]     # prints the tables, writes bench/pruned.json
    python bench/run.py --only-pruning --json bench/results.json    # merged into the report
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path[:0] = [BENCH, ROOT]

from workloads import QUICK_DIVISOR, rows_label  # noqa: E402

#: the card's stop: tol=0 (until no row changes cluster), at most this many iterations
MAX_ITER = 300
#: passes of the read floor (and of the arithmetic floor)
FLOOR_PASSES = 5


@dataclass(frozen=True)
class Workload:
    """One data set. ``kind``: "blobs" (``centres`` Gaussian blobs, centres uniform in
    [-spread, spread]^d, noise std ``std``; C0 = k sampled rows), "uniform" (uniform noise in
    [-10, 10]^d; C0 = k sampled rows) or "separated" (blobs, C0 = each centre + 0.5 on every
    coordinate: converges in a few passes)."""

    key: str
    n: int
    d: int
    k: int
    kind: str
    centres: int = 0
    spread: float = 10.0
    std: float = 4.0
    repeats: int = 1  # fits of each algorithm, alternated; the fastest counts
    mllib_iters: int = 10

    def scaled(self, divisor: int) -> "Workload":
        return replace(self, n=max(self.n // divisor, 10 * self.k),
                       mllib_iters=min(self.mllib_iters, 5) if divisor > 1 else self.mllib_iters)

    @property
    def shape(self) -> str:
        return f"{rows_label(self.n)} × {self.d}, k={self.k}"

    @property
    def data(self) -> str:
        if self.kind == "uniform":
            return "uniform noise"
        sep = "well separated" if self.kind == "separated" else "overlapping"
        return f"{self.centres} blobs, {sep}"


WORKLOADS = (
    Workload("2Mx16-k16", 2_000_000, 16, 16, "blobs", centres=32, repeats=2),
    Workload("1Mx32-k128", 1_000_000, 32, 128, "blobs", centres=128),
    Workload("250Kx64-k256", 250_000, 64, 256, "blobs", centres=512, mllib_iters=5),
    Workload("1Mx8-k32-uniform", 1_000_000, 8, 32, "uniform", repeats=2),
    Workload("1Mx8-k8-separated", 1_000_000, 8, 8, "separated", centres=8, spread=100.0,
             std=1.0, repeats=5),
)


def find(key: str) -> Workload:
    return next(w for w in WORKLOADS if w.key == key)


def takes_dtype() -> bool:
    """Whether ``KMeans`` has the ``dtype`` parameter (float32 blocks, issue 20)."""
    from kmeans_dist import KMeans

    return "dtype" in inspect.signature(KMeans).parameters


# --------------------------------------------------------------------------- data
def generate(spark, w: Workload):
    """The workload's rows as a DataFrame of x0..x{d-1} (2 partitions), and the blob centres
    (None for uniform noise). Same seeds, same rows, in every session."""
    import numpy as np
    from pyspark.sql import functions as F

    rows = spark.range(0, w.n, numPartitions=2)
    if w.kind == "uniform":
        return rows.select(*[(F.rand(j) * 20.0 - 10.0).alias(f"x{j}") for j in range(w.d)]), None
    centres = np.random.default_rng(0).uniform(-w.spread, w.spread, size=(w.centres, w.d))
    cid = (F.col("id") % w.centres).cast("int")
    cols = [(F.element_at(F.array(*[F.lit(float(c)) for c in centres[:, j]]), cid + 1)
             + w.std * F.randn(j)).alias(f"x{j}") for j in range(w.d)]
    return rows.select(*cols), centres


def start(df, w: Workload, centres):
    """C0: near the centres for separated blobs, else k rows of the data (a seeded sample)."""
    import measure

    if w.kind == "separated":
        return centres[:w.k] + 0.5
    return measure.initial_centroids(df, w.k, w.n)


# --------------------------------------------------------------------------- ours
def lloyd_phase(model) -> dict:
    """A fit's Lloyd phase from its history: seconds, iterations, rows moved and ``computed``
    per pass, and the means over all passes and over the last third."""
    hist = model.history
    secs = [h["seconds"] for h in hist]
    computed = [h.get("computed") for h in hist]
    third = max(1, len(hist) // 3)
    known = [c for c in computed if c is not None]
    late = [c for c in computed[-third:] if c is not None]
    return {"seconds": sum(secs), "n_iter": model.n_iter, "stop": model.stop,
            "iter_seconds": secs, "computed": computed, "moved": [h["moved"] for h in hist],
            "s_iter": sum(secs) / len(secs), "s_iter_last_third": statistics.mean(secs[-third:]),
            "computed_mean": statistics.mean(known) if known else None,
            "computed_last_third": statistics.mean(late) if late else None,
            "inertia": model.inertia, "held_bytes": model.transport.get("held_bytes"),
            "block_bytes": model.transport.get("block_bytes"),
            "transport": model.transport.get("name"), "storage": model.transport.get("storage")}


def fit_ours(df, features, c0, algorithm: str, max_iter: int = MAX_ITER, **extra):
    from kmeans_dist import KMeans

    model = KMeans(len(c0), init=c0, max_iter=max_iter, tol=0.0, transport="resident",
                   algorithm=algorithm, **extra).fit(df, features)
    return lloyd_phase(model), model.centroids


def ours(df, features, c0, w: Workload) -> dict:
    """lloyd and auto, alternated ``w.repeats`` times; the fastest of each, and whether every fit
    agrees with the first lloyd one (bit-identical centroids, same n_iter, same rows moved in
    every pass)."""
    import numpy as np

    for algorithm in ("lloyd", "auto"):  # untimed: the workers start, numba loads its cache
        fit_ours(df, features, c0, algorithm, max_iter=3)
    fits: dict[str, list[dict]] = {"lloyd": [], "auto": []}
    reference = None
    identical = True
    for _ in range(w.repeats):
        for algorithm in ("lloyd", "auto"):
            phase, centroids = fit_ours(df, features, c0, algorithm)
            if reference is None:
                reference = (phase, centroids)
            identical &= (np.array_equal(centroids, reference[1])
                          and phase["n_iter"] == reference[0]["n_iter"]
                          and phase["moved"] == reference[0]["moved"])
            fits[algorithm].append(phase)
            say(w, f"{algorithm}: Lloyd phase {phase['seconds']:.2f}s, {phase['n_iter']} "
                   f"iterations, computed {fmt_frac(phase['computed_mean'])}")
    best = {a: min(f, key=lambda p: p["seconds"]) for a, f in fits.items()}
    return {**best, "all_seconds": {a: [p["seconds"] for p in f] for a, f in fits.items()},
            "identical": bool(identical), "centroids": reference[1]}


def float32(df, features, c0, w: Workload, auto64: dict, centroids64) -> dict | None:
    """auto with dtype="float32", when KMeans takes it (another branch adds it); else None."""
    if not takes_dtype():
        return None
    import measure

    phase, centroids = fit_ours(df, features, c0, "auto", dtype="float32")
    phase["max_rel_diff_to_float64"] = measure.rel_diff(centroids, centroids64)
    say(w, f"auto float32: Lloyd phase {phase['seconds']:.2f}s, {phase['n_iter']} iterations")
    # and every distance computed: where the GEMM's arithmetic is the whole cost
    phase["lloyd"], _ = fit_ours(df, features, c0, "lloyd", dtype="float32")
    say(w, f"lloyd float32: Lloyd phase {phase['lloyd']['seconds']:.2f}s")
    return phase


# --------------------------------------------------------------------------- the others
def mllib(sc, frame, w: Workload, c0) -> dict:
    """MLlib from C0 (epsilon=0), seconds per iteration: (T(N) - T(1)) / (N - 1) after a
    1-iteration warm-up, on a cached RDD of the same rows (as bench/measure.py's mllib_from)."""
    from pyspark.mllib.clustering import KMeans as MLlibKMeans, KMeansModel as MLlibModel

    import measure
    from kmeans_dist import data

    vecs = data.block_rdd(frame, w.d).flatMap(measure.block_x).cache()
    vecs.count()

    def train(n_iter: int):
        t0 = time.perf_counter()
        MLlibKMeans.train(vecs, w.k, maxIterations=n_iter, initialModel=MLlibModel(list(c0)),
                          epsilon=0.0)
        return time.perf_counter() - t0, None

    try:
        (t1, _), (tn, _) = measure.warm_then_time(train, w.mllib_iters)
    finally:
        vecs.unpersist()
    return {"s_iter": measure.differenced(t1, tn, w.mllib_iters), "t1": t1, "tn": tn,
            "iters": w.mllib_iters}


def sklearn(x, c0) -> dict:
    """scikit-learn from C0 to its stop (tol=0, max_iter 300), lloyd and elkan: fit seconds
    after a 1-iteration warm-up (its input checks included), with the threads it used."""
    from sklearn.cluster import KMeans as SkKMeans
    from threadpoolctl import threadpool_info

    result = {"threads": {i["internal_api"]: i["num_threads"] for i in threadpool_info()}}
    for algorithm in ("lloyd", "elkan"):
        def fit(max_iter: int):
            est = SkKMeans(len(c0), init=c0, n_init=1, max_iter=max_iter, tol=0.0,
                           algorithm=algorithm)
            t0 = time.perf_counter()
            est.fit(x)
            return time.perf_counter() - t0, est

        fit(1)
        seconds, est = fit(MAX_ITER)
        result[algorithm] = {"seconds": seconds, "n_iter": int(est.n_iter_),
                             "inertia": float(est.inertia_), "centroids": est.cluster_centers_}
    return result


# --------------------------------------------------------------------------- where the time goes
class Timers:
    """Seconds spent in steps of ``kmeans_dist.pruning``, summed per pass: "settle" (move the
    bounds with the centroids, tighten the unsettled rows' upper bounds), "recompute" (every
    distance of the rows still unsettled, gathered), "dense" (blocks scored whole, as brute
    force scores them), "accumulate" (sums, counts and inertia folded from the labels; only the
    clusters that changed when the previous pass's per-cluster partials are kept). A step
    called inside another one is counted in the outer one only."""

    #: step -> where it lives in kmeans_dist.pruning (function, or class and method)
    WRAPPED = (("settle", ("_settle",)), ("recompute", ("_Scorer", "recompute")),
               ("dense", ("_Scorer", "every")), ("accumulate", ("_Accumulator", "add")),
               ("accumulate", ("_Accumulator", "partials")), ("accumulate", ("_fold_changes",)))
    STEPS = ("settle", "recompute", "dense", "accumulate")

    def __init__(self) -> None:
        self.now: dict[str, float] = {}
        self.depth = 0

    @contextmanager
    def installed(self):
        """The timers wrapped around the steps for the duration (the originals put back)."""
        from kmeans_dist import pruning

        saved = []
        for name, path in self.WRAPPED:
            owner = pruning if len(path) == 1 else getattr(pruning, path[0])
            original = getattr(owner, path[-1])
            saved.append((owner, path[-1], original))
            setattr(owner, path[-1], self._timed(name, original))
        try:
            yield self
        finally:
            for owner, attr, original in saved:
                setattr(owner, attr, original)

    def _timed(self, name: str, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            self.depth += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth -= 1
                if self.depth == 0:
                    self.now[name] = self.now.get(name, 0.0) + time.perf_counter() - t0
        return timed

    def take(self) -> dict[str, float]:
        now, self.now = self.now, {}
        return now


def replay(blocks, c0) -> dict:
    """The Lloyd phase of ``algorithm="auto"`` replayed here over the fit's own blocks, one BLAS
    thread: per pass, seconds in each step of the pruned pass (``Timers``), the pass's total, and
    a brute-force pass over the same blocks and centroids (``kernels.block_partials``) for
    comparison, every few passes. Stops where an empty cluster would need the engine's
    relocation (not replayed). All seconds are one thread's over all the rows: a task on 2 cores
    does about half."""
    import numpy as np

    from kmeans_dist import kernels, pruning
    from kmeans_dist.threads import blas_threads

    _compile(blocks[0], c0)
    timers = Timers()
    centroids, prev = np.array(c0, dtype=np.float64), None
    labels: list = [None] * len(blocks)
    bounds: list = [None] * len(blocks)
    passes = []
    with blas_threads(1), timers.installed():
        for it in range(1, MAX_ITER + 1):
            timers.take()
            t0 = time.perf_counter()
            motion = None if prev is None else pruning.Motion.between(prev, centroids)
            motion_s = time.perf_counter() - t0
            parts = []
            for i, (x, x_sq) in enumerate(blocks):
                if motion is None:
                    part, labels[i], bounds[i] = pruning.full_partials(x, x_sq, None, centroids)
                else:
                    part, labels[i], bounds[i] = pruning.pruned_partials(
                        x, x_sq, None, motion, labels[i], bounds[i], reuse=True)
                parts.append(part)
            pass_s = time.perf_counter() - t0
            steps = timers.take()
            brute = _brute_seconds(blocks, centroids) if it == 1 or it % 10 == 0 else None
            total = kernels.fold(parts)
            rows = int(total.counts.sum())
            passes.append({"iteration": it, "seconds": pass_s, "motion": motion_s,
                           **{k: steps.get(k, 0.0) for k in Timers.STEPS},
                           "computed": sum(p.computed for p in parts) / rows, "moved": int(total.moved),
                           "brute_seconds": brute})
            new, empty = kernels.update_centroids(total, centroids)
            if empty.any():
                return {"passes": passes, "complete": False, "why": "empty cluster"}
            if total.moved == 0 or np.array_equal(new, centroids):
                break
            prev, centroids = centroids, new
    return {"passes": passes, "complete": True}


def _compile(block, c0) -> None:
    """A brute-force, a full and two pruned passes over a few rows, so numba's compilation (or
    the loading of its cache) is in no timed pass."""
    from kmeans_dist import kernels, pruning

    x, x_sq = block[0][:2048], block[1][:2048]
    kernels.block_partials(x, x_sq, None, c0)
    _, labels, bounds = pruning.full_partials(x, x_sq, None, c0)
    moved = c0 + 1e-3
    for old, new in ((c0, moved), (moved, c0)):
        _, labels, bounds = pruning.pruned_partials(x, x_sq, None, pruning.Motion.between(old, new),
                                                    labels, bounds)


def _brute_seconds(blocks, centroids) -> float:
    from kmeans_dist import kernels

    t0 = time.perf_counter()
    for x, x_sq in blocks:
        kernels.block_partials(x, x_sq, None, centroids)
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- one workload
def say(w: Workload, message: str) -> None:
    print(f"[pruning {w.key}] {message}", flush=True)


def fmt_frac(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.3g}%"


def run_workload(w: Workload) -> dict:
    """Every measurement of one workload in a fresh local[2] session, stopped at the end."""
    import numpy as np
    from pyspark import cloudpickle

    import measure
    import probes
    from kmeans_dist import data

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    load = os.getloadavg()
    spark = measure.session()
    try:
        sc = spark.sparkContext
        t0 = time.perf_counter()
        df, centres = generate(spark, w)
        df = df.cache()
        df.count()
        features = list(df.columns)
        say(w, f"{w.n} rows x {w.d} cached in {time.perf_counter() - t0:.1f}s")
        c0 = start(df, w, centres)
        result: dict[str, Any] = {"key": w.key, "n": w.n, "d": w.d, "k": w.k, "kind": w.kind,
                                  "data": w.data, "repeats": w.repeats,
                                  "c0_fingerprint": measure.fingerprint(c0),
                                  "load_average_start": load}
        fits = ours(df, features, c0, w)
        centroids64 = fits.pop("centroids")
        result.update(fits)
        result["float32"] = float32(df, features, c0, w, fits["auto"], centroids64)
        packed = measure.packing(df, features)
        result["floor"] = measure.read_floor(sc, packed, w.d, FLOOR_PASSES, "resident", c0)
        say(w, measure.line("read floor", result["floor"], "s_pass", "s/pass"))
        result["mllib"] = mllib(sc, packed.frame, w, c0)
        say(w, measure.line("MLlib from C0", result["mllib"], "s_iter", "s/iter"))
        blocks = data.block_rdd(packed.frame, w.d).map(_x_and_norms).collect()
        sk = sklearn(np.concatenate([x for x, _ in blocks]), c0)
        for algorithm in ("lloyd", "elkan"):
            fit = sk[algorithm]
            fit["max_rel_diff_to_ours"] = measure.rel_diff(fit.pop("centroids"), centroids64)
            say(w, f"scikit-learn {algorithm}: {fit['seconds']:.2f}s, {fit['n_iter']} iterations")
        result["sklearn"] = sk
        result["replay"] = replay(blocks, c0)
        say(w, f"replay: {len(result['replay']['passes'])} passes")
        result["load_average_end"] = os.getloadavg()
        result["jvm"] = probes.jvm_env(spark)
        return result
    finally:
        spark.stop()


def _x_and_norms(b):
    return b.x, b.x_sq


# --------------------------------------------------------------------------- the section
def section(quick: bool = False, only: str | None = None) -> dict:
    """Every workload (or ``only``) in its own child process; the results as a dict."""
    started = time.perf_counter()
    load = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="kmeans-pruned-") as tmp:
        for w in WORKLOADS:
            if only is None or w.key == only:
                rows.append(_spawn(w, quick, tmp))
    return {"results": rows, "quick": quick, "divisor": QUICK_DIVISOR if quick else 1,
            "load_average_start": load, "load_average_end": os.getloadavg(),
            "minutes": (time.perf_counter() - started) / 60, "dtype_param": takes_dtype()}


def _spawn(w: Workload, quick: bool, tmp: str) -> dict:
    out = os.path.join(tmp, f"{w.key}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", w.key, out]
    cmd += ["--quick"] if quick else []
    t0 = time.perf_counter()
    code = subprocess.run(cmd, cwd=ROOT).returncode
    print(f"[pruning {w.key}] finished in {time.perf_counter() - t0:.0f}s (exit code {code})",
          flush=True)
    scaled = w.scaled(QUICK_DIVISOR if quick else 1)
    if code != 0 or not os.path.exists(out):
        return {"key": w.key, "n": scaled.n, "d": w.d, "k": w.k, "kind": w.kind,
                "data": w.data, "error": f"exit code {code}"}
    with open(out, encoding="utf-8") as fh:
        return json.load(fh)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs=2, metavar=("KEY", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help=f"every n / {QUICK_DIVISOR}")
    ap.add_argument("--only", choices=[w.key for w in WORKLOADS])
    ap.add_argument("--json", default=os.path.join(BENCH, "pruned.json"))
    args = ap.parse_args(argv)
    if args.child:
        key, out = args.child
        result = run_workload(find(key).scaled(QUICK_DIVISOR if args.quick else 1))
        with open(out, "w", encoding="utf-8") as fh:
            json.dump(result, fh, default=_plain)
        return 0
    import report

    result = section(args.quick, args.only)
    with open(args.json, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1)
    print(report.pruning_tables(result))
    return 1 if any("error" in r for r in result["results"]) else 0


def _plain(value):
    """numpy scalars and arrays as JSON."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


if __name__ == "__main__":
    sys.exit(main())
