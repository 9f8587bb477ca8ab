"""BLAS threads inside Spark tasks: as many as the task has CPUs, whatever the worker's environment.

A task's GEMMs would otherwise use every core of the machine while the other task slots do the
same (two 2-thread GEMMs on 2 cores ran 3-4x slower than two 1-thread ones here). Classic Spark
passes ``spark.executorEnv.OMP_NUM_THREADS`` to its Python workers, but a Spark Connect server's
workers do not get it, and a cluster's operator may not have set it; limiting the thread pools at
run time (threadpoolctl, scikit-learn's way) holds everywhere. No Spark import at module level.
"""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from typing import Iterator

_controller = None
#: ``len(sys.modules)`` when ``_controller`` looked for the pools
_modules_seen = 0


def _thread_pools():
    """The process's BLAS/OpenMP pools, looked for again whenever modules were imported since
    the last look: an import can load another BLAS (scipy brings its own OpenBLAS beside
    numpy's), which a controller made before it would leave unlimited. A Python worker imports
    nothing new between passes, so it looks once per fit or so, not once per task."""
    global _controller, _modules_seen
    if _controller is None or len(sys.modules) != _modules_seen:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
        _modules_seen = len(sys.modules)
    return _controller


@contextmanager
def task_blas_threads() -> Iterator[None]:
    """BLAS limited to the running Spark task's CPUs (``spark.task.cpus``); no limit outside a
    task (on the driver)."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is None:
        yield
        return
    with blas_threads(max(1, ctx.cpus())):
        yield


@contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """BLAS limited to ``n`` threads while inside (the limit holds for the whole process)."""
    with _thread_pools().limit(limits=n, user_api="blas"):
        yield


class HeldLimit:
    """BLAS limited to ``n`` threads from ``hold`` until the last holder lets go (the driver
    transport holds it for a whole fit: setting OpenBLAS's thread count once its threads exist
    costs milliseconds, too much for every pass of a small fit). Holders share one limit, so
    fits running side by side in threads never restore the count under each other."""

    _lock = threading.Lock()
    _holders = 0
    _limit = None

    @classmethod
    def hold(cls, n: int) -> None:
        with cls._lock:
            if cls._holders == 0:
                cls._limit = _thread_pools().limit(limits=n, user_api="blas")
            cls._holders += 1

    @classmethod
    def let_go(cls) -> None:
        with cls._lock:
            cls._holders -= 1
            if cls._holders == 0 and cls._limit is not None:
                cls._limit.restore_original_limits()
                cls._limit = None
