"""Stable ids, drift math and model fields of the scheduled segmentation: pure numpy, no Spark.

References are computed independently: the Hungarian matching against brute force over every
injective map, the PSI against its formula written out term by term.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from kmeans_dist import drift, stable_ids
from kmeans_dist.model import KMeansModel


def brute_force_match(previous: np.ndarray, current: np.ndarray) -> tuple[float, dict]:
    """The cheapest pairing by trying every injective map of the smaller side into the larger."""
    cost = [[float(np.sqrt(((c - p) ** 2).sum())) for p in previous] for c in current]
    best = (math.inf, {})
    if len(current) <= len(previous):
        for cols in itertools.permutations(range(len(previous)), len(current)):
            total = sum(cost[r][c] for r, c in enumerate(cols))
            best = min(best, (total, dict(enumerate(cols))), key=lambda t: t[0])
    else:
        for rows in itertools.permutations(range(len(current)), len(previous)):
            total = sum(cost[r][c] for c, r in enumerate(rows))
            best = min(best, (total, {r: c for c, r in enumerate(rows)}), key=lambda t: t[0])
    return best


@pytest.mark.parametrize("k_prev, k_cur", [(3, 3), (5, 5), (4, 5), (6, 4), (2, 6)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hungarian_matching_equals_brute_force(k_prev, k_cur, seed):
    rng = np.random.default_rng(seed)
    previous = rng.normal(size=(k_prev, 3)) * 4
    current = rng.normal(size=(k_cur, 3)) * 4
    pairs = stable_ids.match(previous, current)
    total = sum(np.linalg.norm(current[r] - previous[c]) for r, c in pairs)
    best_total, best_map = brute_force_match(previous, current)
    assert len(pairs) == min(k_prev, k_cur)
    assert total == pytest.approx(best_total, rel=1e-12)
    assert dict(pairs) == best_map  # random floats: the optimum is unique


def test_ids_follow_permuted_centroids():
    previous = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    prev_ids = [7, 2, 0, 5]
    perm = [3, 0, 2, 1]
    current = previous[perm] + 0.3
    found = stable_ids.assign(prev_ids, previous, current)
    assert found.ids == [prev_ids[p] for p in perm]
    assert found.new == [] and found.retired == []


def test_new_ids_start_above_every_id_ever_used_and_retired_ones_are_listed():
    previous = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    grown = np.vstack([previous[[1, 0]], [[30.0, 30.0]], previous[[2]], [[-30.0, 0.0]]])
    found = stable_ids.assign([0, 1, 3], previous, grown, used=[2, 4])
    # matched rows keep their ids; unmatched rows get 5, 6 in row order (2 and 4 were retired)
    assert found.ids == [1, 0, 5, 3, 6] and found.new == [5, 6] and found.retired == []
    shrunk = stable_ids.assign([0, 1, 3], previous, previous[[2, 0]] + 0.1)
    assert shrunk.ids == [3, 0] and shrunk.retired == [1] and shrunk.new == []


def test_model_match_ids_never_reuses_retired_ids():
    c = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    previous = KMeansModel(c, ["x", "y"], cluster_sizes=[1, 1, 1, 1], retired_ids=[4])
    shrunk = KMeansModel(c[:3], ["x", "y"])
    assert shrunk.match_ids(previous).retired == [3]
    assert shrunk.cluster_ids == [0, 1, 2] and shrunk.retired_ids == [3, 4]
    regrown = KMeansModel(np.vstack([c[:3], [[50.0, 50.0]]]), ["x", "y"])
    assert regrown.match_ids(shrunk).new == [5]
    assert regrown.cluster_ids == [0, 1, 2, 5] and regrown.retired_ids == [3, 4]


def test_psi_matches_hand_computed_formula():
    before = [0.5, 0.3, 0.2, 0.0]
    after = [0.4, 0.4, 0.1, 0.1]
    eps = 1e-4  # the zero share of the new id is floored at drift.PSI_EPSILON
    hand = ((0.4 - 0.5) * math.log(0.4 / 0.5) + (0.4 - 0.3) * math.log(0.4 / 0.3)
            + (0.1 - 0.2) * math.log(0.1 / 0.2) + (0.1 - eps) * math.log(0.1 / eps))
    assert drift.PSI_EPSILON == eps
    assert drift.psi(before, after) == pytest.approx(hand, rel=1e-12)
    assert drift.psi(after, after) == 0.0


def _clusters(ids, centroids, sizes, spreads=None):
    return drift.Clusters(ids, np.array(centroids, dtype=float), sizes, spreads)


def test_report_per_cluster_fields_and_alarm():
    previous = _clusters([0, 1, 2], [[0, 0], [10, 0], [0, 10]], [50, 30, 20], [1.0, 2.0, 0.5])
    current = _clusters([1, 0, 3], [[10, 1], [3, 4], [20, 20]], [40, 40, 20], [2.5, 1.5, 1.0])
    result = drift.report(previous, current, previous_source="m.json", max_drift=1.0)
    by_id = {c["id"]: c for c in result["clusters"]}
    assert [c["id"] for c in result["clusters"]] == [0, 1, 2, 3]
    assert by_id[0]["shift"] == pytest.approx(5.0) and by_id[0]["relative_shift"] == 5.0
    assert by_id[1]["shift"] == pytest.approx(1.0) and by_id[1]["relative_shift"] == 0.5
    assert (by_id[2]["status"], by_id[2]["rows_after"], by_id[2]["share_before"]) == \
        ("retired", 0, 0.2)
    assert (by_id[3]["status"], by_id[3]["rows_before"], by_id[3]["shift"]) == ("new", 0, None)
    assert by_id[0]["share_after"] == 0.4 and by_id[1]["spread_after"] == 2.5
    assert result["new_ids"] == [3] and result["retired_ids"] == [2]
    assert result["psi"] == pytest.approx(drift.psi([0.5, 0.3, 0.2, 0.0], [0.4, 0.4, 0.0, 0.2]))
    assert result["max_relative_shift"] == {"id": 0, "relative_shift": 5.0}
    assert result["exceeded"] == [0] and result["max_drift"] == 1.0
    assert result["previous"] == {"model": "m.json", "k": 3, "rows": 100}
    assert result["current"] == {"k": 3, "rows": 100}
    line = drift.alarm_line(result)
    assert "cluster 0" in line and "5 spreads" in line and "\n" not in line
    quiet = drift.report(previous, current, previous_source="m.json", max_drift=6.0)
    assert quiet["exceeded"] == [] and drift.alarm_line(quiet) is None


def test_relative_shift_falls_back_to_the_current_spread():
    assert drift.relative_shift(3.0, None, 1.5) == 2.0  # previous model had no spreads
    assert drift.relative_shift(3.0, 0.0, 2.0) == 1.5
    assert drift.relative_shift(0.0, 0.0, 0.0) == 0.0
    assert drift.relative_shift(1.0, 0.0, 0.0) is None  # moved, nothing to measure it by
    moved = [{"id": 4, "status": "kept", "relative_shift": None}]
    assert drift.alarms(moved, 100.0) == moved


def test_first_run_report_has_sizes_only():
    current = _clusters([0, 1], [[0, 0], [1, 1]], [3, 1], [0.5, 0.25])
    result = drift.report(None, current, max_drift=0.0)
    assert result["previous"] is None and result["psi"] is None and result["exceeded"] == []
    assert [(c["rows_after"], c["share_after"], c["spread_after"], c["shift"])
            for c in result["clusters"]] == [(3, 0.75, 0.5, None), (1, 0.25, 0.25, None)]
    assert drift.alarm_line(result) is None
    # nothing to compare with: every comparing field is null, the run's own figures are there
    assert result["current"] == {"k": 2, "rows": 4} and result["max_drift"] == 0.0
    assert (result["new_ids"], result["retired_ids"], result["max_relative_shift"],
            result["transitions"]) == (None, None, None, None)
    for c in result["clusters"]:
        assert (c["status"], c["rows_before"], c["share_before"], c["spread_before"],
                c["relative_shift"]) == (None, None, None, None, None)


def test_cosine_drift_is_between_l2_normalised_centroids():
    """Centroids of cosine models that are not unit length (a model written elsewhere): the
    shift is the distance between their directions, by numpy."""
    previous = KMeansModel([[2.0, 0.0], [0.0, 3.0]], ["a", "b"], distance="cosine",
                           cluster_sizes=[5, 5])
    current = KMeansModel([[1.0, 1.0], [0.0, 0.5]], ["a", "b"], distance="cosine",
                          cluster_sizes=[6, 4])
    result = drift.report(drift.Clusters.of(previous), drift.Clusters.of(current))
    by_id = {c["id"]: c for c in result["clusters"]}
    unit = np.array([1.0, 1.0]) / np.sqrt(2.0)
    assert by_id[0]["shift"] == pytest.approx(np.linalg.norm(unit - [1.0, 0.0]), rel=1e-15)
    assert by_id[1]["shift"] == 0.0  # the same direction, another length


def test_transitions_from_join_counts():
    rng = np.random.default_rng(5)
    before = dict(enumerate(rng.choice([0, 1, 3], size=60)))
    after = {k + 10: v for k, v in enumerate(rng.choice([0, 1, 3, 4], size=60))}
    pairs: dict = {}
    for key in set(before) | set(after):
        pair = (before.get(key), after.get(key))
        pairs[pair] = pairs.get(pair, 0) + 1
    got = drift.transitions([(p, c, n) for (p, c), n in pairs.items()], [0, 1, 3],
                            [0, 1, 3, 4], "key")
    both = sorted(set(before) & set(after))
    expected = np.zeros((3, 4), dtype=int)
    for key in both:
        expected[[0, 1, 3].index(before[key]), [0, 1, 3, 4].index(after[key])] += 1
    assert got["counts"] == expected.tolist()
    assert got["entities_in_both"] == len(both) == 50
    assert got["changed"] == sum(before[k] != after[k] for k in both)
    assert got["only_previous"] == 10 and got["only_current"] == 10
    assert got["only_previous_by_id"] == [sum(before[k] == i for k in range(10))
                                          for i in (0, 1, 3)]
    assert got["only_current_by_id"] == [sum(after[k] == i for k in range(60, 70))
                                         for i in (0, 1, 3, 4)]
    assert got["id_col"] == "key"


def test_model_json_cluster_ids_round_trip_and_default():
    model = KMeansModel(np.eye(3), ["a", "b", "c"], cluster_sizes=[1, 2, 3],
                        cluster_ids=[4, 0, 2], retired_ids=[1, 3], cluster_spread=[0.5, 1, 2])
    again = KMeansModel.from_dict(model.to_dict())
    assert (again.cluster_ids, again.retired_ids, again.cluster_spread) == \
        ([4, 0, 2], [1, 3], [0.5, 1.0, 2.0])
    older = {k: v for k, v in model.to_dict().items()
             if k not in ("cluster_ids", "retired_ids", "cluster_spread")}
    old = KMeansModel.from_dict(older)
    assert (old.cluster_ids, old.retired_ids, old.cluster_spread) == ([0, 1, 2], [], None)
    with pytest.raises(ValueError, match=r"model is not a valid .* 3 distinct integers"):
        KMeansModel.from_dict({**model.to_dict(), "cluster_ids": [0, 0, 1]})


def test_warm_start_distance_must_match():
    from kmeans_dist import KMeans

    cosine = KMeansModel(np.eye(2), ["a", "b"], distance="cosine")
    with pytest.raises(ValueError, match="init model uses distance 'cosine', but "
                                         "distance='euclidean'"):
        KMeans(2, init=cosine)
