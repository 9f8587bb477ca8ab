"""The elbow job: the knee rule finds the true number of centres, and says so when there is none."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jobutil import assert_nothing_written, assert_user_error, describe, listing
from jobutil import run_job_in_process, write_csv
from kmeans_dist.elbow import KNEE_MIN_RATIO, MAX_RATIO, knee
from test_plots import check_png

ENTRY_KEYS = {"k", "inertia", "silhouette", "n_iter", "seconds"}
#: name -> (centres, dimensions): the shapes the job must read exactly
SHAPES = {"3 centres in 2-d": (3, 2), "4 centres in 5-d": (4, 5), "6 centres in 3-d": (6, 3)}


def separated_centres(c: int, d: int, rng: np.random.Generator, gap: float = 9.0) -> np.ndarray:
    """``c`` random centres in [-12, 12]^d, every pair at least ``gap`` apart."""
    centres = [rng.uniform(-12, 12, d)]
    while len(centres) < c:
        candidate = rng.uniform(-12, 12, d)
        if min(np.linalg.norm(candidate - p) for p in centres) >= gap:
            centres.append(candidate)
    return np.array(centres)


def blobs(c: int, d: int, seed: int, n: int = 600) -> np.ndarray:
    """``n`` rows around ``c`` well-separated centres (unit spread, unequal cluster sizes)."""
    rng = np.random.default_rng(seed)
    centres = separated_centres(c, d, rng)
    return centres[rng.integers(0, c, n)] + rng.normal(size=(n, d))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """One CSV per blob shape, and one of uniform noise in the unit square."""
    d = tmp_path_factory.mktemp("elbow")
    files = {name: write_csv(d / f"blobs_{c}_{dim}.csv", [f"x{j}" for j in range(dim)],
                             blobs(c, dim, seed=c * 10 + dim))
             for name, (c, dim) in SHAPES.items()}
    noise = np.random.default_rng(0).uniform(size=(600, 2))
    files["noise"] = write_csv(d / "noise.csv", ["x0", "x1"], noise)
    return files


def run_elbow(spark, csv, out, *flags: str, ks: tuple[int, int] = (1, 8)):
    """The job in the test's session (k 1..8 unless ``ks``, 300-row silhouette sample); returns
    elbow.json and the job's process."""
    proc = run_job_in_process("jobs/elbow.py", "--input", csv, "--k-min", str(ks[0]),
                              "--k-max", str(ks[1]), "--seed", "3", "--silhouette-sample", "300",
                              "--output", out, *flags)
    assert proc.returncode == 0, describe(proc)
    assert listing(out) == ["_SUCCESS", "elbow.json", "elbow.png"]
    check_png(out / "elbow.png")
    result = json.loads((out / "elbow.json").read_text())
    assert f"{out}/elbow.json" in proc.stdout
    check_table(proc.stdout, result)
    # every k fitted in the same passes: one fit of all the models
    done = [ln for ln in proc.stderr.splitlines() if "fit done:" in ln]
    starts = len(result["entries"]) * result["n_init"]
    assert len(done) == 1 and f"fit done: k={list(range(ks[0], ks[1] + 1))}" in done[0]
    assert done[0].endswith(f"{starts} model(s) in {done[0].split()[-1]}"), done
    return result, proc


def check_table(stdout: str, result: dict) -> None:
    """The printed table holds elbow.json's entries (values to their printed digits), the
    suggested k starred, then the verdict."""
    lines = stdout.splitlines()
    top = next(i for i, ln in enumerate(lines) if ln.startswith("elbow on "))
    assert lines[top] == (f"elbow on {result['rows']} rows x {len(result['features'])} "
                          f"features, k={result['k_min']}..{result['k_max']}")
    assert lines[top + 1].split() == ["k", "inertia", "silhouette", "n_iter", "seconds"]
    rows = lines[top + 2:top + 2 + len(result["entries"])]
    for line, e in zip(rows, result["entries"]):
        star = line.startswith("*")
        k, inertia, sil, n_iter, seconds = line.lstrip("*").split()
        assert star == (e["k"] == result["suggested_k"]), line
        assert int(k) == e["k"] and int(n_iter) == e["n_iter"]
        assert float(inertia) == pytest.approx(e["inertia"], rel=5e-6)  # 6 digits printed
        assert float(seconds) == pytest.approx(e["seconds"], abs=0.005)
        assert (sil == "-") if e["silhouette"] is None else \
            float(sil) == pytest.approx(e["silhouette"], abs=5e-5)
    verdict = lines[top + 2 + len(result["entries"])]
    assert verdict.startswith(f"suggested k: {result['suggested_k'] or 'none'} (")


@pytest.mark.parametrize("shape", SHAPES)
def test_elbow_job_finds_the_number_of_centres(spark, inputs, shape, tmp_path):
    centres, _ = SHAPES[shape]
    result, _ = run_elbow(spark, inputs[shape], tmp_path / "out")
    assert result["suggested_k"] == centres, result
    assert result["reason"] is None and result["knee_ratio"] >= KNEE_MIN_RATIO
    entries = result["entries"]
    assert [e["k"] for e in entries] == list(range(1, 9))
    for e in entries:
        assert set(e) == ENTRY_KEYS
        assert type(e["n_iter"]) is int and e["n_iter"] >= 1
        assert e["seconds"] > 0 and e["inertia"] > 0
    assert entries[0]["silhouette"] is None  # k=1
    assert all(-1 <= e["silhouette"] <= 1 for e in entries[1:])
    assert entries[centres - 1]["silhouette"] > 0.6
    inertia = [e["inertia"] for e in entries]
    assert inertia == sorted(inertia, reverse=True)
    assert result["rows"] == 600 and result["n_init"] == 3 and result["seed"] == 3


def test_elbow_job_on_noise_says_there_is_no_clear_knee(spark, inputs, tmp_path):
    """Also: each k's model is the best of its --n-init starts, whose seeds are the seed and
    its restart seeds (``start_seed``): each fitted alone here, the lowest inertia is the job's."""
    from kmeans_dist import KMeans
    from kmeans_dist.estimator import start_seed

    result, _ = run_elbow(spark, inputs["noise"], tmp_path / "out", "--n-init", "2")
    assert result["suggested_k"] is None
    assert result["reason"].startswith("no clear knee") and result["knee_ratio"] < KNEE_MIN_RATIO
    assert len(result["entries"]) == 8

    df = spark.read.csv(str(inputs["noise"]), header=True, inferSchema=True)
    alone = [KMeans(1, seed=start_seed(3, i)).fit_many(df, range(1, 9)) for i in (0, 1)]
    for e in result["entries"]:
        assert e["inertia"] == min(models[e["k"]].inertia for models in alone)
    assert any(alone[0][k].inertia != alone[1][k].inertia for k in range(2, 9))  # a real choice


def test_elbow_job_flags(spark, tmp_path):
    """--format (a CSV without an extension), --features (names with a dot and a backtick, a
    subset in another order), --distance cosine, --max-iter 1, --driver-max-mb 0 (fitted on the
    executors) and --overwrite (a file no run wrote goes). The k=1 inertia by numpy: one
    spherical update puts the centre on the normalised sum of the unit rows, whatever the start."""
    x = blobs(3, 3, seed=5, n=300)
    path = write_csv(tmp_path / "rows.data", ["x.0", "x`1", "x2"], x)
    out = tmp_path / "out"
    out.mkdir()
    (out / "foreign.txt").write_text("not the job's\n")
    result, proc = run_elbow(spark, path, out, "--format", "csv", "--features", "x`1,x.0",
                             "--distance", "cosine", "--max-iter", "1", "--driver-max-mb", "0",
                             "--n-init", "1", "--overwrite", ks=(1, 3))
    assert result["features"] == ["x`1", "x.0"] and result["distance"] == "cosine"
    assert [e["n_iter"] for e in result["entries"]] == [1, 1, 1]
    assert "transport resident: the driver path is off" in proc.stderr
    unit = x[:, [1, 0]] / np.linalg.norm(x[:, [1, 0]], axis=1, keepdims=True)
    centre = unit.sum(axis=0) / np.linalg.norm(unit.sum(axis=0))
    # summed in another order: equal to rounding
    assert result["entries"][0]["inertia"] == pytest.approx(float(np.sum(1.0 - unit @ centre)),
                                                            rel=1e-12)


@pytest.mark.parametrize("flags, needles", [
    (["--k-min", "0"], ["--k-min", "got 0"]),
    (["--k-min", "4", "--k-max", "3"], ["--k-max", "(4)", "got 3"]),
    (["--silhouette-sample", "1"], ["--silhouette-sample", "got 1"]),
    (["--n-init", "0"], ["n_init", "got 0"]),
    (["--init", "centres.csv"], ["--init", "centres.csv"]),
], ids=["k-min=0", "k-max<k-min", "sample=1", "n-init=0", "init=file"])
def test_bad_parameters(inputs, tmp_path, flags, needles):
    out = tmp_path / "out"
    proc = run_job_in_process("jobs/elbow.py", "--input", inputs["noise"], *flags,
                              "--output", out)
    assert_user_error(proc, *needles)
    assert_nothing_written(out)


# --------------------------------------------------------------------------- the rule alone


def sklearn_curve(x: np.ndarray, ks: range) -> list[float]:
    """scikit-learn's inertia for each k (one thread: OpenMP spins badly on a busy machine)."""
    from sklearn.cluster import KMeans as SkKMeans
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return [SkKMeans(k, n_init=3, random_state=0).fit(x).inertia_ for k in ks]


@pytest.mark.parametrize("centres, dims", [(2, 4), (3, 8), (5, 2), (7, 6), (8, 3)])
def test_rule_on_more_shapes(centres, dims):
    ks = range(1, 11)
    found = knee(ks, sklearn_curve(blobs(centres, dims, seed=centres + dims, n=800), ks))
    assert found.k == centres, found


@pytest.mark.parametrize("kind, dims", [("uniform", 2), ("uniform", 5), ("normal", 3)])
def test_rule_on_noise(kind, dims):
    rng = np.random.default_rng(dims)
    x = getattr(rng, kind)(size=(800, dims))
    ks = range(1, 11)
    found = knee(ks, sklearn_curve(x, ks))
    assert found.k is None and found.ratio < KNEE_MIN_RATIO, found


def test_rule_edge_cases():
    # a straight line: every cluster gains the same
    assert knee([1, 2, 3, 4], [40, 30, 20, 10]).k is None
    # a knee needs a gain into it and one after it
    few = knee([1, 2], [10.0, 1.0])
    assert few.k is None and "at least 3" in few.reason
    # nothing gained after k=3 (3 distinct points): the capped ratio, not infinity
    exact = knee([1, 2, 3, 4, 5], [90.0, 30.0, 0.0, 0.0, 0.0])
    assert exact.k == 3 and exact.ratio == pytest.approx(MAX_RATIO)
    # a later fit that came out worse (a local minimum) does not make a knee
    assert knee([1, 2, 3, 4, 5], [100.0, 50.0, 20.0, 22.0, 10.0]).k is None
    assert knee([2, 3, 4], [5.0, 5.0, 5.0]).k is None  # flat
    with pytest.raises(ValueError, match=r"consecutive integers .* got \[1, 3, 4\]"):
        knee([1, 3, 4], [3.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="3 values of k but 2 inertias"):
        knee([1, 2, 3], [3.0, 2.0])
