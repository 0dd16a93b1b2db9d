"""Content ids of rows, artifacts and steps (docs/design.md, "Identities"): literal inputs, hand-computed hashes."""

import hashlib

import pytest

from storage import ids


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- normalize_text -----------------------------------------------------------------------------

NORMALIZE = [
    # (raw text, normalised)
    ("What is 2+3?", "What is 2+3?"),
    ("  What   is\t2+3?\n", "What is 2+3?"),
    ("line one\r\nline two", "line one line two"),
    ("a\u00a0b", "a b"),  # a no-break space is whitespace too
    ("Cafe\u0301", "Caf\u00e9"),  # e + combining acute -> precomposed é (NFC)
    ("Caf\u00e9", "Caf\u00e9"),  # already NFC: unchanged
    ("", ""),
    (" \t\n ", ""),
    ("Case Stays", "Case Stays"),  # normalisation does not case-fold
]


@pytest.mark.parametrize("raw,expected", NORMALIZE)
def test_normalize_text(raw, expected):
    assert ids.normalize_text(raw) == expected


# --- text_hash ----------------------------------------------------------------------------------


def test_text_hash_is_sha256_of_the_casefolded_normalised_json_string():
    # stable_json("what is 2+3?") is the JSON string literal, quotes included
    assert ids.text_hash("What is 2+3?") == _sha('"what is 2+3?"')[:20]


@pytest.mark.parametrize("variant", ["what is 2+3?", "WHAT IS 2+3?", "  What  is 2+3? ", "What\nis\t2+3?"])
def test_text_hash_ignores_case_and_whitespace(variant):
    assert ids.text_hash(variant) == ids.text_hash("What is 2+3?")


def test_text_hash_ignores_unicode_composition():
    assert ids.text_hash("Cafe\u0301 menu") == ids.text_hash("CAF\u00c9 MENU")


@pytest.mark.parametrize("other", ["What is 2+4?", "What is 2 + 3?", "What is 2+3"])
def test_text_hash_differs_for_different_text(other):
    assert ids.text_hash(other) != ids.text_hash("What is 2+3?")


# --- prompt_id / completion_id ------------------------------------------------------------------


def test_prompt_id_literal():
    assert ids.prompt_id("What is 2+3?", "pool") == _sha('["prompt","What is 2+3?","pool"]')[:20]
    assert len(ids.prompt_id("x", "y")) == ids.ROW_ID_LEN == 20


def test_prompt_id_depends_on_source_and_text():
    base = ids.prompt_id("What is 2+3?", "pool")
    assert ids.prompt_id("What is 2+3?", "pool") == base
    assert ids.prompt_id("What is 2+3?", "extra") != base
    assert ids.prompt_id("What is 2+4?", "pool") != base
    # the id is over the text as given: callers normalise first
    assert ids.prompt_id("what is 2+3?", "pool") != base


COMPLETION_ARGS = dict(
    prompt_id_="p1", model_id="m1", sampling={"temperature": 1.0, "top_p": 1.0}, sample_index=0, seed=0
)


def test_completion_id_literal():
    expected = _sha('["completion","p1","m1",{"temperature":1.0,"top_p":1.0},0,0]')[:20]
    assert ids.completion_id(**COMPLETION_ARGS) == expected


@pytest.mark.parametrize(
    "field,value",
    [
        ("prompt_id_", "p2"),
        ("model_id", "m2"),
        ("sampling", {"temperature": 0.7, "top_p": 1.0}),
        ("sampling", {"temperature": 1.0, "top_p": 1.0, "max_tokens": 8}),
        ("sample_index", 1),
        ("seed", 1),
    ],
)
def test_completion_id_depends_on_each_argument(field, value):
    assert ids.completion_id(**{**COMPLETION_ARGS, field: value}) != ids.completion_id(**COMPLETION_ARGS)


def test_completion_id_ignores_sampling_key_order():
    reordered = {**COMPLETION_ARGS, "sampling": {"top_p": 1.0, "temperature": 1.0}}
    assert ids.completion_id(**reordered) == ids.completion_id(**COMPLETION_ARGS)


# --- sha256_dir ---------------------------------------------------------------------------------


def _write(root, files):
    for rel, content in files:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)


FILES = [("config.json", b'{"a": 1}'), ("sub/weights.bin", b"\x00\x01\x02"), ("tokenizer.json", b"{}")]


def test_sha256_dir_literal(tmp_path):
    _write(tmp_path, FILES)
    lines = [f"{rel}\t{hashlib.sha256(content).hexdigest()}" for rel, content in sorted(FILES)]
    assert ids.sha256_dir(tmp_path) == _sha("\n".join(lines))


def test_sha256_dir_independent_of_creation_order(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _write(a, FILES)
    _write(b, list(reversed(FILES)))
    assert ids.sha256_dir(a) == ids.sha256_dir(b)


def test_sha256_dir_ignores_the_directory_location(tmp_path):
    _write(tmp_path / "x" / "model", FILES)
    _write(tmp_path / "elsewhere", FILES)
    assert ids.sha256_dir(tmp_path / "x" / "model") == ids.sha256_dir(tmp_path / "elsewhere")


@pytest.mark.parametrize(
    "files",
    [
        [("config.json", b'{"a": 2}'), FILES[1], FILES[2]],  # content changed
        [("config2.json", b'{"a": 1}'), FILES[1], FILES[2]],  # renamed
        [("config.json", b'{"a": 1}'), ("weights.bin", b"\x00\x01\x02"), FILES[2]],  # moved out of sub/
        FILES[:2],  # a file missing
        FILES + [("extra.txt", b"")],  # an (empty) file added
    ],
)
def test_sha256_dir_changes_with_content_names_and_files(tmp_path, files):
    _write(tmp_path / "ref", FILES)
    _write(tmp_path / "other", files)
    assert ids.sha256_dir(tmp_path / "other") != ids.sha256_dir(tmp_path / "ref")


def test_sha256_file_matches_hashlib_across_chunks(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"abc" * 1000)
    assert ids.sha256_file(p, chunk=7) == hashlib.sha256(b"abc" * 1000).hexdigest()


# --- step_identity ------------------------------------------------------------------------------


def test_step_identity_literal():
    got = ids.step_identity("score", "0.1.0+abc", {"w": 1.0}, {"completions": "c1"})
    assert got == _sha('["step","score","0.1.0+abc",{"w":1.0},[["completions","c1"]]]')


def test_step_identity_independent_of_inputs_dict_order():
    a = ids.step_identity("select", "v1", {"k": 1}, {"completions": "c1", "scores": "s1"})
    b = ids.step_identity("select", "v1", {"k": 1}, {"scores": "s1", "completions": "c1"})
    assert a == b


@pytest.mark.parametrize(
    "args",
    [
        ("train", "v1", {"k": 1}, {"completions": "c1", "scores": "s1"}),  # step name
        ("select", "v2", {"k": 1}, {"completions": "c1", "scores": "s1"}),  # code version
        ("select", "v1", {"k": 2}, {"completions": "c1", "scores": "s1"}),  # config
        ("select", "v1", {"k": 1}, {"completions": "c2", "scores": "s1"}),  # an input artifact
        ("select", "v1", {"k": 1}, {"completions": "s1", "scores": "c1"}),  # inputs swapped between names
        ("select", "v1", {"k": 1}, {"completions": "c1"}),  # an input missing
    ],
)
def test_step_identity_changes_with_each_part(args):
    assert ids.step_identity(*args) != ids.step_identity(
        "select", "v1", {"k": 1}, {"completions": "c1", "scores": "s1"}
    )


# --- home_relative --------------------------------------------------------------------------------


def test_home_relative_writes_the_home_as_configs_do():
    cfg = {"home": "/srv/h", "base_model": "/srv/h/demo/base", "sources": [{"path": "/srv/h2/x.jsonl"}], "n": 4}
    assert ids.home_relative(cfg, "/srv/h/") == {
        "home": "{home}",
        "base_model": "{home}/demo/base",
        "sources": [{"path": "/srv/h2/x.jsonl"}],  # another directory that only starts like the home
        "n": 4,
    }
    # the same config in two homes hashes the same
    a, b = ({"home": h, "path": f"{h}/data.jsonl"} for h in ("/a/home", "/b/other"))
    assert ids.hash_obj(ids.home_relative(a, "/a/home")) == ids.hash_obj(ids.home_relative(b, "/b/other"))
