"""Does DPO (or RL) help the demo? Runs the demo pipeline once per training variant and prints accuracy per round.

Every variant starts from the same base model and data and differs only in its training section, so
the held-out accuracy after each round is directly comparable (150 prompts: about +-4 points of noise).

Run:  .venv/bin/python bench/dpo_ablation.py [--rounds 3] [--seeds 0,1,2] [--variants sft-only,dpo-rpo]
      .venv/bin/python bench/dpo_ablation.py --task instruct --rounds 1 --seeds 0,1,2   # SmolLM2, configs/instruct.yaml
Each seed changes the prompt draw, the sampling and the training order (the base model stays the same).
Last line: one JSON object {variant: {seed: [candidate accuracy per round]}, ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from configs.quiet import apply_defaults  # noqa: E402

apply_defaults()

# Each variant overrides the demo's training section; a "selection" key overrides its selection section.
_REPLAY = {"replay": {"enabled": True, "share": 1.0, "cap": 480}}
_GENTLER = [{"from_round": 2, "learning_rate": 5e-5}]  # SFT from round 2 on; the demo's round 1 uses 1e-4
_GENTLE_SFT = [{"from_round": 2, "learning_rate": 2e-5}]  # the demo: SFT 1e-4 and DPO 2e-5 in every round
_GENTLE_DPO = [{"from_round": 2, "learning_rate": 5e-6}]
# GRPO after DPO on 64 of the round's prompts, each seen 5 times (40 steps x 8 prompts), or in one pass over
# fresh prompts (max_prompts: null): README, "RL on verifiable rewards" (GRPO's reward rises on prompts it sees again).
_RL = {"enabled": True, "num_generations": 8, "prompts_per_step": 8, "max_steps": 40, "max_prompts": 64}
_RL |= {"learning_rate": 2e-5, "max_completion_length": 8}


def _avg(weight_new: float, from_round: int = 2) -> dict:
    """An averaging section: the candidate is weight_new x the trained weights + the rest x the policy."""
    return {"enabled": True, "parents": "policy", "weight_new": weight_new, "from_round": from_round}


VARIANTS: dict[str, dict] = {
    "demo": {},  # configs/demo.yaml as it is: 3 pairs per prompt, averaged from round 2 with weight_new 0.3
    # Every variant but `demo` runs as the demo did before: without averaging and with one DPO pair per prompt,
    # unless it sets them (see main).
    "demo-no-avg": {},
    "demo-rl": {"rl": _RL},
    "demo-rl-one-pass": {"rl": {**_RL, "max_prompts": None}},
    "demo-rl-lr1e-5": {"rl": {**_RL, "learning_rate": 1e-5}},
    "demo-rl-128": {"rl": {**_RL, "max_prompts": 128}},
    "demo-avg": {"averaging": _avg(0.5, from_round=1)},
    "demo-avg-r2": {"averaging": _avg(0.5)},
    "demo-avg-r2-w07": {"averaging": _avg(0.7)},
    "demo-gentle": {"sft": {"schedule": _GENTLE_SFT}, "dpo": {"schedule": _GENTLE_DPO}},
    "demo-gentle-avg-r2": {
        "sft": {"schedule": _GENTLE_SFT},
        "dpo": {"schedule": _GENTLE_DPO},
        "averaging": _avg(0.5),
    },
    "demo-avg-r2-w02": {"averaging": _avg(0.2)},
    # Rounds 2 on barely move the weights: does the round-2 drop come from what is learned, or from the path?
    "demo-still-r2": {
        "sft": {"schedule": [{"from_round": 2, "learning_rate": 1e-9}]},
        "dpo": {"schedule": [{"from_round": 2, "learning_rate": 1e-9}]},
    },
    "demo-rl-avg-r2": {
        "rl": _RL,
        "averaging": _avg(0.5),
    },
    "demo-rl-avg": {"rl": _RL, "averaging": _avg(0.5, from_round=1)},
    # Levers on top of averaging (weight_new 0.3 from round 2): more pairs per prompt (each a different wrong
    # answer), a second DPO epoch. `demo-pairs3` is the demo today.
    "demo-pairs1": {"averaging": _avg(0.3)},  # the demo before it took 3 pairs per prompt
    "demo-pairs3": {"selection": {"pairs_per_prompt": 3}, "averaging": _avg(0.3)},
    "demo-dpo-2ep": {"dpo": {"epochs": 2}, "averaging": _avg(0.3)},
    "demo-pairs7": {"selection": {"pairs_per_prompt": 7}, "averaging": _avg(0.3)},
    "demo-pairs3-dpo-2ep": {"selection": {"pairs_per_prompt": 3}, "dpo": {"epochs": 2}, "averaging": _avg(0.3)},
    "demo-pairs3-no-avg": {"selection": {"pairs_per_prompt": 3}},
    "demo-pairs3-dpo-2ep-r1": {  # two DPO epochs in round 1 only
        "selection": {"pairs_per_prompt": 3},
        "dpo": {"epochs": 2, "schedule": [{"from_round": 2, "epochs": 1}]},
        "averaging": _avg(0.3),
    },
    "demo-sft-only": {"dpo": {"enabled": False}},
    "demo-sft-only-avg": {  # the demo without DPO
        "dpo": {"enabled": False},
        "averaging": _avg(0.3),
    },
    "replay": {"selection": _REPLAY},
    "replay-sft-only": {"selection": _REPLAY, "dpo": {"enabled": False}},
    "replay-gentler": {"selection": _REPLAY, "sft": {"schedule": _GENTLER}},
    "replay-gentler-sft-only": {"selection": _REPLAY, "sft": {"schedule": _GENTLER}, "dpo": {"enabled": False}},
    "sft-only": {"dpo": {"enabled": False}},
    "dpo-sigmoid": {"dpo": {"loss_types": ["sigmoid"], "learning_rate": 5e-6}},
    "dpo-rpo": {"dpo": {"loss_types": ["sigmoid", "sft"], "learning_rate": 5e-6}},
    "dpo-rpo-lr5e-5": {"dpo": {"loss_types": ["sigmoid", "sft"], "learning_rate": 5e-5}},
    "dpo-sigmoid-lr5e-5": {"dpo": {"loss_types": ["sigmoid"], "learning_rate": 5e-5}},
    "dpo-ipo": {"dpo": {"loss_types": ["ipo"], "learning_rate": 5e-6}},
    "sft-1e-4-only": {"sft": {"learning_rate": 1e-4}, "dpo": {"enabled": False}},
    "sft-1e-4-dpo-rpo": {
        "sft": {"learning_rate": 1e-4},
        "dpo": {"loss_types": ["sigmoid", "sft"], "learning_rate": 5e-6},
    },
    "sft-1e-4-dpo-rpo-lr2e-5": {
        "sft": {"learning_rate": 1e-4},
        "dpo": {"loss_types": ["sigmoid", "sft"], "learning_rate": 2e-5},
    },
    "sft-1e-4-dpo-rpo-lr1e-5": {
        "sft": {"learning_rate": 1e-4},
        "dpo": {"loss_types": ["sigmoid", "sft"], "learning_rate": 1e-5},
    },
    "sft-1e-4-1ep-dpo-rpo-lr2e-5": {
        "sft": {"learning_rate": 1e-4, "epochs": 1},
        "dpo": {"loss_types": ["sigmoid", "sft"], "learning_rate": 2e-5},
    },
    "sft-1e-4-dpo-sigmoid-lr2e-5": {
        "sft": {"learning_rate": 1e-4},
        "dpo": {"loss_types": ["sigmoid"], "learning_rate": 2e-5},
    },
}


# The instruct demo (configs/instruct.yaml, SmolLM2-135M-Instruct): round 1 takes about 7 minutes on 2 quiet
# cores (427 s), 4 without DPO (216-245 s).
INSTRUCT_VARIANTS: dict[str, dict] = {
    "instruct": {},  # configs/instruct.yaml as it is
    "instruct-sft-only": {"dpo": {"enabled": False}},
}
TASKS = {"addition": ("demo", VARIANTS), "instruct": ("instruct", INSTRUCT_VARIANTS)}


def _prepare(task: str, home: Path) -> tuple[Path, dict]:
    """Build (or find cached) the task's base model and data in `home`; return the model and the raw config."""
    import yaml

    from configs import DEMO_CONFIG, INSTRUCT_CONFIG

    if task == "instruct":
        from demo.instruct_task import write_instruct_data
        from demo.smollm2 import convert_base_model

        write_instruct_data(home / "instruct" / "data")
        return convert_base_model(home / "instruct" / "base-model"), yaml.safe_load(INSTRUCT_CONFIG.read_text())
    from demo.base_model import build_base_model
    from demo.task import write_demo_data

    write_demo_data(home / "demo" / "data")
    return build_base_model(home / "demo" / "base-model"), yaml.safe_load(DEMO_CONFIG.read_text())


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def rl_reward_trend(metrics: dict, window: int = 10) -> str:
    """ "first -> last" mean training reward of a round's RL steps (their first and last `window`), or "".

    >>> rl_reward_trend({f"train/rl/reward_mean/{i:04d}": v for i, v in enumerate([0.5, 0.7, 0.8, 0.9], 1)}, 2)
    '0.600->0.850'
    """
    steps = sorted((k, v) for k, v in metrics.items() if k.startswith("train/rl/reward_mean/"))
    if not steps:
        return ""
    first, last = [v for _, v in steps[:window]], [v for _, v in steps[-window:]]
    return f"{sum(first) / len(first):.3f}->{sum(last) / len(last):.3f}"


def main() -> None:
    from configs import parse_config
    from flows import reaper
    from flows.pipeline import pipeline_flow
    from storage.runtime import close_runtimes
    from tasks.generation import close_engines

    p = argparse.ArgumentParser()
    p.add_argument("--task", choices=sorted(TASKS), default="addition", help="addition: configs/demo.yaml")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variants", default=None, help="comma-separated; default: all of the task's")
    p.add_argument("--seeds", default="0")
    p.add_argument(
        "--home", default=os.environ.get("FLYWHEEL_HOME", ".flywheel"), help="where the demo base model is cached"
    )
    args = p.parse_args()
    reaper.start()  # a killed bench leaves no vLLM engine or Prefect server behind
    home = Path(args.home).resolve()
    own, variants = TASKS[args.task]
    unknown = sorted(set((args.variants or "").split(",")) - set(variants) - {""})
    if unknown:
        p.error(f"unknown --variants for --task {args.task}: {unknown}; known: {sorted(variants)}")
    base, raw = _prepare(args.task, home)
    results: dict[str, dict[int, list[float]]] = {}
    finals: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="dpo-ablation-") as tmp:
        for name in (args.variants or ",".join(variants)).split(","):
            for seed in [int(x) for x in args.seeds.split(",")]:
                run_home = Path(tmp) / f"{name}-{seed}"
                variant = dict(variants[name])
                selection = variant.pop("selection", {})
                if name != own and args.task == "addition":  # as the demo was: not averaged, one pair per prompt
                    variant.setdefault("averaging", {"enabled": False})
                    selection = {"pairs_per_prompt": 1, **selection}
                seeds = {
                    "selection": selection,
                    "training": {**variant, "seed": seed},
                    "curation": {"seed": seed},
                    "generation": {"sampling": {"seed": seed}},
                }
                cfg_dict = _merge(
                    raw,
                    {
                        **seeds,
                        "pipeline": name,
                        "base_model": str(base),
                        "storage": {"uri": f"file://{run_home}/store"},
                    },
                )
                cfg = parse_config(cfg_dict, f"variant {name}", home=str(home))
                cfg = cfg.model_copy(update={"home": str(run_home)})
                t0 = time.perf_counter()
                reports = pipeline_flow(cfg, args.rounds)
                acc = [round(r.metrics["eval/accuracy/candidate"], 4) for r in reports]
                last = reports[-1].metrics
                final = last["eval/accuracy/candidate"] if reports[-1].promoted else last["eval/accuracy/policy"]
                results.setdefault(name, {})[seed] = acc
                finals.setdefault(name, []).append(final)
                trends = [t for r in reports if (t := rl_reward_trend(r.metrics))]
                print(
                    f"{name:24s} seed {seed}  candidate accuracy per round {acc}  policy after: {final:.3f}"
                    + (f"  RL training reward per round {trends}" if trends else "")
                    + f"  ({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
    print("\nvariant                   policy accuracy after the last round (mean over seeds, min-max)")
    for name, values in finals.items():
        mean = sum(values) / len(values)
        print(f"{name:24s}  {100 * mean:5.1f} %  ({100 * min(values):.1f}-{100 * max(values):.1f})")
    close_engines()
    close_runtimes()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
