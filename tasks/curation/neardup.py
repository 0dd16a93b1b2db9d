"""Near-duplicate prompts: MinHash signatures of word shingles, banded LSH, verified Jaccard estimate.

Two prompts are near-duplicates when the estimated Jaccard similarity of their word n-gram sets reaches
the threshold. Signatures are computed in numpy over all shingles at once (one universal hash family,
min per row with `np.minimum.reduceat`), so the cost per row is a few microseconds of Python for
tokenising plus vectorised work.

    >>> near_duplicates(["What is the capital of France?", "what is the capital of France ?!",
    ...                  "Name a prime number above 10."], threshold=0.7)
    [False, True, False]
"""

from __future__ import annotations

import re
import zlib

import numpy as np

from tasks.curation.perf import gc_paused

_TOKEN = re.compile(r"\w+")
_PRIME = np.uint64((1 << 61) - 1)
_MAX32 = np.uint64(0xFFFFFFFF)


def shingles(text: str, n: int = 3) -> list[int]:
    """crc32 hashes of the word n-grams of the lowercased text (punctuation ignored; short texts: one gram)."""
    words = _TOKEN.findall(text.lower())
    if len(words) <= n:
        return [zlib.crc32(" ".join(words).encode())]
    return [zlib.crc32(" ".join(words[i : i + n]).encode()) for i in range(len(words) - n + 1)]


def minhash(texts: list[str], num_perm: int = 64, n: int = 3, seed: int = 0) -> np.ndarray:
    """MinHash signatures, shape (len(texts), num_perm), uint32."""
    if not texts:
        return np.zeros((0, num_perm), dtype=np.uint32)
    grams = [shingles(t, n) for t in texts]
    lengths = np.fromiter((len(g) for g in grams), dtype=np.int64, count=len(grams))
    flat = np.fromiter((h for g in grams for h in g), dtype=np.uint64, count=int(lengths.sum()))
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 1 << 31, size=num_perm, dtype=np.uint64)
    b = rng.integers(0, 1 << 31, size=num_perm, dtype=np.uint64)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    out = np.empty((len(texts), num_perm), dtype=np.uint32)
    # (a*h + b) mod p stays below 2**64 for 31-bit a, b and 32-bit h; chunks of permutations bound memory.
    for lo in range(0, num_perm, 16):
        hashed = (flat[:, None] * a[None, lo : lo + 16] + b[None, lo : lo + 16]) % _PRIME & _MAX32
        out[:, lo : lo + 16] = np.minimum.reduceat(hashed, starts, axis=0).astype(np.uint32)
    return out


def band_keys(sigs: np.ndarray, bands: int) -> np.ndarray:
    """One 64-bit key per (row, band): a random linear hash of the band's signature values."""
    n, num_perm = sigs.shape
    rows = num_perm // bands
    mult = np.random.default_rng(1).integers(1, 1 << 62, size=rows, dtype=np.uint64) | np.uint64(1)
    # uint64 arithmetic wraps around: a multiply-add hash, fine for bucketing (verified afterwards).
    return (sigs.reshape(n, bands, rows).astype(np.uint64) * mult).sum(axis=2, dtype=np.uint64)


def near_duplicates(
    texts: list[str],
    reference: list[str] | None = None,
    threshold: float = 0.8,
    num_perm: int = 64,
    bands: int = 16,
    n: int = 3,
) -> list[bool]:
    """For each text: is it a near-duplicate of an earlier text in `texts`, or of any `reference` text?

    Candidates share at least one LSH band (num_perm / bands signature values each); a candidate
    counts when the fraction of equal signature values (the Jaccard estimate) reaches `threshold`.
    Rows that share no band with another row, nearly all of them, are never visited in Python.
    """
    if num_perm % bands:
        raise ValueError(f"num_perm ({num_perm}) must be a multiple of bands ({bands})")
    with gc_paused():
        return _near_duplicates(texts, reference or [], threshold, num_perm, bands, n)


def _near_duplicates(
    texts: list[str], reference: list[str], threshold: float, num_perm: int, bands: int, n: int
) -> list[bool]:
    sigs = minhash(reference + texts, num_perm, n)
    total = len(sigs)
    keys = band_keys(sigs, bands)
    groups_of: dict[int, list[int]] = {}
    for band in range(bands):
        _, inverse, counts = np.unique(keys[:, band], return_inverse=True, return_counts=True)
        shared = np.nonzero(counts[inverse] > 1)[0]
        for row, group in zip(shared.tolist(), (inverse[shared] + band * total).tolist()):
            groups_of.setdefault(row, []).append(group)
    kept_in: dict[int, list[int]] = {}  # group -> rows kept so far (reference rows are always kept)
    dup = [False] * len(texts)
    for row in sorted(groups_of):
        groups = groups_of[row]
        j = row - len(reference)
        if j >= 0 and any(
            float(np.mean(sigs[k] == sigs[row])) >= threshold for g in groups for k in kept_in.get(g, ())
        ):
            dup[j] = True
            continue  # a dropped text does not make later ones duplicates of itself
        for g in groups:
            kept_in.setdefault(g, []).append(row)
    return dup
