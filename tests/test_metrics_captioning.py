"""Caption metrics: hand-computed cases, and pycocoevalcap's scorers run side by side on random sets."""

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scenekit.metrics.captioning import bleu, caption_scores, cider_d, lcs_length, rouge_l, tokenize

Bleu = pytest.importorskip("pycocoevalcap.bleu.bleu").Bleu
Rouge = pytest.importorskip("pycocoevalcap.rouge.rouge").Rouge
Cider = pytest.importorskip("pycocoevalcap.cider.cider").Cider

VOCAB = "a the man dog red ball on grass sits with two".split()


def reference_scores(references, candidates):
    """pycocoevalcap's corpus and per-image scores, the COCO caption server's code."""
    wrapped = {k: [v] for k, v in candidates.items()}
    b, b_images = Bleu(4).compute_score(references, wrapped, verbose=0)
    r, r_images = Rouge().compute_score(references, wrapped)
    c, c_images = Cider().compute_score(references, wrapped)
    return (b, np.array(b_images).T), (r, r_images), (c, c_images)


def assert_same_as_pycocoevalcap(references, candidates):
    (b, b_images), (r, r_images), (c, c_images) = reference_scores(references, candidates)
    ours_b, ours_b_images = bleu(references, candidates)
    ours_r, ours_r_images = rouge_l(references, candidates)
    ours_c, ours_c_images = cider_d(references, candidates)
    np.testing.assert_allclose(ours_b, b, rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours_b_images, b_images, rtol=0, atol=1e-9)
    assert ours_r == pytest.approx(r, abs=1e-9)
    np.testing.assert_allclose(ours_r_images, r_images, rtol=0, atol=1e-9)
    assert ours_c == pytest.approx(c, abs=1e-9)
    np.testing.assert_allclose(ours_c_images, c_images, rtol=0, atol=1e-9)


# ---------------------------------------------------------------------------------------------- BLEU
def test_bleu_of_identical_sentences_is_one():
    refs = {1: ["a man sits on the grass"], 2: ["two dogs with a red ball"]}
    cands = {1: "a man sits on the grass", 2: "two dogs with a red ball"}
    corpus, per_image = bleu(refs, cands)
    np.testing.assert_allclose(corpus, 1.0, atol=1e-8)
    np.testing.assert_allclose(per_image, 1.0, atol=1e-8)


def test_bleu_short_candidate_pays_brevity_penalty_and_4gram_smoothing():
    # 3 words against a 6-word reference: all 1..3-grams match, no 4-gram exists, BP = exp(1 - 6/3).
    corpus, _ = bleu({0: ["the cat sat on the mat"]}, {0: "the cat sat"})
    brevity = math.exp(1 - 6 / 3)
    assert corpus[0] == pytest.approx(brevity, rel=1e-8)
    assert corpus[2] == pytest.approx(brevity, rel=1e-8)
    # coco-caption's 0 / 0 for 4-grams is (0 + 1e-15) / (0 + 1e-9) = 1e-6, not 0.
    assert corpus[3] == pytest.approx(brevity * (1e-6) ** 0.25, rel=1e-6)


def test_bleu_clips_repeated_words_by_reference_count():
    # Papineni et al. 2002, sec. 2.1: "the the the the" against "the cat": modified unigram precision 1/4.
    corpus, _ = bleu({0: ["the cat"]}, {0: "the the the the"})
    assert corpus[0] == pytest.approx(0.25, rel=1e-8)


def test_bleu_closest_reference_length_ties_go_to_the_shorter_reference():
    # Candidate of 4 words, references of 3 and 5 words: both 1 away; the 3-word one wins, so no penalty.
    corpus, _ = bleu({0: ["a b c", "a b c d e"]}, {0: "a b c d"})
    assert corpus[0] == pytest.approx(1.0, abs=1e-8)


def test_corpus_bleu_pools_counts_rather_than_averaging_images():
    refs = {0: ["a man on the grass"], 1: ["two dogs"]}
    cands = {0: "a man on the grass", 1: "a ball"}
    corpus, per_image = bleu(refs, cands)
    assert corpus[0] == pytest.approx(5 / 7, rel=1e-8)       # 5 of 7 candidate unigrams match
    assert corpus[0] != pytest.approx(per_image[:, 0].mean())


# ---------------------------------------------------------------------------------------------- ROUGE-L
def test_rouge_l_of_a_known_lcs():
    # LCS("a b c d e", "a x c y e z") = "a c e" = 3: P = 3/5, R = 3/6, F with beta = 1.2 (Lin 2004, eq. 4).
    score, per_image = rouge_l({0: ["a x c y e z"]}, {0: "a b c d e"})
    p, r, b2 = 3 / 5, 3 / 6, 1.2 ** 2
    assert score == pytest.approx((1 + b2) * p * r / (r + b2 * p), rel=1e-12)
    assert per_image.shape == (1,)


def test_rouge_l_maximises_precision_and_recall_over_references_separately():
    # Reference 1 gives the best precision (LCS 2 of 2 candidate words), reference 2 the best recall (2 of 2).
    score, _ = rouge_l({0: ["a x y z w b", "a b"]}, {0: "a b"})
    assert score == pytest.approx(1.0)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.sampled_from("abcd"), max_size=12), st.lists(st.sampled_from("abcd"), max_size=12))
def test_lcs_length_matches_textbook_dynamic_programming(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            table[i][j] = table[i - 1][j - 1] + 1 if a[i - 1] == b[j - 1] else max(table[i - 1][j],
                                                                                table[i][j - 1])
    assert lcs_length(a, b) == table[len(a)][len(b)] == lcs_length(b, a)


# ---------------------------------------------------------------------------------------------- CIDEr-D
def test_cider_d_of_exact_captions_with_distinct_ngrams():
    # Two images, each candidate equal to its only reference: every n-gram has df = 1, so the 1- and 2-gram
    # cosines are 1, 3- and 4-grams do not exist (0), no length penalty: 10 * mean(1, 1, 0, 0) = 5.
    score, per_image = cider_d({1: ["a man"], 2: ["two dogs"]}, {1: "a man", 2: "two dogs"})
    assert score == pytest.approx(5.0)
    np.testing.assert_allclose(per_image, [5.0, 5.0])


def test_cider_d_is_zero_for_a_single_image_because_every_idf_is_zero():
    score, _ = cider_d({0: ["a man on the grass"]}, {0: "a man on the grass"})
    assert score == 0.0


def test_cider_d_length_penalty_lowers_a_longer_candidate():
    refs = {1: ["a man sits"], 2: ["two dogs run"]}
    exact, _ = cider_d(refs, {1: "a man sits", 2: "two dogs run"})
    padded, _ = cider_d(refs, {1: "a man sits a man sits", 2: "two dogs run"})
    assert padded < exact


# ---------------------------------------------------------------------------------------------- against pycocoevalcap
def random_set(rng: random.Random, num_images: int, max_len: int = 12) -> tuple[dict, dict]:
    def sentence(min_len=1):
        return " ".join(rng.choice(VOCAB) for _ in range(rng.randint(min_len, max_len)))

    references = {f"img{i}": [sentence() for _ in range(rng.randint(1, 5))] for i in range(num_images)}
    candidates = {f"img{i}": sentence() for i in range(num_images)}
    return references, candidates


@pytest.mark.parametrize("seed", range(12))
def test_scores_equal_pycocoevalcap_on_random_sets(seed):
    rng = random.Random(seed)
    references, candidates = random_set(rng, num_images=rng.randint(1, 40), max_len=rng.choice([3, 8, 16]))
    assert_same_as_pycocoevalcap(references, candidates)


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.integers(0, 50),
                       st.tuples(st.lists(st.lists(st.sampled_from(VOCAB[:5]), min_size=1, max_size=6),
                                          min_size=1, max_size=5),
                                 st.lists(st.sampled_from(VOCAB[:5]), min_size=1, max_size=6)),
                       min_size=1, max_size=8))
def test_scores_equal_pycocoevalcap_on_generated_sets(data):
    references = {k: [" ".join(r) for r in refs] for k, (refs, _) in data.items()}
    candidates = {k: " ".join(cand) for k, (_, cand) in data.items()}
    assert_same_as_pycocoevalcap(references, candidates)


def test_scores_equal_pycocoevalcap_on_edge_cases():
    references = {
        "one-word": ["dog", "a dog"],
        "empty-candidate": ["a man on the grass"],
        "repeats": ["the the the", "a dog"],
        "duplicate-refs": ["a red ball", "a red ball", "a red ball"],
        "long": ["a " * 30 + "dog"],
        "no-overlap": ["two men"],
    }
    candidates = {
        "one-word": "dog",
        "empty-candidate": "",
        "repeats": "the the the the the the",
        "duplicate-refs": "a red ball",
        "long": "dog",
        "no-overlap": "grass",
    }
    assert_same_as_pycocoevalcap(references, candidates)


def test_caption_scores_returns_the_per_metric_corpus_scores():
    references, candidates = random_set(random.Random(7), num_images=25)
    scores = caption_scores(references, candidates)
    assert list(scores) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D"]
    (b, _), (r, _), (c, _) = reference_scores(references, candidates)
    np.testing.assert_allclose([scores[f"BLEU-{k}"] for k in range(1, 5)], b, atol=1e-9)
    assert scores["ROUGE-L"] == pytest.approx(r, abs=1e-9)
    assert scores["CIDEr-D"] == pytest.approx(c, abs=1e-9)


def test_per_image_scores_follow_the_key_order_of_references():
    refs = {"b": ["a man"], "a": ["two dogs"], "c": ["a red ball"]}
    cands = {"a": "two dogs", "c": "grass", "b": "a man"}
    _, per_image = rouge_l(refs, cands)
    np.testing.assert_allclose(per_image, [1.0, 1.0, 0.0])


def test_candidates_in_pycocoevalcap_list_form_are_accepted():
    refs = {0: ["a man"], 1: ["two dogs"]}
    assert caption_scores(refs, {0: ["a man"], 1: ["two dogs"]}) == caption_scores(refs, {0: "a man", 1: "two dogs"})


# ---------------------------------------------------------------------------------------------- bad input
def test_mismatched_ids_raise_naming_the_id():
    with pytest.raises(ValueError, match="ids without a candidate: \\['img2'\\]"):
        caption_scores({"img1": ["a dog"], "img2": ["a cat"]}, {"img1": "a dog"})
    with pytest.raises(ValueError, match="ids without references: \\['img9'\\]"):
        caption_scores({"img1": ["a dog"]}, {"img1": "a dog", "img9": "a cat"})


def test_empty_reference_list_raises_naming_the_id():
    with pytest.raises(ValueError, match="references\\['img3'\\] is empty"):
        bleu({"img3": []}, {"img3": "a dog"})


def test_empty_reference_sentence_and_wrong_types_raise():
    with pytest.raises(ValueError, match="references\\[5\\]\\[1\\] is an empty sentence"):
        cider_d({5: ["a dog", "  "]}, {5: "a dog"})
    with pytest.raises(ValueError, match="candidates\\[5\\] must be a str"):
        rouge_l({5: ["a dog"]}, {5: 3})
    with pytest.raises(ValueError, match="references\\[5\\] must be a list of str"):
        rouge_l({5: "a dog"}, {5: "a dog"})
    with pytest.raises(ValueError, match="nothing to score"):
        caption_scores({}, {})


# ---------------------------------------------------------------------------------------------- tokenizer
@pytest.mark.parametrize("raw, tokens", [
    ("A man riding a wave on top of a surfboard.", "a man riding a wave on top of a surfboard"),
    ("A dog's ball, and a cat's toy!", "a dog 's ball and a cat 's toy"),
    ("They don't know; it's \"fine\" (really)...", "they do n't know it 's fine really"),
    ("A black-and-white photo of 3.5 cats -- maybe?", "a black-and-white photo of 3.5 cats maybe"),
    ("Fish & chips cost $5", "fish & chips cost $ 5"),
    ("  Two\n DOGS  ", "two dogs"),
    ("", ""),
])
def test_tokenize_lowercases_splits_clitics_and_drops_punctuation(raw, tokens):
    assert tokenize(raw) == tokens


def test_tokenize_rejects_non_text():
    with pytest.raises(ValueError, match="text must be a str"):
        tokenize(None)
