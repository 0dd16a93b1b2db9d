"""LLM-as-a-judge: a judge model rates each completion 1-10 (pointwise) or compares a prompt's completions two
at a time, each pair asked in both orders (pairwise; the value is the completion's win rate).

Configured as a `kind: judge` entry of scoring.scorers (configs/scoring.py). The judge runs in this process's
vLLM engine (backend `vllm`, a local model directory) or behind any OpenAI-compatible server (backend
`openai`: `vllm serve`, OpenAI, a gateway). With `structured: true` the answer is constrained to the valid
ones ("1".."10", "A"/"B"), so a judgement can never be unparseable; free-text answers are parsed, and an
answer that holds no clear verdict is a `parse_error`, never a silent score.

tasks/score.py builds it through tasks.scoring.build_scorer. To try a judge on a few rows by hand:
    scorer = JudgeScorer(JudgeScorerConfig(mode="pairwise", judge={"backend": "openai", "model": NAME,
                                                                   "base_url": "http://127.0.0.1:8000/v1"}))
    results = scorer(rows); print(scorer.metrics())
(`python -m tasks.generation.openai --base-url ... --model ... "hi"` checks an endpoint on its own.)
"""

from __future__ import annotations

import hashlib
import json
import re

from configs.scoring import JudgeScorerConfig
from tasks.generation.openai import ChatReply
from tasks.scoring import ScoreResult

PARSER_VERSION = 1  # bump when parse_score / parse_choice change what they accept

# One user message, no system turn: some chat templates (Gemma's, the demo model's) reject a system role,
# and the instruction reads the same either way. The row's own system prompt, if any, is shown as context.
POINTWISE_TEMPLATE = """You are judging an AI assistant's response to a user. Weigh {rubric}.
{system}
[User request]
{prompt}

[Assistant response]
{response}

Rate the response from 1 (worst) to 10 (best). Reply with the number only."""

PAIRWISE_TEMPLATE = """You are comparing two AI assistant responses to the same user request. Weigh {rubric}. \
Neither the order of the responses nor their length should sway you.
{system}
[User request]
{prompt}

[Response A]
{a}

[Response B]
{b}

Which response is better? Reply with the letter A or B only."""

SCORES = [str(i) for i in range(1, 11)]
LETTERS = ["A", "B"]
# JSON schemas for servers that constrain by response_format only (e.g. OpenAI): enums, not min/max, are the
# constraint every implementation supports.
SCORE_SCHEMA = {
    "type": "object",
    "properties": {"score": {"type": "integer", "enum": list(range(1, 11))}},
    "required": ["score"],
    "additionalProperties": False,
}
CHOICE_SCHEMA = {
    "type": "object",
    "properties": {"winner": {"type": "string", "enum": LETTERS}},
    "required": ["winner"],
    "additionalProperties": False,
}

_NUM = r"(\d+(?:\.\d+)?)"
# Tried in order; the first pattern that matches decides (several distinct values in it: ambiguous).
_SCORE_PATTERNS = [
    re.compile(r"\[\[\s*" + _NUM + r"\s*\]\]"),  # MT-Bench style [[7]]
    re.compile(r"(?i:\b(?:score|rating)\b)\s*(?:is|of|=)?\s*:?\s*" + _NUM),  # Score: 7, rating of 7
    re.compile(_NUM + r"\s*(?:/|out of)\s*10\b"),  # 7/10, 7 out of 10
    re.compile(r"^\W*" + _NUM + r"\W*$"),  # the whole answer is the number
]
_CHOICE_PATTERNS = [
    re.compile(r"\[\[\s*([AB])\s*\]\]"),
    re.compile(r"(?i:\b(?:response|winner|answer|choice|verdict)\b)\s*(?:is\s*)?:?\s*[\"'(\[]*([AB])\b"),
    re.compile(r"^\W*([AB])\W*$"),
]


def parse_score(text: str) -> float | None:
    """The 1-10 rating in a judge's answer, or None when there is none, it is out of range, or it is ambiguous.

    >>> [parse_score(t) for t in ["Score: 7", "7/10", '{"score": 3}', "[[8]]", " 10.", "I'd say 11", "Score: 0"]]
    [7.0, 7.0, 3.0, 8.0, 10.0, None, None]
    """
    obj = _json_object(text)
    if obj is not None:
        for key in ("score", "rating"):
            if key in obj:
                return _in_range(obj[key])
    for pattern in _SCORE_PATTERNS:
        found = {float(m) for m in pattern.findall(text)}
        if found:
            return _in_range(found.pop()) if len(found) == 1 else None
    return None


def parse_choice(text: str) -> str | None:
    """ "A" or "B" from a pairwise judge's answer, or None when it names neither or both.

    >>> [parse_choice(t) for t in ["A", "[[B]]", "Response B is better.", '{"winner": "A"}', "A or B", "a"]]
    ['A', 'B', 'B', 'A', None, None]
    """
    obj = _json_object(text)
    if obj is not None:
        for key in ("winner", "choice", "better"):
            if isinstance(obj.get(key), str):
                letter = obj[key].strip().removeprefix("Response").strip()
                return letter if letter in LETTERS else None
    for pattern in _CHOICE_PATTERNS:
        found = set(pattern.findall(text))
        if found:
            return found.pop() if len(found) == 1 else None
    return None


def _json_object(text: str) -> dict | None:
    try:
        obj = json.loads(text[text.index("{") : text.rindex("}") + 1])
    except ValueError:  # no braces, or not JSON between them
        return None
    return obj if isinstance(obj, dict) else None


def _in_range(value) -> float | None:
    try:
        score = float(value) if not isinstance(value, bool) else None  # JSON true is not a 1
    except (TypeError, ValueError):
        return None
    return score if score is not None and 1 <= score <= 10 else None


def judge_version(cfg: JudgeScorerConfig) -> str:
    """Changes whenever the same completion could be judged differently: model, prompt, mode, constraints."""
    template = POINTWISE_TEMPLATE if cfg.mode == "pointwise" else PAIRWISE_TEMPLATE
    key = [cfg.judge.model, template, cfg.rubric, cfg.mode, cfg.judge.structured, cfg.judge.temperature, PARSER_VERSION]
    return "judge-" + hashlib.sha256(json.dumps(key).encode()).hexdigest()[:12]


def _system_block(row: dict) -> str:
    return f"\n[System prompt the assistant was given]\n{row['system']}\n" if row.get("system") else ""


def pointwise_prompt(cfg: JudgeScorerConfig, row: dict) -> str:
    return POINTWISE_TEMPLATE.format(
        rubric=cfg.rubric, system=_system_block(row), prompt=row["prompt"], response=row["completion"]
    )


def pairwise_prompt(cfg: JudgeScorerConfig, row: dict, a: str, b: str) -> str:
    return PAIRWISE_TEMPLATE.format(rubric=cfg.rubric, system=_system_block(row), prompt=row["prompt"], a=a, b=b)


# --- pointwise ----------------------------------------------------------------------------------------------


def pointwise_results(answers: list[ChatReply]) -> tuple[list[ScoreResult], dict[str, float]]:
    """One ScoreResult per answer (value = score / 10) and reliability metrics.

    >>> replies = [ChatReply("7"), ChatReply("Score: 10"), ChatReply("no idea"), ChatReply(None, "timeout", "slow")]
    >>> res, m = pointwise_results(replies)
    >>> [(r.value, r.status) for r in res], m["parse_failure_rate"], m["error_rate"]
    ([(0.7, 'ok'), (1.0, 'ok'), (0.0, 'parse_error'), (0.0, 'timeout')], 0.25, 0.25)
    """
    results = []
    for a in answers:
        if a.text is None:
            results.append(ScoreResult(0.0, a.error, a.status))
            continue
        score = parse_score(a.text)
        results.append(
            ScoreResult(0.0, a.text, "parse_error") if score is None else ScoreResult(score / 10, a.text, "ok")
        )
    ok = [r.value * 10 for r in results if r.status == "ok"]
    metrics = _call_metrics(answers, sum(r.status == "parse_error" for r in results))
    if ok:
        metrics["mean_score"] = sum(ok) / len(ok)
    return results, metrics


def _call_metrics(answers: list[ChatReply], parse_failures: int) -> dict[str, float]:
    n = max(len(answers), 1)
    return {
        "calls": float(len(answers)),
        "parse_failure_rate": parse_failures / n,
        "error_rate": sum(a.text is None for a in answers) / n,
        "structured_fallback_rate": sum(a.fell_back for a in answers) / n,
    }


# --- pairwise -----------------------------------------------------------------------------------------------


def plan_pairs(texts: list[str], max_pairs: int) -> list[tuple[int, int]]:
    """Which of one prompt's completions to compare: pairs (i, j), i < j, of positions with distinct texts.

    Coverage first: disjoint neighbour pairs (0,1) (2,3) ... (with an odd count, the last one joins the one before
    it), then the pairs that link them (1,2) (3,4) ..., then neighbours two apart, and so on: `max_pairs` of at
    least half the distinct completions (rounded up) compares every one.
    Identical texts are compared once (through their first occurrence): comparing a text with itself would
    only measure position bias.

    >>> plan_pairs(["a", "b", "c", "d", "e"], 4), plan_pairs(["a", "a", "b"], 4), plan_pairs(["a", "a"], 4)
    ([(0, 1), (2, 3), (3, 4), (1, 2)], [(0, 2)], [])
    """
    first: dict[str, int] = {}
    for i, t in enumerate(texts):
        first.setdefault(t, i)
    reps = sorted(first.values())
    k = len(reps)
    order = sorted((d, (i // d) % 2, i) for d in range(1, k) for i in range(k - d))
    if k % 2 and k > 1:
        order.remove((1, 1, k - 2))
        order.insert(k // 2, (1, 1, k - 2))
    return [(reps[i], reps[i + d]) for d, _, i in order][:max_pairs]


def plan_all_pairs(rows: list[dict], max_pairs: int) -> list[tuple[int, int]]:
    """plan_pairs for each prompt's completions (in row order), as row indices."""
    by_prompt: dict[str, list[int]] = {}
    for idx, row in enumerate(rows):
        by_prompt.setdefault(row["prompt_id"], []).append(idx)
    return [
        (members[a], members[b])
        for members in by_prompt.values()
        for a, b in plan_pairs([rows[m]["completion"] for m in members], max_pairs)
    ]


def pairwise_results(
    rows: list[dict], pairs: list[tuple[int, int]], answers: list[tuple[ChatReply, ChatReply]]
) -> tuple[list[ScoreResult], dict[str, float]]:
    """Each row's win rate over the judge calls it took part in, and reliability metrics.

    Args:
        rows: completion rows (all prompts), in order.
        pairs: (i, j) row indices compared (from plan_pairs, per prompt).
        answers: per pair, the answers with i shown first ("A") and with j shown first.
    Returns:
        one ScoreResult per row; rows sharing a compared row's prompt and text get its result; a row never
        compared (its prompt has one distinct completion, or max_pairs_per_prompt left it out) gets
        `no_reference` with the neutral win rate 0.5.
    """
    wins = [0.0] * len(rows)
    votes = [0] * len(rows)
    notes: list[list[str]] = [[] for _ in rows]
    failed: list[set[str]] = [set() for _ in rows]
    first_wins = valid = agree = both_valid = parse_failures = 0
    for (i, j), calls in zip(pairs, answers):
        picks = []  # the row index each order picked (None: no verdict)
        for (shown_a, shown_b), ans in zip(((i, j), (j, i)), calls):
            letter = parse_choice(ans.text) if ans.text is not None else None
            if letter is None:
                parse_failures += ans.text is not None
                for r in (i, j):
                    failed[r].add("parse_error" if ans.text is not None else ans.status)
                picks.append(None)
                continue
            winner = shown_a if letter == "A" else shown_b
            picks.append(winner)
            valid += 1
            first_wins += letter == "A"
            for r in (i, j):
                votes[r] += 1
                wins[r] += r == winner
        if None not in picks:
            both_valid += 1
            agree += picks[0] == picks[1]
        for me, other in ((i, j), (j, i)):
            said = ", ".join(_short(a.text if a.text is not None else a.error) for a in calls)
            notes[me].append(f"vs {rows[other]['completion_id']}: won {sum(p == me for p in picks)}/2 ({said})")
    results = []
    for r in range(len(rows)):
        if votes[r]:
            results.append(ScoreResult(wins[r] / votes[r], "; ".join(notes[r]), "ok"))
        elif notes[r]:  # compared, but no call gave a verdict
            status = "parse_error" if "parse_error" in failed[r] else sorted(failed[r])[0]
            results.append(ScoreResult(0.0, "; ".join(notes[r]), status))
        else:
            results.append(ScoreResult(0.5, "not compared", "no_reference"))
    _share_with_duplicates(rows, results)
    flat = [a for calls in answers for a in calls]
    metrics = _call_metrics(flat, parse_failures)
    metrics["pairs"] = float(len(pairs))
    if both_valid:
        metrics["swap_agreement"] = agree / both_valid
    if valid:
        metrics["first_position_rate"] = first_wins / valid
    return results, metrics


def _share_with_duplicates(rows: list[dict], results: list[ScoreResult]) -> None:
    """Give a row whose text repeats an earlier row of its prompt that row's result (it was not compared)."""
    first: dict[tuple, int] = {}
    for r, row in enumerate(rows):
        key = (row["prompt_id"], row["completion"])
        if key in first and results[r].status == "no_reference":
            src = results[first[key]]
            same = rows[first[key]]["completion_id"]
            results[r] = ScoreResult(src.value, f"same text as {same}: {src.raw}", src.status)
        first.setdefault(key, r)


def _short(text: str, n: int = 80) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= n else text[:n] + "...")


# --- the scorer ---------------------------------------------------------------------------------------------


class JudgeScorer:
    """Scorer protocol (tasks.scoring) around a judge model.

    Args:
        cfg: the judge's scoring entry.
        context: {"engine": EngineConfig} for backend vllm: the engine settings (dtype, parallelism, memory,
            max_model_len) the local judge runs with; pass the generation engine's so the judge reuses (or
            replaces) the process's engine instead of starting a second one next to it. Default EngineConfig().
    """

    def __init__(self, cfg: JudgeScorerConfig, context: dict | None = None):
        if cfg.judge.backend == "openai" and not cfg.judge.base_url:
            raise ValueError(f"scorer {cfg.id!r}: judge.base_url is required with judge.backend 'openai'")
        self.cfg = cfg
        self.id = cfg.id
        self.version = judge_version(cfg)
        self._engine_cfg = (context or {}).get("engine")
        self._judge = None  # connected on first use: an engine start or a server check is not free
        self._metrics: dict[str, float] = {}

    def connect(self):
        """Start the local engine, or check the server (one cheap request): fails before any row is judged."""
        if self._judge is None:
            from tasks.scoring.judge_backends import LocalJudge, RemoteJudge

            backend = RemoteJudge if self.cfg.judge.backend == "openai" else LocalJudge
            self._judge = backend(self.cfg.judge, self._engine_cfg)
        return self._judge

    def __call__(self, rows: list[dict]) -> list[ScoreResult]:
        judge = self.connect()
        if self.cfg.mode == "pointwise":
            answers = judge.ask([pointwise_prompt(self.cfg, r) for r in rows], SCORES, SCORE_SCHEMA)
            results, metrics = pointwise_results(answers)
        else:
            pairs = plan_all_pairs(rows, self.cfg.max_pairs_per_prompt)
            prompts = [
                pairwise_prompt(self.cfg, rows[i], rows[x]["completion"], rows[y]["completion"])
                for i, j in pairs
                for x, y in ((i, j), (j, i))
            ]
            flat = judge.ask(prompts, LETTERS, CHOICE_SCHEMA)
            results, metrics = pairwise_results(rows, pairs, list(zip(flat[0::2], flat[1::2])))
        metrics["structured"] = float(judge.structured)
        self._metrics = metrics
        return results

    def metrics(self) -> dict[str, float]:
        """Reliability figures of the last call: calls, parse_failure_rate, error_rate, structured (1: answers
        were constrained), structured_fallback_rate; pointwise mean_score; pairwise pairs, swap_agreement
        (pairs whose two orders picked the same completion) and first_position_rate (verdicts for "A").
        A rate with nothing to count (e.g. swap_agreement without a pair judged in both orders) is left out."""
        return dict(self._metrics)
