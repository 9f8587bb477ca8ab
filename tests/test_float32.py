"""float32 blocks (``KMeans(dtype="float32")``) without Spark: whole Lloyd runs through the engine
and the tasks over blocks packed as every transport packs them (``Packer.blocks``), against
scikit-learn on float32 input; pruned against brute force; the memory they take; the door.

The Spark transports' agreement is in test_transport.py, the kernels' and the pruned passes' in
test_kernels.py and test_pruning.py.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from sklearn.cluster import KMeans as SKKMeans

from kmeans_dist import KMeans, data, engine, kernels, pruning, tasks
from kmeans_dist.checkpoint import fingerprint
from kmeans_dist.errors import UserError
from kmeans_dist.transport import budget

U32 = 2.0**-24


class InMemory:
    """The smallest transport: each partition's blocks in a list, tasks called in order."""

    def __init__(self, parts: list[list]) -> None:
        self.parts, self.num_partitions = parts, len(parts)

    def run(self, fn, value, label=None) -> list:
        return [fn(iter(blocks), value) for blocks in self.parts]


def _pack(x: np.ndarray, dtype: str, parts: int = 3, block_rows: int = 700) -> list[list]:
    names = [f"f{j}" for j in range(x.shape[1])]
    packer = data.Packer(names, None, block_rows, False, dtype)
    out = []
    for i, chunk in enumerate(np.array_split(x, parts)):
        batch = pa.RecordBatch.from_arrays([pa.array(chunk[:, j]) for j in range(x.shape[1])],
                                           names)
        out.append(list(packer.blocks([batch], i)))
    return out


def _overlapping(seed: int, n: int = 6000, d: int = 5, centres: int = 12) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, d)) * 2.5
    return c[rng.integers(0, centres, n)] + rng.normal(size=(n, d))


def _grid(seed: int, n: int = 4000, d: int = 3) -> np.ndarray:
    """Small integers: exact ties between centroids, broken by the first index everywhere."""
    return np.random.default_rng(seed).integers(0, 5, size=(n, d)).astype(np.float64)


DATA = {"overlapping blobs": (_overlapping, 8), "exact ties": (_grid, 7)}


@pytest.mark.parametrize("name", list(DATA))
def test_float32_auto_is_lloyd_bit_for_bit_and_matches_scikit_learn(name, monkeypatch):
    """Pruned and brute-force float32 fits: identical centroids, iterations and rows moved per
    pass (numpy and numba kernels alike). Against scikit-learn's Lloyd on the same float32 rows
    from the same start:

    - labels equal except at near-ties: a row may differ only where its exact squared distances
      to the two centroids in question (ours) are within
      tau = 2 err + 2 (||x|| + max ||c||) delta + delta^2 of each other: err is the float32
      GEMM's score bound (``pruning.score_error``: either side may round that far), and delta
      the largest difference between the two fits' centroids, which moves any squared distance
      by at most (2 ||x - c|| + delta) delta. Such rows are counted and bounded (<= 0.5%).
    - centroids equal to float32 rounding: scikit-learn keeps centroids in float32 and adds
      them up in float32, 256 rows a chunk, then chunk by chunk (ours: float64), so its centroid
      coordinates can be off by Higham's bound for such a sum, (256 + n / 256 + 1) u max|x|,
      u = 2**-24."""
    make, k = DATA[name]
    x = make(4)
    rng = np.random.default_rng(9)
    c0 = x[rng.choice(len(x), k, replace=False)]
    parts = _pack(x, "float32")
    monkeypatch.setattr(pruning, "MIN_K", 3)  # pruned at these k (auto's own rule: from 32)
    assert all(b.x.dtype == np.float32 and b.x_sq.dtype == np.float64
               for blocks in parts for b in blocks)
    runs = {(alg, numba): engine.lloyd(InMemory(parts), c0, algorithm=alg, numba=numba)
            for alg in ("auto", "lloyd") for numba in (True, False)}
    ref = runs["lloyd", False]
    assert ref.n_iter >= 5 and ref.stop == "no_change"
    for key, r in runs.items():
        assert np.array_equal(r.centroids, ref.centroids), key
        assert r.n_iter == ref.n_iter and r.cluster_sizes == ref.cluster_sizes, key
        assert [h["moved"] for h in r.history] == [h["moved"] for h in ref.history], key
    assert runs["auto", True].history[-1]["computed"] < 0.5  # the float32 bounds do prune

    x32 = np.ascontiguousarray(x.astype(np.float32))
    sk = SKKMeans(k, init=c0.astype(np.float32), n_init=1, algorithm="lloyd", tol=0.0,
                  max_iter=300).fit(x32)
    x64, c = x32.astype(np.float64), ref.centroids
    n = len(x)
    sum_bound = (256 + n / 256 + 1) * U32 * np.abs(x64).max()
    delta = float(np.abs(sk.cluster_centers_ - c).max())
    assert delta <= sum_bound
    np.testing.assert_allclose(sk.cluster_centers_, c, rtol=0, atol=sum_bound)
    assert sk.n_iter_ == ref.n_iter

    x_sq = kernels.squared_norms(x32)
    ours = kernels.assign(x32, x_sq, c)[0]
    differ = np.flatnonzero(ours != sk.labels_)
    dist = ((x64[:, None, :] - c[None]) ** 2).sum(-1)
    c_max = np.sqrt((c * c).sum(1).max())
    tau = (2 * pruning.score_error(x_sq, c, np.float32)
           + 2 * (np.sqrt(x_sq) + c_max) * delta + delta**2)
    rows = np.arange(n)
    gap = np.abs(dist[rows, ours] - dist[rows, sk.labels_])
    assert np.all(gap[differ] <= tau[differ]), differ
    near = np.sort(dist, axis=1)
    near_ties = int(np.count_nonzero(near[:, 1] - near[:, 0] <= tau))
    assert differ.size <= near_ties <= 0.005 * n, (differ.size, near_ties)


def test_float32_blocks_take_at_most_055_of_float64s_at_d16():
    """The executor's block bytes (features, squared norms; the same per-row state beside them)
    for the same rows, as packed by the Packer every transport uses: features in 4 bytes, the
    squared norm kept float64 (8 bytes a row: (4 d + 8) / (8 d + 8) = 0.53 at d = 16)."""
    x = _overlapping(1, n=5000, d=16)
    held = {}
    for dtype in ("float64", "float32"):
        blocks = [b for blocks in _pack(x, dtype, block_rows=1000) for b in blocks]
        held[dtype] = sum(b.x.nbytes + b.x_sq.nbytes for b in blocks)
        assert held[dtype] == len(x) * budget.block_row_bytes(16, False, dtype)
    assert held["float32"] <= 0.55 * held["float64"]
    # then per model: label, two float32 bounds, the kept partials' share of the features
    assert budget.row_bytes(16, False, dtype="float32") == 16 * 4 + 8 + 4 + 8 + 4
    assert budget.row_bytes(4, True, models=2, dtype="float32") == 4 * 4 + 8 + 8 + 2 * (4 + 8 + 1)
    assert (budget.row_bytes(16, False) == budget.row_bytes(16, False, dtype="float64")
            == 16 * 8 + 8 + 4 + 8 + 8)


def test_values_beyond_float32s_range_are_invalid_rows():
    """A finite double that float32 would round to infinity is an invalid row (named, counted,
    skipped with invalid="skip"), never an infinite feature; float64 blocks keep it."""
    names = ["a", "b"]
    batch = pa.RecordBatch.from_arrays([pa.array([1.0, 1e39, -2.0]), pa.array([0.5, 0.0, 3e38])],
                                       names)
    blocks = list(data.Packer(names, None, 10, False, "float32").blocks([batch], 0))
    assert [b.rows for b in blocks] == [2]
    assert blocks[0].x.dtype == np.float32 and np.isfinite(blocks[0].x).all()
    assert blocks[0].problems == {data.FLOAT32_RANGE: (1, {"a": 1e39, "b": 0.0})}
    kept = list(data.Packer(names, None, 10, False, "float64").blocks([batch], 0))
    assert kept[0].rows == 3 and not kept[0].problems


def test_bad_dtype_is_refused_at_the_door_and_dtype_is_recorded_and_fingerprinted(tmp_path):
    with pytest.raises(UserError, match="unknown dtype 'float16'; use one of float64, float32"):
        KMeans(3, dtype="float16")
    assert KMeans(3, dtype=np.float32).dtype == "float32"
    assert KMeans(3).params()["dtype"] == "float64"
    assert KMeans(3, dtype="float32").params()["dtype"] == "float32"

    # the checkpoint's fingerprint: float32 changes the result, so a checkpoint of one dtype is
    # never resumed as the other; float64 (the default) is left out, so checkpoints written
    # before there was a choice still resume; the algorithm never changes the result
    summary = tasks.Summary(10, 10.0, np.zeros(1), np.ones(1), {}, 7)

    def printed(**kw) -> str:
        est = KMeans(3, seed=1, checkpoint=str(tmp_path), **kw)
        return est._checkpoint(["a"], [3], summary, None)[0].fingerprint

    assert printed(dtype="float32") != printed() == printed(dtype="float64")
    assert printed(dtype="float32", algorithm="lloyd") == printed(dtype="float32")
    old = {key: v for key, v in KMeans(3, seed=1).params().items()
           if key not in ("algorithm", "dtype")}
    assert printed() == fingerprint({**old, "ks": [3]}, ["a"], 10, 10.0, [0.0], [1.0], 7)


def test_a_float32_model_assigns_rows_as_its_fit_did():
    """A row at 0.5 + 1e-12 between centroids 0 and 1: in float64 it is nearer 1; rounded to
    float32, as the fit's blocks hold it, it is exactly 0.5, a tie, which brute force gives to
    the first centroid. A float32 model's ``predict`` and ``transform``'s labeller assign it as
    its fit did (0); a float64 model, as float64 does (1). The labeller's distance is the
    rounded row's (0.5)."""
    import pandas as pd

    from kmeans_dist.model import KMeansModel, _Labeller

    row = np.array([[0.5 + 1e-12]])
    c = np.array([[0.0], [1.0]])
    fitted = {dt: KMeansModel(c, ["x"], params={"dtype": dt}) for dt in ("float32", "float64")}
    assert fitted["float32"].predict(row).tolist() == [0]
    assert fitted["float64"].predict(row).tolist() == [1]
    labeller = _Labeller(c, "euclidean", [0, 1], True, "float32")
    out = labeller(pd.DataFrame({"f0": row[:, 0]}))
    assert out["cluster"].tolist() == [0] and out["distance"].tolist() == [0.5]
