"""Every YAML config in configs/ loads and validates; a broken config fails with the field path and the problem."""

import copy
import re
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from configs import CONFIG_DIR, DEMO_CONFIG, ConfigError, load_config, parse_config
from configs.schema import FlywheelConfig

CONFIG_FILES = sorted(CONFIG_DIR.rglob("*.yaml"))


def test_there_are_configs():
    assert {p.name for p in CONFIG_FILES} >= {"demo.yaml", "gpu-8b.yaml"}


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_config_validates(path, tmp_path):
    cfg = load_config(path, home=str(tmp_path))
    assert isinstance(cfg, FlywheelConfig)
    # a loaded config survives a round trip through its JSON form (what Prefect stores for a flow run)
    assert FlywheelConfig.model_validate(cfg.model_dump(mode="json")) == cfg
    assert "{home}" not in cfg.model_dump_json()


def test_demo_values(tmp_path):
    cfg = load_config(DEMO_CONFIG, home=str(tmp_path))
    assert cfg.pipeline == "demo"
    assert cfg.home == str(tmp_path)
    assert [s.name for s in cfg.curation.sources] == ["addition-pool", "addition-extra"]
    assert (cfg.generation.sampling.n, cfg.training.dpo.loss_types) == (8, ["sigmoid", "sft"])
    assert cfg.gate_eval_set == "heldout"


def test_gpu_config_values(tmp_path):
    cfg = load_config(CONFIG_DIR / "gpu-8b.yaml", home=str(tmp_path))
    assert (cfg.pipeline, cfg.storage.uri) == ("math-8b", "s3://my-flywheel-bucket/flywheel")
    assert (cfg.generation.engine.tensor_parallel_size, cfg.promotion.tolerance) == (8, 0.005)
    assert cfg.gate_eval_set == "gsm8k-test"


# --- {home} -------------------------------------------------------------------------------------


def test_home_expansion_with_explicit_home(tmp_path):
    cfg = load_config(DEMO_CONFIG, home="/data/fw")
    assert cfg.base_model == "/data/fw/demo/base-model"
    assert cfg.curation.sources[0].path == "/data/fw/demo/data/pool.jsonl"
    assert cfg.curation.sources[1].path == "/data/fw/demo/data/extra.parquet"
    assert cfg.evaluation.eval_sets[0].path == "/data/fw/demo/data/heldout.jsonl"
    assert cfg.resolve_home() == Path("/data/fw")


def test_home_expansion_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "fwhome"))
    cfg = load_config(DEMO_CONFIG)
    assert cfg.base_model == f"{tmp_path}/fwhome/demo/base-model"
    assert cfg.home is None


def test_home_expansion_default_is_dot_flywheel(tmp_path, monkeypatch):
    monkeypatch.delenv("FLYWHEEL_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(DEMO_CONFIG)
    assert cfg.base_model == f"{tmp_path.resolve()}/.flywheel/demo/base-model"


def test_home_expansion_from_the_config_itself(tmp_path, monkeypatch):
    monkeypatch.delenv("FLYWHEEL_HOME", raising=False)
    data = {**_demo_data(), "home": "/srv/fw"}
    cfg = parse_config(data)
    assert cfg.base_model == "/srv/fw/demo/base-model"


# --- invalid configs ----------------------------------------------------------------------------


def _demo_data() -> dict:
    return yaml.safe_load(DEMO_CONFIG.read_text())


def _set(data: dict, dotted: str, value) -> dict:
    data = copy.deepcopy(data)
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[last] = value
    return data


def _load(tmp_path, data) -> FlywheelConfig:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path, home=str(tmp_path))


INVALID = [
    # (dotted key, value, substrings the error must contain)
    pytest.param(
        "training.sft.lr", 0.1, ["training.sft.lr", "Extra inputs are not permitted", "(got 0.1)"], id="unknown-key"
    ),
    pytest.param(
        "training.sft.learning_rate",
        -0.1,
        ["training.sft.learning_rate", "greater than 0", "(got -0.1)"],
        id="negative-lr",
    ),
    pytest.param(
        "generation.sampling.top_p", 1.5, ["generation.sampling.top_p", "less than or equal to 1"], id="top-p"
    ),
    pytest.param(
        "generation.engine.backend",
        "tgi",
        ["generation.engine.backend", "'vllm' or 'hf'", "(got 'tgi')"],
        id="backend-literal",
    ),
    pytest.param("curation.sources.0.weight", 0, ["curation.sources.0.weight", "greater than 0"], id="source-weight"),
    pytest.param("pipeline", "Demo Pipeline", ["pipeline", "should match pattern"], id="pipeline-name"),
    pytest.param(
        "promotion.eval_set", "nope", ["promotion.eval_set ('nope') must be one of ['heldout']"], id="gate-eval-set"
    ),
    pytest.param(
        "training.dpo.loss_weights",
        [1.0],
        ["training.dpo.loss_weights has 1 values but loss_types has 2"],
        id="loss-weights",
    ),
    pytest.param(
        "storage.uri",
        "ftp://x",
        ["storage", "storage.uri ('ftp://x') must start with s3:// or file://, or be 'embedded'"],
        id="ftp",
    ),
    pytest.param(
        "generation.sampling.n",
        1,
        ["DPO needs >= 2 completions per prompt", "generation.sampling.n is 1"],
        id="dpo-needs-two",
    ),
    pytest.param(
        "generation.sampling.max_tokens",
        4096,
        ["completions of up to 4096 tokens", "generation.engine.max_model_len (128)", "raise max_model_len"],
        id="no-room-for-a-prompt",
    ),
    pytest.param(
        "promotion.metric",
        "eval/accuracy",
        [
            "promotion",
            "promotion.metric ('eval/accuracy') is not a setting",
            "promotion.eval_set",
            "evaluation.eval_sets[].metric",
            "remove promotion.metric",
        ],
        id="promotion-metric-is-gone",
    ),
]


@pytest.mark.parametrize("dotted,value,expected", INVALID)
def test_invalid_config_names_field_and_problem(tmp_path, dotted, value, expected):
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, _set(_demo_data(), dotted, value))
    msg = str(e.value)
    assert msg.startswith(str(tmp_path / "bad.yaml") + ": ")
    for part in expected:
        assert part in msg


def test_duplicate_eval_set_names(tmp_path):
    data = _demo_data()
    data["evaluation"]["eval_sets"].append({"name": "heldout", "path": "other.jsonl"})
    with pytest.raises(ConfigError, match=r"evaluation\.eval_sets names must be unique, got \['heldout', 'heldout'\]"):
        _load(tmp_path, data)


def test_duplicate_source_names(tmp_path):
    data = _set(_demo_data(), "curation.sources.1.name", "addition-pool")
    with pytest.raises(ConfigError, match=r"curation\.sources names must be unique"):
        _load(tmp_path, data)


def test_missing_required_field(tmp_path):
    data = _demo_data()
    del data["evaluation"]
    with pytest.raises(ConfigError, match=r"evaluation: Field required"):
        _load(tmp_path, data)


def test_every_mistake_on_its_own_line(tmp_path):
    data = _set(_set(_demo_data(), "training.sft.lr", 0.1), "generation.sampling.seed", "x")
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, data)
    lines = str(e.value).splitlines()
    assert len(lines) == 2
    assert any("training.sft.lr" in line for line in lines)
    assert any("generation.sampling.seed" in line for line in lines)


def test_valid_variants(tmp_path):
    # things that look odd but are allowed
    ok = _set(_set(_demo_data(), "training.dpo.loss_weights", [1.0, 0.5]), "storage.uri", "file:///tmp/store")
    ok = _set(ok, "promotion.eval_set", "heldout")
    cfg = _load(tmp_path, ok)
    assert (cfg.training.dpo.loss_weights, cfg.storage.uri, cfg.gate_eval_set) == (
        [1.0, 0.5],
        "file:///tmp/store",
        "heldout",
    )
    # one completion per prompt is fine once DPO is off
    cfg = _load(tmp_path, _set(_set(_demo_data(), "generation.sampling.n", 1), "training.dpo.enabled", False))
    assert cfg.generation.sampling.n == 1


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_not_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("pipeline: [demo\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", ""])
def test_top_level_must_be_a_mapping(tmp_path, text):
    path = tmp_path / "list.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="expected a mapping of config sections at the top level"):
        load_config(path)


# --- descriptions (the Prefect UI form shows them) ----------------------------------------------


def _models(model: type[BaseModel], seen: dict[str, type[BaseModel]]) -> dict[str, type[BaseModel]]:
    if model.__name__ in seen:
        return seen
    seen[model.__name__] = model
    for f in model.model_fields.values():
        stack = [f.annotation]
        while stack:
            t = stack.pop()
            if isinstance(t, type) and issubclass(t, BaseModel):
                _models(t, seen)
            stack.extend(typing.get_args(t))
    return seen


MODELS = _models(FlywheelConfig, {})
FIELDS = [(m, name) for m in MODELS.values() for name in m.model_fields]


def test_models_are_found_recursively():
    assert {
        "FlywheelConfig",
        "CurationConfig",
        "SourceConfig",
        "EngineConfig",
        "SamplingConfig",
        "MathScorerConfig",
        "SFTConfig",
        "DPOConfig",
        "EvalSetConfig",
        "PromotionConfig",
        "StorageConfig",
    } <= set(MODELS)
    assert {
        "JudgeScorerConfig",
        "JudgeEndpointConfig",
        "RewardModelScorerConfig",
        "RewardModelTrainConfig",
        "CommitteeMemberConfig",
        "IFEvalScorerConfig",
        "CodeScorerConfig",
    } <= set(MODELS)
    assert len(FIELDS) > 60


@pytest.mark.parametrize(
    "model,name",
    [pytest.param(m, n, id=f"{m.__name__}.{n}") for m, n in FIELDS],
)
def test_every_field_has_a_description(model, name):
    description = model.model_fields[name].description
    assert description and description.strip(), f"{model.__name__}.{name} has no description"


def test_overrides_set_dotted_keys_and_name_what_is_wrong(tmp_path):
    """The pipeline flow's `overrides` (a one-off change from the UI's Custom run or the API)."""
    from configs import apply_overrides

    cfg = load_config(DEMO_CONFIG, home=str(tmp_path))
    changed = apply_overrides(cfg, {"generation.sampling.temperature": 0.7, "curation.sources.1.weight": 2.5})
    assert changed.generation.sampling.temperature == 0.7 and changed.curation.sources[1].weight == 2.5
    assert cfg.generation.sampling.temperature == 1.0  # the served config itself is untouched
    assert apply_overrides(cfg, {}) is cfg
    for overrides, message in [
        ({"generation.sampling.temprature": 1}, "generation.sampling has no 'temprature' (it has: ['max_tokens', 'n'"),
        ({"curation.sources.5.weight": 1}, "curation.sources has no '5' (it has: 2 list items)"),
        ({"curation.sources.0.weight": 0}, "overrides: curation.sources.0.weight: Input should be greater than 0"),
        ({"rounds": 2}, "the top level has no 'rounds'"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            apply_overrides(cfg, overrides)
