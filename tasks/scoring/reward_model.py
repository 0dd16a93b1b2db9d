"""Reward-model scorer: the scalar output of a transformers sequence-classification model (num_labels=1).

The model is a local directory, a hub id, or `trained`: the reward model this pipeline trained most
recently (tasks/train_reward.py), whose directory the round passes in `context["reward_model_dir"]`.

The text a reward model reads is built in one place, trainers/reward_encoding.py: trainers/reward.py
tokenizes its training pairs with the same function, so a trained model is scored on exactly the kind
of sequence it learned from.

Try it:  python -m tasks.scoring.reward_model --model <dir> --prompt "What is 2 plus 3?" --completion 5
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from tasks.generation import release_accelerator
from tasks.generation.handoff import free_accelerator_memory
from tasks.scoring import ScoreResult
from trainers.reward_encoding import conversation, encode_conversations, reward_values

TRAINED = "trained"


def missing_trained_error(scorer_id: str) -> str:
    return (
        f"scoring.scorers[{scorer_id}]: model: trained, but this pipeline has not trained a reward model yet; "
        "enable training.reward_model or give a model path"
    )


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("reward model: device is cuda, but torch sees no CUDA device (use auto or cpu)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def load_reward_model(model: str, device: torch.device):
    """(model, tokenizer) of a sequence-classification reward model, in eval mode on `device`.

    The pad token falls back to EOS and is written into the model config: the classification head
    reads the last non-pad token, which it can only find (for any batch size) when it knows the pad id.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # fp32 on CPU: bf16 matmuls are slow there
    rm = AutoModelForSequenceClassification.from_pretrained(model, dtype=dtype)
    if rm.config.num_labels != 1:
        raise ValueError(
            f"reward model {model}: expected a sequence-classification model with one output "
            f"(num_labels=1), got num_labels={rm.config.num_labels}"
        )
    tokenizer = AutoTokenizer.from_pretrained(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    rm.config.pad_token_id = tokenizer.pad_token_id
    return rm.to(device).eval(), tokenizer


def model_fingerprint(model: str) -> str:
    """What identifies the weights: the content hash of a local directory, or hub id @ cached commit."""
    if Path(model).is_dir():
        from storage.ids import sha256_dir

        return sha256_dir(Path(model))
    from huggingface_hub import try_to_load_from_cache

    # from_pretrained has put config.json into the hub cache under snapshots/<commit>/.
    cached = try_to_load_from_cache(model, "config.json")
    return f"{model}@{Path(cached).parent.name if isinstance(cached, str) else 'unknown'}"


class RewardModelScorer:
    """Scores each completion with a reward model: value = the model's scalar output, raw = it as text.

    Args:
        cfg: a configs.scoring.RewardModelScorerConfig.
        context: needs "reward_model_dir" when cfg.model is `trained` (and may give its artifact id as
            "reward_model_id", which equals the directory's hash).
    """

    def __init__(self, cfg, context: dict | None = None):
        context = context or {}
        self.cfg, self.id = cfg, cfg.id
        model = cfg.model
        if model == TRAINED:
            if not context.get("reward_model_dir"):
                raise ValueError(missing_trained_error(cfg.id))
            model = str(context["reward_model_dir"])
        else:
            model = os.path.expanduser(model)  # a hub id never starts with "~"
            if model.startswith(("/", ".")) and not Path(model).is_dir():
                raise FileNotFoundError(f"scoring.scorers[{cfg.id}]: model directory {model} does not exist")
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda":
            # A live vLLM engine holds gpu_memory_utilization of the device: put it to sleep first (get_engine wakes it).
            release_accelerator()
        self.model, self.tokenizer = load_reward_model(model, self.device)
        # A stored model's artifact id is its directory hash already: no need to hash it again.
        fingerprint = context.get("reward_model_id") if cfg.model == TRAINED else None
        # Truncation changes values, so max_length is part of the version; batch size and device are not.
        self.version = f"{fingerprint or model_fingerprint(model)}/max_length={cfg.max_length}"
        self._metrics: dict[str, float] = {}

    def __call__(self, rows: list[dict]) -> list[ScoreResult]:
        results: list[ScoreResult | None] = [None] * len(rows)
        convs, where = [], []
        for i, r in enumerate(rows):
            if not isinstance(r.get("completion"), str) or not isinstance(r.get("prompt"), str):
                results[i] = ScoreResult(0.0, "", "error")
                continue
            # Training pairs hold stripped answers (tasks/select.py): score the same form.
            convs.append(conversation(r["prompt"], r["completion"].strip(), r.get("system")))
            where.append(i)
        ids = encode_conversations(self.tokenizer, convs)
        limit = self.cfg.max_length
        # Keep the end: the head reads the last token, and the answer is what is judged.
        truncated = sum(len(x) > limit for x in ids)
        ids = [x[-limit:] for x in ids]
        values = reward_values(self.model, ids, self.tokenizer.pad_token_id, self.cfg.batch_size, self.device)
        for i, v in zip(where, values):
            results[i] = ScoreResult(v, f"{v:.4f}", "ok") if math.isfinite(v) else ScoreResult(0.0, str(v), "error")
        self._metrics = {"truncated": truncated / max(len(ids), 1)}
        return results  # type: ignore[return-value]

    def metrics(self) -> dict[str, float]:
        """Fraction of the last call's completions cut to max_length."""
        return dict(self._metrics)

    def close(self) -> None:
        """Free the model's memory now (the scorer cannot score afterwards), e.g. before the engine wakes.

        Dropping the last reference to a scorer frees it too, at the next `get_engine` at the latest (which
        collects garbage and empties the CUDA cache before waking a sleeping engine): this only makes it prompt.
        """
        self.model = None
        free_accelerator_memory()


if __name__ == "__main__":
    import argparse

    from configs.scoring import RewardModelScorerConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Reward model directory or hub id.")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--completion", required=True, action="append", help="Repeat to compare several.")
    args = parser.parse_args()
    scorer = RewardModelScorer(RewardModelScorerConfig(model=args.model))
    for text, res in zip(args.completion, scorer([{"prompt": args.prompt, "completion": c} for c in args.completion])):
        print(f"{res.raw:>10}  {res.status}  {text!r}")
