"""The blocks one resident task holds between passes: in its worker's memory, or in files.

A resident task packs its partition once and answers every pass of the fit from what it holds.
Within its memory budget (``budget.py``) it holds the blocks in the Python worker's heap, the
fastest form. Once the rows it has packed would go over the budget, it writes every block it holds
and every later one to executor-local ``.npy`` files (``local_files``) and from then on maps them
block by block on each pass: the data then lives in the page cache, which the kernel reclaims
under memory pressure instead of killing the container, and the worker's heap and address space
hold one block at a time. Either way each pass sees the same blocks in the same order, so results
are identical.
"""

from __future__ import annotations

import glob
import os
from typing import Iterator

from kmeans_dist import tasks
from kmeans_dist.blocks import Block
from kmeans_dist.transport.local_files import _root, _store, mapped, touch

#: where a task's blocks live
MEMORY, FILES = "memory", "files"
#: storage choices: the budget decides ("auto"), or always one of the two
STORAGES = ("auto", MEMORY, FILES)


class Held:
    """A resident task's blocks, in packing order.

    ``storage``: "auto" (memory while ``rows x row_bytes`` stays within ``budget`` bytes less
    what the worker process already holds, files after), "memory" or "files". Iterating gives
    the blocks (files mapped lazily, one at a time), and can be done once per pass.
    """

    def __init__(self, token: str, part: int, storage: str, budget: int, row_bytes: int,
                 state_bytes: int = 0) -> None:
        if storage not in STORAGES:
            raise ValueError(f"unknown block storage '{storage}'; use one of {STORAGES}")
        self.token, self.part = token, part
        # what the worker takes anyway (interpreter, numpy, pyarrow, the compiled loop) comes
        # off the budget
        self.budget, self.row_bytes = max(0, budget - worker_baseline()), row_bytes
        self.state_bytes = state_bytes  # of row_bytes, what the label cache holds per row
        self.storage = FILES if storage == FILES else MEMORY
        self.forced = storage != "auto"
        self.rows = 0
        self._blocks: list[Block] = []
        self._handles: list[dict] = []

    @property
    def bytes(self) -> int:
        """What these rows take held in memory (features, norms, weights, labels)."""
        return self.rows * self.row_bytes

    @property
    def block_bytes(self) -> int:
        """Of ``bytes``, the blocks' own (features, norms, weights): the rest is what the label
        cache keeps per row between passes."""
        return self.rows * (self.row_bytes - self.state_bytes)

    def add(self, block: Block) -> None:
        self.rows += block.rows
        if self.storage == MEMORY and not self.forced and self.bytes > self.budget:
            self._spill()
        if self.storage == FILES:
            self._handles += _store(self.token, [block])
        else:
            self._blocks.append(block)

    def _spill(self) -> None:
        """Over the budget: the blocks held so far go to files, and so will the rest."""
        self._handles = _store(self.token, self._blocks)
        self._blocks = []
        self.storage = FILES

    def __iter__(self) -> Iterator[Block]:
        if self.storage == MEMORY:
            return iter(self._blocks)
        touch(self.token)
        return (mapped(self.token, h) for h in self._handles)

    def report(self) -> dict:
        """What the driver logs and records: rows, bytes they would take in memory, storage
        (and the files' directory)."""
        report = {"rows": self.rows, "bytes": self.bytes, "storage": self.storage,
                  "budget": self.budget, "block_bytes": self.block_bytes}
        if self.storage == FILES:
            report["dir"] = _root(self.token)
        return report

    def label_room(self) -> int:
        """Bytes left in the budget for the in-memory label cache (blocks held in memory)."""
        return max(0, self.budget - self.block_bytes)

    def release(self) -> None:
        """Remove this partition's files (and their label files)."""
        if self.storage == FILES:
            for path in glob.glob(os.path.join(glob.escape(_root(self.token)), f"p{self.part}-*")):
                try:
                    os.remove(path)
                except FileNotFoundError:
                    pass
            try:
                os.rmdir(_root(self.token))  # the last partition here takes the directory
            except OSError:
                pass
        self._blocks, self._handles = [], []


def limit_label_cache(held: Held) -> int:
    """Blocks in memory keep their labels in the worker's label cache: keep it within the
    budget (an evicted entry is recomputed, with the same labels). Returns the old limit."""
    old = tasks.LABELS.max_bytes
    if held.storage == MEMORY and not held.forced:
        tasks.LABELS.max_bytes = min(old, held.label_room())
    return old


#: what loading the fused loop adds to a worker (numba's LLVM and the compiled code): 136 MiB
#: measured on these machines, on top of the ~95 MiB of an interpreter with numpy and pyarrow
KERNEL_RUNTIME = 140 << 20


def worker_baseline() -> int:
    """Bytes this worker holds whatever the data: what it holds now, plus the compiled loop it
    loads beside the packing."""
    return worker_rss() + KERNEL_RUNTIME


def worker_rss() -> int:
    """Resident bytes of this process now (0 where /proc does not say)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
