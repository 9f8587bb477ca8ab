"""Label a new batch with a saved model: every input column plus cluster and distance (Parquet).

    spark-submit --py-files dist/kmeans_dist.zip jobs/assign.py \
        --model DIR/model.json --input PATH --output DIR2 [--features a,b,c]
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from kmeans_dist import assign, cli  # noqa: E402

if __name__ == "__main__":
    cli.main(assign.parser, assign.run)
