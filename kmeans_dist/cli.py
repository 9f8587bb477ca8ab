"""What the jobs share: logging, Spark flags and session, and exit codes.

Exit codes: 0 success; 2 bad input or usage (one ``error: ...`` line, nothing written); 1 anything
unexpected (the traceback goes to the log, then one ``error: ...`` line). Only our own
``errors.UserError`` counts as bad input: a ``ValueError`` raised inside pyarrow, PySpark or Python
is not the user's fault and gets exit 1 with its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from contextlib import contextmanager
from typing import Callable, Iterator

from pyspark.sql import SparkSession

from kmeans_dist.engine import ALGORITHMS
from kmeans_dist.kernels import DTYPES
from kmeans_dist.errors import UserError

#: exit code for bad input or parameters (nothing was written)
EXIT_USAGE = 2
#: exit code for an unexpected failure (a bug, a lost cluster, ...)
EXIT_FAILURE = 1

log = logging.getLogger("kmeans_dist")


def setup_logging() -> None:
    # force: the job's own format on stderr even if something configured logging before
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr, force=True)
    logging.getLogger("py4j").setLevel(logging.WARNING)


def features_arg(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [c.strip() for c in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"empty column name in --features {text!r}")
    return names


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors end with one line naming the problem, exit code 2."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse API
        self.print_usage(sys.stderr)
        sys.stderr.write(f"error: {message}\n")
        sys.exit(EXIT_USAGE)


def add_engine_flags(p: argparse.ArgumentParser) -> None:
    """--driver-max-mb (see ``transport.driver``), --algorithm (see ``pruning``) and --dtype (see
    ``kernels``), for the jobs that fit."""
    p.add_argument("--driver-max-mb", type=float, metavar="MIB",
                   help="fit in the driver process when the packed rows take at most MIB "
                        "(default: the smaller of 128 and 1/8 of the driver's available "
                        "memory; 0: always on the executors)")
    p.add_argument("--algorithm", default="auto", choices=ALGORITHMS,
                   help="auto (default): from 32 centroids on, skip the rows whose nearest "
                        "centroid provably stays, same result as lloyd bit for bit; lloyd: every "
                        "distance in every pass")
    p.add_argument("--dtype", default="float64", choices=DTYPES,
                   help="float64 (default), or float32: features held and distances computed "
                        "in float32 (half the executor memory), sums and inertia in float64")


def add_spark_args(p: argparse.ArgumentParser) -> None:
    """--conf, --master, --remote, --partitions: where and how wide to run (flags win over the
    file)."""
    p.add_argument("--conf", dest="conf_file", help="a conf/*.yaml profile (flags win over it)")
    p.add_argument("--master", help="Spark master when run with python (default local[*])")
    p.add_argument("--remote", help="a Spark Connect server, sc://HOST:PORT (default: the "
                                    "SPARK_REMOTE variable, if set)")
    p.add_argument("--partitions", type=int,
                   help="partitions the data is cached in (default: the cluster's cores)")


def start_session(args: argparse.Namespace, app_name: str) -> tuple[SparkSession, int]:
    """The session the flags and conf file ask for, and the partition count to use; logs both.
    ``args.partitions`` becomes the count that was asked for (the flag, else the file's; None
    when neither set one)."""
    from kmeans_dist.config import (default_parallelism, get_session, is_connect, job_master,
                                   load_conf, remote_url, under_spark_submit)

    conf = load_conf(args.conf_file) if args.conf_file else {"master": None, "partitions": None,
                                                             "spark": {}}
    partitions = args.partitions if args.partitions is not None else conf["partitions"]
    if partitions is not None and partitions < 1:
        raise UserError(f"--partitions must be >= 1, got {partitions}")
    args.partitions = partitions
    remote = getattr(args, "remote", None)
    master = job_master(args.master, conf["master"], remote_url(remote), under_spark_submit())
    spark = get_session(master, app_name=app_name, conf=conf["spark"], remote=remote)
    # a Connect URL may carry a token after ';': never log it
    where = (f"Spark Connect {(remote_url(remote) or '?').split(';')[0]}" if is_connect(spark)
             else f"master {spark.sparkContext.master}")
    chosen = partitions or default_parallelism(spark)
    log.info("config: %s; %s; partitions %d%s", args.conf_file or "built-in defaults",
             where, chosen, "" if partitions else " (the cluster's cores)")
    return spark, chosen


@contextmanager
def user_errors() -> Iterator[None]:
    """UserError (our validation of the input, columns, values and flags, including the files
    the user named: ``MissingInput``) -> one 'error: ...' line, exit 2 (no traceback); anything
    else, any other ValueError or FileNotFoundError included -> traceback in the log, then one
    'error: ...' line, exit 1."""
    try:
        yield
    except UserError as exc:
        sys.stderr.write(f"error: {first_line(exc)}\n")
        sys.exit(EXIT_USAGE)
    except Exception as exc:  # noqa: BLE001 - the job's last resort
        log.exception("unexpected failure")
        sys.stderr.write(f"error: unexpected {type(exc).__name__}: {first_line(exc)} "
                         "(traceback above)\n")
        sys.exit(EXIT_FAILURE)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def main(parser: Callable[[], argparse.ArgumentParser],
         run: Callable[[argparse.Namespace], object]) -> None:
    """A job's whole __main__: logging, flags, run, exit codes."""
    setup_logging()
    args = parser().parse_args()
    with user_errors():
        run(args)
