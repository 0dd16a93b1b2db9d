"""Select: scored completions become training data, best-of-N SFT rows and chosen/rejected DPO pairs.

SFT rows are TRL `messages` conversations; DPO rows are TRL conversational `prompt/chosen/rejected`.
Both keep the ids of the completions they came from, so every training row has lineage. Rows that
overlap an eval set are dropped (generated text can leak too); the eval sets are then external inputs.

Run alone:  python -m tasks.select --config configs/demo.yaml --round 1 [--home DIR] [--force]
"""

from __future__ import annotations

from collections import Counter, defaultdict

import pyarrow as pa

from configs.schema import FlywheelConfig, SelectionConfig
from storage import ids
from tasks.curation.decontam import decontaminate_rows
from tasks.curation.inputs import eval_index
from tasks.curation.store_inputs import eval_set_inputs
from tasks.scoring import SCORER_ERRORS
from tasks.selection.replay import replay_rows
from tasks.stage import Json, StageContext, StageOutput, Step, Table, stage


def combined_rewards(score_rows: list[dict]) -> dict[str, float | None]:
    """completion_id -> its combined reward, as the score stage computed it (scoring.combine); None: a scorer
    the reward reads failed on it (scoring.on_scorer_error: exclude), so it is never selected."""
    return {s["completion_id"]: s["reward"] for s in score_rows}


def tie_breakers(score_rows: list[dict], scorers: list[str]) -> dict[str, tuple[float, ...]]:
    """completion_id -> the values of the tie-break scorers, in order (missing, or the scorer failed on it:
    -inf, ranks last; a failed scorer's value is a placeholder, not a judgement)."""
    if not scorers:
        return {}
    # Every scored completion gets a tuple: one left out would sort first in _best_first, not last.
    values: dict[str, dict[str, float]] = {s["completion_id"]: {} for s in score_rows}
    for s in score_rows:
        if s["scorer"] in scorers and s.get("status") not in SCORER_ERRORS:
            values[s["completion_id"]][s["scorer"]] = s["value"]
    return {cid: tuple(v.get(name, float("-inf")) for name in scorers) for cid, v in values.items()}


def _group(completions: list[dict], rewards: dict[str, float | None]) -> dict[str, list[dict]]:
    """Completions per prompt, without those excluded for a failed scorer (reward None): neither chosen nor
    rejected, as their reward is no judgement."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for c in completions:
        if rewards[c["completion_id"]] is not None:
            groups[c["prompt_id"]].append(c)
    return groups


def _best_first(group: list[dict], rewards: dict[str, float], ties: dict[str, tuple] | None = None) -> list[dict]:
    """Highest reward first; ties go to the configured tie-break scorers (scoring.tie_break), then to the
    answer the models gave most often (their most confident answer), then to the shorter text, then to
    the completion id, so the order is deterministic."""
    counts = Counter(c["completion"].strip() for c in group)
    ties = ties or {}
    return sorted(
        group,
        key=lambda c: (
            -rewards[c["completion_id"]],
            tuple(-v for v in ties.get(c["completion_id"], ())),
            -counts[c["completion"].strip()],
            len(c["completion"].strip()),
            c["completion_id"],
        ),
    )


def _finished(group: list[dict], allow_truncated: bool) -> list[dict]:
    """The completions that may be trained toward: those not cut off at max_tokens, unless allowed."""
    return group if allow_truncated else [c for c in group if c.get("finish_reason") != "length"]


def select_sft(
    completions: list[dict],
    rewards: dict[str, float | None],
    min_reward: float,
    ties: dict[str, tuple] | None = None,
    allow_truncated: bool = False,
) -> list[dict]:
    """Best-of-N: per prompt, the highest-reward completion (ties: see `_best_first`) if it reaches `min_reward`.

    With a generation committee the N completions come from several models: the best of all wins (iTeC).
    A truncated completion (finish_reason `length`) is never picked unless `allow_truncated`.
    """
    rows = []
    for prompt_id, group in sorted(_group(completions, rewards).items()):
        eligible = _finished(group, allow_truncated)
        if not eligible:
            continue
        best = _best_first(eligible, rewards, ties)[0]
        if rewards[best["completion_id"]] < min_reward:
            continue
        rows.append(
            {
                "row_id": ids.hash_obj(["sft", best["completion_id"]], ids.ROW_ID_LEN),
                "messages": [*_prompt_messages(best), {"role": "assistant", "content": best["completion"].strip()}],
                "prompt_id": prompt_id,
                "completion_id": best["completion_id"],
                "reward": rewards[best["completion_id"]],
                "model": best.get("model") or "policy",
                **_origin(best),
            }
        )
    return rows


def select_pairs(
    completions: list[dict],
    rewards: dict[str, float | None],
    min_margin: float,
    per_prompt: int,
    ties: dict[str, tuple] | None = None,
    allow_truncated: bool = False,
) -> list[dict]:
    """DPO pairs: the best completion against the worst ones, when their reward margin is large enough.

    Among equally bad completions the most frequent wrong answer is rejected first: it is the
    mistake the policy is most likely to make again. A truncated completion can be rejected, and is
    chosen only with `allow_truncated`.
    """
    rows = []
    for prompt_id, group in sorted(_group(completions, rewards).items()):
        eligible = _finished(group, allow_truncated)
        if not eligible:
            continue
        counts = Counter(c["completion"].strip() for c in group)
        chosen = _best_first(eligible, rewards, ties)[0]
        worst_first = sorted(
            group, key=lambda c: (rewards[c["completion_id"]], -counts[c["completion"].strip()], c["completion_id"])
        )
        seen_texts: set[str] = set()
        for rejected in worst_first:
            margin = rewards[chosen["completion_id"]] - rewards[rejected["completion_id"]]
            if len(seen_texts) >= per_prompt or margin < min_margin:
                break
            text = rejected["completion"].strip()
            if text in seen_texts or text == chosen["completion"].strip():
                continue
            seen_texts.add(text)
            rows.append(
                {
                    "row_id": ids.hash_obj(
                        ["pair", chosen["completion_id"], rejected["completion_id"]], ids.ROW_ID_LEN
                    ),
                    "prompt": _prompt_messages(chosen),
                    "chosen": [{"role": "assistant", "content": chosen["completion"].strip()}],
                    "rejected": [{"role": "assistant", "content": text}],
                    "prompt_id": prompt_id,
                    "chosen_id": chosen["completion_id"],
                    "rejected_id": rejected["completion_id"],
                    "margin": margin,
                    "chosen_model": chosen.get("model") or "policy",
                    "rejected_model": rejected.get("model") or "policy",
                    **_origin(chosen),
                }
            )
    return rows


def _prompt_messages(c: dict) -> list[dict]:
    system = [{"role": "system", "content": c["system"]}] if c.get("system") else []
    return [*system, {"role": "user", "content": c["prompt"]}]


def _origin(c: dict) -> dict:
    """Source, license and tags of the prompt a training row came from: they travel with every row."""
    return {"source": c["source"], "license": c["license"], "tags": c.get("tags") or []}


def sft_texts(row: dict) -> list[str]:
    return [m["content"] for m in row["messages"]]


def pair_texts(row: dict) -> list[str]:
    return [m["content"] for part in ("prompt", "chosen", "rejected") for m in row[part]]


def selection_summary(n_prompts: int, sft: list[dict], pairs: list[dict]) -> dict:
    n = max(n_prompts, 1)
    return {
        "rows_in": n_prompts,
        "rows_out": len(sft) + len(pairs),
        "metrics": {
            "select/sft_rows": len(sft),
            "select/pairs": len(pairs),
            "select/sft_yield": len(sft) / n,
            "select/pair_yield": len({p["prompt_id"] for p in pairs}) / n,
            # With a committee: which model wrote the kept answers (iTeC keeps the best across models).
            **{f"select/sft_from/{m}": k for m, k in Counter(r.get("model", "policy") for r in sft).items()},
        },
    }


@stage("select-training-data", returns=("sft", "pairs"))
def select_task(
    cfg: FlywheelConfig, round_num: int, completions_id: str, scores_id: str, replay: dict[str, list[str]] | None = None
) -> Step:
    """Best-of-N SFT rows and DPO pairs of round `round_num`; returns (sft table id, pairs table id).
    `replay`: {"sft": [...], "pairs": [...]}, earlier rounds' tables, newest first (see replay_tables)."""
    inputs = {"completions": completions_id, "scores": scores_id}
    for kind, tables in (replay or {}).items():
        inputs.update({f"replay:{kind}:{i}": t for i, t in enumerate(tables)})
    if cfg.selection.decontaminate:
        inputs.update(eval_set_inputs(cfg))
    config = {
        "selection": cfg.selection.model_dump(mode="json"),
        "tie_break": cfg.scoring.tie_break,
        "decontam": [cfg.curation.decontam_ngram, cfg.curation.decontam_threshold],
    }
    return Step("select", config=config, inputs=inputs, run=lambda ctx: select(ctx, cfg, round_num))


def replay_tables(catalog, cfg: FlywheelConfig, round_num: int) -> dict[str, list[str]]:
    """The earlier rounds' SFT and pairs tables that selection.replay draws from, newest round first."""
    rp = cfg.selection.replay
    if not rp.enabled:
        return {}
    first = 1 if rp.rounds is None else max(1, round_num - rp.rounds)
    outs = [catalog.step_outputs(cfg.pipeline, r, "select") for r in range(round_num - 1, first - 1, -1)]
    kinds = ("sft", "pairs") if rp.pairs else ("sft",)
    return {k: [o[k] for o in outs if o.get(k)] for k in kinds}


def _replayed(ctx: StageContext, cfg: FlywheelConfig, round_num: int, kind: str, current: list[dict]) -> list[dict]:
    rp = cfg.selection.replay
    earlier = [ctx.rows(name) for name in sorted(ctx.inputs, key=_input_order) if name.startswith(f"replay:{kind}:")]
    return replay_rows(kind, current, earlier, round_num, rp.share, rp.cap, rp.floor) if earlier else []


def _input_order(name: str) -> tuple[str, int]:
    head, _, tail = name.rpartition(":")
    return (head, int(tail)) if tail.isdigit() else (name, 0)


def select(ctx: StageContext, cfg: FlywheelConfig, round_num: int) -> StageOutput:
    sel: SelectionConfig = cfg.selection
    completions, score_rows = ctx.rows("completions"), ctx.rows("scores")
    rewards = combined_rewards(score_rows)
    ties = tie_breakers(score_rows, cfg.scoring.tie_break)
    sft = select_sft(completions, rewards, sel.sft_min_reward, ties, sel.allow_truncated)
    pairs = select_pairs(completions, rewards, sel.pair_min_margin, sel.pairs_per_prompt, ties, sel.allow_truncated)
    n_prompts = len({c["prompt_id"] for c in completions})
    excluded = sum(rewards[c["completion_id"]] is None for c in completions)
    if excluded:
        ctx.log.warning("%d completions not selectable: a scorer failed on them (scoring.on_scorer_error)", excluded)
    # Replayed rows are checked against the eval sets again with this round's: the sets may have changed.
    sft += _replayed(ctx, cfg, round_num, "sft", sft)
    pairs += _replayed(ctx, cfg, round_num, "pairs", pairs)
    outputs, decontam_metrics = {}, {}
    if sel.decontaminate:
        index = eval_index(cfg)
        sft, sft_rep = decontaminate_rows(sft, sft_texts, index)
        pairs, pair_rep = decontaminate_rows(pairs, pair_texts, index)
        report = training_decontam_report(cfg, sft_rep, pair_rep)
        outputs["decontamination"] = Json(report, "decontamination-report")
        decontam_metrics = {
            "select/decontam/sft_removed": sft_rep["removed"],
            "select/decontam/pairs_removed": pair_rep["removed"],
        }
        if report["removed"]:
            ctx.log.warning(
                "dropped %d SFT rows and %d pairs that overlap an eval set: %s",
                sft_rep["removed"],
                pair_rep["removed"],
                report["by_eval_set"],
            )
    fresh = [r for r in sft if r.get("replay_of") is None], [p for p in pairs if p.get("replay_of") is None]
    summary = selection_summary(n_prompts, *fresh)
    n_sft_replay, n_pair_replay = len(sft) - len(fresh[0]), len(pairs) - len(fresh[1])
    if n_sft_replay or n_pair_replay:
        ctx.log.info("replay: %d SFT rows and %d pairs of earlier rounds", n_sft_replay, n_pair_replay)
    summary["metrics"] |= {"select/replayed_sft_rows": n_sft_replay, "select/replayed_pairs": n_pair_replay}
    summary["metrics"]["select/excluded_scorer_error"] = excluded
    summary["rows_out"] = len(sft) + len(pairs)
    # A replayed row's parent is the row it copies; a fresh row's are the completions it was made of.
    sft_edges = [(r["row_id"], r.get("replay_of") or r["completion_id"]) for r in sft]
    pair_edges = [(p["row_id"], p["replay_of"]) for p in pairs if p.get("replay_of")]
    pair_edges += [(p["row_id"], p[k]) for p in pairs if not p.get("replay_of") for k in ("chosen_id", "rejected_id")]
    outputs["sft"] = Table(_table(sft, SFT_SCHEMA), "sft", rows=sft_edges)
    outputs["pairs"] = Table(_table(pairs, PAIR_SCHEMA), "pairs", rows=pair_edges)
    return StageOutput(
        outputs,
        metrics={**summary["metrics"], **decontam_metrics},
        rows_in=summary["rows_in"],
        rows_out=summary["rows_out"],
    )


def training_decontam_report(cfg: FlywheelConfig, sft_rep: dict, pair_rep: dict) -> dict:
    """The same shape as curation's prompt report: removed rows per eval set and source, with examples."""
    by_eval_set: dict[str, dict[str, int]] = {e.name: {} for e in cfg.evaluation.eval_sets}
    for kind, rep in (("sft", sft_rep), ("pairs", pair_rep)):
        for name, by_source in rep["per_eval_set_source"].items():
            for source, n in by_source.items():
                key = f"{source} ({kind})"
                by_eval_set[name][key] = by_eval_set[name].get(key, 0) + n
    return {
        "stage": "training-data",
        "ngram": cfg.curation.decontam_ngram,
        "threshold": cfg.curation.decontam_threshold,
        "checked": sft_rep["rows_in"] + pair_rep["rows_in"],
        "removed": sft_rep["removed"] + pair_rep["removed"],
        "by_eval_set": by_eval_set,
        "examples": [
            {**ex, "rows": kind} for kind, rep in (("sft", sft_rep), ("pairs", pair_rep)) for ex in rep["examples"]
        ],
    }


_MSG = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
SFT_SCHEMA = pa.schema(
    [
        ("row_id", pa.string()),
        ("messages", _MSG),
        ("prompt_id", pa.string()),
        ("completion_id", pa.string()),
        ("reward", pa.float64()),
        ("model", pa.string()),
        ("source", pa.string()),
        ("license", pa.string()),
        ("tags", pa.list_(pa.string())),
        ("replay_of", pa.string()),  # the earlier round's row this one replays (None: selected this round)
    ]
)
PAIR_SCHEMA = pa.schema(
    [
        ("row_id", pa.string()),
        ("prompt", _MSG),
        ("chosen", _MSG),
        ("rejected", _MSG),
        ("prompt_id", pa.string()),
        ("chosen_id", pa.string()),
        ("rejected_id", pa.string()),
        ("margin", pa.float64()),
        ("chosen_model", pa.string()),
        ("rejected_model", pa.string()),
        ("source", pa.string()),
        ("license", pa.string()),
        ("tags", pa.list_(pa.string())),
        ("replay_of", pa.string()),  # the earlier round's row this one replays (None: selected this round)
    ]
)


def _table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    # An explicit schema keeps an empty selection a valid (typed) table instead of a schema-less one.
    return pa.Table.from_pylist(rows, schema=schema)


if __name__ == "__main__":
    from tasks.run_alone import run_alone

    run_alone(
        select_task,
        lambda rnd: {
            "completions_id": rnd.output("generate", "completions"),
            "scores_id": rnd.output("score", "scores"),
            "replay": replay_tables(rnd.catalog, rnd.cfg, rnd.round),
        },
    )
