"""What the benchmark records besides wall time: driver memory, Spark's cache, log lines, the machine.

Memory of the Python driver is its peak resident set size (VmHWM, i.e. ``ru_maxrss``), reset
before each measured phase through ``/proc/self/clear_refs`` (Linux) so each phase gets its own
peak. The JVM
(driver and, in local mode, executor too) is sampled from a background thread: heap in use and the
bytes Spark reports for cached RDDs.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import re
import resource
import subprocess
import sys
import threading
import time
from typing import Any, Sequence

#: JVM loggers whose INFO lines give pyspark.ml / MLlib's own init and iteration times
SPARK_KMEANS_LOGGERS = ("org.apache.spark.mllib.clustering.KMeans", "org.apache.spark.ml")

_SPARK_TIME = r"([\d.]+) (ms|seconds)"
_SPARK_INIT = re.compile(r"Initialization with \S+ took " + _SPARK_TIME)
_SPARK_ITERS = re.compile(r"Iterations took " + _SPARK_TIME)
_OURS_INIT = re.compile(r"init \S+: \d+ centroids in ([\d.]+)s")


# --------------------------------------------------------------------------- Python driver memory
def reset_peak_rss() -> bool:
    """Start a new peak for this process's RSS; False where the OS does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """Peak resident bytes of this Python process since the last reset.

    Linux: VmHWM, the counter behind ``ru_maxrss`` without what ``ru_maxrss`` carries over from
    before exec (a child started by a big parent would otherwise report the parent's size).
    Elsewhere: ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status") as fh:
            return next(int(ln.split()[1]) * 1024 for ln in fh if ln.startswith("VmHWM:"))
    except (OSError, StopIteration):
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kb if sys.platform == "darwin" else kb * 1024


def current_rss() -> int:
    """Resident bytes of this Python process now (Linux; else the peak)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss()


# --------------------------------------------------------------------------- JVM and Spark's cache
def storage(sc) -> dict[int, dict]:
    """Cached RDDs as Spark's storage status reports them: id -> name, memory and disk bytes
    (none without a SparkContext: a Spark Connect client cannot ask)."""
    if sc is None:
        return {}
    return {
        int(i.id()): {"name": str(i.name())[:80], "mem": int(i.memSize()), "disk": int(i.diskSize())}
        for i in sc._jsc.sc().getRDDStorageInfo()
    }


def new_storage(sc, before: dict[int, dict]) -> dict[str, int] | None:
    """Memory and disk bytes of RDDs cached since ``before`` was taken (None without ``sc``)."""
    if sc is None:
        return None
    added = [v for i, v in storage(sc).items() if i not in before]
    return {"mem": sum(v["mem"] for v in added), "disk": sum(v["disk"] for v in added),
            "rdds": len(added)}


def jvm_sample(sc) -> tuple[int, int]:
    """(JVM heap bytes in use, bytes of all cached RDDs in memory) right now."""
    rt = sc._jvm.java.lang.Runtime.getRuntime()
    return int(rt.totalMemory() - rt.freeMemory()), sum(v["mem"] for v in storage(sc).values())


class Phase:
    """Times a block and records the driver's memory while it runs.

    ``memory``: the Python driver's RSS before and its peak during the block; the JVM's heap in
    use and Spark's cached bytes before the block and at their highest sample (every
    ``interval`` s, on a background thread). With ``sc`` None (a Spark Connect client, which has
    no JVM of its own to ask) only the Python side is recorded.
    """

    def __init__(self, sc, interval: float = 0.5) -> None:
        self.sc = sc
        self.interval = interval
        self.seconds = 0.0
        self.memory: dict[str, Any] = {}
        self._samples: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_stopped, daemon=True)

    def _sample(self) -> None:
        if self.sc is not None:
            self._samples.append(jvm_sample(self.sc))

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "Phase":
        self._reset = reset_peak_rss()
        self._rss_before = current_rss()
        self._sample()
        self._thread.start()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._t0
        self._stop.set()
        self._thread.join()
        self._sample()
        self.memory = {"py_rss_before": self._rss_before, "py_rss_peak": peak_rss(),
                       "py_peak_is_per_phase": self._reset, **self._jvm_memory()}

    def _jvm_memory(self) -> dict[str, int]:
        if not self._samples:
            return {}
        heaps, cached = zip(*self._samples)
        return {"jvm_heap_before": heaps[0], "jvm_heap_peak": max(heaps),
                "cache_before": cached[0], "cache_peak": max(cached), "samples": len(heaps)}


# --------------------------------------------------------------------------- log lines
class SparkLog:
    """INFO lines of the given JVM loggers, kept in a StringWriter (not printed) for parsing."""

    def __init__(self, sc, loggers: Sequence[str] = SPARK_KMEANS_LOGGERS) -> None:
        log4j = sc._jvm.org.apache.logging.log4j
        ctx = log4j.LogManager.getContext(False)
        config = ctx.getConfiguration()
        self.writer = sc._jvm.java.io.StringWriter()
        layout = log4j.core.layout.PatternLayout.newBuilder().withPattern("%m%n").build()
        appender = log4j.core.appender.WriterAppender.createAppender(
            layout, None, self.writer, "kmeans-dist-bench", False, True)
        appender.start()
        config.addAppender(appender)
        for name in loggers:
            logger = log4j.core.config.LoggerConfig(name, log4j.Level.INFO, False)
            logger.addAppender(appender, None, None)
            config.addLogger(name, logger)
        ctx.updateLoggers()

    def take(self) -> str:
        """The lines logged since the last call."""
        text = str(self.writer.toString())
        self.writer.getBuffer().setLength(0)
        return text


def spark_kmeans_times(text: str) -> dict[str, float | None]:
    """Init and total iteration seconds from MLlib's "Initialization with ... took" lines."""
    return {"init": _last_seconds(_SPARK_INIT, text), "iterations": _last_seconds(_SPARK_ITERS, text)}


def _last_seconds(pattern: re.Pattern, text: str) -> float | None:
    found = pattern.findall(text)
    if not found:
        return None
    value, unit = found[-1]
    return float(value) / (1000.0 if unit == "ms" else 1.0)


class PyLog(logging.Handler):
    """Messages of the ``kmeans_dist`` logger, kept for parsing (the init time line)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        logger = logging.getLogger("kmeans_dist")
        logger.setLevel(logging.INFO)
        logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def take(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines


def ours_init_seconds(lines: list[str]) -> float | None:
    """Seconds from the estimator's "init k-means||: k centroids in X s" line."""
    found = [m for m in map(_OURS_INIT.search, lines) if m]
    return float(found[-1].group(1)) if found else None


# --------------------------------------------------------------------------- the machine
def jvm_env(spark) -> dict[str, Any]:
    """Spark and Java versions and which BLAS MLlib's netlib loader picked."""
    from py4j.protocol import Py4JJavaError

    sc = spark.sparkContext
    blas = sc._jvm.dev.ludovic.netlib.blas
    try:
        native, native_error = str(blas.NativeBLAS.getInstance().getClass().getName()), None
    except Py4JJavaError as exc:
        native, native_error = None, str(exc.java_exception.toString())
    return {
        "spark": spark.version,
        "java": str(sc._jvm.java.lang.System.getProperty("java.version")),
        "mllib_blas": str(blas.BLAS.getInstance().getClass().getName()),
        "native_blas": native, "native_blas_error": native_error,
        "parallelism": sc.defaultParallelism,
        "driver_memory": sc.getConf().get("spark.driver.memory"),
    }


def host_env() -> dict[str, Any]:
    """Cores, memory, CPU, OS, library versions, numpy's BLAS, load, and the code's git state."""
    return {
        "cores": os.cpu_count(),
        "memory_bytes": _meminfo_total(),
        "cpu": _cpu_model(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in
                     ("pyspark", "numpy", "scikit-learn", "numba", "pyarrow", "matplotlib")},
        "numpy_blas": _numpy_blas(),
        "threadpools": _threadpools(),
        "load_average": os.getloadavg(),
        "git": _git_state(),
    }


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _meminfo_total() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            return int(fh.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next(ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def _numpy_blas() -> str:
    import numpy as np

    blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    return " ".join(str(blas.get(key, "")) for key in ("name", "version")).strip() or "unknown"


def _threadpools() -> list[str]:
    """The BLAS/OpenMP libraries loaded in this process and their thread counts (threadpoolctl)."""
    try:
        import numpy  # noqa: F401  (load the BLAS)
        import sklearn.cluster  # noqa: F401  (load its OpenMP runtime)
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [f"{i.get('internal_api')} {i.get('version') or ''} ({i.get('num_threads')} threads)"
            for i in threadpool_info()]


def _git_state() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                              capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               text=True, capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}{' with uncommitted changes' if dirty else ''}"
