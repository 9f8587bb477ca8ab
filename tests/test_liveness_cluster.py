"""Liveness on a real standalone cluster: every wait of the resident transport is bounded and
Spark's own retries carry the fit through lost executors (tests/test_liveness.py: local mode).

One cluster for the module: a master on 127.0.0.1 and two 2-core workers on 127.0.0.2 and
127.0.0.3 (two hosts, as Spark sees them). Each test runs one fit with the default distributed
transport (the driver path turned off: these rows would fit in the driver) from a driver subprocess (its own application) on the same rows and start, and its model must be
brute-force Lloyd's from that start:

- executor JVMs killed with SIGKILL, while a task packs its rows and mid-fit: Spark retries the
  tasks, which reconnect;
- dynamic allocation from no executor at all: the fit waits for them and runs resident;
- speculation: second attempts of the resident tasks stand by and never replace a live one;
- a whole host frozen mid-fit (Worker daemon, executor JVM, Python workers: SIGSTOP, so no socket
  closes): the driver notices within ``channel.LOSS_TIMEOUT``, Spark's retry reconnects. Last:
  its worker is thawed, but not as it was.

The driver pauses before one request to the resident tasks (``PAUSE_AT``) and writes the pids of
their Python workers, so a fault lands mid-fit at the same point in every run; the driver log's
lines carry their time, to measure when the driver noticed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from kmeans_dist.transport.channel import LOSS_TIMEOUT
from kmeans_dist.transport.resident import RECONNECT_TIMEOUT
from standalone import (Cluster, lloyd_reference, log_tail, spark_env, spark_events, spawn,
                        standalone)

WORKER_HOSTS = ("127.0.0.2", "127.0.0.3")
CORES = 2  # per worker: a retry or a speculative copy finds a free slot on the other host
K, D, ROWS, MAX_ITER = 4, 4, 20_000, 30
#: the driver pauses before its 3rd request to the resident tasks: after the input's summary and
#: iteration 1, before iteration 2 (of 7 from this start)
PAUSE_AT = 3
#: the longest each phase of a fit may take (up to the pause, then to the end)
FIT_TIMEOUT = 120.0
EXECUTOR = "org.apache.spark.executor.CoarseGrainedExecutorBackend"
WORKER = "org.apache.spark.deploy.worker.Worker"
#: every application: 2 partitions (one resident task per host), Spark's event log kept
APP = {
    "spark.default.parallelism": "2",
    "spark.executor.memory": "512m",
    "spark.ui.enabled": "false",
    "spark.eventLog.enabled": "true",
    "spark.eventLog.compress": "false",
}
#: static allocation: one 2-core executor per worker, and the job starts only once both are
#: registered (in standalone mode the ratio counts against spark.cores.max)
STATIC = {
    "spark.executor.cores": str(CORES),
    "spark.cores.max": str(CORES * len(WORKER_HOSTS)),
    "spark.scheduler.minRegisteredResourcesRatio": "1.0",
    "spark.scheduler.maxRegisteredResourcesWaitingTime": "60s",
}

DRIVER = """
import json, logging, os, sys, time
import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql.types import DoubleType, StructField, StructType
from kmeans_dist import KMeans
from kmeans_dist import transport as transports
from kmeans_dist.transport import resident

args = json.loads(sys.argv[1])
base = args["base"]
logging.basicConfig(level=logging.INFO,
                    format="%(created).3f %(levelname)s %(name)s: %(message)s")
test = logging.getLogger("test")
builder = SparkSession.builder.master(args["master"]).appName(args["name"])
for key, value in args["conf"].items():
    builder = builder.config(key, value)
spark = builder.getOrCreate()
sc = spark.sparkContext

def executors():
    return len(sc.statusTracker().getExecutorInfos()) - 1  # less the driver

def write(name, obj):
    with open(f"{base}/{name}.tmp", "w") as f:
        json.dump(obj, f)
    os.rename(f"{base}/{name}.tmp", f"{base}/{name}")

made, make = [], transports.make
def pausing_make(*a, **kw):
    # the fit's transport, paused before its PAUSE_AT-th request until base/resume exists
    t = make(*a, **kw)
    made.append(t)
    run, calls = t.run, []
    def run_after_the_pause(fn, value, label=None):
        calls.append(fn)
        if len(calls) == args["pause_at"]:
            pids = {p: r["pid"] for p, r in t.held.items()}
            write("pause.json", {"pids": pids})
            test.info("paused: the resident tasks' Python workers are %s", pids)
            while not os.path.exists(base + "/resume"):
                time.sleep(0.05)
            test.info("resumed")
        return run(fn, value, label)
    t.run = run_after_the_pause
    return t
transports.make = pausing_make

recv_hello = resident.recv_hello
def logged_hello(conn):
    hello = recv_hello(conn)
    test.info("hello from partition %d attempt %d", hello[1], hello[2])
    return hello
resident.recv_hello = logged_hello

def stall_first_attempt(batches):
    # before the resident tasks: partition 0's first attempt never gets its rows
    from pyspark import TaskContext
    ctx = TaskContext.get()
    if ctx.partitionId() == 0 and ctx.attemptNumber() == 0:
        write("stalled", os.getpid())
        time.sleep(600)
    yield from batches

x, init = np.load(base + "/rows.npy"), np.load(base + "/init.npy")
schema = StructType([StructField(f"f{j}", DoubleType(), False) for j in range(x.shape[1])])
df = spark.createDataFrame(sc.parallelize([tuple(r) for r in x.tolist()], 2), schema)
if args["stall"]:
    df = df.mapInArrow(stall_first_attempt, df.schema)
before = executors()
test.info("the fit starts with %d executors", before)
# driver_max_mb=0: these rows are small enough for the driver; the default for larger ones
model = KMeans(len(init), init=init, max_iter=args["max_iter"], driver_max_mb=0).fit(df)
write("fit.json", {"centroids": model.centroids.tolist(), "n_iter": model.n_iter,
                   "transport": model.transport, "executors_before": before,
                   "executors_after": executors(), "parked": made[0].parked_total})
spark.stop()
"""


# --------------------------------------------------------------------------- processes
def parent(pid: int) -> int:
    """``pid``'s parent (from /proc; the name in parentheses may hold spaces)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[1])


def ancestor(pid: int, marker: str) -> int:
    """The nearest process at or above ``pid`` whose command line holds ``marker``."""
    while pid > 1:
        if marker in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode():
            return pid
        pid = parent(pid)
    raise LookupError(f"no {marker} above the process")


def children(pid: int) -> list[int]:
    """``pid``'s children, from every thread (a JVM starts its children from worker threads)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
    return found


def freeze(pid: int) -> list[int]:
    """SIGSTOP ``pid`` and everything under it, each before its children are listed (a stopped
    process starts no new one); the stopped pids, top first."""
    os.kill(pid, signal.SIGSTOP)
    stopped = [pid]
    for child in children(pid):
        stopped += freeze(child)
    return stopped


def thaw(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def gone(pid: int, timeout: float) -> bool:
    """Whether ``pid`` exits (or is a zombie) within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        if stat[stat.rindex(")") + 2] == "Z":
            return True
        time.sleep(0.1)
    return False


# --------------------------------------------------------------------------- fits
class Fit:
    """A driver subprocess fitting the rows on the cluster (see DRIVER)."""

    def __init__(self, base: Path, proc, log: Path) -> None:
        self.base, self.proc, self.log = base, proc, log

    def wait_for(self, what: str, ready) -> None:
        """Until ``ready()``, while the driver runs (FIT_TIMEOUT at most)."""
        deadline = time.monotonic() + FIT_TIMEOUT
        while not ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{what}: not seen (driver exit code {self.proc.poll()})\n"
                            f"{log_tail(self.log, 60)}")
            time.sleep(0.1)

    def paused(self) -> dict[int, int]:
        """The resident tasks' Python worker pids by partition, once the driver is paused."""
        self.wait_for("the pause", (self.base / "pause.json").exists)
        pids = json.loads((self.base / "pause.json").read_text())["pids"]
        return {int(part): pid for part, pid in pids.items()}

    def resume(self) -> None:
        (self.base / "resume").touch()

    def result(self) -> dict:
        self.wait_for("the end of the fit", lambda: self.proc.poll() is not None)
        assert self.proc.returncode == 0, (f"driver exited with {self.proc.returncode}\n"
                                           f"{log_tail(self.log, 80)}")
        return json.loads((self.base / "fit.json").read_text())

    def when(self, pattern: str) -> float:
        """The time of the first driver log line whose message matches ``pattern``."""
        found = self.lines(pattern)
        assert found, f"no line matching {pattern!r} in the driver log\n{log_tail(self.log, 60)}"
        return found[0][0]

    def lines(self, pattern: str) -> list[tuple[float, str]]:
        """(time, message) of each driver log line whose message matches ``pattern``."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            # Spark's progress bar may precede a line on the same terminal row
            m = re.search(r"(\d{10}\.\d{3}) [A-Z]+ [\w.]+: (.*)", line)
            if m and re.search(pattern, m.group(2)):
                found.append((float(m.group(1)), m.group(2)))
        return found


@contextmanager
def fit(base: Path, cluster: Cluster, conf: dict, blobs: tuple[np.ndarray, np.ndarray],
        pause: bool = True, stall: bool = False) -> Iterator[Fit]:
    """A driver fitting ``blobs`` (rows, start) on ``cluster`` with ``conf``, paused mid-fit
    (``pause``), its partition 0's first attempt stalled before it packs (``stall``); stopped
    when the block exits."""
    (base / "events").mkdir(parents=True)
    np.save(base / "rows.npy", blobs[0])
    np.save(base / "init.npy", blobs[1])
    script, log = base / "driver.py", base / "driver.log"
    script.write_text(DRIVER)
    args = {"base": str(base), "master": cluster.master_url, "name": f"kmeans-dist {base.name}",
            "pause_at": PAUSE_AT if pause else None, "max_iter": MAX_ITER, "stall": stall,
            "conf": {**APP, "spark.pyspark.python": sys.executable,
                     "spark.eventLog.dir": (base / "events").as_uri(), **conf}}
    env = spark_env(PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    with spawn([sys.executable, str(script), json.dumps(args)], log, env, base) as proc:
        yield Fit(base, proc, log)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    started = time.perf_counter()
    with standalone(tmp_path_factory.mktemp("liveness"), hosts=WORKER_HOSTS,
                    cores=CORES) as up:
        print(f"\nstandalone cluster up in {time.perf_counter() - started:.1f} s")
        yield up


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    """ROWS x D rows around K overlapping centres, and a start near the first row of each."""
    rng = np.random.default_rng(18)
    centres = rng.normal(scale=2.0, size=(K, D))
    which = rng.integers(0, K, ROWS)
    x = centres[which] + rng.normal(size=(ROWS, D))
    return x, x[[int(np.flatnonzero(which == j)[0]) for j in range(K)]] + 0.5


@pytest.fixture(scope="module")
def lloyd(blobs) -> tuple[np.ndarray, int]:
    """Brute-force Lloyd from the same start: what every fit must give."""
    centroids, n_iter = lloyd_reference(*blobs, MAX_ITER)
    assert PAUSE_AT - 1 < n_iter < MAX_ITER  # the pause is mid-fit, and the fit converges
    return centroids, n_iter


def assert_resident_lloyd(result: dict, lloyd: tuple[np.ndarray, int], reconnects: int) -> None:
    """The resident tasks ran the whole fit (no fallback; ``reconnects`` of them lost and back)
    and its model is Lloyd's: same iterations, same centroids (the partials are folded in
    another order than numpy sums them, so to rounding: 1e-9 relative)."""
    record = result["transport"]
    assert record["name"] == "resident" and record["reconnects"] == reconnects, record
    assert result["n_iter"] == lloyd[1], result
    np.testing.assert_allclose(np.array(result["centroids"]), lloyd[0], rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------- the tests
@pytest.mark.cluster
def test_executors_killed_while_a_task_packs_and_mid_fit_are_retried(tmp_path, cluster, blobs,
                                                                     lloyd):
    """Two SIGKILLs on executor JVMs, each followed by Spark's retry reconnecting, never by a
    fallback: a JVM's death closes the pyspark daemon's stdin, the daemon SIGHUPs its workers,
    so the tasks' connections close at once; the Worker reports the exit, so Spark fails the
    tasks at once and retries them (spark.task.maxFailures is 4 on a cluster) within seconds.

    First while partition 0's first attempt packs (it said hello and was told to serve; the
    stage before it stalls): the driver gives the partition up and the retry, in the other
    executor's free slot, serves it (before the fix it was parked behind the dead attempt as a
    'second attempt' and the fit waited for good). Then between iterations 1 and 2, that other
    executor, which now runs both tasks: both are lost on the next request, and retried on the
    executor the Master started in place of the first."""
    started = time.perf_counter()
    with fit(tmp_path / "killed", cluster, STATIC, blobs, stall=True) as run:
        stalled = run.base / "stalled"
        run.wait_for("partition 0 stalled after its hello",
                     lambda: stalled.exists() and run.lines("^hello from partition 0 attempt 0$"))
        os.kill(ancestor(json.loads(stalled.read_text()), EXECUTOR), signal.SIGKILL)
        packing_kill = time.time()
        pids = run.paused()
        jvm = ancestor(pids[0], EXECUTOR)
        assert ancestor(pids[1], EXECUTOR) == jvm  # the retry went beside partition 1
        os.kill(jvm, signal.SIGKILL)
        mid_fit_kill = time.time()
        assert gone(pids[0], 15) and gone(pids[1], 15), "Python workers outlived their JVM"
        run.resume()
        result = run.result()
    # the first kill: the handshake noticed, partition 0's retry served, nothing stood by
    assert run.lines("failed its handshake"), run.lines("resident transport")
    assert run.lines("^hello from partition 0 attempt 1$"), run.lines("^hello")
    assert not run.lines("stands by"), run.lines("stands by")
    # the second: both lost at once, both retried
    lost = run.lines(r"^lost \d+ resident task")
    assert len(lost) == 1 and lost[0][1].startswith("lost 2 resident task(s): partition 0: "), lost
    assert run.lines("^hello from partition 0 attempt 2$") and run.lines(
        "^hello from partition 1 attempt 1$"), run.lines("^hello")
    assert_resident_lloyd(result, lloyd, reconnects=3)
    ready, back = run.when("^resident tasks: "), run.when("^iteration 2: ")
    print(f"\nexecutors killed: the retry of a task killed while it packed was ready "
          f"{ready - packing_kill:.1f} s after the kill, those of two killed mid-fit served "
          f"iteration 2 {back - mid_fit_kill:.1f} s after theirs; fit "
          f"{time.perf_counter() - started:.1f} s")


@pytest.mark.cluster
def test_dynamic_allocation_from_no_executor_runs_resident(tmp_path, cluster, blobs, lloyd):
    """No executor when the fit starts: the slots that count are those dynamic allocation can
    get (2 executors x 1 core for 2 partitions), so the transport waits for them (the start
    clock runs only while nothing of the job runs) instead of falling back at once."""
    conf = {"spark.dynamicAllocation.enabled": "true",
            "spark.dynamicAllocation.shuffleTracking.enabled": "true",
            "spark.executor.cores": "1",
            "spark.dynamicAllocation.minExecutors": "0",
            "spark.dynamicAllocation.initialExecutors": "0",
            "spark.dynamicAllocation.maxExecutors": "2",
            "spark.dynamicAllocation.schedulerBacklogTimeout": "1s"}
    started = time.perf_counter()
    with fit(tmp_path / "dynamic", cluster, conf, blobs, pause=False) as run:
        result = run.result()
    assert result["executors_before"] == 0 and result["executors_after"] == 2, result
    assert_resident_lloyd(result, lloyd, reconnects=0)
    print(f"\ndynamic allocation: fit {time.perf_counter() - started:.1f} s")


@pytest.mark.cluster
def test_speculative_attempts_stand_by_and_replace_nothing(tmp_path, cluster, blobs, lloyd):
    """Speculation with a duration threshold (the resident tasks run the whole fit: none ends
    for the quantile rule), which Spark applies when a stage's tasks fit the slots of one
    executor (spark.executor.cores, 2 here, for 2 tasks). Spark starts a copy of each resident
    task on the other host (never on a host the task ran on). Each stands by while the live
    one serves; none replaces a live connection; the model is Lloyd's."""
    conf = {**STATIC, "spark.speculation": "true", "spark.speculation.interval": "100ms",
            "spark.speculation.task.duration.threshold": "1s"}
    started = time.perf_counter()
    with fit(tmp_path / "speculation", cluster, conf, blobs) as run:
        run.paused()
        run.wait_for("two second attempts standing by",
                     lambda: len(run.lines(r"a second attempt for partition \d .*stands by")) >= 2)
        run.resume()
        result = run.result()
    standing = [int(re.search(r"partition (\d)", line).group(1))
                for _, line in run.lines("a second attempt for partition")]
    assert sorted(standing) == [0, 1]
    starts = [e["Task Info"] for e in spark_events(run.base / "events")
              if e["Event"] == "SparkListenerTaskStart"]
    first = {t["Index"]: t["Host"] for t in starts if not t["Speculative"]}
    copies = {t["Index"]: t["Host"] for t in starts if t["Speculative"]}
    assert sorted(copies) == [0, 1] and len(starts) == 4, starts
    assert all(copies[i] != first[i] for i in copies), (first, copies)
    assert result["parked"] == 2
    assert_resident_lloyd(result, lloyd, reconnects=0)
    print(f"\nspeculation: 2 speculative attempts stood by; fit "
          f"{time.perf_counter() - started:.1f} s")


@pytest.mark.cluster
def test_a_frozen_host_is_noticed_within_the_loss_timeout(tmp_path, cluster, blobs, lloyd):
    """Partition 0's whole host frozen between iterations 1 and 2: its Worker daemon, executor
    JVM and Python workers SIGSTOPped, so no socket closes and nothing answers. The driver
    counts the task lost LOSS_TIMEOUT (20 s) after its request (the freeze came before it).
    Spark declares the executor lost spark.network.timeout after its last heartbeat (25 s here,
    so after the driver gave the partition up; 120 s by default) and retries the task on the
    other host, which reconnects within the reconnect bound (the larger of RECONNECT_TIMEOUT,
    60 s, and spark.network.timeout + 30 s; the retry comes about 5 s after the loss). Else the
    fit would fall back to one Spark job per iteration then: either way, LOSS_TIMEOUT + that
    bound bounds the wait."""
    conf = {**STATIC, "spark.network.timeout": "25s", "spark.network.timeoutInterval": "1s",
            "spark.executor.heartbeatInterval": "2s"}
    started = time.perf_counter()
    frozen: list[int] = []
    try:
        with fit(tmp_path / "frozen", cluster, conf, blobs) as run:
            pid = run.paused()[0]
            jvm = ancestor(pid, EXECUTOR)
            frozen = freeze(ancestor(jvm, WORKER))
            frozen_at = time.time()
            assert {pid, jvm} <= set(frozen), (pid, jvm, frozen)
            run.resume()
            result = run.result()
    finally:
        thaw(frozen)
    lost = run.lines(r"^lost \d+ resident task")
    assert len(lost) == 1, lost
    assert lost[0][1].startswith("lost 1 resident task(s): partition 0: no word from the task "
                                 f"in {LOSS_TIMEOUT:.0f}s"), lost
    detected = lost[0][0] - frozen_at
    # the request goes out within the driver's 0.05 s poll of the pause, then LOSS_TIMEOUT
    # runs; up to 5 s more on a loaded 2-core machine
    assert LOSS_TIMEOUT <= detected <= LOSS_TIMEOUT + 5, detected
    assert run.lines("^hello from partition 0 attempt 1$"), run.lines("^hello")
    assert_resident_lloyd(result, lloyd, reconnects=1)
    back = run.when(r"^iteration 2: ")
    print(f"\nfrozen host: {len(frozen)} processes stopped; loss noticed {detected:.1f} s after "
          f"the freeze (LOSS_TIMEOUT {LOSS_TIMEOUT:.0f} s), the retry served iteration 2 "
          f"{back - lost[0][0]:.1f} s later (RECONNECT_TIMEOUT {RECONNECT_TIMEOUT:.0f} s); fit "
          f"{time.perf_counter() - started:.1f} s")
