"""Tokens and the vocabulary: text -> words -> token ids (0 pads, 1 stands for any unknown word).

Shared by training (fitted on the train split only), the served model (the run's vocabulary, read
back from its artifacts) and the word-vector code. NumPy only.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

PAD_ID, OOV_ID = 0, 1
_TOKEN = re.compile(r"[a-z0-9']+|[^\sa-z0-9']")


def tokenize(text: str) -> list[str]:
    """Lower-cased words and single punctuation marks."""
    return _TOKEN.findall(text.lower())


@dataclass
class Vocabulary:
    """Word -> id, with 0 for padding and 1 for out-of-vocabulary words."""

    words: list[str]  # index i holds the word of id i + 2

    @classmethod
    def fit(cls, texts: list[str], size: int, min_frequency: int = 1) -> Vocabulary:
        """The ``size - 2`` most frequent words of ``texts`` seen at least ``min_frequency`` times
        (ties in alphabetical order); rarer words map to the out-of-vocabulary id."""
        counts = Counter(token for text in texts for token in tokenize(text))
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return cls([word for word, count in ranked[: size - 2] if count >= min_frequency])

    def __post_init__(self) -> None:
        self._index = {word: i + 2 for i, word in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words) + 2

    def encode(self, text: str, max_length: int, truncating: str = "post") -> np.ndarray:
        ids = [self._index.get(token, OOV_ID) for token in tokenize(text)] or [OOV_ID]
        ids = ids[:max_length] if truncating == "post" else ids[-max_length:]
        return np.asarray(ids, dtype=np.int32)

    def encode_batch(self, texts: list[str], max_length: int, truncating: str = "post") -> list[np.ndarray]:
        return [self.encode(text, max_length, truncating) for text in texts]

    def to_json(self) -> str:
        return json.dumps({"pad_id": PAD_ID, "oov_id": OOV_ID, "words": self.words})

    @classmethod
    def from_json(cls, text: str) -> Vocabulary:
        return cls(json.loads(text)["words"])
