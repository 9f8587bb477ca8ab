"""Files through Spark's Hadoop FileSystem (local paths, hdfs://, s3a://, ...), written atomically.

Outputs are built in a hidden staging directory beside the target and renamed into place only when
complete, so a failed run leaves nothing half-written and never touches the user's existing data
unless ``overwrite`` was asked for.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from typing import Iterator

from pyspark.sql import DataFrame, SparkSession

from kmeans_dist.cli import first_line

FORMATS = ("csv", "parquet")
#: the marker a complete output directory carries (as Hadoop's committers write)
SUCCESS = "_SUCCESS"


def _session() -> SparkSession:
    spark = SparkSession.getActiveSession()
    if spark is None:
        raise RuntimeError("no active SparkSession: create one first (kmeans_dist.get_session())")
    return spark


def _fs_path(path: str):
    spark = _session()
    jvm = spark.sparkContext._jvm
    jpath = jvm.org.apache.hadoop.fs.Path(path)
    return jpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), jpath


def exists(path: str) -> bool:
    fs, p = _fs_path(path)
    return bool(fs.exists(p))


def delete(path: str) -> None:
    fs, p = _fs_path(path)
    fs.delete(p, True)


def read_text(path: str, what: str = "file") -> str:
    """A whole (small) file as UTF-8 text; FileNotFoundError naming ``what`` if it is missing."""
    fs, p = _fs_path(path)
    if not fs.exists(p) or fs.getFileStatus(p).isDirectory():
        raise FileNotFoundError(f"{what} not found: {path}")
    stream = fs.open(p)
    try:
        jvm = _session().sparkContext._jvm
        data = bytes(jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
    finally:
        stream.close()
    return data.decode("utf-8")


def write_text(path: str, text: str) -> None:
    """Write a small text file: to a temporary name first, then renamed over ``path``."""
    fs, p = _fs_path(path)
    jvm = _session().sparkContext._jvm
    tmp = jvm.org.apache.hadoop.fs.Path(p.getParent(), f".{p.getName()}.{uuid.uuid4().hex}.tmp")
    out = fs.create(tmp, True)
    try:
        out.write(bytearray(text.encode("utf-8")))
    finally:
        out.close()
    if fs.exists(p):
        fs.delete(p, False)
    if not fs.rename(tmp, p):
        fs.delete(tmp, False)
        raise OSError(f"could not write {path}")


def check_output_dir(path: str, overwrite: bool) -> None:
    """Refuse, before any work, an existing output directory unless ``overwrite``, and one that
    cannot be created because the nearest existing parent is a file."""
    fs, p = _fs_path(path)
    if fs.exists(p) and not overwrite:
        raise ValueError(f"output directory {path} already exists (pass --overwrite to replace it)")
    parent = p.getParent()
    while parent is not None and not fs.exists(parent):
        parent = parent.getParent()
    if parent is not None and not fs.getFileStatus(parent).isDirectory():
        raise ValueError(f"cannot write output directory {path}: {parent.toString()} is a file, "
                         "not a directory")


def _java_reason(exc: Exception) -> str:
    """What went wrong, in one line: a py4j error's Java exception (its own first line only names
    the failed call), else the error's first line."""
    java = getattr(exc, "java_exception", None)
    return first_line(exc) if java is None else str(java.toString()).strip().splitlines()[0]


@contextmanager
def staged_dir(path: str, overwrite: bool = False) -> Iterator[str]:
    """Yield a staging directory; once the caller is done it gets a ``_SUCCESS`` marker and
    replaces ``path``; on error it is removed and ``path`` is left as it was."""
    check_output_dir(path, overwrite)
    fs, p = _fs_path(path)
    parent = p.getParent()
    if parent is not None and not fs.exists(parent):
        fs.mkdirs(parent)
    jvm = _session().sparkContext._jvm
    staging = jvm.org.apache.hadoop.fs.Path(parent, f".{p.getName()}.{uuid.uuid4().hex}.staging")
    try:
        made = fs.mkdirs(staging)
    except Exception as exc:  # py4j wraps permission errors
        raise ValueError(f"cannot write output directory {path}: {_java_reason(exc)}") from None
    if not made:
        raise ValueError(f"cannot write output directory {path}: could not create "
                         f"{staging.toString()}")
    try:
        yield staging.toString()
        fs.create(jvm.org.apache.hadoop.fs.Path(staging, SUCCESS), True).close()
        if fs.exists(p):
            fs.delete(p, True)
        if not fs.rename(staging, p):
            raise OSError(f"could not move the finished output into {path}")
    finally:
        if fs.exists(staging):
            fs.delete(staging, True)


def table_format(path: str, fmt: str | None) -> str:
    """The input format: as given, else from the extension (a directory defaults to Parquet)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format '{fmt}'; use one of {', '.join(FORMATS)}")
        return fmt
    ext = os.path.splitext(path.rstrip("/"))[1].lower().lstrip(".")
    return ext if ext in FORMATS else "parquet"


def read_table(path: str, fmt: str | None = None) -> DataFrame:
    """CSV (with a header, types inferred) or Parquet as a DataFrame."""
    fmt = table_format(path, fmt)
    if not exists(path):
        raise FileNotFoundError(f"input not found: {path}")
    reader = _session().read
    if fmt == "csv":
        df = reader.option("header", True).option("inferSchema", True).csv(path)
    else:
        df = reader.parquet(path)
    if df.isEmpty():  # else a header-only CSV would fail later as "column is not numeric"
        raise ValueError(f"input {path} has no rows")
    return df
