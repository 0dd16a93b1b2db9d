"""Verifiable rewards (RLVR, Tulu 3): math answers, instruction-following constraints, Python tests.

Each scorer reads the completion and what the prompt's data declares (reference answer, constraints,
tests) and returns one ScoreResult per row; a row it cannot check gets a status saying why.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from tasks.scoring import ScoreResult
from tasks.scoring.verifiers import extract_answer, math_equal


def _provenance(row: dict) -> dict:
    """The source's keep_fields of a completion row (stored as a JSON string, or already a dict)."""
    p = row.get("provenance")
    if isinstance(p, str):
        try:
            p = json.loads(p)
        except json.JSONDecodeError:
            return {}
    return p if isinstance(p, dict) else {}


class MathAnswerScorer:
    """1.0 when the completion's final answer equals the reference (tasks.scoring.verifiers.math_equal), else 0.0.

    >>> from configs.scoring import MathScorerConfig
    >>> rows = [{"completion": "so it is 45", "answer": "45"}, {"completion": "no idea", "answer": "45"}]
    >>> MathAnswerScorer(MathScorerConfig())(rows)[0]
    ScoreResult(value=1.0, raw='45', status='ok')
    """

    version = "3"  # 2: equivalent forms (fractions, sympy expressions), percent opt-in; 3: math-verify for expressions

    def __init__(self, cfg):
        self.id, self.allow_percent = cfg.id, cfg.allow_percent

    def __call__(self, rows: list[dict]) -> list[ScoreResult]:
        out = []
        for row in rows:
            text, ref = row.get("completion") or "", row.get("answer")
            extracted = extract_answer(text)
            if ref is None:
                out.append(ScoreResult(0.0, extracted or "", "no_reference"))
            elif extracted is None:
                out.append(ScoreResult(0.0, "", "no_answer"))
            else:
                ok = math_equal(text, ref, allow_percent=self.allow_percent)
                out.append(ScoreResult(1.0 if ok else 0.0, extracted, "ok"))
        return out


class IFEvalScorer:
    """IFEval instructions (Google's registry, tasks.scoring.ifeval) that the completion meets: their share,
    or 1.0 only when all are met; strict or loose (IFEval's two measures).

    The prompt's instruction ids and their arguments come from its provenance (the source's keep_fields),
    in IFEval's own format; a prompt without instruction ids is "no_reference", one whose instructions are
    declared badly (unknown id, missing or malformed argument) is "parse_error" with the errors in raw.
    """

    version = "2"  # 2: IFEval's instruction registry (instruction_id_list + kwargs), strict or loose

    def __init__(self, cfg):
        self.id, self.cfg = cfg.id, cfg

    def __call__(self, rows: list[dict]) -> list[ScoreResult]:
        from tasks.scoring.ifeval import check_instructions

        loose, fraction = self.cfg.mode == "loose", self.cfg.value == "fraction"
        out = []
        for row in rows:
            provenance = _provenance(row)
            ids = provenance.get(self.cfg.instructions_field)
            if ids is None:
                out.append(ScoreResult(0.0, "", "no_reference"))
                continue
            prompt = row.get("prompt")
            res = check_instructions(
                row.get("completion") or "",
                ids,
                provenance.get(self.cfg.kwargs_field),  # absent: no arguments (fine for e.g. no_comma only)
                prompt if isinstance(prompt, str) else "",
            )
            checks = [{"id": c.instruction_id, "strict": c.strict, "loose": c.loose} for c in res.checks]
            raw = json.dumps({"checks": checks, "errors": res.errors})
            if res.errors:  # an instruction the data declares badly is the data's fault: say so, do not score
                out.append(ScoreResult(0.0, raw, "parse_error"))
            elif fraction:
                out.append(ScoreResult(res.loose_fraction if loose else res.strict_fraction, raw, "ok"))
            else:
                out.append(ScoreResult(float(res.prompt_loose if loose else res.prompt_strict), raw, "ok"))
        return out


class CodeScorer:
    """1.0 when the completion's Python code passes the prompt's tests in the sandbox (tasks.scoring.sandbox)."""

    version = "1"
    # A run past the time or memory limit, or one the sandbox blocked, is the code's failure: a judgement.
    # A sandbox that could not start judged nothing: that is a scorer error (scoring.on_scorer_error).
    errors = ("error",)

    def __init__(self, cfg):
        self.id, self.cfg = cfg.id, cfg

    def _one(self, row: dict) -> ScoreResult:
        from tasks.scoring.sandbox import extract_code, run_python_tests

        tests = _provenance(row).get(self.cfg.tests_field)
        if not isinstance(tests, str) or not tests.strip():
            return ScoreResult(0.0, "", "no_reference")
        code = extract_code(row.get("completion") or "")
        if not code.strip():
            return ScoreResult(0.0, "", "no_answer")
        res = run_python_tests(code, tests, timeout_s=self.cfg.timeout_s, memory_mb=self.cfg.memory_mb)
        status = {"passed": "ok", "failed": "ok", "error": "ok", "unavailable": "error"}.get(res.status, res.status)
        return ScoreResult(1.0 if res.passed else 0.0, f"{res.status}: {res.detail}"[:2000], status)

    def __call__(self, rows: list[dict]) -> list[ScoreResult]:
        # Each run is a subprocess that mostly waits: threads are enough to keep `workers` of them busy.
        with ThreadPoolExecutor(max_workers=self.cfg.workers) as pool:
            return list(pool.map(self._one, rows))
