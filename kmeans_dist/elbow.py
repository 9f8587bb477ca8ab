"""The elbow job: fit every k in a range in the same passes, score each, suggest where to stop.

    jobs/elbow.py --input PATH --k-min 1 --k-max 10 --output DIR

writes ``DIR/elbow.json`` (one entry per k: ``k``, ``inertia``, ``silhouette``, ``n_iter``,
``seconds``; the ``suggested_k`` or null with a ``reason``), ``DIR/elbow.png`` and ``_SUCCESS``,
and prints the table.

``seconds`` of a k is what its model cost: the wall time of every Lloyd pass its best start took
part in (a pass computes the partials of all models still running, so the same pass is counted
for each of them and the column sums to more than the job's time) plus the init time of all its
``n_init`` starts.

The knee rule (``knee``): adding the k-th cluster gains ``gain(k) = inertia(k-1) - inertia(k)``.
The suggested k is the one whose gain is largest relative to every gain after it,
``ratio(k) = gain(k) / max(gain(j) for j > k)``, over the k strictly inside the range (a knee
needs a gain into it and gains after it); it is clear when that ratio is at least
``KNEE_MIN_RATIO`` (5): the k-th cluster still bought at least five times what any further one
does. Otherwise ``suggested_k`` is null and ``reason`` gives the best ratio found. Measured on
blobs with 2 to 8 well-separated centres in 2 to 8 dimensions, the true k has a ratio of 7 to
1000; uniform or Gaussian noise stays at or below 4 (a uniform square is the worst, 3.2 to 4.0 at
k=4, where four quadrants make a faint knee).

Why not Kneedle (the k farthest below the chord of the normalised curve, as ``kneed`` does): on
raw inertia it prefers k-1 over k whenever the k-th cluster gained less than 1/(k_max - k_min)
of the whole drop, which is the usual case once there are several clusters (measured: too few
clusters on 5 of 8 blob shapes, five too few with 8 centres), and uniform noise gets a knee
nearly as far below the chord as real structure, so no threshold on it separates the two.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from kmeans_dist import cli, io, plots, silhouette
from kmeans_dist.estimator import KMeans
from kmeans_dist.errors import UserError
from kmeans_dist.init import INITS
from kmeans_dist.model import DISTANCES, KMeansModel

log = logging.getLogger("kmeans_dist")

#: a knee is clear when the gain of its last cluster is at least this many times any later gain
KNEE_MIN_RATIO = 5.0
#: cap of a gain ratio (when no later k gains anything), so elbow.json stays finite
MAX_RATIO = 1e6
RULE = ("k maximising gain(k) / max(gain(j), j > k), gain(k) = inertia(k-1) - inertia(k), "
        f"over k strictly inside the range; clear when >= {KNEE_MIN_RATIO:g}")


# --------------------------------------------------------------------------- the knee rule


@dataclass
class Knee:
    """The suggested k (None when there is no clear knee), its gain ratio, and why not."""

    k: int | None
    ratio: float | None
    reason: str | None


def knee(ks: Sequence[int], inertias: Sequence[float],
         min_ratio: float = KNEE_MIN_RATIO) -> Knee:
    """The knee of an inertia curve over consecutive ``ks`` (see the module's docstring)."""
    ks = [int(k) for k in ks]
    if len(ks) != len(inertias):
        raise ValueError(f"{len(ks)} values of k but {len(inertias)} inertias")
    if not ks:
        raise ValueError("no values of k to find a knee in")
    if ks != list(range(ks[0], ks[0] + len(ks))):
        raise ValueError(f"ks must be consecutive integers in increasing order, got {ks}")
    if len(ks) < 3:
        return Knee(None, None, f"a knee needs at least 3 values of k, got {len(ks)}")
    ratios = gain_ratios(np.asarray(inertias, dtype=np.float64))
    best = int(np.argmax(ratios))  # the smallest k on ties
    k, ratio = ks[best + 1], float(ratios[best])
    if ratio < min_ratio:
        return Knee(None, ratio, f"no clear knee: the largest gain ratio is {ratio:.3g} "
                                 f"(at k={k}), below {min_ratio:g}")
    return Knee(k, ratio, None)


def gain_ratios(inertia: np.ndarray) -> np.ndarray:
    """For each inner point of the curve, the gain into it over the largest gain after it
    (0 where the gain into it is not positive, ``MAX_RATIO`` at most)."""
    gains = inertia[:-1] - inertia[1:]
    later = np.maximum.accumulate(gains[::-1])[::-1][1:]
    into = gains[:-1]
    denom = np.maximum(later, into / MAX_RATIO)
    return np.divide(into, denom, out=np.zeros(len(into)), where=into > 0)


# --------------------------------------------------------------------------- the job


def parser() -> argparse.ArgumentParser:
    p = cli.OneLineParser(prog="elbow.py",
                          description="Fit k-means for every k in a range and suggest k.")
    p.add_argument("--input", required=True, help="CSV (with header) or Parquet path")
    p.add_argument("--k-min", type=int, default=1, help="smallest k (default 1)")
    p.add_argument("--k-max", type=int, default=10, help="largest k (default 10)")
    p.add_argument("--output", required=True, help="output directory (must not exist)")
    p.add_argument("--features", type=cli.features_arg, help="a,b,c (default: numeric columns)")
    p.add_argument("--format", choices=io.FORMATS, help="input format (default: from extension)")
    p.add_argument("--init", default="k-means||", choices=INITS,
                   help=f"{' | '.join(INITS)} (default k-means||)")
    p.add_argument("--seed", type=int, help="seed for the inits and the silhouette sample "
                                            "(default: random, recorded)")
    p.add_argument("--n-init", type=int, default=3,
                   help="seeded starts per k, the lowest inertia wins (default 3: one k stuck in "
                        "a poor local minimum bends the curve and moves the knee)")
    p.add_argument("--max-iter", type=int, default=300)
    cli.add_engine_flags(p)
    p.add_argument("--distance", default="euclidean", help=" | ".join(DISTANCES))
    p.add_argument("--silhouette-sample", type=int, default=10000,
                   help="rows in the silhouette's seeded sample (default 10000)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    cli.add_spark_args(p)
    return p


def k_range(k_min: int, k_max: int) -> list[int]:
    """The ks to fit, checked: 1 <= k_min <= k_max."""
    if k_min < 1:
        raise UserError(f"--k-min must be >= 1, got {k_min}")
    if k_max < k_min:
        raise UserError(f"--k-max must be >= --k-min ({k_min}), got {k_max}")
    return list(range(k_min, k_max + 1))


def run(args: argparse.Namespace) -> dict:
    """Fit, score, suggest, write elbow.json and elbow.png, print the table; returns the result."""
    started = time.perf_counter()
    ks = k_range(args.k_min, args.k_max)  # parameters are checked before Spark starts
    if args.silhouette_sample < 2:
        raise UserError(f"--silhouette-sample must be >= 2, got {args.silhouette_sample}")
    estimator = KMeans(ks[0], init=args.init, seed=args.seed, max_iter=args.max_iter,
                       n_init=args.n_init, distance=args.distance,
                       driver_max_mb=args.driver_max_mb, algorithm=args.algorithm,
                       dtype=args.dtype)
    _, partitions = cli.start_session(args, "kmeans-dist elbow")
    io.check_output_dir(args.output, args.overwrite)
    df = io.read_table(args.input, args.format)
    estimator.num_partitions = partitions
    models = estimator.fit_many(df, ks, args.features)
    scores = silhouette.score_many([models[k] for k in ks], df, args.silhouette_sample,
                                   estimator.seed)
    result = summarize(models, scores, estimator, args.silhouette_sample)
    result["seconds"] = time.perf_counter() - started
    with io.staged_dir(args.output, args.overwrite) as tmp:
        io.write_text(f"{tmp}/elbow.json", json.dumps(result, indent=2) + "\n")
        plots.elbow(result, f"{tmp}/elbow.png")
    print(table(result))
    print(f"wrote {args.output}/elbow.json, {args.output}/elbow.png")
    return result


def summarize(models: dict[int, KMeansModel], scores: list[tuple[float | None, str | None]],
              estimator: KMeans, sample_size: int) -> dict:
    """elbow.json's content: one entry per k, and the knee."""
    ks = sorted(models)
    for k, (_, reason) in zip(ks, scores):
        if reason is not None:
            log.info("k=%d: silhouette undefined: %s", k, reason)
    entries = [entry(models[k], value) for k, (value, _) in zip(ks, scores)]
    found = knee(ks, [e["inertia"] for e in entries])
    first = models[ks[0]]
    return {
        "k_min": ks[0], "k_max": ks[-1], "features": first.features, "distance": first.distance,
        "rows": sum(first.cluster_sizes), "init": estimator.init, "seed": estimator.seed,
        "n_init": estimator.n_init, "silhouette_sample": sample_size,
        "entries": entries, "suggested_k": found.k, "reason": found.reason,
        "knee_ratio": found.ratio, "rule": RULE,
    }


def entry(model: KMeansModel, silhouette_value: float | None) -> dict:
    """One k's line of elbow.json."""
    return {"k": model.k, "inertia": model.inertia, "silhouette": silhouette_value,
            "n_iter": model.n_iter, "seconds": model_seconds(model)}


def model_seconds(model: KMeansModel) -> float:
    """Its best start's Lloyd passes (shared with the other models) plus all its starts' inits."""
    return (sum(h["seconds"] for h in model.history)
            + sum(r.get("init_seconds", 0.0) for r in model.restarts))


def table(result: dict) -> str:
    """The printed summary: one line per k (the suggested one starred), then the verdict."""
    lines = [f"elbow on {result['rows']} rows x {len(result['features'])} features, "
             f"k={result['k_min']}..{result['k_max']}",
             f"{'k':>5}  {'inertia':>14}  {'silhouette':>10}  {'n_iter':>6}  {'seconds':>8}"]
    for e in result["entries"]:
        mark = "*" if e["k"] == result["suggested_k"] else " "
        sil = "-" if e["silhouette"] is None else f"{e['silhouette']:.4f}"
        lines.append(f"{mark}{e['k']:>4}  {e['inertia']:>14.6g}  {sil:>10}  {e['n_iter']:>6}  "
                     f"{e['seconds']:>8.2f}")
    if result["suggested_k"] is None:
        lines.append(f"suggested k: none ({result['reason']})")
    else:
        lines.append(f"suggested k: {result['suggested_k']} (gain ratio "
                     f"{result['knee_ratio']:.3g} >= {KNEE_MIN_RATIO:g})")
    return "\n".join(lines)
