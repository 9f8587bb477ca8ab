"""Refit a scheduled segmentation with stable cluster ids; write model, assignments and drift.

    spark-submit --py-files dist/kmeans_dist.zip jobs/segment.py --input PATH --output DIR \
        [--previous-model DIR0/model.json] [--k K] [--id-col ID] [--max-drift X]
    python jobs/segment.py ...            (local mode, local[*])

Exit codes: 0 success, 2 bad input (nothing written), 3 drift above --max-drift (everything
written), 1 anything unexpected.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from kmeans_dist import cli, segment  # noqa: E402

if __name__ == "__main__":
    cli.main(segment.parser, segment.run)
