"""DataFrame -> validated feature blocks, the form every transport iterates over.

Rows are packed once, inside Spark, by ``mapInArrow`` into binary blocks (raw float64 bytes of up
to ``block_rows`` rows per output row; float32 bytes with ``dtype="float32"``, the squared norms
and weights still float64), so no Python object per row is ever made. Rows with a null,
NaN or infinite feature, a bad weight, or (cosine) a zero vector are dropped while packing and
counted by reason with one example; the estimator turns those counts into a clear error, or
(``invalid="skip"``) fits on the rest and records the counts.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from kmeans_dist import kernels
from kmeans_dist.blocks import Block, problems_from_json
from kmeans_dist.errors import UserError

NUMERIC_TYPES = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType,
                 T.DecimalType)

#: target bytes of feature data per block when ``block_rows`` is not given
BLOCK_BYTES = 4 << 20

#: the type features are cast to: a DataType, not the string "double", whose first parse starts
#: Spark's SQL parser in the JVM (~0.4 s of a session's first fit)
DOUBLE = T.DoubleType()

BLOCK_SCHEMA = "part int, start long, rows long, x binary, x_sq binary, w binary, problems string"

BAD_FEATURE = "null, NaN or infinite feature value"
BAD_WEIGHT = "negative, null, NaN or infinite weight"
ZERO_ROW = "zero vector (cosine distance needs a non-zero row)"
FLOAT32_RANGE = "feature value beyond float32's range (dtype='float32')"


def dropped_counts(problems: dict[str, tuple[int, dict]]) -> dict[str, int]:
    """{reason: rows dropped} from the packer's {reason: (count, example row)}."""
    return {reason: int(count) for reason, (count, _) in problems.items()}


def describe_dropped(dropped: dict[str, int]) -> str:
    """'5 dropped: 3 with a <reason>; 2 with a <reason>', for messages and summaries."""
    reasons = "; ".join(f"{n} with a {reason}" for reason, n in dropped.items())
    return f"{sum(dropped.values())} dropped: {reasons}"


def column(name: str):
    """The column named ``name`` exactly, even when the name holds dots or backticks (which
    ``F.col`` would read as a struct field or a quoting error)."""
    return F.col("`" + name.replace("`", "``") + "`")


def is_numeric(dtype: T.DataType) -> bool:
    return isinstance(dtype, NUMERIC_TYPES)


def resolve_features(
    df: DataFrame, features: Sequence[str] | None, weight_col: str | None = None
) -> list[str]:
    """The feature columns to use: given ones checked, else every numeric column but the weight."""
    types = {f.name: f.dataType for f in df.schema.fields}
    if weight_col is not None:
        _check_numeric(types, weight_col, "weight column")
    if features is None:
        chosen = [n for n, t in types.items() if is_numeric(t) and n != weight_col]
        if not chosen:
            raise UserError(
                f"no numeric columns to cluster; columns are {sorted(types)}"
            )
        return chosen
    chosen = list(features)
    if not chosen:
        raise UserError("features is empty: name at least one column")
    dupes = sorted({c for c in chosen if chosen.count(c) > 1})
    if dupes:
        raise UserError(f"feature columns listed twice: {dupes}")
    for c in chosen:
        _check_numeric(types, c, "feature column")
    return chosen


def check_model_features(
    df: DataFrame, model_features: Sequence[str], columns: Sequence[str] | None = None
) -> list[str]:
    """The input columns holding a model's features (default: the same names), all checked:
    every missing one is named at once, then any that is not numeric."""
    columns = list(model_features if columns is None else columns)
    if len(columns) != len(model_features):
        raise UserError(f"{len(columns)} feature columns given, but the model has "
                        f"{len(model_features)} features ({', '.join(model_features)})")
    types = {f.name: f.dataType for f in df.schema.fields}
    missing = [c for c in columns if c not in types]
    if missing:
        raise UserError(f"model features missing from the input: {', '.join(missing)}; "
                        f"columns are {sorted(types)}")
    for c in columns:
        _check_numeric(types, c, "feature column")
    return columns


def _check_numeric(types: dict, name: str, what: str) -> None:
    if name not in types:
        raise UserError(f"{what} '{name}' not found; columns are {sorted(types)}")
    if not is_numeric(types[name]):
        raise UserError(
            f"{what} '{name}' is not numeric (type {types[name].simpleString()})"
        )


def default_block_rows(d: int, itemsize: int = 8) -> int:
    return max(1024, BLOCK_BYTES // (itemsize * max(d, 1)))


@dataclass(frozen=True)
class Packing:
    """The validated feature rows of a fit and the function that packs them into blocks: kept
    apart so a transport can pack inside its own task (one hop from the JVM, not two)."""

    rows: DataFrame
    packer: Packer

    @property
    def frame(self) -> DataFrame:
        """The block frame: one row per block (see BLOCK_SCHEMA)."""
        return self.rows.mapInArrow(self.packer, BLOCK_SCHEMA)


def packing(
    df: DataFrame,
    features: Sequence[str],
    *,
    weight_col: str | None = None,
    block_rows: int | None = None,
    cosine: bool = False,
    num_partitions: int | None = None,
    dtype: str = "float64",
) -> Packing:
    """The feature columns of ``df`` as doubles, and their packer (see ``Packing``); ``dtype``:
    the blocks' features' (``kernels.DTYPES``)."""
    cols = [column(c).cast(DOUBLE).alias(f"f{i}") for i, c in enumerate(features)]
    if weight_col is not None:
        cols.append(column(weight_col).cast(DOUBLE).alias("w"))
    selected = df.select(*cols)
    if num_partitions is not None:  # never more partitions than the input has: no shuffle
        selected = selected.coalesce(num_partitions)
    rows = block_rows or default_block_rows(len(features), np.dtype(dtype).itemsize)
    return Packing(selected, Packer(list(features), weight_col, rows, cosine, dtype))


def block_frame(df: DataFrame, features: Sequence[str], **options) -> DataFrame:
    """A DataFrame with one row per block of validated features (see BLOCK_SCHEMA); ``options``
    as for ``packing``."""
    return packing(df, features, **options).frame


def block_rdd(frame: DataFrame, d: int):
    """The block frame as an RDD of ``Block`` (one Python object per block, not per row)."""
    return frame.rdd.map(functools.partial(decode, d=d))


def decode(row, d: int) -> Block:
    """One Row of the block frame -> Block (arrays are views on the row's bytes)."""
    return decode_fields(d, row.part, row.start, row.rows, row.x, row.x_sq, row.w, row.problems)


def decode_fields(d: int, part: int, start: int, rows: int, x, x_sq, w,
                  problems: str) -> Block:
    """A block from the fields of BLOCK_SCHEMA; ``x``, ``x_sq``, ``w`` are any buffers (bytes,
    Arrow buffers), viewed without a copy. The features' dtype is told by their size: 8 bytes a
    value float64, 4 float32."""
    return Block(int(part), int(start),
                 np.frombuffer(x, dtype=_feature_dtype(x, int(rows) * d)).reshape(int(rows), d),
                 np.frombuffer(x_sq, dtype=np.float64),
                 None if w is None else np.frombuffer(w, dtype=np.float64),
                 problems_from_json(problems))


def _feature_dtype(buffer, values: int) -> type:
    """float64 or float32: the dtype a features buffer of ``values`` values was written in."""
    nbytes = memoryview(buffer).nbytes
    return np.float32 if values and nbytes == 4 * values else np.float64


class Packer:
    """Packs one partition's rows into blocks: as a mapInArrow function (binary blocks, see
    BLOCK_SCHEMA), or straight into ``Block``s inside a task of its own (``blocks``).
    ``dtype``: the blocks' features' (rows are validated in float64, then rounded to it once);
    the squared norms (computed from the rounded rows) and the weights stay float64."""

    def __init__(self, features: list[str], weight_col: str | None, block_rows: int, cosine: bool,
                 dtype: str = "float64"):
        self.features = features
        self.weight_col = weight_col
        self.block_rows = block_rows
        self.cosine = cosine
        self.dtype = np.dtype(dtype).name

    def __call__(self, batches: Iterator) -> Iterator:
        """Arrow batches of one partition -> one row of BLOCK_SCHEMA per block."""
        for block in self.blocks(batches):
            yield _encode(block)

    def blocks(self, batches: Iterator, part: int | None = None) -> Iterator[Block]:
        """Arrow batches of one partition -> its blocks of ``block_rows`` valid rows (the last
        one fewer); the rows dropped since the previous block are counted in the next one. Rows
        are copied once, from the validated batch into the block. ``part``: the partition's
        index (default: the running Spark task's)."""
        if part is None:
            from pyspark import TaskContext

            part = TaskContext.get().partitionId()
        size, d = self.block_rows, len(self.features)
        weighted = self.weight_col is not None
        start = fill = 0
        bx, bw = np.empty((size, d), self.dtype), (np.empty(size) if weighted else None)
        problems: dict[str, list] = {}
        for batch in batches:
            x, w = self._valid(batch, problems)
            pos = 0
            while pos < x.shape[0]:
                take = min(size - fill, x.shape[0] - pos)
                bx[fill:fill + take] = x[pos:pos + take]
                if weighted:
                    bw[fill:fill + take] = w[pos:pos + take]
                fill, pos = fill + take, pos + take
                if fill == size:
                    yield _block(part, start, bx, bw, problems)
                    start, fill, problems = start + size, 0, {}
                    bx, bw = np.empty((size, d), self.dtype), (np.empty(size) if weighted else None)
        if fill or problems:
            yield _block(part, start, bx[:fill], None if bw is None else bw[:fill], problems)

    def _valid(self, batch, problems: dict) -> tuple[np.ndarray, np.ndarray | None]:
        """A batch's rows (float64, rows x d) and weights; invalid rows dropped and noted."""
        d = len(self.features)
        x = np.empty((batch.num_rows, d))
        for j in range(d):
            x[:, j] = batch.column(j).to_numpy(zero_copy_only=False)
        w = None
        if self.weight_col is not None:
            w = batch.column(d).to_numpy(zero_copy_only=False).astype(np.float64)
        keep = self._valid_rows(x, w, problems, batch)
        if not keep.all():
            x, w = x[keep], (None if w is None else w[keep])
        if self.cosine:
            x = kernels.normalize_rows(x)
        return x, w

    def _valid_rows(self, x: np.ndarray, w: np.ndarray | None, problems: dict,
                    batch) -> np.ndarray:
        keep = np.isfinite(x).all(axis=1)
        self._note(problems, BAD_FEATURE, ~keep, batch)
        if w is not None:
            bad_w = keep & ~(np.isfinite(w) & (w >= 0))
            self._note(problems, BAD_WEIGHT, bad_w, batch)
            keep &= ~bad_w
        if self.cosine:
            zero = keep & ~np.any(x != 0, axis=1)
            self._note(problems, ZERO_ROW, zero, batch)
            keep &= ~zero
        if self.dtype != "float64" and not self.cosine:  # (unit rows always fit)
            # a finite double the narrower type rounds to infinity
            with np.errstate(over="ignore"):
                big = keep & ~np.isfinite(x.astype(self.dtype)).all(axis=1)
            self._note(problems, FLOAT32_RANGE, big, batch)
            keep &= ~big
        return keep

    def _note(self, problems: dict, reason: str, bad: np.ndarray, batch) -> None:
        """Count the ``bad`` rows under ``reason``; the first one seen is kept as the example
        (read from the Arrow batch, where a null is still distinguishable from NaN)."""
        count = int(np.count_nonzero(bad))
        if not count:
            return
        if reason in problems:
            problems[reason][0] += count
            return
        i = int(np.flatnonzero(bad)[0])
        names = self.features + ([] if self.weight_col is None else [self.weight_col])
        problems[reason] = [count, {c: _json_value(batch.column(j)[i].as_py())
                                    for j, c in enumerate(names)}]


def _block(part: int, start: int, x: np.ndarray, w: np.ndarray | None, problems: dict) -> Block:
    """A packed block, its squared norms computed once here, its problems as ``Block`` holds
    them (what ``problems_from_json`` gives back from the block frame)."""
    return Block(part, start, x, kernels.squared_norms(x), w,
                 {reason: (count, example) for reason, (count, example) in problems.items()})


def _encode(b: Block):
    """A block as one row of BLOCK_SCHEMA (an Arrow record batch)."""
    import pyarrow as pa

    return pa.RecordBatch.from_pydict(
        {
            "part": pa.array([b.part], pa.int32()),
            "start": pa.array([b.start], pa.int64()),
            "rows": pa.array([b.rows], pa.int64()),
            "x": pa.array([b.x.tobytes()], pa.binary()),
            "x_sq": pa.array([b.x_sq.tobytes()], pa.binary()),
            "w": pa.array([None if b.w is None else b.w.tobytes()], pa.binary()),
            "problems": pa.array([json.dumps(b.problems)], pa.string()),
        }
    )


def _json_value(v: float | None) -> float | str | None:
    """A value for an error message: None for null, a string for NaN and the infinities."""
    if v is None:
        return None
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return float(v)
