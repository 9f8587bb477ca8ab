"""What went wrong, told apart: the user's mistake (exit 2) or ours (exit 1). No imports of ours.

A job exits 2 only for what its user gave: a missing input file or column, a bad value, a bad
flag. Python, pyarrow and PySpark raise ``ValueError`` and ``FileNotFoundError`` for their own
internal reasons too, and those must not be reported as the user's fault without a traceback, so
our validation raises ``UserError`` (a ``ValueError``, so API callers catching ``ValueError`` keep
working) and the jobs map only it to exit 2.

``cleanup`` runs a release step after a block without letting its failure replace the block's
error: the first error is the one to report, with its exit code.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Callable, Iterator

log = logging.getLogger("kmeans_dist")


class UserError(ValueError):
    """A problem with what the user gave (a file, column, value or flag), named in one line."""


class MissingInput(UserError, FileNotFoundError):
    """A file the user named (input, model, init centroids, conf) does not exist."""


@contextmanager
def cleanup(release: Callable[[], object], what: str) -> Iterator[None]:
    """Run ``release`` after the block, whether it succeeded or not.

    When the block failed, a failure of ``release`` is logged (with its traceback) and the block's
    own error propagates unchanged: a ``finally`` whose cleanup raises would otherwise replace the
    real error, and its exit code, with the cleanup's. When the block succeeded, a failing
    ``release`` raises as usual (something is wrong, and nothing hides it).
    """
    try:
        yield
    except BaseException:
        try:
            release()
        except Exception:  # noqa: BLE001 - logged; the first error is the one that matters
            log.exception("%s failed while handling an earlier error (that error is kept)", what)
        raise
    release()
