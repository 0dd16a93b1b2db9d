"""Eval-set decontamination: word n-gram overlap with attribution to an eval set and row.

Semantics. Tokens are `\\w+` runs and single punctuation marks of the NFC-normalised, case-folded text, so
changes of whitespace, case, Unicode form or punctuation spacing do not hide a leak ("What is 2+2?" and
"what is 2 + 2 ?" tokenise alike). G(T) is the set of distinct n-token grams of T; a text with fewer than n
tokens has one gram, its whole token sequence, and an empty text has none. Text T is contaminated by eval
item E when the overlap coefficient

    |G(T) ∩ G(E)| / min(|G(T)|, |G(E)|)  >=  threshold.

Dividing by the smaller set catches both a short training prompt that is mostly an eval prompt and a long
completion that quotes a whole eval prompt (a fraction-of-T rule misses the latter). When several eval
items match, the highest overlap wins; ties go to the first eval set in dict order, then the lowest row.

Speed. `match_many` checks batches of texts joined into one string: numpy finds the tokens, hashes them and
their n-gram windows, and probes a Bloom filter of the eval grams, so no Python object is made per token.
The filter has no false negatives, and each text it flags is decided by the exact `match`, so
`match_many(ts) == [match(t) for t in ts]`. On 2 cores, 1M prompts of 8-30 words against 2k eval prompts:
about 600k rows/s, 6x a Python set of n-gram tuples per text (storage.ids.normalize_text, if the caller
runs it anyway, adds about 1 µs per row; pass `normalized=True` then, so NFC is not done twice).

    >>> index = DecontamIndex({"gsm": ["What is 2+2? Answer with one number."]}, n=3)
    >>> index.match("so... WHAT is 2 + 2 ? answer with one number.")  # quotes all 9 grams of the item
    Match(eval_set='gsm', eval_index=0, overlap=1.0)
    >>> index.match("What is 2+2? Answer with a number.")  # 6 shared of min(9, 9) grams
    Match(eval_set='gsm', eval_index=0, overlap=0.6666666666666666)
    >>> index.match("What is the capital of France?") is None
    True
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import chain

import numpy as np

_TOKEN = re.compile(r"\w+|[^\w\s]")  # words, and each punctuation mark as a token of its own
_SEP = "\x00"  # joins a batch: a punctuation token, so no token spans two texts and no eval gram holds it
_BATCH = 1024  # texts per numpy pass: measured fastest (the arrays stay in cache; larger is slower)
_EXAMPLE_CHARS = 300  # report examples are cut here: completions can be pages long

# Character classes for the vectorised tokeniser, taken from the regex itself so both agree exactly.
_SPACE, _WORD, _PUNCT = 0, 1, 2


def _char_class(ch: str) -> int:
    return _WORD if re.match(r"\w", ch) else _SPACE if re.match(r"\s", ch) else _PUNCT


_ASCII_CLASS = bytes(_char_class(chr(c)) for c in range(128)) + bytes(128)  # for bytes.translate
_CLASS_OF_BYTE = np.frombuffer(_ASCII_CLASS, dtype=np.uint8)
_U64 = np.uint64


def _odd_constants(count: int, seed: int) -> np.ndarray:
    """Fixed odd 64-bit multipliers (splitmix64), so the index and every query hash alike in any process."""
    out, x = [], seed
    for _ in range(count):
        x = (x + 0x9E3779B97F4A7C15) % 2**64
        z = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
        out.append((z ^ (z >> 31)) | 1)
    return np.array(out, dtype=_U64)


_CHUNK_MUL = _odd_constants(5, seed=1)  # token hash: four 8-byte chunks and the length
_MIX_MUL = _odd_constants(1, seed=2)[0]
_BYTE_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(9)], dtype=_U64)  # the low k bytes of a word


@dataclass(frozen=True)
class Match:
    """The eval item a text overlaps most, when the overlap reaches the index's threshold."""

    eval_set: str  # name of the eval set (a key of the dict the index was built from)
    eval_index: int  # row of the matched item in that eval set
    overlap: float  # |G(T) ∩ G(E)| / min(|G(T)|, |G(E)|), in (0, 1]


def prepare_text(text: str, normalized: bool = False) -> str:
    """NFC (skipped when `normalized` or ASCII, where it changes nothing), then case folding.

    >>> prepare_text("Ｃafe\\u0301 STRASSE") == "ｃafé strasse"
    True
    """
    if not (normalized or text.isascii()):
        text = unicodedata.normalize("NFC", text)
    return text.casefold()


def tokens(text: str, normalized: bool = False) -> list[str]:
    """The tokens n-grams are made of (whitespace between tokens never matters).

    >>> tokens("What is 2+2?") == tokens("  what IS 2 + 2 ? ")
    True
    >>> tokens("Hello, world_1!")
    ['hello', ',', 'world_1', '!']
    """
    return _TOKEN.findall(prepare_text(text, normalized))


def word_ngrams(toks: list[str], n: int) -> set[tuple[str, ...]]:
    """G: the distinct n-token grams; fewer than n tokens give one gram (all of them), none give none.

    >>> sorted(word_ngrams(["a", "b", "c", "b", "c"], 2))
    [('a', 'b'), ('b', 'c'), ('c', 'b')]
    >>> word_ngrams(["a", "b"], 3), word_ngrams([], 3)
    ({('a', 'b')}, set())
    """
    if len(toks) < n:
        return {tuple(toks)} if toks else set()
    return set(zip(*(toks[i:] for i in range(n))))  # tuples built in C: no string join per gram


# ---- vectorised prefilter ---------------------------------------------------------------------------------


def _codes(stream: str) -> tuple[bytes, np.ndarray]:
    """One byte per character (ASCII as is, others folded into 128..255) and its class (_SPACE/_WORD/_PUNCT)."""
    if stream.isascii():
        raw = stream.encode("ascii")
        return raw, np.frombuffer(raw.translate(_ASCII_CLASS), dtype=np.uint8)
    cp = np.frombuffer(stream.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)  # lone surrogates too
    cls = _CLASS_OF_BYTE[np.minimum(cp, 255)]
    wide = np.flatnonzero(cp >= 128)
    distinct, inverse = np.unique(cp[wide], return_inverse=True)  # few distinct non-ASCII characters per batch
    cls[wide] = np.array([_char_class(chr(c)) for c in distinct.tolist()], dtype=np.uint8)[inverse]
    # A lossy fold is fine: the hashes only need "same token, same hash"; collisions just cost a check.
    folded = ((cp ^ (cp >> 8) ^ (cp >> 16)) & 0x7F) | np.where(cp >= 128, 0x80, 0).astype(np.uint32)
    return folded.astype(np.uint8).tobytes(), cls


def _token_hashes(stream: str) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of the tokens of a prepared string, and the token positions of its _SEP marks.

    Tokens are the runs of one class of character (word or punctuation; spaces split them), with every
    punctuation mark a run of its own. A token's hash mixes its length and its first 32 characters, read
    as unaligned little-endian uint64 words; longer tokens sharing those may collide, which only costs an
    exact check.
    """
    raw, cls = _codes(stream)
    change = np.empty(len(cls) + 1, dtype=bool)  # where a run starts, and a mark one past the end
    change[0] = change[-1] = True
    np.not_equal(cls[1:], cls[:-1], out=change[1:-1])
    change[:-1] |= cls == _PUNCT
    runs = np.flatnonzero(change)
    is_token = cls[runs[:-1]] != _SPACE
    # np.compress: much faster than boolean indexing on arrays this size
    starts, lengths = np.compress(is_token, runs[:-1]), np.compress(is_token, runs[1:] - runs[:-1])
    padded = raw + bytes(32)  # every 8-byte read below stays inside the buffer
    words = np.ndarray((len(raw) + 24,), dtype=_U64, buffer=padded, offset=0, strides=(1,))
    h = lengths.astype(_U64) * _CHUNK_MUL[4]
    h += (words[starts] & _BYTE_MASKS[np.minimum(lengths, 8)]) * _CHUNK_MUL[0]
    for j in (1, 2, 3):  # the rare tokens longer than 8, 16, 24 characters
        longer = np.flatnonzero(lengths > 8 * j)
        if not len(longer):
            break
        chunk = words[starts[longer] + 8 * j] & _BYTE_MASKS[np.minimum(lengths[longer] - 8 * j, 8)]
        h[longer] += chunk * _CHUNK_MUL[j]
    sep = np.flatnonzero((lengths == 1) & (np.frombuffer(raw, dtype=np.uint8)[starts] == 0))
    return _mix(h), sep


def _mix(x: np.ndarray) -> np.ndarray:
    """A 64-bit finaliser (xor-shift, multiply, xor-shift): spreads every input bit over the Bloom probes."""
    x = x ^ (x >> _U64(31))
    x *= _MIX_MUL
    return x ^ (x >> _U64(29))


def _window_hashes(h: np.ndarray, n: int) -> Iterator[tuple[int, np.ndarray]]:
    """(L, g_L) for L = 1..n, where g_L[t] combines token hashes h[t..t+L) in order (raw: _mix it to use)."""
    mul = _odd_constants(n, seed=3)  # one per position in the window, so the order of tokens counts
    g = np.zeros(len(h), dtype=_U64)
    for k in range(min(n, len(h))):
        g = g[: len(h) - k] + h[k:] * mul[k]
        yield k + 1, g


class _Bloom:
    """A Bloom filter of 64-bit hashes, two probes, about 256 bits per key (false positives ≈ 6e-5).

    At most 2**30 bits (128 MB, 4M keys at full density): larger eval sets get more false positives, each
    costing an exact check, rather than more memory.
    """

    def __init__(self, keys: np.ndarray):
        self.bits_log2 = min(max(16, (len(keys) * 256).bit_length()), 30)
        self.table = np.zeros(1 << (self.bits_log2 - 6), dtype=_U64)
        for probe in self._probes(keys):
            np.bitwise_or.at(self.table, probe >> _U64(6), _U64(1) << (probe & _U64(63)))

    def _probes(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mask = _U64((1 << self.bits_log2) - 1)
        return keys & mask, (keys >> _U64(32)) & mask

    def positions(self, keys: np.ndarray) -> np.ndarray:
        """Indices of the keys that may be in the set (all that are, and about 6e-5 of the others)."""
        a, b = self._probes(keys)
        maybe = np.flatnonzero((self.table[a >> _U64(6)] >> (a & _U64(63))) & _U64(1))
        b = b[maybe]  # the second probe only where the first one hit: a few per thousand
        return maybe[((self.table[b >> _U64(6)] >> (b & _U64(63))) & _U64(1)).astype(bool)]


def _joined(texts: list[str], normalized: bool) -> str:
    """The texts prepared (prepare_text) and joined by _SEP, with one _SEP before and after as well."""
    stream = _SEP + _SEP.join(texts) + _SEP
    if stream.count(_SEP) != len(texts) + 1:
        # A text holding _SEP would shift every boundary: use another punctuation mark there. Queries and
        # index are hashed alike, so this can only add candidates, never lose a leak.
        return _SEP + _SEP.join(prepare_text(t, normalized).replace(_SEP, "\x01") for t in texts) + _SEP
    if not (normalized or stream.isascii()):
        stream = unicodedata.normalize("NFC", stream)  # = per text: _SEP neither composes nor reorders
    return stream.casefold()  # casefold maps each character alone, so per text too


# ---- the index ----------------------------------------------------------------------------------------------


class DecontamIndex:
    """N-gram index of named eval sets: `match` finds the eval item a text overlaps most, if enough.

    Args:
        eval_sets: {eval set name: its prompts}; dict order breaks ties between eval sets.
        n: n-gram length in tokens (texts shorter than n are one gram, their whole token sequence).
        threshold: minimum overlap coefficient for a match, in (0, 1].
    """

    def __init__(self, eval_sets: dict[str, list[str]], n: int = 8, threshold: float = 0.5):
        if n < 1 or not 0 < threshold <= 1:
            raise ValueError(f"need n >= 1 and 0 < threshold <= 1, got n={n}, threshold={threshold}")
        self.n, self.threshold = n, threshold
        self.eval_set_names = tuple(eval_sets)
        self._items: list[tuple[str, int]] = []  # global id -> (eval set, row); ids follow the tie order
        self._sizes: list[int] = []  # global id -> |G(E)|
        self._postings: dict[tuple[str, ...], list[int]] = {}  # n-gram -> ids of the long items holding it
        self._short: dict[tuple[str, ...], int] = {}  # whole token sequence (< n tokens) -> first id
        indexed: list[str] = []  # the texts of the items, in id order
        for name, texts in eval_sets.items():
            for row, text in enumerate(texts):
                toks = tokens(text)
                if not toks:
                    continue  # no grams: matches nothing
                gid = len(self._items)
                self._items.append((name, row))
                grams = word_ngrams(toks, n)
                self._sizes.append(len(grams))
                indexed.append(text)
                if len(toks) < n:
                    self._short.setdefault(tuple(toks), gid)
                for g in grams if len(toks) >= n else ():
                    self._postings.setdefault(g, []).append(gid)
        self._bloom, self._short_hashes = self._prefilter(indexed)

    def _prefilter(self, texts: list[str]) -> tuple[_Bloom | None, dict[int, np.ndarray]]:
        """The Bloom filter of every eval n-gram window, and the whole-sequence hashes of short items by length."""
        if not texts:
            return None, {}
        h, sep = _token_hashes(_joined(texts, normalized=False))
        counts = np.diff(sep) - 1  # tokens per eval item
        short: dict[int, np.ndarray] = {}
        bloom = None
        for length, g in _window_hashes(h, self.n):
            if length < self.n:
                first = sep[:-1][counts == length] + 1
                if len(first):
                    short[length] = np.unique(_mix(g[first]))
                continue
            is_sep = np.zeros(len(h) + 1, dtype=np.int64)
            is_sep[sep + 1] = 1
            seps_before = np.cumsum(is_sep)  # windows holding a _SEP straddle two items: not eval grams
            inside = seps_before[length : length + len(g)] == seps_before[: len(g)]
            keys = _mix(g[inside])
            bloom = _Bloom(keys) if len(keys) else None
        return bloom, short

    @property
    def empty(self) -> bool:
        """True when no eval item has a token: nothing can match."""
        return not self._items

    def match(self, text: str, normalized: bool = False) -> Match | None:
        """The eval item `text` overlaps most if the overlap reaches the threshold, else None.

        Args:
            normalized: `text` is already NFC (e.g. storage.ids.normalize_text output): skip that step.
        """
        if self.empty:
            return None
        toks = tokens(text, normalized)
        if not toks:
            return None
        if len(toks) < self.n:  # one gram of fewer than n tokens: only an identical short item shares it
            gid = self._short.get(tuple(toks))
            return None if gid is None else Match(*self._items[gid], overlap=1.0)
        grams = word_ngrams(toks, self.n)
        postings = self._postings
        shared = Counter(chain.from_iterable(postings[g] for g in grams if g in postings))  # counted in C
        best_gid, best = -1, 0.0
        for gid in sorted(shared):  # ascending ids: the first of equal overlaps wins
            overlap = shared[gid] / min(len(grams), self._sizes[gid])
            if overlap > best:
                best_gid, best = gid, overlap
        if best_gid < 0 or best < self.threshold:
            return None
        return Match(*self._items[best_gid], overlap=best)

    def match_many(self, texts: list[str], normalized: bool = False) -> list[Match | None]:
        """`[self.match(t, normalized) for t in texts]`, computed in vectorised batches (see module docstring)."""
        out: list[Match | None] = [None] * len(texts)
        if self.empty:
            return out
        for lo in range(0, len(texts), _BATCH):
            batch = texts[lo : lo + _BATCH]
            for i in self._candidates(batch, normalized).tolist():
                out[lo + i] = self.match(batch[i], normalized)
        return out

    def _candidates(self, batch: list[str], normalized: bool) -> np.ndarray:
        """Positions in `batch` of the texts that may match: every text that does, and a few that do not."""
        h, sep = _token_hashes(_joined(batch, normalized))
        counts = np.diff(sep) - 1
        found = []
        for length, g in _window_hashes(h, self.n):
            if length in self._short_hashes:
                which = np.flatnonzero(counts == length)
                hit = np.isin(_mix(g[sep[which] + 1]), self._short_hashes[length])
                found.append(which[hit])
            if length == self.n and self._bloom is not None:
                starts = self._bloom.positions(_mix(g))
                found.append(np.searchsorted(sep, starts, side="right") - 1)
        return np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)


# ---- training data --------------------------------------------------------------------------------------------


def decontaminate_rows(
    rows: list[dict], texts_of: Callable[[dict], list[str]], index: DecontamIndex, max_examples: int = 5
) -> tuple[list[dict], dict]:
    """Drop the rows any of whose texts matches an eval item.

    Args:
        rows: training rows (SFT examples, DPO pairs, ...), kept in order.
        texts_of: the texts to check in a row, e.g. prompt and completion, or prompt, chosen and rejected.
        index: the eval-set index.
        max_examples: how many removed rows to show in the report (the first ones).
    Returns:
        (kept rows, report) with report {"rows_in", "rows_out", "removed", "per_eval_set": {name: n},
        "per_eval_set_source": {name: {row["source"]: n}}, "examples": [{"eval_set", "eval_index", "overlap",
        "text"}]}. A removed row counts once, under its best match (highest overlap, then its first text).
    """
    owner: list[int] = []
    flat: list[str] = []
    for i, row in enumerate(rows):
        texts = texts_of(row)
        flat.extend(texts)
        owner.extend([i] * len(texts))
    best: dict[int, tuple[Match, str]] = {}
    for i, text, m in zip(owner, flat, index.match_many(flat)):
        if m is not None and (i not in best or m.overlap > best[i][0].overlap):
            best[i] = (m, text)
    per_set = {name: 0 for name in index.eval_set_names}
    per_source: dict[str, dict[str, int]] = {name: {} for name in index.eval_set_names}
    examples = []
    for i in sorted(best):
        m, text = best[i]
        per_set[m.eval_set] += 1
        source = str(rows[i].get("source", "unknown"))
        per_source[m.eval_set][source] = per_source[m.eval_set].get(source, 0) + 1
        if len(examples) < max_examples:
            examples.append(
                {
                    "eval_set": m.eval_set,
                    "eval_index": m.eval_index,
                    "overlap": round(m.overlap, 4),
                    "text": text[:_EXAMPLE_CHARS],
                }
            )
    kept = [row for i, row in enumerate(rows) if i not in best]
    report = {
        "rows_in": len(rows),
        "rows_out": len(kept),
        "removed": len(best),
        "per_eval_set": per_set,
        "per_eval_set_source": per_source,
        "examples": examples,
    }
    return kept, report
