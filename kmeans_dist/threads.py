"""BLAS threads inside Spark tasks: as many as the task has CPUs, whatever the worker's environment.

A task's GEMMs would otherwise use every core of the machine while the other task slots do the
same (two 2-thread GEMMs on 2 cores ran 3-4x slower than two 1-thread ones here). Classic Spark
passes ``spark.executorEnv.OMP_NUM_THREADS`` to its Python workers, but a Spark Connect server's
workers do not get it, and a cluster's operator may not have set it; limiting the thread pools at
run time (threadpoolctl, scikit-learn's way) holds everywhere. No Spark import at module level.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

_controller = None


def _thread_pools():
    """The process's BLAS/OpenMP pools, found once per Python worker."""
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
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
