"""The transport interface the engine and the inits are written against."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Protocol, TypeVar

from kmeans_dist.blocks import Block

R = TypeVar("R")

#: a per-partition task: (that partition's blocks, a small value from the driver) -> result
TaskFn = Callable[[Iterable[Block], Any], R]


class Transport(Protocol):
    """Cached blocks of one fit, and a way to run a task over every partition."""

    num_partitions: int

    def run(self, fn: TaskFn, value: Any) -> list:
        """``fn(blocks, value)`` on every partition; results in partition order."""
        ...

    def release(self) -> None:
        """Drop the cached blocks (and anything kept for them on the executors)."""
        ...
