"""The default transport on a memory-limited executor: a real standalone worker whose whole process
tree (Worker daemon, executor JVM, Python workers) runs in a v1 memory cgroup smaller than the
data. The resident tasks' budget (``transport.budget``) sends the blocks to executor-local
memory-mapped files, the fit gives Lloyd's model (numpy brute force from the same start), and the
kernel's OOM killer never fires (``oom_kill`` stays 0), where holding the rows in the Python
workers' memory would need more than the whole container.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cgroup import MemoryCgroup, memory_cgroup
from standalone import lloyd_reference, log_tail, run_logged, spark_env, standalone

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
#: the container: Worker daemon (256 MiB heap), executor (512 MiB heap, 1 core), its Python
#: worker and the page cache they touch all count
LIMIT = 1100 * MIB
ROWS, D, K = 9_500_000, 16, 8  # 1,160 MiB of float64 features: more than the whole container
MAX_ITER = 2  # every pass reads all the files; two show Lloyd on them (and cost half of four)
TRANSPORT = "auto"  # the default (by hand, "resident-memory" here gets the executor OOM-killed)
FIT_TIMEOUT = 420.0


def limited_worker_cluster(base: Path, group: MemoryCgroup):
    """A master (unlimited) and one 1-core worker started inside ``group`` (its daemon's heap
    256 MiB)."""
    return standalone(base, workers=1, wrap_worker=group.command, SPARK_DAEMON_MEMORY="256m")


def write_data(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """ROWS x D rows around K overlapping centres, as Parquet with 125K-row groups; returns
    the rows and a start (the first row of each centre, moved off it)."""
    rng = np.random.default_rng(11)
    centres = rng.normal(scale=3.0, size=(K, D))
    which = rng.integers(0, K, ROWS)
    x = centres[which] + rng.normal(size=(ROWS, D))
    table = pa.table({f"f{j}": x[:, j] for j in range(D)})
    pq.write_table(table, path, row_group_size=125_000)
    init = x[[int(np.flatnonzero(which == j)[0]) for j in range(K)]] + 0.5
    return x, init


DRIVER = """
import json, logging, sys
import numpy as np
from kmeans_dist import KMeans, get_session

master, data, init, out, transport = sys.argv[1:6]
logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
spark = get_session(master, app_name="kmeans-dist memory-limited executor", conf={{
    "spark.executor.memory": "512m",
    "spark.executor.cores": "1",
    "spark.default.parallelism": "1",  # one partition per task slot: one resident task
    "spark.pyspark.python": sys.executable,
    "spark.scheduler.minRegisteredResourcesRatio": "1.0",
    "spark.scheduler.maxRegisteredResourcesWaitingTime": "120s",
}})
model = KMeans({k}, init=np.load(init), max_iter={max_iter}, transport=transport).fit(
    spark.read.parquet(data))
json.dump({{"centroids": model.centroids.tolist(), "n_iter": model.n_iter,
           "transport": model.transport}}, open(out, "w"))
spark.stop()
"""


@pytest.mark.cluster
def test_data_larger_than_the_container_fits_without_an_oom_kill(tmp_path: Path) -> None:
    started = time.perf_counter()
    data, init_path, out = tmp_path / "rows.parquet", tmp_path / "init.npy", tmp_path / "fit.json"
    x, init = write_data(data)
    np.save(init_path, init)
    assert x.nbytes > LIMIT
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(DRIVER.format(k=K, max_iter=MAX_ITER)))
    log = tmp_path / "driver.log"
    with memory_cgroup("kmeans-dist-test", LIMIT) as group:
        with limited_worker_cluster(tmp_path / "cluster", group) as cluster:
            env = spark_env(PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
            code = run_logged([sys.executable, str(script), cluster.master_url, str(data),
                               str(init_path), str(out), TRANSPORT], log, env, ROOT,
                              FIT_TIMEOUT)
            peak, kills = group.max_usage, group.oom_kills
            executors = sorted(p.name for p in cluster.work_dir.glob("app-*/*"))
            worker_log = log_tail(cluster.log_dir / "worker0.log", 30)
    fitted = time.perf_counter()
    assert code == 0, f"driver exited with {code}\n{log_tail(log, 60)}\n{worker_log}"
    # nothing was killed: no OOM kill in the container, one executor for the whole fit
    assert kills == 0, f"{kills} OOM kill(s) in the executor's cgroup\n{worker_log}"
    assert executors == ["0"], f"executors started: {executors}\n{worker_log}"
    assert peak <= LIMIT
    result = json.loads(out.read_text())
    # resident tasks, blocks in files: the rows would take 1,268 MiB in memory, over the
    # 384 MiB budget (the default overhead, 384 MiB, for its one task slot)
    assert result["transport"]["name"] == "resident", result["transport"]
    assert result["transport"]["storage"] == "files", result["transport"]
    assert result["transport"]["held_bytes"] > LIMIT
    assert result["transport"]["budget_per_task"] == 384 * MIB
    driver_log = log.read_text()
    assert "blocks held in executor-local memory-mapped files" in driver_log
    # and it is Lloyd's model: brute force from the same start (the sums are folded in another
    # order, so the centroids agree to rounding: 1e-9 relative)
    expected, n_iter = lloyd_reference(x, init, MAX_ITER)
    assert result["n_iter"] == n_iter
    np.testing.assert_allclose(np.array(result["centroids"]), expected, rtol=1e-9, atol=1e-9)
    print(f"\nmemory-limited fit: {fitted - started:.1f} s, peak charge {peak / MIB:.0f} MiB of "
          f"{LIMIT / MIB:.0f} MiB, {x.nbytes / MIB:.0f} MiB of rows")
