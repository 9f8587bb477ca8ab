"""Fit k-means for every k in a range (in the same passes), score each, suggest k: elbow.json, .png.

    spark-submit --py-files dist/kmeans_dist.zip jobs/elbow.py --input PATH --k-min 1 --k-max 10 \
        --output DIR
    python jobs/elbow.py ...            (local mode, local[*])
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from kmeans_dist import cli, elbow  # noqa: E402

if __name__ == "__main__":
    cli.main(elbow.parser, elbow.run)
