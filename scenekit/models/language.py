"""Recurrent networks written from their equations, and a character-level language model.

Vanilla RNN (Elman 1990; the recurrence of Karpathy & Fei-Fei 2015, eq. (13)):

    h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)            (or ReLU instead of tanh)

LSTM (Hochreiter & Schmidhuber 1997 with the forget gate of Gers et al. 2000; the form of Graves 2013 without
peepholes, as torch.nn.LSTM computes it):

    i = sigmoid(W_ii x + b_ii + W_hi h + b_hi)         input gate
    f = sigmoid(W_if x + b_if + W_hf h + b_hf)         forget gate
    g = tanh(W_ig x + b_ig + W_hg h + b_hg)            input modulation (the candidate cell content)
    o = sigmoid(W_io x + b_io + W_ho h + b_ho)         output gate
    c_t = f * c_{t-1} + i * g
    h_t = o * tanh(c_t)

The four gates' weights are stacked in one [4H, I] matrix in torch's order (i, f, g, o), and every parameter has
torch's name (`weight_ih_l0`, `bias_hh_l1_reverse`, ...), so `load_torch_weights` copies a torch.nn.RNN / nn.LSTM
into these modules and the outputs agree to rounding. Each gate can be switched off (held at 1) to retrace how the
cell was built up: without the forget gate, c_t = c_{t-1} + i * g is the original 1997 cell's constant error
carousel; without the output gate h_t = tanh(c_t); without the input gate every candidate is written.

Training is backpropagation through time: autograd through the unrolled loop. `rnn_bptt` also writes the
vanilla RNN's backward pass out by hand (the gradient flowing back through h_{t-1}), which the tests check against
finite differences. The character model trains with *truncated* BPTT: the state is carried across windows of
`bptt` steps but detached between them, so gradients flow back at most `bptt` steps (Williams & Peng 1990;
Sutskever 2013, sec. 2.4), and the engine clips the gradient norm (Pascanu et al. 2013).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from scenekit.data.text import START_CHAR, STOP_CHAR, TextCorpus, read_text, shakespeare  # noqa: F401
from scenekit.errors import DataError
from scenekit.recipes import Phase, Recipe


# ------------------------------------------------------------------------------------------------ cells
class RNNCell(nn.Module):
    """One step of the vanilla RNN: h_t = f(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), f = tanh or ReLU."""

    def __init__(self, input_size: int, hidden_size: int, nonlinearity: str = "tanh", bias: bool = True):
        super().__init__()
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.input_size, self.hidden_size, self.nonlinearity = input_size, hidden_size, nonlinearity
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(hidden_size)) if bias else None
        self.bias_hh = nn.Parameter(torch.empty(hidden_size)) if bias else None
        _uniform_init(self, hidden_size)

    def forward(self, x: torch.Tensor, h: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, I], h [B, H] -> h_t [B, H]; `extra` [B, H] is added inside f (DeepImageSent's image term b_v)."""
        pre = F.linear(x, self.weight_ih, self.bias_ih) + F.linear(h, self.weight_hh, self.bias_hh)
        if extra is not None:
            pre = pre + extra
        return torch.tanh(pre) if self.nonlinearity == "tanh" else torch.relu(pre)


class LSTMCell(nn.Module):
    """One LSTM step from the equations in the module docstring; gates can be switched off (held at 1)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *, input_gate: bool = True,
                 forget_gate: bool = True, output_gate: bool = True):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.input_gate, self.forget_gate, self.output_gate = input_gate, forget_gate, output_gate
        # All four blocks are kept even when a gate is off, so torch's weights always copy over.
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size)) if bias else None
        self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size)) if bias else None
        _uniform_init(self, hidden_size)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        """x [B, I], (h, c) [B, H] each -> (h_t, c_t)."""
        h, c = state
        gates = F.linear(x, self.weight_ih, self.bias_ih) + F.linear(h, self.weight_hh, self.bias_hh)  # [B, 4H]
        i, f, g, o = gates.chunk(4, dim=1)                                  # torch's order
        i = torch.sigmoid(i) if self.input_gate else torch.ones_like(i)
        f = torch.sigmoid(f) if self.forget_gate else torch.ones_like(f)
        o = torch.sigmoid(o) if self.output_gate else torch.ones_like(o)
        c_t = f * c + i * torch.tanh(g)
        h_t = o * torch.tanh(c_t)
        return h_t, c_t


def _uniform_init(cell: nn.Module, hidden_size: int) -> None:
    """U(-1/sqrt(H), 1/sqrt(H)) for every weight and bias, torch's default for its recurrent layers."""
    bound = 1.0 / math.sqrt(hidden_size)
    for parameter in cell.parameters():
        nn.init.uniform_(parameter, -bound, bound)


# ------------------------------------------------------------------------------------------------ layers
class _Recurrent(nn.Module):
    """Stacked, optionally bidirectional recurrence with torch.nn.RNN/LSTM's interface and parameter names.

    Layer l > 0 reads the concatenated outputs of both directions of layer l - 1; the reverse direction reads
    the sequence from its end. Input [T, B, I] ([B, T, I] with batch_first) -> output [T, B, D*H] and the final
    states [L*D, B, H] ordered (layer 0 forward, layer 0 reverse, layer 1 forward, ...), as torch orders them.
    """

    is_lstm = False

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, bidirectional: bool = False, **cell_options):
        super().__init__()
        if num_layers < 1 or hidden_size < 1 or input_size < 1:
            raise ValueError(f"need input_size, hidden_size, num_layers >= 1, got {input_size}, {hidden_size}, "
                             f"{num_layers}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.batch_first, self.bidirectional = batch_first, bidirectional
        self.num_directions = 2 if bidirectional else 1
        self.cells = nn.ModuleList()
        for layer in range(num_layers):
            size = input_size if layer == 0 else hidden_size * self.num_directions
            for _ in range(self.num_directions):
                self.cells.append(self._make_cell(size, hidden_size, bias, **cell_options))

    def _make_cell(self, input_size, hidden_size, bias, **options):
        raise NotImplementedError

    def _zeros(self, batch: int, like: torch.Tensor) -> torch.Tensor:
        return like.new_zeros(self.num_layers * self.num_directions, batch, self.hidden_size)

    def forward(self, inputs: torch.Tensor, state=None):
        if inputs.dim() != 3 or inputs.shape[-1] != self.input_size:
            raise ValueError(f"inputs must be [T, B, {self.input_size}] (batch_first: [B, T, ...]), "
                             f"got {tuple(inputs.shape)}")
        x = inputs.transpose(0, 1) if self.batch_first else inputs              # [T, B, I]
        steps, batch = x.shape[:2]
        if state is None:
            state = (self._zeros(batch, x), self._zeros(batch, x)) if self.is_lstm else self._zeros(batch, x)
        finals_h, finals_c = [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.num_directions):
                k = layer * self.num_directions + direction
                cell = self.cells[k]
                s = (state[0][k], state[1][k]) if self.is_lstm else state[k]
                order = range(steps - 1, -1, -1) if direction == 1 else range(steps)
                out = [None] * steps
                for t in order:
                    s = cell(x[t], s)
                    out[t] = s[0] if self.is_lstm else s
                outputs.append(torch.stack(out) if steps else x.new_zeros(0, batch, self.hidden_size))
                finals_h.append(s[0] if self.is_lstm else s)
                if self.is_lstm:
                    finals_c.append(s[1])
            x = torch.cat(outputs, dim=2)                                        # [T, B, D*H]
        output = x.transpose(0, 1) if self.batch_first else x
        h_n = torch.stack(finals_h)                                              # [L*D, B, H]
        return (output, (h_n, torch.stack(finals_c))) if self.is_lstm else (output, h_n)


class RNN(_Recurrent):
    """Multi-layer (bidirectional) vanilla RNN of `RNNCell`s; `nonlinearity` "tanh" | "relu"."""

    def _make_cell(self, input_size, hidden_size, bias, nonlinearity="tanh"):
        return RNNCell(input_size, hidden_size, nonlinearity, bias)


class LSTM(_Recurrent):
    """Multi-layer (bidirectional) LSTM of `LSTMCell`s; `input_gate/forget_gate/output_gate=False` switch gates off."""

    is_lstm = True

    def _make_cell(self, input_size, hidden_size, bias, input_gate=True, forget_gate=True, output_gate=True):
        return LSTMCell(input_size, hidden_size, bias, input_gate=input_gate, forget_gate=forget_gate,
                        output_gate=output_gate)


def load_torch_weights(module: _Recurrent, reference: nn.RNNBase) -> None:
    """Copy a torch.nn.RNN / nn.LSTM's parameters (`weight_ih_l{k}[_reverse]`, ...) into `module`'s cells."""
    if reference.num_layers != module.num_layers or reference.bidirectional != module.bidirectional \
            or reference.hidden_size != module.hidden_size or reference.input_size != module.input_size:
        raise ValueError("the torch module and ours differ in size, layers or directions")
    with torch.no_grad():
        for layer in range(module.num_layers):
            for direction in range(module.num_directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                cell = module.cells[layer * module.num_directions + direction]
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    ours = getattr(cell, name)
                    if ours is not None:
                        ours.copy_(getattr(reference, name + suffix))


# ------------------------------------------------------------------------------------------------ hand-written BPTT
class VanillaRNNBPTT(torch.autograd.Function):
    """h_t = tanh(x_t W_x + h_{t-1} W_h + b) over a whole sequence, with the backward pass written out by hand.

    Backpropagation through time (Werbos 1990): walking t = T..1, the gradient reaching h_t is the loss's own
    plus what flows back from step t + 1; through tanh it becomes da_t = dh_t * (1 - h_t^2), and then
    dW_x += x_t^T da_t, dW_h += h_{t-1}^T da_t, db += sum da_t, dx_t = da_t W_x^T and dh_{t-1} = da_t W_h^T.
    Shapes: x [B, T, D], h0 [B, H], W_x [D, H], W_h [H, H], b [H] -> h [B, T, H].
    """

    @staticmethod
    def forward(ctx, x, h0, w_x, w_h, b):
        steps = x.shape[1]
        hs, h = [], h0
        for t in range(steps):
            h = torch.tanh(x[:, t] @ w_x + h @ w_h + b)
            hs.append(h)
        h_all = torch.stack(hs, dim=1) if steps else x.new_zeros(x.shape[0], 0, h0.shape[1])
        ctx.save_for_backward(x, h0, w_x, w_h, h_all)
        return h_all

    @staticmethod
    def backward(ctx, grad_h):
        x, h0, w_x, w_h, h_all = ctx.saved_tensors
        dx = torch.zeros_like(x)
        dw_x, dw_h = torch.zeros_like(w_x), torch.zeros_like(w_h)
        db = torch.zeros_like(w_h[0])
        dh_next = torch.zeros_like(h0)
        for t in range(x.shape[1] - 1, -1, -1):
            h_prev = h_all[:, t - 1] if t > 0 else h0
            da = (grad_h[:, t] + dh_next) * (1 - h_all[:, t] ** 2)       # back through tanh
            dx[:, t] = da @ w_x.T
            dw_x += x[:, t].T @ da
            dw_h += h_prev.T @ da
            db += da.sum(dim=0)
            dh_next = da @ w_h.T                                          # on to step t - 1
        return dx, dh_next, dw_x, dw_h, db


def rnn_bptt(x, h0, w_x, w_h, b) -> torch.Tensor:
    """The vanilla RNN over a sequence with hand-written BPTT (see `VanillaRNNBPTT`): [B, T, D] -> [B, T, H]."""
    return VanillaRNNBPTT.apply(x, h0, w_x, w_h, b)


class CharVocabulary:
    """The characters of any text as UTF-8 bytes: id 0 is START, 1 is STOP, 2 + b is byte b (258 ids).

    A fixed byte alphabet, rather than the characters of one text (Karpathy's char-rnn), lets one model read
    any file and makes the vocabulary independent of the data, so a checkpoint needs nothing but its weights.
    """

    start_id, stop_id, size = 0, 1, 258

    def __len__(self) -> int:
        return self.size

    def encode(self, text: str) -> torch.Tensor:
        """Text -> byte ids [n]; the START/STOP characters of a TextCorpus become the START/STOP ids."""
        ids = [self.start_id if byte == 2 else self.stop_id if byte == 3 else 2 + byte for byte in
               text.encode("utf-8")]
        return torch.tensor(ids, dtype=torch.int64)

    def decode(self, ids) -> str:
        """Byte ids -> text (START/STOP dropped; an invalid UTF-8 sequence becomes U+FFFD)."""
        return bytes(int(i) - 2 for i in ids if int(i) > 1).decode("utf-8", errors="replace")


# ------------------------------------------------------------------------------------------------ char model
@dataclass
class CharLMConfig:
    hidden: int = 256
    layers: int = 2
    embedding: int = 64
    bptt: int = 50                # truncate backpropagation every this many steps
    cell: str = "lstm"            # "lstm" | "rnn"
    dropout: float = 0.0


class CharLM(nn.Module):
    """Character-level language model (Karpathy, Johnson & Fei-Fei 2015; Graves 2013): embedding -> stacked
    LSTM (or RNN) -> linear -> softmax over the next character."""

    def __init__(self, config: CharLMConfig):
        super().__init__()
        if config.cell not in ("lstm", "rnn"):
            raise ValueError(f"cell must be 'lstm' or 'rnn', got {config.cell!r}")
        self.config = config
        self.vocabulary = CharVocabulary()
        self.embed = nn.Embedding(len(self.vocabulary), config.embedding)
        kind = LSTM if config.cell == "lstm" else RNN
        self.rnn = kind(config.embedding, config.hidden, num_layers=config.layers, batch_first=True)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden, len(self.vocabulary))

    def step_logits(self, ids: torch.Tensor, state=None):
        """ids [B, T] -> next-character logits [B, T, V] and the final state."""
        out, state = self.rnn(self.embed(ids), state)
        return self.head(self.drop(out)), state

    def forward(self, ids: torch.Tensor, targets: dict | None = None):
        """ids [B, T] -> logits [B, T, V]; with targets {"next": [B, T]}, the cross-entropy under truncated BPTT.

        The sequence is cut into windows of `bptt` steps; the state passes from one window to the next but is
        detached, so no gradient flows back further than `bptt` steps.
        """
        if targets is None:
            return self.step_logits(ids)[0]
        losses, state = [], None
        for start in range(0, ids.shape[1], self.config.bptt):
            if state is not None:
                state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
            logits, state = self.step_logits(ids[:, start:start + self.config.bptt], state)
            nxt = targets["next"][:, start:start + self.config.bptt]
            losses.append(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), nxt.reshape(-1), reduction="sum"))
        return {"cross_entropy": torch.stack(losses).sum() / targets["next"].numel()}


@torch.no_grad()
def sample_text(model: CharLM, length: int = 500, temperature: float = 1.0, prime: str = "",
                generator: torch.Generator | None = None, stop_at_end: bool = True) -> str:
    """Sample up to `length` characters after START + `prime`, drawing from softmax(logits / temperature).

    Temperature below 1 sharpens the distribution (more likely, more repetitive text), above 1 flattens it;
    0 is greedy (argmax). Sampling stops at STOP when `stop_at_end`.
    """
    if temperature < 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    model.eval()
    device = next(model.parameters()).device
    vocabulary = model.vocabulary
    ids = torch.cat([torch.tensor([vocabulary.start_id]), vocabulary.encode(prime)]).to(device)
    logits, state = model.step_logits(ids[None])
    out = []
    for _ in range(length):
        last = logits[0, -1].float()
        if temperature == 0:
            token = int(last.argmax())
        else:
            probabilities = torch.softmax(last / temperature, dim=0).cpu()
            token = int(torch.multinomial(probabilities, 1, generator=generator))
        if token == vocabulary.stop_id and stop_at_end:
            break
        out.append(token)
        logits, state = model.step_logits(torch.tensor([[token]], device=device), state)
    return prime + vocabulary.decode(out)


class CharChunks(torch.utils.data.Dataset):
    """Consecutive chunks of `length` + 1 characters: item (ids [length], {"next": ids shifted by one})."""

    def __init__(self, corpus: TextCorpus, vocabulary: CharVocabulary, length: int):
        ids = vocabulary.encode(corpus.text)
        count = (len(ids) - 1) // length
        if count < 1:
            raise DataError(f"the text has {len(ids)} characters, fewer than one chunk of {length + 1}",
                            field="data")
        self.inputs = ids[:count * length].view(count, length)
        self.nexts = ids[1:count * length + 1].view(count, length)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int):
        return self.inputs[index], {"next": self.nexts[index]}


def _collate_chunks(batch):
    return torch.stack([x for x, _ in batch]), {"next": torch.stack([t["next"] for _, t in batch])}


@torch.no_grad()
def evaluate_char_lm(model: CharLM, corpus: TextCorpus, device, length: int = 200, batch_size: int = 64) -> dict:
    """Mean cross-entropy per character in nats and in bits (bits per character) on `corpus`."""
    model.eval()
    data = CharChunks(corpus, model.vocabulary, length)
    total, count = 0.0, 0
    for start in range(0, len(data), batch_size):
        ids, targets = _collate_chunks([data[i] for i in range(start, min(len(data), start + batch_size))])
        logits = model(ids.to(device))
        total += float(F.cross_entropy(logits.flatten(0, 1).float(), targets["next"].to(device).flatten(),
                                       reduction="sum"))
        count += targets["next"].numel()
    nats = total / max(1, count)
    return {"val_loss": nats, "val_bpc": nats / math.log(2)}


def char_lm_recipe(categories=None, *, name: str = "charlm", hidden: int = 256, layers: int = 2, embedding: int = 64,
                   bptt: int = 50, seq_length: int = 200, cell: str = "lstm", dropout: float = 0.0,
                   epochs: int | None = None, lr: float | None = None, clip: float = 5.0) -> Recipe:
    """Recipe of the character model: Adam, gradient-norm clipping, truncated BPTT inside each chunk.

    Train on `--data text:FILE` or `--data text:shakespeare` (the bundled plays); the vocabulary is the fixed
    byte alphabet, so any text fits any model.
    """
    config = CharLMConfig(hidden=hidden, layers=layers, embedding=embedding, bptt=bptt,
                          cell=cell, dropout=dropout)
    phases = [Phase("train", epochs=10 if epochs is None else epochs, lr=2e-3 if lr is None else lr,
                    optimizer="adam", schedule="cosine", warmup_steps=20, clip_grad_norm=clip)]

    def make_dataset(data, train):
        return CharChunks(_as_corpus(data, train), CharVocabulary(), seq_length)

    options = {"hidden": hidden, "layers": layers, "embedding": embedding, "bptt": bptt,
               "seq_length": seq_length, "cell": cell, "dropout": dropout, "epochs": epochs, "lr": lr,
               "clip": clip}
    return Recipe(model_name=name, categories={}, options=options, model_config=asdict(config),
                  build_model=lambda model_config: CharLM(CharLMConfig(**model_config)), phases=phases,
                  make_dataset=make_dataset, collate=_collate_chunks,
                  evaluate=lambda model, data, device: evaluate_char_lm(model, _as_corpus(data, False), device),
                  predict=_no_boxes, best_metric="val_bpc", best_mode="min")


def _as_corpus(data, train: bool) -> TextCorpus:
    """A TextCorpus as is; a captioned Dataset (the world) as its captions, one document each."""
    if isinstance(data, TextCorpus):
        return data
    captions = [c for record in getattr(data, "records", []) for c in record.captions]
    if not captions:
        raise DataError("the character model needs text: --data text:FILE or text:shakespeare", field="data")
    return TextCorpus.from_documents(captions, name="captions")


def _no_boxes(model, images, device):
    raise DataError("a language model does not predict boxes; use `scenekit sample`", field="checkpoint")
