"""Checkpoints of a running fit: written after every iteration, read back by ``resume``.

A checkpoint is one JSON file (``DIR/checkpoint.json``, written atomically through the Hadoop
filesystem) holding every model's centroids, previous centroids, stop and history, the starts
(k, seed) and their init times, and a fingerprint of the input data and the parameters: resuming
against other data or other parameters is refused instead of silently mixing two fits.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Sequence

from kmeans_dist import io
from kmeans_dist.errors import MissingInput, UserError

FORMAT_VERSION = 1
#: parameters left out of the fingerprint: where the checkpoint is, how the passes run (identical
#: results on every transport and kernel), max_iter (iterations are deterministic: resuming with
#: another bound ends where an uninterrupted fit with that bound ends) and the seed, which does
#: change the result but is checked on its own against the checkpoint's starts (``load``), since
#: a seed left to chance must resume with the checkpoint's
NOT_FINGERPRINTED = ("seed", "max_iter", "checkpoint", "resume", "transport", "use_numba")


def fingerprint(params: dict[str, Any], features: Sequence[str], rows: int, weight: float,
                mean: Sequence[float], m2: Sequence[float], digest: int) -> str:
    """A hash of the parameters and of the data: its size and moments (to 10 significant digits,
    so a different partitioning of the same data still matches) and ``digest``, the sum of its
    rows' hashes (``tasks.digest_rows``), which tells apart other rows with the same moments."""
    kept = {k: v for k, v in params.items() if k not in NOT_FINGERPRINTED}
    data = {"features": list(features), "rows": rows, "weight": f"{weight:.10g}",
            "mean": [f"{v:.10g}" for v in mean], "m2": [f"{v:.10g}" for v in m2],
            "rows_digest": f"{digest:016x}"}
    text = json.dumps({"params": kept, "data": data}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class Checkpoint:
    """The checkpoint file of one fit in ``directory``."""

    def __init__(self, directory: str, fingerprint: str) -> None:
        self.directory = directory.rstrip("/")
        self.path = f"{self.directory}/checkpoint.json"
        self.fingerprint = fingerprint

    def load(self, starts: Sequence[tuple[int, int]] | None = None) -> dict | None:
        """The saved state, None if there is no file; UserError naming the file if there is one
        that cannot be read (not a file, not UTF-8 text, not JSON, not a checkpoint) or that
        belongs to another fit: other data or parameters, or (given ``starts``, the (k, seed) of
        every start the caller's seed makes) another seed. A checkpoint that is there but
        unusable is never a silent restart."""
        if not io.exists(self.path):
            return None
        try:
            text = io.read_text(self.path, what="checkpoint")
        except MissingInput:  # it exists, so it is something other than a file
            raise UserError(f"checkpoint {self.path} is not a file") from None
        except Exception as exc:  # noqa: BLE001 - py4j and pyarrow wrap the filesystems' errors
            raise UserError(f"checkpoint {self.path} cannot be read: {io._java_reason(exc)}") from exc
        try:
            saved = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"checkpoint {self.path} is not JSON: {exc}") from None
        if not isinstance(saved, dict) or saved.get("format_version") != FORMAT_VERSION:
            raise UserError(f"checkpoint {self.path} is not a kmeans-dist checkpoint of format "
                            f"{FORMAT_VERSION}")
        if saved.get("fingerprint") != self.fingerprint:
            raise UserError(f"checkpoint {self.path} was written for other input data or "
                            "parameters; delete it or choose another --checkpoint directory")
        if starts is not None and saved.get("starts") != [list(s) for s in starts]:
            raise UserError(f"checkpoint {self.path} was written for other input data or "
                            f"parameters: other seeds (its starts, (k, seed): "
                            f"{saved.get('starts')}); delete it or choose another --checkpoint "
                            "directory")
        return saved

    def save(self, starts: list[tuple[int, int]], init_seconds: list[float], iteration: int,
             runs: list[dict]) -> None:
        io.write_text(self.path, json.dumps({
            "format_version": FORMAT_VERSION, "fingerprint": self.fingerprint,
            "iteration": iteration, "starts": [list(s) for s in starts],
            "init_seconds": init_seconds, "runs": runs,
        }) + "\n")
