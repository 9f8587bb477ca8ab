"""The assign job (jobs/assign.py): a saved model labels a new batch, checked against brute force.

Runs go through the job's real ``__main__`` inside the test's SparkSession (no JVM per case); the
exit codes and one-line messages are the same as in a subprocess.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import types as T

from jobutil import (assert_nothing_written, assert_user_error, describe, listing,
                     write_csv)
from jobutil import run_job_in_process as _run_in_process

JOB = "jobs/assign.py"
run_assign = functools.partial(_run_in_process, JOB)
FEATURES = ["f0", "f1", "f2"]


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """A new batch (ids, three features, a tag, one row with a missing feature) and two models."""
    from kmeans_dist import KMeansModel

    d = tmp_path_factory.mktemp("assign_job")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 3)) * 2.0 + rng.integers(0, 3, size=(400, 1)) * 6.0
    rows = [[str(i), *map(float, r), f"t{i % 3}"] for i, r in enumerate(x)]
    rows[7][2] = ""  # f1 missing in row 7
    path = write_csv(d / "batch.csv", ["id", *FEATURES, "tag"], rows)
    # the same rows under other column names (a dot, a backtick), as a directory of three CSV
    # files (read in more than one partition) with no extension: only --format csv reads it
    renamed = d / "renamed"
    renamed.mkdir()
    for part, lo in enumerate(range(0, len(x), 150)):
        write_csv(renamed / f"part-{part}.csv", ["id", "a.b", "x`y", "c"],
                  [[str(i), *map(float, r)] for i, r in enumerate(x[lo:lo + 150], start=lo)])
    centroids = np.array([[0.0, 0.0, 0.0], [6.0, 6.0, 6.0], [12.0, 12.0, 12.0]])
    euclid = d / "model.json"
    KMeansModel(centroids, FEATURES).save(str(euclid))
    # renumbered after an earlier model (as the segment job and --init-model leave it)
    renumbered = d / "renumbered.json"
    KMeansModel(centroids, FEATURES, cluster_ids=[7, 3, 11], retired_ids=[0]).save(
        str(renumbered))
    cos_centroids = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.0, 0.8]])
    cosine = d / "cosine.json"
    KMeansModel(cos_centroids, FEATURES, distance="cosine").save(str(cosine))
    return {"dir": d, "csv": path, "renamed": renamed, "x": x, "model": euclid,
            "renumbered": renumbered,
            "centroids": centroids, "cosine": cosine, "cos_centroids": cos_centroids}


def brute_force(x: np.ndarray, c: np.ndarray, cosine: bool) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid and its distance, one row at a time, straight from the definitions."""
    labels, dist = [], []
    for row in x:
        if cosine:
            d = [1.0 - row @ ci / (np.linalg.norm(row) * np.linalg.norm(ci)) for ci in c]
        else:
            d = [np.sqrt(((row - ci) ** 2).sum()) for ci in c]
        labels.append(int(np.argmin(d)))
        dist.append(float(min(d)))
    return np.array(labels), np.array(dist)


def expected_frame(spark, x, labels, dist, missing=()):
    schema = T.StructType([T.StructField("id", T.IntegerType())]
                          + [T.StructField(f, T.DoubleType()) for f in FEATURES]
                          + [T.StructField("tag", T.StringType()),
                             T.StructField("cluster", T.IntegerType()),
                             T.StructField("distance", T.DoubleType())])
    rows = []
    for i, r in enumerate(x):
        feats = [float(v) for v in r]
        if i in missing:
            feats[1] = None
            rows.append((i, *feats, f"t{i % 3}", None, None))
        else:
            rows.append((i, *feats, f"t{i % 3}", int(labels[i]), float(dist[i])))
    return spark.createDataFrame(rows, schema)


@pytest.mark.parametrize("kind", ["model", "cosine"])
def test_assign_matches_brute_force(spark, batch, tmp_path, kind):
    from chispa import assert_approx_df_equality

    out = tmp_path / "assigned"
    proc = run_assign("--model", batch[kind], "--input", batch["csv"], "--output", out)
    assert proc.returncode == 0, describe(proc)
    assert "_SUCCESS" in listing(out)
    got = spark.read.parquet(str(out))
    assert got.columns == ["id", *FEATURES, "tag", "cluster", "distance"]  # every input column
    assert got.schema["cluster"].dataType == T.IntegerType()
    assert got.schema["distance"].dataType == T.DoubleType()

    cosine = kind == "cosine"
    c = batch["cos_centroids" if cosine else "centroids"]
    labels, dist = brute_force(batch["x"], c, cosine)
    assert len(set(labels)) == 3  # every cluster is used, so a label mix-up would show
    expected = expected_frame(spark, batch["x"], labels, dist, missing={7})
    assert_approx_df_equality(got, expected, 1e-9, ignore_nullable=True, ignore_row_order=True)
    # the summary line counts the labelled rows and flags the unlabelled one
    assert "labelled 399 rows" in proc.stdout and "1 rows have a null" in proc.stdout


def test_features_flag_maps_renamed_columns(spark, batch, tmp_path):
    """--features maps columns named with a dot and a backtick onto the model's; the model's
    clusters were renumbered, so ``cluster`` holds their stable ids (7, 3, 11), not 0..2. The
    same run: --format csv (the input has no extension), --partitions 1 (the input's partitions
    labelled in one: one Parquet part) and --overwrite (a file the run did not write goes)."""
    out = tmp_path / "renamed"
    out.mkdir()
    (out / "foreign.txt").write_text("not the job's\n")
    assert spark.read.csv(str(batch["renamed"]), header=True).rdd.getNumPartitions() > 1
    # paths as Hadoop URIs (file:// here; hdfs:// and s3a:// take the same code path)
    proc = run_assign("--model", f"file://{batch['renumbered']}", "--input",
                      f"file://{batch['renamed']}", "--output", f"file://{out}",
                      "--features", "a.b,x`y,c", "--format", "csv", "--partitions", "1",
                      "--overwrite")
    assert proc.returncode == 0, describe(proc)
    parts = [n for n in listing(out) if n.startswith("part-")]
    assert listing(out) == ["_SUCCESS", *parts] and len(parts) == 1
    got = {r["id"]: (r["cluster"], r["distance"])
           for r in spark.read.parquet(str(out)).collect()}
    labels, dist = brute_force(batch["x"], batch["centroids"], cosine=False)
    ids = np.array([7, 3, 11])[labels]
    assert [got[i][0] for i in range(len(labels))] == ids.tolist()
    np.testing.assert_allclose([got[i][1] for i in range(len(dist))], dist, rtol=1e-12)
    sizes = ", ".join(f"{c}: {int(np.sum(ids == c))}" for c in (3, 7, 11))
    assert f"cluster sizes: {sizes}" in proc.stdout


def _write_json(path: Path, value) -> Path:
    path.write_text(json.dumps(value))
    return path


@pytest.mark.parametrize(
    "case, needles",
    [
        ("missing_features", ["missing", "f0", "f2"]),
        ("non_numeric", ["tag", "not numeric"]),
        ("wrong_count", ["2 feature columns", "3 features"]),
        ("missing_model", ["model file not found", "nope.json"]),
        ("not_json", ["not JSON", "bad.json"]),
        ("other_version", ["format_version 99", "v99.json"]),
        ("existing_output", ["already exists", "--overwrite"]),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(batch, tmp_path, case, needles):
    model, features, extra = batch["model"], None, []
    if case == "missing_features":
        inp = write_csv(tmp_path / "partial.csv", ["f1", "x"], [[1.0, 2.0]])
    else:
        inp = batch["csv"]
    if case == "non_numeric":
        features = "f0,tag,f2"
    if case == "wrong_count":
        features = "f0,f1"
    if case == "missing_model":
        model = tmp_path / "nope.json"
    if case == "not_json":
        model = tmp_path / "bad.json"
        model.write_text("{not json")
    if case == "other_version":
        saved = json.loads(Path(batch["model"]).read_text())
        model = _write_json(tmp_path / "v99.json", {**saved, "format_version": 99})
    out = tmp_path / "out"
    if case == "existing_output":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    if features:
        extra = ["--features", features]
    proc = run_assign("--model", model, "--input", inp, "--output", out, *extra)
    assert_user_error(proc, *needles)
    if case == "existing_output":
        assert (out / "keep.txt").read_text() == "mine" and listing(out) == ["keep.txt"]
    else:
        assert_nothing_written(out)
