"""Does GRPO raise the addition demo's training reward? Only on prompts it sees again, measured here.

GRPO (trainers/grpo.py, the train-rl stage's trainer) runs from one checkpoint on N pool prompts of the
demo for a fixed number of steps, once per N and seed, and prints: the mean training reward over the first
and last quarter of the steps, and greedy accuracy before and after on the held-out set, on the prompts
it trained on, and on pool prompts it never saw. With N = 480 every step sees new prompts (one pass); with
N = 64 and 40 steps of 8 prompts each prompt comes back 5 times.

Run:  flywheel demo  (once), then
      flywheel export --config configs/demo.yaml /tmp/policy && .venv/bin/python bench/rl_revisit.py --model /tmp/policy
Options: --prompts 64,480  --seeds 0,1,2  --lr 2e-5  --steps 40  (about 15 s per line on 2 cores).
Last line: one JSON list with a record per line printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from configs.quiet import apply_defaults  # noqa: E402

apply_defaults()


def greedy_accuracy(model_dir: str, sets: dict[str, list[dict]], reward) -> dict[str, float]:
    """Per named set of rows ({prompt, answer}): the share whose greedy answer (8 new tokens at most) the
    verifier accepts. The model is loaded once for all the sets."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    out = {}
    for name, rows in sets.items():
        texts = [
            tok.apply_chat_template(
                [{"role": "user", "content": r["prompt"]}], tokenize=False, add_generation_prompt=True
            )
            for r in rows
        ]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=8, do_sample=False)
        answers = tok.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        scores = reward(prompts=[r["prompt"] for r in rows], completions=answers, answer=[r["answer"] for r in rows])
        out[name] = sum(s or 0.0 for s in scores) / len(rows)
    return out


def quarter_means(values: list[float]) -> tuple[float, float]:
    """Means of the first and the last quarter (at least one value each).

    >>> quarter_means([0.5, 0.6, 0.7, 0.9])
    (0.5, 0.9)
    """
    k = max(1, len(values) // 4)
    return sum(values[:k]) / k, sum(values[-k:]) / k


def main() -> None:
    from configs.rl import RLConfig
    from demo.task import make_problems
    from tasks.scoring.rl_rewards import reward_functions
    from trainers.grpo import train_rl

    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, help="a checkpoint directory (e.g. flywheel export of the demo's policy)")
    p.add_argument("--prompts", default="64,480", help="numbers of pool prompts to train on, comma-separated")
    p.add_argument("--seeds", default="0")
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--steps", type=int, default=40)
    args = p.parse_args()
    pool, heldout = make_problems(0)  # the demo's split (demo/task.py): held-out carry pairs are never in the pool
    funcs, weights = reward_functions([{"kind": "math_answer"}])
    log = logging.getLogger("bench.rl_revisit")
    held_before = greedy_accuracy(args.model, {"heldout": heldout}, funcs[0])["heldout"]
    print(f"policy {args.model}: held-out greedy accuracy {held_before:.3f}", flush=True)
    records = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        order = list(pool)
        random.Random(seed).shuffle(order)
        unseen = order[-300:]  # never among the trained prompts for N <= 1,170
        unseen_before = greedy_accuracy(args.model, {"unseen": unseen}, funcs[0])["unseen"]
        for n in [int(x) for x in args.prompts.split(",")]:
            train = order[:n]
            seen = train[:300]
            seen_before = greedy_accuracy(args.model, {"seen": seen}, funcs[0])["seen"]
            rows = [{"prompt": r["prompt"], "answer": r["answer"], "system": None, "provenance": "{}"} for r in train]
            cfg = RLConfig(
                enabled=True,
                num_generations=8,
                prompts_per_step=8,
                max_steps=args.steps,
                learning_rate=args.lr,
                max_completion_length=8,
            )
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="rl-revisit-") as tmp:
                ckpt, summary = train_rl(
                    args.model,
                    rows,
                    cfg,
                    Path(tmp),
                    reward_funcs=funcs,
                    reward_weights=weights,
                    base_id="bench",
                    seed=seed,
                    use_cpu=True,
                    bf16=False,
                    logger=log,
                )
                seconds = time.perf_counter() - t0
                after = greedy_accuracy(str(ckpt), {"heldout": heldout, "seen": seen, "unseen": unseen}, funcs[0])
                rec = {
                    "prompts": n,
                    "seed": seed,
                    "visits_per_prompt": round(args.steps * cfg.prompts_per_step / n, 2),
                    "reward": [round(x, 3) for x in quarter_means([h["reward"] for h in summary["history"]])],
                    "heldout": [round(held_before, 3), round(after["heldout"], 3)],
                    "trained": [round(seen_before, 3), round(after["seen"], 3)],
                    "unseen_pool": [round(unseen_before, 3), round(after["unseen"], 3)],
                    "train_s": round(seconds, 1),
                }
            records.append(rec)
            print(
                f"{n:4d} prompts ({rec['visits_per_prompt']:g} visits each) seed {seed}: training reward "
                f"{rec['reward'][0]:.3f} -> {rec['reward'][1]:.3f}; greedy accuracy before -> after: held-out "
                f"{rec['heldout'][0]:.3f} -> {rec['heldout'][1]:.3f}, trained prompts {rec['trained'][0]:.3f} -> "
                f"{rec['trained'][1]:.3f}, unseen pool {rec['unseen_pool'][0]:.3f} -> {rec['unseen_pool'][1]:.3f}",
                flush=True,
            )
    print(json.dumps(records))


if __name__ == "__main__":
    main()
