"""Tokenizer and vocabulary for captions and questions.

Captioning models (Karpathy & Fei-Fei 2015; Vinyals et al. 2015; Xu et al. 2015) read and write word ids:
a sentence becomes `<start> w1 ... wn <end>`, batches are padded with `<pad>` (id 0, so a padding mask is
`ids != 0`), and words seen fewer than `min_count` times in the training text map to `<unk>`.

>>> vocab = Vocabulary.build(["a red circle.", "a blue ring"])
>>> vocab.encode("a red ring!")
[1, 4, 8, 9, 3, 2]
>>> vocab.decode(vocab.encode("a red ring!"))
'a red ring <unk>'
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

from scenekit.errors import DataError

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)                   # ids 0, 1, 2, 3

# A token is a decimal number ("3.5"), a run of letters/digits with optional apostrophe parts ("don't",
# "cat's"), or any other single non-space character, as the COCO caption tools split punctuation off.
_TOKEN = re.compile(r"\d+\.\d+|[^\W_]+(?:'[^\W_]+)*|[^\w\s]|_")


def tokenize(text: str) -> list[str]:
    """Lower-case `text` and split it into words and single punctuation marks.

    >>> tokenize("Is there a RED ring? Yes, two.")
    ['is', 'there', 'a', 'red', 'ring', '?', 'yes', ',', 'two', '.']
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return _TOKEN.findall(text.lower())


class Vocabulary:
    """Word <-> id table: the four special tokens first, then words by decreasing count (ties alphabetical)."""

    def __init__(self, words: list[str]):
        words = list(words)
        if words[:4] != list(SPECIALS):
            raise ValueError(f"a vocabulary starts with the special tokens {SPECIALS}, got {words[:4]}")
        if len(set(words)) != len(words):
            raise ValueError("vocabulary words must be unique")
        self.words = words                                          # id -> word
        self.ids = {word: index for index, word in enumerate(words)}    # word -> id

    pad_id, start_id, end_id, unk_id = 0, 1, 2, 3

    @classmethod
    def build(cls, texts, min_count: int = 1) -> Vocabulary:
        """Vocabulary of every token appearing at least `min_count` times in `texts` (strings)."""
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        counts = Counter(token for text in texts for token in tokenize(text))
        kept = sorted((w for w, c in counts.items() if c >= min_count and w not in SPECIALS),
                      key=lambda w: (-counts[w], w))
        return cls(list(SPECIALS) + kept)

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.ids

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocabulary) and self.words == other.words

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} words)"

    def encode(self, text: str, add_start_end: bool = True) -> list[int]:
        """Token ids of `text`; unknown words -> `<unk>`; wrapped in `<start>`/`<end>` unless told not to."""
        ids = [self.ids.get(token, self.unk_id) for token in tokenize(text)]
        return [self.start_id] + ids + [self.end_id] if add_start_end else ids

    def decode(self, ids) -> str:
        """Words of `ids` joined by spaces: stops at `<end>`, skips `<pad>` and `<start>`, keeps `<unk>`."""
        words = []
        for index in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
            if not 0 <= index < len(self.words):
                raise ValueError(f"token id {index} is outside the vocabulary of {len(self)} words")
            if index == self.end_id:
                break
            if index not in (self.pad_id, self.start_id):
                words.append(self.words[index])
        return " ".join(words)

    def encode_batch(self, texts, max_length: int | None = None) -> np.ndarray:
        """`[B, L]` int64 ids, each row `<start> ... <end>` padded with 0; rows longer than `max_length` are cut
        (keeping `<end>` last)."""
        rows = [self.encode(text) for text in texts]
        length = max((len(r) for r in rows), default=2) if max_length is None else int(max_length)
        if length < 2:
            raise ValueError(f"max_length must leave room for <start> and <end>, got {max_length}")
        batch = np.zeros((len(rows), length), dtype=np.int64)
        for i, row in enumerate(rows):
            if len(row) > length:
                row = row[:length - 1] + [self.end_id]
            batch[i, :len(row)] = row
        return batch

    def save(self, path) -> Path:
        """Write the vocabulary as JSON: `{"words": [...]}` in id order."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"words": self.words}, ensure_ascii=False))
        return path

    @classmethod
    def load(cls, path) -> Vocabulary:
        """Read a vocabulary written by `save`; DataError naming the file if it is not one."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DataError(f"cannot read vocabulary: {error}", file=str(path)) from error
        words = data.get("words") if isinstance(data, dict) else None
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise DataError("expected an object with a list of strings under 'words'", file=str(path), field="words")
        try:
            return cls(words)
        except ValueError as error:
            raise DataError(str(error), file=str(path), field="words") from error
