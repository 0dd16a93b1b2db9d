"""The sequences a reward model reads, and the values it gives them, in one place for training and scoring.

trainers/reward.py tokenizes its training pairs with `encode_conversations`, and the reward-model scorer
(tasks/scoring/reward_model.py) encodes completions with it too, so a trained model is scored on exactly
the kind of sequence it learned from.
"""

from __future__ import annotations

import torch


def conversation(prompt: str, completion: str, system: str | None = None) -> list[dict]:
    """The chat a reward model judges: [system?, user prompt, assistant completion]."""
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]


def _fold_system(messages: list[dict]) -> list[dict]:
    """Put a leading system message in front of the first user turn instead."""
    system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
    for m in rest:
        if m["role"] == "user":
            m["content"] = f"{system}\n\n{m['content']}"
            break
    return rest


def _render(tokenizer, messages: list[dict]) -> str:
    from jinja2.exceptions import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False)
    except TemplateError:
        # Some templates (the demo's, Gemma's) reject a system role: it becomes part of the user turn.
        if messages and messages[0]["role"] == "system":
            return tokenizer.apply_chat_template(_fold_system(messages), tokenize=False)
        raise


def encode_conversations(tokenizer, conversations: list[list[dict]]) -> list[list[int]]:
    """Token ids of each conversation, untruncated.

    With a chat template: the template applied to the whole conversation, tokenized without adding
    special tokens (the template has them), exactly as TRL's `apply_chat_template(tokenize=True)` does.
    Without one: the turns' texts joined by newlines ("prompt\\ncompletion"), with the tokenizer's own
    special tokens. Rendering is per conversation, tokenizing is one batched call (the fast tokenizer's
    threads do the work).
    """
    if not conversations:
        return []
    if tokenizer.chat_template:
        texts = [_render(tokenizer, c) for c in conversations]
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    texts = ["\n".join(m["content"] for m in c) for c in conversations]
    return tokenizer(texts)["input_ids"]


@torch.inference_mode()
def reward_values(model, ids: list[list[int]], pad_id: int, batch_size: int, device: torch.device) -> list[float]:
    """The model's scalar output for each token sequence, in input order.

    Sequences are sorted by length before batching, so a batch pads to nearly its own length. Padding
    goes on the right: with causal attention the last real token never sees it, so a value does not
    depend on its batch (tests hold this within 1e-4).
    """
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = [0.0] * len(ids)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(ids[i]) for i in idx)
        input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
            mask[row, : len(ids[i])] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits  # (b, 1)
        for i, value in zip(idx, logits[:, 0].float().tolist()):
            out[i] = value
    return out
