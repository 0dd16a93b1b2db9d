"""The instruct demo: its IFEval-format data, the SmolLM2 base model from the PyPI wheel, and one short
round end to end on a small slice (real vLLM, real TRL, the registry's checkers, a real S3 server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from demo.instruct_task import (
    HELDOUT_TOPICS,
    N_LEAKS,
    TRAIN_TOPICS,
    combination,
    make_prompts,
    write_instruct_data,
)
from tasks.scoring.ifeval import check_instructions, known_instructions


def test_prompts_are_in_ifeval_format_and_check_without_errors():
    pool, heldout = make_prompts(0)
    assert (len(pool), len(heldout)) == (600, 80)
    known = set(known_instructions())
    for row in pool + heldout:
        assert set(row) == {"key", "prompt", "instruction_id_list", "kwargs", "request", "template"}
        assert row["prompt"].startswith(row["request"])
        assert 1 <= len(row["instruction_id_list"]) == len(row["kwargs"]) <= 2
        assert set(row["instruction_id_list"]) <= known
        assert check_instructions("Some answer.", row["instruction_id_list"], row["kwargs"], row["prompt"]).errors == []
    kinds = {i for r in pool for i in r["instruction_id_list"]}
    assert len(kinds) == 14


def test_heldout_shares_no_request_and_no_constraint_combination_with_the_pool():
    pool, heldout = make_prompts(0)
    own, leaks = pool[:-N_LEAKS], pool[-N_LEAKS:]
    assert not set(TRAIN_TOPICS) & set(HELDOUT_TOPICS)
    assert all(any(t in r["prompt"] for t in HELDOUT_TOPICS) for r in heldout)
    assert not any(t in r["prompt"] for r in own for t in HELDOUT_TOPICS)
    assert not {combination(r) for r in own} & {combination(r) for r in heldout}
    # The planted leaks reuse held-out requests, and decontamination on the request catches exactly them.
    assert {r["template"] for r in leaks} == {"planted-leak"} and {r["request"] for r in leaks} <= {
        r["request"] for r in heldout
    }
    from tasks.curation.decontam import DecontamIndex

    index = DecontamIndex({"heldout": [r["request"] for r in heldout]}, n=8, threshold=0.8)
    flagged = [i for i, r in enumerate(pool) if index.match(r["prompt"]) is not None]
    assert flagged == list(range(len(pool) - N_LEAKS, len(pool)))
    assert make_prompts(0) == (pool, heldout) and make_prompts(1) != (pool, heldout)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> Path:
    from demo.smollm2 import convert_base_model

    out = convert_base_model(tmp_path_factory.mktemp("models") / "smollm2")
    yield out
    from tasks.generation import close_engines

    close_engines()  # its engine is not the one the other tests share: free its memory


def test_base_model_is_the_converted_gguf(smollm2):
    config = json.loads((smollm2 / "config.json").read_text())
    build = json.loads((smollm2 / "flywheel_build.json").read_text())
    assert config["model_type"] == "llama" and config["head_dim"] == 64 and config["tie_word_embeddings"]
    assert "quantization_config" not in config
    assert build["n_params"] == 134_515_008
    assert (smollm2 / "chat_template.jinja").exists() or "chat_template" in (
        smollm2 / "tokenizer_config.json"
    ).read_text()
    from demo.smollm2 import convert_base_model

    before = (smollm2 / "model.safetensors").stat().st_mtime_ns
    assert convert_base_model(smollm2) == smollm2 and (smollm2 / "model.safetensors").stat().st_mtime_ns == before


def test_short_instruct_round_end_to_end(smollm2, s3_server, tmp_path):
    import yaml

    from configs import INSTRUCT_CONFIG, parse_config
    from flows.pipeline import pipeline_flow
    from tasks.stage import runtime
    from tests.conftest import BUCKET

    paths = write_instruct_data(tmp_path / "data")
    # A slice the base model often gets right (a title, a word limit), so the round has data to train on.
    easy = {"detectable_format:title", "length_constraints:number_words", "detectable_content:postscript"}
    rows = [json.loads(x) for x in paths["pool"].read_text().splitlines()]
    slice_ = [r for r in rows if set(r["instruction_id_list"]) <= easy][:40]
    paths["pool"].write_text("".join(json.dumps(r) + "\n" for r in slice_))
    held = [json.loads(x) for x in paths["heldout"].read_text().splitlines()][:8]
    paths["heldout"].write_text("".join(json.dumps(r) + "\n" for r in held))

    data = yaml.safe_load(INSTRUCT_CONFIG.read_text())
    data["base_model"] = str(smollm2)
    data["storage"] = {"uri": f"s3://{BUCKET}/{tmp_path.name}", "endpoint_url": s3_server.endpoint_url}
    data["curation"]["sources"][0]["path"] = str(paths["pool"])
    data["curation"]["prompts_per_round"] = 8
    data["generation"]["engine"]["max_model_len"] = 512
    data["generation"]["sampling"] |= {"n": 4, "max_tokens": 64}
    data["training"]["sft"] |= {"epochs": 1, "batch_size": 4, "max_length": 256}
    data["training"]["dpo"] |= {"batch_size": 4, "max_length": 256}
    data["evaluation"]["eval_sets"][0] |= {"path": str(paths["heldout"]), "samples": 2}
    data["evaluation"]["max_tokens"] = 64
    cfg = parse_config(data, "instruct slice", home=str(tmp_path / "home"))

    (report,) = pipeline_flow(cfg, 1)
    m = report.metrics
    assert m["curate/prompts"] == 8 and m["generate/completions"] == 32
    assert m["select/sft_rows"] > 0, "no completion met its instructions: the slice should be easy"
    for role in ("policy", "candidate"):
        value, lo, hi = (m[f"eval/ifeval/heldout{s}/{role}"] for s in ("", "/ci_low", "/ci_high"))
        assert 0 <= lo <= value <= hi <= 1
        assert m[f"eval/ifeval/heldout/n/{role}"] == sum(len(r["instruction_id_list"]) for r in held)
        assert m[f"eval/accuracy/{role}"] == value  # the headline the tables and plots show
    assert 0 <= m["eval/pass@1/heldout/candidate"] <= m["eval/pass@2/heldout/candidate"] <= 1
    assert report.candidate != report.policy_in
    rt = runtime(cfg)
    sft = rt.artifacts.get_table(rt.catalog.step_outputs(cfg.pipeline, 1, "select")["sft"]).to_pylist()
    scores = rt.artifacts.get_table(rt.catalog.step_outputs(cfg.pipeline, 1, "score")["scores"]).to_pylist()
    assert {s["status"] for s in scores} == {"ok"}
    assert all(r["reward"] == 1.0 for r in sft), "an SFT row must meet every instruction of its prompt"
    results = rt.artifacts.get_table(rt.catalog.step_outputs(cfg.pipeline, 1, "evaluate-candidate")["results"])
    checks = [json.loads(x)["checks"] for x in results.column("extracted").to_pylist()]
    assert [len(c) for c in checks] == [len(r["instruction_id_list"]) for r in held]
