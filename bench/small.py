"""Small fits, where a fit's time is Spark's fixed costs: the drop-in ``kmeans_dist.ml.KMeans``
against ``pyspark.ml.clustering.KMeans``, classic and Spark Connect, the first fit of a fresh
session and warm fits.

Each (system, session kind, workload) runs in a child process of its own, so "first fit" means the
first fit of a session that has done nothing but read its input: a fresh local[2] session, or a
fresh local[2] Spark Connect server and its client. Both systems get the same input (an
assembled vector column over the same rows) and the same Params (k, seed 1, maxIter 20,
tol 1e-4). Then the same fit three more times in that session: the warm figure is their median.
The train job on iris (what ``make run`` runs) is timed as a whole, and its fit from its log.

    python bench/small.py            # prints the table, writes bench/small.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path[:0] = [BENCH, ROOT]

SYSTEMS = ("ours", "ml")
SESSIONS = ("classic", "connect")
#: (key, rows, d, k): blobs generated here (iris is the bundled CSV)
GENERATED = (("200Kx4-k5", 200_000, 4, 5), ("250Kx2-k5", 250_000, 2, 5))
WORKLOADS = (("iris", 150, 4, 3),) + GENERATED
#: the (session, workload) pairs measured
PLAN = (("classic", "iris"), ("classic", "200Kx4-k5"), ("classic", "250Kx2-k5"),
        ("connect", "iris"), ("connect", "250Kx2-k5"))
WARM_FITS = 3


def write_inputs(tmp: str) -> dict[str, str]:
    """Each workload's input file: the bundled iris CSV, generated blobs as Parquet."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = {"iris": os.path.join(ROOT, "data", "iris.csv")}
    for key, n, d, k in GENERATED:
        rng = np.random.default_rng(7)
        centres = rng.uniform(-10, 10, size=(k, d))
        x = centres[np.arange(n) % k] + rng.normal(0, 2.0, size=(n, d))
        paths[key] = os.path.join(tmp, f"{key}.parquet")
        pq.write_table(pa.table({f"x{j}": x[:, j] for j in range(d)}), paths[key])
    return paths


# --------------------------------------------------------------------------- one child
def child(system: str, session: str, key: str, path: str, out: str) -> None:
    """Start the session, read the input, time the first fit and the warm ones; write JSON."""
    import contextlib

    import connect
    import measure

    t0 = time.perf_counter()
    with (connect.remote_session() if session == "connect"
          else contextlib.nullcontext((measure.session(), None))) as (spark, _):
        started = time.perf_counter() - t0
        result = {"system": system, "session": session, "key": key,
                  "session_seconds": started, **_fits(spark, system, key, path)}
        if session == "classic":
            spark.stop()
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(result, fh)


def _fits(spark, system: str, key: str, path: str) -> dict:
    from pyspark.ml.feature import VectorAssembler

    df = (spark.read.csv(path, header=True, inferSchema=True) if path.endswith(".csv")
          else spark.read.parquet(path))
    features = [c for c, t in df.dtypes if t in ("double", "int", "bigint")]
    assembled = VectorAssembler(inputCols=features, outputCol="features").transform(df)
    k = next(w[3] for w in WORKLOADS if w[0] == key)
    if system == "ours":
        from kmeans_dist.ml import KMeans
    else:
        from pyspark.ml.clustering import KMeans
    said = _Said()
    logging.getLogger("kmeans_dist").addHandler(said)
    logging.getLogger("kmeans_dist").setLevel(logging.INFO)
    seconds, models = [], []
    for _ in range(1 + WARM_FITS):
        estimator = KMeans(k=k, seed=1, maxIter=20, tol=1e-4)
        t0 = time.perf_counter()
        models.append(estimator.fit(assembled))
        seconds.append(time.perf_counter() - t0)
    summary = models[0].summary
    return {"first_fit": seconds[0], "warm_fit": statistics.median(seconds[1:]),
            "fit_seconds": seconds, "training_cost": summary.trainingCost,
            "n_iter": summary.numIter, "transport": said.transport}


class _Said(logging.Handler):
    """Keeps the transport the engine's log names ("transport driver: ...")."""

    transport = None

    def emit(self, record: logging.LogRecord) -> None:
        m = re.match(r"transport (\S+):", record.getMessage())
        if m and self.transport is None:
            self.transport = m.group(1)


def train_job(tmp: str) -> dict:
    """``make run``'s command on iris: the job's wall time and its fit's, from its log."""
    out = os.path.join(tmp, "iris-out")
    cmd = [sys.executable, "jobs/train.py", "--conf", "conf/local.yaml", "--input",
           "data/iris.csv", "--k", "3", "--seed", "42", "--output", out, "--overwrite",
           "--label-col", "species"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    fit = re.search(r"fit done: .* in ([\d.]+)s", proc.stderr)
    transport = re.search(r"transport (\S+):", proc.stderr)
    return {"exit_code": proc.returncode, "wall_seconds": wall,
            "fit_seconds": float(fit.group(1)) if fit else None,
            "transport": transport.group(1) if transport else None}


# --------------------------------------------------------------------------- the section
def section() -> dict:
    """Every child of PLAN for both systems, and the train job; the results as a dict."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="kmeans-small-") as tmp:
        paths = write_inputs(tmp)
        for session, key in PLAN:
            for system in SYSTEMS:
                rows.append(_spawn(system, session, key, paths[key], tmp))
        job = train_job(tmp)
    return {"results": rows, "train_job": job}


def _spawn(system: str, session: str, key: str, path: str, tmp: str) -> dict:
    out = os.path.join(tmp, f"{system}-{session}-{key}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", system, session, key, path, out]
    code = subprocess.run(cmd, cwd=ROOT).returncode
    if code != 0 or not os.path.exists(out):
        return {"system": system, "session": session, "key": key, "error": f"exit code {code}"}
    with open(out, encoding="utf-8") as fh:
        result = json.load(fh)
    print(f"[small {key} {session} {system}] first fit {result['first_fit']:.2f}s, warm "
          f"{result['warm_fit']:.2f}s", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs=5, metavar=("SYSTEM", "SESSION", "KEY", "PATH", "OUT"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--json", default=os.path.join(BENCH, "small.json"))
    args = ap.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    import report

    result = section()
    with open(args.json, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1)
    print(report.small_table(result))
    return 1 if any("error" in r for r in result["results"]) else 0


if __name__ == "__main__":
    sys.exit(main())
