"""Optional LoRA for the SFT and preference stages (peft): adapters are trained, then merged into the weights.

Merging (`merge_and_unload`) before `save_checkpoint` is deliberate: the checkpoint is then an ordinary full
model, so vLLM, evaluation, the artifact store and the next round's trainers load it like any other, with no
adapter files, no `enable_lora` in the engine and no base model to keep beside it. The price is a full-size
checkpoint per stage, which the pipeline stores anyway. The next round starts new adapters on the merged model.

The trainers hand the config to TRL (`peft_config=`), which wraps the model; with DPO and `reference: policy`
TRL then uses the same model with its adapters switched off as the reference, so no second copy is loaded.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from configs.training import LoraConfig


def peft_config(cfg: LoraConfig):
    """A `peft.LoraConfig` for a causal LM, or None when LoRA is off (full fine-tuning)."""
    if not cfg.enabled:
        return None
    try:
        import peft
    except ImportError as e:  # optional at import time of the package, required once enabled
        raise ImportError("lora.enabled needs the `peft` package: pip install peft") from e
    return peft.LoraConfig(
        task_type="CAUSAL_LM",
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
    )


def merge_adapters(model):
    """Fold LoRA adapters into the base weights and drop the peft wrapper; other models pass through."""
    from accelerate.utils import is_peft_model

    return model.merge_and_unload() if is_peft_model(model) else model


def peft_version() -> str | None:
    try:
        return version("peft")
    except PackageNotFoundError:
        return None
