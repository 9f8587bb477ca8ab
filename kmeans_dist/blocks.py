"""A block of rows: the unit every transport caches and every task iterates over. No Spark."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Block:
    """Up to ``block_rows`` consecutive rows of one partition, ready for the kernels.

    ``part`` and ``start`` locate the rows (partition index, offset of the first row inside the
    partition); they key the block's cached labels and side files. ``problems`` counts rows dropped while packing (see
    data.py), by reason, with one example row for each reason.
    """

    part: int
    start: int
    x: np.ndarray  # (m, d) float64 (or float32: ``KMeans(dtype="float32")``), C-contiguous
    x_sq: np.ndarray  # (m,) float64 squared norms of the rows of x
    w: np.ndarray | None = None  # (m,) non-negative weights, None for unit weights
    problems: dict[str, tuple[int, list]] = field(default_factory=dict)
    #: path prefix for this block's side files (labels) on executor-local disk, when the
    #: transport keeps one (LocalFilesTransport); None keeps them in the worker's memory
    scratch: str | None = None

    @property
    def rows(self) -> int:
        return self.x.shape[0]


def merge_problems(into: dict[str, tuple[int, list]], more: dict[str, tuple[int, list]]) -> None:
    """Add counts of dropped rows per reason, keeping the first example seen."""
    for reason, (count, example) in more.items():
        if reason in into:
            into[reason] = (into[reason][0] + count, into[reason][1])
        else:
            into[reason] = (count, example)


def problems_from_json(text: str) -> dict[str, tuple[int, list]]:
    """``Block.problems`` from its JSON text (as packed into the block frame)."""
    return {k: (v[0], v[1]) for k, v in json.loads(text).items()}
