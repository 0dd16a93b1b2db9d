"""Prompt filters that need more than the text itself: blocked keywords, token length, language.

Each returns a plain callable so curation stays a pure function of its inputs: the curate task builds
them from the config (and the base model's tokenizer), tests pass hand-made ones.

Try one:  python -c "from tasks.curation.filters import detect_languages; print(detect_languages(['Wie spät ist es?']))"
"""

from __future__ import annotations

import re
from collections.abc import Callable

TokenCounter = Callable[[list[str]], list[int]]
ContextCheck = Callable[[list[tuple[str | None, str]]], list[bool]]  # (system prompt, prompt) -> fits


def keyword_pattern(keywords: list[str]) -> re.Pattern | None:
    """One case-insensitive regex matching any keyword as whole words (None when there are none).

    >>> bool(keyword_pattern(["GPT-4", "claude"]).search("As gpt-4 said"))
    True
    >>> bool(keyword_pattern(["claude"]).search("Claudette's answer"))
    False
    """
    words = [k.strip() for k in keywords if k.strip()]
    if not words:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(w) for w in words) + r")(?!\w)", re.IGNORECASE)


def token_counter(model_dir: str) -> TokenCounter:
    """Counts tokens with the model's own tokenizer (no special tokens), in batches through the fast tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def count(texts: list[str]) -> list[int]:
        out: list[int] = []
        for i in range(0, len(texts), 4096):  # bounded memory for the id lists of a million prompts
            ids = tokenizer(texts[i : i + 4096], add_special_tokens=False)["input_ids"]
            out.extend(len(x) for x in ids)
        return out

    return count


def context_check(model_dir: str, budget: int) -> ContextCheck:
    """Whether each (system, prompt), rendered with the model's chat template as the engines render it, is at
    most `budget` tokens: the context length minus the longest completion the round asks for."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def render(system: str | None, prompt: str) -> str:
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": prompt})
        try:
            return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception:  # no template, or one without a system role: generation reports it, in one line
            return "\n".join(m["content"] for m in messages)

    def check(rows: list[tuple[str | None, str]]) -> list[bool]:
        out: list[bool] = []
        for i in range(0, len(rows), 4096):  # bounded memory for the id lists of a million prompts
            texts = [render(system, prompt) for system, prompt in rows[i : i + 4096]]
            out.extend(len(ids) <= budget for ids in tokenizer(texts)["input_ids"])  # special tokens counted too
        return out

    return check


_LETTER = re.compile(r"[^\W\d_]")


def detect_languages(texts: list[str], min_letters: int = 0) -> list[str | None]:
    """ISO 639-1 code per text (py3langid, 97 languages, model shipped in the wheel: no download).

    Texts with fewer than `min_letters` letters get None: "What is 12 + 7?" is too short to judge, and
    dropping it for a guessed language would be a silent loss.

    >>> detect_languages(["Quelle est la capitale de la France ?", "12 + 7"], min_letters=5)
    ['fr', None]
    """
    import py3langid

    return [py3langid.classify(t)[0] if len(_LETTER.findall(t)) >= min_letters else None for t in texts]
