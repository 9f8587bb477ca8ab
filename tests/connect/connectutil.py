"""Helpers of the Spark Connect tests."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def classic_mode() -> Iterator[None]:
    """Inside, pyspark builds classic expressions again: for a fit on the Connect server's own
    classic session (same JVM, same executors), to compare the classic transports with
    Connect's."""
    saved = os.environ.pop("SPARK_CONNECT_MODE_ENABLED", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["SPARK_CONNECT_MODE_ENABLED"] = saved
