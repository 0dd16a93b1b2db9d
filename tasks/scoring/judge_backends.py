"""Where a judge runs: behind an OpenAI-compatible server, or in this process's vLLM engine.

Both answer `ask(prompts, choices, schema) -> list[ChatReply]`, constrained to `choices` when the backend can
do it (`structured`); tasks/scoring/judge.py builds the prompts and parses the answers.
"""

from __future__ import annotations

from configs.scoring import JudgeEndpointConfig
from tasks.generation.openai import ChatReply


class RemoteJudge:
    """The judge behind an OpenAI-compatible server."""

    def __init__(self, endpoint: JudgeEndpointConfig, engine_cfg=None):
        from tasks.generation.openai import ChatClient

        self.endpoint = endpoint
        self.client = ChatClient(
            endpoint.base_url, endpoint.model, endpoint.api_key_env, endpoint.timeout_s, endpoint.concurrency
        )
        self.client.check()
        self.mode = self.client.structured_mode() if endpoint.structured else "none"
        self.structured = self.mode != "none"

    def ask(self, prompts: list[str], choices: list[str], schema: dict) -> list[ChatReply]:
        return self.client.chat_constrained(
            prompts, self.mode, choices, schema, self.endpoint.max_tokens, self.endpoint.temperature
        )


class LocalJudge:
    """The judge in this process's vLLM engine; the answer constrained by vLLM's structured outputs (choice)."""

    def __init__(self, endpoint: JudgeEndpointConfig, engine_cfg=None):
        from configs.schema import EngineConfig

        # One in-process engine: the judge calls vLLM itself (structured outputs), which a Ray pool does not expose.
        one = {"backend": "vllm", "replicas": 1, "ray_address": None}
        self.engine_cfg = (engine_cfg or EngineConfig()).model_copy(update=one)
        self.endpoint = endpoint
        self.max_model_len = self.engine_cfg.max_model_len
        self.structured = endpoint.structured
        self._engine()  # start (or load) it now: a bad model directory fails before any row is judged

    def _engine(self):
        # Asked for on every call: the process's engine may have been switched to another model in between.
        from tasks.generation import get_engine

        return get_engine(self.engine_cfg, self.endpoint.model)

    def ask(self, prompts: list[str], choices: list[str], schema: dict) -> list[ChatReply]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        from tasks.generation import render_prompts

        engine = self._engine()
        tok = engine.tokenizer
        texts = render_prompts(tok, [[{"role": "user", "content": p}] for p in prompts])
        # The chat template wrote any BOS already, so no special tokens are added (as in vLLM's own chat path).
        ids = [tok.encode(t, add_special_tokens=False) for t in texts]
        # vLLM rejects a whole batch for one prompt that does not fit: turn those into per-row errors first.
        replies = [
            ChatReply(
                None,
                "error",
                f"judge prompt is {len(x)} tokens, the judge engine's max_model_len is {self.max_model_len}",
            )
            for x in ids
        ]
        fits = [k for k, x in enumerate(ids) if len(x) < self.max_model_len]
        params = [
            SamplingParams(
                max_tokens=min(self.endpoint.max_tokens, self.max_model_len - len(ids[k])),
                temperature=self.endpoint.temperature,
                seed=0,
                structured_outputs=StructuredOutputsParams(choice=choices) if self.structured else None,
            )
            for k in fits
        ]
        if fits:
            outs = engine.llm.generate([{"prompt_token_ids": ids[k]} for k in fits], params, use_tqdm=False)
            for k, out in zip(fits, outs):
                replies[k] = ChatReply(out.outputs[0].text)
        return replies
