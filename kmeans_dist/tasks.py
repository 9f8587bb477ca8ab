"""What runs on each partition: plain functions of (blocks, value) -> result. No Spark here.

A transport ships one of these with a small driver-side value (broadcast on classic Spark) and
returns one result per partition, in partition order. Every function drains its iterator (a
Python task that leaves input unread makes Spark discard the worker) and folds blocks in order,
so results are reproducible.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from kmeans_dist import kernels, pruning
from kmeans_dist.blocks import Block, merge_problems


# --------------------------------------------------------------------------- labels kept in the worker
class LabelCache:
    """Each block's labels (and distance bounds) from the last iteration, kept in the (reused)
    Python worker process.

    Only a speed-up: a task that finds no entry for the previous iteration (another worker ran the
    block, a retry, an evicted entry) recomputes those labels from the previous centroids, which
    gives exactly the same labels, and bounds from scratch. Bounded in bytes, least recently used
    first out. Keys start with the run's id. Thread-safe: the driver transport runs partitions in
    threads.
    """

    def __init__(self, max_bytes: int = 512 << 20) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple, tuple[int, np.ndarray]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple, iteration: int):
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] != iteration:
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def take(self, key: tuple, iteration: int):
        """``get``, the entry removed: the caller may change it (and puts it back if it will)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] != iteration:
                return None
            self._drop(key)
            return entry[1]

    def put(self, key: tuple, iteration: int, labels) -> None:
        """Keep ``labels`` (an array, or anything with ``nbytes``) as the entry of ``iteration``."""
        with self._lock:
            self._drop(key)
            self._entries[key] = (iteration, labels)
            self._bytes += labels.nbytes
            while self._bytes > self.max_bytes and self._entries:
                self._drop(next(iter(self._entries)))

    def forget(self, run_ids: set[str]) -> None:
        """Drop the entries of these runs (a fit that ended in this process)."""
        with self._lock:
            for key in [k for k in self._entries if k[0] in run_ids]:
                self._drop(key)

    def _drop(self, key: tuple) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old[1].nbytes


LABELS = LabelCache()


def _label_file(b: Block, run_id: str, iteration: int, kind: str = "labels") -> str:
    return f"{b.scratch}.{kind}-{run_id}-{iteration}.npy"


def stored_labels(b: Block, run_id: str, iteration: int) -> np.ndarray | None:
    """The block's labels of ``iteration`` if kept: beside its block files, else in memory."""
    if b.scratch is None:
        return LABELS.get((run_id, b.part, b.start), iteration)
    try:
        return np.load(_label_file(b, run_id, iteration))
    except (FileNotFoundError, ValueError):
        return None


def keep_labels(b: Block, run_id: str, iteration: int, labels: np.ndarray) -> None:
    """Keep this iteration's labels for the next one; two generations are kept on disk, so a
    retried task of this iteration still finds the previous one."""
    if b.scratch is None:
        LABELS.put((run_id, b.part, b.start), iteration, labels)
        return
    _save_side(b, run_id, iteration, "labels", labels)


def _save_side(b: Block, run_id: str, iteration: int, kind: str, values: np.ndarray) -> None:
    """A side file of the block's (labels, bounds) for ``iteration``; the one of two iterations
    back is removed."""
    path = _label_file(b, run_id, iteration, kind)
    tmp = f"{path}.{os.getpid()}.tmp.npy"
    np.save(tmp, values)
    os.replace(tmp, path)
    try:
        os.remove(_label_file(b, run_id, iteration - 2, kind))
    except FileNotFoundError:
        pass


def stored_bounds(b: Block, run_id: str, iteration: int, shape: tuple[int, int]
                  ) -> pruning.Bounds | None:
    """The block's distance bounds after ``iteration`` if kept (see ``stored_labels``), with its
    per-cluster partials for ``shape`` = (k, d) centroids when kept too: the caller's to change
    (taken out of the worker's cache, or read from the side file), so a pass that fails half
    way leaves no half-moved bounds behind for its retry."""
    if b.scratch is None:
        return LABELS.take((run_id, b.part, b.start, "bounds"), iteration)
    try:
        both = np.load(_label_file(b, run_id, iteration, "bounds"))
    except (FileNotFoundError, ValueError):
        return None
    try:
        clusters = pruning.Clusters.unpacked(
            np.load(_label_file(b, run_id, iteration, "clusters")), *shape)
    except (FileNotFoundError, ValueError):
        clusters = None  # the next pass folds every row
    return pruning.Bounds(both[0], both[1], clusters)


def keep_bounds(b: Block, run_id: str, iteration: int, bounds: pruning.Bounds) -> None:
    """Keep this iteration's bounds for the next one, as ``keep_labels`` keeps labels."""
    if b.scratch is None:
        LABELS.put((run_id, b.part, b.start, "bounds"), iteration, bounds)
        return
    _save_side(b, run_id, iteration, "bounds", np.stack([bounds.upper, bounds.lower]))
    if bounds.clusters is not None:
        _save_side(b, run_id, iteration, "clusters", bounds.clusters.packed())


# --------------------------------------------------------------------------- data summary
@dataclass
class Summary:
    """One partition's rows, dropped rows, the moments used for scikit-learn's ``tol``, and a
    digest of the rows (``digest_rows``) that tells a checkpoint's data from other data."""

    rows: int
    weight: float
    mean: np.ndarray
    m2: np.ndarray  # sum of squared deviations from ``mean`` per feature
    problems: dict
    digest: int = 0  # sum mod 2**64 of the rows' hashes: any order, any partitioning

    def add(self, other: "Summary") -> "Summary":
        """Chan et al.'s parallel merge of means and squared deviations."""
        n = self.rows + other.rows
        problems = dict(self.problems)
        merge_problems(problems, other.problems)
        digest = (self.digest + other.digest) % 2**64
        if n == 0:
            return Summary(0, 0.0, self.mean, self.m2, problems, digest)
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.rows / n)
        m2 = self.m2 + other.m2 + delta * delta * (self.rows * other.rows / n)
        return Summary(n, self.weight + other.weight, mean, m2, problems, digest)


def summarize(blocks: Iterable[Block], d: int) -> Summary:
    total = Summary(0, 0.0, np.zeros(d), np.zeros(d), {})
    for b in blocks:
        # float64 whatever the blocks' dtype (float32 rows convert exactly)
        mean = b.x.mean(axis=0, dtype=np.float64) if b.rows else np.zeros(d)
        dev = b.x - mean
        weight = float(b.rows if b.w is None else b.w.sum())
        part = Summary(b.rows, weight, mean, np.einsum("ij,ij->j", dev, dev), b.problems,
                       digest_rows(b.x, b.w))
        total = total.add(part)
    return total


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))
_SHIFTS = (np.uint64(30), np.uint64(27), np.uint64(31))


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise: a bijection of uint64 where every input bit flips
    about half the output bits (uint64 arithmetic wraps, which is the point)."""
    z = (z ^ (z >> _SHIFTS[0])) * _MIX[0]
    z = (z ^ (z >> _SHIFTS[1])) * _MIX[1]
    return z ^ (z >> _SHIFTS[2])


def digest_rows(x: np.ndarray, w: np.ndarray | None = None) -> int:
    """The sum mod 2**64 of a 64-bit hash of each row's float64 bytes (then its weight).

    Why: a checkpoint must be refused for other data, and the size and moments do not tell data
    apart (rows (-1, 0), (1, 0), (0, -1), (0, 1) and (-1, 1), (1, -1), (0, 0), (0, 0) have the same
    count, means and variances). A sum of per-row hashes is the same for the same rows in any order
    and on any partitioning (blocks and partitions add up), costs a few integer operations per
    value in the pass that already reads every row, and differs for other rows but with a chance of
    about 2**-64. Not a cryptographic hash: it catches mistakes, not forgeries. -0.0 hashes as 0.0
    (they are the same value to the fit).
    """
    h = np.full(x.shape[0], _GOLDEN)
    columns = [x[:, j] for j in range(x.shape[1])] + ([] if w is None else [w])
    for col in columns:
        bits = np.ascontiguousarray(col + 0.0, dtype=np.float64).view(np.uint64)
        h = _mix64((h ^ bits) + _GOLDEN)  # chained: the same values in other columns differ
    return int(h.sum(dtype=np.uint64))


# --------------------------------------------------------------------------- Lloyd
@dataclass
class LloydStep:
    run_id: str
    iteration: int
    centroids: np.ndarray
    prev_centroids: np.ndarray | None
    numba: bool | None = None
    #: skip the rows whose centroid provably stays (pruning.py): same labels, fewer distances
    prune: bool = False


def current_labels(b: Block, run_id: str, iteration: int, centroids: np.ndarray) -> np.ndarray:
    """The block's labels under the centroids of ``iteration`` (cached, else recomputed)."""
    cached = stored_labels(b, run_id, iteration)
    if cached is not None:
        return cached
    return kernels.assign(b.x, b.x_sq, centroids)[0]


def lloyd_many(blocks: Iterable[Block], steps: list[LloydStep]) -> list[kernels.Partials]:
    """One Lloyd assignment of several models over a partition, each block read once: per model,
    partial sums, weights, counts, inertia, rows moved and rows whose distances were computed."""
    totals = [kernels.Partials.zeros(*s.centroids.shape) for s in steps]
    motions: dict[int, pruning.Motion] = {}  # per pruned model, computed on its first block
    for b in blocks:
        for i, step in enumerate(steps):
            if step.prune:
                part = _pruned_pass(b, step, motions, i)
            else:
                part = _brute_pass(b, step)
            totals[i] = totals[i].add(part)
    return totals


def _previous_labels(b: Block, step: LloydStep) -> np.ndarray | None:
    if step.prev_centroids is None:
        return None
    return current_labels(b, step.run_id, step.iteration - 1, step.prev_centroids)


def _brute_pass(b: Block, step: LloydStep) -> kernels.Partials:
    part, labels = kernels.block_partials(b.x, b.x_sq, b.w, step.centroids,
                                          _previous_labels(b, step), numba=step.numba)
    keep_labels(b, step.run_id, step.iteration, labels)
    return part


def _pruned_pass(b: Block, step: LloydStep, motions: dict, i: int) -> kernels.Partials:
    """With the previous iteration's labels and bounds at hand, a pruned pass; without them (the
    first iteration, a retried task, an evicted entry) a full pass that leaves bounds."""
    bounds = labels = None
    if step.prev_centroids is not None:
        labels = stored_labels(b, step.run_id, step.iteration - 1)
        bounds = stored_bounds(b, step.run_id, step.iteration - 1, step.centroids.shape)
    if labels is not None and bounds is not None and len(bounds.upper) == b.rows:
        if i not in motions:
            motions[i] = pruning.Motion.between(step.prev_centroids, step.centroids, b.x.dtype)
        part, labels, bounds = pruning.pruned_partials(b.x, b.x_sq, b.w, motions[i], labels,
                                                       bounds, numba=step.numba, reuse=True)
    else:
        part, labels, bounds = pruning.full_partials(b.x, b.x_sq, b.w, step.centroids,
                                                     _previous_labels(b, step),
                                                     numba=step.numba)
    keep_labels(b, step.run_id, step.iteration, labels)
    keep_bounds(b, step.run_id, step.iteration, bounds)
    return part


def lloyd(blocks: Iterable[Block], step: LloydStep) -> kernels.Partials:
    """One Lloyd assignment over a partition: partial sums, weights, counts, inertia, moved."""
    return lloyd_many(blocks, [step])[0]


# --------------------------------------------------------------------------- empty clusters
@dataclass
class FarthestStep:
    run_id: str
    iteration: int
    centroids: np.ndarray
    n: int


@dataclass
class Candidate:
    """A row picked by a sampling or search task: its sort key, values, weight and label."""

    key: float
    row: np.ndarray
    weight: float = 1.0
    label: int = -1

    def rank(self) -> tuple:
        """Sort order: the key, then the row's content as ``kernels.smallest_rows`` compares it
        (bit patterns, then the weight's), so equal ranks mean interchangeable candidates."""
        bits = kernels.row_bits(self.row[None, :], np.array([self.weight]))[0]
        return (self.key, *bits.tolist())


def _candidates(b: Block, idx: np.ndarray, keys: np.ndarray,
                labels: np.ndarray | None = None) -> list[Candidate]:
    """The block's rows ``idx`` (with ``keys[j]`` for ``idx[j]``) as candidates; rows are copied,
    as the block may be a view on memory that goes away."""
    return [Candidate(float(key), b.x[i].astype(np.float64), 1.0 if b.w is None else float(b.w[i]),
                      -1 if labels is None else int(labels[i])) for i, key in zip(idx, keys)]


def farthest(blocks: Iterable[Block], step: FarthestStep) -> list[Candidate]:
    """The partition's ``n`` rows farthest from their assigned centroid (key = -distance)."""
    found: list[Candidate] = []
    for b in blocks:
        labels = current_labels(b, step.run_id, step.iteration, step.centroids)
        idx, dist = kernels.farthest(b.x, step.centroids, labels, step.n, b.w)
        found += _candidates(b, idx, -dist, labels)
    return smallest(found, step.n)


def smallest(cands: list[Candidate], n: int) -> list[Candidate]:
    """The ``n`` candidates with the smallest key, ties by row content (never by position)."""
    return sorted(cands, key=Candidate.rank)[:n]


# --------------------------------------------------------------------------- seeded sampling
@dataclass
class SampleStep:
    """Weighted sampling without replacement keyed by row content (``kernels.row_uniforms``), so
    the same seed picks the same rows on any partitioning and row order. Each row's mass is its
    weight (``centers`` None: random init, first k-means++ centre) or weight x squared distance
    to the nearest center (k-means++); the exponential race key -log(u) / mass, smallest first,
    samples proportionally to mass. Identical rows share u, so they are drawn together: a row
    repeated c times is as likely as one copy (a weight column expresses multiplicity).
    """

    seed: int
    stream: int
    n: int
    centers: np.ndarray | None = None


@dataclass
class SampleResult:
    cost: float  # sum of w * d^2 to the nearest center (0 when centers is None)
    candidates: list[Candidate]


def _mass(b: Block, centers: np.ndarray | None) -> np.ndarray:
    """Each row's sampling mass: its weight, times d^2 to the nearest center when given."""
    if centers is None:
        return np.ones(b.rows) if b.w is None else b.w
    d2 = kernels.min_distances(b.x, b.x_sq, centers)
    return d2 if b.w is None else d2 * b.w


def _smallest_keys(blocks: Iterable[Block], seed: int, stream: int, n: int,
                   centers: np.ndarray | None, key_of) -> SampleResult:
    """Per partition: total mass, and the ``n`` rows with the smallest finite key_of(mass, u)
    (ties by row content, like every other choice here)."""
    cost = 0.0
    found: list[Candidate] = []
    for b in blocks:
        mass = _mass(b, centers)
        cost += kernels.sequential_sum(mass)
        with np.errstate(divide="ignore"):
            keys = key_of(mass, kernels.row_uniforms(seed, stream, b.x, b.w))
        idx = kernels.smallest_rows(keys, b.x, b.w, n)
        found += _candidates(b, idx, keys[idx])
    return SampleResult(cost, smallest(found, n))


def _race_key(mass: np.ndarray, u: np.ndarray) -> np.ndarray:
    return -np.log(u) / mass  # rows with no mass get +inf: never drawn


def sample(blocks: Iterable[Block], step: SampleStep) -> SampleResult:
    return _smallest_keys(blocks, step.seed, step.stream, step.n, step.centers, _race_key)


@dataclass
class OversampleStep:
    """One k-means|| round: keep rows with u < l * w d^2 / cost, cost known only after the pass.

    Each partition returns its cost and its ``cap`` rows with the largest ratio w d^2 / u; the
    driver keeps those with ratio > cost / l. If a partition's smallest returned ratio is still
    above that threshold, it may have had more rows to keep, and the driver asks again.
    """

    seed: int
    stream: int
    cap: int
    centers: np.ndarray


def _ratio_key(mass: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.where(mass > 0, -(mass / u), np.inf)  # smallest key = largest ratio


def oversample(blocks: Iterable[Block], step: OversampleStep) -> SampleResult:
    return _smallest_keys(blocks, step.seed, step.stream, step.cap, step.centers, _ratio_key)


def nearest_weights(blocks: Iterable[Block], centers: np.ndarray) -> np.ndarray:
    """Total row weight nearest to each of ``centers`` (k-means|| candidate weights)."""
    total = np.zeros(centers.shape[0])
    for b in blocks:
        labels = kernels.assign(b.x, b.x_sq, centers)[0]
        total += np.bincount(labels, weights=b.w, minlength=centers.shape[0])
    return total
