"""Caption data: the Flickr8k token file, COCO captions, vocabularies, and the data specs of the language models.

Flickr8k (Hodosh et al. 2013) ships its captions as `Flickr8k.token.txt`, one caption per line:

    1000268201_693b08cb0e.jpg#0<TAB>A child in a pink dress is climbing up a set of stairs in an entry way .

(`#k` numbers an image's five captions), and its splits as lists of file names, `Flickr_8k.trainImages.txt`,
`Flickr_8k.devImages.txt`, `Flickr_8k.testImages.txt`, beside it. COCO captions files are read by
`scenekit.data.coco.read_coco` (a captions file is a COCO file whose annotations carry `caption`).

Data specs understood here (besides the image formats of `scenekit.data.sources`):
  coco-captions:PATH   a COCO captions JSON, or a folder holding `captions_<split>.json`
  flickr8k:PATH        a Flickr8k token file (splits from the lists beside it)
  text:PATH            a plain UTF-8 text file for the character model; `text:shakespeare` for the bundled plays
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from scenekit.data.records import Dataset, Record
from scenekit.data.vocab import Vocabulary
from scenekit.errors import DataError

FLICKR_SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt", "val": "Flickr_8k.devImages.txt",
                      "test": "Flickr_8k.testImages.txt"}
LANGUAGE_SPECS = ("coco-captions", "flickr8k", "text")


# ------------------------------------------------------------------------------------------------ Flickr8k
def read_flickr8k(token_path, image_root=None, *, split: str | None = None, check_images: bool = True) -> Dataset:
    """Read a Flickr8k-style token file into a `Dataset` of captioned records (no boxes).

    image_root: folder of the images (default: the token file's folder). split: "train" | "val" | "test" keeps
    the images listed in the split file beside the token file (all images when None or no such file).
    check_images: read each image's header for its size (the records need width and height); False leaves
    them 0 (then the images cannot be loaded through `load_image`, whose size check would fail).
    Image ids are 1, 2, ... in order of first appearance.
    """
    token_path = Path(token_path)
    try:
        lines = token_path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError("token file not found", file=str(token_path)) from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read token file ({error})", file=str(token_path)) from None
    root = Path(image_root) if image_root is not None else token_path.parent
    keep = _split_names(token_path.parent, split)
    captions: dict[str, list[str]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        name, hash_sign, index = key.partition("#")
        if not tab or not hash_sign or not name or not index.strip().isdigit():
            raise DataError("expected 'IMAGE#k<TAB>caption'", file=str(token_path), record=f"line {number}")
        if not caption.strip():
            raise DataError("empty caption", file=str(token_path), record=f"line {number}", field="caption")
        if keep is None or name in keep:
            captions.setdefault(name.strip(), []).append(caption.strip())
    records = []
    for image_id, (name, texts) in enumerate(captions.items(), start=1):
        width = height = 0
        if check_images:
            try:
                with Image.open(root / name) as picture:
                    width, height = picture.size
            except FileNotFoundError:
                raise DataError("image file not found", file=str(root / name), record=f"image {name}") from None
            except OSError as error:
                raise DataError(f"PIL cannot open the image: {error}", file=str(root / name)) from None
        records.append(Record(image_id=image_id, file_name=name, width=width, height=height, captions=texts))
    return Dataset(records=records, categories={}, image_root=root, name=f"{token_path.stem} ({split or 'all'})")


def _split_names(folder: Path, split: str | None) -> set[str] | None:
    if split is None:
        return None
    if split not in FLICKR_SPLIT_FILES:
        raise DataError(f"split must be one of {sorted(FLICKR_SPLIT_FILES)}, got {split!r}", field="split")
    path = folder / FLICKR_SPLIT_FILES[split]
    if not path.is_file():
        return None
    return {line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}


def write_flickr8k(dataset: Dataset, token_path) -> Path:
    """Write the records' captions as a Flickr8k token file (`file_name#k<TAB>caption`)."""
    token_path = Path(token_path)
    token_path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for record in dataset.records:
        for k, caption in enumerate(record.captions):
            if "\n" in caption or "\t" in caption:
                raise DataError("a caption holds a tab or a newline", record=f"image id {record.image_id}",
                                field="captions")
            lines.append(f"{Path(record.file_name).name}#{k}\t{caption}")
    token_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return token_path


# ------------------------------------------------------------------------------------------------ helpers
def caption_vocabulary(dataset: Dataset, min_count: int = 1, with_questions: bool = False) -> Vocabulary:
    """The vocabulary of a dataset's captions (and questions and answer choices): words seen fewer than
    `min_count` times become `<unk>` (Karpathy & Fei-Fei 2015 keep words seen at least 5 times)."""
    texts = [c for r in dataset.records for c in r.captions]
    if with_questions:
        texts += [t for r in dataset.records for q in r.questions for t in [q.question, *q.choices]]
    if not texts:
        raise DataError("the dataset has no captions to build a vocabulary from", field="captions")
    return Vocabulary.build(texts, min_count=min_count)


def unknown_rate(vocabulary: Vocabulary, texts) -> float:
    """Fraction of the tokens of `texts` that `vocabulary` maps to `<unk>`."""
    ids = [i for text in texts for i in vocabulary.encode(text, add_start_end=False)]
    return sum(i == vocabulary.unk_id for i in ids) / max(1, len(ids))


def is_language_spec(spec) -> bool:
    return str(spec).partition(":")[0] in LANGUAGE_SPECS


def load_language_data(spec: str, split: str = "train", **world_kwargs):
    """Data for the language models from a spec (see the module docstring); other specs go to `load_data`."""
    kind, _, path = str(spec).partition(":")
    if kind in LANGUAGE_SPECS and not path:
        raise DataError(f"bad data spec {spec!r}: {kind} needs :PATH", field="spec")
    if kind == "text":
        from scenekit.data.text import read_text, shakespeare

        corpus = shakespeare() if path == "shakespeare" else read_text(path)
        return corpus.split("train" if split == "train" else "val")
    if kind == "coco-captions":
        from scenekit.data.coco import read_coco

        location = Path(path)
        if location.is_dir():
            location = location / f"captions_{split}.json"
        return read_coco(location)
    if kind == "flickr8k":
        return read_flickr8k(path, split=split)
    from scenekit.data.sources import load_data

    return load_data(spec, split, **world_kwargs)


# ------------------------------------------------------------------------------------------------ vocabularies
WORLD_VOCABULARY_IMAGES = 400


def world_vocabulary() -> Vocabulary:
    """Every word of the world's caption and question grammar, read off a fixed sample of generated scenes
    (400 images of mixed sizes and object counts: every template, colour, shape, number and position occurs)."""
    global _WORLD_VOCABULARY
    if _WORLD_VOCABULARY is None:
        from scenekit.data.world import make_world

        texts = []
        for max_objects, size in ((2, 96), (6, 128), (10, 160)):
            sample = make_world(WORLD_VOCABULARY_IMAGES // 3, seed=20240607, image_size=size, max_objects=max_objects)
            texts += [c for r in sample.records for c in r.captions]
            texts += [t for r in sample.records for q in r.questions for t in [q.question, *q.choices]]
        _WORLD_VOCABULARY = Vocabulary.build(texts)
    return _WORLD_VOCABULARY


_WORLD_VOCABULARY: Vocabulary | None = None


def resolve_vocabulary(value, *, min_count: int = 1, with_questions: bool = False) -> Vocabulary:
    """A model's vocabulary from its `vocabulary` option: None -> the world's grammar; a list of words (as
    stored in checkpoints); a vocabulary JSON file (`Vocabulary.save`); or a data spec (`coco-captions:PATH`,
    `flickr8k:PATH`, `world`) whose training captions are counted with `min_count`."""
    if value is None:
        return world_vocabulary()
    if isinstance(value, (list, tuple)):
        return Vocabulary(list(value))
    if not isinstance(value, str):
        raise DataError(f"vocabulary must be a list of words, a JSON file or a data spec, got {value!r}",
                        field="vocabulary")
    if value.endswith(".json") and Path(value).is_file():
        return Vocabulary.load(value)
    if value.partition(":")[0] == "world":
        return world_vocabulary()
    return caption_vocabulary(load_language_data(value, "train"), min_count, with_questions)
