"""Multiple-choice visual question answering with attention over image regions (Zhu et al. 2016, Visual7W).

The attention-based LSTM of Visual7W (sec. 4): the LSTM first reads the image (a fully connected feature of the
CNN grid, fed as the input at t = 0), then the question word by word. At every step t it also looks at the
image: an attention map over the CNN's grid cells C(I), computed from the previous hidden state,

    e_t = w_a^T tanh(W_he h_{t-1} + W_ce C(I)) + b_a,     a_t = softmax(e_t),     r_t = a_t^T C(I)   (eqs. (1)-(2))

and r_t is fed to the LSTM together with the word embedding. After the question's last word, one more attention
step gives r_T; the question-and-image state q = tanh(W_q h_T + W_r r_T) scores each candidate answer, embedded
as the mean of its word embeddings and a linear layer, by a dot product; a softmax over the 4 candidates is
trained with cross-entropy (the brief's multiple-choice head; Visual7W itself ranks answers by their likelihood
under the LSTM). `attention=False` drops the attention terms: the plain LSTM baseline of the paper's Table 2.

Visual7W's CNN is an ImageNet VGG; the small CNN here is pre-trained instead (`recipe`, phase "concepts") as a
multi-label classifier of the words of each image's captions, as the captioners' encoder is.

The input size (`image_size`, default 96) sets the grid: three pooling stages give 12 x 12 cells at 96 px. The
VQA world's pictures are 128 px and its small shapes 10-28 px wide; fed at 64 px (the default until session 15)
the smallest become 5 px blobs on an 8 x 8 grid, where two small shapes can share a cell. On the benchmark (20000
images x 6 epochs, run on a GPU for the comparison) 96 px gave 0.890 against 0.833 at 64 px; 128 px with a
fourth stage (8 x 8 cells) 0.842, or 0.892 with twice the widths at ~4x the CPU cost of 96 px; 128 px with
three stages (16 x 16 cells) 0.861. The CPU benchmark (one thread) gives the 96 px model 0.875 in 1453 s.

The grid cells carry their normalised (x, y) coordinates as two extra channels (`coords`, as CoordConv,
Liu et al. 2018): a small CNN's cells do not know where they lie, and "where is the red circle?" needs the
attended vector r_t to say where the attention went.

Three further ingredients, each switchable and off in checkpoints saved before them:
- `context_layers`: 3x3 convolutions at the grid's resolution after the small CNN. Each cell of the three-stage
  CNN sees 22 px of a 64 px input, too little to tell a circle from a ring or a star; two more layers widen that
  to 54 px for ~40% more convolution multiply-adds (they run on the 8 x 8 grid).
- `dense`: the encoder's pre-training also learns, for every grid cell, which category covers it (soft target:
  the fractions of the cell's pixels per category, background included) and whether an object's box centre lies
  in it, from the training images' semantic maps and boxes (a segmentation-style stand-in for Visual7W's
  ImageNet pre-training, as detection backbones are pre-trained). The head's predictions (category
  probabilities, centre probability) are appended to each cell of C(I), and the term stays on, as an auxiliary
  loss, while the answers are trained. Records without a semantic map (files without masks) get no dense
  targets; the term is then zero and only the caption words pre-train the CNN.
- `count_glimpse`: softmax attention averages, so r_T cannot say how many cells matched ("how many red
  shapes?", "is there a ring?" -- no / one / two / three or more). A second, unnormalised read-out of the last
  step, n_T = sum_i sigmoid(s_i) C_i with s_i = w_n^T tanh(W_he h_T + W_ce C_i) + b_n, sums the matching cells
  (with `dense`, their centre probabilities: a count) and enters q through W_n (the sigmoid-gated sum of
  counting models such as Trott et al. 2018 / Zhang et al. 2018, in its simplest form).

A user's VQA set (`scenekit.data.vqa_files`: VQA v2, Visual7W telling) trains without scenekit's questions file.
What only the training data can tell is settled by `fit_to_data` before training (`VQARecipe.fit`): the vocabulary
(the training questions' and choices' words, unless given or the world's words cover them all), the answer head,
and which pre-training terms the data can feed. Multiple-choice questions may have different numbers of choices
(missing ones are padding, masked out of the softmax). Open-ended questions (VQA v2) are answered by a classifier
over the top K training answers beside the multiple-choice scorer (Antol et al. 2015, sec. 5: K = 1000, a softmax
over them), scored with the VQA accuracy min(#humans who gave the answer / 3, 1). A vocabulary that leaves more
than 5% of the questions' words unknown stops training and evaluation with one line (`check_coverage`).
"""

from __future__ import annotations

import time
import sys
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scenekit.data.transforms import load_image, prepare_image
from scenekit.data.vocab import Vocabulary
from scenekit.data.vqa_files import OpenQuestion, top_answers
from scenekit.errors import DataError
from scenekit.models.backbones import SmallCNN
from scenekit.models.captioner import concept_targets, coordinate_channels
from scenekit.models.language import LSTMCell
from scenekit.recipes import Phase, Recipe, option, read_options, stored_options


@dataclass
class VQAConfig:
    words: list[str]                           # vocabulary of questions and answers, id order
    image_size: int = 96                       # the world is 128 px; 96 px -> a 12 x 12 grid
    channels: tuple[int, ...] = (16, 32, 64)   # SmallCNN widths (padding 1)
    feature: int = 128                         # fully connected image feature read at t = 0
    embedding: int = 64
    hidden: int = 128
    attention_size: int = 64
    joint: int = 128                           # size of q and of the answer embeddings
    attention: bool = True
    coords: bool = True
    context_layers: int = 2                    # 3x3 conv layers at grid resolution after the small CNN
    dense: bool = True                         # per-cell category + object-centre head, appended to C(I)
    dense_classes: int = 7                     # background + the dataset's categories (ids 1..K)
    count_glimpse: bool = True                 # unnormalised sigmoid-gated read-out n_T (needs attention)
    answers: list[str] = field(default_factory=list)   # open-ended answer classes (empty: multiple choice only)


# Values of the options for checkpoints saved before they existed: such checkpoints hold none of their layers.
LEGACY_OPTIONS = {"context_layers": 0, "dense": False, "count_glimpse": False}


class VQAModel(nn.Module):
    """Attention-based LSTM question encoder + dot-product answer scorer (see the module docstring)."""

    def __init__(self, config: VQAConfig):
        super().__init__()
        self.config = config
        self.vocabulary = Vocabulary(config.words)
        self.encoder = SmallCNN(tuple(config.channels), padding=1)
        self.grid = config.image_size // self.encoder.stride
        if self.grid < 1:
            raise ValueError(f"image_size {config.image_size} is too small for {len(config.channels)} pooling stages")
        if config.count_glimpse and not config.attention:
            raise ValueError("count_glimpse needs attention=True (it reuses the attention's projections)")
        if config.context_layers < 0 or (config.dense and config.dense_classes < 2):
            raise ValueError(f"need context_layers >= 0 and dense_classes >= 2, got {config.context_layers}, "
                             f"{config.dense_classes}")
        width = self.encoder.out_channels
        layers = []
        for _ in range(config.context_layers):
            layers += [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
        self.context = nn.Sequential(*layers)                                     # empty: identity
        d = width + (config.dense_classes + 1 if config.dense else 0) + (2 if config.coords else 0)
        if config.dense:
            self.dense_head = nn.Conv2d(width, config.dense_classes + 1, 1)      # categories + centre logit
        e, h = config.embedding, config.hidden
        self.embed = nn.Embedding(len(config.words), e, padding_idx=0)
        self.image_feature = nn.Sequential(nn.Flatten(), nn.Linear(width * self.grid ** 2,
                                                                   config.feature), nn.ReLU(inplace=True))
        self.image_input = nn.Linear(config.feature, e)                            # x_0
        if config.attention:
            self.att_hidden = nn.Linear(h, config.attention_size, bias=False)     # W_he
            self.att_cells = nn.Linear(d, config.attention_size)                   # W_ce
            self.att_score = nn.Linear(config.attention_size, 1)                   # w_a, b_a
            self.joint_image = nn.Linear(d, config.joint)                          # W_r
        if config.count_glimpse:
            self.count_score = nn.Linear(config.attention_size, 1)                 # w_n, b_n
            self.joint_count = nn.Linear(d, config.joint)                          # W_n
        self.cell = LSTMCell(e + (d if config.attention else 0), h)
        self.joint_question = nn.Linear(h, config.joint)                           # W_q
        self.answer = nn.Linear(e, config.joint)
        self.concepts = nn.Linear(config.feature, len(config.words))              # the encoder's pre-training head
        if config.answers:
            self.classifier = nn.Linear(config.joint, len(config.answers))         # open-ended: top-K answers

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> CNN grid [B, C, g, g] (the small CNN, then the context layers)."""
        return self.context(self.encoder(images))

    def cells(self, images: torch.Tensor, grid: torch.Tensor | None = None, feature: torch.Tensor | None = None,
              dense: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 3, S, S] -> (grid cells C(I) [B, L, D], fully connected image input x_0 [B, E]). Training passes
        what its pre-training losses computed already: the CNN grid, its fully connected feature and the dense
        head's logits."""
        grid = self.features(images) if grid is None else grid                   # [B, C, g, g]
        feature = self.image_feature(grid) if feature is None else feature       # [B, F]
        x0 = self.image_input(feature)
        if self.config.dense:
            dense = self.dense_head(grid) if dense is None else dense             # [B, K + 1, g, g]
            grid = torch.cat([grid, dense[:, :-1].softmax(dim=1), dense[:, -1:].sigmoid()], dim=1)
        if self.config.coords:
            grid = coordinate_channels(grid)
        return grid.flatten(2).transpose(1, 2), x0

    def attend(self, h: torch.Tensor, cells: torch.Tensor, projected: torch.Tensor):
        """h [N, H], cells [N, L, D] -> (attended r [N, D], attention a [N, L])  (Zhu et al. 2016, eqs. (1)-(2))."""
        a = self.att_score(torch.tanh(self.att_hidden(h)[:, None] + projected)).squeeze(-1).softmax(dim=1)
        return (a[..., None] * cells).sum(dim=1), a

    def count(self, h: torch.Tensor, cells: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
        """h [N, H], cells [N, L, D] -> n = sum_i sigmoid(s_i) C_i [N, D]: unlike r, it grows with the number of
        matching cells (see `count_glimpse` in the module docstring)."""
        gate = self.count_score(torch.tanh(self.att_hidden(h)[:, None] + projected)).sigmoid()      # [N, L, 1]
        return (gate * cells).sum(dim=1)

    def encode(self, images: torch.Tensor, questions: torch.Tensor, owner: torch.Tensor, **computed):
        """Questions [N, T] (padded with 0) about images[owner] -> (q [N, J], final attention [N, L] | None).
        `computed`: the image parts `cells` may take instead of recomputing them."""
        cells, x0 = self.cells(images, **computed)
        cells, x0 = cells[owner], x0[owner]
        projected = self.att_cells(cells) if self.config.attention else None
        n, hidden = len(questions), self.config.hidden
        h = c = x0.new_zeros(n, hidden)
        inputs = [x0] + [self.embed(questions[:, t]) for t in range(questions.shape[1])]
        valid = [torch.ones(n, dtype=torch.bool, device=questions.device)] + \
                [questions[:, t] != 0 for t in range(questions.shape[1])]
        for x, keep in zip(inputs, valid):
            if self.config.attention:
                x = torch.cat([x, self.attend(h, cells, projected)[0]], dim=1)
            h_new, c_new = self.cell(x, (h, c))
            h = torch.where(keep[:, None], h_new, h)                              # padding leaves the state
            c = torch.where(keep[:, None], c_new, c)
        q = self.joint_question(h)
        alpha = None
        if self.config.attention:
            r, alpha = self.attend(h, cells, projected)
            q = q + self.joint_image(r)
        if self.config.count_glimpse:
            q = q + self.joint_count(self.count(h, cells, projected))             # n_T [N, D] -> [N, J]
        return torch.tanh(q), alpha

    def dense_loss(self, dense: torch.Tensor, targets: dict) -> torch.Tensor:
        """dense [B, K + 1, g, g] logits -> cross-entropy with the cells' category fractions ("cell_classes"
        [B, K, g, g]) + binary cross-entropy of the centre map ("centres" [B, g, g]). Without the targets (a
        dataset without semantic maps) the term is a zero that keeps the graph: only the concepts train the CNN."""
        if "cell_classes" not in targets:
            return dense.sum() * 0.0
        fractions = targets["cell_classes"].to(dense.dtype)
        if fractions.shape[1:] != dense[:, :-1].shape[1:]:
            raise DataError(f"cell targets of shape {tuple(fractions.shape[1:])} do not fit the grid "
                            f"{tuple(dense[:, :-1].shape[1:])}; check dense_classes", field="semantic")
        classes = -(fractions * dense[:, :-1].log_softmax(dim=1)).sum(dim=1).mean()
        centres = F.binary_cross_entropy_with_logits(dense[:, -1], targets["centres"].to(dense.dtype))
        return classes + centres

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As nn.Module's, with a DataError naming the layers when a checkpoint's layers do not match (VQA
        checkpoints saved before the caption pre-training of session 13 do not load; retrain them)."""
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except RuntimeError as error:
            mine, theirs = set(self.state_dict()), set(state_dict)
            raise DataError(f"the checkpoint's VQA layers do not match this version of the model (missing "
                            f"{sorted(mine - theirs)[:4]}, unexpected {sorted(theirs - mine)[:4]}): retrain it "
                            f"with `scenekit train vqa`", field="model") from error

    def score(self, q: torch.Tensor, choices: torch.Tensor) -> torch.Tensor:
        """q [N, J], choices [N, K, Ta] word ids (0-padded) -> scores [N, K]: q . tanh(W mean(embeddings)).
        Choices that are all padding (questions with fewer than K choices) score the lowest float: never picked,
        zero probability."""
        mask = (choices != 0).float()[..., None]                                  # [N, K, Ta, 1]
        mean = (self.embed(choices) * mask).sum(dim=2) / mask.sum(dim=2).clamp(min=1)
        scores = (torch.tanh(self.answer(mean)) * q[:, None]).sum(dim=-1)
        return scores.masked_fill(mask.sum(dim=(2, 3)) == 0, torch.finfo(scores.dtype).min)

    def classify(self, q: torch.Tensor) -> torch.Tensor:
        """q [N, J] -> logits [N, A] over the open-ended answer classes (Antol et al. 2015, sec. 5: a softmax over
        the top K training answers)."""
        if not self.config.answers:
            raise DataError("this VQA model has no open-ended answers (it was trained on multiple-choice "
                            "questions); give the candidate answers", field="choices")
        return self.classifier(q)

    def answer_loss(self, q: torch.Tensor, targets: dict) -> torch.Tensor:
        """Cross-entropy of each question's right answer: over its choices (multiple choice) or over the answer
        classes ("open" [N] true; answers outside the classes, -100, are left out), averaged over questions."""
        scores, answers = self.score(q, targets["choices"]), targets["answers"]
        open_ = targets.get("open")
        if open_ is None or not bool(open_.any()):
            return F.cross_entropy(scores, answers)
        per = q.new_zeros(len(q))
        closed = ~open_
        if bool(closed.any()):
            per[closed] = F.cross_entropy(scores[closed], answers[closed], reduction="none")
        per[open_] = F.cross_entropy(self.classify(q[open_]), answers[open_], ignore_index=-100, reduction="none")
        return per.sum() / (answers != -100).sum().clamp(min=1)

    def forward(self, images: torch.Tensor, targets: dict):
        """targets {"questions" [N, T], "choices" [N, K, Ta], "owner" [N] and, to train, "answers" [N], optionally
        "open" [N] (open-ended questions, answered by `classify`) and "concepts" [B, V]}: the losses (cross-entropy
        over each question's candidates or answer classes; binary cross-entropy of the image's visual concepts), or
        (without "answers") the multiple-choice scores [N, K]."""
        losses, computed = {}, {}
        if "answers" in targets and ("concepts" in targets or self.config.dense):
            grid = self.features(images)                                           # [B, C, g, g]
            computed = {"grid": grid, "feature": self.image_feature(grid)}         # feature [B, F]
            if "concepts" in targets:
                logits = self.concepts(computed["feature"])                        # [B, V]
                losses["concepts"] = F.binary_cross_entropy_with_logits(logits,
                                                                        targets["concepts"].to(logits.dtype))
            if self.config.dense:
                computed["dense"] = self.dense_head(grid)                          # [B, K + 1, g, g]
                losses["dense"] = self.dense_loss(computed["dense"], targets)
            if not self.embed.weight.requires_grad:
                return losses             # the encoder's pre-training phase: the frozen LSTM would be wasted time
        q, _ = self.encode(images, targets["questions"], targets["owner"], **computed)
        if "answers" not in targets:
            return self.score(q, targets["choices"])
        losses["cross_entropy"] = self.answer_loss(q, targets)
        return losses


# ------------------------------------------------------------------------------------------------ data
def encode_question(vocabulary: Vocabulary, question: str, choices) -> tuple[torch.Tensor, torch.Tensor]:
    """Question -> ids [T] (no <start>/<end>), choices -> ids [K, Ta] (0-padded); no choices (an open-ended
    question) -> one all-padding row [1, 1], which `VQAModel.score` masks."""
    q = torch.tensor(vocabulary.encode(question, add_start_end=False) or [vocabulary.unk_id])
    if not choices:
        return q, torch.zeros(1, 1, dtype=torch.int64)
    rows = [torch.tensor(vocabulary.encode(c, add_start_end=False) or [vocabulary.unk_id]) for c in choices]
    return q, torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)


def cell_targets(record, grid: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A record's semantic map [H, W] and boxes -> (category fractions [K, g, g] of each cell of a g x g grid laid
    over the image, object-centre map [g, g]: 1 where a box centre lies): the `dense` pre-training targets."""
    semantic = np.asarray(record.semantic)
    height, width = semantic.shape
    if semantic.size and (semantic.min() < 0 or semantic.max() >= classes):
        raise DataError(f"semantic map holds class {int(semantic.max())}, outside 0..{classes - 1}",
                        record=record.image_id, field="semantic")
    rows = np.arange(height) * grid // height                                   # pixel row -> cell row
    cols = np.arange(width) * grid // width
    index = ((rows[:, None] * grid + cols[None, :]) * classes + semantic).ravel()
    counts = np.bincount(index, minlength=grid * grid * classes).reshape(grid, grid, classes)
    fractions = counts / np.maximum(counts.sum(axis=2, keepdims=True), 1)
    centres = np.zeros((grid, grid), np.float32)
    for x0, y0, x1, y1 in np.asarray(record.boxes, dtype=np.float64).reshape(-1, 4):
        centres[min(int((y0 + y1) / 2 * grid / height), grid - 1),
                min(int((x0 + x1) / 2 * grid / width), grid - 1)] = 1.0
    return torch.from_numpy(fractions.transpose(2, 0, 1)).float(), torch.from_numpy(centres)


class QuestionData(torch.utils.data.Dataset):
    """One item per image with questions: (image [3, S, S], {"questions": [...], "choices": [...],
    "answers": [...], "open": [...], "kinds": [...], "concepts": [V] the words of the image's captions (zeros
    without; left out when `concepts` is false)}, and, given `grid` and when every record has a semantic map,
    "cell_classes" [K, g, g] and "centres" [g, g]). Questions may have different numbers of choices. An
    open-ended question (`OpenQuestion`) has no choices; its answer is its `best` answer's index in `answers`
    (-100 when not among them)."""

    def __init__(self, dataset, vocabulary: Vocabulary, image_size: int, grid: int | None = None,
                 classes: int = 7, answers=(), concepts: bool = True):
        self.dataset, self.vocabulary, self.size, self.concepts = dataset, vocabulary, image_size, concepts
        self.records = [r for r in dataset.records if r.questions]
        if not self.records:
            raise DataError("no image has a question", field="questions")
        self.answer_ids = {a: i for i, a in enumerate(answers)}
        for record in self.records:
            for q in record.questions:
                if isinstance(q, OpenQuestion) and not self.answer_ids:
                    raise DataError("an open-ended question, but the model has no answer classes (it was trained "
                                    "on multiple-choice questions)", record=f"image id {record.image_id}",
                                    field="questions")
                if not isinstance(q, OpenQuestion) and not 0 <= q.answer < len(q.choices):
                    raise DataError(f"answer {q.answer} is not the index of one of its {len(q.choices)} choices",
                                    record=f"image id {record.image_id}", field="answer")
        self.grid = grid if grid and all(r.semantic is not None for r in self.records) else None
        self.classes = classes

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        encoded = [encode_question(self.vocabulary, q.question, q.choices) for q in record.questions]
        captions = [self.vocabulary.encode(c, add_start_end=False) for c in record.captions]
        target = {"questions": [e[0] for e in encoded], "choices": [e[1] for e in encoded],
                  "answers": [self.answer_ids.get(q.best, -100) if isinstance(q, OpenQuestion) else q.answer
                              for q in record.questions],
                  "open": [isinstance(q, OpenQuestion) for q in record.questions],
                  "kinds": [q.kind for q in record.questions]}
        if self.concepts:
            target["concepts"] = concept_targets(captions, len(self.vocabulary))
        if self.grid:
            target["cell_classes"], target["centres"] = cell_targets(record, self.grid, self.classes)
        return prepare_image(load_image(self.dataset, record), self.size), target


def collate_questions(batch):
    """Images stacked; questions padded to [N, T], choices to [N, K, Ta] (K the most choices of a question:
    missing ones are all padding); owner [N] is each question's image; open [N] marks open-ended questions."""
    images = torch.stack([image for image, _ in batch])
    questions = [q for _, t in batch for q in t["questions"]]
    choices = [c for _, t in batch for c in t["choices"]]
    count, width = max(c.shape[0] for c in choices), max(c.shape[1] for c in choices)
    choices = torch.stack([F.pad(c, (0, width - c.shape[1], 0, count - c.shape[0])) for c in choices])
    return images, {
        "questions": torch.nn.utils.rnn.pad_sequence(questions, batch_first=True),
        "choices": choices,
        "answers": torch.tensor([a for _, t in batch for a in t["answers"]]),
        "open": torch.tensor([o for _, t in batch for o in t.get("open", [False] * len(t["questions"]))],
                             dtype=torch.bool),
        "owner": torch.tensor([i for i, (_, t) in enumerate(batch) for _ in t["questions"]]),
        **{key: torch.stack([t[key] for _, t in batch]) for key in ("concepts", "cell_classes", "centres")
           if all(key in t for _, t in batch)},
    }


# ------------------------------------------------------------------------------------------------ use
@torch.no_grad()
def answer_question(model: VQAModel, image: np.ndarray, question: str, choices=None, device=None) -> dict:
    """Answer one question about an [H, W, 3] uint8 image -> {"answer", "index", "probabilities", "attention"}:
    among `choices`, or, without them, among the answer classes of a model trained on open-ended questions
    ("index" then numbers the class, and "probabilities" are over all classes)."""
    if (choices is not None and len(choices) < 2) or (choices is None and not model.config.answers):
        raise DataError(f"give at least 2 choices, got {len(choices or [])}", field="choices")
    device = device or next(model.parameters()).device
    model.eval()
    q, c = encode_question(model.vocabulary, question, choices)
    images = prepare_image(image, model.config.image_size)[None].to(device)
    encoded, alpha = model.encode(images, q[None].to(device), torch.zeros(1, dtype=torch.int64, device=device))
    logits = model.classify(encoded) if choices is None else model.score(encoded, c[None].to(device))
    probabilities = logits.softmax(dim=1)[0].cpu()
    best = int(probabilities.argmax())
    return {"answer": (model.config.answers if choices is None else choices)[best], "index": best,
            "probabilities": probabilities.tolist(), "attention": None if alpha is None else alpha[0].cpu()}


def normalise_answer(text: str) -> str:
    """Lower case, outer spaces and a final full stop dropped: "Yes." and "yes" are one answer (a part of the
    VQA evaluation's normalisation, Antol et al. 2015)."""
    return text.strip().lower().rstrip(".").strip()


def vqa_accuracy(predicted: str, human_answers) -> float:
    """min(#humans who gave `predicted` / 3, 1): an answer is right when at least 3 of the (ten) annotators gave
    it (Antol et al. 2015, sec. 2)."""
    said = sum(normalise_answer(a) == normalise_answer(predicted) for a in human_answers)
    return min(said / 3.0, 1.0)


@torch.no_grad()
def answer_all(model: VQAModel, dataset, device, batch_size: int = 64) -> tuple[list, np.ndarray, float]:
    """Every question of `dataset`, in record order -> (questions [Question], right [N] float, seconds the model
    took). right: 1.0 / 0.0 for a multiple-choice question; `vqa_accuracy` of the predicted class for an
    open-ended one."""
    model.eval()
    data = QuestionData(dataset, model.vocabulary, model.config.image_size, answers=model.config.answers)
    questions = [q for record in data.records for q in record.questions]
    right, elapsed = [], 0.0
    for start in range(0, len(data), batch_size):
        items = [data[i] for i in range(start, min(len(data), start + batch_size))]
        images, targets = collate_questions(items)
        began = time.perf_counter()
        encoded, _ = model.encode(images.to(device), targets["questions"].to(device), targets["owner"].to(device))
        picked = model.score(encoded, targets["choices"].to(device)).argmax(dim=1).cpu()
        if bool(targets["open"].any()):
            picked[targets["open"]] = model.classify(encoded[targets["open"].to(device)]).argmax(dim=1).cpu()
        elapsed += time.perf_counter() - began
        for index, is_open in zip(picked.tolist(), targets["open"].tolist()):
            question = questions[len(right)]
            right.append(vqa_accuracy(model.config.answers[index], question.answers) if is_open
                         else float(index == question.answer))
    return questions, np.array(right, dtype=np.float64), elapsed


def evaluate_vqa(model: VQAModel, dataset, device, batch_size: int = 64) -> dict:
    """Accuracy over all questions and per question kind (`accuracy_<kind>`), and questions per second: plain
    accuracy for multiple-choice questions, VQA accuracy (`vqa_accuracy`) for open-ended ones."""
    questions, right, elapsed = answer_all(model, dataset, device, batch_size)
    kinds = np.array([q.kind for q in questions])
    result = {"accuracy": float(right.mean())}
    for kind in sorted(set(kinds.tolist())):
        result[f"accuracy_{kind}"] = float(right[kinds == kind].mean())
    result.update({"questions": len(right), "questions_per_s": len(right) / max(elapsed, 1e-9)})
    return result


# ------------------------------------------------------------------------------------------------ recipe
WORLD_OPTIONS = {"image_size": 128, "max_objects": 6}   # answers near uniform per kind (tests/test_world.py)


@dataclass
class VQARecipe(Recipe):
    """The VQA recipe. `fit(recipe, train_data, val_data, config, resume=...)` first settles what only the training
    data can tell (`fit_to_data`), then trains with the engine. `from_data` names the options left to the data."""

    fit: Callable | None = None
    from_data: tuple[str, ...] = ()


@dataclass
class VQAOptions:
    """The VQA model's options (`recipe`; `scenekit train vqa --option KEY=VALUE`)."""

    vocabulary: Any = option(None, "a word list, a vocabulary JSON or a data spec (None: from the training data)")
    min_count: int = option(1, "fewest occurrences of a word kept when the vocabulary is counted from data")
    image_size: int = option(96, "side images are resized to, px")
    channels: tuple[int, ...] = option((16, 32, 64), "widths of the small CNN's stages, each halving the grid")
    feature: int = option(128, "size of the fully connected image feature read at t = 0")
    embedding: int = option(64, "size of a word's embedding")
    hidden: int = option(128, "size of the LSTM's state")
    attention_size: int = option(64, "hidden size of the attention over the grid cells")
    joint: int = option(128, "size of the question vector q and of the answer embeddings")
    attention: bool = option(True, "attend over the grid cells (Visual7W) rather than read the fc feature alone")
    coords: bool = option(True, "append each grid cell's (x, y) to its feature")
    context_layers: int = option(2, "3x3 conv layers at grid resolution after the small CNN")
    dense: bool = option(True, "per-cell category and object-centre head, pre-trained and kept as a loss term")
    count_glimpse: bool | None = option(None, "sigmoid-gated, unnormalised read-out for counting (None: attention)")
    answers: Any = option(None, "open-ended answer classes, a list (None: the top_answers of the training data)")
    top_answers: int = option(1000, "open-ended answer classes kept when they come from the training data")
    concepts: bool = option(True, "pre-train the encoder to name the words of each image's captions")
    epochs: int | None = option(None, "epochs on the answers, after the pre-training (None: 16)")
    lr: float | None = option(None, "Adam's learning rate on the answers (None: 2e-3)")
    clip: float = option(5.0, "largest gradient norm on the answers")
    pretrain_epochs: int = option(4, "epochs of the encoder alone on concepts and dense (0: none)")


def recipe(categories=None, *, name: str = "vqa", **options) -> VQARecipe:
    """The VQA recipe (options: `VQAOptions`): Adam, cosine schedule, gradient clipping; best checkpoint by
    validation accuracy.

    Visual7W starts from an ImageNet VGG; here `pretrain_epochs` > 0 first trains the small CNN alone (with the
    fc feature and a concept classifier, the LSTM frozen) to name the words of each image's captions
    (`concepts`), as the captioners' encoder is pre-trained (`scenekit.models.captioner.recipe`), and with
    `dense` also to name each grid cell's category and object centres (see the module docstring), then
    everything on the answers (the dense term kept as an auxiliary loss). `count_glimpse` defaults to `attention`.

    `vocabulary`: a word list, a vocabulary JSON or a data spec; None: settled by `fit_to_data` from the training
    questions (the world's words when they cover them all). `answers`: the open-ended answer classes; None: the
    `top_answers` most common answers of the training data's open-ended questions (Antol et al. 2015 keep
    K = 1000), none for multiple-choice data. Training data without captions or semantic maps turns `concepts`
    or `dense` off, with a notice (`fit_to_data`). The stored options hold the word list and `count_glimpse`."""
    from scenekit.data.captions import resolve_vocabulary

    given = read_options(VQAOptions, options, name)
    words = resolve_vocabulary(given.vocabulary, min_count=given.min_count, with_questions=True).words
    o = replace(given, vocabulary=list(words), channels=tuple(given.channels),
                count_glimpse=given.attention if given.count_glimpse is None else given.count_glimpse,
                answers=None if given.answers is None else list(given.answers))
    dense_classes = 1 + max((int(k) for k in (categories or {})), default=6)     # the world's 6 shapes by default
    config = VQAConfig(words=list(words), image_size=o.image_size, channels=o.channels, feature=o.feature,
                       embedding=o.embedding, hidden=o.hidden, attention_size=o.attention_size, joint=o.joint,
                       attention=o.attention, coords=o.coords, context_layers=o.context_layers, dense=o.dense,
                       dense_classes=dense_classes, count_glimpse=o.count_glimpse, answers=list(o.answers or []))
    grid = o.image_size // 2 ** len(o.channels)
    dense_terms = ("dense",) if o.dense else ()
    vocab = Vocabulary(list(words))
    phases = []
    if o.pretrain_epochs and (o.concepts or o.dense):
        phases.append(Phase("concepts", epochs=o.pretrain_epochs, lr=2e-3, optimizer="adam", schedule="cosine",
                            warmup_steps=20, trains=("encoder", "context", "image_feature")
                            + (("concepts",) if o.concepts else ()) + (("dense_head",) if o.dense else ()),
                            loss_terms=(("concepts",) if o.concepts else ()) + dense_terms))
    phases.append(Phase("train", epochs=16 if o.epochs is None else o.epochs, lr=2e-3 if o.lr is None else o.lr,
                        optimizer="adam", schedule="cosine", warmup_steps=20, clip_grad_norm=o.clip,
                        loss_terms=("cross_entropy",) + dense_terms))

    def build(model_config: dict) -> VQAModel:
        values = {**LEGACY_OPTIONS, **model_config}
        values["channels"] = tuple(values["channels"])
        return VQAModel(VQAConfig(**values))

    def make_dataset(dataset, train):
        check_coverage(vocab, dataset)
        return QuestionData(dataset, vocab, o.image_size, grid if o.dense and train else None, dense_classes,
                            answers=config.answers, concepts=o.concepts)

    def evaluate(model, dataset, device):
        check_coverage(model.vocabulary, dataset)
        return evaluate_vqa(model, dataset, device)

    def predict(model, images, device):
        raise DataError("a VQA model answers questions; use `scenekit ask IMAGE QUESTION --choices ...`",
                        field="checkpoint")

    def fit(this, train_data, val_data, train_config, *, resume: bool = False):
        from scenekit.engine.train import train

        return train(fit_to_data(this, train_data), train_data, val_data, train_config, resume=resume)

    model_config = asdict(config)
    model_config["channels"] = list(config.channels)
    return VQARecipe(model_name=name, categories=dict(categories or {}), options=stored_options(o),
                     model_config=model_config, build_model=build, phases=phases, make_dataset=make_dataset,
                     collate=collate_questions, evaluate=evaluate, predict=predict, best_metric="accuracy",
                     best_mode="max", world=dict(WORLD_OPTIONS), fit=fit,
                     from_data=tuple(k for k in ("vocabulary", "answers") if getattr(given, k) is None))


# ------------------------------------------------------------------------------------------------ the user's data
COVERAGE_LIMIT = 0.05    # the most unknown words a model may meet in its questions, as for the captioners


def question_texts(records) -> list[str]:
    """What a VQA model reads of `records`: the questions and their candidate answers."""
    return [t for r in records for q in r.questions for t in [q.question, *q.choices]]


def check_coverage(vocabulary: Vocabulary, dataset, limit: float = COVERAGE_LIMIT) -> None:
    """Refuse questions many of whose words the model cannot read: a vocabulary from other data answers with the
    most common answer, silently (the captioners' check, `scenekit.data.captions.unknown_rate`)."""
    from scenekit.data.captions import unknown_rate

    rate = unknown_rate(vocabulary, question_texts(dataset.records[:500]))
    if rate > limit:
        raise DataError(f"{rate:.0%} of the question and answer words are not in the model's vocabulary; leave "
                        "--option vocabulary unset to build it from the training data, or give one that covers them "
                        "(a word list, a vocabulary JSON or a data spec)", field="vocabulary")


def data_vocabulary(dataset, min_count: int = 1) -> Vocabulary:
    """The vocabulary of a training set's questions, choices and captions; the world's own when its words cover
    every token (world data keeps the world's vocabulary, so its checkpoints stay interchangeable)."""
    from scenekit.data.captions import unknown_rate, world_vocabulary

    texts = question_texts(dataset.records) + [c for r in dataset.records for c in r.captions]
    if not texts:
        raise DataError("the training data has no questions to build a vocabulary from", field="questions")
    world = world_vocabulary()
    if min_count == 1 and unknown_rate(world, texts) == 0.0:
        return world
    return Vocabulary.build(texts, min_count=min_count)


def fit_to_data(vqa_recipe: VQARecipe, dataset) -> VQARecipe:
    """The recipe with what only the training data can tell: the vocabulary and the open-ended answer classes
    when they were left unset (`from_data`), and no pre-training term the data cannot feed (captions for
    `concepts`, semantic maps for `dense`): those are turned off with a notice on stderr, never trained on zeros."""
    options = dict(vqa_recipe.options)
    if "vocabulary" in vqa_recipe.from_data:
        options["vocabulary"] = data_vocabulary(dataset, options["min_count"]).words
    if "answers" in vqa_recipe.from_data:
        is_open = any(isinstance(q, OpenQuestion) for r in dataset.records for q in r.questions)
        options["answers"] = top_answers(dataset, options["top_answers"]) if is_open else []
    asked = [r for r in dataset.records if r.questions]
    if options["concepts"] and not any(r.captions for r in asked):
        options["concepts"] = False
        if options["pretrain_epochs"]:
            _notice("the training images have no captions: the caption-word pre-training term (concepts) is "
                    "skipped")
    if options["dense"] and not all(r.semantic is not None for r in asked):
        options["dense"] = False
        _notice("the training images have no semantic maps (masks): the dense per-cell term and head are skipped")
    return recipe(vqa_recipe.categories, name=vqa_recipe.model_name, **options)


def _notice(text: str) -> None:
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        print(f"scenekit vqa: notice: {text}", file=sys.stderr)
