"""A user's VQA set: VQA v2 (open-ended) and Visual7W "telling" (multiple choice), read into question records.

VQA v2 (Goyal et al. 2017; the format of Antol et al. 2015) ships per split a questions file and an
annotations file, and the COCO images:

    v2_OpenEnded_mscoco_train2014_questions.json   {"questions": [{"image_id", "question", "question_id"}, ...]}
    v2_mscoco_train2014_annotations.json           {"annotations": [{"question_id", "image_id",
                                                     "multiple_choice_answer", "answers": [{"answer"}, ...],
                                                     "answer_type"?}, ...]}
    train2014/COCO_train2014_000000000009.jpg      images, found by the image id in their names

Each question becomes an `OpenQuestion`: no choices, the ten human answers kept for the VQA accuracy
min(#humans who gave the answer / 3, 1), and `best`, the annotators' most common answer, the training target.

Visual7W (Zhu et al. 2016) ships `dataset_v7w_telling.json`, {"images": [{"image_id", "filename", "split",
"qa_pairs": [{"qa_id", "question", "answer", "multiple_choices": [three wrong answers], "type"}]}]}, with the
images in `images/` beside it. Each pair becomes a `Question` whose choices are the answer and the wrong ones
in an order fixed by the pair's id (the right answer is not always first).

Data specs (`load_vqa_data`):
  vqa2:FOLDER     the two JSON files of the split (names holding `<split>` and ending `questions.json` /
                  `annotations.json`, as VQA v2's own), images in FOLDER/<split>2014, FOLDER/<split>,
                  FOLDER/images/<split>, FOLDER/images or FOLDER
  vqa2:QUESTIONS.json,ANNOTATIONS.json,IMAGES   the three explicitly (any split)
  visual7w:FILE.json   the images whose "split" is the one asked (all when no image has one); images in
                  FILE's folder/images or beside FILE
No boxes, masks or COCO instances are needed.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from scenekit.data.files import load_json
from scenekit.data.image_files import IMAGE_SUFFIXES
from scenekit.data.records import Dataset, Question, Record
from scenekit.errors import DataError

VQA_SPECS = ("vqa2", "visual7w")


@dataclass
class OpenQuestion(Question):
    """An open-ended question (VQA v2, Antol et al. 2015): `choices` is empty and `answer` -1; `answers` are the
    human answers (ten in VQA v2), `best` the most common of them (VQA's "multiple_choice_answer")."""

    answers: list[str] = field(default_factory=list)
    best: str = ""


def is_vqa_spec(spec) -> bool:
    return str(spec).partition(":")[0] in VQA_SPECS


def load_vqa_data(spec: str, split: str = "train") -> Dataset:
    """The `split` of a `vqa2:` or `visual7w:` spec (see the module docstring)."""
    kind, _, path = str(spec).partition(":")
    if kind not in VQA_SPECS or not path:
        raise DataError(f"bad data spec {spec!r}: expected vqa2:FOLDER or visual7w:FILE.json", field="spec")
    if kind == "visual7w":
        return read_visual7w(path, split=split)
    parts = path.split(",")
    if len(parts) == 3:
        return read_vqa2(*parts)
    if len(parts) != 1:
        raise DataError(f"bad data spec {spec!r}: vqa2 takes FOLDER or QUESTIONS.json,ANNOTATIONS.json,IMAGES",
                        field="spec")
    folder = Path(path)
    if not folder.is_dir():
        raise DataError("VQA v2 folder not found", file=str(folder))
    questions = _one_file(folder, split, "questions.json")
    annotations = _one_file(folder, split, "annotations.json")
    images = next((p for p in (folder / f"{split}2014", folder / split, folder / "images" / split,
                               folder / "images") if p.is_dir()), folder)
    return read_vqa2(questions, annotations, images)


def _one_file(folder: Path, split: str, ending: str) -> Path:
    found = sorted(p for p in folder.glob(f"*{split}*{ending}") if p.is_file())
    if len(found) != 1:
        what = "no file" if not found else f"{len(found)} files ({', '.join(p.name for p in found)})"
        raise DataError(f"expected one file named *{split}*{ending} for split {split!r}, found {what}",
                        file=str(folder))
    return found[0]


# ------------------------------------------------------------------------------------------------ VQA v2
def read_vqa2(questions_path, annotations_path, image_root) -> Dataset:
    """VQA v2 questions + annotations + an image folder -> a Dataset of records with `OpenQuestion`s."""
    questions_path, annotations_path = Path(questions_path), Path(annotations_path)
    questions = _list_under(load_json(questions_path, "questions file"), "questions", questions_path)
    annotations = _list_under(load_json(annotations_path, "annotations file"), "annotations", annotations_path)
    by_question = {}
    for index, entry in enumerate(annotations):
        where = f"annotations[{index}]"
        qid = _integer(entry, "question_id", annotations_path, where)
        _integer(entry, "image_id", annotations_path, where)
        best = _text(entry, "multiple_choice_answer", annotations_path, f"{where} (question_id {qid})")
        answers = entry.get("answers")
        if not isinstance(answers, list) or not answers or not all(
                isinstance(a, dict) and isinstance(a.get("answer"), str) for a in answers):
            raise DataError("answers must be a non-empty list of {\"answer\": string}", file=str(annotations_path),
                            record=f"{where} (question_id {qid})", field="answers")
        by_question[qid] = (entry, best, [a["answer"] for a in answers])
    files = _images_by_id(Path(image_root))
    records: dict[int, Record] = {}
    for index, entry in enumerate(questions):
        where = f"questions[{index}]"
        qid = _integer(entry, "question_id", questions_path, where)
        image_id = _integer(entry, "image_id", questions_path, where)
        text = _text(entry, "question", questions_path, f"{where} (question_id {qid})")
        if qid not in by_question:
            raise DataError(f"question_id {qid} has no annotation in {annotations_path}", file=str(questions_path),
                            record=where, field="question_id")
        annotation, best, answers = by_question[qid]
        if annotation["image_id"] != image_id:
            raise DataError(f"image_id {image_id} differs from its annotation's {annotation['image_id']}",
                            file=str(questions_path), record=f"{where} (question_id {qid})", field="image_id")
        if image_id not in records:
            if image_id not in files:
                raise DataError(f"no image file with id {image_id} in its name in {image_root}",
                                file=str(questions_path), record=f"{where} (question_id {qid})", field="image_id")
            records[image_id] = _record(image_id, files[image_id], questions_path, where)
        kind = str(annotation.get("answer_type", "other")).replace("/", "_")        # "yes/no" -> "yes_no"
        records[image_id].questions.append(OpenQuestion(text, [], -1, kind, answers=answers, best=best))
    return Dataset(records=list(records.values()), categories={}, image_root=None,
                   name=f"VQA v2 {questions_path.name}")


def _images_by_id(folder: Path) -> dict[int, Path]:
    """Image files of `folder` by the number their name ends with (COCO_train2014_000000000009.jpg -> 9)."""
    if not folder.is_dir():
        raise DataError("image folder not found", file=str(folder))
    found = {}
    for path in sorted(folder.iterdir()):
        number = re.search(r"(\d+)$", path.stem)
        if number and path.suffix.lower() in IMAGE_SUFFIXES:
            found.setdefault(int(number.group(1)), path)
    return found


# ------------------------------------------------------------------------------------------------ Visual7W
def read_visual7w(json_path, image_root=None, *, split: str | None = None) -> Dataset:
    """Visual7W telling JSON -> a Dataset of records with 1 + len(multiple_choices) choices per question."""
    json_path = Path(json_path)
    images = _list_under(load_json(json_path, "Visual7W file"), "images", json_path)
    root = Path(image_root) if image_root else (json_path.parent / "images" if (json_path.parent / "images").is_dir()
                                                 else json_path.parent)
    has_splits = any(isinstance(e, dict) and "split" in e for e in images)
    records = []
    for index, entry in enumerate(images):
        where = f"images[{index}]"
        image_id = _integer(entry, "image_id", json_path, where)
        where = f"{where} (image_id {image_id})"
        if split is not None and has_splits and entry.get("split") != split:
            continue
        name = _text(entry, "filename", json_path, where)
        pairs = entry.get("qa_pairs")
        if not isinstance(pairs, list):
            raise DataError("qa_pairs must be a list", file=str(json_path), record=where, field="qa_pairs")
        questions = []
        for k, pair in enumerate(pairs):
            at = f"{where} qa_pairs[{k}]"
            question = _text(pair, "question", json_path, at)
            answer = _text(pair, "answer", json_path, at)
            wrong = pair.get("multiple_choices")
            if not isinstance(wrong, list) or not wrong or not all(isinstance(w, str) and w.strip() for w in wrong):
                raise DataError("multiple_choices must be a non-empty list of strings", file=str(json_path),
                                record=at, field="multiple_choices")
            choices = [answer, *wrong]
            random.Random(pair.get("qa_id", k)).shuffle(choices)     # a fixed order per pair, answer anywhere
            questions.append(Question(question, choices, choices.index(answer), str(pair.get("type", "other"))))
        record = _record(image_id, root / name, json_path, where)
        record.questions = questions
        records.append(record)
    return Dataset(records=records, categories={}, image_root=None,
                   name=f"Visual7W {json_path.name} ({split or 'all'})")


# ------------------------------------------------------------------------------------------------ fields
def _list_under(data, key: str, path: Path) -> list:
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise DataError(f"expected an object with a list under {key!r}", file=str(path), field=key)
    return data[key]


def _integer(entry, key: str, path: Path, where: str) -> int:
    if not isinstance(entry, dict):
        raise DataError("expected an object", file=str(path), record=where)
    value = entry.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise DataError(f"{key} must be an integer, got {value!r}", file=str(path), record=where, field=key)
    return value


def _text(entry, key: str, path: Path, where: str) -> str:
    if not isinstance(entry, dict):
        raise DataError("expected an object", file=str(path), record=where)
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{key} must be a non-empty string, got {value!r}", file=str(path), record=where, field=key)
    return value.strip()


def _record(image_id: int, image_path: Path, source: Path, where: str) -> Record:
    """A question record of an image file, its size read from the file's header."""
    try:
        with Image.open(image_path) as picture:
            width, height = picture.size
    except FileNotFoundError:
        raise DataError(f"image file not found: {image_path}", file=str(source), record=where,
                        field="filename") from None
    except OSError as error:
        raise DataError(f"PIL cannot open the image {image_path}: {error}", file=str(source), record=where,
                        field="filename") from None
    return Record(image_id=image_id, file_name=str(image_path.resolve()), width=width, height=height)


def top_answers(dataset: Dataset, k: int) -> list[str]:
    """The `k` most common `best` answers of a dataset's open-ended questions (ties alphabetical): the answer
    classes of an open-ended model (Antol et al. 2015 classify over the top K = 1000)."""
    counts = Counter(q.best for r in dataset.records for q in r.questions if isinstance(q, OpenQuestion))
    return sorted(counts, key=lambda a: (-counts[a], a))[:k]
