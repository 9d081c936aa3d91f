"""Image captioning: DeepImageSent, Show and Tell, Show Attend and Tell; greedy, sampling and beam-search decoding.

Every captioner is a CNN encoder (`SmallCNN` with padding) and a recurrent decoder that predicts the next word of
`<start> w_1 ... w_n <end>`. All three papers start from a CNN pre-trained on ImageNet; the small CNN here is
pre-trained instead, identically for the three kinds, as a multi-label classifier of the image's visual concepts
(which vocabulary words its captions use, Fang et al. 2015) on the captioning data itself, then fine-tuned with
the decoder (`recipe`, phases "concepts" and "train"). Trained from scratch with the decoder, Show and Tell's
image step, which reaches the words only through the LSTM's memory, stayed too weak to learn from. They differ
in how the image enters the decoder:

- DeepImageSent (Karpathy & Fei-Fei 2015, sec. 3.2, eq. (13)): a vanilla ReLU RNN whose *first* step alone
  receives the image, as a bias term b_v = W_hi CNN(I):
      h_t = ReLU(W_hx x_t + W_hh h_{t-1} + b_h + 1(t = 1) * b_v),   y_t = softmax(W_oh h_t + b_o).
- Show and Tell (Vinyals et al. 2015, sec. 3.1, eqs. (10)-(12)): an LSTM that sees the image embedding once,
  as its input at t = -1 (x_{-1} = W_I CNN(I)), then the learned word embeddings x_t = W_e S_t.
- Show Attend and Tell (Xu et al. 2015, sec. 3.1.2 and 4.2, soft attention): the CNN's grid gives L annotation
  vectors a_i (D channels each); at each step
      e_ti = w^T tanh(W_a a_i + W_h h_{t-1} + b)        f_att, an MLP (eq. (4))
      alpha_t = softmax(e_t)                              (eq. (5))
      z_t = beta_t * sum_i alpha_ti a_i,  beta_t = sigmoid(f_beta(h_{t-1}))   (eqs. (6), (13), gating scalar)
  the LSTM reads [E y_{t-1}; z_t], the word comes from the deep output layer L_o(E y_{t-1} + L_h h_t + L_z z_t)
  (eq. (7)), h_0 and c_0 are MLPs of the mean annotation vector, and the loss adds the doubly stochastic
  regularisation lambda * sum_i (1 - sum_t alpha_ti)^2 (eq. (14)).
  One deviation: each annotation vector also holds its grid cell's (x, y) (`coords`, CoordConv, Liu et al.
  2018). VGG's conv5 cells know roughly where they are through their large padded receptive fields; the small
  CNN's do not, and captions such as "a red star on the left" need z_t to say where the attention went.

The decoders share one step interface -- `start(images) -> (state, context)` and `step(tokens, state, context)
-> (logits, state, alpha | None)`, with every tensor batch-first -- so teacher forcing, greedy decoding, sampling
and beam search are written once below and work for any of the three (and for the hand-made models in tests).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scenekit.data.transforms import load_image, prepare_image
from scenekit.data.vocab import Vocabulary
from scenekit.errors import DataError
from scenekit.models.backbones import SmallCNN
from scenekit.models.language import LSTMCell, RNNCell
from scenekit.recipes import Phase, Recipe, option, read_options, stored_options

KINDS = ("deepimagesent", "showtell", "showattendtell")


@dataclass
class CaptionerConfig:
    kind: str                                  # one of KINDS
    words: list[str]                           # the vocabulary, id order
    image_size: int = 64                       # images are resized to S x S
    channels: tuple[int, ...] = (16, 32, 64)   # SmallCNN widths (padding 1): grid of S / 8 x S / 8 cells
    feature: int = 128                         # size of the global image feature CNN(I) (fc layer on the grid)
    embedding: int = 64                        # word (and image) embedding size
    hidden: int = 128                          # recurrent state size
    attention: int = 64                        # hidden size of f_att (Show Attend and Tell)
    doubly_stochastic: float = 0.03            # lambda of eq. (14), see `recipe`
    dropout: float = 0.2
    coords: bool = True                        # append each grid cell's (x, y) to its annotation vector


class Captioner(nn.Module):
    """Encoder + the decoder of `config.kind`; forward(images, targets) -> losses, see the module docstring."""

    def __init__(self, config: CaptionerConfig):
        super().__init__()
        if config.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {config.kind!r}")
        self.config = config
        self.vocabulary = Vocabulary(config.words)
        self.start_id, self.end_id, self.pad_id = Vocabulary.start_id, Vocabulary.end_id, Vocabulary.pad_id
        vocab, e, h = len(config.words), config.embedding, config.hidden
        self.encoder = SmallCNN(tuple(config.channels), padding=1)
        self.grid = config.image_size // self.encoder.stride
        if self.grid < 1:
            raise ValueError(f"image_size {config.image_size} is too small for {len(config.channels)} pooling stages")
        channels = self.encoder.out_channels
        annotation = channels + (2 if config.kind == "showattendtell" and config.coords else 0)   # D
        self.embed = nn.Embedding(vocab, e)
        self.drop = nn.Dropout(config.dropout)
        # CNN(I): a fully connected layer on the whole grid, like the fc7 feature DeepImageSent and Show and Tell
        # read. Every kind has it, with the visual-concept classifier on top, because the encoder is pre-trained
        # through them (see `recipe`); Show Attend and Tell then reads the grid below it, as Xu et al. read conv5.
        self.image_feature = nn.Sequential(nn.Flatten(), nn.Linear(channels * self.grid ** 2, config.feature),
                                           nn.ReLU(inplace=True))
        self.concepts = nn.Linear(config.feature, vocab)                       # which words describe the image
        if config.kind == "deepimagesent":
            self.image_bias = nn.Linear(config.feature, h)                     # W_hi
            self.cell = RNNCell(e, h, nonlinearity="relu")
            self.out = nn.Linear(h, vocab)                                       # W_oh, b_o
        elif config.kind == "showtell":
            self.image_embed = nn.Linear(config.feature, e)                     # W_I
            self.cell = LSTMCell(e, h)
            self.out = nn.Linear(h, vocab)
        else:
            self.init_h, self.init_c = nn.Linear(annotation, h), nn.Linear(annotation, h)
            self.att_annotation = nn.Linear(annotation, config.attention)      # W_a
            self.att_hidden = nn.Linear(h, config.attention, bias=False)       # W_h
            self.att_score = nn.Linear(config.attention, 1)                   # w
            self.beta = nn.Linear(h, 1)                                         # f_beta
            self.cell = LSTMCell(e + annotation, h)
            self.out_hidden, self.out_context = nn.Linear(h, e), nn.Linear(annotation, e)   # L_h, L_z
            self.out = nn.Linear(e, vocab)                                      # L_o

    # -------------------------------------------------------------------------------------------- interface
    def start(self, images: torch.Tensor):
        """Encode [B, 3, S, S] images -> (decoder state before the first word, per-image context)."""
        return self.start_from_grid(self.encoder(images))                      # -> [B, C, g, g]

    def start_from_grid(self, grid: torch.Tensor):
        """`start` for an encoded grid [B, C, g, g]."""
        kind = self.config.kind
        if kind == "deepimagesent":
            bias = self.image_bias(self.image_feature(grid))                   # b_v [B, H]
            h = bias.new_zeros(len(grid), self.config.hidden)
            return (h, bias), ()                                                # b_v is used at t = 1 only
        if kind == "showtell":
            x = self.image_embed(self.image_feature(grid))                     # x_{-1} [B, E]
            zeros = x.new_zeros(len(grid), self.config.hidden)
            h, c = self.cell(self.drop(x), (zeros, zeros))                      # the image step, t = -1
            return (h, c), ()
        if self.config.coords:
            grid = coordinate_channels(grid)                                    # -> [B, C + 2, g, g]
        annotations = grid.flatten(2).transpose(1, 2)                           # [B, L, D]
        mean = annotations.mean(dim=1)
        h, c = torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean))
        return (h, c), (annotations, self.att_annotation(annotations))         # W_a a_i computed once

    def step(self, tokens: torch.Tensor, state, context):
        """Previous words [N] -> (next-word logits [N, V], new state, attention [N, L] or None)."""
        x = self.drop(self.embed(tokens))                                       # [N, E]
        kind = self.config.kind
        if kind == "deepimagesent":
            h, pending = state
            h = self.cell(x, h, extra=pending)
            return self.out(self.drop(h)), (h, torch.zeros_like(pending)), None
        if kind == "showtell":
            h, c = self.cell(x, state)
            return self.out(self.drop(h)), (h, c), None
        h, c = state
        annotations, projected = context                                        # [N, L, D], [N, L, A]
        scores = self.att_score(torch.tanh(projected + self.att_hidden(h)[:, None])).squeeze(-1)   # [N, L]
        alpha = scores.softmax(dim=1)
        z = torch.sigmoid(self.beta(h)) * (alpha[..., None] * annotations).sum(dim=1)             # [N, D]
        h, c = self.cell(torch.cat([x, z], dim=1), (h, c))
        logits = self.out(self.drop(torch.tanh(x + self.out_hidden(self.drop(h)) + self.out_context(z))))
        return logits, (h, c), alpha

    # -------------------------------------------------------------------------------------------- training
    def forward(self, images: torch.Tensor, targets: dict | None = None):
        """With targets {"captions": [N, T] ids, "owner": [N] image of each caption} (and optionally "concepts"
        [B, V], see `concept_targets`): the losses (teacher forcing). Without: greedy captions (id lists)."""
        if targets is None:
            return [ids for ids, _ in greedy_decode(self, images)]
        grid = self.encoder(images)                                             # [B, C, g, g]
        losses = {}
        if "concepts" in targets:
            logits = self.concepts(self.image_feature(grid))                    # [B, V]
            losses["concepts"] = F.binary_cross_entropy_with_logits(logits, targets["concepts"].to(logits.dtype))
            if not self.embed.weight.requires_grad:
                return losses             # the encoder's pre-training phase: the frozen decoder would be wasted time
        captions, owner = targets["captions"], targets["owner"]
        state, context = self.start_from_grid(grid)
        state, context = _select(state, owner), _select(context, owner)       # one row per caption
        logits, alphas = teacher_forcing(self, captions[:, :-1], state, context)   # [N, T-1, V]
        following = captions[:, 1:]                                             # word t + 1 is the target at t
        mask = following != self.pad_id
        losses["cross_entropy"] = F.cross_entropy(logits[mask], following[mask])
        if alphas is not None and self.config.doubly_stochastic > 0:
            coverage = (alphas * mask[..., None]).sum(dim=1)                   # sum_t alpha_ti [N, L]
            # Eq. (14) adds the penalty once per caption to the caption's summed -log P; the cross-entropy here is a
            # mean per word, so the penalty is divided by the same word count to keep the paper's balance (per
            # caption it would be ~length times too strong and flatten every attention map).
            penalty = ((1 - coverage) ** 2).sum()                                # summed over captions and cells
            losses["doubly_stochastic"] = self.config.doubly_stochastic * penalty / mask.sum()
        return losses


def coordinate_channels(grid: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, C + 2, h, w]: each cell's centre x and y in [-1, 1] appended."""
    b, _, h, w = grid.shape
    ys = (torch.arange(h, device=grid.device, dtype=grid.dtype) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, device=grid.device, dtype=grid.dtype) + 0.5) / w * 2 - 1
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.cat([grid, xx.expand(b, 1, h, w), yy.expand(b, 1, h, w)], dim=1)


def _select(tensors, index):
    return tuple(t.index_select(0, index) for t in tensors)


def teacher_forcing(model, inputs: torch.Tensor, state, context):
    """Feed the true previous words [N, T] -> logits [N, T, V] and attention [N, T, L] (or None)."""
    logits, alphas = [], []
    for t in range(inputs.shape[1]):
        step_logits, state, alpha = model.step(inputs[:, t], state, context)
        logits.append(step_logits)
        alphas.append(alpha)
    return torch.stack(logits, dim=1), (torch.stack(alphas, dim=1) if alphas and alphas[0] is not None else None)


# ------------------------------------------------------------------------------------------------ decoding
@torch.no_grad()
def greedy_decode(model, images: torch.Tensor, max_length: int = 20):
    """The most likely next word at every step. -> per image (word ids without <end>, alphas [n, L] | None).

    At most `max_length` tokens are generated, the final <end> included; an image stops at its <end>."""
    return sample_decode(model, images, max_length=max_length, temperature=0.0)


@torch.no_grad()
def sample_decode(model, images: torch.Tensor, max_length: int = 20, temperature: float = 1.0,
                  generator: torch.Generator | None = None):
    """Draw each word from softmax(logits / temperature); temperature 0 is greedy. Output as `greedy_decode`."""
    if temperature < 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if max_length < 0:
        raise ValueError(f"max_length must be >= 0, got {max_length}")
    state, context = model.start(images)
    batch = len(images)
    tokens = torch.full((batch,), model.start_id, dtype=torch.int64, device=images.device)
    done = torch.zeros(batch, dtype=torch.bool)
    words, alphas = [[] for _ in range(batch)], [[] for _ in range(batch)]
    for _ in range(max_length):
        logits, state, alpha = model.step(tokens, state, context)
        if temperature == 0:
            tokens = logits.argmax(dim=1)
        else:
            probabilities = torch.softmax(logits.float() / temperature, dim=1).cpu()
            tokens = torch.multinomial(probabilities, 1, generator=generator).squeeze(1).to(logits.device)
        for i, token in enumerate(tokens.tolist()):
            if done[i]:
                continue
            if token == model.end_id:
                done[i] = True
                continue
            words[i].append(token)
            if alpha is not None:
                alphas[i].append(alpha[i].cpu())
        if bool(done.all()):
            break
    return [(w, torch.stack(a) if a else None) for w, a in zip(words, alphas)]


@dataclass
class Hypothesis:
    tokens: list[int]          # generated words, without <end>
    log_probability: float     # sum of log p of the words and of <end> if it was generated
    score: float               # log_probability / length ** length_penalty (the beam's ranking)
    alphas: torch.Tensor | None
    finished: bool             # ended with <end> (False: cut at max_length)


@torch.no_grad()
def beam_search(model, image: torch.Tensor, beam_size: int = 3, max_length: int = 20,
                length_penalty: float = 0.0) -> list[Hypothesis]:
    """Beam search for one image [3, S, S] (or [1, 3, S, S]) -> finished hypotheses, best first.

    Each step expands every live hypothesis by every word and keeps the `beam_size` highest total
    log-probabilities; a kept expansion by <end> is finished and leaves the beam (Sutskever et al. 2014;
    Vinyals et al. 2015, sec. 4.3, use beam size 20 and then 3). Hypotheses still live after `max_length`
    tokens are finished as they are. `length_penalty` alpha ranks finished hypotheses by log p / length^alpha
    (length counts <end>; 0: plain log-probability, 1: mean per token), which counters the bias toward short
    captions. Without it the search stops as soon as the best finished hypothesis beats every live one, as
    log-probabilities only decrease along a hypothesis.
    """
    if beam_size < 1 or max_length < 0:
        raise ValueError(f"need beam_size >= 1 and max_length >= 0, got {beam_size}, {max_length}")
    images = image if image.dim() == 4 else image[None]
    if len(images) != 1:
        raise ValueError(f"beam_search decodes one image, got a batch of {len(images)}")
    state, context = model.start(images)
    device = images.device
    live_tokens = torch.full((1, 0), 0, dtype=torch.int64)
    live_scores = torch.zeros(1, dtype=torch.float64)
    live_alphas = None
    last = torch.full((1,), model.start_id, dtype=torch.int64, device=device)
    finished: list[Hypothesis] = []

    def rank(log_probability, length):
        return log_probability / (max(1, length) ** length_penalty) if length_penalty else log_probability

    for t in range(max_length):
        rows = len(live_scores)
        logits, state, alpha = model.step(last, state, tuple(c.expand(rows, *c.shape[1:]) for c in context))
        totals = live_scores[:, None] + F.log_softmax(logits.double(), dim=1).cpu()          # [k, V]
        count = min(beam_size, totals.numel())
        top_scores, top_index = totals.flatten().topk(count)
        parents, words = top_index // totals.shape[1], top_index % totals.shape[1]
        keep = []
        for score, parent, word in zip(top_scores.tolist(), parents.tolist(), words.tolist()):
            if word == model.end_id:                            # alphas, like words, leave out <end>
                alphas = None if live_alphas is None else live_alphas[parent]
                tokens = live_tokens[parent].tolist()
                finished.append(Hypothesis(tokens, score, rank(score, len(tokens) + 1), alphas, True))
            else:
                keep.append((score, parent, word))
        if not keep:
            break
        index = torch.tensor([p for _, p, _ in keep])
        new_words = torch.tensor([w for _, _, w in keep])
        live_tokens = torch.cat([live_tokens[index], new_words[:, None]], dim=1)
        live_scores = torch.tensor([s for s, _, _ in keep], dtype=torch.float64)
        if alpha is not None:
            step_alpha = alpha.cpu()[index][:, None]
            live_alphas = step_alpha if live_alphas is None else torch.cat([live_alphas[index], step_alpha], dim=1)
        state = tuple(s.index_select(0, index.to(device)) for s in state)
        last = new_words.to(device)
        if not length_penalty and finished and max(h.log_probability for h in finished) >= float(live_scores.max()):
            live_scores = live_scores[:0]
            break
    for k in range(len(live_scores)):                                   # cut at max_length
        tokens = live_tokens[k].tolist()
        finished.append(Hypothesis(tokens, float(live_scores[k]), rank(float(live_scores[k]), len(tokens)),
                                   None if live_alphas is None else live_alphas[k], False))
    return sorted(finished, key=lambda h: -h.score)


# ------------------------------------------------------------------------------------------------ data
def concept_targets(captions, vocabulary_size: int) -> torch.Tensor:
    """An image's caption id lists -> [V] multi-hot of the words they use (not <pad>/<start>/<end>/<unk>).

    The targets of the encoder's pre-training: a multi-label "which words describe this image" classifier, the
    visual concepts of Fang et al. 2015 (sec. 3), learnt from the captions alone."""
    target = torch.zeros(vocabulary_size)
    for ids in captions:
        target[torch.as_tensor(ids, dtype=torch.int64)] = 1.0
    target[[Vocabulary.pad_id, Vocabulary.start_id, Vocabulary.end_id, Vocabulary.unk_id]] = 0.0
    return target


class CaptionData(torch.utils.data.Dataset):
    """Images resized to S x S with all their captions: item (image [3, S, S], {"captions": [K, T_k] ids,
    "concepts": [V] the words they use}).

    Captions longer than `max_words` words are cut (keeping <end>); images without captions are left out.
    """

    def __init__(self, dataset, vocabulary: Vocabulary, image_size: int, max_words: int = 20):
        self.dataset, self.vocabulary, self.size, self.max_words = dataset, vocabulary, image_size, max_words
        self.records = [r for r in dataset.records if r.captions]
        if not self.records:
            raise DataError("no image has a caption", field="captions")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        captions = [torch.tensor(self.vocabulary.encode_batch([c], self.max_words + 2)[0]) for c in record.captions]
        captions = [c[:int((c != 0).sum())] for c in captions]               # drop encode_batch's padding
        image = prepare_image(load_image(self.dataset, record), self.size)
        return image, {"captions": captions, "image_id": record.image_id,
                       "concepts": concept_targets(captions, len(self.vocabulary))}


def collate_captions(batch):
    """Stack images; pad every caption of the batch to the longest (<pad> = 0) and record its image."""
    images = torch.stack([image for image, _ in batch])
    captions = [c for _, target in batch for c in target["captions"]]
    owner = torch.tensor([i for i, (_, target) in enumerate(batch) for _ in target["captions"]])
    padded = torch.nn.utils.rnn.pad_sequence(captions, batch_first=True, padding_value=0)   # [N, T]
    targets = {"captions": padded, "owner": owner, "image_id": torch.tensor([t["image_id"] for _, t in batch])}
    if all("concepts" in t for _, t in batch):
        targets["concepts"] = torch.stack([t["concepts"] for _, t in batch])              # [B, V]
    return images, targets


# ------------------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def caption_images(model: Captioner, images: torch.Tensor, *, beam_size: int = 1, max_length: int = 20,
                   length_penalty: float = 0.0, temperature: float | None = None,
                   generator: torch.Generator | None = None):
    """Captions of [B, 3, S, S] images -> list of (text, words, alphas [n, L] | None).

    beam_size 1 with no temperature is greedy; a temperature samples; beam_size > 1 runs beam search."""
    model.eval()
    if temperature is not None:
        decoded = sample_decode(model, images, max_length, temperature, generator)
    elif beam_size == 1:
        decoded = greedy_decode(model, images, max_length)
    else:
        decoded = []
        for image in images:
            best = beam_search(model, image, beam_size, max_length, length_penalty)[0]
            decoded.append((best.tokens, best.alphas))
    words = model.vocabulary.words
    return [(" ".join(words[i] for i in ids), [words[i] for i in ids], alphas) for ids, alphas in decoded]


@torch.no_grad()
def evaluate_captioner(model: Captioner, dataset, device, *, beam_size: int = 1, max_length: int = 20,
                       length_penalty: float = 0.0, batch_size: int = 64) -> dict:
    """BLEU-1..4, ROUGE-L and CIDEr-D of the model's captions against each image's references (coco-caption
    tokenisation on both sides) and captioning speed."""
    from scenekit.metrics.captioning import caption_scores, tokenize

    model.eval()
    data = CaptionData(dataset, model.vocabulary, model.config.image_size)
    references, candidates, elapsed = {}, {}, 0.0
    for start in range(0, len(data), batch_size):
        items = [data[i] for i in range(start, min(len(data), start + batch_size))]
        images = torch.stack([image for image, _ in items]).to(device)
        began = time.perf_counter()
        captions = caption_images(model, images, beam_size=beam_size, max_length=max_length,
                                  length_penalty=length_penalty)
        elapsed += time.perf_counter() - began
        for k, (text, _, _) in enumerate(captions):
            record = data.records[start + k]
            references[record.image_id] = [tokenize(c) for c in record.captions]
            candidates[record.image_id] = tokenize(text)
    scores = {k: float(v) for k, v in caption_scores(references, candidates).items() if not isinstance(v, dict)}
    scores.update({"images": len(data), "images_per_s": len(data) / max(elapsed, 1e-9)})
    return scores


# ------------------------------------------------------------------------------------------------ pictures
def draw_attention(image, words, alphas, *, cell: int = 96, columns: int = 5):
    """A grid picture: the image, then the image under each word's attention map (alpha upsampled to the image,
    bright where attended), the word written above. image [H, W, 3] uint8; alphas [n, L] with L a square grid."""
    from PIL import Image, ImageDraw

    image = np.asarray(image)
    alphas = torch.as_tensor(alphas, dtype=torch.float32).reshape(len(words), -1) if len(words) else \
        torch.zeros(0, 1)
    side = int(round(math.sqrt(alphas.shape[1]))) if len(words) else 1
    if side * side != alphas.shape[1]:
        raise ValueError(f"alphas must cover a square grid, got {alphas.shape[1]} cells")
    base = np.asarray(Image.fromarray(image).resize((cell, cell), Image.BILINEAR), dtype=np.float32)
    panels = [("<image>", base)]
    for word, alpha in zip(words, alphas):
        heat = F.interpolate(alpha.view(1, 1, side, side), size=(cell, cell), mode="bilinear",
                             align_corners=False)[0, 0]
        heat = (heat / heat.max().clamp(min=1e-12)).numpy()[..., None]
        panels.append((word, base * (0.25 + 0.75 * heat)))
    rows = math.ceil(len(panels) / columns)
    label = 14
    canvas = Image.new("RGB", (columns * cell, rows * (cell + label)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for k, (word, pixels) in enumerate(panels):
        x, y = (k % columns) * cell, (k // columns) * (cell + label)
        canvas.paste(Image.fromarray(pixels.clip(0, 255).astype(np.uint8)), (x, y + label))
        draw.text((x + 2, y + 1), word, fill=(0, 0, 0))
    return canvas


# ------------------------------------------------------------------------------------------------ ONNX export
START_OUTPUTS = {"deepimagesent": ["h", "image_bias"], "showtell": ["h", "c"],
                 "showattendtell": ["h", "c", "annotations", "projected_annotations"]}


def captioner_graph(model: Captioner):
    """A captioner's ONNX graphs (`scenekit.export`): `start` (the encoder) on the images, and `step` (one word of
    the decoder) as the part "step"; the decoding loops (greedy, sampling, beam search) stay in Python."""
    from scenekit.models.export_parts import ExportGraph, ExportPart, Tupled

    kind, hidden, size = model.config.kind, model.config.hidden, model.config.image_size

    def encoder(images):                   # Captioner.start, batch left symbolic (it uses len(images))
        if kind == "showattendtell":
            state, context = model.start(images)
            return tuple(state) + tuple(context)                   # h, c [B, H]; a, W_a a [B, L, D], [B, L, A]
        grid = model.encoder(images)                                # [B, 3, S, S] -> [B, C, g, g]
        feature = model.image_feature(grid)                         # CNN(I) [B, F]
        if kind == "deepimagesent":
            bias = model.image_bias(feature)                        # b_v [B, H]
            return torch.zeros_like(bias), bias
        x = model.image_embed(feature)                              # x_{-1} [B, E]
        zeros = torch.zeros_like(x[:, :1]) * torch.zeros(1, hidden)  # [B, H]
        return tuple(model.cell(model.drop(x), (zeros, zeros)))    # the image step, t = -1
    names = START_OUTPUTS[kind]
    images = torch.rand(2, 3, size, size)
    graph = ExportGraph("captioner", Tupled(model, encoder), images, names, False)

    def step(tokens, *tensors):            # Captioner.step with its (state, context) tuples flattened
        logits, state, alpha = model.step(tokens, tuple(tensors[:2]), tuple(tensors[2:]))
        return (logits, *state) + (() if alpha is None else (alpha,))
    with torch.no_grad():
        encoded = tuple(o.contiguous() for o in graph.network(images))
    tokens = torch.full((2,), model.start_id, dtype=torch.int64)
    outputs = ["logits", f"{names[0]}_next", f"{names[1]}_next"] + (["alpha"] if kind == "showattendtell" else [])
    graph.parts.append(ExportPart("step", Tupled(model, step), (tokens, *encoded), ["tokens", *names], outputs,
                                  {n: {0: "rows"} for n in ["tokens", *names, *outputs]}))
    return graph


def captioner_from_onnx(skeleton: Captioner, graphs) -> Captioner:
    """The captioner whose `start` and `step` onnxruntime answers: its own decoding loops (greedy, sampling, beam
    search; `caption_images`) call start() once and step() per word."""
    skeleton.start, skeleton.step = _OnnxStart(graphs.main), _OnnxStep(graphs.parts["step"])
    return skeleton


class _OnnxStart:
    """`Captioner.start(images)` -> (state, context) from the main graph's flat outputs."""

    def __init__(self, session):
        self.session = session

    def __call__(self, images):
        outputs = self.session.tensors(images)
        return outputs[:2], outputs[2:]


class _OnnxStep:
    """`Captioner.step(tokens, state, context)` -> (logits, state, alpha or None) from the "step" graph."""

    def __init__(self, session):
        self.session = session

    def __call__(self, tokens, state, context):
        outputs = self.session.tensors(tokens, *state, *context)
        return outputs[0], outputs[1:3], (outputs[3] if len(outputs) > 3 else None)


# ------------------------------------------------------------------------------------------------ recipe
WORLD_OPTIONS = {"image_size": 96, "max_objects": 4}   # the world the captioners train on by default


@dataclass
class CaptionerOptions:
    """A captioner's options (`recipe`; `scenekit train showtell --option KEY=VALUE`)."""

    kind: str | None = option(None, "decoder: deepimagesent | showtell | showattendtell (None: the model's name)")
    vocabulary: Any = option(None, "a word list, a vocabulary JSON or a captions spec (None: the world's words)")
    min_count: int = option(1, "fewest occurrences of a word kept when a captions spec is counted")
    image_size: int = option(64, "side images are resized to, px")
    channels: tuple[int, ...] = option((16, 32, 64), "widths of the small CNN's stages, each halving the grid")
    feature: int = option(128, "size of the global image feature CNN(I)")
    embedding: int = option(64, "size of a word's (and the image's) embedding")
    hidden: int = option(128, "size of the recurrent state")
    attention: int = option(64, "hidden size of Show Attend and Tell's attention network f_att")
    doubly_stochastic: float = option(0.03, "weight lambda of Xu et al. 2015's eq. (14) penalty (0: none)")
    dropout: float = option(0.2, "dropout probability on the decoder's inputs and outputs")
    coords: bool = option(True, "append each grid cell's (x, y) to its annotation vector")
    epochs: int | None = option(None, "captioning epochs, after the pre-training (None: 15)")
    lr: float | None = option(None, "Adam's learning rate of the captioning phase (None: 2e-3)")
    clip: float = option(5.0, "largest gradient norm of the captioning phase")
    max_words: int = option(20, "words a caption is cut to in training and decoding")
    beam_size: int = option(1, "beam width of validation and prediction (1: greedy decoding)")
    pretrain_epochs: int = option(5, "epochs of the encoder alone on the caption words (0: none)")
    concept_loss: bool = option(False, "keep the concept loss as an auxiliary term while captioning")


def recipe(categories=None, *, name: str = "showtell", **options) -> Recipe:
    """A captioner's training recipe (options: `CaptionerOptions`): Adam, cosine schedule, gradient-norm clipping,
    teacher forcing.

    Two phases: `pretrain_epochs` of the encoder alone (CNN + fc feature + concept classifier, binary
    cross-entropy on `concept_targets`; the decoder is frozen and not run), then `epochs` of the whole captioner
    on the caption loss (`concept_loss=True` keeps the concept loss as an auxiliary term there).

    `doubly_stochastic` is lambda of Xu et al.'s eq. (14), a tuned weight there too. The penalty asks every cell
    to be attended once over the caption, sum_t alpha_ti = 1; with L = 64 cells and ~10 words it cannot be met
    (its minimum is the flat coverage T / L everywhere, ~6 per word), and at lambda = 1 it outweighs the caption
    loss and flattens the attention: Show Attend and Tell then scored below Show and Tell (benchmarks/README.md:
    greedy CIDEr-D 0.97-1.03 at 1, 1.02 at 0.1, 1.18 at 0.03, 1.25 at 0).

    `vocabulary`: None (the world's words), a word list, a vocabulary JSON or a captions spec
    (`coco-captions:PATH`, `flickr8k:PATH`) counted with `min_count`. Validation reports CIDEr-D etc. with
    greedy decoding (or beam search of `beam_size`). The stored options hold the kind and the word list."""
    from scenekit.data.captions import resolve_vocabulary

    o = read_options(CaptionerOptions, options, name)
    kind = o.kind or name
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    words = resolve_vocabulary(o.vocabulary, min_count=o.min_count).words
    o = replace(o, kind=kind, vocabulary=list(words), channels=tuple(o.channels))
    config = CaptionerConfig(kind=kind, words=list(words), image_size=o.image_size, channels=o.channels,
                             feature=o.feature, embedding=o.embedding, hidden=o.hidden, attention=o.attention,
                             doubly_stochastic=o.doubly_stochastic, dropout=o.dropout, coords=o.coords)
    phases = []
    if o.pretrain_epochs:
        phases.append(Phase("concepts", epochs=o.pretrain_epochs, lr=2e-3, optimizer="adam", schedule="cosine",
                            warmup_steps=20, trains=("encoder", "image_feature", "concepts"),
                            loss_terms=("concepts",)))
    caption_terms = ("cross_entropy",) + (("doubly_stochastic",) if kind == "showattendtell" and
                                          o.doubly_stochastic > 0 else ())
    unused = ("concepts",) + (("image_feature",) if kind == "showattendtell" else ())
    decoder = tuple(name for name, _ in Captioner(config).named_children() if name not in unused)
    phases.append(Phase("train", epochs=15 if o.epochs is None else o.epochs, lr=2e-3 if o.lr is None else o.lr,
                        optimizer="adam", schedule="cosine", warmup_steps=20, clip_grad_norm=o.clip,
                        trains=None if o.concept_loss else decoder,
                        loss_terms=None if o.concept_loss else caption_terms))
    vocab = Vocabulary(list(words))

    def build(model_config: dict) -> Captioner:
        values = dict(model_config)
        values["channels"] = tuple(values["channels"])
        return Captioner(CaptionerConfig(**values))

    def make_dataset(dataset, train):
        _check_coverage(vocab, dataset)
        return CaptionData(dataset, vocab, o.image_size, o.max_words)

    def predict(model, images, device):
        tensors = torch.stack([prepare_image(image, o.image_size) for image in images]).to(device)
        captions = caption_images(model, tensors, beam_size=o.beam_size, max_length=o.max_words + 1)
        return [{"boxes": torch.zeros(0, 4, dtype=torch.float64), "scores": torch.zeros(0, dtype=torch.float64),
                 "labels": torch.zeros(0, dtype=torch.int64), "caption": text} for text, _, _ in captions]

    model_config = asdict(config)
    model_config["channels"] = list(config.channels)
    return Recipe(model_name=name, categories=dict(categories or {}), options=stored_options(o),
                  model_config=model_config, build_model=build, phases=phases, make_dataset=make_dataset,
                  collate=collate_captions,
                  evaluate=lambda model, dataset, device: evaluate_captioner(
                      model, dataset, device, beam_size=o.beam_size, max_length=o.max_words + 1),
                  predict=predict, best_metric="CIDEr-D", best_mode="max", world=dict(WORLD_OPTIONS),
                  batch_size=8,        # the decoder's small steps dominate: 4x the updates of 32 for the same time
                  export=captioner_graph, from_onnx=captioner_from_onnx)


def _check_coverage(vocabulary: Vocabulary, dataset, limit: float = 0.05) -> None:
    """Refuse data most of whose words the model cannot write: a vocabulary from other data is a silent failure."""
    from scenekit.data.captions import unknown_rate

    texts = [c for r in dataset.records[:500] for c in r.captions]
    rate = unknown_rate(vocabulary, texts)
    if rate > limit:
        raise DataError(f"{rate:.0%} of the caption words are not in the model's vocabulary; build it from the "
                        "data with --option vocabulary=SPEC (e.g. coco-captions:PATH)", field="vocabulary")
