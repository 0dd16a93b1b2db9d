"""Bad inputs that must stop before any work with one line (what, where, how to fix) and register nothing.

Model directories are broken copies of the tiny test model; the CLI cases run `flywheel` as a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from configs import parse_config
from flows.preflight import PREFLIGHT_ROWS, preflight
from tasks.stage import PreflightError, check_model_dir

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[2]
NO_WEIGHTS = "expected model.safetensors, model-*.safetensors (with model.safetensors.index.json) or pytorch_model.bin"


def _config(tmp_path: Path, base_model: Path, demo_data: dict[str, Path], **sections):
    """A config on the demo data with a file:// store; `sections` replace top-level sections."""
    data = {
        "pipeline": "bad",
        "base_model": str(base_model),
        "home": str(tmp_path / "home"),
        "storage": {"uri": (tmp_path / "store").as_uri()},
        "curation": {"sources": [{"name": "pool", "path": str(demo_data["pool"]), "keep_fields": ["template"]}]},
        "evaluation": {"eval_sets": [{"name": "heldout", "path": str(demo_data["heldout"])}]},
        **sections,
        "generation": {"engine": {"max_model_len": 128}, **sections.get("generation", {})},  # the tiny model has 256
    }
    return parse_config(data)


def _preflight_error(cfg) -> str:
    with pytest.raises(PreflightError) as e:
        preflight(cfg, need_base_model=True)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def _copy(model: Path, tmp_path: Path, name: str = "broken") -> Path:
    return Path(shutil.copytree(model, tmp_path / name))


def _drop_chat_template(d: Path) -> None:
    (d / "chat_template.jinja").unlink(missing_ok=True)
    tok_cfg = json.loads((d / "tokenizer_config.json").read_text())
    tok_cfg.pop("chat_template", None)
    (d / "tokenizer_config.json").write_text(json.dumps(tok_cfg))


# ---- model directories -----------------------------------------------------------------------------------


def test_model_dir_without_weights(tiny_model, demo_data, tmp_path):
    d = _copy(tiny_model, tmp_path)
    (d / "model.safetensors").unlink()
    assert _preflight_error(_config(tmp_path, d, demo_data)) == f"base_model: no weights found in {d}: {NO_WEIGHTS}"


def test_corrupted_safetensors(tiny_model, demo_data, tmp_path):
    d = _copy(tiny_model, tmp_path)
    (d / "model.safetensors").write_bytes(b"<html>503 Service Unavailable</html>" * 10)
    msg = _preflight_error(_config(tmp_path, d, demo_data))
    assert msg.startswith(f"base_model: the safetensors header of {d / 'model.safetensors'} is unreadable (")
    assert msg.endswith("the file is corrupt; re-save or re-download it")


def test_truncated_safetensors(tiny_model, demo_data, tmp_path):
    d = _copy(tiny_model, tmp_path)
    weights = d / "model.safetensors"
    whole = weights.stat().st_size
    with weights.open("r+b") as f:
        f.truncate(whole // 2)
    assert _preflight_error(_config(tmp_path, d, demo_data)) == (
        f"base_model: {weights} is truncated ({whole // 2} bytes, its header needs {whole}): re-save or re-download it"
    )


def test_sharded_checkpoint_passes_and_a_missing_shard_does_not(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    d = _copy(tiny_model, tmp_path, "sharded")
    (d / "model.safetensors").unlink()
    AutoModelForCausalLM.from_pretrained(tiny_model).save_pretrained(d, max_shard_size="300KB")
    shards = sorted(d.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and (d / "model.safetensors.index.json").is_file()
    assert check_model_dir(str(d), "base_model", chat=True) == d
    shards[-1].unlink()
    with pytest.raises(PreflightError) as e:
        check_model_dir(str(d), "base_model")
    assert str(e.value) == (
        f"base_model: {d / 'model.safetensors.index.json'} names 1 shard(s) missing from {d} "
        f"(first: {shards[-1].name}): copy them there"
    )


def test_pytorch_bin_weights_pass(tiny_model, tmp_path):
    d = _copy(tiny_model, tmp_path)
    (d / "model.safetensors").rename(d / "pytorch_model.bin")  # only its presence is checked
    assert check_model_dir(str(d), "generation.committee[0] (other)") == d


def test_tokenizer_without_chat_template(tiny_model, demo_data, tmp_path):
    d = _copy(tiny_model, tmp_path)
    _drop_chat_template(d)
    assert _preflight_error(_config(tmp_path, d, demo_data)) == (
        f'base_model: the tokenizer in {d} has no chat template: add one (tokenizer_config.json "chat_template" '
        "or chat_template.jinja)"
    )
    # a template in tokenizer_config.json is as good as chat_template.jinja
    tok_cfg = json.loads((d / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps({**tok_cfg, "chat_template": "{{ messages }}"}))
    preflight(_config(tmp_path, d, demo_data), need_base_model=True)


def test_committee_model_without_chat_template(tiny_model, demo_data, tmp_path):
    d = _copy(tiny_model, tmp_path)
    _drop_chat_template(d)
    cfg = _config(tmp_path, tiny_model, demo_data, generation={"committee": [{"name": "other", "model": str(d)}]})
    assert _preflight_error(cfg).startswith(f"generation.committee[0] (other): the tokenizer in {d} has no chat")


def test_max_model_len_past_the_models_context(tiny_model, demo_data, tmp_path):
    positions = json.loads((tiny_model / "config.json").read_text())["max_position_embeddings"]
    cfg = _config(tmp_path, tiny_model, demo_data, generation={"engine": {"max_model_len": positions + 1}})
    assert _preflight_error(cfg) == (
        f"generation.engine.max_model_len ({positions + 1}) is longer than base_model's context "
        f"(max_position_embeddings {positions} in {tiny_model}/config.json): lower max_model_len to {positions} or less"
    )
    preflight(
        _config(tmp_path, tiny_model, demo_data, generation={"engine": {"max_model_len": positions}}),
        need_base_model=True,
    )


def test_reward_model_backbone_is_checked_before_the_round(tiny_model, demo_data, tmp_path):
    missing = tmp_path / "no-such-backbone"
    cfg = _config(tmp_path, tiny_model, demo_data, training={"reward_model": {"enabled": True, "base": str(missing)}})
    assert _preflight_error(cfg).startswith(f"training.reward_model.base: no model directory at {missing}:")
    off = _config(tmp_path, tiny_model, demo_data, training={"reward_model": {"enabled": False, "base": str(missing)}})
    preflight(off, need_base_model=True)  # not trained: not read


def test_a_reward_model_needs_weights_but_no_chat_template(tiny_model, demo_data, tmp_path):
    d = _copy(tiny_model, tmp_path)
    _drop_chat_template(d)
    cfg = _config(tmp_path, tiny_model, demo_data, scoring={"scorers": [{"kind": "reward_model", "model": str(d)}]})
    preflight(cfg, need_base_model=True)  # a reward model renders conversations without a template too
    (d / "model.safetensors").unlink()
    assert _preflight_error(cfg) == f"scoring.scorers[0] (reward_model) model: no weights found in {d}: {NO_WEIGHTS}"


@pytest.mark.parametrize("breakage", ["no-weights", "corrupt", "no-chat-template"])
def test_a_broken_base_model_registers_nothing(tiny_model, demo_data, tmp_path, prefect_harness, breakage):
    from flows.round import round_flow
    from storage.catalog import Catalog

    d = _copy(tiny_model, tmp_path)
    if breakage == "no-weights":
        (d / "model.safetensors").unlink()
    elif breakage == "corrupt":
        (d / "model.safetensors").write_bytes(b"\xff" * 64)
    else:
        _drop_chat_template(d)
    cfg = _config(tmp_path, d, demo_data)
    with pytest.raises(PreflightError, match=f"^base_model: .*{d}"):
        round_flow(cfg)
    cat = Catalog(cfg.resolve_home() / "catalog.duckdb")
    assert cat.rounds(cfg.pipeline) == [] and cat.artifacts_of_round(cfg.pipeline, 0) == []
    assert [p for p in (tmp_path / "store").rglob("*") if p.is_file()] == []


# ---- eval sets: their judges and reward models are checked before generation ------------------------------


def _eval_sets(demo_data, extra: dict) -> dict:
    heldout = str(demo_data["heldout"])
    return {"eval_sets": [{"name": "heldout", "path": heldout}, {"name": "extra", "path": heldout, **extra}]}


def test_eval_set_judge_endpoint_is_checked(tiny_model, demo_data, tmp_path):
    judge = {"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1"}
    evaluation = _eval_sets(demo_data, {"metric": "win_rate", "judge": judge})
    cfg = _config(tmp_path, tiny_model, demo_data, evaluation=evaluation)
    assert _preflight_error(cfg).startswith(
        "evaluation.eval_sets[1] (extra) judge: the OpenAI-compatible server at http://127.0.0.1:9/v1 (model 'm') "
        "cannot be reached"
    )


def test_eval_set_local_judge_is_checked(tiny_model, demo_data, tmp_path):
    judge = {"backend": "vllm", "model": str(tmp_path / "judge")}
    evaluation = _eval_sets(demo_data, {"metric": "win_rate", "judge": judge})
    cfg = _config(tmp_path, tiny_model, demo_data, evaluation=evaluation)
    assert _preflight_error(cfg).startswith(
        f"evaluation.eval_sets[1] (extra) judge.model: no model directory at {tmp_path / 'judge'}: "
    )
    d = _copy(tiny_model, tmp_path, "judge")
    _drop_chat_template(d)  # a local judge's prompts are rendered with its chat template
    assert _preflight_error(cfg).startswith(
        f"evaluation.eval_sets[1] (extra) judge.model: the tokenizer in {d} has no chat template"
    )


def test_eval_set_reward_model_is_checked(tiny_model, demo_data, tmp_path):
    rm = tmp_path / "rm"
    cfg = _config(
        tmp_path, tiny_model, demo_data, evaluation=_eval_sets(demo_data, {"metric": "reward", "reward_model": str(rm)})
    )
    assert _preflight_error(cfg).startswith(f"evaluation.eval_sets[1] (extra) reward_model: no model directory at {rm}")
    d = _copy(tiny_model, tmp_path, "rm")
    (d / "model.safetensors").unlink()
    what = "evaluation.eval_sets[1] (extra) reward_model"
    assert _preflight_error(cfg) == f"{what}: no weights found in {d}: {NO_WEIGHTS}"


# ---- sources: a count from a sample says so --------------------------------------------------------------


def test_all_malformed_count_says_when_it_is_a_sample(tiny_model, demo_data, tmp_path):
    from configs.schema import SourceConfig
    from tasks.curation.sources import SourceError, read_source

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": oops}\n' * 1474)
    cfg = _config(tmp_path, tiny_model, demo_data, curation={"sources": [{"name": "pool", "path": str(bad)}]})
    with pytest.raises(SourceError) as e:
        preflight(cfg, need_base_model=True)
    n = PREFLIGHT_ROWS
    assert f"all of the first {n} rows of {bad} are malformed (invalid_json {n};" in str(e.value)
    with pytest.raises(SourceError) as e:  # read whole: the exact count
        read_source(SourceConfig(name="pool", path=str(bad)))
    assert f"all 1474 rows of {bad} are malformed (invalid_json 1474;" in str(e.value)


# ---- `flywheel serve` options ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option, value, message",
    [
        (
            "--cron",
            "61 25 * * *",
            'flywheel: --cron: "61 25 * * *" is not a cron expression (minute hour day month weekday), e.g. "0 2 * * *"',
        ),
        (
            "--timezone",
            "Mars/Olympus",
            'flywheel: --timezone: unknown IANA zone "Mars/Olympus": e.g. Europe/Paris; list them with '
            'python -c "import zoneinfo; print(sorted(zoneinfo.available_timezones()))"',
        ),
    ],
)
def test_serve_schedule_options_are_one_line(tmp_path, option, value, message):
    # A server URL that answers nothing: the options must be refused before it is tried, or the config read.
    env = {**os.environ, "FLYWHEEL_HOME": str(tmp_path / "home"), "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    cmd = [sys.executable, "-m", "flows.cli", "serve", "--config", str(tmp_path / "none.yaml"), option, value]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [message]
    assert not (tmp_path / "home").exists()
