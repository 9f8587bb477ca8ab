"""Bad input through the jobs: exit code 2, one last stderr line ``error: ...`` naming the file,
column, key or value, and nothing written (no output directory, no staging leftovers).

Cases already covered by test_train_job.py (k=0, k=2.5, unknown init and distance, max-iter 0,
tol -1, missing input, missing or non-numeric feature, init file of the wrong shape, k > rows,
null feature, existing output) and test_assign_job.py (missing, non-JSON or other-version model,
missing or non-numeric model features, wrong --features count, existing output) are not repeated.

Errors raised before Spark starts run as real subprocesses (cheap: no JVM). Errors that need
Spark run through the same ``__main__`` inside the test's SparkSession, except two that run as
real subprocesses (started in the background first) to prove the real exit code. Where the
Python API has the same case, it must raise the same message. Beside them, in the background
too, one real job whose fit fails for a reason of ours (not the input's): exit 1, traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from jobutil import (ROOT, TIMEOUT, assert_nothing_written, assert_user_error, describe,
                     job_env, last_line, run_job, run_job_in_process, write_csv)

TRAIN, ASSIGN = "jobs/train.py", "jobs/assign.py"
NAN_REASON = "null, NaN or infinite feature value"


# --------------------------------------------------------------------------- inputs


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Every bad (and one good) input, in a temporary directory."""
    from kmeans_dist import KMeansModel

    d = tmp_path_factory.mktemp("bad_input")
    good = [[1.0, 2.0], [1.5, 1.8], [5.0, 8.0], [8.0, 8.0], [1.0, 0.6], [9.0, 11.0]]
    f = {"dir": d, "good": write_csv(d / "good.csv", ["a", "b"], good)}
    f["header_only"] = write_csv(d / "header_only.csv", ["a", "b"], [])
    for name, value in (("nan", "NaN"), ("pinf", "Inf"), ("ninf", "-Inf")):
        f[name] = write_csv(d / f"{name}.csv", ["a", "b"], [*good[:3], [value, "2.0"], *good[3:]])
    f["mixed"] = write_csv(d / "mixed.csv", ["a", "b"],
                           [*good, ["NaN", "1.0"], ["", "2.0"], ["3.0", "Inf"]])
    f["all_bad"] = write_csv(d / "all_bad.csv", ["a", "b"],
                             [["NaN", "1.0"], ["", "2.0"], ["3.0", "-Inf"]])
    f["two_distinct"] = write_csv(d / "two_distinct.csv", ["a", "b"],
                                  [[1.0, 2.0]] * 4 + [[3.0, 4.0]] * 3)
    f["neg_weight"] = write_csv(d / "neg_weight.csv", ["a", "b", "w"],
                                [[*r, 1.0] for r in good[:4]] + [[*good[4], -1.0]])
    f["null_weight"] = write_csv(d / "null_weight.csv", ["a", "b", "w"],
                                 [[*map(str, r), "1.0"] for r in good[:4]] + [["1.0", "0.6", ""]])
    f["zero_row"] = write_csv(d / "zero_row.csv", ["a", "b"], [*good, [0.0, 0.0]])
    f["init_nan"] = write_csv(d / "init_nan.csv", ["a", "b"], [[1.0, 2.0], ["nan", "8.0"]])
    f["model"] = d / "model.json"
    f["model"].write_text(KMeansModel(np.array([[1.0, 2.0], [8.0, 9.0]]), ["a", "b"]).to_json())
    bad_dim = json.loads(f["model"].read_text())
    bad_dim["centroids"] = [[1.0, 2.0, 3.0], [8.0, 9.0, 10.0]]  # 3 columns, 2 features
    f["bad_dim"] = d / "bad_dim.json"
    f["bad_dim"].write_text(json.dumps(bad_dim))
    f["bad_yaml"] = d / "bad_yaml.yaml"
    f["bad_yaml"].write_text("master: [local\n")
    f["unknown_key"] = d / "unknown_key.yaml"
    f["unknown_key"].write_text("masterr: local[2]\n")
    f["a_file"] = d / "a_file"
    f["a_file"].write_text("not a directory\n")
    return f


# --------------------------------------------------------------------------- the cases


@dataclass
class Case:
    """One bad input: the job, its flags (from the files), what the error line must name, and
    optionally the Python API call that must raise the same message."""

    job: str
    args: Callable[[dict], list]
    needles: list[str]
    api: Callable[[dict], object] | None = None
    output: Callable[[dict, Path], Path] = field(default=lambda f, tmp: tmp / "out")


def _train(name: str, *more: str) -> Callable[[dict], list]:
    return lambda f: ["--input", f[name], *more]


def _fit(name: str, k: int, **kwargs) -> Callable[[dict], object]:
    """The API call matching a train case: KMeans(k, **kwargs).fit(the same table)."""
    def call(f):
        from kmeans_dist import KMeans, io

        return KMeans(k, **kwargs).fit(io.read_table(str(f[name])))
    return call


def _load(name: str) -> Callable[[dict], object]:
    def call(f):
        from kmeans_dist import KMeansModel

        return KMeansModel.load(str(f[name]))
    return call


def _read(name: str) -> Callable[[dict], object]:
    def call(f):
        from kmeans_dist import io

        return io.read_table(str(f[name]))
    return call


#: fail before Spark starts: real subprocesses, no JVM
BEFORE_SPARK = {
    "invalid_policy": Case(TRAIN, _train("good", "--k", "2", "--invalid", "sometimes"),
                           ["invalid", "'sometimes'", "error, skip"]),
    "conf_bad_yaml": Case(TRAIN, lambda f: ["--input", f["good"], "--k", "2", "--conf",
                                            f["bad_yaml"]], ["bad_yaml.yaml", "not valid YAML"]),
    "conf_unknown_key": Case(ASSIGN, lambda f: ["--model", f["model"], "--input", f["good"],
                                                "--conf", f["unknown_key"]],
                             ["unknown_key.yaml", "unknown key 'masterr'"]),
}

#: need Spark: run inside the test's SparkSession
IN_SPARK = {
    "no_rows": Case(TRAIN, _train("header_only", "--k", "2"), ["header_only.csv", "has no rows"],
                    api=_read("header_only")),
    "nan_feature": Case(TRAIN, _train("nan", "--k", "2"),
                        ["1 input row has", NAN_REASON, "'a': 'NaN'", "--invalid skip"],
                        api=_fit("nan", 2, seed=1)),
    "inf_feature": Case(TRAIN, _train("pinf", "--k", "2"), ["1 input row has", "'a': 'inf'"]),
    "minus_inf_feature": Case(TRAIN, _train("ninf", "--k", "2"), ["1 input row has", "'a': '-inf'"]),
    "k_above_distinct_rows": Case(TRAIN, _train("two_distinct", "--k", "4", "--seed", "3"),
                                  ["k=4", "number of distinct rows (2)"],
                                  api=_fit("two_distinct", 4, seed=3)),
    "init_file_missing": Case(TRAIN, _train("good", "--k", "2", "--init", "/nonexistent/c.csv"),
                              ["init centroid file not found", "/nonexistent/c.csv"],
                              api=_fit("good", 2, init="/nonexistent/c.csv")),
    "init_file_nan": Case(TRAIN, lambda f: ["--input", f["good"], "--k", "2", "--init",
                                            f["init_nan"]],
                          ["init_nan.csv", "non-finite value nan", "row 1, column 0"],
                          api=lambda f: _fit("good", 2, init=str(f["init_nan"]))(f)),
    "negative_weight": Case(TRAIN, _train("neg_weight", "--k", "2", "--weight-col", "w"),
                            ["1 input row has", "negative", "'w': -1.0"]),
    "null_weight": Case(TRAIN, _train("null_weight", "--k", "2", "--weight-col", "w"),
                        ["1 input row has", "weight", "'w': None"]),
    "zero_row_cosine": Case(TRAIN, _train("zero_row", "--k", "2", "--distance", "cosine"),
                            ["1 input row has", "zero vector", "cosine", "'a': 0.0, 'b': 0.0"]),
    # checked as soon as the input is read: before, it was checked after every output was written
    "label_col_missing": Case(TRAIN, _train("good", "--k", "2", "--seed", "1", "--label-col",
                                            "species"),
                              ["label column 'species' not found", "'a', 'b'"]),
    "assign_input_missing": Case(ASSIGN, lambda f: ["--model", f["model"], "--input",
                                                    f["dir"] / "nope.csv"],
                                 ["input not found", "nope.csv"]),
    "assign_no_rows": Case(ASSIGN, lambda f: ["--model", f["model"], "--input",
                                              f["header_only"]], ["header_only.csv", "no rows"]),
    "assign_model_dimension": Case(ASSIGN, lambda f: ["--model", f["bad_dim"], "--input",
                                                      f["good"]],
                                   ["bad_dim.json", "shape (2, 3)", "expected (2, 2)"],
                                   api=_load("bad_dim")),
}

#: need Spark, run as real subprocesses (a JVM each) to prove the exit code end to end
SUBPROCESS = {
    "no_valid_rows": Case(TRAIN, _train("all_bad", "--k", "2", "--invalid", "skip"),
                          ["input has no valid rows", "3 dropped", NAN_REASON],
                          api=_fit("all_bad", 2, invalid="skip")),
    "output_parent_is_file": Case(ASSIGN, lambda f: ["--model", f["model"], "--input", f["good"]],
                                  ["cannot write output directory", "a_file", "is a file"],
                                  output=lambda f, tmp: f["a_file"] / "out"),
}


def _argv(case: Case, f: dict, out: Path) -> list:
    return [*case.args(f), "--output", out]


#: the train job with a failure injected deep inside the fit: numpy's own ValueError from the
#: Lloyd loop, an error of ours (a bug), not of the user's input
INJECTED = """
import runpy, sys
import numpy as np
import kmeans_dist.engine as engine
def broken_lloyd(*args, **kwargs):
    return np.zeros(2).reshape(3)
engine.lloyd_many = broken_lloyd
sys.argv = ["jobs/train.py", *sys.argv[1:]]
runpy.run_path("jobs/train.py", run_name="__main__")
"""


def run_injected(data: Path, out: Path) -> subprocess.CompletedProcess:
    """The train job, in a process of its own, with ``INJECTED``'s failure."""
    return subprocess.run([sys.executable, "-c", INJECTED, "--input", str(data), "--k", "2",
                           "--seed", "1", "--output", str(out), "--master", "local[1]"],
                          cwd=ROOT, env=job_env(), capture_output=True, text=True,
                          timeout=TIMEOUT)


@pytest.fixture(scope="module", autouse=True)
def background(files, tmp_path_factory):
    """The SUBPROCESS runs and the ``INJECTED`` one, started together before anything else:
    name -> (future, output)."""
    outs = {name: case.output(files, tmp_path_factory.mktemp(name))
            for name, case in SUBPROCESS.items()}
    with ThreadPoolExecutor(len(SUBPROCESS) + 1) as pool:
        runs = {name: (pool.submit(run_job, case.job, *_argv(case, files, outs[name])),
                       outs[name]) for name, case in SUBPROCESS.items()}
        out = tmp_path_factory.mktemp("injected") / "out"
        runs["injected"] = (pool.submit(run_injected, files["good"], out), out)
        yield runs


# --------------------------------------------------------------------------- checks


def check_nothing_written(out: Path, files: dict) -> None:
    if out.parent == files["a_file"]:  # the output's parent is a file: it must be untouched
        assert files["a_file"].read_text() == "not a directory\n"
        assert not [p for p in files["dir"].iterdir() if p.name.startswith(".a_file")]
    else:
        assert_nothing_written(out)


def check_api(case: Case, files: dict, line: str) -> None:
    """The Python API raises the job's message as our UserError (the only error a job reports as
    the user's, exit 2)."""
    from kmeans_dist.errors import UserError

    if case.api is None:
        return
    with pytest.raises(UserError) as info:
        case.api(files)
    assert line == f"error: {info.value}", (line, str(info.value))


@pytest.mark.parametrize("name", list(BEFORE_SPARK))
def test_rejected_before_spark_starts(files, tmp_path, name):
    case = BEFORE_SPARK[name]
    out = case.output(files, tmp_path)
    proc = run_job(case.job, *_argv(case, files, out), spark=False)
    assert_user_error(proc, *case.needles)
    assert "config:" not in proc.stderr, "Spark was started: " + describe(proc)
    check_nothing_written(out, files)


@pytest.mark.parametrize("name", list(IN_SPARK))
def test_rejected_in_spark(spark, files, tmp_path, name):
    case = IN_SPARK[name]
    out = case.output(files, tmp_path)
    proc = run_job_in_process(case.job, *_argv(case, files, out))
    line = assert_user_error(proc, *case.needles)
    check_nothing_written(out, files)
    check_api(case, files, line)


@pytest.mark.parametrize("name", list(SUBPROCESS))
def test_rejected_in_a_real_process(spark, files, background, name):
    future, out = background[name]
    proc = future.result()
    line = assert_user_error(proc, *SUBPROCESS[name].needles)
    check_nothing_written(out, files)
    check_api(SUBPROCESS[name], files, line)


def test_a_real_job_failing_unexpectedly_exits_1_with_the_traceback(background):
    future, out = background["injected"]
    proc = future.result()
    assert proc.returncode == 1, describe(proc)
    assert "Traceback (most recent call last)" in proc.stderr, describe(proc)
    assert "in broken_lloyd" in proc.stderr, describe(proc)  # the traceback reaches the failure
    assert last_line(proc.stderr) == ("error: unexpected ValueError: cannot reshape array of "
                                      "size 2 into shape (3,) (traceback above)"), describe(proc)
    assert_nothing_written(out)


# --------------------------------------------------------------------------- skip works


def test_invalid_skip_fits_on_the_rest_and_reports_the_count(spark, files, tmp_path):
    out = tmp_path / "out"
    proc = run_job_in_process(TRAIN, "--input", files["mixed"], "--k", "2", "--seed", "1",
                              "--invalid", "skip", "--output", out)
    assert proc.returncode == 0, describe(proc)
    report = json.loads((out / "report.json").read_text())
    model = json.loads((out / "model.json").read_text())
    assert report["dropped"] == model["dropped"] == {NAN_REASON: 3}
    assert report["rows"] == sum(model["cluster_sizes"]) == 6
    assert model["params"]["invalid"] == "skip"
    assert f"invalid rows skipped: 3 dropped: 3 with a {NAN_REASON}" in proc.stdout
    # the same rows through the API (and a model saved without "dropped" still loads)
    from kmeans_dist import KMeans, KMeansModel, io

    fitted = KMeans(2, seed=1, invalid="skip").fit(io.read_table(str(files["mixed"])))
    assert fitted.dropped == {NAN_REASON: 3}
    np.testing.assert_allclose(fitted.centroids, model["centroids"], rtol=1e-12)
    del model["dropped"]
    assert KMeansModel.from_dict(model).dropped == {}


def test_api_rejects_an_unknown_invalid_policy():
    from kmeans_dist import KMeans

    with pytest.raises(ValueError, match=r"^unknown invalid 'sometimes'; use one of error, skip$"):
        KMeans(2, invalid="sometimes")
