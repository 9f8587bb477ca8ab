"""What the jobs share: logging, flags, and turning a user error into one line and exit code 2."""

from __future__ import annotations

import argparse
import logging
import sys
from contextlib import contextmanager
from typing import Iterator

#: exit code for bad input or parameters (nothing was written)
EXIT_USAGE = 2


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
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


@contextmanager
def user_errors() -> Iterator[None]:
    """ValueError / FileNotFoundError -> 'error: ...' on stderr and exit 2 (no traceback)."""
    try:
        yield
    except (ValueError, FileNotFoundError) as exc:
        sys.stderr.write(f"error: {str(exc).strip().splitlines()[0]}\n")
        sys.exit(EXIT_USAGE)
