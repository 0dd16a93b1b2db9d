"""Curation's context check: prompts that leave the model no room for a whole completion are counted out."""

from test_curate import assert_identity, curate, pool, removed, row  # noqa: F401  (helpers)

from tasks.curation.sources import SourceRows


def test_prompts_that_leave_no_room_for_a_completion_are_removed_and_counted():
    seen = []

    def fits(rows):  # a context where a character is a token and 12 are left for the prompt
        seen.extend(rows)
        return [len(prompt) + len(system or "") <= 12 for system, prompt in rows]

    sources = {
        "pool": SourceRows(
            rows=[
                row("short one", 0),
                row("a question far too long", 1),
                row("short", 2, system="a long system prompt"),
            ],
            quarantined=[],
        )
    }
    result = curate(sources, pool(), fits_context=fits)
    assert removed(result.report) == {"too_long_for_context": 2}
    assert [p["source_row"] for p in result.prompts] == [0]
    assert ("a long system prompt", "short") in seen  # the system prompt takes context too
    assert_identity(result.report)


def test_context_check_renders_the_chat_template_and_counts_every_token(tiny_model):
    from transformers import AutoTokenizer

    from tasks.curation.filters import context_check

    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompt = "What is 12 plus 7?"
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    n = len(tok(rendered)["input_ids"])
    assert n > len(tok(prompt, add_special_tokens=False)["input_ids"])  # the template's tokens count
    assert context_check(str(tiny_model), n)([(None, prompt)]) == [True]
    assert context_check(str(tiny_model), n - 1)([(None, prompt), (None, "1")]) == [False, True]
    # This template has no system role: the texts are counted joined, and generation reports the template.
    assert context_check(str(tiny_model), n)([("Be brief and exact.", prompt)]) == [False]
