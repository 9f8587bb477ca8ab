"""The segment job (jobs/segment.py) and warm starts, against the generating centres and numpy.

Batches are drawn around known, well-separated centres (unit spread, 10 apart), so every row's
true cluster is known; the expected labels, distances, spreads, shifts and transition counts are
recomputed here by brute force from the saved models. The job runs go through its real
``__main__`` in the test's SparkSession (``run_job_in_process``), which also observes exit code 3.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from jobutil import assert_nothing_written, assert_user_error, describe, last_line, listing
from jobutil import run_job_in_process, write_csv

run_segment = functools.partial(run_job_in_process, "jobs/segment.py")
CENTRES = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0], [20.0, 20.0]])
PER_CENTRE = 400
OUTPUTS = ["_SUCCESS", "assignments", "drift.json", "drift.png", "model.json"]


def _batch(path: Path, seed: int, keys: np.ndarray, which: np.ndarray,
           centres: np.ndarray = CENTRES) -> dict:
    """Rows ``customer, x, y``: customer ``keys[i]`` drawn around ``centres[which[i]]``."""
    x = centres[which] + np.random.default_rng(seed).normal(size=(len(which), 2))
    write_csv(path, ["customer", "x", "y"], [[str(k), *r] for k, r in zip(keys, x)])
    return {"csv": path, "x": x, "keys": keys, "which": which}


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    d = tmp_path_factory.mktemp("segment")
    day1 = np.repeat(np.arange(4), PER_CENTRE)
    # day 2: customers 80.. (the first 80 left, 80 new ones); every 40th moved to the next centre
    keys2 = np.arange(80, 4 * PER_CENTRE + 80)
    which2 = np.where(keys2 < len(day1), day1[np.minimum(keys2, len(day1) - 1)], keys2 % 4)
    which2 = np.where((keys2 % 40 == 0) & (keys2 < len(day1)), (which2 + 1) % 4, which2)
    moved = CENTRES.copy()
    moved[2] += [3.0, 0.0]  # one centre moved by about two of its spreads
    keys = np.arange(len(day1))
    found = {
        "dir": d,
        "day1": _batch(d / "day1.csv", 1, keys, day1),
        "day2": _batch(d / "day2.csv", 2, keys2, which2),
        "moved": _batch(d / "moved.csv", 3, keys, day1, moved),
        "five": _batch(d / "five.csv", 4, np.arange(5 * PER_CENTRE),
                       np.repeat(np.arange(5), PER_CENTRE)),
    }
    with open(d / "moved.csv", "a") as f:
        f.write("99999,,1.0\n")  # one row without an x: --invalid skip leaves it out of the fit
    return found


def _run_ok(*args) -> None:
    proc = run_segment(*map(str, args))
    assert proc.returncode == 0, describe(proc)


def _load(out: Path) -> tuple:
    from kmeans_dist import KMeansModel

    return KMeansModel.load(str(out / "model.json")), json.loads((out / "drift.json").read_text())


def brute_labels(model, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stable id of the nearest centroid of every row, and the distance to it."""
    dist = np.sqrt(((x[:, None, :] - model.centroids[None, :, :]) ** 2).sum(axis=2))
    nearest = dist.argmin(axis=1)
    return np.array(model.cluster_ids)[nearest], dist[np.arange(len(x)), nearest]


def ids_by_centre(model, batch: dict, spark, out: Path) -> dict[int, int]:
    """Generating centre -> the one stable id its rows got in the job's assignments (checked
    against brute force, row by row)."""
    got = {int(r["customer"]): (r["cluster"], r["distance"])
           for r in spark.read.parquet(str(out / "assignments")).collect()}
    labels, dist = brute_labels(model, batch["x"])
    assert [got[int(k)][0] for k in batch["keys"]] == labels.tolist()
    np.testing.assert_allclose([got[int(k)][1] for k in batch["keys"]], dist, rtol=1e-9)
    found = {}
    for g in np.unique(batch["which"]):
        ids = set(labels[batch["which"] == g].tolist())
        assert len(ids) == 1, f"centre {g} split over ids {ids}"
        found[int(g)] = ids.pop()
    return found


@pytest.fixture(scope="module")
def first(batches, spark):
    """Day 1, fresh fit, k=4 (the id column is kept out of the features). Day 1's rows are read
    from a directory of four CSV files without an extension (so through --format csv), in more
    than one partition, and fitted in one: the --conf profile's ``partitions``."""
    d = batches["dir"]
    out, parts, profile = d / "day1_out", d / "day1_parts", d / "one_partition.yaml"
    header, *body = Path(batches["day1"]["csv"]).read_text().splitlines()
    parts.mkdir()
    for i in range(4):
        (parts / f"part-{i}.csv").write_text("\n".join([header, *body[i * 400:(i + 1) * 400]])
                                             + "\n")
    profile.write_text("partitions: 1\n")
    proc = run_segment(*map(str, ["--input", parts, "--format", "csv", "--conf", profile,
                                  "--output", out, "--k", 4, "--seed", 7, "--id-col", "customer"]))
    assert proc.returncode == 0, describe(proc)
    model, report = _load(out)
    return {"out": out, "model": model, "drift": report, "proc": proc, "parts": parts,
            "profile": profile, "ids": ids_by_centre(model, batches["day1"], spark, out)}


def test_first_run_writes_sizes_spreads_and_no_previous(first, batches, spark):
    model, report = first["model"], first["drift"]
    assert listing(first["out"]) == OUTPUTS
    # --conf's partitions: the input's partitions fitted as one, and the job says so
    assert spark.read.csv(str(first["parts"]), header=True).rdd.getNumPartitions() > 1
    assert model.transport["partitions"] == 1
    assert f"config: {first['profile']}; master local[2]; partitions 1" in first["proc"].stderr
    assert model.features == ["x", "y"] and sorted(first["ids"].values()) == [0, 1, 2, 3]
    assert report["previous"] is None and report["psi"] is None and report["exceeded"] == []
    assert {c["id"]: c["rows_after"] for c in report["clusters"]} == {i: 400 for i in range(4)}
    # spread = RMS distance of a cluster's rows to its centroid, by brute force
    x = batches["day1"]["x"]
    labels, _ = brute_labels(model, x)
    for row, cid in enumerate(model.cluster_ids):
        mine = x[labels == cid]
        rms = math.sqrt(((mine - model.centroids[row]) ** 2).sum(axis=1).mean())
        assert model.cluster_spread[row] == pytest.approx(rms, rel=1e-9)


def test_stable_ids_survive_an_init_in_permuted_order(first, batches, spark, tmp_path):
    """Day 2 warm-starts from day 1's model stored with its rows in another order (ids moved
    along): the fit's rows come out permuted, the ids follow the generating centres."""
    saved = json.loads((first["out"] / "model.json").read_text())
    perm = [2, 0, 3, 1]
    for key in ("centroids", "cluster_ids", "cluster_sizes", "cluster_spread"):
        saved[key] = [saved[key][i] for i in perm]
    permuted = tmp_path / "permuted.json"
    permuted.write_text(json.dumps(saved))
    out = tmp_path / "day2_out"
    _run_ok("--input", batches["day2"]["csv"], "--output", out, "--previous-model", permuted,
            "--id-col", "customer", "--previous-assignments", first["out"] / "assignments",
            "--max-iter", 1)
    model, report = _load(out)
    assert model.cluster_ids == [first["model"].cluster_ids[i] for i in perm] != [0, 1, 2, 3]
    # --max-iter 1: one Lloyd update from the permuted centroids, by numpy (to rounding: the
    # means are summed in another order)
    start = np.array(saved["centroids"])
    x2 = batches["day2"]["x"]
    nearest = ((x2[:, None, :] - start[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)
    one_step = np.array([x2[nearest == r].mean(axis=0) for r in range(4)])
    np.testing.assert_allclose(model.centroids, one_step, rtol=1e-12, atol=1e-12)
    assert (model.n_iter, model.stop, model.converged) == (1, "max_iter", False)
    assert ids_by_centre(model, batches["day2"], spark, out) == first["ids"]
    assert report["new_ids"] == [] and report["retired_ids"] == []

    # transitions: exact counts over the customers in both batches, from brute-force labels
    before = dict(zip(batches["day1"]["keys"].tolist(),
                      brute_labels(first["model"], batches["day1"]["x"])[0].tolist()))
    after = dict(zip(batches["day2"]["keys"].tolist(),
                     brute_labels(model, batches["day2"]["x"])[0].tolist()))
    both = sorted(set(before) & set(after))
    expected = np.zeros((4, 4), dtype=int)
    for key in both:
        expected[before[key], after[key]] += 1
    moves = report["transitions"]
    assert moves["previous_ids"] == moves["current_ids"] == [0, 1, 2, 3]
    assert moves["counts"] == expected.tolist()
    assert moves["changed"] == sum(before[k] != after[k] for k in both) == 38
    assert (moves["entities_in_both"], moves["only_previous"], moves["only_current"]) == \
        (1520, 80, 80)


def test_moved_centre_drifts_most_and_max_drift_exits_3(first, batches):
    out = batches["dir"] / "moved_out"
    proc = run_segment("--input", str(batches["moved"]["csv"]), "--output", str(out),
                       "--previous-model", str(first["out"] / "model.json"),
                       "--max-drift", "1.0", "--invalid", "skip")
    assert proc.returncode == 3, describe(proc)
    assert listing(out) == OUTPUTS  # everything written before exiting
    model, report = _load(out)
    # --invalid skip: the row without an x is left out of the fit and counted
    assert model.dropped == {"null, NaN or infinite feature value": 1}
    assert report["current"] == {"k": 4, "rows": 1600}
    moved_id = first["ids"][2]
    by_id = {c["id"]: c for c in report["clusters"]}
    assert report["exceeded"] == [moved_id] and report["max_relative_shift"]["id"] == moved_id
    line = last_line(proc.stderr)
    assert f"cluster {moved_id} moved {by_id[moved_id]['relative_shift']:.3g} spreads" in line
    assert "--max-drift 1" in line
    assert all(c["relative_shift"] < 0.3 for i, c in by_id.items() if i != moved_id)

    # the shift and its relative size, from the rows themselves
    prev = first["model"]
    x = batches["moved"]["x"]
    labels, _ = brute_labels(model, x)
    new_centre = x[labels == moved_id].mean(axis=0)
    old_centre = prev.centroids[prev.cluster_ids.index(moved_id)]
    shift = float(np.linalg.norm(new_centre - old_centre))
    spread_before = prev.cluster_spread[prev.cluster_ids.index(moved_id)]
    assert by_id[moved_id]["shift"] == pytest.approx(shift, rel=1e-9)
    assert by_id[moved_id]["relative_shift"] == pytest.approx(shift / spread_before, rel=1e-9)
    assert 1.5 < shift / spread_before < 3.0  # 3 units over a spread of about sqrt(2)

    # PSI of the shares, from the formula
    before = np.array([by_id[i]["rows_before"] for i in sorted(by_id)]) / 1600
    after = np.array([np.count_nonzero(labels == i) for i in sorted(by_id)]) / 1600
    b, a = np.maximum(before, 1e-4), np.maximum(after, 1e-4)
    assert report["psi"] == pytest.approx(float(np.sum((a - b) * np.log(a / b))), abs=1e-15)


@pytest.fixture(scope="module")
def grown(first, batches, spark):
    """k 4 -> 5 on a batch with a fifth centre."""
    out = batches["dir"] / "five_out"
    _run_ok("--input", batches["five"]["csv"], "--output", out, "--k", 5, "--seed", 3,
            "--previous-model", first["out"] / "model.json")
    model, report = _load(out)
    return {"out": out, "model": model, "drift": report,
            "ids": ids_by_centre(model, batches["five"], spark, out)}


def test_growing_k_keeps_the_four_ids_and_adds_4(first, grown):
    assert grown["ids"] == {**first["ids"], 4: 4}
    assert grown["drift"]["new_ids"] == [4] and grown["drift"]["retired_ids"] == []
    new = next(c for c in grown["drift"]["clusters"] if c["id"] == 4)
    assert (new["status"], new["rows_before"], new["rows_after"]) == ("new", 0, 400)


def test_shrinking_k_fits_fresh_and_retires_the_unmatched_id(first, grown, batches, spark,
                                                             tmp_path):
    """Also: no --seed (the fresh fit draws one and records it: a fit given it is the same
    fit), --driver-max-mb 0 (fitted on the executors) and --overwrite of a directory holding a
    file no run wrote."""
    from kmeans_dist import KMeans

    out = tmp_path / "shrunk_out"
    out.mkdir()
    (out / "foreign.txt").write_text("not the job's\n")
    _run_ok("--input", batches["day2"]["csv"], "--output", out, "--k", 4,
            "--previous-model", grown["out"] / "model.json", "--driver-max-mb", 0,
            "--overwrite")
    model, report = _load(out)
    assert listing(out) == OUTPUTS
    assert ids_by_centre(model, batches["day2"], spark, out) == first["ids"]
    assert report["retired_ids"] == [4] and report["new_ids"] == []
    assert model.retired_ids == [4] and model.params["init"] == "model"
    assert model.transport["name"] == "resident"
    seed = model.params["seed"]
    assert isinstance(seed, int)
    df = spark.read.csv(str(batches["day2"]["csv"]), header=True, inferSchema=True)
    again = KMeans(4, seed=seed).fit(df, ["x", "y"])
    assert again.transport["name"] == "driver"
    assert np.array_equal(again.centroids, model.centroids)


def test_warm_start_from_a_converged_model_stops_after_one_update(first, batches, spark):
    """From its own converged centroids the first update moves no centroid (shift exactly 0):
    a fixed point, so the fit stops after that one iteration with the same model. (The first
    pass has no earlier labels to compare with, so its ``moved`` counts every row.)

    scikit-learn from the same start ends at the same centroids and labels, but counts two
    iterations: it updates mean-centred copies of the rows and centres, where rounding moves
    the first update's centres (so its shift is not 0), and stops at the second pass, which
    changes no label (its max_iter=1 fit has the full fit's labels)."""
    from sklearn.cluster import KMeans as SKMeans

    from kmeans_dist import KMeans

    df = spark.read.csv(str(batches["day1"]["csv"]), header=True, inferSchema=True)
    prev = first["model"]
    x = batches["day1"]["x"]
    model = KMeans(4, init=prev, seed=1).fit(df, ["x", "y"])
    sk = SKMeans(4, init=prev.centroids, n_init=1, max_iter=300, tol=0.0,
                 algorithm="lloyd").fit(x)
    sk_one = SKMeans(4, init=prev.centroids, n_init=1, max_iter=1, tol=0.0,
                     algorithm="lloyd").fit(x)
    assert model.n_iter == 1 and model.stop == "no_change"
    assert model.history[0]["shift"] == 0.0
    assert sk.n_iter_ == 2 and np.array_equal(sk_one.labels_, sk.labels_)
    np.testing.assert_array_equal(model.centroids, prev.centroids)
    # the same centroids to rounding (scikit-learn's are the centred means plus the mean)
    np.testing.assert_allclose(model.centroids, sk.cluster_centers_, rtol=1e-12, atol=1e-12)
    labels, _ = brute_labels(model, x)
    assert labels.tolist() == np.array(model.cluster_ids)[sk.labels_].tolist()
    assert model.cluster_ids == prev.cluster_ids and model.converged


def test_warm_start_refuses_other_features(first, batches, spark, tmp_path):
    from kmeans_dist import KMeans

    df = spark.read.csv(str(batches["day1"]["csv"]), header=True, inferSchema=True)
    with pytest.raises(ValueError) as err:
        KMeans(4, init=first["model"]).fit(df, ["y", "x"])
    assert "['y', 'x']" in str(err.value) and "['x', 'y']" in str(err.value)
    out = tmp_path / "out"
    proc = run_segment("--input", str(batches["day1"]["csv"]), "--output", str(out),
                       "--previous-model", str(first["out"] / "model.json"),
                       "--features", "customer,x,y")
    assert_user_error(proc, "['customer', 'x', 'y']", "['x', 'y']")
    assert_nothing_written(out)


def test_train_job_init_model_emits_stable_ids(first, batches, spark, tmp_path):
    """--init-model in the train job: the warm start from a renumbered model keeps its ids."""
    saved = json.loads((first["out"] / "model.json").read_text())
    saved["cluster_ids"] = [10 + i for i in saved["cluster_ids"]]
    renamed = tmp_path / "renamed.json"
    renamed.write_text(json.dumps(saved))
    out = tmp_path / "train_out"
    proc = run_job_in_process("jobs/train.py", "--input", str(batches["day2"]["csv"]), "--k", "4",
                              "--features", "x,y", "--init-model", str(renamed),
                              "--output", str(out))
    assert proc.returncode == 0, describe(proc)
    got = {int(r["customer"]): r["cluster"]
           for r in spark.read.parquet(str(out / "assignments")).collect()}
    for g, cid in first["ids"].items():
        rows = batches["day2"]["keys"][batches["day2"]["which"] == g]
        assert {got[int(k)] for k in rows} == {10 + cid}


@pytest.mark.parametrize("args, needles", [
    (["--k", "3", "--init", "random", "--init-model", "m.json"], ["not allowed with"]),
])
def test_train_init_and_init_model_exclude_each_other(batches, tmp_path, args, needles):
    proc = run_job_in_process("jobs/train.py", "--input", str(batches["day1"]["csv"]),
                              "--output", str(tmp_path / "out"), *args)
    assert_user_error(proc, *needles)


@pytest.mark.parametrize("case, needles", [
    ("no_k", ["--k is required without --previous-model"]),
    ("assignments_without_key", ["--previous-assignments needs --previous-model and --id-col"]),
    ("negative_drift", ["--max-drift must be a number >= 0", "-1"]),
    ("repeated_key", ["id column 'customer' is not unique", "appears 2 times"]),
    ("missing_key", ["id column 'client' not found", "day1.csv"]),
])
def test_bad_input_is_one_line_and_writes_nothing(first, batches, tmp_path, case, needles):
    model = str(first["out"] / "model.json")
    inp = batches["day1"]["csv"]
    args = {
        "no_k": [],
        "assignments_without_key": ["--previous-model", model, "--previous-assignments",
                                    str(first["out"] / "assignments")],
        "negative_drift": ["--k", "4", "--max-drift", "-1"],
        "repeated_key": ["--previous-model", model, "--id-col", "customer"],
        "missing_key": ["--previous-model", model, "--id-col", "client"],
    }[case]
    if case == "repeated_key":
        text = Path(inp).read_text().splitlines()
        inp = tmp_path / "repeated.csv"
        inp.write_text("\n".join(text + [text[1]]) + "\n")
    out = tmp_path / "out"
    proc = run_segment("--input", str(inp), "--output", str(out), *args)
    assert_user_error(proc, *needles)
    assert_nothing_written(out)


def test_transitions_leave_out_rows_with_a_null_key(spark):
    """The join behind drift.json's transitions: rows with a null key (or no cluster) are not
    counted, on either side; the expected pairs are worked out by hand."""
    from pyspark.sql import types as T

    from kmeans_dist.segment import transition_counts

    schema = T.StructType([T.StructField("customer", T.StringType()),
                           T.StructField("cluster", T.IntegerType())])
    before = spark.createDataFrame([("a", 0), ("b", 1), (None, 0), (None, 1), ("c", None)],
                                   schema)
    after = spark.createDataFrame([("a", 1), ("b", 1), (None, 0), ("d", 0)], schema)
    got = transition_counts(before, after, "customer")
    # a: 0 -> 1, b: 1 -> 1, d: only now; the null keys and c's unlabelled row nowhere
    assert sorted(got, key=str) == sorted([(0, 1, 1), (1, 1, 1), (None, 0, 1)], key=str)
