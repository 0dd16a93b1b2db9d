"""Generate N completions per prompt from the current policy (vLLM by default).

Every row carries its completion id, the model artifact id, the sampling parameters and the seed,
so a training row can be traced back to the exact sample that produced it.
"""
from __future__ import annotations

import time

import pyarrow as pa
from prefect import task

from configs.schema import FlywheelConfig, SamplingConfig
from storage import ids
from storage.runtime import open_runtime
from tasks import common
from tasks.engines import Engine, get_engine

COMPLETION_SCHEMA = pa.schema([
    ("completion_id", pa.string()), ("prompt_id", pa.string()), ("prompt", pa.string()), ("system", pa.string()),
    ("answer", pa.string()), ("source", pa.string()), ("license", pa.string()), ("tags", pa.list_(pa.string())),
    ("completion", pa.string()), ("num_tokens", pa.int64()), ("finish_reason", pa.string()),
    ("sample_index", pa.int64()), ("seed", pa.int64()), ("model_id", pa.string()), ("sampling", pa.string()),
])


def request_seed(base_seed: int, round_num: int, prompt_id: str) -> int:
    """Per-prompt seed: a prompt's samples do not depend on which batch it landed in."""
    return int(ids.hash_obj([base_seed, round_num, prompt_id], 8), 16) & 0x7FFFFFFF


def generate_completions(
    engine: Engine, prompts: list[dict], params: SamplingConfig, model_id: str, round_num: int
) -> list[dict]:
    """`params.n` completion rows per prompt row, in prompt order then sample order."""
    seeds = [request_seed(params.seed, round_num, p["prompt_id"]) for p in prompts]
    outputs = engine.generate([conversation(p) for p in prompts], params, seeds)
    sampling = params.model_dump(mode="json")
    sampling_json = ids.stable_json(sampling)
    rows = []
    for p, seed, gens in zip(prompts, seeds, outputs):
        for i, g in enumerate(gens):
            rows.append({
                "completion_id": ids.completion_id(p["prompt_id"], model_id, sampling, i, seed),
                "prompt_id": p["prompt_id"], "prompt": p["prompt"], "system": p.get("system"),
                "answer": p.get("answer"), "source": p["source"], "license": p["license"],
                "tags": p.get("tags") or [], "completion": g.text,
                "num_tokens": g.num_tokens, "finish_reason": g.finish_reason, "sample_index": i,
                "seed": seed, "model_id": model_id, "sampling": sampling_json,
            })
    return rows


def conversation(row: dict) -> str | list[dict]:
    """What the policy is asked: the user prompt, after the system prompt when the source had one."""
    if row.get("system"):
        return [{"role": "system", "content": row["system"]}, {"role": "user", "content": row["prompt"]}]
    return row["prompt"]


@task(name="generate-completions")
def generate_task(cfg: FlywheelConfig, round_num: int, policy_id: str, prompts_id: str) -> str:
    rt = open_runtime(cfg)
    log = common.get_logger()
    def compute() -> common.StepOutput:
        prompts = rt.artifacts.get_table(prompts_id).to_pylist()
        model_dir = rt.artifacts.get_model(policy_id)
        t0 = time.perf_counter()
        engine = get_engine(cfg.generation.engine, str(model_dir))
        t_engine = time.perf_counter() - t0
        t0 = time.perf_counter()
        rows = generate_completions(engine, prompts, cfg.generation.sampling, policy_id, round_num)
        dt = time.perf_counter() - t0
        tokens = sum(r["num_tokens"] for r in rows)
        log.info(
            "generated %d completions for %d prompts: %d tokens in %.1f s (%.0f tok/s; engine ready in %.1f s)",
            len(rows), len(prompts), tokens, dt, tokens / max(dt, 1e-9), t_engine,
        )
        table = pa.Table.from_pylist(rows, schema=COMPLETION_SCHEMA)
        ref = rt.artifacts.put_table(table, kind="completions")
        return common.StepOutput(
            artifacts={"completions": ref},
            summary={"rows_in": len(prompts), "rows_out": len(rows), "metrics": {
                "generate/completions": len(rows), "generate/tokens": tokens,
                "generate/tokens_per_s": tokens / max(dt, 1e-9),
                "generate/truncated": sum(r["finish_reason"] == "length" for r in rows),
            }},
            row_edges=[(r["completion_id"], r["prompt_id"], ref.id) for r in rows],
        )

    result = common.run_step(
        rt, pipeline=cfg.pipeline, round_num=round_num, step="generate", config=cfg.generation,
        inputs={"policy": policy_id, "prompts": prompts_id}, compute=compute,
        code=common.code_version(__name__, "tasks.engines", "tasks.engines.vllm", "tasks.engines.hf"),
    )
    return result.outputs["completions"]
