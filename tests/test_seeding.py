"""Same seed, same model: every init's random choices depend on the seed and the rows' content,
never on how the rows are partitioned, blocked or ordered.

The initial centroids are computed directly (kmeans_dist.init over the blocks Spark packs for
``fit``) on 1, 2, 5 and 8 partitions and on shuffled rows, and must be bit-identical; full fits on
the two most different layouts must then give the same centroids and labels per row. The data
holds exact duplicate rows, whose ties are broken by content.
"""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.sql import types as T

from kmeans_dist import KMeans
from kmeans_dist import data as kd_data
from kmeans_dist import init as kd_init

FEATURES = ["a", "b", "c"]
K = 4
SEED = 17
BLOCK_ROWS = 8  # several blocks per partition, so block boundaries move with the layout


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    """130 rows around four centres (2 decimals), 40 of them exact duplicates of others."""
    rng = np.random.default_rng(4)
    centres = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 0.0], [0.0, 6.0, 0.0], [0.0, 0.0, 6.0]])
    base = np.round(centres[rng.integers(0, 4, 90)] + rng.normal(size=(90, 3)), 2)
    return np.vstack([base, base[:15], base[:15], np.repeat(base[[20]], 10, axis=0)])


def frame(spark, x: np.ndarray, order: np.ndarray, partitions: int):
    """Rows ``order`` of ``x`` (with their ``id``) in exactly ``partitions`` partitions."""
    schema = T.StructType([T.StructField("id", T.LongType(), False)]
                          + [T.StructField(c, T.DoubleType(), False) for c in FEATURES])
    data = [(int(i), *map(float, x[i])) for i in order]
    return spark.createDataFrame(spark.sparkContext.parallelize(data, partitions), schema)


def layouts(n: int) -> dict[str, tuple[np.ndarray, int]]:
    """name -> (row order, partitions)."""
    rng = np.random.default_rng(99)
    ordered = np.arange(n)
    return {"1": (ordered, 1), "2": (ordered, 2), "5": (ordered, 5), "8": (ordered, 8),
            "shuffled-3": (rng.permutation(n), 3), "shuffled-8": (rng.permutation(n), 8)}


class PackedBlocks:
    """A transport over the blocks Spark packs for ``fit`` (same partitions, same block bounds),
    collected once; the (pure) task functions then run on the driver: one Spark job per layout
    instead of one per init step."""

    def __init__(self, df, partitions: int) -> None:
        frame = kd_data.block_frame(df, FEATURES, block_rows=BLOCK_ROWS, num_partitions=partitions)
        self.parts = kd_data.block_rdd(frame, len(FEATURES)).glom().collect()
        self.num_partitions = len(self.parts)

    def run(self, fn, value, label=None) -> list:
        return [fn(iter(blocks), value) for blocks in self.parts]

    def release(self) -> None:
        pass


def initial_centroids(df, partitions: int, n: int) -> dict[str, np.ndarray]:
    """Every init's centroids for this layout."""
    transport = PackedBlocks(df, partitions)
    assert transport.num_partitions == partitions
    return {"random": kd_init.random_rows(transport, K, SEED, n),
            "k-means++": kd_init.kmeans_plus_plus(transport, K, SEED),
            "k-means||": kd_init.kmeans_parallel(transport, K, SEED)}


def test_init_is_the_same_on_any_partitioning_and_row_order(spark, rows):
    n = len(rows)
    found = {name: initial_centroids(frame(spark, rows, order, p), p, n)
             for name, (order, p) in layouts(n).items()}
    ref = found["1"]
    data_rows = {r.tobytes() for r in rows}
    for init, c in ref.items():
        assert c.shape == (K, 3) and len(np.unique(c, axis=0)) == K, (init, c)
        if init != "k-means||":  # k-means|| reduces its candidates by a local k-means
            assert all(r.tobytes() in data_rows for r in c), (init, c)
    for name, got in found.items():
        for init in ref:
            assert np.array_equal(got[init], ref[init]), (name, init, got[init], ref[init])


def test_fit_gives_the_same_labels_on_any_layout(spark, rows):
    """The default init end to end (each init's start is the same on every layout, above; the
    Lloyd loop from a given start is, in test_fit.py): same labels on 1 and 8 shuffled
    partitions."""
    init = "k-means||"
    n = len(rows)
    chosen = layouts(n)
    results = {}
    for name in ("1", "shuffled-8"):
        order, p = chosen[name]
        df = frame(spark, rows, order, p)
        model = KMeans(K, init=init, seed=SEED, num_partitions=p, block_rows=BLOCK_ROWS).fit(
            df, features=FEATURES)
        results[name] = (model, model.predict(rows).tolist())  # row i has id i
    (ref, ref_labels), (got, got_labels) = results["1"], results["shuffled-8"]
    assert got_labels == ref_labels
    np.testing.assert_allclose(got.centroids, ref.centroids, rtol=1e-12, atol=1e-12)
    assert got.cluster_sizes == ref.cluster_sizes and got.n_iter == ref.n_iter


def test_empty_cluster_relocation_ties_go_by_content(spark):
    """An empty cluster takes the row farthest from its centroid; with two rows equally far it
    is the same row whatever the order (before, the lower global row index won)."""
    x = np.array([[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.5], [0.0, -0.5]])
    init = np.array([[0.0, 0.0], [50.0, 50.0]])  # no row is nearest the second centroid
    schema = T.StructType([T.StructField(c, T.DoubleType(), False) for c in ("p", "q")])
    centroids = []
    for order in (x, x[::-1]):
        df = spark.createDataFrame([tuple(map(float, r)) for r in order], schema)
        centroids.append(KMeans(2, init=init, max_iter=1).fit(df).centroids)
    assert np.array_equal(centroids[0], centroids[1]), centroids
    assert centroids[0][1].tolist() in ([-1.0, 0.0], [1.0, 0.0])


def _blob_candidates(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k-means|| candidates as the driver gets them: 16 tight, well separated blobs of 2 to 8
    weighted rows each (heavy-tailed weights, as uneven as real nearest-row counts). Returns the
    rows, their weights and each blob's weighted mean (the optimal centroids)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-100, 100, size=(16, 4))
    sizes = rng.integers(2, 9, size=16)
    label = np.repeat(np.arange(16), sizes)
    points = centres[label] + rng.normal(scale=0.5, size=(len(label), 4))
    weights = np.ceil(rng.pareto(1.0, size=len(label)) * 100)
    means = np.stack([np.average(points[label == j], axis=0, weights=weights[label == j])
                      for j in range(16)])
    return points, weights, means


def test_candidate_reduction_finds_one_centre_per_blob():
    """The driver-side reduction of k-means|| ends with exactly one centroid at each blob's
    weighted mean, for every one of 50 seeds. A single plain k-means++ seeding (Spark MLlib's
    reduction, and ours before) leaves two centres in one blob and one over two blobs for 7 of
    them, which the Lloyd iterations over the data never undo."""
    for seed in range(50):
        points, weights, means = _blob_candidates(seed)
        got = kd_init.local_kmeans(points, weights, 16, seed)
        dist = ((got[:, None, :] - means[None, :, :]) ** 2).sum(-1)
        assert sorted(np.argmin(dist, axis=1).tolist()) == list(range(16)), seed
        np.testing.assert_allclose(np.sort(got, axis=0), np.sort(means, axis=0),
                                   rtol=1e-9, atol=1e-9, err_msg=f"seed {seed}")


def test_an_unseeded_fit_records_its_seed_and_features_leave_out_the_weight(spark, rows):
    """Without a seed the fit draws one and records it in the model (and model.json): a fit
    given that seed is the same fit. Without features, every numeric column but the weight
    column is a feature (here ``id`` too, so the weight is the only one left out)."""
    from kmeans_dist import KMeansModel

    x = rows
    w = np.random.default_rng(8).uniform(0.5, 2.0, len(x))
    df = spark.createDataFrame([(int(i), *map(float, r), float(wi), f"r{i}")
                                for i, (r, wi) in enumerate(zip(x, w))],
                               ["id", *FEATURES, "w", "name"])
    drawn = KMeans(K, init="k-means++", weight_col="w").fit(df)
    assert drawn.features == ["id", *FEATURES]
    seed = drawn.params["seed"]
    assert isinstance(seed, int) and seed >= 0
    assert KMeansModel.from_dict(drawn.to_dict()).params["seed"] == seed
    again = KMeans(K, init="k-means++", weight_col="w", seed=seed).fit(df)
    assert np.array_equal(again.centroids, drawn.centroids) and again.inertia == drawn.inertia


# --------------------------------------------------------------------------- no Spark
class InMemory:
    """A transport over blocks packed in this process (``Packer.blocks``, as a task packs
    them), recording each pass's label: the inits' passes without a Spark job."""

    def __init__(self, parts: list[np.ndarray], weights: list[np.ndarray] | None = None) -> None:
        import pyarrow as pa

        names = [f"f{j}" for j in range(parts[0].shape[1])]
        packer = kd_data.Packer(names, None if weights is None else "w", 64, False)
        self.parts = []
        for p, x in enumerate(parts):
            columns = [pa.array(x[:, j]) for j in range(x.shape[1])]
            if weights is not None:
                columns.append(pa.array(weights[p]))
            batch = pa.RecordBatch.from_arrays(columns, names + (["w"] if weights is not None
                                                                 else []))
            self.parts.append(list(packer.blocks(iter([batch]), p)))
        self.num_partitions = len(self.parts)
        self.labels: list[str] = []

    def run(self, fn, value, label=None) -> list:
        self.labels.append(label)
        return [fn(iter(blocks), value) for blocks in self.parts]

    def release(self) -> None:
        pass


def test_init_steps_is_the_number_of_k_means_parallel_rounds(monkeypatch):
    """``init_steps`` rounds of oversampling (no more where every round found candidates), each
    adding candidates: more rounds, more candidates for the reduction to choose from."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(900, 2)) * [1.0, 3.0]
    parts = np.array_split(x, 3)
    reduced = []
    local = kd_init.local_kmeans
    monkeypatch.setattr(kd_init, "local_kmeans", lambda points, weights, k, seed: (
        reduced.append(len(points)), local(points, weights, k, seed))[1])
    for steps in (1, 2, 5):
        transport = InMemory(parts)
        start = KMeans(K, seed=SEED, init_steps=steps)._initial_centroids(
            transport, None, K, SEED, len(x))
        assert start.shape == (K, 2)
        rounds = [label for label in transport.labels if " round " in label]
        assert rounds == [f"kmeans_dist: init k-means|| round {r}, k={K}"
                          for r in range(1, steps + 1)], transport.labels
    # the first centre, then about 2k more per round
    assert 1 < reduced[0] < reduced[1] < reduced[2], reduced


def test_duplicates_count_once_and_weights_count_as_copies():
    """A row repeated c times is drawn exactly as one copy of it is (identical rows share their
    random draw); a weight of c makes it as likely as c copies would be: the probability of
    being drawn first is weight / total weight. Over 1,000 seeds (fixed: the test is
    deterministic) the frequencies are the probabilities to within 4 binomial standard errors."""
    rng = np.random.default_rng(8)
    distinct = np.round(rng.normal(size=(10, 2)), 3)
    repeated = np.vstack([distinct, np.repeat(distinct[:1], 8, axis=0)])  # row 0: 9 copies
    once = InMemory(np.array_split(distinct, 2))
    copies = InMemory(np.array_split(rng.permutation(repeated), 3))
    weights = np.array([9.0] + [1.0] * 9)
    weighted = InMemory(np.array_split(distinct, 2), np.array_split(weights, 2))
    seeds = range(1000)
    first = {name: [kd_init.random_rows(t, 1, seed, 18)[0].tobytes() for seed in seeds]
             for name, t in (("once", once), ("copies", copies), ("weighted", weighted))}
    assert first["copies"] == first["once"]  # the same row for every seed
    row0 = distinct[0].tobytes()
    for name, p in (("once", 1 / 10), ("weighted", 9 / 18)):
        freq = first[name].count(row0) / len(seeds)
        assert abs(freq - p) < 4 * np.sqrt(p * (1 - p) / len(seeds)), (name, freq, p)
