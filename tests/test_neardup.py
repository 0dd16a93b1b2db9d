"""MinHash LSH near-duplicates: planted near copies are found, unrelated texts are not."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tasks.curation.neardup import band_keys, minhash, near_duplicates, shingles

WORDS = "the a of to and in is it you that he was for on are with as his they be at one have this from".split()


def test_shingles_are_word_trigrams_ignoring_case_and_punctuation():
    assert shingles("What is 2 + 2?") == shingles("what IS 2+2") == shingles("What is 2 2")
    assert len(shingles("one two three four five")) == 3
    assert len(shingles("short text")) == 1


def test_minhash_estimates_jaccard():
    a = " ".join(f"w{i}" for i in range(60))
    b = " ".join(f"w{i}" for i in range(30, 90))  # 28 of 88 trigrams shared: J = 0.318
    sig = minhash([a, b], num_perm=256)
    assert sig.shape == (2, 256) and sig.dtype == np.uint32
    assert abs(float(np.mean(sig[0] == sig[1])) - 28 / 88) < 0.08
    assert (minhash([a], num_perm=256) == sig[:1]).all()  # deterministic


def test_planted_near_copies_found_and_nothing_else():
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(14)) + f" n{i}" for i in range(3000)]
    copies = []
    for i in range(0, 3000, 30):  # 100 near copies: case, punctuation and spacing changed
        copies.append("  " + texts[i].upper().replace(" ", " , ", 3) + " ?")
    flags = near_duplicates(texts + copies, threshold=0.8)
    assert sum(flags[:3000]) == 0
    assert sum(flags[3000:]) == 100


def test_reference_texts_are_matched_but_never_dropped():
    ref = ["Explain how a rainbow forms after the rain stops"]
    assert near_duplicates(["explain how a RAINBOW forms after the rain stops.", "Name a prime"], ref) == [True, False]


def test_first_occurrence_wins():
    t = "write a short poem about the autumn leaves falling"
    assert near_duplicates([t, t + "!", t.upper()]) == [False, True, True]


def test_bands_must_divide_num_perm():
    with pytest.raises(ValueError, match=r"num_perm \(64\) must be a multiple of bands \(10\)"):
        near_duplicates(["a"], bands=10)


def test_band_keys_shape():
    assert band_keys(minhash(["a b c d", "e f g h"], num_perm=64), 16).shape == (2, 16)
