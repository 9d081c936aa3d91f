"""Caption metrics as the MS COCO caption server computes them: BLEU-1..4, ROUGE-L and CIDEr-D.

Every function takes the inputs pycocoevalcap's scorers take, ``references: {id: [str, ...]}`` and
``candidates: {id: str}``, on pre-tokenised, space-separated, lowercase text (run `tokenize` first on raw
captions), and reproduces coco-caption's arithmetic (Chen et al. 2015, "Microsoft COCO Captions: Data
Collection and Evaluation Server", sec. 3) to floating-point rounding:

- BLEU (Papineni et al. 2002) at the corpus level: clipped n-gram matches and guesses are summed over all
  images first, the brevity penalty uses the sum over images of the reference length *closest* to each
  candidate's length (ties go to the shorter reference), and coco-caption's smoothing constants
  ``TINY = 1e-15`` (added to matches) and ``SMALL = 1e-9`` (added to guesses) are kept, so a candidate with no
  match scores a tiny positive number rather than 0.
- ROUGE-L (Lin 2004, sec. 3.1): per image, LCS precision and recall are each maximised over the references
  *separately*, combined into an F-measure with beta = 1.2, then averaged over images.
- CIDEr-D (Vedantam et al. 2015, eqs. 1-3, with the "D" changes of the COCO server): TF-IDF n-gram vectors
  (n = 1..4) with document frequencies counted over the reference sets of the images being evaluated, cosine
  similarity with candidate weights clipped by reference weights, a Gaussian length penalty
  exp(-delta^2 / (2 sigma^2)) with sigma = 6, averaged over references and n-gram orders and multiplied by 10.
  pycocoevalcap's ``Cider`` class runs this CIDEr-D code. As there, a sentence's "length" in the penalty is
  its number of bigrams (len - 1 for non-empty text), so delta is the word-count difference except for an
  empty candidate.

Per-image scores are returned in the key order of `references`, like pycocoevalcap's. Sentences are split on
runs of whitespace; pycocoevalcap's ROUGE splits on single spaces, which differs only for text that is not
cleanly space-separated (doubled spaces make empty tokens there).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

BLEU_TINY = 1e-15   # added to clipped matches, "so that if guess is 0 still return 0" (coco-caption)
BLEU_SMALL = 1e-9   # added to guesses, avoids 0 / 0
ROUGE_BETA = 1.2    # coco-caption's weight of recall against precision
CIDER_SIGMA = 6.0   # std. dev. of CIDEr-D's Gaussian length penalty, in words


# ---------------------------------------------------------------------------------------------- tokenizer
# coco-caption's PTBTokenizer drops these tokens after tokenizing (-LRB- etc. are PTB's brackets, written
# here as the characters); the double quote becomes `` or '' in PTB and is dropped too.
_PUNCTUATION = {"''", "'", "``", "`", '"', "(", ")", "{", "}", "[", "]", ".", "?", "!", ",", ":", "-", "--",
                "...", ";"}
_CLITIC = re.compile(r"(?<=\w)(n't|'s|'re|'ve|'ll|'d|'m)\b")
_TOKEN = re.compile(r"'(?:s|re|ve|ll|d|m)\b|\w+(?:[-.']\w+)*|[^\w\s]")


def tokenize(text: str) -> str:
    """Lowercase `text`, split it into PTB-like tokens and drop punctuation, as coco-caption does before scoring.

    A pure-Python approximation of Stanford's PTBTokenizer (run with ``-lowerCase``) followed by coco-caption's
    punctuation filter. It agrees on ordinary captions: clitics are split (``"dog's" -> "dog 's"``,
    ``"don't" -> "do n't"``), hyphenated words and decimals stay whole, other symbols (``$ % & /``) become
    tokens of their own. Known differences: no special cases such as ``cannot -> can not``, ``gonna -> gon na``;
    abbreviations keep no final period (``"u.s." -> "u.s"``); square brackets are dropped (PTB keeps them as
    ``-lsb-``/``-rsb-``); no Unicode normalisation of quotes or dashes.

    >>> tokenize("A man's dog, running -- fast!")
    "a man 's dog running fast"
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    text = _CLITIC.sub(r" \1", text.lower())
    return " ".join(t for t in _TOKEN.findall(text) if t not in _PUNCTUATION)


# ---------------------------------------------------------------------------------------------- inputs
MAX_ORDER = 4       # n-grams of order 1..4, for all three metrics


@dataclass
class _Image:
    """One image's candidate and references as words and n-gram counts, computed once for all metrics.

    ``candidate_counts[n - 1]`` counts the candidate's n-grams, each written as its words joined by spaces
    ("a man"): strings cache their hash, so the many dict look-ups below stay cheap.
    """

    candidate: list[str]
    candidate_counts: list[Counter]           # [MAX_ORDER] counters
    references: list[list[str]]
    reference_counts: list[list[Counter]]     # [num_references][MAX_ORDER] counters


def _ngram_counts(words: list[str]) -> list[Counter]:
    """Counts of the n-grams of `words`, one Counter per order n = 1..MAX_ORDER."""
    shifted = [words[k:] for k in range(MAX_ORDER)]           # zip(*shifted[:n]) yields (w_i, ..., w_i+n-1)
    return [Counter(words)] + [Counter(map(" ".join, zip(*shifted[:n]))) for n in range(2, MAX_ORDER + 1)]


def _prepare(references: dict, candidates: dict) -> list[_Image]:
    """Validate the inputs and split every sentence once; images come in the key order of `references`."""
    if not isinstance(references, dict) or not isinstance(candidates, dict):
        raise ValueError("references and candidates must be dicts {image id: ...}")
    if not references and not candidates:
        raise ValueError("references and candidates are empty: there is nothing to score")
    missing_candidates = [k for k in references if k not in candidates]
    missing_references = [k for k in candidates if k not in references]
    if missing_candidates or missing_references:
        parts = []
        if missing_candidates:
            parts.append(f"ids without a candidate: {missing_candidates[:5]}")
        if missing_references:
            parts.append(f"ids without references: {missing_references[:5]}")
        raise ValueError("references and candidates must have the same image ids; " + "; ".join(parts))
    images = []
    for image_id, refs in references.items():
        candidate = candidates[image_id]
        if isinstance(candidate, (list, tuple)) and len(candidate) == 1:   # pycocoevalcap's [str] form
            candidate = candidate[0]
        if not isinstance(candidate, str):
            raise ValueError(f"candidates[{image_id!r}] must be a str, got {type(candidate).__name__}")
        if isinstance(refs, str) or not isinstance(refs, (list, tuple)):
            raise ValueError(f"references[{image_id!r}] must be a list of str, got {type(refs).__name__}")
        if len(refs) == 0:
            raise ValueError(f"references[{image_id!r}] is empty: every image needs at least one reference")
        ref_words = []
        for j, ref in enumerate(refs):
            if not isinstance(ref, str):
                raise ValueError(f"references[{image_id!r}][{j}] must be a str, got {type(ref).__name__}")
            words = ref.split()
            if not words:
                raise ValueError(f"references[{image_id!r}][{j}] is an empty sentence")
            ref_words.append(words)
        words = candidate.split()
        images.append(_Image(words, _ngram_counts(words), ref_words, [_ngram_counts(w) for w in ref_words]))
    return images


# ---------------------------------------------------------------------------------------------- BLEU
def _bleu(images: list[_Image], max_n: int = MAX_ORDER) -> tuple[list[float], np.ndarray]:
    num_images = len(images)
    correct = np.zeros((num_images, max_n))         # clipped n-gram matches per image and order
    guess = np.zeros((num_images, max_n))           # candidate n-grams per image and order
    test_len = np.zeros(num_images)
    ref_len = np.zeros(num_images)
    for i, image in enumerate(images):
        length = len(image.candidate)
        for k in range(max_n):
            # Papineni et al. 2002, sec. 2.1.1: a candidate n-gram counts at most as often as in one reference.
            ref_counts = [counts[k] for counts in image.reference_counts]
            correct[i, k] = sum(min(count, max(counts.get(gram, 0) for counts in ref_counts))
                                for gram, count in image.candidate_counts[k].items())
        guess[i] = [max(0, length - k) for k in range(max_n)]
        test_len[i] = length
        # coco-caption's "closest" effective reference length; ties go to the shorter reference.
        ref_len[i] = min((abs(len(r) - length), len(r)) for r in image.references)[1]

    orders = np.arange(1, max_n + 1)

    def score(correct, guess, test_len, ref_len):       # [..., max_n] -> [..., max_n]
        # BLEU-n = BP * (prod_{k<=n} p_k)^(1/n), Papineni et al. 2002, sec. 2.3; cumprod keeps coco-caption's
        # left-to-right product.
        bleu = np.cumprod((correct + BLEU_TINY) / (guess + BLEU_SMALL), axis=-1) ** (1.0 / orders)
        ratio = (test_len + BLEU_TINY) / (ref_len + BLEU_SMALL)
        brevity = np.where(ratio < 1, np.exp(1 - 1 / np.minimum(ratio, 1)), 1.0)
        return bleu * np.asarray(brevity)[..., None]

    per_image = score(correct, guess, test_len, ref_len)                       # [N, max_n]
    corpus = score(correct.sum(0), guess.sum(0), test_len.sum(), ref_len.sum())  # [max_n]
    return [float(s) for s in corpus], per_image


def bleu(references: dict, candidates: dict, max_n: int = MAX_ORDER) -> tuple[list[float], np.ndarray]:
    """Corpus BLEU-1..max_n and per-image BLEU, as coco-caption's ``Bleu(4)`` (Papineni et al. 2002).

    Returns ``(corpus, per_image)``: ``corpus[k]`` is BLEU-(k+1) over the whole set, ``per_image`` is an
    ``[num_images, max_n]`` array in the key order of `references`. Corpus BLEU is not the mean of per-image
    BLEU: matches, guesses and lengths are pooled over images before the geometric mean.
    """
    if not 1 <= max_n <= MAX_ORDER:
        raise ValueError(f"max_n must be in 1..{MAX_ORDER}, got {max_n}")
    return _bleu(_prepare(references, candidates), max_n)


# ---------------------------------------------------------------------------------------------- ROUGE-L
def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists.

    Bit-parallel dynamic programming (Allison & Dix 1986; the form of Hyyrö 2004): bit i of ``row`` is 0 where
    the DP row over `a` steps up, so the LCS length is the number of 0 bits after all of `b` is read. One
    big-integer update per token of `b` instead of len(a) * len(b) Python steps.
    """
    if not a or not b:
        return 0
    match = {}                                        # token -> bit mask of its positions in a
    for i, token in enumerate(a):
        match[token] = match.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    row = full
    for token in b:
        hits = row & match.get(token, 0)
        row = ((row + hits) | (row - hits)) & full
    return len(a) - row.bit_count()


def _rouge_l(images: list[_Image], beta: float = ROUGE_BETA) -> tuple[float, np.ndarray]:
    scores = np.zeros(len(images))
    for i, image in enumerate(images):
        if not image.candidate:
            continue                                  # no words, no common subsequence
        lcs = [lcs_length(ref, image.candidate) for ref in image.references]
        precision = max(l / len(image.candidate) for l in lcs)
        recall = max(l / len(ref) for l, ref in zip(lcs, image.references))
        if precision > 0 and recall > 0:
            # Lin 2004, eq. (4): F = (1 + beta^2) R P / (R + beta^2 P)
            scores[i] = (1 + beta ** 2) * precision * recall / (recall + beta ** 2 * precision)
    return float(np.mean(scores)), scores


def rouge_l(references: dict, candidates: dict, beta: float = ROUGE_BETA) -> tuple[float, np.ndarray]:
    """Mean sentence-level ROUGE-L F-measure and per-image scores, as coco-caption's ``Rouge`` (Lin 2004).

    For each image the LCS precision and recall are maximised over the references separately (they may come
    from different references), then combined with ``beta = 1.2``.
    """
    return _rouge_l(_prepare(references, candidates), beta)


# ---------------------------------------------------------------------------------------------- CIDEr-D
def _cider_d(images: list[_Image], sigma: float = CIDER_SIGMA) -> tuple[float, np.ndarray]:
    # Document frequency: in how many images' reference sets each n-gram occurs (Vedantam et al. 2015, eq. 1).
    # N-grams of different orders never collide as strings, so one Counter holds all orders.
    document_frequency = Counter()
    for image in images:
        document_frequency.update(set().union(*(counts for ref in image.reference_counts for counts in ref)))
    df_get = document_frequency.get
    log_num_images = math.log(float(len(images)))

    def tf_idf(counts: list[Counter]) -> tuple[list[dict], list[float]]:
        """Per order: n-gram -> tf * idf weight with idf = log(num_images / df), and that order's norm."""
        # n-grams unseen in the references count as df = 1: the largest idf, log(num_images).
        vectors = [{gram: count * (log_num_images - math.log(df_get(gram, 1))) for gram, count in order.items()}
                   for order in counts]
        return vectors, [math.sqrt(sum(w * w for w in vector.values())) for vector in vectors]

    scores = np.zeros(len(images))
    for i, image in enumerate(images):
        cand_vectors, cand_norms = tf_idf(image.candidate_counts)
        # coco-caption's "length" is the number of bigrams, len - 1 (0 for an empty sentence).
        cand_length = max(len(image.candidate) - 1, 0)
        total = np.zeros(MAX_ORDER)                    # summed over references, per n-gram order
        for ref_counts, ref_words in zip(image.reference_counts, image.references):
            ref_vectors, ref_norms = tf_idf(ref_counts)
            penalty = math.exp(-((cand_length - max(len(ref_words) - 1, 0)) ** 2) / (2 * sigma ** 2))
            for k in range(MAX_ORDER):
                ref_vector = ref_vectors[k]
                # CIDEr-D clips the candidate's weight by the reference's so repeating a word gains nothing.
                similarity = sum(min(weight, ref_vector[gram]) * ref_vector[gram]
                                 for gram, weight in cand_vectors[k].items() if gram in ref_vector)
                if cand_norms[k] != 0 and ref_norms[k] != 0:
                    similarity /= cand_norms[k] * ref_norms[k]
                total[k] += similarity * penalty
        # Mean over n-gram orders (uniform weights 1/N), mean over references, times 10 as on the COCO server.
        scores[i] = np.mean(total) / len(image.reference_counts) * 10.0
    return float(np.mean(scores)), scores


def cider_d(references: dict, candidates: dict, sigma: float = CIDER_SIGMA) -> tuple[float, np.ndarray]:
    """Mean CIDEr-D and per-image CIDEr-D, as pycocoevalcap's ``Cider`` (Vedantam et al. 2015).

    Document frequencies come from the references of the images passed in, so a score depends on the whole
    evaluated set (as on the COCO server), not on each image alone. With a single image every n-gram has
    idf 0 and the score is 0.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    return _cider_d(_prepare(references, candidates), sigma=sigma)


# ---------------------------------------------------------------------------------------------- all
def caption_scores(references: dict, candidates: dict) -> dict[str, float]:
    """BLEU-1..4, ROUGE-L and CIDEr-D of `candidates` against `references`, keyed as the COCO server names them.

    ``references: {id: [str, ...]}`` and ``candidates: {id: str}`` hold pre-tokenised, space-separated lowercase
    text; see `tokenize`. Raises ValueError naming the id when the two dicts' ids differ or an image has no
    references.
    """
    images = _prepare(references, candidates)
    bleu_scores, _ = _bleu(images)
    scores = {f"BLEU-{k + 1}": s for k, s in enumerate(bleu_scores)}
    scores["ROUGE-L"] = _rouge_l(images)[0]
    scores["CIDEr-D"] = _cider_d(images)[0]
    return scores
