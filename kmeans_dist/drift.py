"""How a segmentation changed since the previous run: pure numpy, no Spark (drift.json's content).

Per stable cluster id:

- ``shift``: the Euclidean distance between the cluster's centroid before and after (for a cosine
  model, between the L2-normalised centroids);
- ``spread``: the RMS distance of the cluster's rows to its centroid,
  ``sqrt(sum of squared distances / rows)`` (Euclidean, or between the L2-normalised row and
  centroid for cosine), measured on the batch the model was fitted on and kept in the model;
- ``relative_shift``: ``shift / spread_before``, how far the centre moved in units of how wide the
  cluster was (``spread_after`` when the previous model has no spreads, e.g. one written by the
  train job; null when both are 0 and the centre moved, which ``alarms`` counts as exceeding);
- rows and shares (rows / all rows) before and after.

Over the whole segmentation: the population stability index of the cluster shares,
``PSI = sum over ids of (after - before) * ln(after / before)``, each share floored at
``PSI_EPSILON`` (1e-4) so that a new or retired id (share 0 on one side) stays finite; the new and
retired ids; and, when both batches carry an entity key, the transition matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

#: shares below this are raised to it in the PSI (a zero share would make it infinite)
PSI_EPSILON = 1e-4
SPREAD = ("RMS distance of the cluster's rows to its centroid (Euclidean; between L2-normalised "
          "vectors for cosine)")


@dataclass
class Clusters:
    """One model's clusters by stable id: centroid rows, rows per cluster, spreads (or None)."""

    ids: list[int]
    centroids: np.ndarray
    sizes: list[int]
    spreads: list[float] | None = None

    @classmethod
    def of(cls, model) -> "Clusters":
        """From a ``KMeansModel`` (its ``cluster_ids``, ``cluster_sizes``, ``cluster_spread``);
        a cosine model's centroids L2-normalised (a fit returns them so, a model written
        elsewhere need not have them)."""
        centroids = np.asarray(model.centroids, dtype=np.float64)
        if model.distance == "cosine":
            centroids = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
        return cls(list(model.cluster_ids), centroids, list(model.cluster_sizes),
                   model.cluster_spread)

    def row(self, cluster_id: int) -> int | None:
        return self.ids.index(cluster_id) if cluster_id in self.ids else None


def shares(sizes: Sequence[float]) -> np.ndarray:
    """Each size over the total (all zeros when the total is 0)."""
    s = np.asarray(sizes, dtype=np.float64)
    total = s.sum()
    return s / total if total > 0 else np.zeros_like(s)


def psi(before: Sequence[float], after: Sequence[float], eps: float = PSI_EPSILON) -> float:
    """Population stability index of two share vectors over the same ids (see the module)."""
    b = np.maximum(np.asarray(before, dtype=np.float64), eps)
    a = np.maximum(np.asarray(after, dtype=np.float64), eps)
    return float(np.sum((a - b) * np.log(a / b)))


def relative_shift(shift: float, spread_before: float | None,
                   spread_after: float | None) -> float | None:
    """``shift`` in units of the cluster's spread before (after, if before is unknown or 0)."""
    spread = next((s for s in (spread_before, spread_after) if s is not None and s > 0), None)
    if spread is None:
        return 0.0 if shift == 0 else None
    return shift / spread


def _spread(c: Clusters, row: int | None) -> float | None:
    return None if row is None or c.spreads is None else float(c.spreads[row])


def cluster_rows(previous: Clusters | None, current: Clusters) -> list[dict]:
    """One entry per stable id of either model, by id: status, rows, shares, shift, spreads."""
    ids = sorted(set(current.ids) | set(previous.ids if previous else ()))
    share_after = shares(current.sizes)
    share_before = shares(previous.sizes) if previous else None
    out = []
    for cid in ids:
        now = current.row(cid)
        was = previous.row(cid) if previous else None
        entry = {"id": cid, "status": None, "rows_before": None, "rows_after": 0,
                 "share_before": None, "share_after": 0.0, "shift": None,
                 "spread_before": _spread(previous, was) if previous else None,
                 "spread_after": _spread(current, now), "relative_shift": None}
        if now is not None:
            entry.update(rows_after=int(current.sizes[now]), share_after=float(share_after[now]))
        if previous is not None:
            entry.update(rows_before=0, share_before=0.0,
                         status="kept" if now is not None and was is not None
                         else "new" if now is not None else "retired")
        if was is not None:
            entry.update(rows_before=int(previous.sizes[was]),
                         share_before=float(share_before[was]))
        if now is not None and was is not None:
            shift = float(np.linalg.norm(current.centroids[now] - previous.centroids[was]))
            entry.update(shift=shift, relative_shift=relative_shift(
                shift, entry["spread_before"], entry["spread_after"]))
        out.append(entry)
    return out


def transitions(pairs: Sequence[tuple[int | None, int | None, int]], previous_ids: Sequence[int],
                current_ids: Sequence[int], id_col: str) -> dict:
    """The transition section from ``(previous id, current id, entities)`` counts of a full outer
    join on the key (None: the entity is missing from that batch). ``counts[i][j]``: entities in
    ``previous_ids[i]`` before and ``current_ids[j]`` now."""
    prev_ids = sorted(set(previous_ids) | {p for p, _, _ in pairs if p is not None})
    cur_ids = sorted(set(current_ids) | {c for _, c, _ in pairs if c is not None})
    counts = np.zeros((len(prev_ids), len(cur_ids)), dtype=np.int64)
    only_prev = np.zeros(len(prev_ids), dtype=np.int64)
    only_cur = np.zeros(len(cur_ids), dtype=np.int64)
    for p, c, n in pairs:
        if p is not None and c is not None:
            counts[prev_ids.index(p), cur_ids.index(c)] += n
        elif p is not None:
            only_prev[prev_ids.index(p)] += n
        elif c is not None:
            only_cur[cur_ids.index(c)] += n
    stayed = sum(int(counts[i, cur_ids.index(p)]) for i, p in enumerate(prev_ids) if p in cur_ids)
    both = int(counts.sum())
    return {
        "id_col": id_col, "entities_in_both": both, "changed": both - stayed,
        "only_previous": int(only_prev.sum()), "only_current": int(only_cur.sum()),
        "previous_ids": prev_ids, "current_ids": cur_ids, "counts": counts.tolist(),
        "only_previous_by_id": only_prev.tolist(), "only_current_by_id": only_cur.tolist(),
    }


def report(previous: Clusters | None, current: Clusters, *, previous_source: str | None = None,
           moves: dict | None = None, max_drift: float | None = None) -> dict:
    """drift.json: everything comparing the two runs is null when there is no previous model."""
    clusters = cluster_rows(previous, current)
    result = {
        "previous": None if previous is None else {
            "model": previous_source, "k": len(previous.ids), "rows": int(sum(previous.sizes))},
        "current": {"k": len(current.ids), "rows": int(sum(current.sizes))},
        "spread": SPREAD,
        "clusters": clusters,
        "psi": None, "psi_epsilon": PSI_EPSILON, "new_ids": None, "retired_ids": None,
        "max_relative_shift": None, "max_drift": max_drift, "exceeded": [],
        "transitions": moves,
    }
    if previous is not None:
        result.update(
            psi=psi([c["share_before"] for c in clusters], [c["share_after"] for c in clusters]),
            new_ids=[c["id"] for c in clusters if c["status"] == "new"],
            retired_ids=[c["id"] for c in clusters if c["status"] == "retired"],
            max_relative_shift=_largest(clusters),
            exceeded=[] if max_drift is None else [c["id"] for c in alarms(clusters, max_drift)],
        )
    return result


def _largest(clusters: list[dict]) -> dict | None:
    """{id, relative_shift} of the kept cluster that moved most relative to its spread."""
    kept = [c for c in clusters if c["status"] == "kept"]
    if not kept:
        return None
    top = max(kept, key=lambda c: math.inf if c["relative_shift"] is None else c["relative_shift"])
    return {"id": top["id"], "relative_shift": top["relative_shift"]}


def alarms(clusters: list[dict], max_drift: float) -> list[dict]:
    """Kept clusters whose relative shift exceeds ``max_drift`` (null = moved with no spread),
    largest first."""
    over = [c for c in clusters if c["status"] == "kept" and (
        c["relative_shift"] is None or c["relative_shift"] > max_drift)]
    return sorted(over, key=lambda c: -(math.inf if c["relative_shift"] is None
                                        else c["relative_shift"]))


def alarm_line(result: dict) -> str | None:
    """The one-line reason for exit code 3, naming the cluster that moved most; None if none."""
    if not result["exceeded"]:
        return None
    top = next(c for c in result["clusters"] if c["id"] == result["exceeded"][0])
    more = len(result["exceeded"]) - 1
    return (f"drift: cluster {top['id']} moved {_spreads(top['relative_shift'])} "
            f"(shift {top['shift']:.4g}), "
            f"above --max-drift {result['max_drift']:g}"
            + (f"; {more} more cluster(s) above it: {result['exceeded'][1:]}" if more else ""))


def _spreads(relative: float | None) -> str:
    return "an unbounded number of spreads (its spread is 0)" if relative is None \
        else f"{relative:.3g} spreads"


def describe(result: dict) -> str:
    """The printed drift summary: PSI, the largest relative shift, new and retired ids."""
    if result["previous"] is None:
        return "drift: no previous model (first run): drift.json has the sizes only"
    top = result["max_relative_shift"]
    moved = "-" if top is None else f"cluster {top['id']}, {_spreads(top['relative_shift'])}"
    lines = [f"drift against {result['previous']['model']}: PSI {result['psi']:.4g}; largest "
             f"relative shift: {moved}; new ids {result['new_ids']}; "
             f"retired ids {result['retired_ids']}"]
    moves = result["transitions"]
    if moves is not None:
        lines.append(f"{moves['changed']} of {moves['entities_in_both']} entities changed "
                     f"segment; {moves['only_previous']} only in the previous batch, "
                     f"{moves['only_current']} only in this one")
    return "\n".join(lines)
