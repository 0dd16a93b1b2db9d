"""The verifiable scorers as TRL reward functions, for GRPO (tasks/train_rl.py, trainers/grpo.py).

A reward function here is the very scorer object the score stage builds (tasks.scoring.build_scorer),
behind TRL's `fn(prompts, completions, **columns) -> list[float | None]` signature: the same checks score
the completions of generation and the rollouts of RL, so the two can never drift apart.

TRL passes the data set's other columns by name; the prompt rows of trainers/grpo.py carry the
curated prompts' `answer` and `provenance` (the source's keep_fields, where IFEval instructions and Python
tests live), which is what the scorers read. A completion a scorer could not judge (a scorer error, or
nothing to check it against) gets None, which TRL leaves out of the sum instead of counting as a 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pydantic import TypeAdapter

from configs.scoring import ScorerConfig
from tasks.scoring import SCORER_ERRORS, build_scorer

RewardFn = Callable[..., list[float | None]]
# Not a judgement of the completion: the reward says nothing rather than a false 0.
_NO_VERDICT = ("no_reference",)


def message_text(value: Any, role: str) -> str:
    """The text of a plain string, or of the last `role` turn of a chat message list.

    >>> message_text([{"role": "user", "content": "2+2?"}], "user"), message_text("4", "assistant")
    ('2+2?', '4')
    """
    if isinstance(value, str):
        return value
    turns = [m for m in value or [] if m.get("role") == role] or list(value or [])
    return str(turns[-1].get("content") or "") if turns else ""


def scorer_reward(scorer) -> RewardFn:
    """A TRL reward function that scores with `scorer` (a tasks.scoring Scorer); named after its id.

    >>> from configs.scoring import MathScorerConfig
    >>> fn = scorer_reward(build_scorer(MathScorerConfig()))
    >>> fn(prompts=["What is 3 plus 4?"] * 3, completions=["7", "it is 8", "7"], answer=["7", "7", None])
    [1.0, 0.0, None]
    >>> fn.__name__
    'math_answer'
    """
    errors = tuple(getattr(scorer, "errors", SCORER_ERRORS)) + _NO_VERDICT

    def reward(
        prompts: Sequence[Any],
        completions: Sequence[Any],
        answer: Sequence[str | None] | None = None,
        provenance: Sequence[str | None] | None = None,
        **_: Any,
    ) -> list[float | None]:
        n = len(completions)
        rows = [
            {
                "prompt": message_text(p, "user"),
                "completion": message_text(c, "assistant"),
                "answer": a,
                "provenance": pv or "{}",
            }
            for p, c, a, pv in zip(prompts, completions, answer or [None] * n, provenance or [None] * n)
        ]
        return [None if r.status in errors else float(r.value) for r in scorer(rows)]

    reward.__name__ = reward.__qualname__ = scorer.id  # TRL logs rewards/<name>/mean
    return reward


def reward_functions(scorers: list[dict]) -> tuple[list[RewardFn], list[float]]:
    """Reward functions and their weights for scorer configs given as JSON (configs.rl.rl_scorers, dumped).

    JSON in, so a launched training job (trainers/run.py) builds the same functions from its spec file.
    """
    adapter = TypeAdapter(ScorerConfig)
    cfgs = [adapter.validate_python(s) for s in scorers]
    return [scorer_reward(build_scorer(c)) for c in cfgs], [float(c.weight) for c in cfgs]
