"""scenekit.trace: every family writes one readable picture per step of its method, in order, and an index.html
that links them all (checked in headless Chromium, like the web demo, when Chromium is installed)."""

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scenekit.models.registry import make_recipe
from scenekit.data.captions import caption_vocabulary
from scenekit.data.world import make_world
from scenekit.errors import DataError
from scenekit.trace import FAMILIES, trace

pytestmark = pytest.mark.usefixtures("one_thread")

CHROMIUM = Path("/usr/bin/chromium")

# Tiny models: every family untrained, a few seconds each.
TINY = {
    "localizer": dict(image_size=32, channels=[4, 8], hidden=16),
    "localizer-agnostic": dict(image_size=32, channels=[4, 8], hidden=16),
    "overfeat": dict(image_size=32, channels=[4, 8], hidden=16),
    "fcn": dict(image_size=32, channels=[4, 6, 8], head=8),
    "fcn-32s": dict(image_size=32, channels=[4, 6, 8], head=8),
    "fcn-16s": dict(image_size=32, channels=[4, 6, 8], head=8),
    "fcn-8s": dict(image_size=32, channels=[4, 6, 8], head=8),
    "deconvnet": dict(image_size=32, channels=[4, 6, 8]),
    "deconvnet-transposed": dict(image_size=32, channels=[4, 6, 8]),
    "sliding-window": dict(image_size=32, window=16, channels=[4, 8], hidden=8),
    "fast-rcnn": dict(image_size=64, channels=[4, 8, 8], extra_convs=0, hidden=16, max_proposals=100),
    "faster-rcnn": dict(image_size=64, channels=[4, 8, 8], extra_convs=0, hidden=16),
    "rcnn": dict(input_size=16, channels=[4, 8], hidden=16, max_proposals=100),
    "yolo1": dict(image_size=64, channels=[4, 8, 8], hidden=16, grid=4),
    "yolo2": dict(image_size=64, channels=[4, 8, 8], head_channels=8, num_anchors=3),
    "mask-rcnn": dict(image_size=64, channels=[4, 8, 8], extra_convs=0, hidden=16, mask_channels=8, mask_convs=1),
    "charlm": dict(hidden=16, layers=2, embedding=8),
    "deepimagesent": dict(image_size=16, channels=[8, 16], feature=32, embedding=16, hidden=16),
    "showtell": dict(image_size=16, channels=[8, 16], feature=32, embedding=16, hidden=16),
    "showattendtell": dict(image_size=16, channels=[8, 16], feature=32, embedding=16, hidden=16, attention=8),
    "vqa": dict(image_size=32, channels=[4, 8], feature=16, embedding=8, hidden=16, attention_size=8, joint=16,
                context_layers=1),
}

LOCALIZER = ["window-and-features", "classifier", "regressor", "top-5-guesses"]
FCN8S = ["encoder", "coarse-scores", "skip-pool2", "skip-pool1", "upsampled-output"]   # 3 stages: stride 8
FASTER = ["shared-features", "anchors-at-one-location", "anchor-minibatch", "objectness", "proposals-before-nms",
          "proposals-after-nms", "roi-pool-vs-roialign", "head-scores-and-boxes", "detections"]
CAPTIONER = ["encoder", "next-word", "beam-search", "caption"]
STEPS = {
    "localizer": LOCALIZER,
    "localizer-agnostic": LOCALIZER,
    "overfeat": ["convolutional-windows", "windows-scale-1", "windows-scale-1-25", "merge-0-10", "merge-0-20",
                 "merge-0-40", "merge-0-80", "detections"],
    "fcn": FCN8S,
    "fcn-8s": FCN8S,
    "fcn-16s": ["encoder", "coarse-scores", "skip-pool2", "upsampled-output"],
    "fcn-32s": ["encoder", "coarse-scores", "upsampled-output"],
    "deconvnet": ["switches", "decoder", "output"],
    "deconvnet-transposed": ["switches", "decoder", "output"],
    "sliding-window": ["windows", "label-map", "class-probabilities"],
    "rcnn": ["proposals", "warped-regions", "svm-scores", "box-regression", "detections"],
    "fast-rcnn": ["proposals", "shared-features", "roi-pool-vs-roialign", "head-scores-and-boxes", "detections"],
    "faster-rcnn": FASTER,
    "mask-rcnn": FASTER + ["mask-feature-level", "mask-head", "masks-in-the-image"],
    "yolo1": ["grid-and-responsible-cells", "boxes-of-responsible-cells", "class-probability-map", "all-boxes",
              "detections"],
    "yolo2": ["priors", "cell-and-prior-per-object", "predictions-at-responsible-cells", "objectness", "detections"],
    "charlm": ["gates-layer-1", "gates-layer-2", "gate-saturation", "cells-on-the-text", "next-character"],
    "deepimagesent": CAPTIONER[:1] + ["image-bias"] + CAPTIONER[1:],
    "showtell": CAPTIONER[:1] + ["lstm-gates"] + CAPTIONER[1:],
    "showattendtell": CAPTIONER[:1] + ["attention-per-word", "gating-scalar"] + CAPTIONER[1:],
    "vqa": ["grid-cells", "attention-per-word", "count-glimpse", "answer-scores"],
    "selective-search": ["initial-regions", "grouping-1", "grouping-2", "grouping-3", "diversification",
                         "ranked-proposals"],
}


@pytest.fixture(scope="module")
def world():
    return make_world(1, image_size=96, min_objects=2, max_objects=3, seed=3)


def tiny(name, world):
    torch.manual_seed(0)
    options = dict(TINY[name])
    if name in ("deepimagesent", "showtell", "showattendtell", "vqa"):      # the world's full grammar takes seconds
        options["vocabulary"] = caption_vocabulary(world, with_questions=True).words
    recipe = make_recipe(name, world.categories, options)
    return recipe, recipe.build_model(recipe.model_config)


def run(name, world, out, with_truth=True):
    record = world.records[0]
    question = record.questions[0]
    recipe, model = (None, None) if name == "selective-search" else tiny(name, world)
    return trace(recipe, model, None if name == "charlm" else record.image, out,
                 targets={"boxes": record.boxes, "labels": record.labels} if with_truth else None,
                 question=question.question, choices=question.choices, text="a red circle.")


def check_written(files, out, steps):
    assert [re.sub(r"^\d\d-", "", f.stem) for f in files] == steps
    assert [f.name for f in files] == [f"{k:02d}-{step}.png" for k, step in enumerate(steps, start=1)]
    page = (out / "index.html").read_text()
    links = re.findall(r'<img src="([^"]+)"', page)
    assert links == [f.name for f in files]                     # every picture, in the order of the steps
    for f in files:
        with Image.open(f) as picture:
            assert max(picture.size) >= 512, f"{f.name} is {picture.size}"
    assert "http://" not in page and "https://" not in page     # no external resource


@pytest.mark.parametrize("name", sorted(set(TINY) | {"selective-search"}))
def test_trace_writes_a_picture_per_step_and_an_index(name, world, tmp_path):
    files = run(name, world, tmp_path)
    check_written(files, tmp_path, STEPS[name])


def test_every_model_of_the_cli_has_a_trace():
    from scenekit.models.registry import FAMILIES as MODELS

    assert set(MODELS) <= set(FAMILIES)
    assert set(MODELS) <= set(TINY)


def test_each_step_names_its_paper_and_section(world, tmp_path):
    run("faster-rcnn", world, tmp_path)
    page = (tmp_path / "index.html").read_text()
    assert '<span class="source">(Ren et al. 2015, sec. 3.1.2)</span>' in page
    assert "Anchors at one location: 3 scales x 3 ratios, labelled against the ground truth" in page
    assert "Girshick 2015, sec. 2.1; He et al. 2017, sec. 3" in page            # RoI pooling against RoIAlign


def test_without_ground_truth_the_models_own_detections_stand_in_and_the_caption_says_so(world, tmp_path):
    run("yolo2", world, tmp_path / "yolo2", with_truth=False)
    assert "the model's own" in (tmp_path / "yolo2" / "index.html").read_text()
    run("faster-rcnn", world, tmp_path / "faster", with_truth=False)
    assert "stand in for it" in (tmp_path / "faster" / "index.html").read_text()


def test_trace_reads_an_image_file_and_refuses_a_model_it_does_not_know(world, tmp_path):
    path = tmp_path / "scene.png"
    Image.fromarray(world.records[0].image).save(path)
    recipe, model = tiny("fcn-32s", world)
    assert len(trace(recipe, model, path, tmp_path / "out")) == 3
    recipe.model_name = "my-model"
    with pytest.raises(DataError, match="no trace"):
        trace(recipe, torch.nn.Linear(1, 1), path, tmp_path / "other")


@pytest.mark.timeout(60)
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                    "(apt-get install chromium)")
def test_index_loads_every_picture_in_headless_chromium(world, tmp_path):
    files = run("localizer", world, tmp_path / "trace")
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
               (tmp_path / "trace" / "index.html").as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=45)
    body = re.search(r"<body([^>]*)>", done.stdout)
    assert body, f"no page in chromium's output: {done.stderr[-2000:]}"
    assert re.search(r'data-loaded="(\d+)/(\d+)"', body.group(1)).groups() == (str(len(files)),) * 2
    assert np.all([f"#step-{k}" in done.stdout for k in range(1, len(files) + 1)])
