"""The resident tasks' memory budget (``transport.budget``) and where a task holds its blocks
(``transport.holding``): the rule's numbers worked by hand, and blocks identical in memory and in
files."""

import os

import numpy as np
import pytest

from kmeans_dist import kernels, pruning
from kmeans_dist.blocks import Block
from kmeans_dist.transport import budget
from kmeans_dist.transport import holding
from kmeans_dist.transport.holding import FILES, MEMORY, Held

MIB = 1 << 20
BASELINE = holding.worker_baseline  # the real one, before a fixture replaces it


@pytest.mark.parametrize("text, expected", [
    ("512m", 512 * MIB), ("2g", 2 << 30), ("1536", 1536 * MIB), ("1.5g", 1536 * MIB),
    ("384MiB", 384 * MIB), ("64k", 64 << 10), ("100b", 100),
])
def test_memory_sizes_read_as_spark_reads_them(text, expected):
    assert budget.size_bytes(text) == expected


def test_a_bad_memory_size_is_refused():
    with pytest.raises(ValueError, match="not a memory size: '12 parsecs'"):
        budget.size_bytes("12 parsecs")


def test_pyspark_memory_is_shared_by_the_executor_cores():
    b = budget.task_budget({"spark.executor.pyspark.memory": "2g", "spark.executor.cores": "4",
                            "spark.executor.memoryOverhead": "8g"}, "yarn", None)
    assert b.per_task == 512 * MIB
    assert b.source == "spark.executor.pyspark.memory 2,048 MiB / 4 task slots"


def test_explicit_overhead_is_shared_by_the_task_slots():
    # 4 cores, 2 cpus per task: 2 slots share 3 GiB
    b = budget.task_budget({"spark.executor.memoryOverhead": "3g", "spark.executor.cores": "4",
                            "spark.task.cpus": "2"}, "spark://m:7077", None)
    assert b.per_task == 1536 * MIB


def test_default_overhead_is_a_tenth_of_the_heap_but_at_least_384_mib():
    small = budget.task_budget({"spark.executor.memory": "1g"}, "yarn", 2)
    assert small.per_task == 192 * MIB  # max(384 MiB, 102 MiB) over 2 measured slots
    assert "2 task slots" in small.source
    big = budget.task_budget({"spark.executor.memory": "20g", "spark.executor.cores": "4"},
                             "yarn", 2)
    assert big.per_task == (2048 * MIB) // 4  # 10% of 20 GiB; the conf's cores win
    assert budget.task_budget({"spark.executor.memory": "20g"}, "yarn", None).per_task == 2048 * MIB


def test_kubernetes_gives_python_executors_a_larger_default_factor():
    k8s = budget.task_budget({"spark.executor.memory": "10g", "spark.executor.cores": "2"},
                             "k8s://https://api:6443", None)
    assert k8s.per_task == (4096 * MIB) // 2
    set_factor = budget.task_budget({"spark.executor.memory": "10g",
                                     "spark.executor.memoryOverheadFactor": "0.2"}, "yarn", 1)
    assert set_factor.per_task == 2048 * MIB


def test_local_mode_shares_half_the_available_memory(monkeypatch):
    monkeypatch.setattr(budget, "available_memory", lambda: 8 << 30)
    assert budget.task_budget({}, "local[4]", None).per_task == (4 << 30) // 4
    assert budget.task_budget({}, "local", None).per_task == 4 << 30
    assert budget.task_budget({}, "local[2,3]", None).per_task == 2 << 30
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert budget.task_budget({}, "local[*]", None).per_task == (4 << 30) // 8


def test_available_memory_is_what_meminfo_says_at_most():
    with open("/proc/meminfo") as fh:
        total = int(next(ln for ln in fh if ln.startswith("MemTotal:")).split()[1]) * 1024
    assert 0 < budget.available_memory() <= total


def test_row_bytes_count_features_norm_weight_labels_and_bounds():
    # float64 features and squared norm, float64 weight, then per model an int32 label, two
    # float32 distance bounds and the per-cluster partials' share: 1/16 of the features' bytes
    assert budget.row_bytes(16, weighted=False) == 16 * 8 + 8 + 4 + 8 + 8
    assert budget.row_bytes(4, weighted=True, models=3) == 4 * 8 + 8 + 8 + 3 * (4 + 8 + 2)


# --------------------------------------------------------------------------- holding
def _blocks(n_blocks=5, rows=100, d=3, weighted=True, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_blocks):
        x = rng.normal(size=(rows, d))
        w = rng.uniform(0.5, 2, rows) if weighted else None
        out.append(Block(2, i * rows, x, kernels.squared_norms(x), w, {}))
    return out


def _same_blocks(got, expected):
    assert [(b.part, b.start) for b in got] == [(b.part, b.start) for b in expected]
    for g, e in zip(got, expected):
        assert np.array_equal(g.x, e.x) and np.array_equal(g.x_sq, e.x_sq)
        assert (g.w is None) == (e.w is None)
        if e.w is not None:
            assert np.array_equal(g.w, e.w)


@pytest.fixture
def local_dirs(tmp_path, monkeypatch):
    """Blocks written under ``tmp_path``; the worker's own memory taken as 0 (tested below)."""
    monkeypatch.setenv("SPARK_LOCAL_DIRS", str(tmp_path))
    monkeypatch.setattr(holding, "worker_baseline", lambda: 0)
    return tmp_path


def _files(root):
    return sorted(p.name for p in root.rglob("*.npy"))


def test_blocks_within_the_budget_stay_in_memory(local_dirs):
    blocks = _blocks()
    held = Held("t1", 2, "auto", budget=500 * budget.row_bytes(3, True), row_bytes=budget.row_bytes(3, True))
    for b in blocks:
        held.add(b)
    assert held.storage == MEMORY and held.rows == 500
    row = 3 * 8 + 8 + 8 + 4 + 8 + 2  # features, norm, weight, label, two bounds, partials
    assert held.report() == {"rows": 500, "bytes": 500 * row, "storage": MEMORY,
                             "budget": 500 * row, "block_bytes": 500 * row}
    _same_blocks(list(held), blocks)
    assert _files(local_dirs) == []


def test_blocks_over_the_budget_go_to_files_and_read_back_identical(local_dirs):
    blocks = _blocks()
    held = Held("t2", 2, "auto", budget=250 * 44, row_bytes=44)
    for b in blocks:
        held.add(b)
    assert held.storage == FILES and held.report()["bytes"] == 500 * 44
    assert held.report()["dir"] == str(local_dirs / "kmeans_dist" / "t2")
    # every block is on disk, the first ones spilled when the third went over the budget
    assert len(_files(local_dirs)) == 3 * len(blocks)
    for _ in range(2):  # one iteration per pass, as often as the fit asks
        _same_blocks(list(held), blocks)
    # the arrays are maps of the files, not copies in the heap
    first = next(iter(held))
    assert isinstance(first.x.base, np.memmap) or isinstance(first.x, np.memmap)
    assert first.scratch is not None  # labels go beside the blocks, not to the worker's cache
    held.release()
    assert _files(local_dirs) == [] and not (local_dirs / "kmeans_dist" / "t2").exists()


def test_forced_storage_ignores_the_budget(local_dirs):
    memory = Held("t3", 2, MEMORY, budget=0, row_bytes=44)
    files = Held("t4", 2, FILES, budget=1 << 40, row_bytes=44)
    blocks = _blocks(weighted=False)
    for b in blocks:
        memory.add(b)
        files.add(b)
    assert memory.storage == MEMORY and files.storage == FILES
    _same_blocks(list(memory), blocks)
    _same_blocks(list(files), blocks)
    assert len(_files(local_dirs)) == 2 * len(blocks)  # x and norms, no weights


def test_release_removes_only_its_own_partition(local_dirs):
    mine, other = Held("t5", 1, FILES, 0, 44), Held("t5", 11, FILES, 0, 44)
    for b in _blocks(2):
        mine.add(Block(1, b.start, b.x, b.x_sq, b.w))
        other.add(Block(11, b.start, b.x, b.x_sq, b.w))
    mine.release()
    assert _files(local_dirs) and all(n.startswith("p11-") for n in _files(local_dirs))
    _same_blocks(list(other), [Block(11, b.start, b.x, b.x_sq, b.w) for b in _blocks(2)])


def test_what_the_worker_already_holds_comes_off_the_budget(local_dirs, monkeypatch):
    monkeypatch.setattr(holding, "worker_rss", lambda: 200 * 44 - holding.KERNEL_RUNTIME)
    monkeypatch.setattr(holding, "worker_baseline", BASELINE)
    held = Held("t6", 2, "auto", budget=500 * 44, row_bytes=44)
    for b in _blocks():  # 500 rows: within the budget, not within what is left of it
        held.add(b)
    assert held.storage == FILES and held.report()["budget"] == 300 * 44


def test_worker_rss_is_this_process_resident_memory():
    now = holding.worker_rss()
    with open("/proc/self/status") as fh:  # the kernel's other account of the same figure
        vm_rss = int(next(ln for ln in fh if ln.startswith("VmRSS:")).split()[1]) * 1024
    assert 10 << 20 < now and abs(now - vm_rss) < 0.1 * vm_rss


def test_unknown_storage_is_refused():
    with pytest.raises(ValueError, match="unknown block storage 'tape'"):
        Held("t", 0, "tape", 0, 44)


@pytest.mark.parametrize("d, rows", [
    (1, 524_288), (3, 174_762), (16, 32_768), (100, 5_242), (512, 1_024),  # 4 MiB // (8 d)
    (1_000, 1_024),  # at least 1,024 rows (8 MB at d = 1,000)
])
def test_a_default_block_is_4_mib_of_features(d, rows):
    """``block_rows`` unset: 4 MiB of float64 features per block (the README's default), at least
    1,024 rows."""
    from kmeans_dist import data

    assert data.default_block_rows(d) == rows
    if rows > 1_024:
        assert 4 * MIB - 8 * d < rows * 8 * d <= 4 * MIB


def test_a_fit_packs_default_blocks(spark):
    """What a fit packs with when ``block_rows`` is unset: the default above (3 features)."""
    from kmeans_dist import data

    df = spark.createDataFrame([(0.0, 1.0, 2.0)], ["a", "b", "c"])
    assert data.packing(df, df.columns).packer.block_rows == 4 * MIB // 24 == 174_762


def test_arrow_files_packing_holds_a_block_and_a_batch_and_flushes_each_file(monkeypatch,
                                                                             tmp_path):
    """The arrow-files transport's packing task (``arrow._Store``, the fallback's) over a
    partition of 40 Arrow batches = 20 blocks: each block goes to its files as soon as it is
    full, each file is flushed to disk (fdatasync) before the next is created, and the task's
    memory never holds more than the block being filled, the last one written, and the Arrow
    batch at hand (with its float64 copy), far below the partition. Memory is measured with
    tracemalloc, which sees numpy's buffers, and the batches' buffers are numpy's (zero-copy)."""
    import re
    import tracemalloc
    from types import SimpleNamespace

    import pyarrow as pa
    import pyspark

    from kmeans_dist.data import Packer
    from kmeans_dist.transport import arrow

    monkeypatch.setenv("SPARK_LOCAL_DIRS", str(tmp_path))
    monkeypatch.setattr(pyspark.TaskContext, "get", lambda: SimpleNamespace(partitionId=lambda: 0))
    d, block_rows, batch_rows, batches = 8, 2000, 1000, 40
    names = [f"f{j}" for j in range(d)]
    block_bytes, batch_bytes = block_rows * (d + 1) * 8, batch_rows * d * 8

    def source(n=batches):
        for i in range(n):
            x = np.random.default_rng(i).normal(size=(d, batch_rows))
            yield pa.RecordBatch.from_arrays([pa.array(x[j]) for j in range(d)], names)

    # once before measuring: the first run's imports and caches are no part of the partition's
    list(arrow._Store(Packer(names, None, block_rows, False), "warm-up")(source(4)))
    synced = []
    files = tmp_path / "kmeans_dist" / "t0ken"
    real_sync = os.fdatasync

    def sync(fd):
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), len(list(files.iterdir()))))
        real_sync(fd)

    monkeypatch.setattr(os, "fdatasync", sync)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        handles = list(arrow._Store(Packer(names, None, block_rows, False), "t0ken")(source()))
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert sum(h.num_rows for h in handles) == batches * batch_rows // block_rows == 20
    partition = batches * batch_rows * (d + 1) * 8
    # two blocks, and the batch at hand plus the next one being made, each with its copy; 64 KiB
    # for the interpreter's own objects (handles, file objects, paths)
    assert peak <= 2 * block_bytes + 4 * batch_bytes + (64 << 10), (peak, partition)
    assert peak < partition / 4
    # every file (x and norms of 20 blocks) synced, each before the next one existed
    assert len(synced) == 40 == len(list(files.iterdir()))
    for i, (path, present) in enumerate(synced):
        assert re.fullmatch(r".*/p0-\d+\.(x|xsq)\.npy\.[0-9a-f]{32}\.tmp\.npy", path), path
        assert present == i + 1  # the files written before, and this one
