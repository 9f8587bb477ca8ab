"""Files through Spark's Hadoop FileSystem (local paths, hdfs://, s3a://, ...), or pyarrow's on
Spark Connect.

This module is the filesystem access; how a file or an output directory is committed so that a
crash never leaves a half-written or missing output (by rename, or by manifest on object stores)
is ``kmeans_dist.commit``, which the writers and readers here go through.
"""

from __future__ import annotations

import os
import posixpath
from contextlib import contextmanager
from typing import Iterator
from urllib.parse import urlparse

from pyspark.sql import DataFrame, SparkSession

from kmeans_dist import commit
from kmeans_dist.cli import first_line
from kmeans_dist.config import is_connect
from kmeans_dist.errors import MissingInput, UserError

FORMATS = ("csv", "parquet")
SUCCESS = commit.SUCCESS


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
        self.gateway = spark.sparkContext._gateway

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

    def scheme(self, path: str) -> str:
        return str(self._fs(path)[0].getScheme())

    def names(self, path: str) -> list[str]:
        """The names of a directory's entries."""
        fs, p = self._fs(path)
        return [str(s.getPath().getName()) for s in fs.listStatus(p)]

    def files(self, path: str) -> list[str]:
        """Every file under a directory, as paths relative to it."""
        fs, p = self._fs(path)
        root = str(fs.makeQualified(p).toString()).rstrip("/") + "/"
        found, it = [], fs.listFiles(p, True)
        while it.hasNext():
            name = str(it.next().getPath().toString())
            found.append(name[len(root):] if name.startswith(root) else name)
        return found

    def can_replace(self, path: str) -> bool:
        """Whether a file can be replaced in one step here (not on object stores)."""
        return self.scheme(path) not in commit.OBJECT_STORES

    def replace(self, src: str, dst: str) -> None:
        """Move file ``src`` over ``dst`` in one step: POSIX ``rename(2)`` on the local disk,
        else ``FileContext.rename`` with ``OVERWRITE`` (one atomic NameNode operation on HDFS)."""
        fs, p = self._fs(dst)
        if self.scheme(dst) == "file":
            _replace_local(str(fs.makeQualified(self.Path(src)).toUri().getPath()),
                           str(fs.makeQualified(p).toUri().getPath()))
        else:
            self.rename_overwrite(src, dst)

    def rename_overwrite(self, src: str, dst: str) -> None:
        """``FileContext.rename(src, dst, Options.Rename.OVERWRITE)``: HDFS replaces ``dst`` in
        one NameNode operation (filesystems without their own implementation delete first)."""
        fs, p = self._fs(dst)
        hadoop = self.jvm.org.apache.hadoop.fs
        rename = getattr(hadoop, "Options$Rename")
        context = hadoop.FileContext.getFileContext(fs.getUri(), self.conf)
        overwrite = self.gateway.new_array(rename, 1)
        overwrite[0] = rename.OVERWRITE
        context.rename(fs.makeQualified(self.Path(src)), fs.makeQualified(p), overwrite)

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
        if prefix.startswith(("s3a://", "s3n://")):  # Hadoop's names for what pyarrow calls s3
            path = "s3" + path[3:]
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

    def scheme(self, path: str) -> str:
        return urlparse(path).scheme or "file"

    def _entries(self, path: str, recursive: bool):
        from pyarrow import fs

        filesystem, inner = self._fs(path)
        inner = inner.rstrip("/")
        infos = filesystem.get_file_info(fs.FileSelector(inner, recursive=recursive))
        return [(info.path[len(inner) + 1:], info.type) for info in infos]

    def names(self, path: str) -> list[str]:
        """The names of a directory's entries."""
        return [name for name, _ in self._entries(path, recursive=False)]

    def files(self, path: str) -> list[str]:
        """Every file under a directory, as paths relative to it."""
        from pyarrow import fs

        return [name for name, kind in self._entries(path, recursive=True)
                if kind == fs.FileType.File]

    def can_replace(self, path: str) -> bool:
        """Whether a file can be replaced in one step here (the local disk; not object stores)."""
        from pyarrow import fs

        return isinstance(self._fs(path)[0], fs.LocalFileSystem)

    def replace(self, src: str, dst: str) -> None:
        """Move file ``src`` over ``dst`` in one step (POSIX ``rename(2)``; local files only)."""
        _replace_local(self._fs(src)[1], self._fs(dst)[1])

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
    """A whole (small) file as UTF-8 text; MissingInput naming ``what`` if it is missing.
    A file of a committed output is read where its commit put it (``commit.resolve``)."""
    fs = _fs()
    found = commit.resolve(fs, path)
    if len(found) != 1 or fs.kind(found[0]) != "file":
        raise MissingInput(f"{what} not found: {path}")
    return fs.read(found[0]).decode("utf-8")


def _replace_local(src: str, dst: str) -> None:
    """``os.replace`` (POSIX ``rename(2)``: a reader opens the old file or the new, never
    neither), minding the hidden ``.NAME.crc`` checksum Hadoop's local filesystem keeps beside a
    file it wrote: the old one goes first (a file without one is read unchecked), then the new
    file's follows it."""
    def crc(path: str) -> str:
        head, tail = os.path.split(path)
        return os.path.join(head, f".{tail}.crc")

    if os.path.exists(crc(dst)):
        os.remove(crc(dst))
    os.replace(src, dst)
    if os.path.exists(crc(src)):
        os.replace(crc(src), crc(dst))


def write_bytes(path: str, data: bytes) -> None:
    """Write a small file atomically (``commit.write_small``); parents are created."""
    fs = _fs()
    parent = fs.parent(path)
    if parent is not None and fs.kind(parent) is None:
        fs.mkdirs(parent)
    commit.write_small(fs, path, data)


def write_text(path: str, text: str) -> None:
    """Write a small UTF-8 text file atomically (see ``write_bytes``)."""
    write_bytes(path, text.encode("utf-8"))


def check_output_dir(path: str, overwrite: bool) -> None:
    """Refuse, before any work, an existing output directory unless ``overwrite``, and one that
    cannot be created because the nearest existing parent is a file. What a killed run left
    beside it is cleaned up first (``commit.recover``: an old output it had moved aside is put
    back)."""
    fs = _fs()
    commit.recover(fs, path)
    if commit.exists(fs, path) and not overwrite:
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
    """Yield where the run writes its output files; once the caller is done they are committed
    to ``path`` (``commit.output_dir``: by rename, or by manifest on object stores); on error
    ``path`` is left as it was."""
    check_output_dir(path, overwrite)
    fs = _fs()
    parent = fs.parent(path)
    try:
        if parent is not None:
            fs.mkdirs(parent)
    except Exception as exc:  # noqa: BLE001 - py4j and pyarrow wrap permission errors
        raise UserError(f"cannot write output directory {path}: {_java_reason(exc)}") from None
    with commit.output_dir(fs, path, overwrite) as where:
        yield where


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
    fs = _fs()
    found = commit.resolve(fs, path)
    if not all(fs.kind(f) is not None for f in found):
        raise MissingInput(f"input not found: {path}")
    reader = _session().read
    if fmt == "csv":
        df = reader.option("header", True).option("inferSchema", True).csv(found)
    else:
        df = reader.parquet(*found)
    if df.isEmpty():  # else a header-only CSV would fail later as "column is not numeric"
        raise UserError(f"input {path} has no rows")
    return df


def read_output(path: str) -> DataFrame:
    """A Parquet output this package committed (``DIR/assignments``, the assign job's ``DIR``),
    read from the files its commit lists."""
    return _session().read.parquet(*commit.resolve(_fs(), path))
