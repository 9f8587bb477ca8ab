"""Rough seconds per Lloyd iteration: kmeans-dist vs Spark MLlib from the same initial centroids.

A first figure for the core engine; the full benchmark (floors, memory, scaling) is bench's job.
    python bench/quick_iteration.py --rows 2000000 --dims 16 --k 16 --iters 10
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from kmeans_dist import KMeans, get_session  # noqa: E402


def blobs(spark, n, d, k, parts, seed=0):
    """n rows around k overlapping centres (noise std 4), generated inside Spark."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-10, 10, size=(k, d))
    cid = (F.col("id") % k).cast("int")
    cols = [
        (F.element_at(F.array(*[F.lit(float(c)) for c in centres[:, j]]), cid + 1)
         + 4.0 * F.randn(seed + j)).alias(f"x{j}")
        for j in range(d)
    ]
    return spark.range(0, n, numPartitions=parts).select(*cols)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--dims", type=int, default=16)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--iters", type=int, default=10)
    a = ap.parse_args()
    spark = get_session("local[2]", conf={"spark.driver.memory": "8g"})
    parts = spark.sparkContext.defaultParallelism
    df = blobs(spark, a.rows, a.dims, a.k, parts).cache()
    df.count()
    init = np.array(df.sample(fraction=20 * a.k / a.rows, seed=1).limit(a.k).collect(),
                    dtype=np.float64)

    ours = {}
    for transport in ("files", "rdd"):
        model = KMeans(a.k, init=init, max_iter=a.iters, transport=transport).fit(df)
        ours[transport] = statistics.median(h["seconds"] for h in model.history[1:])

    from pyspark.mllib.clustering import KMeans as MLlibKMeans, KMeansModel as MLlibModel
    vecs = df.rdd.map(lambda r: np.array(r, dtype=np.float64)).cache()
    vecs.count()

    def mllib(iters):
        t = time.perf_counter()
        m = MLlibKMeans.train(vecs, a.k, maxIterations=iters, initialModel=MLlibModel(list(init)),
                              epsilon=0.0)
        return time.perf_counter() - t, m

    mllib(1)
    t1, _ = mllib(1)
    tn, m = mllib(a.iters)
    theirs = (tn - t1) / (a.iters - 1)
    agree = np.abs(np.array(m.clusterCenters) - model.centroids).max()
    print(f"{a.rows} x {a.dims}, k={a.k}, {parts} partitions, {a.iters} iterations "
          f"(ours converged after {model.n_iter}; max centroid difference to MLlib {agree:.2g})")
    for transport, sec in ours.items():
        print(f"kmeans-dist ({transport}): {sec:.3f} s/iter (median), MLlib: {theirs:.3f} s/iter, "
              f"MLlib/ours = {theirs / sec:.2f}")


if __name__ == "__main__":
    main()
