"""The demo's base model: a tiny Llama "pretrained" on a noisy corpus of addition transcripts.

The corpus is chat transcripts of the pool problems (never the held-out ones) written by someone who
forgets the carry `error_rate` of the time: on "What is 37 plus 8?" they answer 35 instead of 45.
Problems without a carry are always answered right. The base model so learns to answer carry
problems wrong when greedy, yet right about (1 - error_rate) of the time when sampled at T=1, which
gives rejection sampling something to find.

Build it (about two minutes on 2 idle CPU cores; returns at once when already built):
    python -m demo.base_model --out /tmp/base
On cores busy with other work, OMP_NUM_THREADS=1 is faster than two threads waiting on each other.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import string
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, get_cosine_schedule_with_warmup

from demo.task import has_carry, make_problems, operands

BUILD_FILE = "flywheel_build.json"  # written last: its presence means the directory holds a whole model
BUILD_VERSION = 1  # bump when the recipe changes, so cached models built by the old one are rebuilt

PAD, EOS, USER, ASSISTANT, UNK = "<pad>", "</s>", "<|user|>", "<|assistant|>", "<unk>"

# <|user|>{q}<|assistant|>{a}</s>, with no whitespace between turns, so the prompt rendered with
# add_generation_prompt=True is a string prefix of the rendered prompt + completion (TRL cuts the
# completion off where the two token sequences diverge).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}<|user|>{{ message['content'] }}"
    "{%- elif message['role'] == 'assistant' -%}<|assistant|>{{ message['content'] }}</s>"
    "{%- else -%}{{ raise_exception('Only user and assistant roles are supported, got ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)


def build_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """Train a small BPE tokenizer on `texts` that splits every digit into its own token.

    Spaces become "▁" and are kept at the front of the next word (decoding restores them), digits
    and punctuation are always single tokens, and all printable ASCII characters are in the
    vocabulary even if `texts` lacks them (so "WHAT IS 3 PLUS 4?" still encodes).
    Special tokens: <pad>, </s> (eos), <|user|>, <|assistant|>, <unk>. `<|user|>` doubles as the
    BOS token: every conversation starts with it, so code that prepends a missing BOS finds it there.
    """
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never"),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.Punctuation(behavior="isolated"),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    trainer = trainers.BpeTrainer(
        vocab_size=256,  # an upper bound: the tiny corpus stops merging long before
        special_tokens=[PAD, EOS, USER, ASSISTANT, UNK],
        initial_alphabet=list(string.ascii_letters + string.digits + string.punctuation) + ["▁"],
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=USER,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens=[ASSISTANT],
        chat_template=CHAT_TEMPLATE,
        model_max_length=256,
    )


def make_model(tokenizer: PreTrainedTokenizerFast, layers: int) -> LlamaForCausalLM:
    """A Llama with hidden 128, 2 heads of 64 (vLLM's CPU attention needs a supported head size)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def render_transcript(tokenizer: PreTrainedTokenizerFast, prompt: str, answer: str) -> str:
    """One corpus document: "<|user|>{prompt}<|assistant|>{answer}</s>"."""
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return tokenizer.apply_chat_template(messages, tokenize=False)


def pretrain(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    pool: list[dict],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    error_rate: float,
    seed: int,
    progress: bool,
) -> float:
    """Train `model` on freshly drawn noisy transcripts of `pool`; returns the last smoothed loss.

    Every step draws `batch_size` problems at random; a carry problem gets the carry-less answer
    (a + b - 10) with probability `error_rate`. The loss covers the whole transcript but padding.
    """
    right, wrong, carry = [], [], []
    for row in pool:
        right.append(render_transcript(tokenizer, row["prompt"], row["answer"]))
        wrong.append(render_transcript(tokenizer, row["prompt"], str(int(row["answer"]) - 10)))  # used on carry only
        carry.append(has_carry(*operands(row["prompt"])))
    # Pad both versions to one width so a batch can mix them with torch.where.
    both = tokenizer(right + wrong, add_special_tokens=False, padding=True, return_tensors="pt")["input_ids"]
    right_ids, wrong_ids = both[: len(pool)], both[len(pool) :]
    carry_t = torch.tensor(carry)

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=steps // 10, num_training_steps=steps)
    model.train()
    smoothed = float("nan")
    bar = tqdm(range(steps), desc="pretrain", disable=not progress)
    for _ in bar:
        idx = torch.randint(len(pool), (batch_size,), generator=gen)
        forget = carry_t[idx] & (torch.rand(batch_size, generator=gen) < error_rate)
        input_ids = torch.where(forget[:, None], wrong_ids[idx], right_ids[idx])
        attention_mask = (input_ids != tokenizer.pad_token_id).long()
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        smoothed = loss.item() if math.isnan(smoothed) else 0.9 * smoothed + 0.1 * loss.item()
        bar.set_postfix(loss=f"{smoothed:.4f}", lr=f"{sched.get_last_lr()[0]:.1e}", refresh=False)
    model.eval()
    return smoothed


def _read_build(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / BUILD_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def build_base_model(
    out_dir: Path,
    *,
    steps: int = 1000,
    batch_size: int = 128,
    lr: float = 1e-3,
    error_rate: float = 0.7,
    layers: int = 4,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Build (or find already built) the demo base model and its tokenizer in `out_dir`.

    Args:
        out_dir: where model and tokenizer are saved (save_pretrained, safetensors). They are written
            into a temporary sibling directory that is renamed into place, so `out_dir` never holds
            half a model. An existing `out_dir` that is not a model built here is left alone (error).
        steps, batch_size, lr: pretraining length, sequences per step, peak AdamW learning rate
            (10 % linear warm-up, then cosine to zero; gradients clipped to norm 1.0).
        error_rate: how often the corpus writer forgets the carry on a carry problem.
        layers: decoder layers (hidden 128, intermediate 512, 2 heads of 64, tied embeddings).
        seed: seeds the held-out split (the same split as `demo.task.write_demo_data(seed=seed)`,
            whose held-out prompts the corpus never contains) and the training.
        progress: show a progress bar with the loss.

    Returns:
        out_dir. When it already holds a model built with the same arguments (recorded in
        flywheel_build.json), returns at once without building.
    """
    out_dir = Path(out_dir)
    params = dict(
        version=BUILD_VERSION,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        error_rate=error_rate,
        layers=layers,
        seed=seed,
    )
    existing = _read_build(out_dir)
    if existing is not None and existing.get("params") == params:
        return out_dir
    if out_dir.exists() and existing is None and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and does not hold a model built by demo.base_model; not replacing it")

    started = time.perf_counter()
    torch.manual_seed(seed)
    pool, heldout = make_problems(seed)
    tokenizer = build_tokenizer([r["prompt"] for r in pool])
    model = make_model(tokenizer, layers)
    loss = pretrain(
        model,
        tokenizer,
        pool,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        error_rate=error_rate,
        seed=seed,
        progress=progress,
    )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    heldout_sha = hashlib.sha256("\n".join(sorted(r["prompt"] for r in heldout)).encode()).hexdigest()
    record = dict(
        params=params,
        final_loss=round(loss, 4),
        build_seconds=round(time.perf_counter() - started, 1),
        n_params=sum(p.numel() for p in model.parameters()),
        vocab_size=len(tokenizer),
        heldout_prompts_sha256=heldout_sha,
    )
    (tmp / BUILD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return swap_in(tmp, out_dir)


def swap_in(tmp: Path, out_dir: Path) -> Path:
    """Put the finished directory `tmp` at `out_dir`: an older build there is moved aside, then deleted, so
    a reader sees the old model or the new one, never half of one."""
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return out_dir


def build_tiny_model(out_dir: Path, *, layers: int = 2, steps: int = 60, seed: int = 0) -> Path:
    """A small, fast (seconds) version of the base model for tests; vLLM can load it.

    Trains on one thread: a model this small gains nothing from more, and on cores shared with
    other processes two threads waiting on each other made the build ~5x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return build_base_model(out_dir, steps=steps, batch_size=32, layers=layers, seed=seed, progress=False)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="Directory to save model and tokenizer into.")
    parser.add_argument("--steps", type=int, default=1000, help="Pretraining steps.")
    parser.add_argument("--batch-size", type=int, default=128, help="Sequences per step.")
    parser.add_argument("--lr", type=float, default=1e-3, help="Peak learning rate.")
    parser.add_argument("--error-rate", type=float, default=0.7, help="How often the corpus forgets the carry.")
    parser.add_argument("--layers", type=int, default=4, help="Decoder layers.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the held-out split and of training.")
    args = parser.parse_args()
    t0 = time.perf_counter()
    path = build_base_model(
        args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        error_rate=args.error_rate,
        layers=args.layers,
        seed=args.seed,
    )
    print(f"{path} ({time.perf_counter() - t0:.1f} s)")
    print((path / BUILD_FILE).read_text())
