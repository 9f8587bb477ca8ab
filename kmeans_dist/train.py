"""The train job: flags -> KMeans.fit -> model.json, assignments/ (Parquet), report.json, plots/."""

from __future__ import annotations

import argparse
import json
import time

from kmeans_dist import cli, io, plots
from kmeans_dist.data import column, describe_dropped
from kmeans_dist.errors import UserError
from kmeans_dist.estimator import KMeans
from kmeans_dist.init import INITS
from kmeans_dist.model import DISTANCES, KMeansModel

def parser() -> argparse.ArgumentParser:
    p = cli.OneLineParser(prog="train.py", description="Fit k-means with kmeans-dist.")
    p.add_argument("--input", required=True, help="CSV (with header) or Parquet path")
    p.add_argument("--k", required=True, type=int, help="number of clusters")
    p.add_argument("--output", required=True, help="output directory (must not exist)")
    p.add_argument("--features", type=cli.features_arg, help="a,b,c (default: numeric columns)")
    p.add_argument("--format", choices=io.FORMATS, help="input format (default: from extension)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--init", default="k-means||",
                       help=f"{' | '.join(INITS)} | CENTROIDS.csv (default k-means||)")
    start.add_argument("--init-model", metavar="MODEL.json",
                       help="warm start from a saved model (same features in the same order); "
                            "its clusters keep their ids")
    p.add_argument("--seed", type=int, help="seed for the init (default: random, recorded)")
    p.add_argument("--n-init", type=int, default=1,
                   help="seeded starts; the lowest inertia wins (default 1)")
    add_fit_limits(p)
    p.add_argument("--tol", type=float, default=0.0,
                   help="also stop when the centroid shift is at most tol x mean feature variance")
    p.add_argument("--distance", default="euclidean", help=" | ".join(DISTANCES))
    p.add_argument("--weight-col", help="non-negative row weights")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--label-col", help="a known label column to cross-tabulate in the summary")
    p.add_argument("--checkpoint", help="directory to save the fit's state after every iteration")
    p.add_argument("--resume", action="store_true",
                   help="continue from the --checkpoint directory's state, if there is one")
    cli.add_spark_args(p)
    return p


def add_fit_limits(p: argparse.ArgumentParser) -> None:
    """--max-iter and --invalid, shared by the jobs that fit."""
    p.add_argument("--max-iter", type=int, default=300)
    p.add_argument("--invalid", default="error",
                   help="rows with a null/NaN/infinite feature or a bad weight: error (default) "
                        "or skip (fit on the rest; counted in the model's 'dropped')")
    cli.add_engine_flags(p)


def report(model: KMeansModel, seconds: float, rows: int) -> dict:
    return {
        "k": model.k,
        "features": model.features,
        "rows": rows,
        "inertia": model.inertia,
        "n_iter": model.n_iter,
        "converged": model.converged,
        "stop": model.stop,
        "cluster_sizes": model.cluster_sizes,
        "seconds": seconds,
        "history": model.history,
        "restarts": model.restarts,
        "dropped": model.dropped,
    }


def run(args: argparse.Namespace) -> KMeansModel:
    started = time.perf_counter()
    params = dict(init=args.init, seed=args.seed, max_iter=args.max_iter, tol=args.tol,
                  distance=args.distance, weight_col=args.weight_col, n_init=args.n_init,
                  checkpoint=args.checkpoint, resume=args.resume, invalid=args.invalid,
                  driver_max_mb=args.driver_max_mb, algorithm=args.algorithm,
                  dtype=args.dtype)
    estimator = KMeans(args.k, **params)  # parameters are checked here, before Spark starts
    _, partitions = cli.start_session(args, "kmeans-dist train")
    io.check_output_dir(args.output, args.overwrite)
    if args.init_model:  # read through Spark's filesystem, so only now
        estimator = KMeans(args.k, **{**params, "init": KMeansModel.load(args.init_model)})
    df = io.read_table(args.input, args.format)
    if args.label_col:  # a user error must be found before anything is written
        check_label_col(df.columns, args.label_col)
    estimator.num_partitions = partitions
    model = estimator.fit(df, args.features)
    seconds = time.perf_counter() - started
    labelled = model.transform(df)
    with io.staged_dir(args.output, args.overwrite) as tmp:
        model.save(f"{tmp}/model.json")
        labelled.write.parquet(f"{tmp}/assignments")
        io.write_text(f"{tmp}/report.json",
                      json.dumps(report(model, seconds, sum(model.cluster_sizes)), indent=2) + "\n")
        plots.fit_pictures(model, df, f"{tmp}/plots")
    print(summary(model, seconds, args.output))
    if args.label_col:
        print(crosstab(io.read_output(f"{args.output}/assignments"), args.label_col))
    return model


#: what the train job writes into its output directory
OUTPUTS = ("model.json", "assignments/", "report.json", "plots/")


def summary(model: KMeansModel, seconds: float, output: str,
            outputs: tuple[str, ...] = OUTPUTS) -> str:
    """The printed summary of a fit: data, inertia and stop, sizes by cluster id, files."""
    why = {"no_change": "no row changed cluster", "tol": "centroid shift within tol",
           "center_tol": "no centroid moved more than center_tol",
           "max_iter": "max_iter reached (not converged)"}[model.stop]
    lines = [
        f"k={model.k} on {sum(model.cluster_sizes)} rows x {len(model.features)} features "
        f"({', '.join(model.features)})",
        f"inertia {model.inertia:.6g} after {model.n_iter} iterations: {why}; {seconds:.1f}s",
        "cluster sizes: " + ", ".join(f"{i}: {n}" for i, n in
                                      sorted(zip(model.cluster_ids, model.cluster_sizes))),
        *([f"invalid rows skipped: {describe_dropped(model.dropped)}"] if model.dropped else []),
        "wrote " + ", ".join(f"{output}/{name}" for name in outputs),
    ]
    return "\n".join(lines)


def check_label_col(columns: list[str], label_col: str) -> None:
    if label_col not in columns:
        raise UserError(f"label column '{label_col}' not found; columns are {columns}")


def crosstab(labelled, label_col: str) -> str:
    """Rows per (cluster, label): how the clusters line up with a known labelling."""
    check_label_col(labelled.columns, label_col)
    # one aggregation job, pivoted here (Spark's pivot runs a second job for the label values)
    counts = (labelled.groupBy("cluster", column(label_col).alias("_label")).count().collect())
    values = sorted({r["_label"] for r in counts}, key=lambda v: (v is not None, v))
    clusters = sorted({r["cluster"] for r in counts}, key=lambda v: (v is not None, v))
    n = {(r["cluster"], r["_label"]): r["count"] for r in counts}
    header = ["cluster"] + ["null" if v is None else str(v) for v in values]
    rows = [[str(c)] + [str(n.get((c, v), 0)) for v in values] for c in clusters]
    width = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:>{w}}}" for w in width)
    return "\n".join([f"clusters against {label_col}:", fmt.format(*header)]
                     + [fmt.format(*r) for r in rows])
