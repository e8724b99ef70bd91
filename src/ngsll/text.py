"""Text representations (paper section 4.2): the token sequence x and the bag of words z.

Rules a reader can predict:
    * Tokens: NFKC-normalised, lower-cased text; a token is a run of letters/digits, optionally joined by
      apostrophes (``don't``, ``it's``; curly apostrophes count as ``'``). Everything else (punctuation,
      hyphens, underscores) separates tokens: ``co-writer`` -> ``co``, ``writer``; ``''Conan''`` -> ``conan``.
    * x: ids over every training token (stopwords included), ``0`` = padding, ``1`` = unknown word,
      cut to ``max_length`` tokens.
    * z: a bag of words over the training split's vocabulary **without** stopwords (minus any words the
      configuration keeps), words shorter than
      ``min_word_length`` and words seen fewer than ``min_count`` times (``2`` drops the paper's singletons).
      Binary presence by default, counts as an option. The gate's mask is ``z_j == 0``: only words present
      in the sentence can be chosen.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ngsll.errors import ConfigError

PAD_ID, UNKNOWN_ID = 0, 1
PAD_TOKEN, UNKNOWN_TOKEN = "<pad>", "<unk>"
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})


def _lower_same_length(text: str) -> str:
    """Lower-case character by character, keeping characters whose lower case is longer (e.g. ``İ``), so
    positions in the result are positions in ``text``."""
    return "".join(lower if len(lower := char.lower()) == 1 else char for char in text)


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens of ``text`` (see the module docstring for the exact rule)."""
    return _TOKEN.findall(_lower_same_length(unicodedata.normalize("NFKC", text).translate(_APOSTROPHES)))


def stopword_set(stopwords: str | Sequence[str] | None) -> frozenset[str]:
    """``"sklearn"`` (scikit-learn's ``ENGLISH_STOP_WORDS``), ``"none"``/None, or an explicit word list."""
    if stopwords is None or stopwords == "none":
        return frozenset()
    if stopwords == "sklearn":
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

        return frozenset(ENGLISH_STOP_WORDS)
    if isinstance(stopwords, str):
        raise ConfigError(f"stopwords must be 'sklearn', 'none' or a list of words, got {stopwords!r}")
    return frozenset(word.lower() for word in stopwords)


def _ranked(counts: Counter[str]) -> list[str]:
    """Words by descending count, ties alphabetical: a stable order a person can read."""
    return [word for word, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]


@dataclass
class Vocabulary:
    """Words of the bag of words z; feature j is named ``words[j]``."""

    words: list[str]
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.index = {word: position for position, word in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    @classmethod
    def build(
        cls, token_lists: Iterable[list[str]], stopwords: str | Sequence[str] | None = "sklearn",
        min_count: int = 2, min_word_length: int = 2, keep_words: Sequence[str] = (),
    ) -> Vocabulary:
        """Vocabulary of the (training) token lists after the stopword, length and count rules;
        ``keep_words`` are taken back out of the stopword list (e.g. question words for TREC)."""
        if min_count < 1 or min_word_length < 1:
            raise ConfigError(f"min_count and min_word_length must be >= 1, got {min_count} and {min_word_length}")
        dropped = stopword_set(stopwords) - {word.lower() for word in keep_words}
        counts = Counter(token for tokens in token_lists for token in tokens)
        kept = Counter({
            word: count for word, count in counts.items()
            if count >= min_count and len(word) >= min_word_length and word not in dropped
        })
        if not kept:
            raise ConfigError("the vocabulary is empty after removing stopwords and rare words; "
                              "lower min_count or provide more training sentences")
        return cls(_ranked(kept))

    def bag_of_words(self, token_lists: Sequence[list[str]], counts: bool = False) -> np.ndarray:
        """(N, d) float32 z: presence (or counts) of each vocabulary word; other tokens are ignored."""
        z = np.zeros((len(token_lists), len(self)), dtype=np.float32)
        rows, columns = [], []
        for row, tokens in enumerate(token_lists):
            for token in tokens:
                column = self.index.get(token)
                if column is not None:
                    rows.append(row)
                    columns.append(column)
        np.add.at(z, (np.asarray(rows, dtype=np.int64), np.asarray(columns, dtype=np.int64)), 1.0)
        return z if counts else np.minimum(z, 1.0)


@dataclass
class SequenceVocabulary:
    """Token ids of the original input x: ``tokens[0]`` is padding, ``tokens[1]`` the unknown word."""

    tokens: list[str]
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.tokens[:2] != [PAD_TOKEN, UNKNOWN_TOKEN]:
            raise ConfigError(f"a sequence vocabulary starts with {[PAD_TOKEN, UNKNOWN_TOKEN]}, got {self.tokens[:2]}")
        self.index = {token: position for position, token in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def build(cls, token_lists: Iterable[list[str]], min_count: int = 1) -> SequenceVocabulary:
        """Every training token seen at least ``min_count`` times (stopwords included)."""
        counts = Counter(token for tokens in token_lists for token in tokens)
        kept = Counter({token: count for token, count in counts.items() if count >= min_count})
        return cls([PAD_TOKEN, UNKNOWN_TOKEN] + _ranked(kept))

    def encode(self, token_lists: Sequence[list[str]], length: int) -> np.ndarray:
        """(N, length) int64 ids, unknown words -> 1, cut or padded (with 0) to ``length``."""
        if length < 1:
            raise ConfigError(f"sequence length must be >= 1, got {length}")
        ids = np.full((len(token_lists), length), PAD_ID, dtype=np.int64)
        for row, tokens in enumerate(token_lists):
            encoded = [self.index.get(token, UNKNOWN_ID) for token in tokens[:length]]
            ids[row, : len(encoded)] = encoded
        return ids


@dataclass
class TextSplit:
    """One split in both representations.

    x: (N, T) int64 token ids; z: (N, d) float32 bag of words; y: (N,) int64 labels; ids: (N,) int64 row
    ids in the source; texts: the N sentences as read.
    """

    x: np.ndarray
    z: np.ndarray
    y: np.ndarray
    ids: np.ndarray
    texts: list[str]


@dataclass
class TextEncoder:
    """Both vocabularies and the settings that turn sentences into (x, z); built on the training split."""

    vocabulary: Vocabulary
    sequences: SequenceVocabulary
    length: int
    counts: bool = False

    @classmethod
    def fit(
        cls, texts: Sequence[str], stopwords: str | Sequence[str] | None = "sklearn", min_count: int = 2,
        min_word_length: int = 2, max_length: int = 64, counts: bool = False, min_length: int = 5,
        keep_words: Sequence[str] = (),
    ) -> TextEncoder:
        """Vocabularies from training ``texts``; x length = the longest training sentence, within
        [``min_length``, ``max_length``] (``min_length`` >= the widest convolution filter)."""
        token_lists = [tokenize(text) for text in texts]
        longest = max((len(tokens) for tokens in token_lists), default=0)
        return cls(
            vocabulary=Vocabulary.build(token_lists, stopwords, min_count, min_word_length, keep_words),
            sequences=SequenceVocabulary.build(token_lists),
            length=int(min(max(longest, min_length), max_length)),
            counts=counts,
        )

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(N, T) int64 token ids and (N, d) float32 bag of words for ``texts``."""
        token_lists = [tokenize(text) for text in texts]
        return self.sequences.encode(token_lists, self.length), self.vocabulary.bag_of_words(token_lists, self.counts)

    def token_features(self) -> np.ndarray:
        """(V,) the z index of each token id of x, -1 where the token is not a feature (padding, the unknown
        word, stopwords, rare and short words)."""
        index = self.vocabulary.index
        return np.array([index.get(token, -1) for token in self.sequences.tokens], dtype=np.int64)

    def split(self, texts: Sequence[str], labels: np.ndarray, ids: np.ndarray) -> TextSplit:
        x, z = self.encode(texts)
        return TextSplit(x=x, z=z, y=np.asarray(labels, dtype=np.int64), ids=np.asarray(ids, dtype=np.int64),
                         texts=list(texts))

    def to_dict(self) -> dict:
        """Plain-dict form (JSON) stored beside the prepared splits and read back by :meth:`from_dict`."""
        return {"words": self.vocabulary.words, "tokens": self.sequences.tokens, "length": self.length,
                "counts": self.counts}

    @classmethod
    def from_dict(cls, values: dict) -> TextEncoder:
        return cls(Vocabulary(list(values["words"])), SequenceVocabulary(list(values["tokens"])),
                   int(values["length"]), bool(values["counts"]))


def word_spans(text: str) -> list[tuple[str, str | None]]:
    """``text`` cut into pieces for display: ``(piece, token)`` where token is None for the gaps between
    tokens. Joining the pieces gives back the NFKC-normalised text."""
    normalised = unicodedata.normalize("NFKC", text)
    lowered = _lower_same_length(normalised.translate(_APOSTROPHES))
    pieces: list[tuple[str, str | None]] = []
    position = 0
    for match in _TOKEN.finditer(lowered):
        if match.start() > position:
            pieces.append((normalised[position:match.start()], None))
        pieces.append((normalised[match.start():match.end()], match.group()))
        position = match.end()
    if position < len(normalised):
        pieces.append((normalised[position:], None))
    return pieces
