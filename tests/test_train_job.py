"""End-to-end tests of the train job (jobs/train.py), run with its real flags and files.

Every subprocess that starts Spark costs a JVM (15-40 s on a busy 2-core machine), so the module
fixture ``runs`` starts them all together in the background on first use, and meanwhile runs the
data-error cases through the same script inside the test's own SparkSession; each test then checks
its own run. Errors caught by argument checking (before Spark starts) are cheap subprocesses.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from jobutil import (ROOT, TIMEOUT, assert_nothing_written, assert_user_error, describe,
                     job_env, listing, write_csv)
from jobutil import run_job as _run_job
from jobutil import run_job_in_process as _run_job_in_process

JOB = "jobs/train.py"
run_job = functools.partial(_run_job, JOB)
run_job_in_process = functools.partial(_run_job_in_process, JOB)
PARALLEL_RUNS = 3
#: data errors run in the test's own SparkSession (see ``runs``); everything else is a subprocess
IN_PROCESS = ["csv", "parquet_overwrite", "missing_feature", "non_numeric", "bad_init_shape",
              "k_too_large", "nan_feature", "exists", "missing_input"]

IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
MODEL_KEYS = {"format_version", "k", "features", "distance", "centroids", "inertia", "n_iter",
              "converged", "cluster_sizes", "params"}
REPORT_KEYS = {"history", "inertia", "n_iter", "converged", "cluster_sizes", "seconds"}
HISTORY_KEYS = {"iteration", "inertia", "moved", "shift", "seconds", "computed"}
ITERATION_LINE = re.compile(
    r"iteration (\d+): inertia (\S+), moved (\d+), shift (\S+), distances (\S+)%, (\S+) ?s\s*$",
    re.MULTILINE,
)


# --------------------------------------------------------------------------- helpers


# --------------------------------------------------------------------------- input data


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Inputs in a temporary directory: iris CSV (+ string label), weighted Parquet, bad CSVs."""
    from sklearn.datasets import load_iris, make_blobs

    d = tmp_path_factory.mktemp("train_job")
    x, y = load_iris(return_X_y=True)
    species = np.array(["setosa", "versicolor", "virginica"])[y]
    # floats written with repr() read back bit-exactly, so sklearn sees the same numbers as Spark
    iris = write_csv(d / "iris.csv", IRIS_FEATURES + ["species"],
                     [[*map(float, r), s] for r, s in zip(x, species)])
    init = x[[0, 1, 2]]  # three close setosa rows: a real run of ~12 Lloyd iterations
    init_csv = write_csv(d / "init.csv", IRIS_FEATURES, init)
    bad_init = write_csv(d / "bad_init.csv", IRIS_FEATURES, x[[0, 60]])  # 2 rows for k=3

    bx, _ = make_blobs(n_samples=240, n_features=3, centers=3, cluster_std=2.0,
                       center_box=(5.0, 25.0), random_state=7)
    rng = np.random.default_rng(11)
    w = rng.uniform(0.2, 3.0, size=len(bx))
    features = ["x3", "x1"]  # not the column order, and x2 left out
    bxf = bx[:, [2, 0]]
    blobs_init = bxf[[0, 1, 2]]
    blobs_init_csv = write_csv(d / "blobs_init.csv", features, blobs_init)

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "id": pa.array(np.arange(len(bx)), pa.int64()),
        "x1": bx[:, 0], "x2": bx[:, 1], "x3": bx[:, 2], "w": w,
        "tag": [f"t{i % 4}" for i in range(len(bx))],
    })
    # a Parquet dataset (three files, read in more than one partition) whose name says .csv:
    # only --format parquet makes it readable
    blobs = d / "points.csv"
    blobs.mkdir()
    for part, lo in enumerate(range(0, len(bx), 80)):
        pq.write_table(table.slice(lo, 80), blobs / f"part-{part}.parquet")

    tiny = write_csv(d / "tiny.csv", ["a", "b"], [[1, 2], [3, 4], [5, 6.5], [7, 8], [9, 10]])
    holes = d / "holes.csv"
    holes.write_text("a,b,name\n1.0,2.0,p\n3.0,,q\n5.0,6.5,r\n7.0,8.0,s\n")

    return {
        "dir": d, "iris": iris, "x": x, "species": species, "init": init, "init_csv": init_csv,
        "bad_init": bad_init, "blobs": blobs, "bx": bxf, "w": w, "blobs_features": features,
        "blobs_init": blobs_init, "blobs_init_csv": blobs_init_csv, "tiny": tiny, "holes": holes,
    }


# --------------------------------------------------------------------------- the Spark runs


def _spark_runs(data) -> dict[str, tuple[list[str], Path]]:
    d = data["dir"]
    iris, tiny = str(data["iris"]), str(data["tiny"])

    def out(name):
        return d / name

    runs = {
        "csv": ["--input", iris, "--k", "3", "--init", data["init_csv"], "--seed", "5",
                "--label-col", "species"],
        "parquet_overwrite": [
            "--input", data["blobs"], "--format", "parquet", "--k", "3",
            "--features", ",".join(data["blobs_features"]), "--weight-col", "w",
            "--init", data["blobs_init_csv"], "--overwrite", "--partitions", "1",
            "--algorithm", "lloyd",
        ],
        "exists": ["--input", tiny, "--k", "2"],
        "missing_input": ["--input", d / "no_such_input.csv", "--k", "2"],
        "missing_feature": ["--input", iris, "--k", "3", "--features", "sepal_length,petal_size"],
        "non_numeric": ["--input", iris, "--k", "3", "--features", "sepal_length,species"],
        "bad_init_shape": ["--input", iris, "--k", "3", "--init", data["bad_init"]],
        "k_too_large": ["--input", tiny, "--k", "6"],
        "nan_feature": ["--input", data["holes"], "--k", "2"],
    }
    return {name: ([str(a) for a in args] + ["--output", str(out(f"out_{name}"))],
                   out(f"out_{name}")) for name, args in runs.items()}


@pytest.fixture(scope="module")
def runs(data, request):
    """Every Spark-starting run: name -> (process, output dir).

    The subprocess runs start together in the background on first use; while they run, the test
    SparkSession starts and the data-error cases run in it (set KMEANS_E2E_SUBPROCESS=1 to run
    those as subprocesses too: a JVM each, ~15-30 s apiece on a busy 2-core machine).
    """
    specs = _spark_runs(data)
    # existing output directories, each with a sentinel file
    for name in ("exists", "parquet_overwrite"):
        out = specs[name][1]
        out.mkdir()
        (out / "sentinel.txt").write_text("keep me\n")
    in_process = [] if os.environ.get("KMEANS_E2E_SUBPROCESS") == "1" else IN_PROCESS
    # slowest first
    order = ["csv", "parquet_overwrite", "k_too_large", "nan_feature", "missing_feature",
             "non_numeric", "bad_init_shape", "exists", "missing_input"]
    with ThreadPoolExecutor(PARALLEL_RUNS) as pool:
        futures = {name: pool.submit(run_job, *specs[name][0])
                   for name in order if name not in in_process}
        make_out = data["dir"] / "out_make_run"
        specs["make_run"] = ([], make_out)
        order.append("make_run")
        results = {}
        request.getfixturevalue("spark")
        for name in in_process:
            results[name] = run_job_in_process(*specs[name][0])
        # the Makefile's command line as written, run from the repository (its paths are
        # relative to it), in this process: the same job and flags, without a JVM start
        python, job, *args = make_run_command(make_out)
        assert python == sys.executable and job == "jobs/train.py"
        here = os.getcwd()
        os.chdir(ROOT)
        try:
            results["make_run"] = _run_job_in_process(job, *args, master=None)
        finally:
            os.chdir(here)
        results.update({name: f.result() for name, f in futures.items()})
    return {name: (results[name], specs[name][1]) for name in order}


def make_run_command(out: Path) -> list[str]:
    """The Makefile's ``run`` recipe as written, with this Python as $(PY) and ``out`` as
    $(OUT)."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    recipe = lines[next(i for i, ln in enumerate(lines) if ln.startswith("run:")) + 1]
    assert recipe.startswith("\t$(PY) jobs/train.py "), recipe
    command = recipe.strip().replace("$(PY)", sys.executable).replace("$(OUT)", str(out))
    assert "$(" not in command, command
    return shlex.split(command)


def ok_run(runs, name):
    proc, out = runs[name]
    assert proc.returncode == 0, describe(proc)
    return proc, out


def read_json(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


# --------------------------------------------------------------------------- 1. CSV, explicit init


def test_csv_fit_matches_sklearn_and_writes_contract(runs, data):
    from sklearn.cluster import KMeans as SkKMeans

    proc, out = ok_run(runs, "csv")
    assert listing(out) == ["_SUCCESS", "assignments", "model.json", "plots", "report.json"]
    model = read_json(out / "model.json")
    n = len(data["x"])

    # every contract field, with the right type
    assert MODEL_KEYS <= set(model), MODEL_KEYS - set(model)
    assert model["format_version"] == 1 and type(model["format_version"]) is int
    assert model["k"] == 3 and type(model["k"]) is int
    # default features: the numeric columns, in file order; the string label is not one
    assert model["features"] == IRIS_FEATURES
    assert model["distance"] == "euclidean"
    assert isinstance(model["centroids"], list) and len(model["centroids"]) == 3
    assert all(isinstance(r, list) and len(r) == 4 for r in model["centroids"])
    assert all(type(v) is float and math.isfinite(v) for r in model["centroids"] for v in r)
    assert type(model["inertia"]) is float
    assert type(model["n_iter"]) is int and 1 <= model["n_iter"] <= 300
    assert type(model["converged"]) is bool and model["converged"] is True
    # a small fit runs in the driver without being asked, and the model says so
    assert model["transport"]["name"] == "driver" and model["transport"]["rows"] == n
    sizes = model["cluster_sizes"]
    assert isinstance(sizes, list) and all(type(s) is int for s in sizes)
    assert len(sizes) == 3 and sum(sizes) == n
    params = model["params"]
    assert isinstance(params, dict)
    assert params["k"] == 3 and params["init"] == str(data["init_csv"]) and params["seed"] == 5
    assert params["max_iter"] == 300 and params["tol"] == 0.0
    assert params["distance"] == "euclidean" and params["weight_col"] is None

    # exactly scikit-learn's Lloyd from the same initial centroids
    sk = SkKMeans(3, init=data["init"], n_init=1, algorithm="lloyd", tol=0, max_iter=300).fit(
        data["x"])
    np.testing.assert_allclose(np.array(model["centroids"]), sk.cluster_centers_,
                               rtol=1e-9, atol=0)
    assert model["inertia"] == pytest.approx(sk.inertia_, rel=1e-9)
    assert sizes == np.bincount(sk.labels_, minlength=3).tolist()

    # report.json
    report = read_json(out / "report.json")
    assert REPORT_KEYS <= set(report), REPORT_KEYS - set(report)
    assert report["inertia"] == model["inertia"]
    assert report["n_iter"] == model["n_iter"]
    assert report["converged"] is model["converged"]
    assert report["cluster_sizes"] == sizes
    assert isinstance(report["seconds"], (int, float)) and report["seconds"] > 0
    history = report["history"]
    assert len(history) == model["n_iter"]
    for i, entry in enumerate(history, start=1):
        assert set(entry) == HISTORY_KEYS, entry
        assert entry["iteration"] == i
        assert type(entry["moved"]) is int and 0 <= entry["moved"] <= n
        assert isinstance(entry["inertia"], float) and entry["inertia"] >= 0
        assert isinstance(entry["shift"], float) and entry["shift"] >= 0
        assert isinstance(entry["seconds"], (int, float)) and entry["seconds"] >= 0
        assert 0 <= entry["computed"] <= 1
    assert history[0]["computed"] == 1.0  # the first pass computes every distance
    assert model["params"]["algorithm"] == "auto"  # the default
    assert history[-1]["moved"] == 0  # converged with tol=0: no row changed cluster
    assert all(e["moved"] > 0 for e in history[:-1])
    # the stop rule that ended it, the same history and no dropped rows in both files; no
    # spreads from the train job (only the segment job writes them)
    assert report["stop"] == model["stop"] == "no_change"
    assert model["history"] == history and report["dropped"] == model["dropped"] == {}
    assert model["cluster_spread"] is None
    # on a filesystem with an atomic rename, _SUCCESS is an empty marker
    assert (out / "_SUCCESS").read_bytes() == b""

    # one log line per iteration, numbered 1..n_iter, matching the history
    logged = ITERATION_LINE.findall(proc.stderr)
    assert [int(m[0]) for m in logged] == list(range(1, model["n_iter"] + 1)), proc.stderr
    assert [int(m[2]) for m in logged] == [e["moved"] for e in history]
    percent = [float(f"{100 * e['computed']:.3g}") for e in history]
    assert [float(m[4]) for m in logged] == percent
    assert str(out) in proc.stdout  # the summary says where it wrote

    # --label-col: clusters cross-tabulated against the known species, counted here by numpy
    lines = proc.stdout[proc.stdout.index("clusters against species:"):].splitlines()[1:5]
    header = lines[0].split()
    table = {int(r.split()[0]): dict(zip(header[1:], map(int, r.split()[1:]))) for r in lines[1:]}
    for c in range(3):
        for sp in np.unique(data["species"]):
            assert table[c].get(sp, 0) == int(np.sum((sk.labels_ == c) & (data["species"] == sp)))


# --------------------------------------------------------------------------- 2. assignments


def test_assignments_equal_model_transform(runs, data, spark):
    from chispa import assert_df_equality
    from pyspark.sql import types as T

    from kmeans_dist.model import KMeansModel

    _, out = ok_run(runs, "csv")
    assignments = spark.read.parquet(str(out / "assignments"))
    assert assignments.schema["cluster"].dataType == T.IntegerType()
    assert assignments.columns == IRIS_FEATURES + ["species", "cluster"]  # label kept
    assert dict(assignments.dtypes)["species"] == "string"

    model = KMeansModel.load(str(out / "model.json"))
    input_df = spark.read.option("header", True).option("inferSchema", True).csv(
        str(data["iris"]))
    expected = model.transform(input_df)
    assert_df_equality(assignments, expected, ignore_row_order=True)

    counts = {r["cluster"]: r["count"] for r in assignments.groupBy("cluster").count().collect()}
    assert counts == {i: s for i, s in enumerate(read_json(out / "model.json")["cluster_sizes"])}


# --------------------------------------------------------------------------- 3. Parquet, weights


def test_parquet_features_and_weights(runs, data, spark):
    from sklearn.cluster import KMeans as SkKMeans

    _, out = ok_run(runs, "parquet_overwrite")
    model = read_json(out / "model.json")
    assert model["features"] == data["blobs_features"]  # as given, in that order
    assert model["params"]["weight_col"] == "w"
    assert model["params"]["algorithm"] == "lloyd"  # --algorithm lloyd: every distance, always
    assert all(e["computed"] == 1.0 for e in model["history"])
    assert np.array(model["centroids"]).shape == (3, 2)
    assert sum(model["cluster_sizes"]) == len(data["bx"])

    sk = SkKMeans(3, init=data["blobs_init"], n_init=1, algorithm="lloyd", tol=0,
                  max_iter=300).fit(data["bx"], sample_weight=data["w"])
    np.testing.assert_allclose(np.array(model["centroids"]), sk.cluster_centers_,
                               rtol=1e-9, atol=0)
    assert model["inertia"] == pytest.approx(sk.inertia_, rel=1e-9)

    assignments = spark.read.parquet(str(out / "assignments"))
    assert assignments.columns == ["id", "x1", "x2", "x3", "w", "tag", "cluster"]
    assert assignments.count() == len(data["bx"])

    # --partitions 1: the input's partitions were fitted as one
    assert spark.read.parquet(str(data["blobs"])).rdd.getNumPartitions() > 1
    assert model["transport"]["name"] == "driver" and model["transport"]["partitions"] == 1


# --------------------------------------------------------------------------- 4. existing output


def test_existing_output_dir_is_refused_and_untouched(runs):
    proc, out = runs["exists"]
    assert_user_error(proc, str(out), "--overwrite")
    assert sorted(os.listdir(out)) == ["sentinel.txt"]
    assert (out / "sentinel.txt").read_text() == "keep me\n"


def test_overwrite_replaces_existing_output_dir(runs):
    _, out = ok_run(runs, "parquet_overwrite")
    assert listing(out) == ["_SUCCESS", "assignments", "model.json", "plots", "report.json"]
    assert not (out / "sentinel.txt").exists()
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert not leftovers


# --------------------------------------------------------------------------- 5. user errors


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--k", "0"], ["k", "got 0"]),
        (["--k", "2.5"], ["--k", "2.5"]),
        (["--k", "2", "--init", "foo"], ["init", "foo"]),
        (["--k", "2", "--distance", "manhattan"], ["distance", "manhattan"]),
        (["--k", "2", "--max-iter", "0"], ["max_iter", "got 0"]),
        (["--k", "2", "--tol", "-1"], ["tol", "-1"]),
        (["--k", "2", "--dtype", "float16"], ["--dtype", "float16", "float64", "float32"]),
    ],
    ids=["k=0", "k=2.5", "init=foo", "distance=manhattan", "max-iter=0", "tol=-1",
         "dtype=float16"],
)
def test_bad_parameters(tmp_path, data, args, needles):
    out = tmp_path / "out"
    proc = run_job("--input", data["iris"], *args, "--output", out)
    assert_user_error(proc, *needles)
    assert_nothing_written(out)


@pytest.mark.parametrize(
    "name, needles",
    [
        ("missing_input", ["no_such_input.csv"]),
        ("missing_feature", ["petal_size"]),
        ("non_numeric", ["species"]),
        ("bad_init_shape", ["bad_init.csv"]),
        ("k_too_large", ["k=6", "(5)"]),
        ("nan_feature", ["feature"]),
    ],
)
def test_bad_input(runs, data, name, needles):
    proc, out = runs[name]
    line = assert_user_error(proc, *needles)
    if name == "missing_input":
        assert str(data["dir"] / "no_such_input.csv") in line
    if name == "bad_init_shape":
        assert str(data["bad_init"]) in line
    if name == "nan_feature":
        assert "null" in line or "NaN" in line, line
        assert "'b'" in line or '"b"' in line, f"the bad column is not named: {line}"
    assert_nothing_written(out)


# --------------------------------------------------------------------------- 6. make run


def readme_make_run_printout() -> list[str]:
    """The printout the README shows for ``make run`` (the fenced block after its sentence)."""
    text = (ROOT / "README.md").read_text()
    after = text[text.index("`make run` prints one line per iteration"):]
    block = after[after.index("```\n") + 4:]
    return block[:block.index("```")].rstrip("\n").splitlines()


def test_make_run_prints_what_the_readme_shows(runs):
    """The Makefile's ``run`` line (iris, k=3, seed 42, conf/local.yaml): one log line per
    iteration, then the README's printout (but the seconds and the output path). That fit is
    scikit-learn's best of ten starts (the known 78.85 optimum, centroids to rounding), and the
    species table is counted from scikit-learn's labels."""
    from sklearn.cluster import KMeans as SkKMeans

    proc, out = ok_run(runs, "make_run")
    assert listing(out) == ["_SUCCESS", "assignments", "model.json", "plots", "report.json"]
    # run in the test's session, so its master is the session's (conf/local.yaml's own master,
    # local[*], is test_config's job_master test)
    assert "config: conf/local.yaml; master " in proc.stderr

    def normal(lines):
        return [re.sub(r"; [0-9.]+s$", "; <seconds>", ln).replace("out/iris", "<out>")
                for ln in lines]

    printed = proc.stdout.replace(str(out), "out/iris").rstrip("\n").splitlines()
    shown = readme_make_run_printout()
    assert normal(printed) == normal(shown)
    n_iter = int(re.search(r"after (\d+) iterations", shown[1]).group(1))
    logged = ITERATION_LINE.findall(proc.stderr)
    assert [int(m[0]) for m in logged] == list(range(1, n_iter + 1)), proc.stderr

    rows = (ROOT / "data" / "iris.csv").read_text().splitlines()
    header = rows[0].split(",")
    x = np.array([[float(v) for v in r.split(",")[:4]] for r in rows[1:]])
    species = np.array([r.split(",")[header.index("species")] for r in rows[1:]])
    sk = SkKMeans(3, n_init=10, random_state=0, algorithm="lloyd", tol=0).fit(x)
    model = read_json(out / "model.json")
    centroids = np.array(model["centroids"])
    # our cluster row of each of scikit-learn's clusters: the nearest centroid
    ours = [int(np.argmin(((centroids - c) ** 2).sum(axis=1))) for c in sk.cluster_centers_]
    assert sorted(ours) == [0, 1, 2]
    np.testing.assert_allclose(centroids[ours], sk.cluster_centers_, rtol=1e-9, atol=0)
    assert model["inertia"] == pytest.approx(sk.inertia_, rel=1e-9)
    labels = np.array(ours)[sk.labels_]
    table = [ln.split() for ln in printed[printed.index("clusters against species:") + 1:]]
    assert table[0] == ["cluster", "setosa", "versicolor", "virginica"]
    for row in table[1:]:
        c = int(row[0])
        assert [int(v) for v in row[1:]] == [int(np.sum((labels == c) & (species == sp)))
                                            for sp in table[0][1:]]
