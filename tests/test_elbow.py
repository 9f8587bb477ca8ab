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


def run_elbow(spark, csv, out, *flags: str) -> dict:
    """The job in the test's session (k 1..8, 300-row silhouette sample); returns elbow.json."""
    proc = run_job_in_process("jobs/elbow.py", "--input", csv, "--k-min", "1", "--k-max", "8",
                              "--seed", "3", "--silhouette-sample", "300", "--output", out,
                              *flags)
    assert proc.returncode == 0, describe(proc)
    assert listing(out) == ["_SUCCESS", "elbow.json", "elbow.png"]
    check_png(out / "elbow.png")
    result = json.loads((out / "elbow.json").read_text())
    assert "suggested k:" in proc.stdout and f"{out}/elbow.json" in proc.stdout
    return result


@pytest.mark.parametrize("shape", SHAPES)
def test_elbow_job_finds_the_number_of_centres(spark, inputs, shape, tmp_path):
    centres, _ = SHAPES[shape]
    result = run_elbow(spark, inputs[shape], tmp_path / "out")
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
    result = run_elbow(spark, inputs["noise"], tmp_path / "out", "--n-init", "2")
    assert result["suggested_k"] is None
    assert result["reason"].startswith("no clear knee") and result["knee_ratio"] < KNEE_MIN_RATIO
    assert len(result["entries"]) == 8


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
