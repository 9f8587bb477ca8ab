"""Archive the classes a Spark application loads, for the test JVMs to share (JDK class-data
sharing, ``-XX:SharedArchiveFile``).

Usage: ``python tests/spark_classes.py ARCHIVE`` (``make test`` runs it once per install). It
runs the main job on the bundled iris data in a local[2] session started with
``-XX:ArchiveClassesAtExit``, then stops the driver JVM cleanly, which writes the archive. Every
JVM the tests start (drivers, masters, workers, executors, the Connect server) then maps the
classes it shares with this one instead of parsing and verifying them: a local session's start,
one job and stop took 7.4 s of CPU without it and 4.4 s with it. A JVM whose class path differs
(the spark-submit launcher) or whose JDK changed ignores the archive and loads its classes as
before; ``make test`` keeps the JVMs' logging of that quiet.
"""

from __future__ import annotations

import os
import runpy
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(archive: Path) -> int:
    partial = archive.with_name(archive.name + ".partial")
    partial.unlink(missing_ok=True)
    # the archive being written cannot be read too (nor can any other besides the JDK's own)
    options = [o for o in os.environ.get("JDK_JAVA_OPTIONS", "").split()
               if not o.startswith("-XX:SharedArchiveFile=")]
    os.environ["JDK_JAVA_OPTIONS"] = " ".join([*options, f"-XX:ArchiveClassesAtExit={partial}"])
    from pyspark import SparkContext

    with tempfile.TemporaryDirectory() as tmp:
        sys.argv = ["jobs/train.py", "--conf", str(ROOT / "conf/local.yaml"),
                    "--input", str(ROOT / "data/iris.csv"), "--k", "3", "--seed", "42",
                    "--output", str(Path(tmp) / "iris"), "--label-col", "species",
                    "--master", "local[2]"]
        try:
            runpy.run_path(str(ROOT / "jobs/train.py"), run_name="__main__")
        except SystemExit as exc:
            if exc.code not in (0, None):
                return 1
    # the driver JVM writes the archive as it exits: stop it cleanly (it exits when its stdin
    # closes) and wait for it
    gateway = SparkContext._gateway
    if gateway is None:
        return 1
    proc = gateway.proc
    if SparkContext._active_spark_context is not None:
        SparkContext._active_spark_context.stop()
    gateway.shutdown()
    proc.stdin.close()
    proc.wait(timeout=120)
    if not partial.exists():
        return 1
    partial.replace(archive)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]).resolve()))
