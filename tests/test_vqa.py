import numpy as np
import pytest
import torch

from scenekit.data.captions import caption_vocabulary
from scenekit.data.records import Dataset, Question, Record
from scenekit.data.vocab import Vocabulary, tokenize
from scenekit.data.world import make_world
from scenekit.errors import DataError
from scenekit.models.vqa import (QuestionData, VQAConfig, VQAModel, answer_question, collate_questions,
                                 coordinate_channels, evaluate_vqa, recipe)

WORDS = ["<pad>", "<start>", "<end>", "<unk>", "what", "colour", "is", "the", "square", "where", "red", "blue",
         "green", "yellow", "on", "left", "right", "?"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _overfit_dataset():
    """Four 16 x 16 images with a coloured square on one side; a colour and a position question each."""
    records = []
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (230, 220, 30)}
    for k, (colour, side) in enumerate([("red", "left"), ("blue", "right"), ("green", "left"),
                                        ("yellow", "right")]):
        image = np.full((16, 16, 3), 90, np.uint8)
        x = slice(1, 7) if side == "left" else slice(9, 15)
        image[4:12, x] = colours[colour]
        questions = [Question("what colour is the square?", list(colours), list(colours).index(colour), "colour"),
                     Question("where is the square?", ["on the left", "on the right", "red", "blue"],
                              0 if side == "left" else 1, "position")]
        records.append(Record(image_id=k + 1, file_name=f"{k}.png", width=16, height=16, questions=questions,
                               image=image))
    return Dataset(records=records, categories={}, image_root=None, name="vqa overfit")


@pytest.mark.parametrize("attention", [True, False])
def test_vqa_overfits_four_images(attention):
    torch.manual_seed(0)
    dataset = _overfit_dataset()
    tiny = recipe(vocabulary=WORDS, image_size=16, channels=(8, 16), feature=32, embedding=16, hidden=32,
                  attention_size=16, joint=32, attention=attention)
    model = tiny.build_model(tiny.model_config)
    images, targets = collate_questions([tiny.make_dataset(dataset, True)[i] for i in range(4)])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(40):
        model.train()
        loss = model(images, targets)["cross_entropy"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    scores = evaluate_vqa(model, dataset, torch.device("cpu"))
    assert scores["accuracy"] == 1.0 and scores["accuracy_colour"] == 1.0 and scores["accuracy_position"] == 1.0
    answer = answer_question(model, dataset.records[1].image, "what colour is the square?",
                             ["red", "blue", "green", "yellow"])
    assert answer["answer"] == "blue" and sum(answer["probabilities"]) == pytest.approx(1.0)
    assert (answer["attention"] is not None) == attention
    if attention:
        assert answer["attention"].shape == (16,) and float(answer["attention"].sum()) == pytest.approx(1.0)


def test_padding_does_not_change_a_question_encoding():
    torch.manual_seed(1)
    model = VQAModel(VQAConfig(words=WORDS, image_size=16, channels=(4, 8), feature=8, embedding=8, hidden=8,
                               attention_size=8, joint=8)).eval()
    images = torch.rand(1, 3, 16, 16)
    question = torch.tensor([[4, 5, 6, 7, 8, 17]])
    padded = torch.cat([question, torch.zeros(1, 3, dtype=torch.int64)], dim=1)
    owner = torch.zeros(1, dtype=torch.int64)
    q1, a1 = model.encode(images, question, owner)
    q2, a2 = model.encode(images, padded, owner)
    torch.testing.assert_close(q1, q2)
    torch.testing.assert_close(a1, a2)


def test_coordinate_channels_hold_cell_centres():
    grid = coordinate_channels(torch.zeros(2, 3, 2, 4))
    assert grid.shape == (2, 5, 2, 4)
    assert grid[0, 3, 0].tolist() == [-0.75, -0.25, 0.25, 0.75]                  # x across a row
    assert grid[1, 4, :, 0].tolist() == [-0.5, 0.5]                              # y down a column


def test_collate_questions_pads_and_records_owners():
    dataset = make_world(3, image_size=64, min_objects=2, max_objects=3)
    vocabulary = caption_vocabulary(dataset, with_questions=True)
    data = QuestionData(dataset, vocabulary, 16)
    assert len(data) == 3
    images, targets = collate_questions([data[i] for i in range(3)])
    counts = [len(r.questions) for r in dataset.records]
    assert targets["owner"].tolist() == [i for i, n in enumerate(counts) for _ in range(n)]
    assert targets["choices"].shape[:2] == (sum(counts), 4)
    assert targets["answers"].tolist() == [q.answer for r in dataset.records for q in r.questions]
    assert images.shape == (3, 3, 16, 16)
    # The encoder's pre-training targets: exactly the words of each image's captions.
    for row, record in zip(targets["concepts"], dataset.records):
        words = {w for c in record.captions for w in tokenize(c)}
        assert {vocabulary.words[i] for i in torch.nonzero(row).flatten().tolist()} == words


def test_concept_phase_trains_only_the_encoder_and_its_head():
    dataset = make_world(4, image_size=64, min_objects=1, max_objects=3)
    tiny = recipe(vocabulary=caption_vocabulary(dataset, with_questions=True).words, image_size=16,
                  channels=(4, 8), feature=8, embedding=8, hidden=8, attention_size=8, joint=8, pretrain_epochs=2)
    assert [p.name for p in tiny.phases] == ["concepts", "train"]
    model = tiny.build_model(tiny.model_config)
    images, targets = collate_questions([tiny.make_dataset(dataset, True)[i] for i in range(4)])
    for name, module in model.named_children():
        module.requires_grad_(name in tiny.phases[0].trains)
    losses = model(images, targets)
    assert set(losses) == {"concepts"}                  # the frozen LSTM is not run
    model.requires_grad_(True)
    assert set(model(images, targets)) == {"concepts", "cross_entropy"}


def test_answer_question_needs_choices():
    model = VQAModel(VQAConfig(words=WORDS, image_size=16, channels=(4, 8)))
    with pytest.raises(DataError, match="choices"):
        answer_question(model, np.zeros((16, 16, 3), np.uint8), "what colour is the square?", ["red"])


def test_mixed_numbers_of_choices_are_refused():
    records = [Record(1, "a", 8, 8, questions=[Question("q", ["a", "b"], 0), Question("r", ["a", "b", "c"], 0)],
                      image=np.zeros((8, 8, 3), np.uint8))]
    with pytest.raises(DataError, match="same number of choices"):
        QuestionData(Dataset(records, {}, None), Vocabulary(WORDS), 16)
