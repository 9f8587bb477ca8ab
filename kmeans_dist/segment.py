"""The segment job: a scheduled refit that keeps cluster ids stable and reports the drift.

    jobs/segment.py --input PATH --output DIR [--previous-model DIR0/model.json] [--k K]
                    [--id-col ID --previous-assignments DIR0/assignments] [--max-drift X]

fits (warm-started from the previous model when given, see ``KMeans._given_centroids``; else a
fresh seeded k-means|| fit), renumbers the clusters after the previous ones, labels every row and
writes ``DIR/model.json`` (with each cluster's spread, for the next run), ``DIR/assignments/``
(Parquet: the input columns + ``cluster`` stable id + ``distance``), ``DIR/drift.json``
(``kmeans_dist.drift``) and ``DIR/drift.png``. With ``--max-drift X`` it exits 3, after writing
everything, when a cluster's centre moved more than X of its spreads.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from kmeans_dist import assign, cli, data, drift, io, plots, train
from kmeans_dist.estimator import KMeans
from kmeans_dist.errors import UserError
from kmeans_dist.model import KMeansModel

#: exit code when a cluster drifted more than --max-drift (every output is written)
EXIT_DRIFT = 3
#: what the segment job writes into its output directory
OUTPUTS = ("model.json", "assignments/", "drift.json", "drift.png")


def parser() -> argparse.ArgumentParser:
    p = cli.OneLineParser(prog="segment.py", description=(
        "Refit a segmentation on a new batch, keeping cluster ids stable, and report the drift."))
    p.add_argument("--input", required=True, help="CSV (with header) or Parquet path")
    p.add_argument("--output", required=True, help="output directory (must not exist)")
    p.add_argument("--previous-model", metavar="DIR0/model.json",
                   help="the previous run's model: warm start, stable ids, drift")
    p.add_argument("--previous-assignments", metavar="DIR0/assignments",
                   help="the previous run's assignments, to follow entities by --id-col")
    p.add_argument("--k", type=int,
                   help="number of clusters (default: the previous model's; required without it)")
    p.add_argument("--id-col", help="a unique entity key (kept out of the default features)")
    p.add_argument("--max-drift", type=float, metavar="X",
                   help="exit 3 when a cluster's centre moved more than X of its spreads")
    p.add_argument("--features", type=cli.features_arg,
                   help="a,b,c (default: the previous model's, else every numeric column)")
    p.add_argument("--format", choices=io.FORMATS, help="input format (default: from extension)")
    p.add_argument("--seed", type=int, help="seed for any seeded init (default: random, recorded)")
    train.add_fit_limits(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    cli.add_spark_args(p)
    return p


def check_flags(args: argparse.Namespace) -> None:
    """The flag combinations that cannot work, refused before Spark starts."""
    if args.k is None and args.previous_model is None:
        raise UserError("--k is required without --previous-model")
    if args.max_drift is not None and not args.max_drift >= 0:
        raise UserError(f"--max-drift must be a number >= 0, got {args.max_drift}")
    if args.previous_assignments and not (args.previous_model and args.id_col):
        raise UserError("--previous-assignments needs --previous-model and --id-col")


def check_key(df: DataFrame, key: str, source: str) -> None:
    """``key`` is a column of ``df`` with no repeated (non-null) value."""
    if key not in df.columns:
        raise UserError(f"id column '{key}' not found in {source}; "
                        f"columns are {sorted(df.columns)}")
    repeated = (df.where(data.column(key).isNotNull()).groupBy(data.column(key)).count()
                .where(F.col("count") > 1).first())
    if repeated is not None:
        raise UserError(f"id column '{key}' is not unique in {source}: {repeated[0]!r} appears "
                        f"{repeated['count']} times")


def previous_assignments(path: str, key: str) -> DataFrame:
    """The previous run's assignments (Parquet), checked: a unique ``key`` and a ``cluster``."""
    before = io.read_table(path, "parquet")
    if "cluster" not in before.columns:
        raise UserError(f"previous assignments {path} have no 'cluster' column; "
                        f"columns are {sorted(before.columns)}")
    check_key(before, key, f"previous assignments {path}")
    return before


def default_features(df: DataFrame, previous: KMeansModel | None,
                     id_col: str | None) -> list[str] | None:
    """The previous model's features, else every numeric column but the id column."""
    if previous is not None:
        return previous.features
    return data.resolve_features(df.drop(id_col), None) if id_col else None


def cluster_spreads(labelled: DataFrame, model: KMeansModel) -> list[float]:
    """Per centroid row, the RMS distance of its rows to it (``drift.SPREAD``), from the
    ``distance`` column (for cosine it holds 1 - cos, and |a - b|^2 = 2 (1 - cos))."""
    squared = 2 * F.col("distance") if model.distance == "cosine" else F.col("distance") ** 2
    rows = labelled.groupBy("cluster").agg(F.avg(squared).alias("ms")).collect()
    by_id = {r["cluster"]: math.sqrt(r["ms"]) for r in rows if r["cluster"] is not None}
    return [by_id.get(i, 0.0) for i in model.cluster_ids]


def transition_counts(before: DataFrame, after: DataFrame,
                      key: str) -> list[tuple[int | None, int | None, int]]:
    """(previous id, current id, entities) over a full outer join on ``key``: None where the
    entity is missing from that batch (rows with a null key or cluster are left out)."""
    def side(df: DataFrame, name: str) -> DataFrame:
        return (df.where(data.column(key).isNotNull() & F.col("cluster").isNotNull())
                .select(data.column(key).alias("_key"), F.col("cluster").alias(name)))

    joined = side(before, "_before").join(side(after, "_after"), "_key", "full_outer")
    return [(r["_before"], r["_after"], int(r["count"]))
            for r in joined.groupBy("_before", "_after").count().collect()]


def run(args: argparse.Namespace) -> dict:
    """Fit, label, write every output, print the summary; exit 3 after that on too much drift."""
    started = time.perf_counter()
    check_flags(args)
    spark, partitions = cli.start_session(args, "kmeans-dist segment")
    io.check_output_dir(args.output, args.overwrite)
    previous = KMeansModel.load(args.previous_model) if args.previous_model else None
    estimator = KMeans(
        args.k if args.k is not None else previous.k,
        init=previous if previous is not None else "k-means||", seed=args.seed,
        distance=previous.distance if previous is not None else "euclidean",
        num_partitions=partitions, max_iter=args.max_iter, invalid=args.invalid,
        driver_max_mb=args.driver_max_mb, algorithm=args.algorithm,
        dtype=args.dtype,
    )
    df = io.read_table(args.input, args.format)
    features = args.features or default_features(df, previous, args.id_col)
    if args.id_col:
        check_key(df, args.id_col, f"input {args.input}")
    before = (previous_assignments(args.previous_assignments, args.id_col)
              if args.previous_assignments else None)
    model = estimator.fit(df, features)
    seconds = time.perf_counter() - started
    with io.staged_dir(args.output, args.overwrite) as tmp:
        assign.assign(model, df).write.parquet(f"{tmp}/assignments")
        written = spark.read.parquet(f"{tmp}/assignments")
        model.cluster_spread = cluster_spreads(written, model)
        model.save(f"{tmp}/model.json")
        moves = None if before is None else drift.transitions(
            transition_counts(before, written, args.id_col), previous.cluster_ids,
            model.cluster_ids, args.id_col)
        result = drift.report(
            None if previous is None else drift.Clusters.of(previous), drift.Clusters.of(model),
            previous_source=args.previous_model, moves=moves, max_drift=args.max_drift)
        io.write_text(f"{tmp}/drift.json", json.dumps(result, indent=2) + "\n")
        plots.drift(result, f"{tmp}/drift.png")
    print(train.summary(model, seconds, args.output, OUTPUTS))
    print(drift.describe(result))
    reason = drift.alarm_line(result)
    if reason is not None:
        sys.stderr.write(reason + "\n")
        sys.exit(EXIT_DRIFT)
    return result
