"""The assign job: a saved model labels a new batch -> Parquet of the input + cluster + distance."""

from __future__ import annotations

import argparse
import logging
import time

from pyspark.sql import DataFrame

from kmeans_dist import cli, io
from kmeans_dist.model import KMeansModel

log = logging.getLogger("kmeans_dist")


def parser() -> argparse.ArgumentParser:
    p = cli.OneLineParser(prog="assign.py",
                          description="Label rows with a saved kmeans-dist model.")
    p.add_argument("--model", required=True, help="a model.json written by the train job")
    p.add_argument("--input", required=True, help="CSV (with header) or Parquet path")
    p.add_argument("--output", required=True, help="output Parquet directory (must not exist)")
    p.add_argument("--features", type=cli.features_arg,
                   help="input columns holding the model's features, in the model's order "
                        "(default: the model's feature names)")
    p.add_argument("--format", choices=io.FORMATS, help="input format (default: from extension)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    cli.add_spark_args(p)
    return p


def assign(model: KMeansModel, df: DataFrame, features: list[str] | None = None) -> DataFrame:
    """``df`` plus ``cluster`` (int) and ``distance`` (to that centroid, in the model's metric)."""
    return model.transform(df, prediction_col="cluster", distance_col="distance",
                           features=features)


def run(args: argparse.Namespace) -> DataFrame:
    started = time.perf_counter()
    cli.start_session(args, "kmeans-dist assign")
    io.check_output_dir(args.output, args.overwrite)
    model = KMeansModel.load(args.model)
    df = io.read_table(args.input, args.format)
    if args.partitions is not None:  # at most that many tasks and Parquet parts (no shuffle)
        df = df.coalesce(args.partitions)
    labelled = assign(model, df, args.features)
    with io.staged_dir(args.output, args.overwrite) as tmp:
        labelled.write.mode("overwrite").parquet(tmp)
    written = io.read_output(args.output)
    counts = {r["cluster"]: r["count"] for r in written.groupBy("cluster").count().collect()}
    unlabelled = counts.pop(None, 0)
    sizes = ", ".join(f"{c}: {counts.get(c, 0)}" for c in sorted(model.cluster_ids))
    print(f"labelled {sum(counts.values())} rows of {args.input} with k={model.k} "
          f"({time.perf_counter() - started:.1f}s)\ncluster sizes: {sizes}")
    if unlabelled:
        print(f"{unlabelled} rows have a null, NaN or infinite feature: cluster and distance "
              "are null there")
    print(f"wrote {args.output}")
    return written
