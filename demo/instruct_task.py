"""The instruct demo's task: precise instruction following, as in Tülu 3's IF data (IFEval's taxonomy).

A prompt is a base request ("Write a short story about a lighthouse keeper.") followed by one or two
verifiable constraints from Google's IFEval instruction registry, with their arguments drawn at random
and their wording written by the registry itself (`build_description`). Rows are stored in IFEval's own
format (`prompt`, `instruction_id_list`, `kwargs`, `key`), so real IFEval or Tülu-3 IF data loads the
same way, and the `ifeval` scorer and eval metric check them with the registry's checkers.

The held-out set never shares a base request with the pool's own prompts: its topics are a disjoint list.
Nor does it share a constraint combination (instruction ids with their arguments) with any pool prompt.
Every row also has its `request`, which the eval set names as its `decontam_field`: all prompts share the
registry's instruction wording by design, so decontamination compares base requests. The pool ends with
N_LEAKS planted leaks, held-out requests under other constraints, which curation must catch.

Write the data files:  python -m demo.instruct_task --out data/instruct [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path

from demo.task import write_jsonl

TEMPLATE = "ifeval-synth-v1"
N_LEAKS = 6

# Short tasks: a 135 M-parameter model rambles past any completion budget on open ones ("Write a blog
# post"), and a cut-off answer is never trained on, so open requests would leave little to select.
REQUESTS = [
    "Write a short story about {t} in a few sentences.",
    "Describe {t} in two or three sentences.",
    "Write a four-line poem about {t}.",
    "Give three short tips for someone interested in {t}.",
    "Write a short paragraph about {t}.",
    "Explain {t} to a ten-year-old in a few sentences.",
    "Write a short email to a friend about {t}.",
    "Write a two-sentence product description for a book about {t}.",
    "Write a short diary entry about a day with {t}.",
    "Write a short toast about {t}.",
]

TRAIN_TOPICS = [
    "a lighthouse keeper",
    "the ocean",
    "a rainy afternoon",
    "a lost cat",
    "the first day of school",
    "a mountain village",
    "a robot that learns to paint",
    "autumn leaves",
    "a busy train station",
    "an old bookshop",
    "a garden in spring",
    "a camping trip",
    "the night sky",
    "a small bakery",
    "a chess tournament",
    "a city at dawn",
    "a friendly dragon",
    "a long road trip",
    "a birthday party",
    "a snowstorm",
    "a music festival",
    "a farmer's market",
    "a sailing boat",
    "a quiet library",
    "a hiking trail",
    "a science fair",
    "a football match",
    "a family dinner",
    "a bicycle ride",
    "a summer holiday",
    "a museum visit",
    "a coffee shop",
    "a thunderstorm",
    "a treehouse",
    "a street musician",
    "a desert island",
    "a space station",
    "a winter market",
    "a river crossing",
    "a kitchen experiment",
]
HELDOUT_TOPICS = [
    "a volcano",
    "a honeybee colony",
    "an abandoned castle",
    "a jazz club",
    "a polar research base",
    "a cooking competition",
    "a lunar eclipse",
    "a fishing village",
    "a paper airplane",
    "a school play",
]

KEYWORDS = ["light", "journey", "memory", "color", "friend", "silence", "window", "morning", "stone", "gift"]
FORBIDDEN = ["very", "really", "beautiful", "amazing", "good", "nice"]
END_PHRASES = [
    "Is there anything else I can help with?",
    "Let me know if you have additional questions.",
    "That is all.",
]


def _choice(rng: random.Random, xs):
    return xs[rng.randrange(len(xs))]


# instruction id -> its arguments, drawn from `rng`. Only ids whose checkers need no downloaded data and
# that a 135 M-parameter chat model can sometimes meet when sampled (so rejection sampling finds examples).
ARGS: dict[str, Callable[[random.Random], dict]] = {
    "punctuation:no_comma": lambda rng: {},
    "change_case:english_lowercase": lambda rng: {},
    "change_case:english_capital": lambda rng: {},
    "length_constraints:number_words": lambda rng: _choice(
        rng,
        [{"num_words": n, "relation": "less than"} for n in (30, 40, 50, 60, 80)]
        + [{"num_words": n, "relation": "at least"} for n in (20, 30, 40)],
    ),
    "startend:end_checker": lambda rng: {"end_phrase": _choice(rng, END_PHRASES)},
    "startend:quotation": lambda rng: {},
    "detectable_format:title": lambda rng: {},
    "keywords:existence": lambda rng: {"keywords": sorted(rng.sample(KEYWORDS, rng.randint(1, 2)))},
    "keywords:forbidden_words": lambda rng: {"forbidden_words": sorted(rng.sample(FORBIDDEN, 2))},
    "detectable_content:postscript": lambda rng: {"postscript_marker": _choice(rng, ["P.S.", "P.P.S"])},
    "detectable_format:number_highlighted_sections": lambda rng: {"num_highlights": rng.randint(1, 3)},
    "detectable_content:number_placeholders": lambda rng: {"num_placeholders": rng.randint(1, 2)},
    "detectable_format:number_bullet_lists": lambda rng: {"num_bullets": rng.randint(2, 4)},
    "keywords:frequency": lambda rng: {
        "keyword": _choice(rng, KEYWORDS),
        "frequency": rng.randint(2, 3),
        "relation": "at least",
    },
}


def _conflicts() -> dict[str, set[str]]:
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_CONFLICTS

    return {k: set(v) for k, v in INSTRUCTION_CONFLICTS.items()}


def instruction_text(instruction_id: str, kwargs: dict) -> str:
    """The registry's own wording of one instruction with these arguments."""
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    return INSTRUCTION_DICT[instruction_id](instruction_id).build_description(**kwargs)


def _draw(rng: random.Random, request: str, n_constraints: int, conflicts: dict[str, set[str]]) -> dict:
    ids: list[str] = []
    while len(ids) < n_constraints:
        candidate = _choice(rng, sorted(ARGS))
        if candidate not in ids and not any(candidate in conflicts.get(i, ()) for i in ids):
            ids.append(candidate)
    kwargs = [ARGS[i](rng) for i in ids]
    prompt = " ".join([request] + [instruction_text(i, k) for i, k in zip(ids, kwargs)])
    return {"prompt": prompt, "instruction_id_list": ids, "kwargs": kwargs, "request": request}


def combination(row: dict) -> str:
    """A row's constraint combination (ids with arguments, order-free): what held-out rows never share."""
    return json.dumps(sorted(zip(row["instruction_id_list"], map(json.dumps, row["kwargs"]))), sort_keys=True)


def make_prompts(seed: int = 0, pool_size: int = 600, heldout_size: int = 80) -> tuple[list[dict], list[dict]]:
    """(pool, heldout) in IFEval's format; each row also has `key` and `template`.

    Pool prompts carry one constraint (two thirds) or two; held-out prompts likewise, on HELDOUT_TOPICS
    only, and with no constraint combination that any pool prompt has. The pool's last N_LEAKS rows are
    the planted leaks (pool_size includes them).
    """
    rng, conflicts = random.Random(seed), _conflicts()

    def rows(topics: list[str], size: int, avoid: set[str], key0: int) -> list[dict]:
        out, seen = [], set()
        requests = [r.format(t=t) for t in topics for r in REQUESTS]
        while len(out) < size:
            row = _draw(rng, _choice(rng, requests), 1 if rng.random() < 2 / 3 else 2, conflicts)
            combo = combination(row)
            if combo in avoid or row["prompt"] in seen:
                continue
            seen.add(row["prompt"])
            out.append({"key": key0 + len(out), **row, "template": TEMPLATE})
        return out

    pool = rows(TRAIN_TOPICS, pool_size - N_LEAKS, set(), 0)
    heldout = rows(HELDOUT_TOPICS, heldout_size, {combination(r) for r in pool}, 100_000)
    leaks = [_draw(rng, heldout[i]["request"], 1, conflicts) for i in rng.sample(range(heldout_size), N_LEAKS)]
    pool += [{"key": len(pool) + i, **row, "template": "planted-leak"} for i, row in enumerate(leaks)]
    return pool, heldout


def write_instruct_data(out_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write pool.jsonl (600 prompts, N_LEAKS of them planted leaks) and heldout.jsonl (80 prompts) into
    `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pool, heldout = make_prompts(seed)
    paths = {"pool": out_dir / "pool.jsonl", "heldout": out_dir / "heldout.jsonl"}
    write_jsonl(paths["pool"], pool)
    write_jsonl(paths["heldout"], heldout)
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="Directory to write the two files into.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the prompts and the split.")
    args = parser.parse_args()
    for name, path in write_instruct_data(args.out, args.seed).items():
        print(f"{name:8s} {path}")
