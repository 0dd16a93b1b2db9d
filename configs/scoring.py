"""Scoring section of the pipeline schema: which scorers run, and how their values combine into one reward.

Each scorer kind has its own small model (a discriminated union on `kind`), so a YAML typo in a field that
kind does not have fails validation instead of being ignored.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _ScorerBase(_Strict):
    name: str | None = Field(None, description="Name of this scorer in score rows and metrics (None: its kind).")
    weight: float = Field(1.0, description="Weight of this scorer in the combined reward.")

    @property
    def id(self) -> str:
        return self.name or self.kind  # type: ignore[attr-defined]


class MathScorerConfig(_ScorerBase):
    kind: Literal["math_answer"] = Field(
        "math_answer", description="Verifiable reward: final answer equals the reference."
    )
    allow_percent: bool = Field(False, description="Read '5%' as 0.05 (or 5) when comparing with the reference.")


class IFEvalScorerConfig(_ScorerBase):
    kind: Literal["ifeval"] = Field(
        "ifeval", description="IFEval's verifiable instructions, declared per prompt (Google's instruction registry)."
    )
    instructions_field: str = Field(
        "instruction_id_list",
        description="Provenance field (list it in the source's keep_fields) holding the prompt's IFEval "
        'instruction ids, e.g. ["punctuation:no_comma", "length_constraints:number_words"] (a list or its JSON '
        "text). A prompt without it is not scored (no_reference).",
    )
    kwargs_field: str = Field(
        "kwargs",
        description="Provenance field (in keep_fields) holding IFEval's arguments, one object per instruction, "
        'e.g. [{}, {"num_words": 100, "relation": "at least"}]; null values are unused keys. Absent: no '
        "arguments (an instruction that needs some is then a parse_error).",
    )
    mode: Literal["loose", "strict"] = Field(
        "loose",
        description="strict: the completion as it is must meet an instruction; loose (IFEval's): it may also "
        "meet it with its first and/or last line or its markdown asterisks removed.",
    )
    value: Literal["fraction", "all"] = Field(
        "fraction", description="Reward: fraction of the instructions met, or 1.0 only when all are met."
    )


class CodeScorerConfig(_ScorerBase):
    kind: Literal["python_tests"] = Field("python_tests", description="Run the answer's Python code against tests.")
    tests_field: str = Field("tests", description="Provenance field (in keep_fields) holding the test code.")
    timeout_s: float = Field(5.0, gt=0, description="Wall-clock limit per run, in seconds.")
    memory_mb: int = Field(512, ge=32, description="Address-space limit per run, in MiB.")
    workers: int = Field(2, ge=1, description="Sandboxed runs in parallel.")


class RewardModelScorerConfig(_ScorerBase):
    kind: Literal["reward_model"] = Field("reward_model", description="A sequence-classification reward model.")
    model: str = Field(
        description="Local directory or hub id of a transformers sequence-classification model, or `trained`: "
        "the reward model this pipeline trained most recently (see training.reward_model)."
    )
    batch_size: int = Field(16, ge=1, description="Completions scored per forward pass.")
    max_length: int = Field(512, ge=8, description="Longest prompt + completion, in tokens (longer: truncated).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the reward model runs.")


class JudgeEndpointConfig(_Strict):
    backend: Literal["vllm", "openai"] = Field(
        "vllm", description="`vllm`: a local judge model in the vLLM engine; `openai`: any OpenAI-compatible server."
    )
    model: str = Field(description="vllm: local model directory; openai: the model name the server expects.")
    base_url: str | None = Field(None, description="openai: server URL, e.g. http://127.0.0.1:8000/v1.")
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="openai: environment variable holding the API key (never the key itself)."
    )
    max_tokens: int = Field(256, ge=1, description="Longest judge answer, in tokens.")
    temperature: float = Field(0.0, ge=0, description="Judge sampling temperature (0: greedy).")
    structured: bool = Field(
        True, description="Constrain the judge's answer (guided choice / JSON schema) where the engine supports it."
    )
    concurrency: int = Field(8, ge=1, description="openai: requests in flight at once.")
    timeout_s: float = Field(60.0, gt=0, description="openai: per-request timeout, in seconds.")


class JudgeScorerConfig(_ScorerBase):
    kind: Literal["judge"] = Field("judge", description="LLM-as-a-judge.")
    mode: Literal["pointwise", "pairwise"] = Field(
        "pointwise",
        description="pointwise: a 1-10 rubric rating per completion; pairwise: completions of a "
        "prompt compared two at a time, each pair asked in both orders (win rate as the value).",
    )
    judge: JudgeEndpointConfig = Field(description="Which model judges, and where it runs.")
    rubric: str = Field(
        "helpfulness, correctness and clarity",
        description="What the judge is asked to weigh (inserted into the judge prompt).",
    )
    max_pairs_per_prompt: int = Field(
        4, ge=1, description="pairwise: comparisons per prompt (each asked in both orders)."
    )


ScorerConfig = Annotated[
    MathScorerConfig | IFEvalScorerConfig | CodeScorerConfig | RewardModelScorerConfig | JudgeScorerConfig,
    Field(discriminator="kind"),
]


class ScoringConfig(_Strict):
    scorers: list[ScorerConfig] = Field(
        default_factory=lambda: [MathScorerConfig()], min_length=1, description="Scorers, each with a weight."
    )
    combine: Literal["weighted_sum", "gated"] = Field(
        "weighted_sum",
        description="weighted_sum: sum of weight x value, the values as the scorers give them (a reward model's "
        "logit is unbounded, so it can outweigh a verifier: no ordering between scorers is guaranteed). gated: a "
        "completion below the `gate` threshold gets the gate's weight x value; one at or above it gets that plus "
        "weight x the others' values bounded into [0, 1] (a reward model's logit through a sigmoid, other values "
        "clamped). A pass then scores at least gate weight x gate_threshold and a fail below it, so a verified "
        "answer always outranks an unverified one, and the others add less than the sum of their weights: "
        "with math_answer (weight 1) and rm (weight 0.5), a pass scores 1 + 0.5 x sigmoid(rm) in (1, 1.5), "
        "a fail 0.",
    )
    gate: str | None = Field(None, description="gated: the scorer (name) that must pass, e.g. math_answer.")
    gate_threshold: float = Field(1.0, description="gated: the gate passes at or above this value.")
    on_scorer_error: Literal["exclude", "zero"] = Field(
        "exclude",
        description="A completion whose reward would read the placeholder value of a scorer that failed on it "
        "(a judge timeout or unparsable answer, a reward-model error: tasks/scoring SCORER_ERRORS): exclude: its "
        "reward is null and selection skips it (counted as score/reward/excluded_scorer_error and "
        "select/excluded_scorer_error); zero: the failed scorer counts as 0 (counted as "
        "score/reward/zeroed_scorer_error). Scorers with weight 0, and under gated the others of a completion "
        "that fails the gate, are not read, so their failures change nothing.",
    )
    tie_break: list[str] = Field(
        default_factory=list, description="Scorers (names) that break ties of the combined reward, in order."
    )

    @model_validator(mode="after")
    def _check_names(self) -> ScoringConfig:
        names = [s.id for s in self.scorers]
        if len(set(names)) != len(names):
            raise ValueError(f"scoring.scorers need distinct names (set `name:`), got {names}")
        if self.combine == "gated":
            if self.gate not in names:
                raise ValueError(
                    f"scoring.gate ({self.gate!r}) must name one of the scorers {names} when combine is gated"
                )
            # A pass outranks every fail only if the gate term grows with the gate value and no other term is negative.
            weights = {s.id: s.weight for s in self.scorers}
            negative = {k: w for k, w in weights.items() if k != self.gate and w < 0}
            if weights[self.gate] <= 0 or negative:
                raise ValueError(
                    f"scoring: combine gated needs a positive gate weight and no negative other weight "
                    f"(so a pass always outranks a fail), got weights {weights}"
                )
        unknown = [t for t in self.tie_break if t not in names]
        if unknown:
            raise ValueError(f"scoring.tie_break names unknown scorers {unknown}; scorers are {names}")
        return self
