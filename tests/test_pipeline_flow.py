"""The pipeline flow's own parameters: one-off `overrides` and a missing config, refused before any round."""

from __future__ import annotations

import pytest

from flows.pipeline import pipeline_flow
from tasks.stage import runtime


def test_the_pipeline_flow_refuses_a_bad_override_or_no_config_before_any_round(make_config, prefect_harness):
    from configs import ConfigError

    cfg = make_config(pipeline="overrides")
    with pytest.raises(ConfigError, match=r"generation.sampling has no 'temprature' \(it has: \['max_tokens'"):
        pipeline_flow(cfg, 1, overrides={"generation.sampling.temprature": 0.5})
    with pytest.raises(ConfigError, match="flywheel-pipeline got no `cfg`: run it from a deployment"):
        pipeline_flow()
    assert runtime(cfg).catalog.rounds("overrides") == []
