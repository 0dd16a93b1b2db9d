"""Model averaging: the pure tensor-by-tensor average, its refusals, and the step that stores it with lineage."""

from __future__ import annotations

import doctest
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import tasks.average
import trainers.average
from configs.averaging import AveragingConfig
from tasks.average import average_task, policy_history
from trainers.average import AveragingError, average_checkpoints


def _state(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory, one file or shards."""
    out: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _clone(tiny: Path, out: Path, *, seed: int, dtype=torch.float32, max_shard_size=None, **config_changes) -> Path:
    """The tiny model's architecture and tokenizer with fresh random weights (seeded)."""
    config = AutoConfig.from_pretrained(tiny)
    for k, v in config_changes.items():
        setattr(config, k, v)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).to(dtype)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out, **kwargs)
    AutoTokenizer.from_pretrained(tiny).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def ckpts(tiny_model, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("avg")
    return {
        "a": _clone(tiny_model, root / "a", seed=1),
        "b": _clone(tiny_model, root / "b", seed=2),
        "c": _clone(tiny_model, root / "c", seed=3),
        "d": _clone(tiny_model, root / "d", seed=4),
        "a_bf16": _clone(tiny_model, root / "a_bf16", seed=1, dtype=torch.bfloat16),
        "a_sharded": _clone(tiny_model, root / "a_sharded", seed=1, max_shard_size="300KB"),
        "b_sharded": _clone(tiny_model, root / "b_sharded", seed=2, max_shard_size="300KB"),
        "wide": _clone(tiny_model, root / "wide", seed=5, intermediate_size=256),
    }


# --- the pure average ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("w", [(0.5, 0.5), (0.8, 0.2), (4.0, 1.0)], ids=["half", "0.8-0.2", "unnormalised-4-1"])
def test_average_is_the_weighted_mean_of_each_tensor(ckpts, tmp_path, w):
    out = average_checkpoints([(ckpts["a"], w[0]), (ckpts["b"], w[1])], tmp_path / "out")
    a, b, avg = _state(ckpts["a"]), _state(ckpts["b"]), _state(out)
    assert avg.keys() == a.keys() and len(avg) > 5
    wa, wb = w[0] / sum(w), w[1] / sum(w)
    for name in a:
        assert not torch.equal(a[name], b[name]) or name.endswith("norm.weight")  # different inits
        assert avg[name].dtype == torch.float32
        assert torch.allclose(avg[name], wa * a[name] + wb * b[name], atol=1e-6), name
    record = json.loads((out / "averaging.json").read_text())
    assert [p["name"] for p in record["parents"]] == ["a", "b"]
    assert [p["weight"] for p in record["parents"]] == pytest.approx([wa, wb])


def test_three_parents(ckpts, tmp_path):
    out = average_checkpoints([(ckpts["a"], 0.5), (ckpts["b"], 0.25), (ckpts["c"], 0.25)], tmp_path / "out")
    a, b, c, avg = _state(ckpts["a"]), _state(ckpts["b"]), _state(ckpts["c"]), _state(out)
    for name in a:
        assert torch.allclose(avg[name], 0.5 * a[name] + 0.25 * b[name] + 0.25 * c[name], atol=1e-6), name


def test_dtype_of_the_first_parent_is_kept(ckpts, tmp_path):
    out = average_checkpoints([(ckpts["a_bf16"], 0.5), (ckpts["b"], 0.5)], tmp_path / "out")
    a, b, avg = _state(ckpts["a_bf16"]), _state(ckpts["b"]), _state(out)
    for name in a:
        assert a[name].dtype == torch.bfloat16 and b[name].dtype == torch.float32
        assert avg[name].dtype == torch.bfloat16, name
        # in float32, then cast: exactly what averaging by hand the same way gives
        assert torch.equal(avg[name], (0.5 * a[name].float() + 0.5 * b[name]).to(torch.bfloat16)), name
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    # the other way round: float32 out
    out = average_checkpoints([(ckpts["b"], 0.5), (ckpts["a_bf16"], 0.5)], tmp_path / "out2")
    assert {t.dtype for t in _state(out).values()} == {torch.float32}


def test_tied_embeddings_round_trip_and_the_average_loads_and_generates(ckpts, tmp_path):
    a = _state(ckpts["a"])
    assert json.loads((ckpts["a"] / "config.json").read_text())["tie_word_embeddings"] is True
    assert "lm_head.weight" not in a  # save_pretrained stores the embedding only
    # a parent that also stores lm_head (some writers do) averages with one that does not
    both = tmp_path / "both"
    shutil.copytree(ckpts["b"], both)
    b = _state(ckpts["b"])
    save_file(
        {**b, "lm_head.weight": b["model.embed_tokens.weight"].clone()},
        both / "model.safetensors",
        metadata={"format": "pt"},
    )
    out = average_checkpoints([(ckpts["a"], 0.5), (both, 0.5)], tmp_path / "out")
    avg = _state(out)
    assert "lm_head.weight" not in avg
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / f).read_bytes() == (ckpts["a"] / f).read_bytes(), f

    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    embed = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight.data_ptr() == embed.data_ptr()  # still tied
    assert torch.allclose(embed, 0.5 * a["model.embed_tokens.weight"] + 0.5 * b["model.embed_tokens.weight"])
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2 plus 3?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    gen = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert gen.shape[1] > prompt["input_ids"].shape[1]


def test_sharded_checkpoints(ckpts, tmp_path):
    assert (ckpts["a_sharded"] / "model.safetensors.index.json").is_file()
    assert len(list(ckpts["a_sharded"].glob("*.safetensors"))) >= 2
    out = average_checkpoints([(ckpts["a_sharded"], 0.8), (ckpts["b_sharded"], 0.2)], tmp_path / "out")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    src_index = json.loads((ckpts["a_sharded"] / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == {k: v for k, v in src_index["weight_map"].items() if k != "lm_head.weight"}
    assert sorted(p.name for p in out.glob("*.safetensors")) == sorted(set(index["weight_map"].values()))
    # the same numbers as averaging the unsharded copies; a sharded parent also averages with a single-file one
    single = average_checkpoints([(ckpts["a"], 0.8), (ckpts["b"], 0.2)], tmp_path / "single")
    mixed = average_checkpoints([(ckpts["a_sharded"], 0.8), (ckpts["b"], 0.2)], tmp_path / "mixed")
    expected = _state(single)
    for got in (_state(out), _state(mixed)):
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[n], expected[n]) for n in expected)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in expected.values())
    AutoModelForCausalLM.from_pretrained(out)


def test_same_inputs_give_the_same_bytes(ckpts, tmp_path):
    # content-addressed artifacts: no timestamps or paths in what is written
    x = average_checkpoints([(ckpts["a"], 0.5), (ckpts["b"], 0.5)], tmp_path / "x" / "model")
    y = average_checkpoints([(ckpts["a"], 0.5), (ckpts["b"], 0.5)], tmp_path / "y" / "model")
    files = sorted(p.name for p in x.iterdir())
    assert files == sorted(p.name for p in y.iterdir())
    assert all((x / f).read_bytes() == (y / f).read_bytes() for f in files)


# --- refusals -----------------------------------------------------------------------------------------------


def test_different_architecture_is_refused(ckpts, tmp_path):
    with pytest.raises(AveragingError, match=r"differ in architecture \(config.json intermediate_size: 256 vs 512"):
        average_checkpoints([(ckpts["a"], 0.5), (ckpts["wide"], 0.5)], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written


def test_different_shapes_under_the_same_config_are_refused(ckpts, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(ckpts["b"], bad)
    state = _state(bad)
    state["model.layers.0.mlp.up_proj.weight"] = state["model.layers.0.mlp.up_proj.weight"][:256].clone()
    save_file(state, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        AveragingError,
        match=r"differ in tensor shapes: model.layers.0.mlp.up_proj.weight is "
        r"\[256, 128\] vs \[512, 128\]",
    ):
        average_checkpoints([(ckpts["a"], 0.5), (bad, 0.5)], tmp_path / "out")


def test_missing_tensor_is_refused(ckpts, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(ckpts["b"], bad)
    state = _state(bad)
    del state["model.norm.weight"]
    save_file(state, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(AveragingError, match=r"hold different tensors: .* lacks model.norm.weight"):
        average_checkpoints([(ckpts["a"], 0.5), (bad, 0.5)], tmp_path / "out")


def test_different_tokenizer_is_refused(ckpts, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(ckpts["b"], bad)
    tok = json.loads((bad / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    first, second = list(vocab)[10:12]
    vocab[first], vocab[second] = vocab[second], vocab[first]  # same size, same shapes: only the ids differ
    (bad / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(AveragingError, match="different tokenizer vocabularies \\(tokenizer.json\\)"):
        average_checkpoints([(ckpts["a"], 0.5), (bad, 0.5)], tmp_path / "out")
    # padding/truncation settings are not the vocabulary
    tok = json.loads((ckpts["b"] / "tokenizer.json").read_text())
    tok["truncation"] = {"direction": "Left", "max_length": 64, "strategy": "LongestFirst", "stride": 0}
    (bad / "tokenizer.json").write_text(json.dumps(tok))
    average_checkpoints([(ckpts["a"], 0.5), (bad, 0.5)], tmp_path / "out")


@pytest.mark.parametrize("weights", [(0.5, -0.5), (0.0, 0.0), (float("nan"), 1.0)])
def test_bad_weights_are_refused(ckpts, tmp_path, weights):
    with pytest.raises(ValueError, match="averaging weights must be finite and >= 0"):
        average_checkpoints([(ckpts["a"], weights[0]), (ckpts["b"], weights[1])], tmp_path / "out")


def test_non_safetensors_and_non_empty_output_are_refused(ckpts, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copyfile(ckpts["a"] / "config.json", empty / "config.json")
    with pytest.raises(AveragingError, match="only safetensors checkpoints"):
        average_checkpoints([(ckpts["a"], 0.5), (empty, 0.5)], tmp_path / "out")
    with pytest.raises(FileExistsError):
        average_checkpoints([(ckpts["a"], 0.5), (ckpts["b"], 0.5)], empty)


# --- config and parent choice -------------------------------------------------------------------------------


def test_config_checks():
    AveragingConfig(parents="last_k_promoted", k=3, parent_weights=[2, 1, 1])
    with pytest.raises(ValueError, match=r"parent_weights has 2 values but parents \('last_k_promoted', k=3\) has 3"):
        AveragingConfig(parents="last_k_promoted", k=3, parent_weights=[1, 1])
    with pytest.raises(ValueError, match="must all be > 0"):
        AveragingConfig(parent_weights=[0.0])
    refused = [{"weight_new": 0.0}, {"weight_new": 1.5}, {"k": 0}, {"from_round": 0}]
    for bad in [*refused, {"with": "policy"}, {"parents": "all"}]:
        with pytest.raises(ValueError):
            AveragingConfig(**bad)
    assert all(f.description for f in AveragingConfig.model_fields.values())


def test_doctests():
    for module in (tasks.average, trainers.average):
        result = doctest.testmod(module)
        assert result.attempted >= 1 and result.failed == 0, module.__name__


# --- the step -----------------------------------------------------------------------------------------------


@pytest.fixture
def make_cfg(s3_server, tmp_path):
    from configs import parse_config
    from tests.conftest import BUCKET

    def make(**averaging):
        cfg = parse_config(
            {
                "pipeline": "avg",
                "base_model": str(tmp_path / "unused"),
                "home": str(tmp_path / "home"),
                "storage": {"uri": f"s3://{BUCKET}/{tmp_path.name}", "endpoint_url": s3_server.endpoint_url},
                "curation": {"sources": [{"name": "s", "path": str(tmp_path / "unused.jsonl")}]},
                "evaluation": {"eval_sets": [{"name": "h", "path": str(tmp_path / "unused.jsonl")}]},
            }
        )
        training = cfg.training.model_copy(update={"averaging": AveragingConfig(**averaging)})
        return cfg.model_copy(update={"training": training})

    return make


def test_disabled_passes_the_candidate_through(make_cfg):
    cfg = make_cfg(enabled=False)
    assert average_task.fn(cfg, 1, "c" * 64, "p" * 64) == "c" * 64
    assert not (Path(cfg.home) / "catalog.duckdb").exists()  # no runtime opened, nothing recorded
    # a skipped training (candidate == policy) has nothing to average either
    assert average_task.fn(make_cfg(enabled=True), 1, "p" * 64, "p" * 64) == "p" * 64


def _edges(rt, artifact_id: str) -> dict[str, str]:
    return {e["src"]: e["step"] for e in rt.catalog.lineage(artifact_id) if e["dst"] == artifact_id}


def test_task_averages_with_the_policy_and_records_lineage(prefect_harness, make_cfg, ckpts):
    from tasks.stage import runtime

    cfg = make_cfg(enabled=True, parents="policy", weight_new=0.8)
    rt = runtime(cfg)
    policy, candidate = (rt.artifacts.put_model(ckpts[n]).id for n in ("a", "b"))
    rt.catalog.start_round(cfg.pipeline, 1, "h", policy, None)

    averaged = average_task(cfg, 1, candidate, policy)
    assert averaged not in (candidate, policy) and rt.artifacts.ref(averaged).kind == "model"
    assert _edges(rt, averaged) == {candidate: "average", policy: "average"}
    step = rt.catalog.steps_of(cfg.pipeline, 1)["average"]
    assert json.loads(step["inputs"]) == {"candidate": candidate, "parent:0": policy}
    metrics = next(r for r in rt.catalog.rounds(cfg.pipeline) if r["round"] == 1)["metrics"]
    assert metrics["average/parents"] == 1.0 and metrics["average/weight_new"] == pytest.approx(0.8)

    got = _state(rt.artifacts.get_model(averaged))
    a, b = _state(ckpts["a"]), _state(ckpts["b"])
    assert all(torch.allclose(got[n], 0.8 * b[n] + 0.2 * a[n], atol=1e-6) for n in a)
    record = json.loads((rt.artifacts.get_model(averaged) / "averaging.json").read_text())
    assert [p["name"] for p in record["parents"]] == [candidate, policy]  # cache directories are named by id

    # a rerun of the same step reuses the stored average
    assert average_task(cfg, 1, candidate, policy) == averaged
    assert rt.catalog.steps_of(cfg.pipeline, 1)["average"]["reused"] is True
    # from_round only decides whether the step runs: the same average in round 2 is the same step
    rt.catalog.start_round(cfg.pipeline, 2, "h", policy, None)
    cfg_r2 = make_cfg(enabled=True, parents="policy", weight_new=0.8, from_round=2)
    assert average_task(cfg_r2, 2, candidate, policy) == averaged
    round2, round1 = (rt.catalog.steps_of(cfg.pipeline, r)["average"] for r in (2, 1))
    assert round2["reused"] is True and round2["identity"] == round1["identity"]


def test_task_averages_with_the_last_k_promoted_policies(prefect_harness, make_cfg, ckpts):
    from tasks.stage import runtime

    cfg = make_cfg(enabled=True, parents="last_k_promoted", k=3, weight_new=0.4)
    rt = runtime(cfg)
    base, p1, p2, candidate = (rt.artifacts.put_model(ckpts[n]).id for n in ("c", "d", "a", "b"))
    # round 1 promotes p1, round 2 promotes p2, round 3 keeps p2, round 4 trains `candidate` from p2
    history = [(base, p1, True), (p1, p2, True), (p2, p2, False)]
    for r, (policy_in, policy_out, promoted) in enumerate(history, start=1):
        rt.catalog.start_round(cfg.pipeline, r, "h", policy_in, None)
        rt.catalog.finish_round(
            cfg.pipeline,
            r,
            candidate=policy_out,
            policy_out=policy_out,
            promoted=promoted,
            reason="test",
            manifest_uri="",
        )
    rt.catalog.start_round(cfg.pipeline, 4, "h", p2, None)

    averaged = average_task(cfg, 4, candidate, p2, policy_history(rt.catalog.rounds(cfg.pipeline), 4))
    assert _edges(rt, averaged) == {candidate: "average", p2: "average", p1: "average", base: "average"}
    inputs = json.loads(rt.catalog.steps_of(cfg.pipeline, 4)["average"]["inputs"])
    assert inputs == {"candidate": candidate, "parent:0": p2, "parent:1": p1, "parent:2": base}
    record = json.loads((rt.artifacts.get_model(averaged) / "averaging.json").read_text())
    assert [p["weight"] for p in record["parents"]] == pytest.approx([0.4, 0.2, 0.2, 0.2])
    metrics = next(r for r in rt.catalog.rounds(cfg.pipeline) if r["round"] == 4)["metrics"]
    assert metrics["average/parents"] == 3.0 and metrics["average/weight_new"] == pytest.approx(0.4)
