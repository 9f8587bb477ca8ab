"""Fit k-means on a CSV or Parquet table and write model.json, assignments/ and report.json.

    spark-submit --py-files dist/kmeans_dist.zip jobs/train.py --input PATH --k K --output DIR
    python jobs/train.py ...            (local mode, local[*])
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from kmeans_dist import cli, train  # noqa: E402

if __name__ == "__main__":
    cli.main(train.parser, train.run)
