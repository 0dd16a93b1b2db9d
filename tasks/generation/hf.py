"""Plain transformers engine: the fallback where vLLM is not installed (and a cross-check of it)."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from configs.schema import EngineConfig, SamplingConfig
from tasks.generation import Generation, Prompt, render_prompts

BATCH = 64


class HFEngine:
    def __init__(self, cfg: EngineConfig, model_path: str):
        self.cfg = cfg
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"  # decoder-only: pad on the left so generation continues the prompt
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.load(model_path)

    def load(self, model_path: str) -> None:
        dtype = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        self.model = (
            AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype[self.cfg.dtype]).to(self.device).eval()
        )
        self.model_path = model_path

    @torch.no_grad()
    def generate(self, prompts: list[Prompt], params: SamplingConfig, seeds: list[int]) -> list[list[Generation]]:
        texts = render_prompts(self.tokenizer, prompts)
        greedy = params.temperature == 0
        # The transformers sampler has no per-request generator: sampled prompts go one at a time, each
        # under its own seed, so a row's recorded seed is the one that drew it (greedy needs none: batched).
        size = BATCH if greedy else 1
        results: list[list[Generation]] = []
        for start in range(0, len(texts), size):
            batch = texts[start : start + size]
            torch.manual_seed(seeds[start])
            enc = self.tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            out = self.model.generate(
                **enc,
                do_sample=not greedy,
                temperature=None if greedy else params.temperature,
                top_p=None if greedy else params.top_p,
                top_k=None,
                max_new_tokens=params.max_tokens,
                num_return_sequences=params.n,
                pad_token_id=self.tokenizer.pad_token_id,
            )
            new = out[:, enc["input_ids"].shape[1] :]
            for i in range(len(batch)):
                gens = []
                for j in range(params.n):
                    ids = new[i * params.n + j].tolist()
                    eos = self.tokenizer.eos_token_id
                    n_tok = (
                        ids.index(eos) + 1 if eos in ids else len([t for t in ids if t != self.tokenizer.pad_token_id])
                    )
                    text = self.tokenizer.decode(ids[:n_tok], skip_special_tokens=True)
                    gens.append(Generation(text, n_tok, "stop" if eos in ids else "length"))
                results.append(gens)
        return results

    def close(self) -> None:
        del self.model
