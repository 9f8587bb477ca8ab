"""Files through Spark's Hadoop FileSystem (local paths, hdfs://, s3a://, ...), or pyarrow's on
Spark Connect, written atomically.

Outputs are built in a hidden staging directory beside the target and renamed into place only when
complete, so a failed run leaves nothing half-written and never touches the user's existing data
unless ``overwrite`` was asked for.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from contextlib import contextmanager
from typing import Iterator
from urllib.parse import urlparse

from pyspark.sql import DataFrame, SparkSession

from kmeans_dist.cli import first_line
from kmeans_dist.config import is_connect
from kmeans_dist.errors import MissingInput, UserError

FORMATS = ("csv", "parquet")
#: the marker a complete output directory carries (as Hadoop's committers write)
SUCCESS = "_SUCCESS"


def _session() -> SparkSession:
    spark = SparkSession.getActiveSession()
    if spark is None:
        raise RuntimeError("no active SparkSession: create one first (kmeans_dist.get_session())")
    return spark


class _HadoopFS:
    """Classic Spark: the driver JVM's Hadoop FileSystem (local, hdfs://, s3a://, ...)."""

    def __init__(self, spark: SparkSession) -> None:
        self.jvm = spark.sparkContext._jvm
        self.conf = spark.sparkContext._jsc.hadoopConfiguration()
        # looked up once: each step of a py4j package path is a round trip to the JVM
        self.Path = self.jvm.org.apache.hadoop.fs.Path
        self.IOUtils = self.jvm.org.apache.commons.io.IOUtils

    def _fs(self, path: str):
        jpath = self.Path(path)
        return jpath.getFileSystem(self.conf), jpath

    def kind(self, path: str) -> str | None:
        fs, p = self._fs(path)
        if not fs.exists(p):
            return None
        return "dir" if fs.getFileStatus(p).isDirectory() else "file"

    def parent(self, path: str) -> str | None:
        """The parent directory, None at the top (a relative path's top has an empty parent)."""
        parent = self.Path(path).getParent()
        return None if parent is None or not parent.toString() else parent.toString()

    def child(self, parent: str | None, name: str) -> str:
        return self.Path(self.Path(parent or "."), name).toString()

    def mkdirs(self, path: str) -> None:
        fs, p = self._fs(path)
        if not fs.mkdirs(p):
            raise OSError(f"could not create {path}")

    def delete(self, path: str) -> None:
        fs, p = self._fs(path)
        fs.delete(p, True)

    def rename(self, src: str, dst: str) -> bool:
        fs, p = self._fs(src)
        return bool(fs.rename(p, self._fs(dst)[1]))

    def read(self, path: str) -> bytes:
        fs, p = self._fs(path)
        stream = fs.open(p)
        try:
            return bytes(self.IOUtils.toByteArray(stream))
        finally:
            stream.close()

    def write(self, path: str, data: bytes) -> None:
        fs, p = self._fs(path)
        out = fs.create(p, True)
        try:
            out.write(bytearray(data))
        finally:
            out.close()


class _ArrowFS:
    """Spark Connect: no JVM here, so files go through pyarrow's filesystems (local paths,
    file://, s3://, gs://, hdfs:// with libhdfs) from this process. Outputs must be on storage the
    Connect server sees too (the same machine, or a shared store), since it writes the Parquet."""

    @staticmethod
    def _split(path: str) -> tuple[str, str]:
        """(scheme://authority prefix or "", path inside that filesystem)."""
        parsed = urlparse(path)
        if parsed.scheme in ("", "file"):
            return ("file://" if parsed.scheme else ""), os.path.abspath(parsed.path or path)
        return f"{parsed.scheme}://{parsed.netloc}", parsed.path or "/"

    def _fs(self, path: str):
        from pyarrow import fs

        prefix, inner = self._split(path)
        if not prefix or prefix == "file://":
            return fs.LocalFileSystem(), inner
        try:
            return fs.FileSystem.from_uri(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds
            raise UserError(f"cannot open {path} from this Spark Connect client: "
                            f"{first_line(exc)}") from None

    def kind(self, path: str) -> str | None:
        from pyarrow import fs

        filesystem, inner = self._fs(path)
        info = filesystem.get_file_info(inner)
        return {fs.FileType.File: "file", fs.FileType.Directory: "dir"}.get(info.type)

    def parent(self, path: str) -> str | None:
        prefix, inner = self._split(path)
        up = posixpath.dirname(inner.rstrip("/"))
        return None if up == inner.rstrip("/") or not up else prefix + up

    def child(self, parent: str | None, name: str) -> str:
        prefix, inner = self._split(parent or ".")
        return prefix + posixpath.join(inner, name)

    def mkdirs(self, path: str) -> None:
        filesystem, inner = self._fs(path)
        filesystem.create_dir(inner, recursive=True)

    def delete(self, path: str) -> None:
        kind = self.kind(path)
        filesystem, inner = self._fs(path)
        if kind == "dir":
            filesystem.delete_dir(inner)
        elif kind == "file":
            filesystem.delete_file(inner)

    def rename(self, src: str, dst: str) -> bool:
        filesystem, inner = self._fs(src)
        filesystem.move(inner, self._fs(dst)[1])
        return True

    def read(self, path: str) -> bytes:
        filesystem, inner = self._fs(path)
        with filesystem.open_input_stream(inner) as f:
            return f.read()

    def write(self, path: str, data: bytes) -> None:
        filesystem, inner = self._fs(path)
        with filesystem.open_output_stream(inner) as f:
            f.write(data)


#: the last classic session's filesystem access, reused while that SparkContext lives
_hadoop: tuple = (None, None)


def _fs() -> _HadoopFS | _ArrowFS:
    """The filesystem access of the active session: Hadoop's on classic Spark, pyarrow's on
    Spark Connect (and, for local paths, when no session is running)."""
    global _hadoop
    spark = SparkSession.getActiveSession()
    if spark is None or is_connect(spark):
        return _ArrowFS()
    sc = spark.sparkContext
    if _hadoop[0] is not sc:
        _hadoop = (sc, _HadoopFS(spark))
    return _hadoop[1]


def exists(path: str) -> bool:
    return _fs().kind(path) is not None


def delete(path: str) -> None:
    _fs().delete(path)


def read_text(path: str, what: str = "file") -> str:
    """A whole (small) file as UTF-8 text; MissingInput naming ``what`` if it is missing."""
    fs = _fs()
    if fs.kind(path) != "file":
        raise MissingInput(f"{what} not found: {path}")
    return fs.read(path).decode("utf-8")


def write_bytes(path: str, data: bytes) -> None:
    """Write a small file: to a hidden temporary name beside it first, then renamed over
    ``path`` (parents are created)."""
    fs = _fs()
    parent = fs.parent(path)
    if parent is not None and fs.kind(parent) is None:
        fs.mkdirs(parent)
    name = path.rstrip("/").rsplit("/", 1)[-1]
    tmp = fs.child(parent, f".{name}.{uuid.uuid4().hex}.tmp")
    fs.write(tmp, data)
    if fs.kind(path) is not None:
        fs.delete(path)
    if not fs.rename(tmp, path):
        fs.delete(tmp)
        raise OSError(f"could not write {path}")


def write_text(path: str, text: str) -> None:
    """Write a small UTF-8 text file atomically (see ``write_bytes``)."""
    write_bytes(path, text.encode("utf-8"))


def check_output_dir(path: str, overwrite: bool) -> None:
    """Refuse, before any work, an existing output directory unless ``overwrite``, and one that
    cannot be created because the nearest existing parent is a file."""
    fs = _fs()
    if fs.kind(path) is not None and not overwrite:
        raise UserError(f"output directory {path} already exists (pass --overwrite to replace it)")
    parent = fs.parent(path)
    while parent is not None and fs.kind(parent) is None:
        parent = fs.parent(parent)
    if parent is not None and fs.kind(parent) != "dir":
        raise UserError(f"cannot write output directory {path}: {parent} is a file, "
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
    fs = _fs()
    parent = fs.parent(path)
    name = path.rstrip("/").rsplit("/", 1)[-1]
    staging = fs.child(parent, f".{name}.{uuid.uuid4().hex}.staging")
    try:
        fs.mkdirs(staging)
    except Exception as exc:  # noqa: BLE001 - py4j and pyarrow wrap permission errors
        raise UserError(f"cannot write output directory {path}: {_java_reason(exc)}") from None
    try:
        yield staging
        fs.write(fs.child(staging, SUCCESS), b"")
        if fs.kind(path) is not None:
            fs.delete(path)
        if not fs.rename(staging, path):
            raise OSError(f"could not move the finished output into {path}")
    finally:
        if fs.kind(staging) is not None:
            fs.delete(staging)


def table_format(path: str, fmt: str | None) -> str:
    """The input format: as given, else from the extension (a directory defaults to Parquet)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise UserError(f"unknown format '{fmt}'; use one of {', '.join(FORMATS)}")
        return fmt
    ext = os.path.splitext(path.rstrip("/"))[1].lower().lstrip(".")
    return ext if ext in FORMATS else "parquet"


def read_table(path: str, fmt: str | None = None) -> DataFrame:
    """CSV (with a header, types inferred) or Parquet as a DataFrame."""
    fmt = table_format(path, fmt)
    if not exists(path):
        raise MissingInput(f"input not found: {path}")
    reader = _session().read
    if fmt == "csv":
        df = reader.option("header", True).option("inferSchema", True).csv(path)
    else:
        df = reader.parquet(path)
    if df.isEmpty():  # else a header-only CSV would fail later as "column is not numeric"
        raise UserError(f"input {path} has no rows")
    return df
