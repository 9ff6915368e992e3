"""``chars``: a built-in character-level corpus for next-character prediction (no download).

The text is generated, not read: :func:`corpus` writes :data:`SENTENCES` English-like sentences
from a small fixed grammar (determiner, optional adjective, noun, verb, object, optional
prepositional phrase or adverb; ``a``/``an`` by the next word's first letter; a comma and ``and``
join two clauses now and then; a line break after every few sentences), lower case, drawn by a
pure-Python SplitMix64 generator with the fixed seed :data:`CORPUS_SEED`. Its output depends on
no package version, platform or hash seed, so every machine builds the same text: 8,025
characters of 29 distinct ones (line break, space, comma, full stop and the letters but j),
sha256 :data:`CORPUS_SHA256` (pinned by the tests).

Why generated: the texts that ship with installed packages (docstrings, licence files) change
between versions, and the standard library's ``this`` module prints the Zen of Python on import
(and is 856 characters). A grammar gives text with structure at several scales (spelling of
words, word order, sentence ends) that a small model learns in a few hundred steps.

Examples: every window of :data:`CONTEXT` consecutive characters, as int64 ids ``(T,)`` (ids are
the positions in the sorted alphabet :func:`alphabet`), labelled by the id of the character that
follows it; ``len(text) - CONTEXT`` examples. The run's seed draws a permutation of them;
:data:`TEST_FRACTION` of them form the test split, the rest the train split. Windows overlap,
so test windows share text with train windows: the test split measures fit on the same text,
not generalisation to unseen text.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from arturo_diag.training.datasets.base import ArrayDataset, _check_float_dtype
from arturo_diag.training.seeding import _check_seed

__all__ = ["CONTEXT", "CORPUS_SHA256", "alphabet", "corpus", "corpus_sha256", "load", "load_chars"]

#: Characters of context per example (the transformer's default context).
CONTEXT = 32
#: Sentences in the corpus, and the generator's seed: the corpus is fixed, not drawn by the run's seed.
SENTENCES = 160
CORPUS_SEED = 20240611
#: Share of the examples in the test split.
TEST_FRACTION = 0.2
#: sha256 of the corpus's UTF-8 bytes (the tests check :func:`corpus` against it).
CORPUS_SHA256 = "4da8e16202dfd31b0292ffe808e60536bd06bfb11bb3523e49d0406d61181ae6"

_MASK = (1 << 64) - 1

_DETERMINERS = ("the", "a", "one", "every", "this", "that", "my", "your", "our", "some")
_ADJECTIVES = (
    "small", "quiet", "old", "young", "bright", "dark", "quick", "lazy", "happy", "tired",
    "green", "red", "brave", "clever", "gentle", "heavy", "empty", "warm", "cold", "wild",
)  # fmt: skip
_NOUNS = (
    "cat", "dog", "bird", "fox", "child", "farmer", "teacher", "river", "garden", "house",
    "tree", "window", "letter", "boat", "horse", "owl", "apple", "king", "queen", "village",
    "forest", "road", "lamp", "book", "friend", "wolf", "mouse", "ship", "hill", "bridge",
)  # fmt: skip
_VERBS = (
    "saw", "found", "followed", "carried", "watched", "helped", "painted", "visited", "chased",
    "opened", "built", "heard", "loved", "left", "kept", "met", "passed", "took", "made", "knew",
)  # fmt: skip
_PREPOSITIONS = ("near", "under", "behind", "beside", "over", "across", "into", "with", "from", "by")
_ADVERBS = ("slowly", "quickly", "again", "today", "at night", "in the morning", "once", "often", "quietly", "twice")


class _SplitMix64:
    """SplitMix64 (Steele, Lea and Flood 2014): 64-bit integers from a 64-bit state, pure Python,
    the same on every machine and version."""

    def __init__(self, seed: int):
        self.state = seed & _MASK

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        """An integer in ``[0, n)`` (modulo bias below 1e-17 for these small ``n``)."""
        return self.next() % n

    def pick(self, words: tuple[str, ...]) -> str:
        return words[self.below(len(words))]


def _noun_phrase(rng: _SplitMix64) -> str:
    det = rng.pick(_DETERMINERS)
    words = ([rng.pick(_ADJECTIVES)] if rng.below(2) else []) + [rng.pick(_NOUNS)]
    if det == "a" and words[0][0] in "aeiou":
        det = "an"
    return " ".join([det, *words])


def _clause(rng: _SplitMix64) -> str:
    parts = [_noun_phrase(rng), rng.pick(_VERBS), _noun_phrase(rng)]
    tail = rng.below(4)
    if tail == 0:
        parts += [rng.pick(_PREPOSITIONS), _noun_phrase(rng)]
    elif tail == 1:
        parts.append(rng.pick(_ADVERBS))
    return " ".join(parts)


@lru_cache(maxsize=1)
def corpus() -> str:
    """The corpus text (see the module docstring): :data:`SENTENCES` generated sentences."""
    rng = _SplitMix64(CORPUS_SEED)
    lines, line = [], []
    for _ in range(SENTENCES):
        sentence = _clause(rng)
        if rng.below(5) == 0:
            sentence += ", and " + _clause(rng)
        line.append(sentence + ".")
        if rng.below(4) == 0:
            lines.append(" ".join(line))
            line = []
    if line:
        lines.append(" ".join(line))
    return "\n".join(lines) + "\n"


def alphabet() -> str:
    """The corpus's distinct characters, sorted: character ``alphabet()[i]`` has id ``i``."""
    return "".join(sorted(set(corpus())))


def corpus_sha256() -> str:
    """sha256 of the corpus's UTF-8 bytes (equal to :data:`CORPUS_SHA256`)."""
    return hashlib.sha256(corpus().encode("utf-8")).hexdigest()


def load_chars(*, seed: int = 0, context: int = CONTEXT, dtype: torch.dtype = torch.float32) -> ArrayDataset:
    """The ``chars`` dataset: windows of ``context`` character ids ``(N, context)`` int64 and the
    id of the next character as label; ``num_classes`` is the alphabet's size. The seed draws
    the train/test split (``round(TEST_FRACTION * N)`` test examples); the corpus is fixed.
    ``dtype`` is the model's float dtype, checked but not applied: the inputs are token ids."""
    _check_float_dtype(dtype)
    seed = _check_seed(seed)
    text = corpus()
    chars = alphabet()
    index = {c: i for i, c in enumerate(chars)}
    ids = np.fromiter((index[c] for c in text), dtype=np.int64, count=len(text))
    n = ids.size - context
    windows = np.lib.stride_tricks.sliding_window_view(ids, context)[:n]
    targets = ids[context:]
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(TEST_FRACTION * n))
    test, train = order[:n_test], order[n_test:]
    return ArrayDataset(
        name="chars",
        x_train=torch.from_numpy(np.ascontiguousarray(windows[train])),
        y_train=torch.from_numpy(targets[train]),
        x_test=torch.from_numpy(np.ascontiguousarray(windows[test])),
        y_test=torch.from_numpy(targets[test]),
        num_classes=len(chars),
        input_shape=(context,),
    )


def load(
    data_dir: str | Path | None,
    *,
    seed: int,
    dtype: torch.dtype,
    normalize: bool,
    train_size: int | None,
    test_size: int | None,
) -> ArrayDataset:
    """The registry's loader: the whole dataset (token ids are not normalised);
    ``load_dataset`` keeps the first ``train_size``/``test_size`` examples."""
    return load_chars(seed=seed, dtype=dtype)
