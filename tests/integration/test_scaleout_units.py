"""Fast checks of the scale-out pieces that need no service: deployment concurrency settings, batch parameters."""

from __future__ import annotations

import pytest


def test_deployments_carry_concurrency_limits_with_documented_strategies(tmp_path):
    from flows.serve import ServeConfig, build_deployments

    cycle, export = build_deployments(ServeConfig(settings_overrides={"data_dir": str(tmp_path)}, intake=False))
    assert (cycle.concurrency_limit, cycle.concurrency_options.collision_strategy.value) == (1, "CANCEL_NEW")
    assert (export.concurrency_limit, export.concurrency_options.collision_strategy.value) == (1, "ENQUEUE")


def test_batch_parameters_round_trip_and_bad_ones_are_refused():
    from flows.dispatch import batch_from_params, batch_to_params, build_pool_deployments
    from flows.preannotate import ImageWork, WorkItem

    batch = [ImageWork(3, "a" * 64, "/x/a.png", (WorkItem(7, "the roof"), WorkItem(8, "a road")))]
    assert batch_from_params(batch_to_params(batch)) == batch
    with pytest.raises(ValueError, match="malformed batch parameter"):
        batch_from_params([{"image_id": 1, "items": [[1, "q"]]}])
    names = [(d.flow_name, d.name) for d in build_pool_deployments(profile="tiny")]
    assert names == [("predict-batch", "geolabel-predict-batch"), ("dispatch", "geolabel-dispatch")]
