"""Queue scores of the label stream (storage.priority): pure rule and GeoSeg-Bench default targets."""

from __future__ import annotations

from storage.priority import is_full, queue_order, queue_score, stratum_targets


def test_default_targets_are_geoseg_bench():
    t = stratum_targets()
    assert sum(t.values()) == 810
    per_domain = {d: sum(n for (dd, _), n in t.items() if dd == d) for d in ("Urban", "Rural", "Traffic", "Nature")}
    assert per_domain == {"Urban": 330, "Rural": 160, "Traffic": 240, "Nature": 80}
    assert t[("Urban", "L1")] == 198 and t[("Urban", "L3")] == 33


def test_queue_score_and_order():
    assert queue_score(0.3, False) == 0.3 and queue_score(0.3, True) == 1.3 and queue_score(None, False) == 0.0
    assert queue_score(7.0, False) == 1.0  # clipped into [0, 1]
    targets = {("Urban", "L1"): 1, ("Nature", "L3"): 2}
    fill = {("Urban", "L1"): 1}
    assert is_full(("Urban", "L1"), fill, targets) and not is_full(("Nature", "L3"), fill, targets)
    assert not is_full(("Rural", "L2"), fill, targets)  # no target: never full
    items = [{"id": 1, "domain": "Urban", "level": "L1", "score": 0.1},
             {"id": 2, "domain": "Nature", "level": "L3", "score": 0.7},
             {"id": 3, "domain": "Nature", "level": "L3", "score": None}]  # fmt: skip
    assert queue_order(items, fill, targets) == [3, 2, 1]
