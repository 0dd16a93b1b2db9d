"""Generation speed: the generate stage's own path against raw `vllm.LLM.generate`, side by side.

Both run in one process on the same engine (the stage's VLLMEngine and its `vllm.LLM`), the same prompts
and the same sampling settings, alternating for `--repeats` rounds so that warm-up and machine noise fall on
both. The stage path is `tasks.generate.generate_completions`: per-prompt seeds, chat rendering, and the
completion rows with their ids, i.e. everything the stage adds before storing the table. The raw path hands
vLLM the same rendered prompts with one SamplingParams (no per-request seeds), as a plain script would.
With `--replicas K` (K > 1) the stage path also runs on K engines in Ray actors (`generation.engine.replicas`),
in the same rounds, and its rows are checked to equal the one-engine rows.

Run (the instruct demo's base model, converted once by `python -m demo.smollm2 --out DIR`):
    .venv/bin/python bench/generate.py --model DIR [--prompts 32] [--n 4] [--max-tokens 128] [--repeats 2] [--replicas 2]
        [--reserved-cores 0]
Last line: one JSON object with the tokens/s and their ratios (the stage must reach 0.9 of raw).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs.schema import EngineConfig, SamplingConfig  # noqa: E402
from demo.instruct_task import make_prompts  # noqa: E402
from tasks.generate import generate_completions  # noqa: E402
from tasks.generation import get_engine, render_prompts  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="Model directory (e.g. the converted SmolLM2).")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--kvcache-gb", type=int, default=2, help="KV cache of each engine, GiB.")
    p.add_argument("--replicas", type=int, default=1, help="Also run the stage path on this many engines (Ray).")
    p.add_argument(
        "--reserved-cores", type=int, default=None, help="generation.engine.cpu_reserved_cores (None: vLLM's 1)."
    )
    args = p.parse_args()

    pool, _ = make_prompts(0)
    prompts = [
        {"prompt_id": f"p{i}", "prompt": r["prompt"], "source": "bench", "license": "apache-2.0"}
        for i, r in enumerate(pool[: args.prompts])
    ]
    engine_cfg = EngineConfig(
        backend="vllm",
        dtype="float32",
        max_model_len=args.max_model_len,
        cpu_kvcache_gb=args.kvcache_gb,
        cpu_reserved_cores=args.reserved_cores,
    )
    engine = get_engine(engine_cfg, args.model)
    params = SamplingConfig(n=args.n, temperature=1.0, max_tokens=args.max_tokens, seed=0)
    import vllm

    texts = render_prompts(engine.tokenizer, [x["prompt"] for x in prompts])
    raw_params = vllm.SamplingParams(n=args.n, temperature=1.0, max_tokens=args.max_tokens)
    totals = {"stage": [0.0, 0], "raw": [0.0, 0]}
    spread_engine = None
    if args.replicas > 1:
        # Started after the in-process engine and kept beside it: each round times all paths on one machine.
        spread_engine = get_engine(engine_cfg.model_copy(update={"replicas": args.replicas}), args.model)
        totals[f"replicas_{args.replicas}"] = [0.0, 0]
    for r in range(args.repeats):
        t = time.perf_counter()
        rows = generate_completions(engine, prompts, params, "bench-model", r + 1)
        totals["stage"][0] += time.perf_counter() - t
        totals["stage"][1] += sum(x["num_tokens"] for x in rows)
        t = time.perf_counter()
        outs = engine.llm.generate(texts, raw_params, use_tqdm=False)
        totals["raw"][0] += time.perf_counter() - t
        totals["raw"][1] += sum(len(o.token_ids) for out in outs for o in out.outputs)
        if spread_engine is not None:
            t = time.perf_counter()
            spread = generate_completions(spread_engine, prompts, params, "bench-model", r + 1)
            totals[f"replicas_{args.replicas}"][0] += time.perf_counter() - t
            totals[f"replicas_{args.replicas}"][1] += sum(x["num_tokens"] for x in spread)
            if spread != rows:
                raise SystemExit(f"repeat {r + 1}: {args.replicas} replicas gave other rows than one engine")
        print(f"repeat {r + 1} of {args.repeats} done", flush=True)
    rate = {k: tokens / seconds for k, (seconds, tokens) in totals.items()}
    print("| path | tokens | seconds | tokens/s |\n|---|---|---|---|")
    for k, (seconds, tokens) in totals.items():
        print(f"| {k} | {tokens} | {seconds:.1f} | {rate[k]:.1f} |")
    result = {
        "prompts": args.prompts,
        "n": args.n,
        "max_tokens": args.max_tokens,
        "stage_tok_s": round(rate["stage"], 1),
        "raw_tok_s": round(rate["raw"], 1),
        "ratio": round(rate["stage"] / rate["raw"], 3),
    }
    if spread_engine is not None:
        key = f"replicas_{args.replicas}"
        result[f"{key}_tok_s"] = round(rate[key], 1)
        result[f"{key}_speedup"] = round(rate[key] / rate["stage"], 3)
        result["served"] = spread_engine.served()
    print(json.dumps(result))
    from tasks.generation import close_engines

    close_engines()


if __name__ == "__main__":
    main()
