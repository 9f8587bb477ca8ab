"""Fit k-means on a CSV or Parquet table and write model.json, assignments/ and report.json.

    spark-submit jobs/train.py --input PATH --k K --output DIR [options]
    python jobs/train.py ...            (local mode, local[*])
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from kmeans_dist import cli  # noqa: E402
from kmeans_dist.train import parser, run  # noqa: E402

if __name__ == "__main__":
    cli.setup_logging()
    with cli.user_errors():
        run(parser().parse_args())
