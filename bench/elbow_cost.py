"""What choosing k costs: k = 2..10 fitted in shared passes against 9 separate fits of this
project and 9 fits of pyspark.ml's KMeans, on the same cached data in one local[2] session.

    python bench/elbow_cost.py [--rows 200000] [--dims 8]

Prints one line per system with seconds and the ratio to one fit (the mean of the 9 separate fits).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
from pyspark.ml.clustering import KMeans as MLKMeans  # noqa: E402
from pyspark.ml.feature import VectorAssembler  # noqa: E402

from kmeans_dist import KMeans, get_session  # noqa: E402

KS = list(range(2, 11))


def timed(f):
    t0 = time.perf_counter()
    result = f()
    return result, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dims", type=int, default=8)
    a = ap.parse_args()
    logging.getLogger("kmeans_dist").setLevel(logging.WARNING)
    spark = get_session("local[2]", conf={"spark.driver.memory": "8g"})
    rng = np.random.default_rng(0)
    centres = rng.uniform(-10, 10, size=(6, a.dims))
    x = centres[rng.integers(0, 6, a.rows)] + rng.normal(scale=1.5, size=(a.rows, a.dims))
    cols = [f"f{j}" for j in range(a.dims)]
    df = spark.createDataFrame([tuple(map(float, r)) for r in x], cols).repartition(2).cache()
    df.count()
    assembled = VectorAssembler(inputCols=cols, outputCol="features").transform(df).cache()
    assembled.count()
    KMeans(3, seed=0).fit(df)  # warm-up: Python workers, numba's cache
    MLKMeans(k=3, seed=0).fit(assembled)

    together, t_many = timed(lambda: KMeans(2, seed=1).fit_many(df, KS))
    alone, t_alone = timed(lambda: {k: KMeans(k, seed=1).fit(df) for k in KS})
    _, t_ml = timed(lambda: [MLKMeans(k=k, seed=1).fit(assembled) for k in KS])
    same = all(np.allclose(together[k].centroids, alone[k].centroids, rtol=0, atol=1e-9)
               for k in KS)
    one = t_alone / len(KS)
    print(f"{a.rows} rows x {a.dims}, k = 2..10, local[2]; one fit of ours = {one:.2f}s")
    print(f"kmeans-dist fit_many (shared passes): {t_many:.1f}s = {t_many / one:.1f} fits "
          f"(models equal to the separate fits: {same})")
    print(f"kmeans-dist, 9 separate fits:        {t_alone:.1f}s = {len(KS)} fits")
    print(f"pyspark.ml KMeans, 9 fits:            {t_ml:.1f}s = {t_ml / one:.1f} fits of ours "
          f"({t_ml / t_many:.1f}x the shared-pass time)")
    spark.stop()


if __name__ == "__main__":
    main()
