"""Blocks kept in executor-local files between iterations, read memory-mapped by each task.

Moving a cached partition from the JVM into the Python worker is most of an iteration's cost on
the plain cached-RDD path. Here each partition's blocks are written once, by the task that first
computes it, as ``.npy`` files under the executor's Spark local directory; what Spark caches is a
tiny handle per partition. Spark's locality sends each later task back to the executor holding
that handle, and the task maps the files instead of receiving the data. A task that finds no
files (it ran elsewhere, the files were removed) reports a miss, and the driver recomputes that
partition from the source lineage, which also writes its files where it ran. Files live under
Spark's block-manager directory, so they go when the executor does; ``release`` removes them
sooner, and a fit's first write removes what other fits left more than ``STALE_AFTER`` ago (a
crashed driver's, on an executor that outlives it).
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time
import uuid
from typing import Any, Iterable, Iterator

import numpy as np
from pyspark import RDD, StorageLevel

from kmeans_dist.blocks import Block
from kmeans_dist.transport.base import TaskFn, in_task, job_label


#: a fit's directory untouched for this long is a crashed fit's: the next fit here removes it
STALE_AFTER = 24 * 3600.0


def _top() -> str:
    local = os.environ.get("SPARK_LOCAL_DIRS", "").split(",")[0] or tempfile.gettempdir()
    return os.path.join(local, "kmeans_dist")


def _root(token: str) -> str:
    return os.path.join(_top(), token)


def touch(token: str) -> None:
    """Mark the fit's directory in use (each pass does): a live fit's files are never swept."""
    try:
        os.utime(_root(token))
    except FileNotFoundError:
        pass


_swept: set[str] = set()


def sweep_stale(token: str, now: float | None = None) -> list[str]:
    """Remove the directories of other fits not touched for ``STALE_AFTER`` seconds: what a
    driver or Connect client that crashed mid-fit left (a long-lived executor, or a Connect
    server's, would otherwise fill its disk). Done once per fit and worker; the names removed."""
    if token in _swept:
        return []
    _swept.add(token)
    now = time.time() if now is None else now
    removed = []
    try:
        entries = list(os.scandir(_top()))
    except FileNotFoundError:
        return []
    for entry in entries:
        try:
            stale = (entry.name != token and entry.is_dir(follow_symlinks=False)
                     and now - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER)
        except FileNotFoundError:
            continue
        if stale:
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.name)
    return removed


def _base(token: str, part: int, start: int) -> str:
    return os.path.join(_root(token), f"p{part}-{start}")


def _paths(token: str, part: int, start: int) -> tuple[str, str, str]:
    base = _base(token, part, start)
    return base + ".x.npy", base + ".xsq.npy", base + ".w.npy"


def _store(token: str, blocks: Iterable[Block]) -> list[dict]:
    """Write blocks to local files; return their handles (everything but the arrays).

    Each file is flushed to disk before the next is written: its pages stay in the page cache
    for the passes, but clean, so the kernel can drop them under memory pressure. Dirty pages
    cannot be dropped, and in a memory-limited container (cgroup v1) a partition's worth of
    them gets the executor OOM-killed before the flusher writes them back."""
    os.makedirs(_root(token), exist_ok=True)
    sweep_stale(token)
    handles = []
    for b in blocks:
        px, pxsq, pw = _paths(token, b.part, b.start)
        for path, arr in ((px, b.x), (pxsq, b.x_sq), (pw, b.w)):
            if arr is not None:
                tmp = f"{path}.{uuid.uuid4().hex}.tmp.npy"
                with open(tmp, "wb") as fh:
                    np.save(fh, np.ascontiguousarray(arr))
                    fh.flush()
                    os.fdatasync(fh.fileno())
                os.replace(tmp, path)
        handles.append({"part": b.part, "start": b.start, "has_w": b.w is not None,
                        "problems": b.problems})
    return handles


def store_each(token: str, blocks: Iterable[Block]) -> list[dict]:
    """``_store`` one block at a time as ``blocks`` yields them (a packer's: one block in memory
    at a time, whatever the partition's size); their handles."""
    return [h for b in blocks for h in _store(token, [b])]


def mapped(token: str, h: dict) -> Block:
    """The block of handle ``h`` mapped from this executor's files (FileNotFoundError if not
    here). The mapping goes when the block does: page cache, not the worker's heap."""
    px, pxsq, pw = _paths(token, h["part"], h["start"])
    x = np.asarray(np.load(px, mmap_mode="r"))
    x_sq = np.asarray(np.load(pxsq, mmap_mode="r"))
    w = np.asarray(np.load(pw, mmap_mode="r")) if h["has_w"] else None
    return Block(h["part"], h["start"], x, x_sq, w, h["problems"],
                 scratch=_base(token, h["part"], h["start"]))


def _open(token: str, handles: list[dict]) -> list[Block] | None:
    """Blocks mapped from this executor's files, or None if any file is missing here."""
    touch(token)
    try:
        return [mapped(token, h) for h in handles]
    except FileNotFoundError:
        return None


def _from_files(fn: TaskFn, value: Any, token: str, handles: Iterator[dict]) -> Iterator:
    blocks = _open(token, list(handles))
    yield (False, None) if blocks is None else (True, in_task(fn, blocks, value))


def _from_source(fn: TaskFn, value: Any, token: str, blocks: Iterator[Block]) -> Iterator:
    blocks = list(blocks)
    _store(token, blocks)
    for b in blocks:
        b.scratch = _base(token, b.part, b.start)
    yield in_task(fn, blocks, value)


def _remove(token: str, handles: Iterator[dict]) -> Iterator[int]:
    for _ in handles:
        pass
    shutil.rmtree(_root(token), ignore_errors=True)
    yield 0


class LocalFilesTransport:
    """Iterations over executor-local memory-mapped block files, with a recompute fallback."""

    def __init__(self, rdd: RDD):
        self.source = rdd
        self.token = uuid.uuid4().hex
        self.handles = rdd.mapPartitions(functools.partial(_store, self.token))
        self.handles.persist(StorageLevel.MEMORY_AND_DISK)
        self.num_partitions = rdd.getNumPartitions()
        self.misses = 0

    def run(self, fn: TaskFn, value: Any, label: str | None = None) -> list:
        with job_label(self.source.context, label):
            results = self.handles.mapPartitions(
                functools.partial(_from_files, fn, value, self.token)
            ).collect()
        missed = [i for i, (hit, _) in enumerate(results) if not hit]
        if missed:
            self.misses += len(missed)
            with job_label(self.source.context, label and f"{label} (recomputing lost blocks)"):
                redone = self.source.context.runJob(
                    self.source, functools.partial(_from_source, fn, value, self.token), missed
                )
            for i, r in zip(missed, redone):
                results[i] = (True, r)
        return [r for _, r in results]

    def release(self) -> None:
        try:
            self.handles.mapPartitions(functools.partial(_remove, self.token)).collect()
        finally:
            self.handles.unpersist(blocking=False)
