"""Gated rewards cannot invert, and a scorer that could not judge is left out and counted, not scored 0:
hand-written completions through the real score and select functions, with configs/gpu-8b.yaml's settings."""

from __future__ import annotations

import pytest

from configs.scoring import MathScorerConfig, ScoringConfig
from tasks.score import score_completions
from tasks.scoring.verifiable import MathAnswerScorer
from tasks.select import combined_rewards, select_pairs, select_sft, tie_breakers
from tests.test_select import c


class Given:
    """A scorer whose results are given per completion id (a reward model's logits, a judge's failures)."""

    def __init__(self, scorer_id: str, results: dict):
        self.id, self.version, self.results = scorer_id, "1", results

    def __call__(self, rows):
        return [self.results[r["completion_id"]] for r in rows]


def _gpu_8b(tmp_path):
    from configs import CONFIG_DIR, load_config

    cfg = load_config(CONFIG_DIR / "gpu-8b.yaml", home=str(tmp_path))
    assert (cfg.scoring.combine, cfg.scoring.gate, cfg.scoring.tie_break) == ("gated", "math_answer", ["rm"])
    assert (cfg.selection.sft_min_reward, cfg.selection.pair_min_margin) == (1.0, 0.5)
    return cfg


def _select(cfg, comps, rm_logits):
    """Score `comps` (reference 5) with the config's verifier and a reward model giving `rm_logits`, then select."""
    from tasks.scoring import ScoreResult

    math_cfg, rm_cfg = cfg.scoring.scorers
    rm = Given(rm_cfg.id, {cid: ScoreResult(v, f"{v:.4f}", "ok") for cid, v in rm_logits.items()})
    scorers = [(MathAnswerScorer(math_cfg), math_cfg.weight), (rm, rm_cfg.weight)]
    score_rows, _, _ = score_completions([{**x, "answer": "5"} for x in comps], scorers, cfg.scoring)
    rewards, ties, sel = combined_rewards(score_rows), tie_breakers(score_rows, cfg.scoring.tie_break), cfg.selection
    sft = select_sft(comps, rewards, sel.sft_min_reward, ties, sel.allow_truncated)
    pairs = select_pairs(comps, rewards, sel.pair_min_margin, sel.pairs_per_prompt, ties, sel.allow_truncated)
    return rewards, sft, pairs


def test_gpu_8b_a_verified_answer_the_reward_model_dislikes_beats_a_wrong_one_it_likes(tmp_path):
    cfg = _gpu_8b(tmp_path)
    comps = [c("right", "p1", "The answer is 5"), c("wrong", "p1", "The answer is 6")]
    rewards, sft, pairs = _select(cfg, comps, {"right": -5.0, "wrong": 5.0})
    # 1 + 0.5 * sigmoid(-5) against 0 (with the raw logit it was 1 - 2.5 = -1.5: below the wrong answer)
    assert rewards == pytest.approx({"right": 1.0 + 0.5 * 0.0066929, "wrong": 0.0}, abs=1e-6)
    assert [r["completion_id"] for r in sft] == ["right"]  # kept: it reaches sft_min_reward 1.0
    assert [(p["chosen_id"], p["rejected_id"]) for p in pairs] == [("right", "wrong")]
    assert pairs[0]["margin"] == pytest.approx(1.0033465, abs=1e-6)


def test_gpu_8b_every_pass_outranks_every_fail_and_the_reward_model_orders_the_passes(tmp_path):
    cfg = _gpu_8b(tmp_path)
    comps = [
        c("r1", "p1", "5"),
        c("r2", "p1", "It is 5"),
        c("r3", "p1", "So 5"),
        c("w1", "p1", "6"),
        c("w2", "p1", "7"),
    ]
    rewards, sft, pairs = _select(cfg, comps, {"r1": -9.0, "r2": 3.0, "r3": -2.5, "w1": 40.0, "w2": 9.0})
    assert min(rewards[r] for r in ("r1", "r2", "r3")) > 1.0 > max(rewards[w] for w in ("w1", "w2"))
    assert rewards["r2"] > rewards["r3"] > rewards["r1"]
    assert [r["completion_id"] for r in sft] == ["r2"]  # the reward model picks among verified answers
    (pair,) = pairs
    assert pair["chosen_id"] == "r2" and pair["rejected_id"] in ("w1", "w2") and pair["margin"] > 1.0


def _judge_timed_out(on_scorer_error):
    """p1: c1a right but its judge timed out, c1b right (judge 0.6), c1c wrong. p2: c2a right, judge timed out;
    c2b wrong (judge 0.4). Weighted sum of the verifier and the judge (weight 0.5)."""
    from tasks.scoring import ScoreResult
    from tasks.scoring.judge import ChatReply, pointwise_results

    ids = ["c1a", "c1b", "c1c", "c2a", "c2b"]
    replies = [ChatReply(None, "timeout", "read timed out"), ChatReply("6"), ChatReply("2")]
    replies += [ChatReply(None, "timeout", "read timed out"), ChatReply("4")]
    judged, _ = pointwise_results(replies)
    comps = [c("c1a", "p1", "5"), c("c1b", "p1", "It is 5"), c("c1c", "p1", "6"), c("c2a", "p2", "15")]
    comps.append(c("c2b", "p2", "14"))
    answers = {"p1": "5", "p2": "15"}
    cfg = ScoringConfig(
        scorers=[{"kind": "math_answer"}, {"kind": "judge", "name": "judge", "weight": 0.5, "judge": {"model": "j"}}],
        on_scorer_error=on_scorer_error,
    )
    judge = Given("judge", dict(zip(ids, judged)))
    assert judge([{"completion_id": "c1a"}]) == [ScoreResult(0.0, "read timed out", "timeout")]
    rows = [{**x, "answer": answers[x["prompt_id"]]} for x in comps]
    score_rows, _, _ = score_completions(rows, [(MathAnswerScorer(MathScorerConfig()), 1.0), (judge, 0.5)], cfg)
    return comps, score_rows


def _stage_metrics(comps, score_rows, home):
    """The select stage body on these rows (gpu-free, no eval sets to decontaminate against)."""
    import logging

    from configs import CONFIG_DIR, load_config
    from tasks.select import select

    class Ctx:
        inputs: dict = {}
        log = logging.getLogger("test")

        def rows(self, name, columns=None):
            return {"completions": comps, "scores": score_rows}[name]

    cfg = load_config(CONFIG_DIR / "demo.yaml", home=str(home))
    cfg = cfg.model_copy(update={"selection": cfg.selection.model_copy(update={"decontaminate": False})})
    return select(Ctx(), cfg, 1).metrics


def test_completions_a_judge_timed_out_on_are_excluded_and_counted(tmp_path):
    comps, score_rows = _judge_timed_out("exclude")
    rewards = combined_rewards(score_rows)
    assert rewards == pytest.approx({"c1a": None, "c1b": 1.3, "c1c": 0.1, "c2a": None, "c2b": 0.2})
    sft = select_sft(comps, rewards, 1.0)
    pairs = select_pairs(comps, rewards, 0.5, 2)
    assert [r["completion_id"] for r in sft] == ["c1b"]  # p2's only right answer was never judged
    assert [(p["chosen_id"], p["rejected_id"]) for p in pairs] == [("c1b", "c1c")]  # c1a neither chosen nor rejected
    metrics = _stage_metrics(comps, score_rows, tmp_path)
    assert metrics["select/excluded_scorer_error"] == 2 and metrics["select/sft_rows"] == 1


def test_completions_a_judge_timed_out_on_score_zero_when_configured(tmp_path):
    comps, score_rows = _judge_timed_out("zero")
    rewards = combined_rewards(score_rows)
    assert rewards == pytest.approx({"c1a": 1.0, "c1b": 1.3, "c1c": 0.1, "c2a": 1.0, "c2b": 0.2})
    assert [r["completion_id"] for r in select_sft(comps, rewards, 1.0)] == ["c1b", "c2a"]
    pairs = select_pairs(comps, rewards, 0.5, 2)
    assert [(p["chosen_id"], p["rejected_id"]) for p in pairs] == [("c1b", "c1c"), ("c2a", "c2b")]
    assert _stage_metrics(comps, score_rows, tmp_path)["select/excluded_scorer_error"] == 0


def test_a_tie_break_scorer_that_failed_ranks_last_not_by_its_placeholder():
    # Two equal rewards: c1's reward model timed out (placeholder value 9.0), c2's scored 0.2.
    score_rows = [
        {"completion_id": "c1", "scorer": "rm", "value": 9.0, "status": "timeout", "reward": 1.0},
        {"completion_id": "c2", "scorer": "rm", "value": 0.2, "status": "ok", "reward": 1.0},
    ]
    comps = [c("c1", "p1", "a"), c("c2", "p1", "b")]
    ties = tie_breakers(score_rows, ["rm"])
    assert ties == {"c1": (float("-inf"),), "c2": (0.2,)}
    assert [r["completion_id"] for r in select_sft(comps, combined_rewards(score_rows), 1.0, ties)] == ["c2"]
