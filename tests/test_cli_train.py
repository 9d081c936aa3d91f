"""`scenekit train` at its edges (issue 18): checked --option values, a validation split held out of user data,
no run written over another, and extending a finished run at a learning rate above 0."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from scenekit.cli import main
from scenekit.data.records import Dataset, Record
from scenekit.data.splits import hold_out, read_split, write_split
from scenekit.data.world import CATEGORIES, write_world
from scenekit.engine import train as engine
from scenekit.engine.checkpoint import load_checkpoint, save_checkpoint
from scenekit.engine.runs import choose_run_folder
from scenekit.errors import DataError
from scenekit.models import registry
from scenekit.models.registry import make_recipe
from scenekit.recipes import Phase, Recipe, check_options

TINY_YOLO = ["--image-size", "64", "--batch-size", "2", "--option", "channels=[4,8,8,8,8]", "--option",
             "head_channels=8", "--option", "num_anchors=3", "--log-every", "0"]


def _one_line_error(capsys) -> str:
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    return error


# ------------------------------------------------------------------------------------------------ options
def test_misspelled_option_is_one_line_naming_the_key_and_its_close_match(tmp_path, capsys):
    code = main(["train", "yolo2", "--data", "world:20", "--option", "chanels=[8,16]", "--out", str(tmp_path)])
    error = _one_line_error(capsys)
    assert code == 2
    assert "chanels" in error and "did you mean channels" in error and "--list-options" in error
    assert not any(tmp_path.iterdir())                     # refused before anything was written


def test_option_value_that_is_not_json_names_the_option_the_value_and_the_kind_expected(tmp_path, capsys):
    code = main(["train", "yolo2", "--data", "world:20", "--option", "channels=notjson", "--out", str(tmp_path)])
    error = _one_line_error(capsys)
    assert code == 2
    assert "option channels" in error and "'notjson'" in error and "a JSON list" in error
    assert "image_size" not in error


def test_option_values_of_another_json_kind_are_refused_and_numbers_pass_as_floats():
    with pytest.raises(DataError, match="option hidden: expected an integer .*got true"):
        registry.parse_options(["hidden=true"], "yolo2")
    with pytest.raises(DataError, match="option flip: expected true or false .*got 1"):
        registry.parse_options(["flip=1"], "yolo2")
    with pytest.raises(DataError, match="option lr: expected a number or null"):
        registry.parse_options(["lr=[0.1]"], "yolo2")
    assert registry.parse_options(["lr=1", "flip=False", "batch-norm=null"], "yolo2") == \
        {"lr": 1, "flip": False, "batch_norm": None}


def test_string_options_keep_the_text_as_typed_and_untyped_ones_still_take_json():
    options = registry.parse_options(["backbone=123", "proposal_cache=2024", "backbone_weights=null", 'norm="group"'],
                                 "fast-rcnn")
    assert options == {"backbone": "123", "proposal_cache": "2024", "backbone_weights": None, "norm": "group"}
    assert registry.parse_options(["anchors=hand"], "yolo2") == {"anchors": "hand"}            # a mode or a list
    assert registry.parse_options(["anchors=[[0.1, 0.2]]"], "yolo2") == {"anchors": [[0.1, 0.2]]}


def test_make_recipe_checks_options_of_library_callers_too():
    with pytest.raises(DataError, match="option hiden: localizer has no such option; did you mean hidden"):
        make_recipe("localizer", dict(CATEGORIES), {"hiden": 16})
    with pytest.raises(DataError, match="option channels: expected a JSON list"):
        make_recipe("localizer", dict(CATEGORIES), {"channels": "4,8"})
    recipe = make_recipe("localizer", dict(CATEGORIES), {"channels": (4, 8), "hidden": 16, "lr": 1})
    assert recipe.options["channels"] == [4, 8]


def test_every_models_own_stored_options_pass_its_checks():
    for name in registry.FAMILIES:
        recipe = make_recipe(name, dict(CATEGORIES))
        assert check_options(recipe.options, registry.model_options(name), name) == recipe.options, name


def test_checkpoint_of_an_older_version_with_a_removed_option_still_loads(tmp_path, capsys):
    recipe = make_recipe("localizer", dict(CATEGORIES), {"image_size": 32, "channels": [4, 8], "hidden": 16})
    model = recipe.build_model(recipe.model_config)
    state = {"model_name": "localizer", "categories": recipe.categories, "model_config": recipe.model_config,
             "model": model.state_dict(), "options": {**recipe.options, "old_knob": 3}}
    save_checkpoint(tmp_path / "old.pt", state)
    restored, restored_model, _, _ = registry.restore(str(tmp_path / "old.pt"), "cpu")
    assert restored.options == recipe.options
    assert "old_knob" in capsys.readouterr().err
    save_checkpoint(tmp_path / "bad.pt", {**state, "options": {**recipe.options, "hidden": "wide"}})
    with pytest.raises(DataError, match=r"bad\.pt: field option hidden: expected an integer"):
        registry.restore(str(tmp_path / "bad.pt"), "cpu")


def test_list_options_prints_each_option_with_its_default(capsys):
    assert main(["train", "yolo1", "--list-options"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "default [16, 32, 64, 128, 256]" in lines["channels"] and "a JSON list" in lines["channels"]
    assert f"{lines['version']} ".split("default ")[1].split()[0] == "1"     # the table's preset for yolo1
    assert "name" not in lines
    assert "network input side" in lines["image_size"]             # and its one line of help


def test_train_help_after_a_model_lists_its_options_with_their_help(capsys):
    with pytest.raises(SystemExit) as done:
        main(["train", "yolo2", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--list-options" in out and "yolo2's options (--option KEY=VALUE):" in out
    line = next(line for line in out.splitlines() if line.startswith("image_size "))
    assert "default null" in line and "network input side" in line
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "'s options (--option KEY=VALUE):" not in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ validation split
def _records(count):
    return Dataset([Record(image_id=10 + k, file_name=f"img{k}.png", width=8, height=8) for k in range(count)],
                   {1: "thing"}, image_root=None, name="mine")


def test_hold_out_is_seeded_disjoint_and_keeps_categories():
    train, val = hold_out(_records(20), 0.1, seed=3)
    ids = lambda d: [r.image_id for r in d.records]                    # noqa: E731
    assert len(val) == 2 and len(train) == 18 and sorted(ids(train) + ids(val)) == list(range(10, 30))
    assert val.categories == {1: "thing"} and ids(hold_out(_records(20), 0.1, seed=3)[1]) == ids(val)
    assert ids(hold_out(_records(20), 0.1, seed=4)[1]) != ids(val)
    assert len(hold_out(_records(3), 0.1, seed=0)[1]) == 1            # at least one image
    with pytest.raises(DataError, match="too few to hold out.*--val-data"):
        hold_out(_records(1), 0.1, seed=0)


def test_split_file_round_trips_and_refuses_changed_data(tmp_path):
    data = _records(10)
    train, val = hold_out(data, 0.3, seed=1)
    write_split(tmp_path / "split.json", train, val, seed=1)
    again_train, again_val = read_split(tmp_path / "split.json", data)
    assert [r.image_id for r in again_val.records] == [r.image_id for r in val.records]
    assert [r.image_id for r in again_train.records] == [r.image_id for r in train.records]
    with pytest.raises(DataError, match="split.json: 1 images of the training data are on neither side"):
        read_split(tmp_path / "split.json", Dataset(data.records + _records(11).records[10:], {1: "thing"}))
    with pytest.raises(DataError, match="not in the training data"):
        read_split(tmp_path / "split.json", Dataset(data.records[1:], {1: "thing"}))


@pytest.mark.timeout(180)
def test_training_on_user_data_without_val_data_validates_on_a_held_out_split(tmp_path, capsys):
    json_path = write_world(tmp_path / "data", 6, seed=3, split="train", image_size=64)
    out = tmp_path / "run"
    code = main(["train", "yolo1", "--data", f"coco:{json_path}", "--out", str(out), "--epochs", "1", "--json",
                 *TINY_YOLO])
    captured = capsys.readouterr()
    assert code == 0
    assert "validating on 1 of the 6 images" in captured.err and "training on the other 5" in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["best"] is not None
    split = json.loads((out / "split.json").read_text())
    assert len(split["val"]) == 1 and len(split["train"]) == 5
    assert {e["id"] for e in split["val"]}.isdisjoint(e["id"] for e in split["train"])

    # Resumed (and extended by one epoch), the run validates on the same images, read from OUT/split.json.
    before = (out / "split.json").read_text()
    assert main(["train", "yolo1", "--data", f"coco:{json_path}", "--out", str(out), "--epochs", "2", "--resume",
                 "--val-fraction", "0.5", *TINY_YOLO]) == 0
    captured = capsys.readouterr()
    assert f"the 1 images held out in {out / 'split.json'}" in captured.err
    assert "extending phase detect from 1 to 2 epochs" in captured.out
    assert (out / "split.json").read_text() == before
    assert load_checkpoint(out / "last.pt")["step"] == 2 * 3


def test_data_too_small_to_split_is_one_line_naming_the_way_out(tmp_path, capsys):
    json_path = write_world(tmp_path / "data", 1, seed=3, split="train", image_size=64)
    code = main(["train", "yolo1", "--data", f"coco:{json_path}", "--out", str(tmp_path / "run"), *TINY_YOLO])
    assert code == 2 and "--val-data" in _one_line_error(capsys)


# ------------------------------------------------------------------------------------------------ run folders
def _previous_run(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("last.pt", "best.pt", "metrics.csv", "config.json", "split.json"):
        (folder / name).write_text("old")
    (folder / "tensorboard").mkdir()
    (folder / "notes.txt").write_text("mine")
    return folder


def test_train_into_a_folder_holding_a_run_is_refused_with_one_line(tmp_path, capsys):
    out = _previous_run(tmp_path / "run")
    code = main(["train", "yolo1", "--data", "world", "--train-images", "4", "--out", str(out), "--epochs", "1",
                 *TINY_YOLO])
    error = _one_line_error(capsys)
    assert code == 2 and str(out) in error and "--resume" in error and "--exist-ok" in error
    assert (out / "metrics.csv").read_text() == "old"


@pytest.mark.timeout(120)
def test_under_torchrun_rank_0_decides_and_every_process_stops_on_a_folder_holding_a_run(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this Python")
    out = _previous_run(tmp_path / "run")
    done = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "scenekit.cli", "train",
                           "localizer", "--train-images", "8", "--out", str(out), "--epochs", "1", "--device", "cpu"],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=100)
    assert done.returncode != 0
    assert done.stderr.count("scenekit train: error:") == 2 and done.stderr.count("holds a previous run") == 2
    assert (out / "metrics.csv").read_text() == "old"


def test_run_folder_choice_resume_exist_ok_and_a_fresh_default(tmp_path):
    out = _previous_run(tmp_path / "run")
    assert choose_run_folder(str(out), "unused", resume=True) == (out, None)
    folder, note = choose_run_folder(str(out), "unused", exist_ok=True)
    assert folder == out and "last.pt" in note
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]             # the user's file stays
    default = tmp_path / "runs" / "yolo2"
    _previous_run(default)
    _previous_run(tmp_path / "runs" / "yolo2-2")
    folder, note = choose_run_folder(None, str(default))
    assert folder == tmp_path / "runs" / "yolo2-3" and str(default) in note and "yolo2-3" in note
    with pytest.raises(DataError, match="give one of them"):
        choose_run_folder(str(out), "unused", resume=True, exist_ok=True)


def test_data_world_refuses_a_folder_holding_that_split_and_exist_ok_leaves_no_orphan_images(tmp_path, capsys):
    out = tmp_path / "w"
    base = ["data", "world", "--out", str(out), "--image-size", "64"]
    assert main([*base, "--images", "3", "--split", "train"]) == 0
    assert main([*base, "--images", "2", "--split", "val"]) == 0          # another split may share the folder
    capsys.readouterr()
    assert main([*base, "--images", "2", "--split", "train"]) == 2
    assert "--exist-ok" in _one_line_error(capsys)
    assert main([*base, "--images", "2", "--split", "train", "--exist-ok"]) == 0
    images = sorted(p.name for p in (out / "images").iterdir())
    assert images == ["train_000001.png", "train_000002.png", "val_000001.png", "val_000002.png"]
    (out / "notes.txt").write_text("mine")
    assert main([*base, "--images", "2", "--split", "test"]) == 2          # unrelated files: refused ...
    assert main([*base, "--images", "2", "--split", "test", "--exist-ok"]) == 0
    assert (out / "notes.txt").read_text() == "mine"                       # ... and kept with --exist-ok


# ------------------------------------------------------------------------------------------------ extending a run
class _Line(nn.Module):
    """y = head(body(x)): two parts, so a phase can train one and freeze the other."""

    def __init__(self, config):
        super().__init__()
        self.body, self.head = nn.Linear(3, 3), nn.Linear(3, 1)

    def forward(self, x, targets=None):
        y = self.head(torch.relu(self.body(x)))[:, 0]
        return y if targets is None else {"mse": ((y - targets) ** 2).mean()}


def _line_recipe(phases) -> Recipe:
    def evaluate(model, data, device):
        with torch.no_grad():
            return {"val_mse": float(model(torch.stack([a for a, _ in data]))
                                     .sub(torch.stack([b for _, b in data])).pow(2).mean())}

    return Recipe(model_name="line", categories={}, options={}, model_config={}, build_model=_Line, phases=phases,
                  make_dataset=lambda data, train: data,
                  collate=lambda batch: (torch.stack([a for a, _ in batch]), torch.stack([b for _, b in batch])),
                  evaluate=evaluate, predict=lambda model, images, device: [], best_metric="val_mse")


def _line_data(n=16):
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(0))
    return [(x[i], x[i].sum()) for i in range(n)]


def _train_recording_rates(recipe, out, resume=False):
    """Train; return the learning rate of every optimiser step taken."""
    rates = []
    hook = register_optimizer_step_pre_hook(
        lambda optimizer, args, kwargs: rates.append(optimizer.param_groups[0]["lr"]))
    try:
        engine.train(recipe, _line_data(), _line_data(4), engine.TrainConfig(
            out=str(out), batch_size=4, device="cpu", log_every=0, tensorboard=False), resume=resume)
    finally:
        hook.remove()
    return rates


def test_extending_a_finished_cosine_run_trains_the_extra_epochs_on_the_stretched_schedule(tmp_path):
    finished_rates = _train_recording_rates(_line_recipe([Phase("all", epochs=2, lr=0.1)]), tmp_path)
    assert len(finished_rates) == 8                            # 16 samples / batch 4 = 4 steps, 2 epochs
    finished = load_checkpoint(tmp_path / "last.pt")
    rates = _train_recording_rates(_line_recipe([Phase("all", epochs=4, lr=0.1)]), tmp_path, resume=True)
    # The schedule as if the phase had been planned with 4 epochs: steps 8..15 of a 16-step cosine.
    assert rates == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * s / 16)) for s in range(8, 16)])
    assert min(rates) > 0
    extended = load_checkpoint(tmp_path / "last.pt")
    assert extended["step"] == 16
    assert any(not torch.equal(extended["model"][k], finished["model"][k]) for k in finished["model"])


def test_extending_an_earlier_phase_goes_back_to_it_and_runs_the_later_phases_again(tmp_path):
    head = Phase("head", epochs=1, lr=0.05, schedule="constant", trains=("head",))
    _train_recording_rates(_line_recipe([Phase("all", epochs=1, lr=0.1), head]), tmp_path)
    finished = load_checkpoint(tmp_path / "last.pt")
    rates = _train_recording_rates(_line_recipe([Phase("all", epochs=2, lr=0.1), head]), tmp_path, resume=True)
    assert rates[:4] == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * s / 8)) for s in range(4, 8)])
    assert rates[4:] == pytest.approx([0.05] * 4)              # the head phase again, from its start
    extended = load_checkpoint(tmp_path / "last.pt")
    assert extended["step"] == finished["step"] + 8
    assert not torch.equal(extended["model"]["body.weight"], finished["model"]["body.weight"])
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["all", "head", "all", "head"]


def test_resuming_an_unchanged_finished_run_trains_nothing_more(tmp_path):
    recipe = _line_recipe([Phase("all", epochs=2, lr=0.1)])
    _train_recording_rates(recipe, tmp_path)
    assert _train_recording_rates(recipe, tmp_path, resume=True) == []


def test_threads_sets_torchs_thread_count_and_refuses_zero(tmp_path, capsys):
    import torch

    from scenekit.cli import main

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        main(["train", "localizer", "--threads", "1", "--data", f"coco:{tmp_path / 'missing.json'}",
              "--out", str(tmp_path / "run")])
        assert torch.get_num_threads() == 1
        assert main(["train", "localizer", "--threads", "0", "--out", str(tmp_path / "run")]) == 2
        assert "--threads" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)
