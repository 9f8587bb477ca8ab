"""What TLS costs the resident transport: seconds per Lloyd iteration with the side channel in
clear text and over TLS (what a cluster with Spark's security on gets), same data, same start.

    python bench/tls_cost.py [--rows 2000000] [--dims 16] [--k 16] [--iters 8] [--rounds 2]

Each round builds a clear and a TLS transport in turn (which goes first alternates) over the same
cached rows and runs ``--iters`` Lloyd iterations from the same C0 on each (after one warm-up
iteration); prints per round and mode the median seconds per iteration, then per mode the minimum
and median over every round, and checks both modes gave the same partials.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import measure  # noqa: E402
from kmeans_dist import kernels, tasks  # noqa: E402
from kmeans_dist.transport import ResidentTransport  # noqa: E402


def iterations(transport: ResidentTransport, c0: np.ndarray, iters: int,
               run_id: str) -> tuple[list[float], list[float]]:
    """Lloyd from ``c0``: (seconds of each iteration after a warm-up one, each one's inertia)."""
    centroids, prev, secs, inertias = c0, None, [], []
    for it in range(1, iters + 2):
        t0 = time.perf_counter()
        step = tasks.LloydStep(run_id, it, centroids, prev)
        total = kernels.fold([p[0] for p in transport.run(tasks.lloyd_many, [step])])
        prev, centroids = centroids, kernels.update_centroids(total, centroids)[0]
        if it > 1:
            secs.append(time.perf_counter() - t0)
            inertias.append(total.inertia)
    return secs, inertias


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--dims", type=int, default=16)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    logging.getLogger("kmeans_dist").setLevel(logging.WARNING)
    spark = measure.session()
    parts = spark.sparkContext.defaultParallelism
    df = measure.blobs(spark, a.rows, a.dims, a.k, parts).cache()
    df.count()
    c0 = measure.initial_centroids(df, a.k, a.rows)
    packed = measure.packing(df, list(df.columns))
    secs: dict[bool, list[float]] = {False: [], True: []}
    inertias: dict[bool, list[float]] = {}
    print(f"{a.rows} rows x {a.dims}, k={a.k}, local[2], {parts} resident tasks, "
          f"{a.rounds} x {a.iters} iterations per mode")
    for r in range(a.rounds):
        for secure in (False, True) if r % 2 == 0 else (True, False):
            transport = ResidentTransport(packed, a.dims, secure=secure)
            try:
                assert transport.fallback is None, "resident tasks did not start"
                got, inertias[secure] = iterations(transport, c0, a.iters, f"tls-{r}-{secure}")
                secs[secure] += got
            finally:
                transport.release()
            print(f"  round {r + 1}, {'TLS' if secure else 'clear'}: median "
                  f"{statistics.median(got):.4f} s/iter", flush=True)
    for secure, name in ((False, "clear text"), (True, "TLS")):
        print(f"  {name:10s}: min {min(secs[secure]):.4f} s/iter, "
              f"median {statistics.median(secs[secure]):.4f} s/iter")
    extra = statistics.median(secs[True]) - statistics.median(secs[False])
    print(f"  TLS - clear (medians): {extra * 1000:+.1f} ms per iteration; "
          f"same partials: {inertias[True] == inertias[False]}")
    spark.stop()


if __name__ == "__main__":
    main()
