"""The `scenekit` command: one verb per task, each with `--help` that explains every option and its default.

Conventions (DESIGN.md): `scenekit <verb> [options]`, `--device auto|cpu|cuda`, `--seed`, `--out DIR`,
`--json` for machine-readable output, one-line errors and a non-zero exit code on bad input.
Each verb's parser is built by an `add_<verb>_parser(subparsers)` function below and run by `run_<verb>(args)`;
the work itself lives in the library, the CLI only parses, calls and prints.
"""

from __future__ import annotations

import argparse
import sys

from scenekit.errors import ScenekitError


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless its help text already says it."""

    def _get_help_string(self, action):
        if "default" in (action.help or "").lower():
            return action.help
        return super()._get_help_string(action)


def _formatter(prog):
    return _HelpFormatter(prog, max_help_position=32)


# ---------------------------------------------------------------------------------------------------- demo
def add_demo_parser(sub):
    p = sub.add_parser("demo", help="run the end-to-end demo on the embedded world", formatter_class=_formatter)
    p.add_argument("--out", default="demo_out", help="folder for the demo's tables and pictures")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(func=run_demo)


def run_demo(args):
    from scenekit.demo import run_demo as demo

    demo(out=args.out, seed=args.seed)
    return 0


# ---------------------------------------------------------------------------------------------------- data
def add_data_parser(sub):
    p = sub.add_parser("data", help="convert, check, show and generate datasets (COCO, VOC, YOLO, the world)",
                       formatter_class=_formatter,
                       description="SPEC is world | world:N | coco:PATH | voc:PATH | yolo:PATH.")
    data_sub = p.add_subparsers(dest="data_command", metavar="COMMAND")
    data_sub.required = True

    def reader_options(q, images_default):
        q.add_argument("--split", default="train", help="split to read (VOC ImageSets/Main/<split>.txt, YOLO "
                       "YAML key, COCO instances_<split>.json in a folder, world split)")
        q.add_argument("--skip-invalid", action="store_true",
                       help="skip invalid images/annotations instead of stopping, and list them in --report")
        q.add_argument("--report", default="skipped.json", help="JSON report of what --skip-invalid skipped")
        q.add_argument("--images", choices=["full", "header", "none"], default=images_default,
                       help="check image files: decode every pixel, read headers only, or not at all")
        q.add_argument("--seed", type=int, default=0, help="random seed (world specs)")

    q = data_sub.add_parser("convert", help="convert between formats: --from SPEC --to SPEC",
                            formatter_class=_formatter)
    q.add_argument("--from", dest="source", required=True, help="input SPEC, e.g. coco:annotations/x.json")
    q.add_argument("--to", dest="target", required=True, help="output SPEC, e.g. voc:out/VOC or yolo:out/yolo")
    reader_options(q, "header")
    q.add_argument("--json", action="store_true", help="print a JSON summary")
    q = data_sub.add_parser("check", help="validate a dataset and print statistics", formatter_class=_formatter)
    q.add_argument("spec", metavar="SPEC", help="dataset to check")
    reader_options(q, "full")
    q.add_argument("--json", action="store_true", help="print the statistics as JSON")
    q = data_sub.add_parser("show", help="draw one image's annotations to a PNG", formatter_class=_formatter)
    q.add_argument("spec", metavar="SPEC", help="dataset to read")
    q.add_argument("--image-id", type=int, required=True, help="id of the image to draw")
    q.add_argument("--out", default="show.png", help="PNG file to write")
    q.add_argument("--no-masks", action="store_true", help="draw boxes only")
    reader_options(q, "header")
    q = data_sub.add_parser("world", help="generate the scene world as files (PNGs + COCO JSON)",
                            formatter_class=_formatter)
    q.add_argument("--out", default="world", help="folder to write")
    q.add_argument("--images", type=int, default=200, help="number of images")
    q.add_argument("--seed", type=int, default=0, help="random seed")
    q.add_argument("--split", default="train", choices=["train", "val", "test"], help="split (disjoint seed streams)")
    q.add_argument("--image-size", type=int, default=None, help="fixed square image size (default: varied sizes)")
    q.add_argument("--exist-ok", action="store_true",
                   help="write into a folder that already holds files: this split's world files (JSON, images) are "
                        "replaced, others kept (default: refuse it, unless it holds only other splits of a world)")
    p.set_defaults(func=run_data)


def _load_for_cli(spec, args):
    from scenekit.data.sources import load_data, parse_spec

    options = {"skip_invalid": args.skip_invalid, "report_path": args.report if args.skip_invalid else None,
               "check_images": {"full": "full", "header": True, "none": False}[args.images]}
    if parse_spec(spec)[0] == "world":
        return load_data(spec, args.split, seed=args.seed)
    return load_data(spec, args.split, **options)


def run_data(args):
    import json

    if args.data_command == "world":
        import re
        from pathlib import Path

        from scenekit.data.world import write_world
        from scenekit.errors import DataError

        # The world's own files of this split; another split's world files may share the folder (coco:FOLDER
        # reads instances_<split>.json), anything else there would be mixed with the new world.
        out, split = Path(args.out), args.split
        if out.exists() and not out.is_dir():
            raise DataError("is a file; --out names the folder to write the world to", file=str(out))
        own = [out / f"{kind}_{split}.json" for kind in ("instances", "captions", "questions")]
        own = [path for path in own if path.exists()] + sorted((out / "images").glob(f"{split}_*.png"))
        world_file = re.compile(r"(instances|captions|questions)_(train|val|test)\.json|images")
        others = [path for path in (sorted(out.iterdir()) if out.is_dir() else [])
                  if path not in own and not world_file.fullmatch(path.name)]
        others += [path for path in (sorted((out / "images").iterdir()) if (out / "images").is_dir() else [])
                   if path not in own and not re.fullmatch(r"(train|val|test)_\d+\.png", path.name)]
        if (own or others) and not args.exist_ok:
            found = [str(p.relative_to(out)) for p in own + others]
            raise DataError(f"already holds {len(found)} file(s) the new world would mix with ({', '.join(found[:3])}"
                            f"{', ...' if len(found) > 3 else ''}): choose an empty --out, or add --exist-ok to "
                            f"replace this split's world files", file=str(out))
        for path in own:                                 # --exist-ok: no orphan images of a larger earlier world
            path.unlink()
        path = write_world(args.out, args.images, seed=args.seed, split=args.split, image_size=args.image_size)
        print(f"wrote {args.images} images and their annotations: {path}")
        return 0
    if args.data_command == "convert":
        import warnings

        from scenekit.data.sources import check_save_target, save_data

        check_save_target(args.target)                   # a target that cannot be written stops before reading
        dataset = _load_for_cli(args.source, args)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            try:
                written = save_data(dataset, args.target, args.split)
            except OSError as error:                     # e.g. a folder where a file goes, a full disk
                raise ScenekitError(f"cannot write {args.target}: {error}") from None
        for warning in caught:                           # what the writer could not keep, one line each
            if issubclass(warning.category, UserWarning):
                print(f"scenekit data convert: note: {warning.message}", file=sys.stderr)
            else:
                warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
        summary = {"images": len(dataset), "objects": int(sum(r.num_objects for r in dataset.records)),
                   "written": str(written)}
        print(json.dumps(summary) if args.json else
              f"converted {summary['images']} images, {summary['objects']} objects to {written} (the images copied "
              f"beside it, so the output reads back after it is moved)")
        return 0
    if args.data_command == "check":
        from dataclasses import asdict

        from scenekit.data.recommend import format_recommendation, recommend
        from scenekit.data.sources import format_statistics, statistics

        dataset = _load_for_cli(args.spec, args)
        stats = statistics(dataset)
        # what the boxes decide for the detectors (scenekit.data.recommend); data without boxes has no such thing
        found = recommend(dataset) if any((~(r.iscrowd | r.difficult)).any() for r in dataset.records) else None
        stats["recommendation"] = asdict(found) if found is not None else None
        text = format_statistics(stats) + (f"\n\n{format_recommendation(found)}" if found is not None else "")
        print(json.dumps(stats) if args.json else text)
        return 0
    from scenekit.data.transforms import load_image, record_masks
    from scenekit.errors import DataError
    from scenekit.viz import enlarge_map, draw_boxes, draw_masks, enlarge

    dataset = _load_for_cli(args.spec, args)
    record = next((r for r in dataset.records if r.image_id == args.image_id), None)
    if record is None:
        raise DataError(f"no image with id {args.image_id} (ids run {dataset.records[0].image_id}.."
                        f"{dataset.records[-1].image_id})" if dataset.records else "the dataset is empty",
                        file=args.spec, field="image_id")
    picture = load_image(dataset, record)
    with_mask = [k for k in range(record.num_objects) if record.segmentations and record.segmentations[k] is not None]
    picture, factor = enlarge(picture)                       # small images drawn at >= 512 px
    if with_mask and not args.no_masks:
        masks = record_masks(record, box_fallback=True)[with_mask]
        picture = draw_masks(picture, enlarge_map(masks, picture.size), record.labels[with_mask])
    picture = draw_boxes(picture, record.boxes * factor, record.labels, names=dataset.categories)
    picture.save(args.out)
    print(f"drew image {record.image_id} ({record.num_objects} objects) to {args.out}")
    return 0


# ---------------------------------------------------------------------------------------------------- models
# The one table of model families lives below the CLI, in scenekit.models.registry; the work, in scenekit.api.
from scenekit.models import registry  # noqa: E402


class _HelpWithOptions(argparse.Action):
    """`scenekit train MODEL --help`: the verb's help, then MODEL's recipe options with their one-line help."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.print_help()
        model = getattr(namespace, "model", None)
        if model in registry.FAMILIES:
            print(f"\n{model}'s options (--option KEY=VALUE):\n{_options_table(model)}")
        parser.exit()


def _options_table(model: str) -> str:
    """One line per recipe option of `model`: its name, the values it takes, its default and its help."""
    from scenekit.recipes import option_text

    return "\n".join(f"{s.name:<24} {s.describe():<24} {'default ' + option_text(s.default):<24} {s.help}".rstrip()
                     for s in registry.model_options(model).values())


def add_train_parser(sub):
    p = sub.add_parser("train", help="train a model (checkpoints, resume, multi-process under torchrun)",
                       formatter_class=_formatter, add_help=False,
                       description="Train MODEL on --data. Under `torchrun --nproc_per_node N scenekit train ...` "
                                   "the same command trains with DistributedDataParallel. `scenekit train MODEL "
                                   "--help` (or --list-options) lists MODEL's recipe options (--option KEY=VALUE) "
                                   "with their defaults. Extending a run (--resume with more --epochs than it had): "
                                   "training continues in that phase as if it had been planned that long, its "
                                   "schedule recomputed for the new length (a cosine stretched over the new epochs, "
                                   "so the extra epochs train at a rate above 0); if that phase is not the last, the "
                                   "later phases run again.")
    p.add_argument("-h", "--help", action=_HelpWithOptions,
                   help="show this help (after MODEL: MODEL's options too) and exit")
    p.add_argument("model", metavar="MODEL", choices=sorted(registry.FAMILIES),
                   help=f"one of: {', '.join(registry.FAMILIES)}")
    p.add_argument("--list-options", action="store_true",
                   help="print MODEL's recipe options (for --option) with the values they take and their defaults, "
                        "then exit")
    p.add_argument("--data", default="world", help="world | coco:PATH | voc:PATH | yolo:PATH")
    p.add_argument("--val-data", default=None,
                   help="validation data spec (default: the world's val split for world, the last tenth of the text "
                        "for text:, else --val-fraction of the training images, listed in OUT/split.json)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="without --val-data on data other than the world: the share of the training images held "
                        "out (seeded by --seed, at least 1) to validate on and choose best.pt; 0: no validation")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs of the main phase (default: the recipe's); with --resume, more than the run had "
                        "extends it (see above)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="global batch size, over all processes (default: the recipe's: 32; 4 for the two-stage "
                        "detectors and FCN, 8 for the captioners)")
    p.add_argument("--lr", type=float, default=None, help="learning rate of the main phase (default: the recipe's)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to train")
    p.add_argument("--out", default=None,
                   help="folder for checkpoints and metrics.csv; one holding a previous run is refused unless "
                        "--resume or --exist-ok (default: runs/MODEL, or the first free runs/MODEL-2, -3, ...)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in OUT from OUT/last.pt if it exists (its options, split and schedule)")
    p.add_argument("--exist-ok", action="store_true",
                   help="replace the previous run in OUT: remove its checkpoints, logs and split (other files stay)")
    p.add_argument("--seed", type=int, default=0, help="random seed (weights, data order, the world)")
    p.add_argument("--image-size", type=int, default=None, help="training input size (default: the recipe's)")
    p.add_argument("--backbone", default=None, choices=["small", "vgg16", "resnet18", "resnet50"],
                   help="feature extractor (default: the recipe's, the small CNN)")
    p.add_argument("--backbone-weights", default=None, help="torchvision-format state dict for the backbone")
    p.add_argument("--train-images", type=int, default=2000, help="world images to generate for training")
    p.add_argument("--val-images", type=int, default=300, help="world images to generate for validation")
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads of this process (default: torch's, one per core); two trainings side by "
                        "side each want --threads 1")
    p.add_argument("--checkpoint-every", type=int, default=0,
                   help="also write OUT/last.pt every N steps (0: at the end of each epoch only)")
    p.add_argument("--log-every", type=int, default=50, help="log line every N steps when not on a terminal")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="other recipe option (repeatable), e.g. --option hidden=128 --option flip=false; VALUE is "
                        "JSON, or plain text for a string option; --list-options shows MODEL's")
    p.add_argument("--skip-invalid", action="store_true",
                   help="skip invalid annotations and corrupt or missing images instead of stopping; they are "
                        "counted on stderr and listed in OUT/skipped_<split>.json")
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    p.set_defaults(func=run_train)


def run_train(args):
    import json

    from scenekit.api import train

    if args.list_options:                           # every --option KEY of MODEL: what it takes, its default
        specs = registry.model_options(args.model).values()
        if args.json:
            print(json.dumps({s.name: {"takes": s.describe(), "default": s.default, "help": s.help} for s in specs},
                             default=str))
        else:
            print(_options_table(args.model))
        return 0
    options = registry.parse_options(args.option, args.model)
    for key, value in (("epochs", args.epochs), ("lr", args.lr), ("image_size", args.image_size),
                       ("backbone", args.backbone), ("backbone_weights", args.backbone_weights)):
        if value is not None:
            options[key] = value
    run = train(args.model, data=args.data, out=args.out, val_data=args.val_data, val_fraction=args.val_fraction,
                batch_size=args.batch_size, device=args.device, seed=args.seed, resume=args.resume,
                exist_ok=args.exist_ok, train_images=args.train_images, val_images=args.val_images,
                workers=args.workers, checkpoint_every=args.checkpoint_every, log_every=args.log_every,
                skip_invalid=args.skip_invalid, options=options)
    if run.checkpoint is None:                      # not rank 0 under torchrun
        return 0
    final = run.history[-1] if run.history else {}
    summary = {"model": args.model, "out": str(run.folder), "best": run.best, "best_metric": run.best_metric,
               "final": final}
    if args.json:
        print(json.dumps(summary, default=str))
    elif run.best is None:
        print(f"trained {args.model} without validation data: {run.checkpoint} holds the last epoch's weights")
    else:
        print(f"trained {args.model}: best {run.best_metric} {run.best} -> {run.checkpoint}")
    return 0


# ---------------------------------------------------------------------------------------------------- predict
def add_predict_parser(sub):
    p = sub.add_parser("predict", help="run a trained checkpoint on images: pictures + COCO result JSON",
                       formatter_class=_formatter)
    p.add_argument("images", metavar="IMAGES", nargs="*",
                   help="image files (PNG, JPEG, ...), folders (their image files, sorted by name) or glob patterns "
                        "such as 'photos/*.jpg' (expanded by scenekit where the shell does not)")
    p.add_argument("--stream", metavar="FOLDER", default=None,
                   help="real-time mode: run over a folder of images frame by frame (sorted by name), printing "
                        "each frame's detections and the frames per second; no pictures, OUT/predictions.json")
    p.add_argument("--data", metavar="SPEC", default=None,
                   help="the dataset the images belong to (coco:PATH | voc:PATH | yolo:PATH): each result then "
                        "carries the dataset's image_id (matched by path, else by file name), a standard COCO "
                        "result file for it. Results always carry the image's file_name, which `scenekit evaluate` "
                        "matches to the ground truth's images")
    p.add_argument("--split", default="val", help="--data: the split whose images are matched")
    p.add_argument("--checkpoint", default=None, help="a checkpoint written by `scenekit train` (best.pt)")
    p.add_argument("--onnx", default=None, help="instead of --checkpoint: a file from `scenekit export`, run with "
                                                "onnxruntime (CPU)")
    p.add_argument("--out", default="predictions", help="folder for pictures and predictions.json")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run")
    p.add_argument("--max-detections", type=int, default=None,
                   help="most detections per image (default: the model's max_detections option, 100 for most)")
    p.add_argument("--score-threshold", type=float, default=0.3,
                   help="draw detections scoring at least this (the best one is always drawn)")
    p.add_argument("--seed", type=int, default=0, help="random seed (for models that sample)")
    p.add_argument("--json", action="store_true", help="print the COCO results as JSON")
    p.set_defaults(func=run_predict)


def run_predict(args):
    import json
    from dataclasses import replace
    from pathlib import Path

    import torch

    from scenekit.data.image_files import image_files
    from scenekit.errors import DataError
    from scenekit.metrics.result_images import data_image_ids

    if args.stream is None and not args.images:
        raise DataError("give image files, folders or patterns, or --stream FOLDER", field="images")
    paths = image_files([args.stream] if args.stream is not None else args.images)   # checked before the model
    if args.stream is not None and not Path(args.stream).is_dir():
        raise DataError("not a folder of images", file=str(args.stream))
    # (image_id, file_name) of each image: the dataset's with --data, else no id and the path as given
    named = data_image_ids(paths, args.data, args.split) if args.data else [(None, str(p)) for p in paths]
    torch.manual_seed(args.seed)
    model = _load_model(args, **_max_detections(args))
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot create the output folder ({error.strerror})", file=str(out)) from None
    if args.stream is not None:
        return _predict_stream(args, model, out, dict(zip(paths, named)))
    results, index, pictures = [], [], set()
    for path, (image_id, file_name), result in zip(paths, named, model.predict(paths, stream=True)):
        stem, n = path.stem, 1
        while stem in pictures:                 # a.png from two folders: a.png, a-2.png
            n += 1
            stem = f"{path.stem}-{n}"
        pictures.add(stem)
        result.save(out / f"{stem}.png", score_threshold=args.score_threshold)
        index.append({**({} if image_id is None else {"id": image_id}), "file_name": file_name,
                      "width": result.image.shape[1], "height": result.image.shape[0]})
        results += [{**record, "score": round(record["score"], 6), "bbox": [round(v, 3) for v in record["bbox"]]}
                    for record in replace(result, file_name=file_name).to_coco(image_id)]
    (out / "predictions.json").write_text(json.dumps(results))
    (out / "images.json").write_text(json.dumps(index, indent=1))
    if args.json:
        print(json.dumps(results))
    else:
        ids = f"image ids of {args.data}" if args.data else "file names only (give --data SPEC for image ids)"
        print(f"{len(results)} detections on {len(paths)} images ({ids}) -> {out / 'predictions.json'}, "
              f"pictures in {out}")
    return 0


def _load_model(args, **options):
    """The scenekit.api.Model of `--checkpoint FILE` (on --device) or `--onnx FILE`, with `options` over its own."""
    from scenekit.api import load
    from scenekit.errors import DataError

    if args.onnx is not None:
        if getattr(args, "stream", None) is not None:
            raise DataError("--stream runs a checkpoint; give --checkpoint instead of --onnx", field="stream")
        return load(args.onnx, **options)
    if args.checkpoint is None:
        raise DataError("needs --checkpoint FILE (or --onnx FILE)", field="checkpoint")
    return load(args.checkpoint, args.device, **options)


def _predict_stream(args, model, out, named: dict):
    """`predict --stream FOLDER`: frames per second of the model (and of the whole loop, reading included).

    named: {path: (image_id or None, file_name)} of the folder's images; results carry them as `run_predict`'s."""
    import json
    import time

    from scenekit.models.detection import coco_records
    from scenekit.models.yolo import stream_predict

    results, frames, model_seconds, started = [], 0, 0.0, time.perf_counter()
    stream = stream_predict(model.recipe, model.module, list(named), model.device)
    for frames, (path, found, seconds) in enumerate(stream, start=1):
        model_seconds += seconds
        detections = coco_records(found, *named[path])
        results += detections
        if not args.json:
            shown = sum(d["score"] >= args.score_threshold for d in detections)
            print(f"{path.name}: {shown} detections >= {args.score_threshold} | {1 / max(seconds, 1e-9):.1f} fps "
                  f"(mean {frames / max(model_seconds, 1e-9):.1f})", flush=True)
    wall = time.perf_counter() - started
    (out / "predictions.json").write_text(json.dumps(results))
    summary = {"frames": frames, "fps": frames / max(model_seconds, 1e-9), "fps_with_reading": frames / max(wall, 1e-9),
               "detections": len(results), "predictions": str(out / "predictions.json")}
    print(json.dumps(summary) if args.json else
          f"{frames} frames: {summary['fps']:.1f} frames/s model, {summary['fps_with_reading']:.1f} frames/s with "
          f"reading -> {out / 'predictions.json'}")
    return 0


# ---------------------------------------------------------------------------------------------------- propose
def add_propose_parser(sub):
    p = sub.add_parser("propose", help="Selective Search object proposals for an image (R-CNN's proposals)",
                       formatter_class=_formatter)
    p.add_argument("image", metavar="IMAGE", help="image file (PNG, JPEG, ...)")
    p.add_argument("--mode", default="fast", choices=["fast", "quality", "single"],
                   help="diversification: fast (HSV+Lab, k 50/100, 2 similarities), quality (5 colour spaces, "
                        "4 k, 4 similarities) or single (HSV, k 100, colour+texture+size+fill)")
    p.add_argument("--top", type=int, default=50, help="number of best-ranked proposals to draw and print")
    p.add_argument("--max-side", type=int, default=None,
                   help="search a copy downscaled to this longer side (faster, coarser); boxes are mapped back")
    p.add_argument("--out", default=None, help="PNG file to draw the top proposals on")
    p.add_argument("--seed", type=int, default=0, help="seed of the ranking's random factor")
    p.add_argument("--ranking", default="paper", choices=["paper", "depth"],
                   help="paper: hierarchy position x random (large regions tend to come first); depth: depth in "
                        "the merge tree x random, as OpenCV (small regions first). Only the order changes")
    p.add_argument("--min-size", type=int, default=None,
                   help="smallest initial region in pixels (default: each k, as the authors' code)")
    p.add_argument("--json", action="store_true", help="print the top proposals as JSON")
    p.set_defaults(func=run_propose)


def run_propose(args):
    import json
    import time

    from scenekit.api import read_rgb
    from scenekit.errors import DataError
    from scenekit.proposals import selective_search

    if args.top < 0:
        raise DataError(f"--top must be >= 0, got {args.top}", field="top")
    if args.max_side is not None and args.max_side < 1:
        raise DataError(f"--max-side must be >= 1, got {args.max_side}", field="max_side")
    image = read_rgb(args.image)
    start = time.perf_counter()
    if args.min_size is not None and args.min_size < 1:
        raise DataError(f"--min-size must be >= 1, got {args.min_size}", field="min_size")
    boxes = selective_search(image, mode=args.mode, seed=args.seed, max_side=args.max_side,
                             min_size=args.min_size, ranking=args.ranking)
    seconds = time.perf_counter() - start
    top = boxes[:args.top].tolist()
    if args.out:
        import numpy as np

        from scenekit.viz import draw_boxes, enlarge

        picture, factor = enlarge(image)                    # small images drawn at >= 512 px, boxes scaled
        draw_boxes(picture, np.asarray(top, dtype=np.float64).reshape(-1, 4) * factor, width=1).save(args.out)
    if args.json:
        print(json.dumps({"image": args.image, "mode": args.mode, "num_proposals": len(boxes),
                          "seconds": round(seconds, 4), "boxes_xyxy": top}))
    else:
        print(f"{len(boxes)} proposals in {seconds:.2f} s ({args.mode} mode); top {len(top)}:")
        for rank, (x1, y1, x2, y2) in enumerate(top, start=1):
            print(f"{rank:5d}  {x1:6.0f} {y1:6.0f} {x2:6.0f} {y2:6.0f}")
        if args.out:
            print(f"drew the top {len(top)} to {args.out}")
    return 0


# ---------------------------------------------------------------------------------------------------- segment
def add_segment_parser(sub):
    p = sub.add_parser("segment", help="super-pixels (Felzenszwalb-Huttenlocher), or semantic segmentation "
                       "with a trained FCN checkpoint", formatter_class=_formatter)
    p.add_argument("image", metavar="IMAGE", help="image file (PNG, JPEG, ...)")
    p.add_argument("--superpixels", action="store_true",
                   help="graph-based over-segmentation (this or --checkpoint is required)")
    p.add_argument("--checkpoint", default=None,
                   help="label every pixel with a segmentation model trained by `scenekit train fcn` (best.pt)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run --checkpoint")
    p.add_argument("--scale", type=float, default=100.0, help="threshold k: larger gives larger segments")
    p.add_argument("--sigma", type=float, default=0.8, help="Gaussian pre-smoothing (0: none)")
    p.add_argument("--min-size", type=int, default=50, help="merge segments smaller than this many pixels")
    p.add_argument("--out", default=None,
                   help="PNG to write: each segment in a random colour, boundaries in white (default "
                        "superpixels.png); with --checkpoint the image tinted by class with a legend (default "
                        "segmentation.png), and the class map beside it as OUT_classes.png (palette of category ids)")
    p.add_argument("--seed", type=int, default=0, help="seed of the segment colours")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run_segment)


def run_segment(args):
    import json

    import numpy as np

    from scenekit.api import read_rgb
    from scenekit.errors import DataError
    from scenekit.proposals import felzenszwalb
    from scenekit.viz import enlarge

    if args.checkpoint:
        return _run_semantic_segment(args)
    if not args.superpixels:
        raise DataError("pass --superpixels (graph-based super-pixels) or --checkpoint (a trained FCN)",
                        field="superpixels")
    args.out = args.out or "superpixels.png"
    image = read_rgb(args.image)
    try:
        labels = felzenszwalb(image, scale=args.scale, sigma=args.sigma, min_size=args.min_size)
    except ValueError as error:
        raise DataError(str(error), file=args.image) from None
    colours = np.random.default_rng(args.seed).integers(0, 256, (int(labels.max()) + 1, 3), dtype=np.uint8)
    picture = colours[labels]                                   # [H, W] -> [H, W, 3]
    boundary = np.zeros(labels.shape, bool)
    boundary[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    boundary[1:, :] |= labels[1:, :] != labels[:-1, :]
    picture[boundary] = 255
    enlarge(picture)[0].save(args.out)                       # >= 512 px, segments kept as blocks of pixels
    summary = {"image": args.image, "segments": int(labels.max()) + 1, "out": args.out}
    print(json.dumps(summary) if args.json else f"{summary['segments']} super-pixels -> {args.out}")
    return 0


def _run_semantic_segment(args):
    """`segment --checkpoint`: the class of every pixel, drawn as a tinted overlay and saved as a class map."""
    import json
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from scenekit.errors import DataError
    from scenekit.api import load
    from scenekit.models.fcn import draw_semantic
    from scenekit.viz import colour_for, enlarge, enlarge_map

    model = load(args.checkpoint, args.device)
    result = model.predict(args.image)[0]
    if result.semantic is None:
        raise DataError(f"model {model.name!r} does not label pixels; train fcn, fcn-32s/16s/8s, deconvnet "
                        "or sliding-window", file=args.checkpoint)
    class_map = result.semantic
    out = Path(args.out or "segmentation.png")
    shown, _ = enlarge(result.image)                         # drawn at >= 512 px; the class map file keeps its size
    draw_semantic(np.asarray(shown), enlarge_map(class_map, shown.size), model.categories).save(out)
    classes = Image.fromarray(class_map.astype(np.uint8), mode="P")     # pixel value = category id
    classes.putpalette([v for c in range(256) for v in ((0, 0, 0) if c == 0 else colour_for(c))])
    classes_path = out.with_name(f"{out.stem}_classes.png")
    classes.save(classes_path)
    counts = np.bincount(class_map.ravel(), minlength=1)
    names = {0: "background", **model.categories}
    pixels = {names.get(c, str(c)): round(int(n) / class_map.size, 6) for c, n in enumerate(counts) if n}
    summary = {"image": args.image, "out": str(out), "class_map": str(classes_path), "pixels": pixels}
    print(json.dumps(summary) if args.json else
          f"{len(pixels)} classes ({', '.join(pixels)}) -> {out}, class map {classes_path}")
    return 0


# ---------------------------------------------------------------------------------------------------- evaluate
def add_evaluate_parser(sub):
    p = sub.add_parser("evaluate", help="score detections: COCO AP/AR (like pycocotools) or Pascal VOC AP",
                       formatter_class=_formatter,
                       description="Evaluate a COCO-format result file against COCO instances: "
                                   "`scenekit evaluate --gt instances.json --pred results.json`. Prints the "
                                   "12 COCO stats as pycocotools does (equal to its numbers), or the VOC "
                                   "per-class AP table with --metric voc.")
    p.add_argument("model", metavar="MODEL", nargs="?", default=None,
                   help="evaluate a trained model instead of a result file: MODEL --checkpoint FILE [--data SPEC] "
                        "runs the model's own metrics (e.g. ILSVRC localization errors for localizers)")
    p.add_argument("--checkpoint", default=None, help="MODEL: a checkpoint written by `scenekit train` (best.pt)")
    p.add_argument("--data", default="world", help="MODEL: data to evaluate on: world | coco:PATH | voc:PATH | "
                                                   "yolo:PATH")
    p.add_argument("--split", default="val", help="MODEL: split of --data to evaluate on")
    p.add_argument("--images", type=int, default=300, help="MODEL: world images to generate")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="MODEL: where to run")
    p.add_argument("--max-detections", type=int, default=None,
                   help="MODEL: most detections per image (default: the model's max_detections option); VOC mAP "
                        "takes them all, COCO AP each image's best 100 per category (its maxDets)")
    p.add_argument("--seed", type=int, default=0, help="MODEL: random seed (the world)")
    p.add_argument("--gt", help="ground truth: a COCO instances JSON file")
    p.add_argument("--pred", help="detections: a COCO results JSON file "
                                  "([{image_id, category_id, bbox [x, y, w, h], score[, segmentation]}]); a record "
                                  "with a file_name (as `scenekit predict` writes) is scored on the --gt image of "
                                  "that file name (the one sharing the most trailing path components; its base "
                                  "name alone when unique); names matching no image or several, or an image_id "
                                  "that disagrees with the file_name, are refused")
    p.add_argument("--metric", default="coco", choices=["coco", "voc"],
                   help="coco: AP@[.5:.95], AP50, AP75, APs/m/l, AR1/10/100, ARs/m/l; voc: per-class AP, mAP")
    p.add_argument("--iou-type", default="bbox", choices=["bbox", "segm"],
                   help="COCO: compare boxes or instance masks (segm needs segmentations in both files)")
    p.add_argument("--img-ids", default=None, help="COCO: evaluate only these image ids (comma-separated)")
    p.add_argument("--cat-ids", default=None, help="COCO: evaluate only these category ids (comma-separated)")
    p.add_argument("--iou-threshold", type=float, default=0.5, help="VOC: overlap a match needs (>=)")
    p.add_argument("--use-07-metric", action="store_true",
                   help="VOC: the VOC2007 11-point AP instead of the VOC2010+ area under the curve")
    p.add_argument("--plus-one", action="store_true",
                   help="VOC: the devkit's inclusive pixel boxes (width x2 - x1 + 1) instead of continuous ones")
    p.add_argument("--out", default=None,
                   help="folder to also write stats.json and pr_curves.png (per-class PR curves at IoU 0.5; "
                        "needs matplotlib)")
    p.add_argument("--explain", default=None, metavar="DIR",
                   help="also write why: DIR/decisions.csv (every detection at IoU 0.5 and 0.75: tp, fp or ignored "
                        "as COCOeval decides, the matched gt id, the cause), confusion_matrix.csv/.png, "
                        "per_class_ap.csv, pr_curves.png, galleries of the worst false positives and missed objects")
    p.add_argument("--diff", default=None, metavar="OTHER.json",
                   help="with --explain: DIR/diff.csv lists per image what this other result file does differently")
    p.add_argument("--explain-score", type=float, default=0.5,
                   help="with --explain: detections scoring at least this enter the confusion matrix and galleries")
    p.add_argument("--images-root", default=None,
                   help="with --explain --gt: the folder the ground truth's file_names are relative to, for the "
                        "galleries (default: the --gt file's folder)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    p.set_defaults(func=run_evaluate)


def _max_detections(args) -> dict:
    """`--max-detections N` as a recipe option over the checkpoint's (none: the model's own)."""
    from scenekit.errors import DataError

    if getattr(args, "max_detections", None) is None:
        return {}
    if args.max_detections < 1:
        raise DataError(f"must be >= 1, got {args.max_detections}", field="max_detections")
    return {"max_detections": args.max_detections}


def _id_list(text: str | None, option: str):
    from scenekit.errors import DataError

    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DataError(f"needs comma-separated integers, got {text!r}", field=option) from None


def _run_evaluate_checkpoint(args):
    """`scenekit evaluate MODEL --checkpoint FILE`: the model's own metrics on --data (scenekit.api.Model.evaluate)."""
    import json
    from pathlib import Path

    from scenekit.api import load
    from scenekit.errors import DataError

    if args.checkpoint is None:
        raise DataError(f"evaluating model {args.model!r} needs --checkpoint FILE (from `scenekit train`)",
                        field="checkpoint")
    model = load(args.checkpoint, args.device, **_max_detections(args))
    if args.model is not None and args.model != model.name:
        raise DataError(f"the checkpoint holds model {model.name!r}, not {args.model!r}",
                        file=args.checkpoint, field="model_name")
    dataset = model.load_data(args.data, args.split, images=args.images, seed=args.seed)
    metrics = model.evaluate(dataset)
    if args.explain:
        metrics = {**metrics, "explain": _explain(args, dataset, _dataset_detections(model, dataset))}
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"{model.name} on {args.data} ({args.split}, {len(dataset)} images)")
        for key, value in metrics.items():
            print(f"  {key:<16} {value:.4f}" if isinstance(value, float) else f"  {key:<16} {value}")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "stats.json").write_text(json.dumps(metrics, indent=1))
    return 0


def _dataset_detections(model, dataset) -> list[dict]:
    """`evaluate --explain` of a checkpoint: the model's detections on every image of `dataset`, as COCO records
    (with masks for Mask R-CNN, which `--iou-type segm` explains)."""
    from scenekit.data.transforms import load_image
    from scenekit.errors import DataError

    if model.task != "image":
        raise DataError(f"--explain explains detections; {model.name} does not detect", field="explain")
    images = [load_image(dataset, record) for record in dataset.records]
    found = model.predict(images, batch_size=max(1, len(images)))          # one batch, as the metrics ran
    return [record for r, result in zip(dataset.records, found) for record in result.to_coco(r.image_id)]


def run_evaluate(args):
    import json
    import math
    from pathlib import Path

    from scenekit.errors import DataError
    from scenekit.metrics import detection

    if args.model is not None or args.checkpoint is not None:
        return _run_evaluate_checkpoint(args)
    if not args.gt or not args.pred:
        raise DataError("needs --gt INSTANCES.json and --pred RESULTS.json", field="pred" if args.gt else "gt")
    if args.metric == "voc":
        summary = detection.voc_evaluate(args.gt, args.pred, args.iou_threshold, args.use_07_metric,
                                         plus_one=args.plus_one)
        stats = {"mAP": summary["mAP"], "AP": {str(k): v for k, v in summary["AP"].items()}}
        stats = json.loads(json.dumps(stats), parse_constant=lambda _: None)       # NaN -> null
        if args.json:
            print(json.dumps(stats))
        else:
            names = _category_names(args.gt)
            width = max([len(str(n)) for n in names.values()] + [8])
            for category, ap in summary["AP"].items():
                shown = "  n/a (no gt)" if math.isnan(ap) else f"{ap:.4f}"
                print(f"{names.get(category, category)!s:<{width}}  {shown}")
            print(f"{'mAP':<{width}}  {summary['mAP']:.4f}")
    else:
        stats = detection.coco_evaluate(args.gt, args.pred, args.iou_type,
                                        img_ids=_id_list(args.img_ids, "img-ids"),
                                        cat_ids=_id_list(args.cat_ids, "cat-ids"))
        if args.explain:
            if args.img_ids or args.cat_ids:
                raise DataError("--explain explains every image and category: drop --img-ids / --cat-ids",
                                field="explain")
            stats = {**stats, "explain": _explain(args, args.gt, args.pred)}
        print(json.dumps(stats) if args.json else detection.format_coco_stats(
            {k: v for k, v in stats.items() if k != "explain"}))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "stats.json").write_text(json.dumps(stats, indent=1))
        curves = detection.precision_recall_curves(args.gt, args.pred,
                                                   args.iou_type if args.metric == "coco" else "bbox")
        from scenekit.viz import plot_precision_recall

        plot_precision_recall(curves, out / "pr_curves.png", _category_names(args.gt),
                              title="precision-recall at IoU 0.5")
        if not args.json:
            print(f"wrote {out / 'stats.json'} and {out / 'pr_curves.png'}")
    return 0


def _explain(args, gt, results) -> dict:
    """`evaluate --explain DIR`: the decisions behind the numbers (scenekit.metrics.explain); a short summary."""
    from pathlib import Path

    from scenekit.metrics.explain import explain_detections

    root = args.images_root or (str(Path(gt).parent) if isinstance(gt, (str, Path)) else None)
    try:
        summary = explain_detections(gt, results, args.explain, images_root=root, diff=args.diff,
                                     iou_type=args.iou_type, score_threshold=args.explain_score)
    except ImportError as error:
        raise ScenekitError(str(error)) from None
    if not args.json:
        counts = summary["decisions"]["0.5"]
        print(f"explained at IoU 0.5: {counts.get('tp', 0)} tp, {counts.get('fp', 0)} fp, "
              f"{counts.get('ignored', 0)} ignored, {counts.get('missed', 0)} missed objects -> {args.explain}",
              file=sys.stderr)
        for note in summary.get("notes", []):
            print(f"note: {note}", file=sys.stderr)
    return {"dir": str(args.explain), "decisions": summary["decisions"], "files": summary["files"]}


def _category_names(gt_path) -> dict:
    from scenekit.metrics.detection import read_json

    return {c["id"]: c.get("name", str(c["id"])) for c in read_json(gt_path, "ground-truth")["categories"]}


# ---------------------------------------------------------------------------------------------------- caption
def add_caption_parser(sub):
    p = sub.add_parser("caption", help="caption images with a trained captioner (greedy, sampling or beam search)",
                       formatter_class=_formatter)
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files (PNG, JPEG, ...)")
    p.add_argument("--checkpoint", default=None, help="checkpoint of deepimagesent, showtell or showattendtell")
    p.add_argument("--onnx", default=None, help="instead of --checkpoint: a captioner's file from `scenekit export`, "
                                                "run with onnxruntime (CPU)")
    p.add_argument("--beam", type=int, default=1, help="beam size (1: greedy decoding)")
    p.add_argument("--length-penalty", type=float, default=0.0,
                   help="beam search ranks by log p / length^A (0: plain log-probability)")
    p.add_argument("--temperature", type=float, default=None, help="sample words at this temperature instead")
    p.add_argument("--max-length", type=int, default=20, help="most tokens to generate, <end> included")
    p.add_argument("--attention-out", default=None,
                   help="PNG of the attention map of every word (Show Attend and Tell; one image only)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run")
    p.add_argument("--seed", type=int, default=0, help="random seed (sampling)")
    p.add_argument("--json", action="store_true", help="print the captions as JSON")
    p.set_defaults(func=run_caption)


def run_caption(args):
    import json

    from PIL import Image

    from scenekit.errors import DataError

    if args.beam < 1 or args.max_length < 1:
        raise DataError("--beam and --max-length must be >= 1", field="beam")
    if args.attention_out and len(args.images) != 1:
        raise DataError("--attention-out draws one image; give exactly one", field="attention_out")
    if (args.checkpoint is None) == (args.onnx is None):
        raise DataError("give exactly one of --checkpoint FILE and --onnx FILE", field="checkpoint")
    model = _load_model(args)           # --onnx: the encoder and the decoder step in onnxruntime, the loop here
    if model.task != "caption":
        raise DataError(f"the file holds {model.name!r}, not a captioner", file=args.checkpoint or args.onnx)
    results = model.predict(args.images, beam=args.beam, length_penalty=args.length_penalty,
                            temperature=args.temperature, max_length=args.max_length, seed=args.seed)
    if args.attention_out:
        if results[0].attention is None:
            raise DataError(f"{model.name} has no attention; --attention-out needs showattendtell",
                            field="attention_out")
        Image.fromarray(results[0].plot_attention()).save(args.attention_out)
    rows = [{"image": result.file_name, "caption": result.caption} for result in results]
    if args.json:
        print(json.dumps(rows))
    else:
        for row in rows:
            print(f"{row['image']}: {row['caption']}")
        if args.attention_out:
            print(f"attention maps -> {args.attention_out}")
    return 0


# ---------------------------------------------------------------------------------------------------- ask
def add_ask_parser(sub):
    p = sub.add_parser("ask", help="answer a multiple-choice question about an image with a trained VQA model",
                       formatter_class=_formatter)
    p.add_argument("image", metavar="IMAGE", help="image file (PNG, JPEG, ...)")
    p.add_argument("question", metavar="QUESTION", help='the question, e.g. "what colour is the star?"')
    p.add_argument("--choices", nargs="+", default=None,
                   help="the candidate answers (usually 4); without them an open-ended model (trained on VQA v2) "
                        "answers from its answer classes")
    p.add_argument("--checkpoint", required=True, help="a checkpoint of `scenekit train vqa`")
    p.add_argument("--attention-out", default=None, help="PNG of the attention map over the image")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run")
    p.add_argument("--json", action="store_true", help="print the answer and the probabilities as JSON")
    p.set_defaults(func=run_ask)


def run_ask(args):
    import json

    from PIL import Image

    from scenekit.api import load
    from scenekit.errors import DataError

    model = load(args.checkpoint, args.device)
    if model.task != "vqa":
        raise DataError(f"the checkpoint holds {model.name!r}, not a VQA model", file=args.checkpoint)
    result = model.predict(args.image, question=args.question, choices=args.choices)[0]
    if args.attention_out:
        if result.attention is None:
            raise DataError("this VQA model was trained without attention", field="attention_out")
        Image.fromarray(result.plot_attention()).save(args.attention_out)          # >= 512 px
    ranked = list(zip(result.choices, result.probabilities.tolist()))     # open-ended: over the answer classes
    if not args.choices:                                                # the ten likeliest answer classes
        ranked = sorted(ranked, key=lambda pair: -pair[1])
    if args.json:
        print(json.dumps({"answer": result.answer, "index": int(result.probabilities.argmax()),
                          "probabilities": dict(zip(result.choices, result.probabilities.tolist()))}))
    else:
        print(result.answer)
        for choice, probability in ranked[:10]:
            print(f"  {probability:6.3f}  {choice}")
    return 0


# ---------------------------------------------------------------------------------------------------- sample
def add_sample_parser(sub):
    p = sub.add_parser("sample", help="generate text with a trained character language model (charlm)",
                       formatter_class=_formatter)
    p.add_argument("--checkpoint", required=True, help="a checkpoint of `scenekit train charlm`")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (0: greedy)")
    p.add_argument("--length", type=int, default=500, help="characters (bytes) to generate at most")
    p.add_argument("--prime", default="", help="text to start from")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(func=run_sample)


def run_sample(args):
    import torch

    from scenekit.errors import DataError
    from scenekit.models.language import CharLM, sample_text

    _, model, _, checkpoint = registry.restore(args.checkpoint, args.device)
    if not isinstance(model, CharLM):
        raise DataError(f"the checkpoint holds {checkpoint['model_name']!r}, not charlm", file=args.checkpoint)
    try:
        text = sample_text(model, args.length, args.temperature, args.prime,
                           generator=torch.Generator().manual_seed(args.seed))
    except ValueError as error:
        raise DataError(str(error), field="temperature/length") from None
    print(text)
    return 0


# ---------------------------------------------------------------------------------------------------- export
def add_export_parser(sub):
    p = sub.add_parser("export", help="export a trained model to ONNX (run it with `scenekit predict --onnx`)",
                       formatter_class=_formatter,
                       description="Writes the model's network (backbone + heads, raw outputs) as ONNX with a "
                                   "dynamic batch (and image size where the model allows); decoding and NMS stay "
                                   "in Python. Two-stage detectors also write their RoI heads (OUT stem + "
                                   ".head.onnx, .mask_head.onnx), captioners their decoder step (.step.onnx): "
                                   "keep them beside OUT.")
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by `scenekit train` (best.pt)")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format")
    p.add_argument("--out", default="model.onnx", help="file to write")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    p.add_argument("--no-check", action="store_true",
                   help="skip running the file with onnxruntime against PyTorch on a random input")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run_export)


def run_export(args):
    import json

    from scenekit import export
    from scenekit.api import load

    model = load(args.checkpoint, "cpu")
    path = model.export(args.out, opset=args.opset)
    summary = {"onnx": str(path), "model": model.name, "bytes": path.stat().st_size}
    metadata = export.read_metadata(path)
    summary.update({"outputs": metadata["outputs"], "runnable": metadata["runnable"],
                    "dynamic_size": metadata["dynamic_size"], "parts": list(metadata["parts"]),
                    "part_files": [str(export.part_path(path, name)) for name in metadata["parts"]]})
    if not args.no_check:
        summary["max_abs_difference"] = _onnx_difference(model, path)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"exported {model.name} to {path} ({summary['bytes'] / 2 ** 20:.2f} MiB; outputs "
              f"{', '.join(summary['outputs'])}; {'batch, height, width' if summary['dynamic_size'] else 'batch'} "
              "dynamic)")
        if "max_abs_difference" in summary:
            print(f"onnxruntime vs PyTorch: max |difference| {summary['max_abs_difference']:.2e}")
        for part_file in summary["part_files"]:
            print(f"  with {part_file} (keep it beside {path.name})")
    return 0


def _onnx_difference(model, path) -> float:
    """Largest |onnxruntime - PyTorch| over the outputs of the exported file and its parts, on the examples they
    were traced with."""
    import torch

    from scenekit import export

    graph = export.export_graph(model.recipe, model.module)
    with torch.no_grad():
        expected = graph.network(graph.example)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = export.OnnxSession(path).run(graph.example)
    differences = [float(abs(g - e.numpy()).max()) for g, e in zip(got, expected)]
    for part in graph.parts:                # the RoI heads / decoder step on their traced examples
        with torch.no_grad():
            expected = part.network(*part.example)                 # a tuple
        got = export.OnnxSession(export.part_path(path, part.name)).run(*part.example)
        differences += [float(abs(g - e.numpy()).max()) for g, e in zip(got, expected)]
    return max(differences)


# ---------------------------------------------------------------------------------------------------- serve
def add_serve_parser(sub):
    p = sub.add_parser("serve", help="web demo: an HTTP API (POST /predict) and a page that draws the results",
                       formatter_class=_formatter,
                       description="Open http://HOST:PORT/ and drop an image. API: POST /predict (multipart, "
                                   "field 'file') -> JSON boxes/labels/scores, masks as COCO RLE, or a caption; "
                                   "GET /healthz.")
    p.add_argument("--checkpoint", default=None, help="a checkpoint written by `scenekit train` (best.pt)")
    p.add_argument("--onnx", default=None, help="instead of --checkpoint: a file from `scenekit export`")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run --checkpoint")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted request body, MiB")
    p.add_argument("--max-pixels", type=int, default=4096 * 4096, help="largest accepted image, width x height")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds one prediction may take (then 504)")
    p.add_argument("--workers", type=int, default=1, help="predictions running at once")
    p.add_argument("--max-pending", type=int, default=16,
                   help="predictions running or waiting; more are answered 503 at once")
    p.add_argument("--seed", type=int, default=0, help="random seed (for models that sample)")
    p.set_defaults(func=run_serve)


def run_serve(args):
    import torch

    from scenekit.errors import DataError

    if (args.checkpoint is None) == (args.onnx is None):
        raise DataError("give exactly one of --checkpoint FILE and --onnx FILE", field="checkpoint")
    if min(args.workers, args.max_pending) < 1 or args.max_upload_mb <= 0 or args.max_pixels < 1 \
            or args.timeout <= 0:
        raise DataError("--workers, --max-pending, --max-upload-mb, --max-pixels and --timeout must be positive",
                        field="workers")
    try:
        from scenekit.serve.app import ServeConfig, check_servable, create_app, serve
    except ImportError as error:
        raise ScenekitError(str(error)) from None
    torch.manual_seed(args.seed)
    model = _load_model(args)
    check_servable(model, args.checkpoint or args.onnx)             # refuse now, not 500 per request
    config = ServeConfig(max_upload_bytes=int(args.max_upload_mb * 2 ** 20), max_pixels=args.max_pixels,
                         timeout_s=args.timeout, workers=args.workers, max_pending=args.max_pending)
    app = create_app(model, config=config)
    print(f"serving {model.name} on http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    serve(app, args.host, args.port)
    return 0


# ---------------------------------------------------------------------------------------------------- trace
def add_trace_parser(sub):
    p = sub.add_parser("trace", help="pictures of every step of a method on one image, labelled with the paper",
                       formatter_class=_formatter, add_help=False,
                       description="Writes OUT/NN-step.png, one picture per step of the method (each titled with the "
                                   "paper and section it implements), and OUT/index.html listing them in order. "
                                   "Give a trained --checkpoint, or a MODEL name for an untrained model of that "
                                   "family (selective-search: the proposals alone).")
    p.add_argument("-h", "--help", action=_HelpWithOptions,
                   help="show this help (after MODEL: MODEL's options too) and exit")
    p.add_argument("model", metavar="MODEL", nargs="?", default=None,
                   help=f"without --checkpoint: selective-search or one of {', '.join(registry.FAMILIES)}")
    p.add_argument("image", metavar="IMAGE", nargs="?", default=None,
                   help="image file (PNG, JPEG, ...); charlm traces --text instead")
    p.add_argument("--checkpoint", default=None, help="a checkpoint written by `scenekit train` (best.pt)")
    p.add_argument("--out", default="trace", help="folder for the pictures and index.html")
    p.add_argument("--question", default=None, help="vqa: the question about the image")
    p.add_argument("--choices", nargs="+", default=None, help="vqa: the candidate answers")
    p.add_argument("--text", default=None, help="charlm: the text whose gate activations are drawn")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="recipe option of the untrained MODEL (repeatable), as for `scenekit train`")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run")
    p.add_argument("--seed", type=int, default=0, help="random seed (the untrained model's weights)")
    p.set_defaults(func=run_trace)


def run_trace(args):
    from pathlib import Path

    import torch

    from scenekit.errors import DataError
    from scenekit.trace import trace

    torch.manual_seed(args.seed)
    if args.checkpoint:                          # `trace --checkpoint C IMAGE`: the one positional is the image
        if args.image is None:
            args.model, args.image = None, args.model
        recipe, model, device, _ = registry.restore(args.checkpoint, args.device)
    elif args.model is None:
        raise DataError("give --checkpoint FILE or a MODEL name", field="model")
    elif args.model == "selective-search":
        recipe, model, device = None, None, torch.device("cpu")
    elif args.model not in registry.FAMILIES:
        raise DataError(f"unknown model {args.model!r}; known: selective-search, {', '.join(registry.FAMILIES)}",
                        field="model")
    else:
        from scenekit.data.world import CATEGORIES
        from scenekit.engine.train import resolve_device

        recipe = registry.make_recipe(args.model, dict(CATEGORIES), registry.parse_options(args.option, args.model))
        device = resolve_device(args.device)
        model = recipe.build_model(recipe.model_config).to(device).eval()
    name = recipe.model_name if recipe is not None else "selective-search"
    if args.image is None and name != "charlm":
        raise DataError(f"{name} traces an image: give IMAGE", field="image")
    if args.image is not None and not Path(args.image).is_file():
        raise DataError("no such image file", file=args.image)
    files = trace(recipe, model, args.image, args.out, question=args.question, choices=args.choices,
                  text=args.text, device=device)
    print(f"traced {name}: {len(files)} pictures -> {Path(args.out) / 'index.html'}")
    return 0


# ---------------------------------------------------------------------------------------------------- plot
def add_plot_parser(sub):
    p = sub.add_parser("plot", help="training curves of runs: one run's curves.png, or several runs overlaid",
                       formatter_class=_formatter,
                       description="RUN is a run folder of `scenekit train` (with its metrics.csv) or a metrics.csv. "
                                   "One RUN: its loss terms and validation metrics per epoch; several: one panel "
                                   "per column, one line per run.")
    p.add_argument("runs", metavar="RUN", nargs="+", help="run folders or metrics.csv files")
    p.add_argument("--out", default="curves.png", help="PNG file to write")
    p.add_argument("--best-metric", default=None,
                   help="with one RUN: the validation metric whose best epoch is marked (default: none marked)")
    p.add_argument("--best-mode", default="max", choices=["max", "min"], help="whether larger --best-metric is better")
    p.set_defaults(func=run_plot)


def run_plot(args):
    from pathlib import Path

    from scenekit.errors import DataError
    from scenekit.viz import plot_runs, plot_training_curves

    logs = []
    for run in args.runs:
        path = Path(run)
        log = path / "metrics.csv" if path.is_dir() else path
        if not log.is_file():
            raise DataError("no metrics.csv here (give a run folder of `scenekit train` or its metrics.csv)",
                            file=str(run))
        logs.append(log)
    try:
        if len(logs) == 1:
            written = plot_training_curves(logs[0], args.out, title=str(args.runs[0]), best_metric=args.best_metric,
                                           best_mode=args.best_mode)
        else:
            written = plot_runs(logs, args.out, names=[str(run) for run in args.runs])
    except (ImportError, ValueError) as error:
        raise ScenekitError(str(error)) from None
    print(f"plotted {len(logs)} run{'s' if len(logs) > 1 else ''} -> {written}")
    return 0


# ---------------------------------------------------------------------------------------------------- main
PARSERS = [add_demo_parser, add_data_parser, add_train_parser, add_predict_parser, add_propose_parser,
           add_segment_parser, add_evaluate_parser, add_caption_parser, add_ask_parser, add_sample_parser,
           add_export_parser, add_serve_parser, add_trace_parser, add_plot_parser]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scenekit", description="Visual scene understanding: detection, segmentation, captioning, VQA.",
        formatter_class=_formatter)
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for add in PARSERS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "threads", None) is not None:
            if args.threads < 1:
                raise ScenekitError(f"--threads must be >= 1, got {args.threads}")
            import torch

            torch.set_num_threads(args.threads)
        return int(args.func(args) or 0)
    except (ScenekitError, FileNotFoundError, PermissionError) as error:
        print(f"scenekit {args.verb}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"scenekit {args.verb}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:                     # `scenekit ... | head`: the reader left, not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
