"""An output commit without Spark, for tests/test_commit.py to kill at its commit points.

    python tests/commit_writer.py OUT VERSION [--overwrite]

With no Spark session, ``kmeans_dist.io`` goes through pyarrow's filesystems: the code path of a
job on Spark Connect (local paths, or s3:// / s3a:// on the S3 server the AWS_* variables name).
It writes, through ``io.staged_dir`` as the jobs do and in this order, ``OUT/model.json`` (a model
whose params record VERSION), ``OUT/assignments/part-0.parquet`` and ``part-1.parquet`` (five
rows each, every row carrying VERSION; Parquet written with pyarrow where the Connect server would
write it with Spark) and ``OUT/report.json``.
"""

from __future__ import annotations

import io as bytes_io
import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from kmeans_dist import io
from kmeans_dist.model import KMeansModel

ROWS_PER_PART = 5


def parquet_bytes(version: str, part: int) -> bytes:
    rows = range(part * ROWS_PER_PART, (part + 1) * ROWS_PER_PART)
    buf = bytes_io.BytesIO()
    pq.write_table(pa.table({"row": list(rows), "version": [version] * ROWS_PER_PART}), buf)
    return buf.getvalue()


def write_output(out: str, version: str, overwrite: bool) -> None:
    with io.staged_dir(out, overwrite) as where:
        model = KMeansModel([[1.0, 2.0]], ["a", "b"], params={"version": version})
        model.save(f"{where}/model.json")
        for part in (0, 1):
            io.write_bytes(f"{where}/assignments/part-{part}.parquet",
                           parquet_bytes(version, part))
        io.write_text(f"{where}/report.json", json.dumps({"version": version}) + "\n")


if __name__ == "__main__":
    write_output(sys.argv[1], sys.argv[2], "--overwrite" in sys.argv[3:])
