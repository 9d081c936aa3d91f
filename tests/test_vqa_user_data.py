"""A user's VQA set: the VQA v2 and Visual7W readers (scenekit/data/vqa_files.py) and what the VQA recipe makes of
such data (scenekit/models/vqa.py): its own vocabulary, varying numbers of choices, the open-ended answer head,
the unknown-word stop and the pre-training terms the data cannot feed."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from scenekit.data.vqa_files import OpenQuestion, load_vqa_data, read_visual7w, top_answers
from scenekit.errors import DataError
from scenekit.models.vqa import (answer_question, collate_questions, evaluate_vqa, fit_to_data, recipe,
                                 vqa_accuracy)

pytestmark = pytest.mark.usefixtures("one_thread")

# Words the world's grammar never uses: with its vocabulary these questions would be a third <unk>.
HUES = {"crimson": (200, 20, 40), "azure": (30, 110, 230), "emerald": (20, 170, 80), "amber": (240, 180, 20)}
TINY = dict(image_size=16, channels=(8, 16), feature=32, embedding=16, hidden=32, attention_size=16, joint=32,
            context_layers=0, pretrain_epochs=0)


def _picture(path, hue, seed):
    """A 16 x 16 PNG filled with `hue` plus a little noise (the answer is the picture's colour)."""
    noise = np.random.default_rng(seed).integers(-12, 13, (16, 16, 3))
    Image.fromarray(np.clip(np.array(HUES[hue]) + noise, 0, 255).astype(np.uint8)).save(path)


def _write_vqa2(folder, split="train", images=8, offset=0):
    """VQA v2's files for `images` one-colour pictures: "which hue fills this picture?", ten human answers."""
    (folder / f"{split}2014").mkdir(parents=True, exist_ok=True)
    questions, annotations = [], []
    for k in range(images):
        image_id, hue = 100 + offset + k, list(HUES)[k % 4]
        _picture(folder / f"{split}2014" / f"COCO_{split}2014_{image_id:012d}.png", hue, image_id)
        qid = image_id * 10
        questions.append({"image_id": image_id, "question": "Which hue fills this picture?", "question_id": qid})
        human = [hue] * 8 + ["red", "dark " + hue]                # 8 of 10 agree, as VQA's annotators often do
        annotations.append({"question_id": qid, "image_id": image_id, "multiple_choice_answer": hue,
                            "answer_type": "other", "answers": [{"answer": a, "answer_id": i + 1}
                                                                for i, a in enumerate(human)]})
    (folder / f"v2_OpenEnded_mscoco_{split}2014_questions.json").write_text(json.dumps({"questions": questions}))
    (folder / f"v2_mscoco_{split}2014_annotations.json").write_text(json.dumps({"annotations": annotations}))


def _write_visual7w(folder, images=8):
    """A Visual7W telling file: colour questions with 3 or 4 choices, images alternately train / val."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for k in range(images):
        hue = list(HUES)[k % 4]
        _picture(folder / "images" / f"v7w_{k + 1}.png", hue, k)
        wrong = [h for h in HUES if h != hue][:2 + k % 2]         # 3 choices on even images, 4 on odd ones
        entries.append({"image_id": k + 1, "filename": f"v7w_{k + 1}.png", "split": "train" if k < 6 else "val",
                        "qa_pairs": [{"qa_id": 10 * k, "question": "Which hue fills this picture?",
                                      "answer": hue, "multiple_choices": wrong, "type": "what"}]})
    (folder / "dataset_v7w_telling.json").write_text(json.dumps({"images": entries}))
    return folder / "dataset_v7w_telling.json"


def _train(tiny, dataset, bound=0.05, max_steps=600, seed=0):
    """Adam on all of `dataset`'s questions until the eval-mode loss is below `bound` (checked every 10 steps): a
    loss, not a step count, so the outcome does not move with the CPU's float kernels."""
    torch.manual_seed(seed)
    model = tiny.build_model(tiny.model_config)
    data = tiny.make_dataset(dataset, True)
    images, targets = collate_questions([data[i] for i in range(len(data))])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for step in range(max_steps + 1):
        if step % 10 == 0:
            model.eval()
            with torch.no_grad():
                loss = float(model(images, targets)["cross_entropy"])
            if loss < bound:
                break
        model.train()
        optimizer.zero_grad()
        model(images, targets)["cross_entropy"].backward()
        optimizer.step()
    return model, loss


# ------------------------------------------------------------------------------------------------ readers
def test_vqa2_folder_reads_open_questions_with_their_human_answers(tmp_path):
    _write_vqa2(tmp_path, "train", images=4)
    _write_vqa2(tmp_path, "val", images=2, offset=50)
    train = load_vqa_data(f"vqa2:{tmp_path}", "train")
    assert [r.image_id for r in train.records] == [100, 101, 102, 103]
    record = train.records[1]
    assert (record.width, record.height) == (16, 16) and record.file_name.endswith("COCO_train2014_000000000101.png")
    (question,) = record.questions
    assert isinstance(question, OpenQuestion) and question.choices == [] and question.best == "azure"
    assert question.question == "Which hue fills this picture?" and len(question.answers) == 10
    assert len(record.boxes) == 0 and record.segmentations is None        # no boxes or instances needed
    assert [r.image_id for r in load_vqa_data(f"vqa2:{tmp_path}", "val").records] == [150, 151]
    explicit = load_vqa_data(f"vqa2:{tmp_path}/v2_OpenEnded_mscoco_train2014_questions.json,"
                             f"{tmp_path}/v2_mscoco_train2014_annotations.json,{tmp_path}/train2014")
    assert [r.image_id for r in explicit.records] == [100, 101, 102, 103]
    assert top_answers(train, 2) == ["amber", "azure"]                      # one each: ties alphabetical


def test_visual7w_reads_choices_of_varying_number_and_the_split(tmp_path):
    path = _write_visual7w(tmp_path)
    train = load_vqa_data(f"visual7w:{path}", "train")
    assert [r.image_id for r in train.records] == [1, 2, 3, 4, 5, 6]
    assert [r.image_id for r in read_visual7w(path, split="val").records] == [7, 8]
    assert len(read_visual7w(path).records) == 8
    counts = [len(r.questions[0].choices) for r in train.records]
    assert counts == [3, 4, 3, 4, 3, 4]
    for record, hue in zip(train.records, list(HUES) * 2):
        question = record.questions[0]
        assert question.choices[question.answer] == hue and question.kind == "what"
    assert {r.questions[0].answer for r in train.records} != {0}             # the right answer is not always first


@pytest.mark.parametrize("which, breakage, record, field", [
    ("questions", lambda d: d["questions"][1].pop("question_id"), "questions[1]", "question_id"),
    ("questions", lambda d: d["questions"][2].update(question=""), "questions[2] (question_id 1020)", "question"),
    ("questions", lambda d: d["questions"][0].update(image_id=999), "questions[0] (question_id 1000)", "image_id"),
    ("annotations", lambda d: d["annotations"][3].update(answers="red"), "annotations[3] (question_id 1030)",
     "answers"),
    ("annotations", lambda d: d["annotations"][0].pop("multiple_choice_answer"), "annotations[0] (question_id 1000)",
     "multiple_choice_answer"),
])
def test_malformed_vqa2_files_stop_with_one_line_naming_file_record_and_field(tmp_path, which, breakage, record,
                                                                             field):
    _write_vqa2(tmp_path, images=4)
    path = tmp_path / ("v2_OpenEnded_mscoco_train2014_questions.json" if which == "questions"
                       else "v2_mscoco_train2014_annotations.json")
    data = json.loads(path.read_text())
    breakage(data)
    path.write_text(json.dumps(data))
    with pytest.raises(DataError) as caught:
        load_vqa_data(f"vqa2:{tmp_path}", "train")
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: {record}: field {field}: ")


@pytest.mark.parametrize("breakage, record, field", [
    (lambda d: d["images"][2]["qa_pairs"][0].pop("multiple_choices"), "images[2] (image_id 3) qa_pairs[0]",
     "multiple_choices"),
    (lambda d: d["images"][1]["qa_pairs"][0].update(answer=7), "images[1] (image_id 2) qa_pairs[0]", "answer"),
    (lambda d: d["images"][0].update(image_id="one"), "images[0]", "image_id"),
    (lambda d: d["images"][4].update(filename="missing.png"), "images[4] (image_id 5)", "filename"),
])
def test_malformed_visual7w_files_stop_with_one_line_naming_file_record_and_field(tmp_path, breakage, record, field):
    path = _write_visual7w(tmp_path)
    data = json.loads(path.read_text())
    breakage(data)
    path.write_text(json.dumps(data))
    with pytest.raises(DataError) as caught:
        read_visual7w(path, split="train")
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: {record}: field {field}: ")


def test_a_missing_split_file_is_named(tmp_path):
    _write_vqa2(tmp_path, "train", images=2)
    with pytest.raises(DataError, match=r"\*val\*questions.json"):
        load_vqa_data(f"vqa2:{tmp_path}", "val")


# ------------------------------------------------------------------------------------------------ the recipe
def test_a_set_with_words_outside_the_world_trains_with_its_own_vocabulary(tmp_path, capsys):
    path = _write_visual7w(tmp_path, images=16)
    train, held_out = read_visual7w(path, split="train"), read_visual7w(path, split="val")
    assert len(train) == 6 and len(held_out) == 10
    tiny = fit_to_data(recipe(**TINY), train)
    words = tiny.model_config["words"]
    assert {"crimson", "azure", "emerald", "amber", "hue"} <= set(words) and "circle" not in words
    assert tiny.options["vocabulary"] == words and tiny.model_config["answers"] == []   # multiple choice
    model, loss = _train(tiny, train)
    assert loss < 0.05
    # Ten held-out pictures (new noise), three or four choices each: chance is below 0.3. A model that reads the
    # colour answers them all; the bound leaves room for any float kernel's rounding.
    scores = tiny.evaluate(model, held_out, torch.device("cpu"))
    assert scores["accuracy"] >= 0.8 and scores["questions"] == 10


def test_padded_choices_are_never_picked(tmp_path):
    path = _write_visual7w(tmp_path)
    train = read_visual7w(path, split="train")
    tiny = fit_to_data(recipe(**TINY), train)
    data = tiny.make_dataset(train, True)
    images, targets = collate_questions([data[0], data[1]])               # 3 and 4 choices
    assert targets["choices"].shape[:2] == (2, 4) and not targets["open"].any()
    model = tiny.build_model(tiny.model_config).eval()
    with torch.no_grad():
        probabilities = model(images, {k: targets[k] for k in ("questions", "choices", "owner")}).softmax(dim=1)
    assert probabilities[0, 3] == 0.0 and probabilities[1].min() > 0
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(2))


def test_open_ended_head_answers_with_a_training_answer(tmp_path):
    _write_vqa2(tmp_path, "train", images=8)
    _write_vqa2(tmp_path, "val", images=4, offset=50)
    train, val = load_vqa_data(f"vqa2:{tmp_path}", "train"), load_vqa_data(f"vqa2:{tmp_path}", "val")
    tiny = fit_to_data(recipe(**TINY, top_answers=3), train)
    assert tiny.model_config["answers"] == ["amber", "azure", "crimson"]   # the top 3 of the training answers
    data = tiny.make_dataset(train, True)
    _, targets = collate_questions([data[i] for i in range(8)])
    assert targets["open"].all() and targets["answers"].tolist() == [2, 1, -100, 0] * 2   # emerald: not a class
    model, loss = _train(tiny, train)
    assert loss < 0.05
    answer = answer_question(model, np.full((16, 16, 3), HUES["azure"], np.uint8), "Which hue fills this picture?")
    assert answer["answer"] == "azure" and len(answer["probabilities"]) == 3
    # Eight of ten annotators said the colour: a right class scores VQA accuracy 1; emerald (no class) scores 0.
    scores = evaluate_vqa(model, val, torch.device("cpu"))
    assert scores["accuracy"] == pytest.approx(0.75) and scores["accuracy_other"] == pytest.approx(0.75)


def test_vqa_accuracy_counts_three_agreeing_humans_as_right():
    humans = ["two", "two", "2", "three", "Two.", "2", "2", "2", "2", "2"]
    assert vqa_accuracy("two", humans) == 1.0                              # "two", "two", "Two."
    assert vqa_accuracy("three", humans) == pytest.approx(1 / 3)
    assert vqa_accuracy("four", humans) == 0.0


def test_unknown_words_stop_with_one_line(tmp_path):
    train = read_visual7w(_write_visual7w(tmp_path), split="train")
    given = recipe(**TINY, vocabulary=["<pad>", "<start>", "<end>", "<unk>", "which", "fills", "this", "picture"])
    with pytest.raises(DataError) as caught:
        given.make_dataset(train, True)
    assert "\n" not in str(caught.value) and "not in the model's vocabulary" in str(caught.value)
    assert str(caught.value).startswith("field vocabulary: ")
    assert fit_to_data(given, train).model_config["words"] == given.model_config["words"]    # given: kept


def test_pretraining_terms_the_data_cannot_feed_are_skipped_with_a_notice(tmp_path, capsys):
    train = read_visual7w(_write_visual7w(tmp_path), split="train")
    full = recipe(**{**TINY, "pretrain_epochs": 2, "context_layers": 0})
    assert [p.name for p in full.phases] == ["concepts", "train"] and full.model_config["dense"]
    fitted = fit_to_data(full, train)                                      # no captions, no masks
    notices = capsys.readouterr().err
    assert "no captions" in notices and "(concepts) is skipped" in notices and "no semantic maps" in notices
    assert [p.name for p in fitted.phases] == ["train"] and fitted.phases[0].loss_terms == ("cross_entropy",)
    assert not fitted.model_config["dense"] and not hasattr(fitted.build_model(fitted.model_config), "dense_head")
    # With captions, only the caption words pre-train the CNN.
    for record in train.records:
        record.captions = [f"a {record.questions[0].choices[record.questions[0].answer]} picture"]
    captioned = fit_to_data(full, train)
    assert "no captions" not in capsys.readouterr().err
    assert captioned.phases[0].name == "concepts" and captioned.phases[0].loss_terms == ("concepts",)
    assert "dense_head" not in captioned.phases[0].trains


def test_fit_trains_a_vqa2_set_end_to_end_and_stores_its_vocabulary(tmp_path):
    from scenekit.engine.checkpoint import load_checkpoint
    from scenekit.engine.train import TrainConfig

    _write_vqa2(tmp_path / "data", "train", images=8)
    _write_vqa2(tmp_path / "data", "val", images=4, offset=50)
    spec = f"vqa2:{tmp_path / 'data'}"
    tiny = recipe(**{**TINY, "epochs": 1})
    result = tiny.fit(tiny, load_vqa_data(spec, "train"), load_vqa_data(spec, "val"),
                      TrainConfig(out=str(tmp_path / "run"), batch_size=4, device="cpu", progress=False,
                                  tensorboard=False, curves=False))
    stored = load_checkpoint(result.best_checkpoint)
    # The questions' words, not the world's; the answers are classes, not words the model reads.
    assert stored["options"]["vocabulary"] == ["<pad>", "<start>", "<end>", "<unk>", "?", "fills", "hue", "picture",
                                               "this", "which"] == stored["model_config"]["words"]
    assert stored["options"]["answers"] == ["amber", "azure", "crimson", "emerald"]
    assert 0.0 <= result.best <= 1.0 and "train_concepts" not in result.history[-1]   # no captions: no term


def test_world_data_keeps_the_world_vocabulary_and_its_pretraining(capsys):
    from scenekit.data.captions import world_vocabulary
    from scenekit.data.world import make_world

    world = make_world(4, image_size=128, max_objects=6, seed=1)
    fitted = fit_to_data(recipe(**{**TINY, "pretrain_epochs": 2}), world)  # captions and semantic maps: all terms
    assert fitted.model_config["words"] == world_vocabulary().words and fitted.model_config["answers"] == []
    assert fitted.phases[0].loss_terms == ("concepts", "dense") and fitted.model_config["dense"]
    assert "notice" not in capsys.readouterr().err
