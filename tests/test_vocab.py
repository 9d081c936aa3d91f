"""Tests of scenekit/data/vocab.py: tokenizer, vocabulary building, encode/decode, save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scenekit.data.vocab import SPECIALS, Vocabulary, tokenize
from scenekit.data.world import make_world
from scenekit.errors import DataError


def test_tokenize_lowercases_and_splits_punctuation():
    assert tokenize("Where is the RED square?") == ["where", "is", "the", "red", "square", "?"]
    assert tokenize("yes, three or more.") == ["yes", ",", "three", "or", "more", "."]
    assert tokenize("a cat's toy, don't") == ["a", "cat's", "toy", ",", "don't"]
    assert tokenize("  ") == []


def test_tokenize_rejects_non_strings():
    with pytest.raises(TypeError):
        tokenize(None)


def test_special_tokens_come_first_with_pad_zero():
    vocab = Vocabulary.build(["a ring"])
    assert vocab.words[:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    assert (vocab.pad_id, vocab.start_id, vocab.end_id, vocab.unk_id) == (0, 1, 2, 3)


def test_words_are_ordered_by_count_then_alphabet():
    vocab = Vocabulary.build(["b a a c", "c a"])
    assert vocab.words[4:] == ["a", "c", "b"]          # a: 3, c: 2, b: 1


def test_min_count_drops_rare_words_to_unk():
    vocab = Vocabulary.build(["a red ring", "a blue ring", "a ring"], min_count=2)
    assert "red" not in vocab and "ring" in vocab
    assert vocab.encode("a red ring") == [1, vocab.ids["a"], 3, vocab.ids["ring"], 2]
    with pytest.raises(ValueError):
        Vocabulary.build(["a"], min_count=0)


def test_decode_stops_at_end_and_skips_padding():
    vocab = Vocabulary.build(["a small red star"])
    ids = vocab.encode("a small red star") + [0, 0]
    assert vocab.decode(ids) == "a small red star"
    assert vocab.decode(ids[:3] + [vocab.end_id] + ids[3:]) == "a small"
    with pytest.raises(ValueError, match="outside"):
        vocab.decode([len(vocab)])


def test_every_world_caption_and_question_round_trips():
    world = make_world(10, seed=1, image_size=128)
    texts = [c for r in world.records for c in r.captions]
    texts += [q.question for r in world.records for q in r.questions]
    texts += [choice for r in world.records for q in r.questions for choice in q.choices]
    vocab = Vocabulary.build(texts)
    for text in texts:
        assert vocab.decode(vocab.encode(text)) == " ".join(tokenize(text))
        assert vocab.unk_id not in vocab.encode(text)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet="abcdefgh ,.?!'", max_size=30), min_size=1, max_size=6))
def test_decode_inverts_encode_for_any_text_in_the_vocabulary(texts):
    vocab = Vocabulary.build(texts)
    for text in texts:
        ids = vocab.encode(text)
        assert ids[0] == vocab.start_id and ids[-1] == vocab.end_id
        assert vocab.decode(ids) == " ".join(tokenize(text))


def test_encode_batch_pads_with_zero_and_truncates_keeping_end():
    vocab = Vocabulary.build(["a red ring", "a ring"])
    batch = vocab.encode_batch(["a red ring", "a ring"])
    assert batch.dtype == np.int64 and batch.shape == (2, 5)
    assert batch[1].tolist() == vocab.encode("a ring") + [0]
    cut = vocab.encode_batch(["a red ring"], max_length=3)
    assert cut.tolist() == [[1, vocab.ids["a"], 2]]
    assert vocab.encode_batch([]).shape == (0, 2)


def test_save_and_load_round_trip(tmp_path):
    vocab = Vocabulary.build(["what colour is the star?", "yes, one"])
    path = vocab.save(tmp_path / "vocab.json")
    loaded = Vocabulary.load(path)
    assert loaded == vocab and loaded.encode("the star?") == vocab.encode("the star?")


@pytest.mark.parametrize("content", ["not json", json.dumps([1, 2]), json.dumps({"words": ["a", "b"]}),
                                     json.dumps({"words": list(SPECIALS) + ["a", "a"]})])
def test_load_rejects_bad_files_naming_the_file(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DataError, match="bad.json"):
        Vocabulary.load(path)
