"""The public Python API (DESIGN.md, "Library surface"): load a trained model, predict, evaluate, export, train.

    import scenekit

    run = scenekit.train("yolo2", data="voc:VOCdevkit/VOC2007", epochs=10, out="runs/yolo2")
    model = scenekit.load("runs/yolo2/best.pt")          # a Model, from a checkpoint or an exported .onnx
    for result in model.predict(["photo.jpg", "more_photos/"]):
        print(result.file_name, result.names, result.boxes)      # xyxy pixels
        result.save(f"{result.file_name}.boxes.png")             # the picture `scenekit predict` draws
    model.evaluate(data="voc:VOCdevkit/VOC2007", split="test")   # what `scenekit evaluate --checkpoint` prints

A `Result` carries what the family provides for one image: boxes, scores, labels and their names (detectors),
masks (Mask R-CNN), a class map (FCN, DeconvNet), a caption and its attention per word (captioners), an answer
and its attention (VQA). The `scenekit` command (`train`, `predict`, `evaluate MODEL`, `caption`, `ask`,
`export`, `serve`) and the web demo are clients of this module; the families themselves live in
scenekit/models, named by scenekit.models.registry.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from scenekit.data.image_files import read_rgb
from scenekit.errors import DataError
from scenekit.models import registry

__all__ = ["load", "train", "Model", "Result", "Run", "read_rgb"]


# ================================================================================================ results
@dataclass(eq=False, repr=False)
class Result:
    """One image's prediction. Arrays are numpy; boxes are [N, 4] xyxy in pixels of `image`.

    - `boxes` [N, 4] float, `scores` [N], `labels` [N] category ids, `names` [N] their names (detectors);
    - `masks` [N, H, W] bool: each detection's instance mask (Mask R-CNN), else None;
    - `semantic` [H, W] category id of every pixel, 0 background (FCN, DeconvNet, the sliding window), else None;
    - `caption` (captioners) and `attention`: [n_words, L] weights over the image's L grid cells per word (Show
      Attend and Tell), or [L] for the answer (VQA);
    - `question`, `answer`, `choices` (the candidates: the choices given, or an open-ended model's answer classes)
      and `probabilities` [len(choices)] (VQA).
    """

    image: np.ndarray                                           # [H, W, 3] uint8, RGB
    file_name: str | None = None
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    names: list[str] | None = None                              # None: read off `categories`
    masks: np.ndarray | None = None
    semantic: np.ndarray | None = None
    caption: str | None = None
    attention: np.ndarray | None = None
    question: str | None = None
    answer: str | None = None
    choices: list[str] | None = None
    probabilities: np.ndarray | None = None
    categories: dict[int, str] = field(default_factory=dict)

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, dtype=np.float64)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if self.boxes.size == 0:
            self.boxes = self.boxes.reshape(0, 4)
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4 or not len(self.boxes) == len(self.scores) == \
                len(self.labels):
            raise ValueError(f"a Result takes boxes [N, 4], scores [N] and labels [N], got {list(self.boxes.shape)}, "
                             f"{list(self.scores.shape)}, {list(self.labels.shape)}")
        if self.masks is not None:
            self.masks = np.asarray(self.masks).astype(bool).reshape(len(self.boxes), *self.image.shape[:2])
        if self.names is None:
            self.names = [str(self.categories.get(int(label), int(label))) for label in self.labels]

    def __repr__(self) -> str:
        height, width = self.image.shape[:2]
        parts = [f"file_name={self.file_name!r}", f"image {width}x{height}"]
        if len(self.scores):
            best = int(self.scores.argmax())
            parts.append(f"{len(self.scores)} detections{' with masks' if self.masks is not None else ''} "
                         f"(best: {self.names[best]} {self.scores[best]:.2f})")
        if self.semantic is not None:
            parts.append(f"class map of {len(np.unique(self.semantic))} classes")
        if self.caption is not None:
            parts.append(f"caption={self.caption!r}")
        if self.answer is not None:
            parts.append(f"question={self.question!r}, answer={self.answer!r}")
        return f"Result({', '.join(parts)})"

    # ------------------------------------------------------------------------------------------ pictures
    def plot(self, score_threshold: float = 0.3, long_side: int | None = None) -> np.ndarray:
        """The picture `scenekit predict` draws -> [H', W', 3] uint8: the class map, the masks and the boxes
        scoring at least `score_threshold` (the best one always), the caption or the question and its answer
        under it. Images smaller than 512 px are drawn enlarged to 512 (`long_side`: another size; 0: as they are),
        so labels stay legible."""
        from scenekit.viz import READABLE_SIDE, draw_prediction

        text = self.caption if self.answer is None else f"{self.question} {self.answer}"
        found = {"boxes": self.boxes, "scores": self.scores, "labels": self.labels, "masks": self.masks,
                 "semantic": self.semantic, "caption": text}
        side = READABLE_SIDE if long_side is None else long_side
        return np.asarray(draw_prediction(self.image, found, self.categories, score_threshold, side))

    def plot_attention(self) -> np.ndarray:
        """The image under each word's attention map (Show Attend and Tell, Xu et al. 2015, fig. 2), or under the
        answer's (VQA) -> an RGB uint8 sheet, as `scenekit caption/ask --attention-out` draw it."""
        from scenekit.models.captioner import draw_attention

        if self.attention is None:
            raise DataError("this model gives no attention maps (Show Attend and Tell and VQA with attention do)",
                            field="attention")
        if self.answer is not None:
            sheet = draw_attention(self.image, [self.answer], self.attention[None], cell=256, columns=2)
        else:
            words = self.caption.split()
            columns = min(5, len(words) + 1)                           # the sheet >= 512 px wide
            sheet = draw_attention(self.image, words, self.attention, cell=max(128, -(-512 // columns)),
                                   columns=columns)
        return np.asarray(sheet)

    def save(self, path, score_threshold: float = 0.3) -> Path:
        """Write `plot()` to `path` (PNG, JPEG, ... by its extension)."""
        from PIL import Image

        Image.fromarray(self.plot(score_threshold)).save(path)
        return Path(path)

    # ------------------------------------------------------------------------------------------ records
    def to_coco(self, image_id: int | None = None) -> list[dict]:
        """The detections as COCO result records: `{image_id, file_name, category_id, score, bbox [x, y, w, h]}`
        and, with masks, `segmentation` (compressed RLE), the format `scenekit evaluate --pred` and pycocotools
        read (scenekit.models.detection.coco_records). Without `image_id` the records name their image by
        `file_name` only."""
        from scenekit.models.detection import coco_records

        found = {"boxes": self.boxes, "scores": self.scores, "labels": self.labels, "masks": self.masks}
        return coco_records(found, image_id, self.file_name)


# ================================================================================================ images
def _image_inputs(images) -> list:
    """`images` as a list of items, each a file (Path), an array or a PIL image: folders and patterns expanded
    (scenekit.data.image_files), so a missing file is an error before anything runs."""
    from PIL import Image

    from scenekit.data.image_files import image_files

    if isinstance(images, (str, os.PathLike, Image.Image)) or (isinstance(images, np.ndarray) and images.ndim < 4):
        images = [images]
    items = []
    for item in images:
        items += image_files([item]) if isinstance(item, (str, os.PathLike)) else [item]
    return items


def _read(item) -> tuple[np.ndarray, str | None]:
    """(the [H, W, 3] uint8 image, its file name or None) of one input."""
    from PIL import Image

    if isinstance(item, Path):
        return read_rgb(item), str(item)
    if isinstance(item, Image.Image):
        return np.asarray(item.convert("RGB")), getattr(item, "filename", None) or None
    array = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise DataError(f"an image array must be [H, W, 3] uint8 (RGB), got {list(array.shape)} {array.dtype}",
                        field="images")
    return array, None


def _numpy(value, dtype=None) -> np.ndarray:
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    return array if dtype is None else array.astype(dtype)


def _fields(found: dict) -> dict:
    """A recipe's prediction dict for one image (`Recipe.predict`) as Result fields."""
    fields = {key: _numpy(found[key]) for key in ("boxes", "scores", "labels", "masks", "semantic")
              if found.get(key) is not None}
    if found.get("caption") is not None:
        fields["caption"] = str(found["caption"])
    return fields


# ================================================================================================ the model
class Model:
    """A trained model ready to use: `predict`, `evaluate`, `export`. `scenekit.load` makes one from a checkpoint
    or an exported file; `Model(recipe, module, device)` wraps any recipe and its network (an untrained one too).

    `recipe` is the family's `scenekit.recipes.Recipe` (its options, categories, metrics), `module` the network."""

    def __init__(self, recipe, module: torch.nn.Module, device: torch.device | str = "cpu", source: str | None = None,
                 onnx: bool = False):
        self.recipe, self.module, self.device = recipe, module, torch.device(device)
        self.source, self.onnx = source, onnx

    def __repr__(self) -> str:
        return f"Model({self.name!r}, source={self.source!r}, device={str(self.device)!r})"

    @property
    def name(self) -> str:
        return self.recipe.model_name

    @property
    def categories(self) -> dict[int, str]:
        return self.recipe.categories

    @property
    def task(self) -> str:
        """What `predict` gives: "caption" (captioners), "vqa" (answers to a question), "text" (the character
        language model, which `scenekit sample` runs), else "image" (boxes, masks or class maps)."""
        from scenekit.models.captioner import Captioner
        from scenekit.models.language import CharLM
        from scenekit.models.vqa import VQAModel

        kinds = ((Captioner, "caption"), (VQAModel, "vqa"), (CharLM, "text"))
        return next((task for kind, task in kinds if isinstance(self.module, kind)), "image")

    # ------------------------------------------------------------------------------------------ predict
    def predict(self, images, *, question: str | None = None, choices: list[str] | None = None,
                beam: int | None = None, length_penalty: float | None = None, temperature: float | None = None,
                max_length: int | None = None, seed: int | None = None, batch_size: int = 1,
                stream: bool = False) -> list[Result] | Iterator[Result]:
        """One Result per image, in order. `images`: a file, a folder (its image files, sorted by name), a glob
        pattern, an [H, W, 3] uint8 array, a PIL image, or a list of them; files are read one batch at a time.

        VQA models answer `question` about each image, among `choices` (open-ended models: among their answer
        classes without them). Captioners decode greedily, or with beam search (`beam` > 1, ranked by log p /
        length^`length_penalty`), or sample at `temperature` (seeded by `seed`); at most `max_length` tokens
        (default: the recipe's `beam_size` and `max_words` + 1). `batch_size` images go through the network
        together; `stream`: an iterator instead of a list, so a long folder is never held in memory."""
        if batch_size < 1:
            raise DataError(f"must be >= 1, got {batch_size}", field="batch_size")
        captioning = {"beam": beam, "length_penalty": length_penalty, "temperature": temperature,
                      "max_length": max_length, "seed": seed}
        predict = self._predictor(question, choices, captioning)      # checked before any image is read
        results = self._results(_image_inputs(images), predict, batch_size)
        return results if stream else list(results)

    def _predictor(self, question, choices, captioning: dict):
        """batch of images -> their Result fields, for what this model does; an argument it does not take is a
        DataError naming it."""
        task = self.task
        given = [key for key, value in captioning.items() if value is not None]
        if task != "caption" and given:
            raise DataError(f"{', '.join(given)}: for captioners; {self.name} is not one", field="predict")
        if task == "vqa" and question is None:
            raise DataError("a VQA model answers a question about the image: give question= (and choices=), as "
                            "`scenekit ask IMAGE QUESTION --choices ...` does", field="question")
        if task != "vqa" and (question is not None or choices is not None):
            raise DataError(f"question and choices are for VQA models; {self.name} is not one", field="question")
        if task == "vqa":
            return lambda batch: [self._answer(image, question, choices) for image in batch]
        if task != "caption":
            return self._detect
        seed = captioning.pop("seed")
        options = {**captioning, "length_penalty": captioning["length_penalty"] or 0.0,
                   "generator": None if seed is None else torch.Generator().manual_seed(seed)}
        return lambda batch: [self._caption(image, **options) for image in batch]

    def _results(self, items: list, predict, batch_size: int) -> Iterator[Result]:
        for start in range(0, len(items), batch_size):
            read = [_read(item) for item in items[start:start + batch_size]]
            fields = predict([image for image, _ in read])
            for (image, file_name), found in zip(read, fields):
                yield Result(image=image, file_name=file_name, categories=self.categories, **found)

    def _detect(self, images: list[np.ndarray]) -> list[dict]:
        with torch.no_grad():
            return [_fields(found) for found in self.recipe.predict(self.module, images, self.device)]

    def _caption(self, image: np.ndarray, *, beam, length_penalty, temperature, max_length, generator) -> dict:
        """Xu et al. 2015 / Vinyals et al. 2015: the caption of one image and, with attention, alpha per word."""
        from scenekit.models.captioner import caption_images, prepare_image

        options = self.recipe.options
        beam = options.get("beam_size", 1) if beam is None else beam
        max_length = options.get("max_words", 19) + 1 if max_length is None else max_length
        if beam < 1 or max_length < 1:
            raise DataError(f"beam and max_length must be >= 1, got {beam} and {max_length}", field="beam")
        tensor = prepare_image(image, self.module.config.image_size)[None].to(self.device)
        text, _, alphas = caption_images(self.module, tensor, beam_size=beam, max_length=max_length,
                                         length_penalty=length_penalty, temperature=temperature,
                                         generator=generator)[0]
        return {"caption": text, "attention": None if alphas is None else _numpy(alphas, np.float64)}

    def _answer(self, image: np.ndarray, question: str, choices) -> dict:
        """Zhu et al. 2016: the answer to `question` among `choices` (or the answer classes), with its attention."""
        from scenekit.models.vqa import answer_question

        found = answer_question(self.module, image, question, choices, self.device)
        candidates = list(choices) if choices is not None else list(self.module.config.answers)
        return {"question": question, "answer": found["answer"], "choices": candidates,
                "probabilities": np.asarray(found["probabilities"], dtype=np.float64),
                "attention": None if found["attention"] is None else _numpy(found["attention"], np.float64)}

    # ------------------------------------------------------------------------------------------ evaluate, export
    def load_data(self, data: str = "world", split: str = "val", *, images: int = 300, seed: int = 0):
        """The dataset `data` (a SPEC: world, coco:PATH, voc:PATH, yolo:PATH, caption and VQA specs) as this
        model reads it; `world` makes `images` images the way the model's recipe asks."""
        return registry.load_model_data(data, split, self.recipe, images, seed)

    def evaluate(self, data="world", split: str = "val", *, images: int = 300, seed: int = 0) -> dict:
        """The model's own metrics on `data` (a SPEC, see `load_data`, or a loaded dataset): COCO AP and VOC mAP for
        detectors, mean IoU for segmenters, ILSVRC localization errors, BLEU/CIDEr-D, VQA accuracy; the dict
        `scenekit evaluate MODEL --checkpoint FILE --json` prints."""
        dataset = self.load_data(data, split, images=images, seed=seed) if isinstance(data, str) else data
        with torch.no_grad():
            return self.recipe.evaluate(self.module, dataset, self.device)

    def export(self, path, *, opset: int | None = None) -> Path:
        """Write the model as ONNX to `path` (and its parts beside it: a two-stage detector's RoI heads, a
        captioner's decoder step); `scenekit.load(path)` runs it with onnxruntime. See scenekit.export."""
        import copy

        from scenekit import export

        if self.onnx:
            raise DataError("this model was loaded from an ONNX file already; export its checkpoint",
                            file=self.source)
        module = self.module if self.device.type == "cpu" else copy.deepcopy(self.module).cpu()
        return export.export_onnx(self.recipe, module, path, opset=opset or export.OPSET)


def load(path, device: str = "auto", **options) -> Model:
    """The model saved at `path`: a checkpoint written by `scenekit train` (best.pt, last.pt), or an ONNX file of
    `scenekit export` (run by onnxruntime on the CPU). `options` override the stored recipe options for this use
    (e.g. `max_detections=1000`), checked as `--option`s are: an unknown name or a value of the wrong kind is a
    DataError naming it. `device`: "auto" (CUDA when there is one), "cpu" or "cuda"."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        from scenekit.export import load_onnx

        predictor = load_onnx(path, lambda name, categories, **stored: registry.make_recipe(name, categories, options,
                                                                                             **stored))
        return Model(predictor.recipe, predictor.module, "cpu", source=str(path), onnx=True)
    recipe, module, target, _ = registry.restore(str(path), device, options or None)
    return Model(recipe, module, target, source=str(path))


# ================================================================================================ training
@dataclass
class Run:
    """A finished training run: its folder (best.pt, last.pt, metrics.csv, config.json), the metric that chose
    best.pt and its best value (None without validation data: best.pt then holds the last epoch), one row of
    metrics per epoch, and `model`, best.pt loaded. `checkpoint` is None in processes other than the first under
    torchrun, which write nothing."""

    folder: Path
    best_metric: str
    best: float | None
    history: list[dict]
    checkpoint: Path | None
    device: str = "auto"

    @cached_property
    def model(self) -> Model:
        if self.checkpoint is None:
            raise DataError("this process wrote no checkpoint (not the first under torchrun)", field="model")
        return load(self.checkpoint, self.device)


def train(name: str, data: str = "world", epochs: int | None = None, out: str | None = None, *,
          val_data: str | None = None, val_fraction: float = 0.1, batch_size: int | None = None,
          device: str = "auto", seed: int = 0, resume: bool = False, exist_ok: bool = False,
          train_images: int = 2000, val_images: int = 300, workers: int = 0, checkpoint_every: int = 0,
          log_every: int = 50, skip_invalid: bool = False, options: dict | None = None, **more_options) -> Run:
    """Train model family `name` (`scenekit train --help` lists them) on `data`, as `scenekit train` does.

    - `data`, `val_data`: SPECs (world, world:N, coco:PATH, voc:PATH, yolo:PATH, caption and VQA specs). Without
      `val_data`, the world and text validate on their own held-out part, other data on `val_fraction` of its
      images held out at random (seeded, listed in OUT/split.json; 0: no validation).
    - On user data with boxes, what the world's defaults fix by hand (input or tiles, anchors, priors, detections,
      augmentation, a schedule within a CPU budget) comes from the training boxes (`data_defaults`), under yours.
    - `out`: the run folder (default runs/NAME, or the first free runs/NAME-2, ...); one holding a run is refused
      unless `resume` (continue from OUT/last.pt, its options and split) or `exist_ok` (replace it).
    - Recipe options (`scenekit train NAME --list-options`) as keywords, `epochs` among them, or in `options` for
      the few whose names a run setting above also has (YOLO's `seed`, the sliding window's `val_images`).
    """
    from scenekit.engine.runs import choose_run_folder
    from scenekit.engine.train import TrainConfig, on_main_process
    from scenekit.engine.train import train as run_engine
    from scenekit.recipes import check_options

    options = {**(options or {}), **more_options, **({} if epochs is None else {"epochs": epochs})}
    options = check_options(options, registry.model_options(name), name)        # before any file is touched
    if not 0 <= val_fraction < 1:
        raise DataError(f"must be at least 0 and below 1, got {val_fraction}", field="val_fraction")

    def decide():                                   # rank 0 alone looks at OUT (and clears it with exist_ok)
        folder, note = choose_run_folder(out, f"runs/{name}", resume=resume, exist_ok=exist_ok)
        if note:
            print(f"scenekit train: {note}", file=sys.stderr)
        return folder

    folder = on_main_process(decide, device)
    is_main = int(os.environ.get("RANK", "0")) == 0
    stored, categories, batch_size = _resumed(folder, resume, batch_size)
    from scenekit.data.world import CATEGORIES

    source = str(folder / "last.pt")
    probe = registry.make_recipe(name, categories or dict(CATEGORIES), options, stored=stored, source=source)
    skip = (lambda split: folder / f"skipped_{split}.json") if skip_invalid else (lambda split: None)
    train_data = registry.load_model_data(data, "train", probe, train_images, seed, skip("train"))
    recipe = registry.make_recipe(name, categories or train_data.categories, options, stored=stored, source=source)
    kind = data.split(":")[0]
    val_spec = val_data or (data if kind in ("world", "text") else None)        # their own held-out part
    val_set = registry.load_model_data(val_spec, "val", recipe, val_images, seed, skip("val")) if val_spec else None
    if val_spec is None and val_fraction > 0 and hasattr(train_data, "records"):
        train_data, val_set = _held_out(train_data, folder, data, val_fraction, seed, resume, is_main)
    if stored is None and kind not in ("world", "text") and hasattr(train_data, "records"):
        # user data: what the world's defaults fix by hand comes from the training boxes (stored in the run)
        options, batch_size = data_defaults(name, train_data, options, batch_size, is_main, val_set)
        recipe = registry.make_recipe(name, categories or train_data.categories, options, source=source)
    config = TrainConfig(out=str(folder), batch_size=batch_size or recipe.batch_size, device=device, seed=seed,
                         workers=workers, checkpoint_every=checkpoint_every, log_every=log_every)
    fit = getattr(recipe, "fit", None) or run_engine          # a recipe may train in its own stages (R-CNN)
    result = fit(recipe, train_data, val_set, config, resume=resume)
    return Run(folder=folder, best_metric=recipe.best_metric, best=result.best, history=result.history,
               checkpoint=None if result.last_checkpoint is None else folder / "best.pt", device=device)


def _resumed(folder: Path, resume: bool, batch_size: int | None) -> tuple[dict | None, dict | None, int | None]:
    """(stored options, categories, batch size) of the run being resumed in `folder`; Nones for a new run."""
    from scenekit.engine.checkpoint import load_checkpoint

    if not (resume and (folder / "last.pt").is_file()):
        return None, None, batch_size
    checkpoint = load_checkpoint(folder / "last.pt")      # the run's own options, under the caller's
    batch_size = batch_size or checkpoint.get("train_config", {}).get("batch_size")
    return checkpoint["options"], checkpoint["categories"], batch_size


def _held_out(train_data, folder: Path, data: str, fraction: float, seed: int, resume: bool, is_main: bool):
    """(training part, validation part) of `train_data`: `fraction` of its images held out at random, or on
    resume the split the run wrote (OUT/split.json)."""
    from scenekit.data.splits import hold_out, read_split, write_split

    split_path = folder / "split.json"
    if resume and split_path.is_file():
        train_data, val_data = read_split(split_path, train_data)
        how = f"the {len(val_data)} images held out in {split_path}"
    else:
        train_data, val_data = hold_out(train_data, fraction, seed)
        how = (f"{len(val_data)} of the {len(train_data) + len(val_data)} images of {data}, held out at "
               f"random (--val-fraction {fraction:g}, --seed {seed}; listed in {split_path})")
        if is_main:
            write_split(split_path, train_data, val_data, seed=seed, fraction=fraction, data=data)
    if is_main:
        print(f"scenekit train: no --val-data: validating on {how}; training on the other {len(train_data)}",
              file=sys.stderr)
    return train_data, val_data


def data_defaults(model: str, train_data, user_options: dict, batch_size: int | None, say: bool = True,
                  val_data=None) -> tuple[dict, int | None]:
    """(recommended options under `user_options`, batch size) for training detector `model` on user data: what
    `scenekit.data.recommend` derives from the training boxes (input or tiles, anchors, priors, detections,
    augmentation, a schedule in steps within its CPU budget), only the options the recipe takes, each overridden
    by the user's; the choices and notes go to stderr (`say`). Other models, and data without boxes: unchanged."""
    from scenekit.data.recommend import FAMILIES, recommend

    records = getattr(train_data, "records", None)
    if model not in FAMILIES or not records or not any((~(r.iscrowd | r.difficult)).any() for r in records):
        return user_options, batch_size
    found = recommend(train_data, family=model, eval_data=val_data if hasattr(val_data, "records") else None)
    takes = registry.model_options(model)
    derived = {k: v for k, v in found.options[model].items() if k in takes}
    schedule = found.schedule[model]
    chosen = {k: v for k, v in derived.items() if k not in user_options}
    if batch_size is None and schedule["batch_size"] != FAMILIES[model].batch_size:
        batch_size = schedule["batch_size"]
        chosen = {"batch_size": batch_size, **chosen}
    if not say:                                     # other ranks under torchrun: the same choices, silently
        return {**derived, **user_options}, batch_size
    for note in found.notes:
        print(f"scenekit train: data: {note}", file=sys.stderr)
    text = ", ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in chosen.items())
    kept = ", ".join(f"{k}={json.dumps(user_options[k], separators=(',', ':'))}" for k in derived if k in user_options)
    tiles = (f"{found.tiled_images} images in tiles of {found.tile} px overlapping by {found.overlap} px; "
             if found.tiled_images else "")
    print(f"scenekit train: from the data: {text or 'nothing'} ({tiles}{schedule['steps']} steps, "
          f"~{schedule['cpu_seconds']} CPU-s"
          f"{', capped by the CPU budget' if schedule['capped'] else ''})"
          + (f"; yours kept: {kept}" if kept else ""), file=sys.stderr)
    return {**derived, **user_options}, batch_size
