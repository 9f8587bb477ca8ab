"""How much a resident task may hold in its Python worker's memory: the executor's real budget.

A resident task keeps its partition's blocks between passes. Held in the Python worker's heap they
count against what the cluster manager gives the executor's non-JVM memory: YARN and Kubernetes
kill a container that goes over it (exit 137), and so does a memory cgroup on any host. So before
a task holds its rows in memory it compares what they will take with its share of that memory;
over it, the rows go to executor-local memory-mapped files instead (page cache, which the kernel
reclaims under pressure, never the reason a container is killed). The rule, per task:

- ``spark.executor.pyspark.memory`` when set: Spark gives each Python worker that amount divided
  by the executor's cores (and caps the worker's address space to it);
- else the executor's ``spark.executor.memoryOverhead`` (default: ``memoryOverheadFactor``, 0.10,
  or 0.40 for Python on Kubernetes, times ``spark.executor.memory``, at least
  ``spark.executor.minMemoryOverhead``, 384 MiB) divided by its task slots;
- local mode (driver and tasks in one machine): half the memory the machine has available at the
  start of the fit (``MemAvailable``, or the room left under this process's cgroup limit), divided
  by the task slots.

What a task holds per row: its features (d float64, or d float32 with ``dtype="float32"``), its
squared norm (float64), its weight when weighted (float64), and per model fitted in the same
passes one int32 label and two float64 distance bounds (the label cache of the Lloyd loop).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from kmeans_dist import pruning

MIB = 1 << 20
#: Spark's floor for the executor's overhead memory (spark.executor.minMemoryOverhead)
MIN_OVERHEAD = 384 * MIB
#: the share of the machine's available memory local-mode tasks may hold together
LOCAL_SHARE = 0.5


@dataclass(frozen=True)
class Budget:
    """Bytes one resident task may hold in its Python worker, and where the figure comes from."""

    per_task: int
    source: str  # e.g. "spark.executor.memoryOverhead 384 MiB / 2 task slots"

    def describe(self) -> str:
        return f"{mib(self.per_task)} per task ({self.source})"


def state_bytes(d: int, dtype: str = "float64") -> int:
    """What a resident task keeps per row and model between passes: its label (int32), its two
    distance bounds and its share of the block's per-cluster partials
    (``pruning.bytes_per_row``)."""
    return 4 + pruning.bytes_per_row(d, dtype)


def block_row_bytes(d: int, weighted: bool, dtype: str = "float64") -> int:
    """Bytes of one row in a block: features in ``dtype``, squared norm and weight in float64."""
    return np.dtype(dtype).itemsize * d + 8 + (8 if weighted else 0)


def row_bytes(d: int, weighted: bool, models: int = 1, dtype: str = "float64") -> int:
    """Bytes a resident task holds per row: its block's (``block_row_bytes``), then per model
    what it keeps between passes (``state_bytes``)."""
    return block_row_bytes(d, weighted, dtype) + state_bytes(d, dtype) * models


def mib(n: float) -> str:
    return f"{n / MIB:,.0f} MiB"


def task_budget(conf: dict[str, str], master: str, executor_cores: int | None) -> Budget:
    """The per-task budget for a session whose Spark settings are ``conf`` (see the module
    docstring). ``executor_cores``: task slots per executor when known from the running cluster
    (``spark.executor.cores`` / ``spark.task.cpus`` wins when set)."""
    if master.startswith("local"):
        return _local_budget(master)
    slots = _executor_slots(conf, executor_cores)
    per_slot = f"{slots} task slot{'s' if slots != 1 else ''}"
    pyspark_memory = conf.get("spark.executor.pyspark.memory")
    if pyspark_memory:
        total = size_bytes(pyspark_memory)
        return Budget(total // slots, f"spark.executor.pyspark.memory {mib(total)} / {per_slot}")
    overhead = conf.get("spark.executor.memoryOverhead")
    if overhead:
        total = size_bytes(overhead)
        return Budget(total // slots, f"spark.executor.memoryOverhead {mib(total)} / {per_slot}")
    heap = size_bytes(conf.get("spark.executor.memory", "1g"))
    default_factor = "0.4" if master.startswith("k8s://") else "0.1"
    factor = float(conf.get("spark.executor.memoryOverheadFactor", default_factor))
    floor = size_bytes(conf.get("spark.executor.minMemoryOverhead", "384m"))
    total = max(floor, int(factor * heap))
    return Budget(total // slots,
                  f"default spark.executor.memoryOverhead {mib(total)} "
                  f"(max of {factor:g} x spark.executor.memory and {mib(floor)}) / {per_slot}")


def _executor_slots(conf: dict[str, str], measured: int | None) -> int:
    cpus = max(1, int(conf.get("spark.task.cpus", "1")))
    if "spark.executor.cores" in conf:
        return max(1, int(conf["spark.executor.cores"]) // cpus)
    return max(1, measured or 1)


def _local_budget(master: str) -> Budget:
    slots = local_slots(master)
    available = available_memory()
    return Budget(int(LOCAL_SHARE * available) // slots,
                  f"local mode: {LOCAL_SHARE:g} x {mib(available)} available / {slots} task slots")


def local_slots(master: str) -> int:
    """Task slots of a ``local``, ``local[N]``, ``local[*]`` or ``local[N,F]`` master."""
    import os

    m = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\s*\d+)?\])?", master.strip())
    if m is None or m.group(1) is None:
        return 1
    return (os.cpu_count() or 1) if m.group(1) == "*" else max(1, int(m.group(1)))


def available_memory() -> int:
    """Bytes this process could still use: the kernel's MemAvailable, or less when a memory
    cgroup (v1 or v2) limits this process."""
    available = _meminfo_available()
    room = _cgroup_room()
    return min(available, room) if room is not None else available


def _meminfo_available() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _cgroup_room() -> int | None:
    """Limit minus usage of this process's memory cgroup, or None where there is no limit."""
    try:
        with open("/proc/self/cgroup") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2
            base = f"/sys/fs/cgroup{path}"
            limit, usage = _read(f"{base}/memory.max"), _read(f"{base}/memory.current")
        elif "memory" in controllers.split(","):
            base = f"/sys/fs/cgroup/memory{path}"
            limit = _read(f"{base}/memory.limit_in_bytes")
            usage = _read(f"{base}/memory.usage_in_bytes")
        else:
            continue
        if limit is not None and usage is not None and limit < (1 << 60):
            return max(0, limit - usage)
    return None


def _read(path: str) -> int | None:
    try:
        with open(path) as fh:
            text = fh.read().strip()
    except OSError:
        return None
    return None if text == "max" else int(text)


_UNITS = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def size_bytes(value: str, default_unit: str = "m") -> int:
    """A Spark memory setting ("512m", "2g", "1536" = MiB, "1.5g") in bytes."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([bkmgtp]?)(?:i?b)?\s*", str(value).lower())
    if m is None:
        raise ValueError(f"not a memory size: {value!r}")
    return int(math.floor(float(m.group(1)) * _UNITS[m.group(2) or default_unit]))
